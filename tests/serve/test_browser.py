"""The page of ``qkv serve`` in a real browser: headless Chromium from the system (Debian's ``chromium``
package; never a downloaded one) driven by playwright, against a running server (``running_server``).

The reference for what the page shows is the server's own answer: the test asks ``/v1/translate`` the
same question with httpx (beam search is deterministic) and compares every drawn cell with its JSON.
The page may fetch nothing but the server's own URLs (no CDN, no web fonts): any other request fails
the test.

Without a Chromium the tests skip, unless ``QKV_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes them fail.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import Server

pytestmark = pytest.mark.slow

# QKV_CHROMIUM names another system browser binary (say, Chrome) for machines that have no Debian package.
CHROMIUM = os.environ.get("QKV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The same request the page makes (app.js, REQUEST_OPTIONS).
PAGE_REQUEST = {"method": "beam", "beam": 4, "n_best": 4, "attention": "heads", "tokens": True}
# The server sends weights rounded to 6 decimals: a row sums to 1 within a few 1e-6, and the average of
# rounded per-head weights is the rounded average within 1e-6.
ROUNDING_TOLERANCE = 1e-5
# The page keeps each weight's JSON number in data-weight and averages heads in float64.
WEIGHT_TOLERANCE = 1e-9
# The page prints scores and a hovered cell's weight with 3 decimals.
SCORE_TOLERANCE = 5e-4 + 1e-9
# app.js, MARK_SHARE: an output token marks the source tokens with at least half its largest weight.
MARK_SHARE = 0.5
TIMEOUT_MS = 30_000
PHONE = {"width": 375, "height": 740}


def _unavailable(reason: str) -> None:
    if os.environ.get("QKV_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; QKV_REQUIRE_BROWSER=1 asks for the browser test to run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless system Chromium, shared by the module's tests."""
    if not Path(CHROMIUM).is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, running_server: str) -> Iterator[Any]:
    """A fresh tab on the server's page (:func:`_open_page`)."""
    yield from _open_page(browser, running_server)


def _open_page(browser: Any, running_server: str) -> Iterator[Any]:
    """A fresh tab on the page of the server at ``running_server``, its model list loaded. Fails the
    test on a JavaScript error or on any request to another address than the server's (each is
    refused)."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    elsewhere: list[str] = []

    def only_the_server(route: Any) -> None:
        url = route.request.url
        if url.startswith(running_server + "/"):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(running_server + "/")
    page.wait_for_function("document.querySelector('#model').value !== ''")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not elsewhere, f"the page fetched from outside the server: {elsewhere}"


def _server_answer(base_url: str, text: str, model: str) -> dict[str, Any]:
    response = httpx.post(
        base_url + "/v1/translate",
        json={"texts": [text], "model": model, **PAGE_REQUEST},
        timeout=TIMEOUT_MS / 1000,
    )
    response.raise_for_status()
    answer: dict[str, Any] = response.json()["translations"][0]
    return answer


def _translate(page: Any, base_url: str, text: str) -> dict[str, Any]:
    """Types ``text`` into the page, translates it, waits for the heat map; the server's answer to the
    same request."""
    model = page.eval_on_selector("#model", "select => select.value")
    answer = _server_answer(base_url, text, model)
    page.get_by_label("Text to translate").fill(text)
    page.get_by_role("button", name="Translate").click()
    page.wait_for_selector("#heatmap td[data-row]")
    return answer


def _cells(page: Any) -> list[list[float]]:
    """The heat map's weights as drawn, row by row (data-row, data-col, data-weight of every cell)."""
    cells = page.eval_on_selector_all(
        "#heatmap td[data-row]",
        "tds => tds.map(td => [Number(td.dataset.row), Number(td.dataset.col), Number(td.dataset.weight)])",
    )
    rows = 1 + max(r for r, _, _ in cells)
    cols = 1 + max(c for _, c, _ in cells)
    grid = [[math.nan] * cols for _ in range(rows)]
    for r, c, weight in cells:
        grid[r][c] = weight
    assert len(cells) == rows * cols, "every (row, col) drawn once"
    return grid


def _assert_weights(drawn: list[list[float]], expected: list[list[float]], tolerance: float) -> None:
    assert len(drawn) == len(expected)
    for row, (got, want) in enumerate(zip(drawn, expected, strict=True)):
        assert got == pytest.approx(want, abs=tolerance), f"row {row}"


def _average(matrices: list[list[list[float]]]) -> list[list[float]]:
    """The element-wise mean of (target, source) matrices, in float64 with exact sums."""
    return [
        [math.fsum(m[t][s] for m in matrices) / len(matrices) for s in range(len(row))]
        for t, row in enumerate(matrices[0])
    ]


def _marks(page: Any) -> dict[str, list[int]]:
    """What the heat map marks now: rows (tr.marked), the output and source tokens marked, the source
    tokens and cells marked as attended, and the cells of a marked column (by row)."""
    script = """table => ({
        rows: [...table.querySelectorAll('tr.marked th[data-row]')].map(th => Number(th.dataset.row)),
        targets: [...table.querySelectorAll('th.marked[data-row]')].map(th => Number(th.dataset.row)),
        sources: [...table.querySelectorAll('th.marked[data-col]')].map(th => Number(th.dataset.col)),
        attended: [...table.querySelectorAll('th.attended')].map(th => Number(th.dataset.col)),
        attended_cells: [...table.querySelectorAll('td.attended')].map(td => [
            Number(td.dataset.row), Number(td.dataset.col)]),
        column: [...table.querySelectorAll('td.in-column')].map(td => [
            Number(td.dataset.row), Number(td.dataset.col)]),
    })"""
    marks: dict[str, list[int]] = page.eval_on_selector("#heatmap", script)
    return marks


def _attended(weights: list[float]) -> list[int]:
    return [col for col, w in enumerate(weights) if w >= MARK_SHARE * max(weights)]


def _label(piece: str) -> str:
    """A token as the page labels it: without the word-start marker, a lone marker as a visible space."""
    return "\u2423" if piece == "\u2581" else piece.removeprefix("\u2581")


def test_page_translates_and_draws_the_cross_attention(
    page: Any, running_server: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    answer = _translate(page, running_server, "我爱你")
    expect(page.locator("#translation")).to_have_text(answer["text"])

    # The n-best list: every candidate in the server's order (best first), with its score and log p.
    n_best = answer["n_best"]
    assert len(n_best) > 1 and answer["text"] == n_best[0]["text"]
    assert [c["score"] for c in n_best] == sorted((c["score"] for c in n_best), reverse=True)
    items = page.locator("#nbest li")
    expect(items).to_have_count(len(n_best))
    for item, candidate in zip(items.all(), n_best, strict=True):
        expect(item.locator(".candidate")).to_have_text(candidate["text"])
        shown = re.fullmatch(r"score (\S+), log p (\S+)", item.locator(".score").inner_text())
        assert shown, item.inner_text()
        assert float(shown[1]) == pytest.approx(candidate["score"], abs=SCORE_TOLERANCE)
        assert float(shown[2]) == pytest.approx(candidate["log_prob"], abs=SCORE_TOLERANCE)

    # One cell per (target token, source token); by default the average over layers and heads: the
    # server's "mean", which is the mean of its per-head weights; its rows are distributions.
    source, target = answer["source_tokens"], answer["target_tokens"]
    attention = answer["attention"]
    drawn = _cells(page)
    assert (len(drawn), len(drawn[0])) == (len(target), len(source))
    _assert_weights(drawn, attention["mean"], WEIGHT_TOLERANCE)
    every_head = [head for layer in attention["per_head"] for head in layer]
    assert len(every_head) == attention["layers"] * attention["heads"] > 1
    _assert_weights(drawn, _average(every_head), ROUNDING_TOLERANCE)
    for row, weights in enumerate(drawn):
        assert all(0.0 <= w <= 1.0 for w in weights), f"row {row}: {weights}"
        assert math.fsum(weights) == pytest.approx(1.0, abs=ROUNDING_TOLERANCE), f"row {row}"
    expect(page.get_by_label("Layer")).to_have_value("mean")
    expect(page.get_by_label("Head")).to_have_value("mean")

    # Token labels: the word-start marker is not shown (alone it is ␣), </s> is a muted label.
    source_labels = page.locator("#heatmap thead th[data-col]").all_inner_texts()
    target_labels = page.locator("#heatmap tbody th[data-row]").all_inner_texts()
    assert source_labels == [_label(s) for s in source]
    assert target_labels == [_label(t) for t in target]
    assert source_labels[-1] == target_labels[-1] == "</s>"
    expect(page.locator(f'#heatmap tbody th[data-row="{len(target) - 1}"]')).to_have_class(
        re.compile("muted")
    )

    page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
    assert (tmp_path / "serve-page.png").stat().st_size > 0


def test_hovering_marks_the_row_the_column_and_the_tokens(page: Any, running_server: str) -> None:
    answer = _translate(page, running_server, "我爱你")
    mean = answer["attention"]["mean"]
    rows, cols = len(mean), len(mean[0])
    assert rows >= 3, "enough output tokens to move between"

    # An output token: its row, and the source tokens (and their cells) it attended to most.
    for row in range(rows):
        page.hover(f'#heatmap th[data-row="{row}"]')
        marks = _marks(page)
        assert marks["rows"] == marks["targets"] == [row]
        assert marks["attended"] == _attended(mean[row])
        assert marks["attended_cells"] == [[row, col] for col in _attended(mean[row])]
        assert marks["sources"] == marks["column"] == []

    # A cell: its row and output token as above, and its column and source token.
    for row, col in [(0, cols - 1), (rows - 1, 0)]:
        page.hover(f'#heatmap td[data-row="{row}"][data-col="{col}"]')
        marks = _marks(page)
        assert marks["rows"] == marks["targets"] == [row]
        assert marks["sources"] == [col]
        assert marks["column"] == [[r, col] for r in range(rows)]
        assert marks["attended"] == _attended(mean[row])
        note = re.search(r": (\d\.\d{3})$", page.locator("#focus-note").inner_text())
        assert note and float(note[1]) == pytest.approx(mean[row][col], abs=SCORE_TOLERANCE)

    # The mouse leaves the table: nothing stays marked.
    page.mouse.move(1, 1)
    page.locator("#heatmap .marked").first.wait_for(state="detached")
    assert _marks(page) == {k: [] for k in _marks(page)}

    # Keyboard: the table is one tab stop after the Head choice, its first output token, which marks
    # its row; arrow keys (and Home, End) move between rows, and Tab leaves the table.
    focused_row = "document.activeElement.dataset.row ?? null"
    page.get_by_label("Head").focus()
    page.keyboard.press("Tab")
    assert page.evaluate(focused_row) == "0"
    assert _marks(page)["targets"] == [0]
    page.keyboard.press("ArrowDown")
    assert page.evaluate(focused_row) == "1"
    assert _marks(page)["targets"] == [1]
    assert _marks(page)["attended"] == _attended(mean[1])
    page.keyboard.press("End")
    assert page.evaluate(focused_row) == str(rows - 1)
    assert _marks(page)["targets"] == [rows - 1]
    page.keyboard.press("ArrowUp")
    assert _marks(page)["targets"] == [rows - 2]
    page.keyboard.press("Tab")
    assert page.evaluate(focused_row) is None
    assert _marks(page)["targets"] == []
    # Back into the table: the output token that had the focus last.
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(focused_row) == str(rows - 2)


def test_choosing_a_layer_and_head_draws_that_heads_weights(page: Any, running_server: str) -> None:
    answer = _translate(page, running_server, "我爱你")
    attention = answer["attention"]
    layers, heads = attention["layers"], attention["heads"]
    assert layers > 1 and heads > 1
    per_head = attention["per_head"]
    assert per_head[0][0] != per_head[layers - 1][heads - 1], "two heads to tell apart"

    for layer, head in [(layers - 1, heads - 1), (0, 0), (0, heads - 1)]:
        page.get_by_label("Layer").select_option(str(layer))
        page.get_by_label("Head").select_option(str(head))
        _assert_weights(_cells(page), per_head[layer][head], WEIGHT_TOLERANCE)

    # One layer, all its heads: their mean.
    page.get_by_label("Layer").select_option(str(layers - 1))
    page.get_by_label("Head").select_option("mean")
    _assert_weights(_cells(page), _average(per_head[layers - 1]), WEIGHT_TOLERANCE)

    # One head number in every layer: the mean over the layers.
    page.get_by_label("Layer").select_option("mean")
    page.get_by_label("Head").select_option("1")
    _assert_weights(_cells(page), _average([per_head[i][1] for i in range(layers)]), WEIGHT_TOLERANCE)

    # A marked output token stays marked across a redraw, by the new weights.
    page.hover('#heatmap th[data-row="0"]')
    page.get_by_label("Head").select_option("0")
    expected = _average([per_head[i][0] for i in range(layers)])
    _assert_weights(_cells(page), expected, WEIGHT_TOLERANCE)
    assert _marks(page)["attended"] == _attended(expected[0])

    page.get_by_label("Head").select_option("mean")
    _assert_weights(_cells(page), attention["mean"], WEIGHT_TOLERANCE)


def test_the_page_fits_a_phone(page: Any, running_server: str) -> None:
    """At a phone's width the page never scrolls sideways; a wide heat map scrolls inside its box."""
    page.set_viewport_size(PHONE)
    _translate(page, running_server, "我爱你。" * 12)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the phone"
    box = page.locator(".heatmap-scroll")
    assert box.evaluate("el => el.scrollWidth > el.clientWidth"), "the heat map is wider than the phone"
    for control in ["Text to translate", "Model", "Layer", "Head"]:
        bounds = page.get_by_label(control).bounding_box()
        assert bounds and bounds["x"] >= 0 and bounds["x"] + bounds["width"] <= PHONE["width"], control


def test_an_api_error_is_shown_in_the_alert_and_the_page_is_busy_meanwhile(page: Any) -> None:
    from playwright.sync_api import expect

    held: list[Any] = []
    page.route("**/v1/translate", lambda route: held.append(route))
    page.get_by_label("Text to translate").fill("我爱你")
    page.get_by_label("Text to translate").press("Control+Enter")
    while not held:
        page.wait_for_timeout(20)

    # While the request is out: the button is disabled and the page says it is working.
    expect(page.get_by_role("button", name="Translate")).to_be_disabled()
    expect(page.locator("#busy")).to_be_visible()
    expect(page.locator("#translate-form")).to_have_attribute("aria-busy", "true")

    held[0].fulfill(
        status=503, json={"error": "the queue is full; retry in 1 s"}, headers={"Retry-After": "1"}
    )
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("the queue is full; retry in 1 s")
    expect(alert).to_contain_text("HTTP 503")
    expect(page.get_by_role("button", name="Translate")).to_be_enabled()
    expect(page.locator("#busy")).to_be_hidden()


def test_the_servers_own_refusal_is_shown(page: Any, running_server: str) -> None:
    """A text over the server's character limit: its status and message reach the alert unchanged, and
    the previous translation leaves the screen."""
    from playwright.sync_api import expect

    _translate(page, running_server, "我爱你")
    limit = httpx.get(running_server + "/frontend/settings", timeout=TIMEOUT_MS / 1000).json()["charLimit"]
    too_long = "我" * (limit + 1)
    response = httpx.post(
        running_server + "/v1/translate",
        json={"texts": [too_long], **PAGE_REQUEST},
        timeout=TIMEOUT_MS / 1000,
    )
    assert response.status_code in (413, 422), response.text
    page.get_by_label("Text to translate").fill(too_long)
    page.get_by_role("button", name="Translate").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(response.json()["error"])
    expect(alert).to_contain_text(f"HTTP {response.status_code}")
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#attention")).to_be_hidden()

    # The next good translation clears the message.
    _translate(page, running_server, "我爱你")
    expect(alert).to_be_hidden()
    expect(page.locator("#result")).to_be_visible()


def test_a_server_that_is_down_is_a_message_not_a_blank_page(browser: Any, tiny_model_dir: Path) -> None:
    """A server of its own, shut down (SIGTERM) while its page is open: the other tests share theirs."""
    from playwright.sync_api import expect

    server = Server(["--model", f"zh-en={tiny_model_dir}"])
    try:
        opened = _open_page(browser, server.url)
        page = next(opened)
        _translate(page, server.url, "我爱你")
    finally:
        assert server.stop() == 0
    page.get_by_label("Text to translate").fill("你爱我")
    page.get_by_role("button", name="Translate").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Translation failed: no answer from the server")
    expect(page.locator("#result")).to_be_hidden()
    expect(page.get_by_role("button", name="Translate")).to_be_enabled()
    expect(page.get_by_label("Text to translate")).to_have_value("你爱我")
    next(opened, None)  # closes the tab, checking it had no JavaScript error and fetched nothing else
