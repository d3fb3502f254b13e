// niche studio: one page over `niche serve`'s API and the studio's own (/studio/api). No framework, no CDN:
// every view is rendered from JSON into the #view element, and re-rendered when the hash route changes.
"use strict";

const KEY_STORAGE = "niche-studio-key";
const view = document.getElementById("view");
let info = null;
let timers = [];

// ---- helpers ----------------------------------------------------------------------------------------------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  return String(value);
}
function score(value) {
  return typeof value === "number" ? value.toFixed(3) : fmt(value);
}
function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 90) return `${value.toFixed(0)} s`;
  if (value < 5400) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}
function bytes(value) {
  const units = ["B", "KB", "MB", "GB"];
  let index = 0;
  while (value >= 1000 && index < units.length - 1) { value /= 1000; index += 1; }
  return `${value.toFixed(index ? 1 : 0)} ${units[index]}`;
}
function every(ms, task) {
  task();
  timers.push(setInterval(task, ms));
}
function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

class ApiError extends Error {
  constructor(status, payload) {
    const error = payload && payload.error ? payload.error : payload;
    super((error && (error.message || JSON.stringify(error))) || `HTTP ${status}`);
    this.status = status;
    this.payload = error;
  }
}

async function api(path, options = {}) {
  const init = { ...options, headers: authHeaders(options.headers || {}) };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    showLogin("");
    throw new ApiError(401, { message: "an API key is needed" });
  }
  const text = await response.text();
  let payload = null;
  try { payload = text ? JSON.parse(text) : null; } catch { payload = text; }
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

function showLogin(message) {
  const overlay = document.getElementById("login");
  overlay.hidden = false;
  const error = document.getElementById("login-error");
  error.hidden = !message;
  error.textContent = message;
  document.getElementById("login-key").focus();
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, document.getElementById("login-key").value);
  const response = await fetch("/studio/api/info", { headers: authHeaders() });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin("That key was refused.");
    return;
  }
  document.getElementById("login").hidden = true;
  start();
});

function failure(error) {
  if (error.status === 401) return "";
  return `<p class="problem">${esc(error.message)}</p>`;
}

// ---- charts (inline SVG) ----------------------------------------------------------------------------------

function lineChart(series, { width = 680, height = 240, xLabel = "step", yLabel = "" } = {}) {
  const points = series.flatMap((line) => line.points);
  if (!points.length) return `<p class="muted">nothing logged yet</p>`;
  const pad = { left: 56, right: 12, top: 24, bottom: 34 };
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys) || 1];
  const sx = (x) => pad.left + ((x - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0 || 1)) * (height - pad.top - pad.bottom);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((t) => y0 + t * (y1 - y0));
  let svg = `<svg class="chart" viewBox="0 0 ${width} ${height}" role="img">`;
  for (const tick of ticks) {
    svg += `<line x1="${pad.left}" x2="${width - pad.right}" y1="${sy(tick)}" y2="${sy(tick)}" stroke="#e2e8f0"/>`;
    svg += `<text x="${pad.left - 6}" y="${sy(tick) + 4}" font-size="11" text-anchor="end" fill="#5a6577">${fmt(tick, 2)}</text>`;
  }
  svg += `<text x="${(width + pad.left) / 2}" y="${height - 6}" font-size="11" text-anchor="middle" fill="#5a6577">${esc(xLabel)} (${fmt(x0)}–${fmt(x1)})</text>`;
  if (yLabel) svg += `<text x="4" y="11" font-size="11" fill="#5a6577">${esc(yLabel)}</text>`;
  for (const line of series) {
    if (!line.points.length) continue;
    const path = line.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg += `<path d="${path}" fill="none" stroke="${line.color}" stroke-width="2"/>`;
    if (line.points.length < 30) {
      for (const p of line.points) svg += `<circle cx="${sx(p[0])}" cy="${sy(p[1])}" r="2.5" fill="${line.color}"/>`;
    }
  }
  svg += "</svg>";
  const legend = series.map((line) => `<span><i style="background:${line.color}"></i>${esc(line.name)}</span>`).join("");
  return `${svg}<div class="legend">${legend}</div>`;
}

function lossChart(curve) {
  return lineChart([
    { name: "training loss", color: "#2b6cb0", points: curve.filter((p) => p.loss !== undefined).map((p) => [p.step, p.loss]) },
    { name: "validation loss", color: "#dd6b20", points: curve.filter((p) => p.eval_loss !== undefined).map((p) => [p.step, p.eval_loss]) },
  ], { yLabel: "loss" });
}

// ---- specialists --------------------------------------------------------------------------------------------

function headlineText(headline) {
  if (!headline) return `<span class="muted">no eval yet (niche eval, niche demo)</span>`;
  let text = `${esc(headline.metric)} <b>${score(headline.specialist)}</b>`;
  if (headline.base !== null && headline.base !== undefined) text += ` vs base ${score(headline.base)}`;
  if (headline.best_baseline) text += ` · ${esc(headline.best_baseline.name)} ${score(headline.best_baseline.headline)}`;
  return text + ` <span class="muted small">(${esc(headline.rows)} rows)</span>`;
}

function taskText(task) {
  if (task.labels) {
    const shown = task.labels.slice(0, 8).map(esc).join(", ");
    return `${task.labels.length} labels: ${shown}${task.labels.length > 8 ? ", …" : ""}`;
  }
  if (task.output_schema) return `JSON fields: ${Object.keys(task.output_schema.properties || {}).map(esc).join(", ")}`;
  return "free text";
}

function cardHtml(card) {
  const data = Object.entries(card.data).map(([split, record]) =>
    `${esc(split)} ${record.rows} rows <span class="muted small">${esc(record.sha256.slice(0, 10))}</span>`).join("<br>");
  const exports = card.exports.length
    ? card.exports.map((item) => `<span class="badge blue">${esc(item.target)} ${bytes(item.bytes)}</span>`).join("")
    : `<span class="muted">none</span>`;
  const forgetting = card.forgetting
    ? `${fmt(card.forgetting.accuracy_relative_change * 100, 1)}% everyday accuracy <span class="muted small">${esc(card.forgetting.source)}</span>`
    : `<span class="muted">not probed</span>`;
  const registry = card.registry ? `version ${esc(card.registry.version)}` : `<span class="muted">not from the registry</span>`;
  const training = card.training;
  return `<article class="card" data-specialist="${esc(card.name)}">
    <h2>${esc(card.name)}</h2>
    <div><span class="badge blue">${esc(card.task.kind)}</span><span class="badge">${esc(card.task.answers_with)}</span>
      ${card.loaded ? `<span class="badge ok">loaded</span>` : ""}${card.served ? "" : `<span class="badge bad">not served</span>`}</div>
    <p class="headline">${headlineText(card.headline)}</p>
    <dl>
      <dt>base</dt><dd>${esc(card.base.spec)} <span class="muted small">${esc(card.base.sha256.slice(0, 12))}</span></dd>
      <dt>task</dt><dd>${taskText(card.task)}</dd>
      <dt>data</dt><dd>${data}</dd>
      <dt>training</dt><dd>${seconds(training.runtime_s)} · ${fmt(training.tokens_per_s, 0)} tok/s · ${fmt(training.steps)} steps</dd>
      <dt>forgetting</dt><dd>${forgetting}</dd>
      <dt>registry</dt><dd class="registry">${registry}</dd>
      <dt>exports</dt><dd>${exports}</dd>
    </dl>
    <div class="actions">
      <a class="button" href="#/specialist/${encodeURIComponent(card.name)}">Details</a>
      <a class="button secondary" href="#/compare/${encodeURIComponent(card.name)}">Compare with base</a>
    </div>
  </article>`;
}

async function renderSpecialists() {
  view.innerHTML = `<h1>Specialists</h1><p class="muted">${esc(info.directory)}</p><div id="cards" class="grid">loading…</div>`;
  try {
    const cards = await api("/studio/api/specialists");
    document.getElementById("cards").innerHTML = cards.length
      ? cards.map(cardHtml).join("")
      : `<p>No specialists in ${esc(info.directory)} yet. <a href="#/train">Train one</a>.</p>`;
    cards.forEach((card) => fillRegistryAliases(card));
  } catch (error) {
    document.getElementById("cards").innerHTML = failure(error);
  }
}

async function fillRegistryAliases(card) {
  // The registry (MLflow) is asked per card after the cards are shown: it may be slow, or not set up at all.
  try {
    const registry = await api(`/studio/api/registry/${encodeURIComponent(card.name)}`);
    if (!registry.available) return;
    const target = document.querySelector(`article.card[data-specialist="${CSS.escape(card.name)}"] .registry`);
    const aliased = registry.versions.filter((version) => version.aliases.length)
      .map((version) => `v${esc(version.version)} ${version.aliases.map((alias) => `<span class="badge blue">${esc(alias)}</span>`).join("")}`);
    if (target) target.innerHTML = `${registry.deployed ? `serving v${esc(registry.deployed)} · ` : ""}${aliased.join(" ") || "registered, no alias"}`;
  } catch (error) { /* shown as it was: the card's own record */ }
}

function confusionHtml(confusion) {
  const max = Math.max(1, ...confusion.counts.flat());
  const head = confusion.predicted.map((label) => `<th class="num">${esc(label)}</th>`).join("");
  const rows = confusion.labels.map((truth, i) => {
    const cells = confusion.counts[i].map((count, j) => {
      const diagonal = confusion.predicted[j] === truth;
      const shade = count ? 0.15 + 0.75 * (count / max) : 0;
      const color = diagonal ? `rgba(47,133,90,${shade})` : `rgba(197,48,48,${shade})`;
      return `<td class="cell" style="background:${color}">${count || ""}</td>`;
    }).join("");
    return `<tr><th>${esc(truth)}</th>${cells}</tr>`;
  }).join("");
  return `<p class="muted small">rows: reference label · columns: the specialist's answer</p>
    <div style="overflow:auto"><table class="heat"><tr><th></th>${head}</tr>${rows}</table></div>`;
}

function metricsTable(results, metric) {
  const rows = results.map((result) => `<tr><td>${esc(result.name)}</td><td class="num">${score(result.headline)}</td>
    <td class="num">${score(result.metrics.macro_f1)}</td><td class="num">${fmt(result.examples_per_s, 1)}</td></tr>`).join("");
  return `<table><tr><th>model</th><th class="num">${esc(metric)}</th><th class="num">macro-F1</th><th class="num">rows/s</th></tr>${rows}</table>`;
}

function fieldsTable(fields) {
  const rows = Object.entries(fields).map(([name, field]) => `<tr><td>${esc(name)}</td><td class="num">${score(field.precision)}</td>
    <td class="num">${score(field.recall)}</td><td class="num">${score(field.f1)}</td></tr>`).join("");
  return `<table><tr><th>field</th><th class="num">precision</th><th class="num">recall</th><th class="num">F1</th></tr>${rows}</table>`;
}

async function renderSpecialist(name) {
  view.innerHTML = `<p>loading ${esc(name)}…</p>`;
  let detail;
  try {
    detail = await api(`/studio/api/specialists/${encodeURIComponent(name)}`);
  } catch (error) {
    view.innerHTML = failure(error);
    return;
  }
  const evalReport = detail.eval;
  const analysis = detail.analysis;
  let evaluation = `<p class="muted">No eval report for ${esc(name)} yet: <code>niche eval ${esc(info.directory)}/${esc(name)} --data TEST.jsonl --base</code>.</p>`;
  if (evalReport) {
    const specialistResult = evalReport.results.find((result) => result.name.startsWith("specialist"));
    evaluation = `<p class="muted small">${esc(evalReport.path)} · ${esc(evalReport.data)} · ${evalReport.rows} rows</p>
      ${metricsTable(evalReport.results, evalReport.headline_metric)}
      ${analysis && analysis.confusion ? `<h3>Confusion matrix</h3>${confusionHtml(analysis.confusion)}` : ""}
      ${specialistResult && specialistResult.metrics.fields ? `<h3>Per field</h3>${fieldsTable(specialistResult.metrics.fields)}` : ""}`;
  }
  const worst = analysis && analysis.worst.length
    ? `<table><tr><th>input</th><th>reference</th><th>specialist</th><th>base</th></tr>${analysis.worst.map((row) =>
        `<tr><td>${esc(row.input ?? row.source)}</td><td>${esc(row.reference)}</td><td class="problem">${esc(row.prediction)}</td><td>${esc(row.base ?? "")}</td></tr>`).join("")}</table>`
    : `<p class="muted">${analysis ? "no wrong answers" : "no predictions recorded"}</p>`;
  view.innerHTML = `<h1>${esc(name)}</h1>
    <div class="actions">
      <a class="button" href="#/compare/${encodeURIComponent(name)}">Compare with base</a>
      <button class="secondary" data-admin="load">Load</button><button class="secondary" data-admin="reload">Reload from disk</button>
      <button class="secondary" data-admin="unload">Unload</button><span id="admin-result" class="muted small"></span>
    </div>
    <div class="two">
      <section><h2>Training and validation loss</h2>${lossChart(detail.curves)}</section>
      <section><h2>Last evaluation</h2>${evaluation}</section>
    </div>
    <h2>Worst predictions</h2>${worst}
    <div class="two">
      <section><h2>Data card</h2><pre>${esc(JSON.stringify(detail.data_card, null, 2))}</pre></section>
      <section><h2>Registry</h2><div id="registry" class="muted">loading…</div></section>
    </div>
    <h2>niche.json</h2><pre>${esc(JSON.stringify(detail.manifest, null, 2))}</pre>`;
  view.querySelectorAll("[data-admin]").forEach((button) => button.addEventListener("click", async () => {
    const out = document.getElementById("admin-result");
    try {
      const result = await api(`/admin/specialists/${encodeURIComponent(name)}/${button.dataset.admin}`, { method: "POST" });
      out.textContent = `${result.action}: loaded now ${result.loaded.join(", ") || "none"}`;
    } catch (error) { out.textContent = error.message; }
  }));
  renderRegistry(name);
}

async function renderRegistry(name) {
  const target = document.getElementById("registry");
  try {
    const registry = await api(`/studio/api/registry/${encodeURIComponent(name)}`);
    if (!registry.available) {
      target.textContent = `not in the registry: ${registry.reason}`;
      return;
    }
    target.innerHTML = `<table><tr><th>version</th><th>aliases</th><th>gate</th><th></th></tr>${registry.versions.map((version) =>
      `<tr><td>${esc(version.version)}${version.version === registry.deployed ? " (served here)" : ""}</td><td>${esc(version.aliases.join(", "))}</td>
       <td>${esc(version.tags.gate || "")}</td><td>${version.aliases.includes("champion") ? "" : `<button data-promote="${esc(version.version)}">Make champion</button>`}</td></tr>`).join("")}</table>`;
    target.querySelectorAll("[data-promote]").forEach((button) => button.addEventListener("click", async () => {
      await api(`/studio/api/registry/${encodeURIComponent(name)}/promote`, { json: { version: button.dataset.promote } });
      renderRegistry(name);
    }));
  } catch (error) {
    target.innerHTML = failure(error);
  }
}

// ---- compare / playground ------------------------------------------------------------------------------------

async function renderCompare(preselected) {
  const models = info.models;
  const chosen = new Set(preselected ? ["base", preselected] : models.filter((m) => m !== "auto").slice(0, 2));
  view.innerHTML = `<h1>Compare</h1>
    <div class="panel">
      <label>Input <textarea id="input" placeholder="Paste one input, as a user would send it"></textarea></label>
      <div class="form-grid">
        <label>Models ${models.map((model) => `<span style="display:block"><input type="checkbox" name="model" value="${esc(model)}" ${chosen.has(model) ? "checked" : ""}> ${esc(model)}${model === "auto" ? " <span class='muted small'>(router picks)</span>" : ""}</span>`).join("")}</label>
        <label>Answer format <select id="format">
          <option value="">the specialist's own (labels, stored JSON schema)</option><option value="text">free text</option>
          <option value="label">label set</option><option value="json_object">any JSON</option><option value="json_schema">JSON schema…</option></select>
          <span class="help">Constraints are applied while decoding, by the server.</span></label>
        <label>Max tokens <input id="max-tokens" type="number" value="128" min="1"></label>
        <label>Temperature <input id="temperature" type="number" value="0" min="0" max="2" step="0.1"></label>
      </div>
      <label id="schema-box" hidden>JSON schema <textarea id="schema">{"type": "object"}</textarea></label>
      <div class="actions"><button id="run">Run</button></div>
    </div>
    <div id="columns" class="columns"></div>`;
  document.getElementById("format").addEventListener("change", (event) => {
    document.getElementById("schema-box").hidden = event.target.value !== "json_schema";
  });
  document.getElementById("run").addEventListener("click", runCompare);
}

function responseFormat() {
  const kind = document.getElementById("format").value;
  if (!kind) return undefined;
  if (kind === "json_schema") return { type: "json_schema", json_schema: { name: "response", schema: JSON.parse(document.getElementById("schema").value) } };
  return { type: kind };
}

async function runCompare() {
  const text = document.getElementById("input").value;
  const models = [...view.querySelectorAll("input[name=model]:checked")].map((box) => box.value);
  const columns = document.getElementById("columns");
  if (!text.trim() || !models.length) {
    columns.innerHTML = `<p class="problem">Type an input and choose at least one model.</p>`;
    return;
  }
  let format;
  try { format = responseFormat(); } catch (error) {
    columns.innerHTML = `<p class="problem">JSON schema: ${esc(error.message)}</p>`;
    return;
  }
  columns.innerHTML = models.map((model, index) => `<section class="column" data-model="${esc(model)}">
      <h3>${esc(model)} <span class="route muted small"></span></h3>
      <div class="answer" id="answer-${index}"></div>
      <p class="muted small figures" id="figures-${index}">waiting…</p>
      <button class="secondary" data-prompt="${index}">Show the prompt it received</button>
      <pre id="prompt-${index}" hidden></pre>
    </section>`).join("");
  models.forEach((model, index) => {
    streamInto(model, index, text, format);
    columns.querySelector(`[data-prompt="${index}"]`).addEventListener("click", () => showPrompt(index, text));
  });
}

async function streamInto(model, index, text, format) {
  const answer = document.getElementById(`answer-${index}`);
  const figures = document.getElementById(`figures-${index}`);
  const column = answer.closest(".column");
  const body = {
    model, stream: true, stream_options: { include_usage: true }, messages: [{ role: "user", content: text }],
    max_tokens: Number(document.getElementById("max-tokens").value) || 128,
    temperature: Number(document.getElementById("temperature").value) || 0,
  };
  if (format) body.response_format = format;
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    if (!response.ok) {
      const payload = await response.json().catch(() => ({}));
      throw new Error((payload.error && payload.error.message) || `HTTP ${response.status}`);
    }
    const routed = response.headers.get("x-niche-routed-to");
    if (routed) {
      column.dataset.answeredBy = routed;
      column.querySelector(".route").textContent = `→ ${routed} (similarity ${Number(response.headers.get("x-niche-route-score")).toFixed(3)})`;
    } else {
      column.dataset.answeredBy = model;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end).replace(/^data: /, "");
        buffer = buffer.slice(end + 2);
        if (event === "[DONE]") continue;
        const chunk = JSON.parse(event);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          if (firstToken === null) firstToken = performance.now() - started;
          answer.textContent += delta.content;
          column.dataset.chunks = String(Number(column.dataset.chunks || 0) + 1);
          figures.textContent = `first token ${firstToken.toFixed(0)} ms · streaming…`;
        }
      }
    }
    const total = performance.now() - started;
    const tokens = usage ? usage.completion_tokens : null;
    // Decoding speed after the first token: undefined for a one-token answer (a label head's).
    const rate = tokens > 1 && firstToken !== null && total > firstToken ? ` · ${((tokens - 1) / ((total - firstToken) / 1000)).toFixed(1)} tok/s after the first` : "";
    figures.textContent = `first token ${firstToken === null ? "–" : firstToken.toFixed(0)} ms · total ${total.toFixed(0)} ms · ` +
      `${tokens ?? "–"} token${tokens === 1 ? "" : "s"} (prompt ${usage ? usage.prompt_tokens : "–"})${rate}`;
    column.dataset.done = "true";
  } catch (error) {
    figures.innerHTML = `<span class="problem">${esc(error.message)}</span>`;
    column.dataset.done = "error";
  }
}

async function showPrompt(index, text) {
  const column = document.getElementById(`answer-${index}`).closest(".column");
  const target = document.getElementById(`prompt-${index}`);
  const model = column.dataset.answeredBy || column.dataset.model;
  if (model === "auto") {
    target.hidden = false;
    target.textContent = "run it first: the router chooses the model";
    return;
  }
  try {
    const rendered = await api("/studio/api/prompt", { json: { model, messages: [{ role: "user", content: text }] } });
    target.textContent = `${rendered.model}: ${rendered.tokens} tokens, from ${rendered.template}\n\n${rendered.text}`;
  } catch (error) {
    target.textContent = error.message;
  }
  target.hidden = false;
}

// ---- data and training -------------------------------------------------------------------------------------

function dataReportHtml(name, report) {
  const problems = report.problems.length
    ? `<h3 class="problem">${report.problems.length} problem(s)</h3><ul class="problems">${report.problems.map((p) => `<li class="problem">${esc(p)}</li>`).join("")}</ul>`
    : `<p class="state-succeeded">No problems: every row is readable.</p>`;
  const warnings = report.warnings.map((w) => `<p class="warning">${esc(w)}</p>`).join("");
  const notes = report.notes.map((n) => `<p class="muted">${esc(n)}</p>`).join("");
  let labels = "";
  if (report.label_counts) {
    const max = Math.max(...Object.values(report.label_counts));
    labels = `<h3>Label balance</h3><table>${Object.entries(report.label_counts).map(([label, count]) =>
      `<tr><td>${esc(label)}</td><td class="num">${count}</td><td style="width:50%"><div class="bar"><div style="width:${(100 * count) / max}%"></div></div></td></tr>`).join("")}</table>`;
  }
  const lengths = ["prompt_tokens", "response_tokens"].filter((key) => report[key]).map((key) =>
    `<tr><td>${key.replace("_", " ")}</td>${["min", "mean", "p50", "p95", "max"].map((stat) => `<td class="num">${fmt(report[key][stat], 1)}</td>`).join("")}</tr>`).join("");
  return `<div class="panel" id="data-report"><h2>${esc(name)}</h2>
    <p>${report.rows} readable rows · format ${esc(report.format)} · task ${esc(report.task_kind)} · ${report.duplicate_inputs} duplicate inputs · ${report.empty_responses} empty answers</p>
    ${problems}${warnings}${notes}${labels}
    ${lengths ? `<h3>Lengths (tokens)</h3><table><tr><th></th><th class="num">min</th><th class="num">mean</th><th class="num">p50</th><th class="num">p95</th><th class="num">max</th></tr>${lengths}</table>` : ""}
  </div>`;
}

async function renderTrain() {
  view.innerHTML = `<h1>Train a specialist</h1>
    ${info.training_unavailable ? `<p class="notice">${esc(info.training_unavailable)}</p>` : ""}
    <div class="two">
      <section class="panel"><h2>1. Data</h2>
        <label>Upload a data file (JSONL, JSON, CSV, TSV, Parquet) <input id="upload" type="file"></label>
        <h3>Or pick one</h3><div id="known-data" class="small">loading…</div>
        <div id="check-result"></div>
      </section>
      <section class="panel"><h2>2. Settings</h2>
        <p class="muted small">Blank fields keep the default shown; niche chooses the rest from the data (niche.train.recipe).
        The specialist is written to ${esc(info.directory)}.</p>
        <form id="train-form"><div id="fields" class="form-grid">loading…</div>
          <label>More settings (YAML, any niche.yaml key) <textarea id="extra-yaml" placeholder="training:\n  early_stopping_patience: 3"></textarea></label>
          <div id="form-problems"></div>
          <div class="actions"><button type="submit" id="start-training" ${info.training_unavailable ? "disabled" : ""}>Start training</button></div>
        </form>
        <h3>niche.yaml</h3><pre id="yaml-preview"></pre>
      </section>
    </div>`;
  document.getElementById("upload").addEventListener("change", uploadData);
  loadKnownData();
  const form = await api("/studio/api/config/form");
  document.getElementById("fields").innerHTML = form.fields.map(fieldHtml).join("");
  const inputs = view.querySelectorAll("#train-form [data-path], #extra-yaml");
  let pending;
  inputs.forEach((input) => input.addEventListener("input", () => { clearTimeout(pending); pending = setTimeout(validateForm, 300); }));
  document.getElementById("train-form").addEventListener("submit", startTraining);
  validateForm();
}

function fieldHtml(field) {
  const id = `field-${field.path.replace(/\./g, "-")}`;
  const shown = field.default === null || field.default === undefined ? "chosen by niche" : String(field.default);
  let input;
  if (field.kind === "choice" || field.kind === "bool") {
    input = `<select id="${id}" data-path="${esc(field.path)}"><option value="">default (${esc(shown)})</option>${field.choices.map((choice) => `<option value="${esc(choice)}">${esc(choice)}</option>`).join("")}</select>`;
  } else {
    input = `<input type="text" id="${id}" data-path="${esc(field.path)}" placeholder="${esc(shown)}">`;
  }
  return `<label for="${id}">${esc(field.path)}${field.required ? " *" : ""} ${input}
    <span class="help">${esc(field.description)}</span><span class="field-problem" data-problem="${esc(field.path)}"></span></label>`;
}

function formValues() {
  const values = {};
  view.querySelectorAll("#train-form [data-path]").forEach((input) => { if (input.value.trim()) values[input.dataset.path] = input.value; });
  return { values, extra_yaml: document.getElementById("extra-yaml").value };
}

function showProblems(problems) {
  view.querySelectorAll("[data-problem]").forEach((slot) => { slot.textContent = ""; });
  const loose = [];
  for (const problem of problems) {
    const slot = view.querySelector(`[data-problem="${CSS.escape(problem.field)}"]`);
    if (slot) slot.textContent = problem.message; else loose.push(problem);
  }
  document.getElementById("form-problems").innerHTML = loose.map((p) => `<p class="problem">${esc(p.field)}: ${esc(p.message)}</p>`).join("");
}

async function validateForm() {
  try {
    const result = await api("/studio/api/config/validate", { json: formValues() });
    document.getElementById("yaml-preview").textContent = result.yaml;
    showProblems(result.problems);
    return result.ok;
  } catch (error) {
    document.getElementById("form-problems").innerHTML = failure(error);
    return false;
  }
}

async function loadKnownData() {
  const target = document.getElementById("known-data");
  try {
    const files = await api("/studio/api/data");
    target.innerHTML = files.length ? `<table>${files.map((file) => `<tr><td>${esc(file.name)}<br><span class="muted">${esc(file.source)}</span></td>
      <td><button class="secondary" data-check="${esc(file.path)}">Check</button> <button class="secondary" data-use="${esc(file.path)}">Train on it</button></td></tr>`).join("")}</table>`
      : `<p class="muted">none yet</p>`;
    target.querySelectorAll("[data-check]").forEach((button) => button.addEventListener("click", async () => {
      const checked = await api("/studio/api/data/check", { json: { path: button.dataset.check } });
      document.getElementById("check-result").innerHTML = dataReportHtml(checked.name, checked.report);
    }));
    target.querySelectorAll("[data-use]").forEach((button) => button.addEventListener("click", () => {
      const file = files.find((item) => item.path === button.dataset.use);
      // A specialist's training file: train its successor on the same splits, under a new name.
      const splits = file.specialist ? files.filter((item) => item.specialist === file.specialist) : [];
      useForTraining(file.path, file.specialist ? `${file.specialist}-2` : null, splits);
    }));
  } catch (error) {
    target.innerHTML = failure(error);
  }
}

function useForTraining(path, name = null, splits = []) {
  document.getElementById("field-data-train").value = path;
  for (const split of ["validation", "test"]) {
    const match = splits.find((item) => item.split === split);
    if (match) document.getElementById(`field-data-${split}`).value = match.path;
  }
  const nameInput = document.getElementById("field-name");
  if (name) nameInput.value = name;
  else if (!nameInput.value) nameInput.value = path.split("/").pop().replace(/-[0-9a-f]{8}\.[a-z]+$|\.[a-z]+$/, "").replace(/[^A-Za-z0-9_-]/g, "-");
  validateForm();
}

async function uploadData(event) {
  const file = event.target.files[0];
  if (!file) return;
  const result = document.getElementById("check-result");
  result.innerHTML = `<p>checking ${esc(file.name)}…</p>`;
  try {
    const checked = await api(`/studio/api/data/upload?filename=${encodeURIComponent(file.name)}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    });
    result.innerHTML = dataReportHtml(file.name, checked.report) + (checked.report.ok
      ? `<div class="actions"><button id="use-upload">Train on ${esc(file.name)}</button></div>` : "");
    const use = document.getElementById("use-upload");
    if (use) use.addEventListener("click", () => useForTraining(checked.path));
    loadKnownData();
  } catch (error) {
    result.innerHTML = failure(error);
  }
}

async function startTraining(event) {
  event.preventDefault();
  try {
    const job = await api("/studio/api/jobs", { json: formValues() });
    location.hash = `#/jobs/${job.id}`;
  } catch (error) {
    if (error.payload && error.payload.problems) showProblems(error.payload.problems);
    else document.getElementById("form-problems").innerHTML = failure(error);
  }
}

// ---- jobs ----------------------------------------------------------------------------------------------------

function progressText(job) {
  const p = job.progress || {};
  if (job.state === "queued") return "waiting for the job before it";
  if (!p.step && job.state === "running") return p.phase || "starting";
  const share = p.max_steps ? (100 * p.step) / p.max_steps : 0;
  return `<div class="bar"><div style="width:${share}%"></div></div>
    step ${fmt(p.step)}/${fmt(p.max_steps)} · loss ${fmt(p.loss, 4)} · val ${fmt(p.eval_loss, 4)} · ${fmt(p.tokens_per_s, 0)} tok/s · ETA ${seconds(p.eta_s)} · ${esc(p.phase || "")}`;
}

async function renderJobs() {
  view.innerHTML = `<h1>Training jobs</h1><p class="muted small">One job runs at a time, in its own process; the list survives reloads.</p><div id="jobs">loading…</div>`;
  every(1000, async () => {
    const target = document.getElementById("jobs");
    if (!target) return;
    try {
      const jobs = await api("/studio/api/jobs");
      target.innerHTML = jobs.length ? `<table><tr><th>#</th><th>specialist</th><th>state</th><th style="width:45%">progress</th><th></th></tr>${jobs.map((job) =>
        `<tr data-job="${job.id}"><td><a href="#/jobs/${job.id}">${job.id}</a></td><td>${esc(job.name)}</td><td class="state-${job.state}">${job.state}</td>
          <td>${progressText(job)}</td><td>${["queued", "running"].includes(job.state) ? `<button class="danger" data-cancel="${job.id}">Cancel</button>` : ""}</td></tr>`).join("")}</table>`
        : `<p>No jobs yet. <a href="#/train">Start one</a>.</p>`;
      target.querySelectorAll("[data-cancel]").forEach((button) => button.addEventListener("click", () => cancelJob(button.dataset.cancel)));
    } catch (error) {
      target.innerHTML = failure(error);
    }
  });
}

async function cancelJob(id) {
  await api(`/studio/api/jobs/${id}/cancel`, { method: "POST" });
}

async function renderJob(id) {
  view.innerHTML = `<h1>Job ${esc(id)}</h1><div id="job">loading…</div>`;
  every(1000, async () => {
    const target = document.getElementById("job");
    if (!target) return;
    try {
      const job = await api(`/studio/api/jobs/${id}`);
      const active = ["queued", "running"].includes(job.state);
      target.innerHTML = `<p>Specialist <b>${esc(job.name)}</b> · <span class="state-${job.state}" id="job-state">${job.state}</span>
          ${active ? `<button class="danger" id="cancel-job">Cancel</button>` : ""}
          ${job.state === "succeeded" ? `<a class="button" href="#/specialist/${encodeURIComponent(job.name)}">Open its card</a>` : ""}</p>
        <div>${progressText(job)}</div>
        ${job.error ? `<pre class="problem">${esc(job.error)}</pre>` : ""}
        <div class="two"><section><h2>Loss</h2>${lossChart(job.curve)}</section>
          <section><h2>niche.yaml</h2><pre>${esc(job.config)}</pre></section></div>
        <h2>Worker log</h2><pre>${esc(job.log_tail)}</pre>`;
      const cancel = document.getElementById("cancel-job");
      if (cancel) cancel.addEventListener("click", () => cancelJob(id));
    } catch (error) {
      target.innerHTML = failure(error);
    }
  });
}

// ---- reports ---------------------------------------------------------------------------------------------------

async function renderReports() {
  view.innerHTML = `<h1>Reports</h1><div id="reports">loading…</div>`;
  const target = document.getElementById("reports");
  try {
    const reports = await api("/studio/api/reports");
    const evals = reports.eval.map((report, index) => `<section class="panel"><h2>eval: ${esc(report.specialist)} on ${esc(report.data)}</h2>
        <p class="muted small">${esc(report.path)} · ${report.rows} rows</p>${metricsTable(report.results, report.headline_metric)}
        <button class="secondary" data-markdown="${index}">Show eval.md</button><pre id="markdown-${index}" hidden>${esc(report.markdown || "")}</pre></section>`).join("");
    const ladders = reports.ladder.map((report, index) => `<section class="panel"><h2>ladder: ${esc(report.specialist)}</h2>
        <p>Recommended: <b>${esc(report.recommendation)}</b>: ${esc(report.reason)}</p>
        ${report.html ? `<iframe class="report" id="ladder-${index}" title="ladder report ${esc(report.specialist)}" sandbox></iframe>` : ""}</section>`).join("");
    target.innerHTML = (evals + ladders) || `<p class="muted">No reports under ${esc(info.directory)} yet: <code>niche eval</code> and <code>niche ladder</code> write them.</p>`;
    target.querySelectorAll("[data-markdown]").forEach((button) => button.addEventListener("click", () => {
      const pre = document.getElementById(`markdown-${button.dataset.markdown}`);
      pre.hidden = !pre.hidden;
    }));
    reports.ladder.forEach(async (report, index) => {
      if (!report.html) return;
      // Fetched with the key and shown with srcdoc: an iframe's own request could not carry the Authorization header.
      const response = await fetch(`/studio/api/file?path=${encodeURIComponent(report.html)}`, { headers: authHeaders() });
      document.getElementById(`ladder-${index}`).srcdoc = await response.text();
    });
  } catch (error) {
    target.innerHTML = failure(error);
  }
}

// ---- serving ----------------------------------------------------------------------------------------------------

const servingHistory = [];

function stat(label, value, id) {
  return `<div class="stat"><div class="value" id="${id}">${value}</div><div class="label">${esc(label)}</div></div>`;
}

async function renderServing() {
  view.innerHTML = `<h1>Serving</h1><div id="serving">loading…</div>`;
  every(1000, async () => {
    const target = document.getElementById("serving");
    if (!target) return;
    try {
      const stats = await api("/studio/api/stats");
      const live = stats.live;
      servingHistory.push({ t: Date.now() / 1000, rps: live.requests_per_s, p95: live.latency_ms.p95 });
      while (servingHistory.length > 180) servingHistory.shift();
      const t0 = servingHistory[0].t;
      target.innerHTML = `<p class="muted small">${esc(stats.engine)} on ${esc(stats.base)} · requests/s and tokens/s over the last ${live.rate_window_s} s, latency over ${live.latency_window_s} s (${live.latency_requests} requests)</p>
        <div class="stats">
          ${stat("requests/s", fmt(live.requests_per_s, 2), "stat-rps")}${stat("tokens/s generated", fmt(live.tokens_per_s, 1), "stat-tps")}
          ${stat("latency p50 (ms)", fmt(live.latency_ms.p50, 0), "stat-p50")}${stat("latency p95 (ms)", fmt(live.latency_ms.p95, 0), "stat-p95")}
          ${stat("latency p99 (ms)", fmt(live.latency_ms.p99, 0), "stat-p99")}${stat("queue depth", `${stats.queued}/${stats.max_queue}`, "stat-queue")}
          ${stat("decoding now", fmt(stats.decoding), "stat-decoding")}${stat("requests served", fmt(live.total_requests), "stat-total")}
        </div>
        <div class="two"><section><h2>Requests/s</h2>${lineChart([{ name: "requests/s", color: "#2b6cb0", points: servingHistory.map((h) => [h.t - t0, h.rps]) }], { xLabel: "seconds" })}</section>
        <section><h2>Latency p95 (ms)</h2>${lineChart([{ name: "p95", color: "#dd6b20", points: servingHistory.filter((h) => h.p95 !== null).map((h) => [h.t - t0, h.p95]) }], { xLabel: "seconds" })}</section></div>
        <h2>Adapters (${stats.loaded.length}/${stats.max_loaded} loaded)</h2>
        <table><tr><th>specialist</th><th>state</th><th></th></tr>${stats.specialists.map((name) => `<tr><td>${esc(name)}</td>
          <td>${stats.loaded.includes(name) ? `<span class="badge ok">loaded</span>` : `<span class="badge">on disk</span>`}</td>
          <td><button class="secondary" data-action="load" data-name="${esc(name)}">Load</button> <button class="secondary" data-action="reload" data-name="${esc(name)}">Reload</button>
          <button class="secondary" data-action="unload" data-name="${esc(name)}">Unload</button></td></tr>`).join("")}</table>`;
      target.querySelectorAll("[data-action]").forEach((button) => button.addEventListener("click", async () => {
        await api(`/admin/specialists/${encodeURIComponent(button.dataset.name)}/${button.dataset.action}`, { method: "POST" });
      }));
    } catch (error) {
      target.innerHTML = failure(error);
    }
  });
}

// ---- routing ---------------------------------------------------------------------------------------------------

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  const [, name, argument] = (location.hash || "#/specialists").split("/").map(decodeURIComponent);
  document.querySelectorAll("#nav a").forEach((link) => {
    const current = name === "specialist" ? "specialists" : name;
    link.classList.toggle("active", link.dataset.view === current);
  });
  if (name === "specialist") return renderSpecialist(argument);
  if (name === "compare") return renderCompare(argument);
  if (name === "train") return renderTrain();
  if (name === "jobs") return argument ? renderJob(argument) : renderJobs();
  if (name === "reports") return renderReports();
  if (name === "serving") return renderServing();
  return renderSpecialists();
}

async function start() {
  try {
    info = await api("/studio/api/info");
  } catch (error) {
    if (error.status !== 401) view.innerHTML = failure(error);
    return;
  }
  document.getElementById("server-note").textContent = info.auth
    ? `base ${info.base} · API keys required`
    : `base ${info.base} · no API keys: this machine only`;
  route();
}

window.addEventListener("hashchange", () => { if (info) route(); });
start();
