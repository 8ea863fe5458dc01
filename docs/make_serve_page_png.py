"""Makes docs/serve-page.png: the page of ``qkv serve`` in headless Chromium after translating 我爱你 with
the demo model, one output token hovered so its marks show.

    qkv demo --out runs/demo                      # the demo model, a few minutes
    .venv/bin/python docs/make_serve_page_png.py  # --model runs/demo/best --out docs/serve-page.png

It runs ``qkv serve --model DIR --languages zh:en --port 0`` and drives the system's Chromium (Debian's
``chromium`` package; QKV_CHROMIUM names another binary) with playwright. Where the system has no CJK
font, Chromium is given the WenQuanYi subset that ships with qkv (qkv/fonts) through fontconfig.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from importlib import resources
from pathlib import Path

TEXT = "我爱你"
VIEWPORT = {"width": 1100, "height": 640}
START_TIMEOUT_S = 120
FONTS_CONF = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig>
  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>
  <dir>{fonts}</dir>
  <cachedir>{cache}</cachedir>
</fontconfig>
"""


def start_server(model: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``qkv serve`` on a free port of 127.0.0.1, ready; the process and its base URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [
        sys.executable,
        "-m",
        "qkv",
        "serve",
        "--model",
        str(model),
        "--languages",
        "zh:en",
        "--port",
        "0",
    ]
    server = subprocess.Popen(args, stderr=subprocess.PIPE, env=env)
    assert server.stderr is not None
    url = ""
    for raw in server.stderr:
        line = raw.decode("utf-8", errors="replace")
        sys.stderr.write(line)
        match = re.search(r"on (http://[^/\s]+)/", line)
        if match:
            url = match.group(1)
            break
    # The rest of its log goes on to ours (a pipe nobody reads would fill and stop the server).
    threading.Thread(target=lambda: shutil.copyfileobj(server.stderr, sys.stderr.buffer), daemon=True).start()
    if not url:
        server.wait()
        raise SystemExit(f"qkv serve did not start (exit code {server.returncode})")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return server, url
        except OSError:
            time.sleep(0.1)
    server.send_signal(signal.SIGTERM)
    raise SystemExit(f"qkv serve was not ready after {START_TIMEOUT_S} s")


def browser_env(workdir: Path) -> dict[str, str]:
    """The browser's environment: with qkv's CJK font added through fontconfig when the system has none."""
    fc_list = shutil.which("fc-list")
    if fc_list and subprocess.run([fc_list, ":lang=zh"], capture_output=True, text=True).stdout.strip():
        return dict(os.environ)
    fonts = Path(str(resources.files("qkv") / "fonts"))
    conf = workdir / "fonts.conf"
    conf.write_text(FONTS_CONF.format(fonts=fonts, cache=workdir / "fontconfig-cache"), encoding="utf-8")
    return {**os.environ, "FONTCONFIG_FILE": str(conf)}


def screenshot(url: str, chromium: str, out: Path, hover: str, workdir: Path) -> str:
    """Translates TEXT on the page at ``url``, hovers the output token ``hover`` (else the first), saves
    the page to ``out``; the translation shown."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, env=browser_env(workdir)
        )
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        page.goto(url + "/")
        page.wait_for_function("document.querySelector('#model').value !== ''")
        page.get_by_label("Text to translate").fill(TEXT)
        page.get_by_role("button", name="Translate").click()
        page.wait_for_selector("#heatmap td[data-row]")
        labels = page.locator("#heatmap tbody th[data-row]").all_inner_texts()
        row = labels.index(hover) if hover in labels else 0
        page.hover(f'#heatmap th[data-row="{row}"]')
        page.evaluate("document.fonts.ready")
        page.screenshot(path=str(out), full_page=True)
        translation: str = page.locator("#translation").inner_text()
        browser.close()
    return translation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("runs/demo/best"), help="a qkv zh->en model")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "serve-page.png")
    parser.add_argument("--hover", default="love", help="the output token to hover (default love)")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("QKV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium",
        help="the system browser binary (default: chromium on PATH)",
    )
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a model directory; make one with: qkv demo --out runs/demo")
    server, url = start_server(args.model)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            translation = screenshot(url, args.chromium, args.out, args.hover, Path(workdir))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"wrote {args.out}: {TEXT} -> {translation}")


if __name__ == "__main__":
    main()
