// The page of `qkv serve`: translate a text through POST /v1/translate and draw the decoder's
// cross-attention as a table, output tokens (rows) x source tokens (columns). Plain JavaScript, no build.
"use strict";

// One request gives the n-best list and every layer's and head's weights, so switching the view
// needs no second request.
const REQUEST_OPTIONS = { method: "beam", beam: 4, n_best: 4, attention: "heads", tokens: true };

// Hovering an output token marks the source tokens with at least this share of the row's largest weight.
const MARK_SHARE = 0.5;

const AVERAGE = "mean";
const WORD_START = "\u2581"; // SentencePiece's (and qkv's Metaspace BPE's) word-start marker ▁

const $ = (id) => document.getElementById(id);

let models = []; // from GET /v1/models
let shown = null; // { attention, sourceTokens, targetTokens } of the translation on screen
let markedRow = null; // the marked output token (row), or null
let markedCol = null; // with a hovered cell, its source token (column)

// ---- talking to the server ------------------------------------------------------------------

// JSON from the API, or an Error carrying the server's own message ({"error": "..."}) and status.
async function api(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`no answer from the server; is qkv serve still running? (${err.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status line has to do
  }
  if (!response.ok) {
    const detail = body && (body.error ?? body.detail);
    const message = typeof detail === "string" ? detail : response.statusText || "request failed";
    throw new Error(`${message} (HTTP ${response.status})`);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setBusy(isBusy) {
  $("translate").disabled = isBusy;
  $("busy").hidden = !isBusy;
  $("translate-form").setAttribute("aria-busy", String(isBusy));
}

async function loadModels() {
  const select = $("model");
  try {
    models = (await api("/v1/models")).models;
  } catch (err) {
    select.replaceChildren(new Option("no models", ""));
    showError(`Could not list the models: ${err.message}`);
    return;
  }
  select.replaceChildren(
    ...models.map((m) => new Option(`${m.name} (${m.source} → ${m.target})`, m.name, m.default, m.default)),
  );
  languagesFollowModel();
}

function selectedModel() {
  return models.find((m) => m.name === $("model").value);
}

// The browser picks fonts (and screen readers voices) by language, so say which one each text is in.
function languagesFollowModel() {
  const model = selectedModel();
  if (!model) return;
  $("source").lang = model.source;
  $("translation").lang = model.target;
  $("nbest").lang = model.target;
}

async function translate() {
  const text = $("source").value.trim();
  if (!text || $("translate").disabled) return;
  clearError();
  setBusy(true);
  try {
    const body = { texts: [text], model: $("model").value || undefined, ...REQUEST_OPTIONS };
    const answer = await api("/v1/translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    showTranslation(answer.translations[0]);
  } catch (err) {
    // The last translation stays off screen: it would read as the answer to this text.
    $("result").hidden = true;
    $("attention").hidden = true;
    showError(`Translation failed: ${err.message}`);
  } finally {
    setBusy(false);
  }
}

// ---- the translation and its candidates -------------------------------------------------------

function showTranslation(translation) {
  $("translation").textContent = translation.text;
  $("nbest").replaceChildren(
    ...translation.n_best.map((candidate) => {
      const item = document.createElement("li");
      const text = document.createElement("span");
      text.className = "candidate";
      text.textContent = candidate.text;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `score ${candidate.score.toFixed(3)}, log p ${candidate.log_prob.toFixed(3)}`;
      item.append(text, " ", score);
      return item;
    }),
  );
  $("result").hidden = false;

  const attention = translation.attention;
  if (!attention || !attention.mean) {
    $("attention").hidden = true;
    shown = null;
    return;
  }
  shown = { attention, sourceTokens: translation.source_tokens, targetTokens: translation.target_tokens };
  fillViewChoices(attention);
  drawHeatmap();
  $("attention").hidden = false;
}

// ---- tokens as a person reads them --------------------------------------------------------------

// A token's label: the word-start marker dropped ("▁love" -> "love"), a lone marker shown as a muted
// "␣", and special tokens (</s>, <unk>, >>fra<<) kept as muted labels.
function tokenLabel(piece) {
  const isSpecial = /^<[^<>]+>$/.test(piece) || /^>>[^<>]+<<$/.test(piece);
  if (isSpecial) return { text: piece, isMuted: true, title: piece };
  if (piece === WORD_START) return { text: "␣", isMuted: true, title: "word start (▁)" };
  const text = piece.startsWith(WORD_START) ? piece.slice(WORD_START.length) : piece;
  return { text, isMuted: false, title: piece };
}

function tokenCell(tag, piece, lang) {
  const cell = document.createElement(tag);
  const label = tokenLabel(piece);
  cell.textContent = label.text;
  cell.title = label.title;
  if (label.isMuted) cell.classList.add("muted");
  if (lang) cell.lang = lang;
  return cell;
}

// ---- which weights: one layer and head, or an average -----------------------------------------

function fillViewChoices(attention) {
  const hasHeads = Array.isArray(attention.per_head);
  const fill = (select, count, noun) => {
    const previous = select.value;
    const options = [new Option(`average of all ${noun}s`, AVERAGE)];
    if (hasHeads) for (let i = 0; i < count; i++) options.push(new Option(`${noun} ${i + 1}`, String(i)));
    select.replaceChildren(...options);
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
    select.disabled = !hasHeads;
  };
  fill($("layer"), attention.layers, "layer");
  fill($("head"), attention.heads, "head");
}

// (target, source) weights of the chosen view: the server's average when both choices are "average",
// else the mean over the chosen layers and heads of per_head (layer, head, target, source).
function viewWeights() {
  const { attention } = shown;
  const layer = $("layer").value;
  const head = $("head").value;
  if (layer === AVERAGE && head === AVERAGE) return attention.mean;
  const layers = layer === AVERAGE ? [...Array(attention.layers).keys()] : [Number(layer)];
  const heads = head === AVERAGE ? [...Array(attention.heads).keys()] : [Number(head)];
  const parts = layers.flatMap((l) => heads.map((h) => attention.per_head[l][h]));
  return attention.mean.map((row, t) =>
    row.map((_, s) => parts.reduce((sum, part) => sum + part[t][s], 0) / parts.length),
  );
}

// ---- the heat map -------------------------------------------------------------------------------

// White to dark blue; the text turns white where the cell is dark.
function cellColour(weight) {
  const light = [247, 251, 255];
  const dark = [8, 48, 107];
  const mix = light.map((c, i) => Math.round(c + (dark[i] - c) * weight));
  return `rgb(${mix.join(", ")})`;
}

function paintCell(cell, weight) {
  cell.dataset.weight = String(weight);
  cell.style.backgroundColor = cellColour(weight);
  cell.classList.toggle("dark", weight > 0.5);
  cell.textContent = weight.toFixed(2).replace(/^0\./, ".");
}

function drawHeatmap() {
  const { sourceTokens, targetTokens } = shown;
  const model = selectedModel();
  const table = $("heatmap");
  const caption = document.createElement("caption");
  caption.className = "visually-hidden";
  caption.textContent = "Cross-attention: rows are output tokens, columns are source tokens.";

  const headRow = document.createElement("tr");
  const corner = document.createElement("th");
  corner.className = "corner";
  corner.innerHTML = '<span class="axis">source →</span><br><span class="axis">output ↓</span>';
  headRow.append(corner);
  sourceTokens.forEach((piece, col) => {
    const th = tokenCell("th", piece, model?.source);
    th.scope = "col";
    th.className += " source-token";
    th.dataset.col = String(col);
    headRow.append(th);
  });

  const weights = viewWeights();
  const rows = targetTokens.map((piece, row) => {
    const tr = document.createElement("tr");
    const th = tokenCell("th", piece, model?.target);
    th.scope = "row";
    th.className += " target-token";
    th.dataset.row = String(row);
    th.tabIndex = row === 0 ? 0 : -1; // one tab stop for the table; arrow keys move between rows
    tr.append(th);
    sourceTokens.forEach((_, col) => {
      const td = document.createElement("td");
      td.dataset.row = String(row);
      td.dataset.col = String(col);
      paintCell(td, weights[row][col]);
      tr.append(td);
    });
    return tr;
  });

  const thead = document.createElement("thead");
  thead.append(headRow);
  const tbody = document.createElement("tbody");
  tbody.append(...rows);
  table.replaceChildren(caption, thead, tbody);
  markedRow = null;
  markedCol = null;
  $("focus-note").textContent = "";
}

function repaintHeatmap() {
  const weights = viewWeights();
  for (const td of $("heatmap").querySelectorAll("td[data-row]")) {
    paintCell(td, weights[Number(td.dataset.row)][Number(td.dataset.col)]);
  }
  if (markedRow !== null) markRow(markedRow, markedCol);
}

// ---- hovering an output token marks the source tokens it attended to ---------------------------

function clearMarks() {
  const table = $("heatmap");
  table.classList.remove("has-mark");
  for (const el of table.querySelectorAll(".marked, .attended, .in-column")) {
    el.classList.remove("marked", "attended", "in-column");
  }
  markedRow = null;
  markedCol = null;
  $("focus-note").textContent = "";
}

// Marks output token `row`, its row of cells and the source tokens it attended to most; with `col`
// (a hovered cell) also that source token and its column, and the note gives that one weight.
function markRow(row, col = null) {
  clearMarks();
  const table = $("heatmap");
  const cells = [...table.querySelectorAll(`td[data-row="${row}"]`)];
  const weights = cells.map((td) => Number(td.dataset.weight));
  const threshold = MARK_SHARE * Math.max(...weights);
  const targetHeader = table.querySelector(`th[data-row="${row}"]`);
  table.classList.add("has-mark");
  targetHeader.parentElement.classList.add("marked");
  targetHeader.classList.add("marked");
  const attended = [];
  cells.forEach((td, c) => {
    if (weights[c] < threshold) return;
    td.classList.add("attended");
    const th = table.querySelector(`th[data-col="${c}"]`);
    th.classList.add("attended");
    attended.push(`${th.textContent} (${weights[c].toFixed(2)})`);
  });
  markedRow = row;
  const target = targetHeader.textContent;
  if (col === null) {
    $("focus-note").textContent = `“${target}” attended most to ${attended.join(", ")}`;
    return;
  }
  markedCol = col;
  const sourceHeader = table.querySelector(`th[data-col="${col}"]`);
  sourceHeader.classList.add("marked");
  for (const td of table.querySelectorAll(`td[data-col="${col}"]`)) td.classList.add("in-column");
  $("focus-note").textContent = `“${target}” → “${sourceHeader.textContent}”: ${weights[col].toFixed(3)}`;
}

function cellOf(element) {
  const cell = element.closest("[data-row], [data-col]");
  if (!cell) return null;
  const row = cell.dataset.row === undefined ? null : Number(cell.dataset.row);
  const col = cell.dataset.col === undefined ? null : Number(cell.dataset.col);
  return { row, col };
}

function rowOf(element) {
  const cell = cellOf(element);
  return cell ? cell.row : null;
}

function wireHeatmap() {
  const table = $("heatmap");
  table.addEventListener("mouseover", (event) => {
    const cell = cellOf(event.target);
    if (!cell || cell.row === null) return;
    if (cell.row !== markedRow || cell.col !== markedCol) markRow(cell.row, cell.col);
  });
  table.addEventListener("mouseleave", () => {
    const focused = document.activeElement;
    if (table.contains(focused) && rowOf(focused) !== null) markRow(rowOf(focused));
    else clearMarks();
  });
  table.addEventListener("focusin", (event) => {
    const row = rowOf(event.target);
    if (row !== null) markRow(row);
  });
  table.addEventListener("focusout", (event) => {
    if (!table.contains(event.relatedTarget)) clearMarks();
  });
  // Up, down, Home and End move between output tokens; the one left focused keeps the table's tab stop.
  table.addEventListener("keydown", (event) => {
    const row = rowOf(event.target);
    const last = table.querySelectorAll("th[data-row]").length - 1;
    const moves = { ArrowUp: row - 1, ArrowDown: row + 1, Home: 0, End: last };
    if (row === null || !(event.key in moves)) return;
    const next = table.querySelector(`th[data-row="${moves[event.key]}"]`);
    if (next) {
      event.target.tabIndex = -1;
      next.tabIndex = 0;
      next.focus();
      event.preventDefault();
    }
  });
}

// ---- start --------------------------------------------------------------------------------------

function start() {
  $("translate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    translate();
  });
  $("source").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("translate-form").requestSubmit();
    }
  });
  $("model").addEventListener("change", languagesFollowModel);
  $("layer").addEventListener("change", repaintHeatmap);
  $("head").addEventListener("change", repaintHeatmap);
  wireHeatmap();
  loadModels();
}

start();
