"use strict";
// The dashboard page: one websocket, views pushed by coordd web, nothing polled.
// Text is set with textContent only (never HTML from data).

const $ = (id) => document.getElementById(id);
const WARN_RATIO = 0.5; // as coordd's freshness dashboard: amber past half the threshold
let clockOffset = 0; // server time minus ours, from each view's "now"
let rows = [];
let query = { status: "", team: "", work_type: "", agent: "", text: "", offset: 0, limit: 50 };
let total = 0;
let ws = null;
let retryDelay = 500;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function now() { return Date.now() / 1000 + clockOffset; }

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return Math.round(s) + "s";
  if (s < 5400) return Math.round(s / 60) + "m";
  return (s / 3600).toFixed(1) + "h";
}

function clock(t) {
  return t ? new Date(t * 1000).toLocaleTimeString() : "never";
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.onopen = () => { retryDelay = 500; sendQuery(); };
  ws.onmessage = (m) => render(JSON.parse(m.data));
  ws.onclose = (e) => {
    if (e.code === 4401) { location.reload(); return; } // token gone: back to sign-in
    $("connection").textContent = "disconnected from coordd web; reconnecting…";
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 10000);
  };
}

function sendQuery() {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "query", ...query }));
}

function render(v) {
  clockOffset = v.now - Date.now() / 1000;
  $("connection").textContent = v.connected
    ? `live: coordd ${v.shared.daemon.version || ""} (${v.shared.items_held} items held)`
    : "coordd unreachable: showing the last known state";
  $("who").textContent = v.role === "operator" ? "operator (may act)" : "viewer (read only)";
  renderCounts(v.shared.counts);
  renderSeries(v.shared.series);
  renderOptions(v.shared.options);
  rows = v.items.rows;
  total = v.items.total;
  query.offset = v.items.offset;
  renderItems();
  renderAgents(v.agents);
  renderEvents(v.shared.events);
  renderAi(v.shared.ai);
}

function renderCounts(counts) {
  const dl = $("counts");
  dl.replaceChildren();
  for (const name of ["pending", "active", "stale", "completed", "failed", "items", "agents"]) {
    if (!(name in counts)) continue;
    const d = el("div");
    d.append(el("dt", name), el("dd", counts[name]));
    dl.append(d);
  }
}

function spark(svgId, points) {
  const svg = $(svgId);
  svg.replaceChildren();
  if (!points || points.length < 2) return;
  const max = Math.max(1, ...points.map((p) => p[1]));
  const step = 120 / (points.length - 1);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.map((p, i) => `${(i * step).toFixed(1)},${(29 - (p[1] / max) * 28).toFixed(1)}`).join(" "));
  svg.append(line);
}

function renderSeries(series) {
  for (const name of ["heartbeats", "claims"]) {
    const pts = series.per_second[name] || [];
    spark("spark-" + name, pts);
    $("rate-" + name).textContent = pts.length ? pts[pts.length - 1][1].toFixed(1) : "–";
  }
  for (const name of ["stale_detected", "recovered"]) {
    const pts = series.per_minute[name] || [];
    spark("spark-" + name, pts);
    $("rate-" + name).textContent = pts.length ? String(pts[pts.length - 1][1]) : "0";
  }
}

function renderOptions(options) {
  const form = $("filters");
  for (const name of ["status", "team", "work_type", "agent"]) {
    const select = form.elements[name];
    const want = ["", ...(options[name] || [])];
    if (query[name] && !want.includes(query[name])) want.push(query[name]);
    const have = Array.from(select.options).map((o) => o.value);
    if (have.join("\u0000") === want.join("\u0000")) continue;
    select.replaceChildren(...want.map((value) => {
      const o = el("option", value || "any");
      o.value = value;
      return o;
    }));
    select.value = query[name];
  }
}

function silence(row) {
  if (row.status !== "active") return { cls: "", text: "–", ratio: 0 };
  const silent = Math.max(0, now() - row.last_heard);
  const ratio = row.threshold > 0 ? silent / row.threshold : 0;
  let cls = "fresh", word = "fresh";
  if (row.stale || ratio >= 1) { cls = "stale"; word = "STALE"; }
  else if (ratio >= WARN_RATIO) { cls = "warn"; word = "late"; }
  return { cls, ratio, text: `${seconds(silent)} / ${seconds(row.threshold)}`, word };
}

function silenceCell(td, row) {
  const s = silence(row);
  td.replaceChildren();
  td.className = "silence " + s.cls;
  if (!s.cls) { td.textContent = s.text; return; }
  const bar = el("span", null, "bar");
  const fill = el("span");
  fill.style.width = Math.min(100, s.ratio * 100).toFixed(0) + "%";
  bar.append(fill);
  bar.setAttribute("aria-hidden", "true");
  td.append(bar, " ", el("span", s.text), " ", el("span", s.word, "silence-word"));
  return s.cls;
}

function actionButton(label, op, row, extra) {
  const b = el("button", label);
  b.type = "button";
  b.title = "needs the operator token";
  b.addEventListener("click", () => act(op, { work_item_id: row.id, ...(extra ? extra() : {}) }));
  return b;
}

function renderItems() {
  const tbody = $("items").tBodies[0];
  tbody.replaceChildren();
  for (const row of rows) {
    const tr = el("tr");
    tr.dataset.id = row.id;
    const progress = el("td");
    const p = el("progress");
    p.max = 100; p.value = row.progress;
    progress.append(p, ` ${row.progress}%${row.stage ? " · " + row.stage : ""}`);
    const silenceTd = el("td");
    const cls = silenceCell(silenceTd, row);
    tr.className = cls || "";
    const actions = el("td", null, "actions");
    if (row.status === "active") {
      const strategy = el("select");
      strategy.setAttribute("aria-label", `recovery strategy for ${row.id}`);
      for (const s of ["reassign", "retry", "fail"]) { const o = el("option", s); o.value = s; strategy.append(o); }
      actions.append(strategy, actionButton("Recover", "recover", row, () => ({ strategy: strategy.value })),
        " ", actionButton("Release", "release", row));
    } else if (row.status === "failed") {
      actions.append(actionButton("Retry", "retry", row));
    }
    tr.append(el("td", row.id), el("td", row.type), el("td", row.description, "desc"),
      el("td", row.team), el("td", row.agent || "–"), el("td", row.priority),
      el("td", row.status + (row.stale ? " (stale)" : "")), progress, silenceTd,
      el("td", row.lease), el("td", row.retries), actions);
    tbody.append(tr);
  }
  const first = total ? query.offset + 1 : 0;
  const last = query.offset + rows.length;
  $("items-caption").textContent = `Items ${first}–${last} of ${total}: stale, then active (most silent first), pending, failed, completed`;
  $("page-info").textContent = `${first}–${last} of ${total}`;
  $("prev").disabled = query.offset <= 0;
  $("next").disabled = last >= total;
}

function tickSilence() {
  const trs = $("items").tBodies[0].rows;
  for (let i = 0; i < trs.length && i < rows.length; i++) {
    const cls = silenceCell(trs[i].cells[8], rows[i]);
    trs[i].className = cls || "";
  }
}

function renderAgents(agents) {
  const tbody = $("agents").tBodies[0];
  tbody.replaceChildren();
  for (const a of agents.rows) {
    const tr = el("tr");
    const ago = a.last_heartbeat ? `${seconds(now() - a.last_heartbeat)} ago (${clock(a.last_heartbeat)})` : "never";
    const held = a.held ? `${a.held}: ${a.held_ids.join(", ")}${a.held > a.held_ids.length ? ", …" : ""}` : "0";
    tr.append(el("td", a.id), el("td", a.team), el("td", ago), el("td", held), el("td", a.completed));
    tbody.append(tr);
  }
  $("agents-caption").textContent = `Agents, most silent first (${agents.rows.length} of ${agents.total})`;
}

function renderEvents(events) {
  const ol = $("events");
  ol.replaceChildren(...events.map((e) => {
    const li = el("li");
    li.append(el("time", clock(e.at)), ` ${e.event}`,
      e.item ? ` ${e.item}` : "", e.agent ? ` by ${e.agent}` : "", e.detail ? ` (${e.detail})` : "");
    return li;
  }));
}

function renderAi(ai) {
  const dl = $("ai-status");
  dl.replaceChildren();
  const status = ai.status || {};
  if (status.error) dl.append(el("dt", "state"), el("dd", status.error));
  if (status.provider) dl.append(el("dt", "provider setting"), el("dd", status.provider));
  for (const [name, p] of Object.entries(status.providers || {})) {
    const state = p.reachable ? "reachable" : `unreachable (${p.error || "?"})`;
    dl.append(el("dt", `${name}${p.used ? " (in use)" : ""}`),
      el("dd", `${p.model || "no model"}: ${state}${p.detail && !p.reachable ? " — " + p.detail : ""}`));
  }
  if (!Object.keys(status).length) dl.append(el("dt", "state"), el("dd", "not asked yet"));
  if (ai.latest) {
    $("ai-latest").textContent = `${clock(ai.latest.at)} ${ai.latest.kind}\n` + JSON.stringify(ai.latest.result, null, 2);
  }
}

async function act(op, body) {
  const status = $("actions-status");
  status.className = "";
  status.textContent = `${op}${body.work_item_id ? " " + body.work_item_id : ""}: sending…`;
  try {
    const r = await fetch(`/api/action/${op}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const data = await r.json();
    if (r.ok) {
      status.textContent = `${op}${body.work_item_id ? " " + body.work_item_id : ""}: done`;
    } else {
      status.className = "refused";
      status.textContent = `${op} refused: ${data.error}`;
    }
  } catch (e) {
    status.className = "refused";
    status.textContent = `${op} failed: ${e}`;
  }
}

$("filters").addEventListener("input", (e) => {
  const form = $("filters");
  for (const name of ["status", "team", "work_type", "agent", "text"]) query[name] = form.elements[name].value;
  query.offset = 0;
  sendQuery();
});
$("filters").addEventListener("submit", (e) => e.preventDefault());
$("prev").addEventListener("click", () => { query.offset = Math.max(0, query.offset - query.limit); sendQuery(); });
$("next").addEventListener("click", () => { query.offset += query.limit; sendQuery(); });
$("ai-run").addEventListener("click", () => act("ai_priorities", {}));
$("recover-all").addEventListener("submit", (e) => {
  e.preventDefault();
  act("recover", { strategy: $("recover-all").elements.strategy.value });
});
setInterval(tickSilence, 500);
connect();
