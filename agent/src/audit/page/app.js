// SPDX-License-Identifier: GPL-3.0-or-later
// The audit page: four views over the JSON endpoints of `mailstamp audit --serve`.
// Everything that came from the chain or a message reaches the DOM through textContent or
// attribute setters only (never as markup), so a hostile subject or file name stays text.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function showError(msg) {
  const p = $("error");
  p.textContent = msg || "";
  p.hidden = !msg;
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  let body;
  try { body = await r.json(); } catch (_) { body = { error: `HTTP ${r.status}` }; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function isoTime(t) {
  if (t === null || t === undefined) return "";
  return new Date(t * 1000).toISOString().replace("T", " ").replace(".000Z", "");
}

function short(h) {
  const s = String(h);
  return s.length > 20 ? `${s.slice(0, 10)}…${s.slice(-6)}` : s;
}

// A link only for http(s) targets: a template that made anything else stays text.
function link(href, text) {
  if (typeof href === "string" && /^https?:\/\//i.test(href)) {
    const a = el("a", text);
    a.href = href;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    return a;
  }
  return el("span", text);
}

function recordLink(id) {
  const a = el("a", short(id), "mono");
  a.href = `#/record/${encodeURIComponent(id)}`;
  a.title = id;
  a.dataset.id = id;
  return a;
}

function txCell(tx, explorer) {
  const td = el("td", null, "mono");
  td.title = tx;
  td.appendChild(explorer ? link(explorer, short(tx)) : el("span", short(tx)));
  return td;
}

function factRows(tbody, rows) {
  tbody.replaceChildren();
  for (const [k, v, id] of rows) {
    if (v === undefined) continue;
    const tr = el("tr");
    tr.appendChild(el("th", k));
    const td = el("td", null, "mono");
    if (v instanceof Node) td.appendChild(v); else td.textContent = v === null ? "–" : String(v);
    if (id) td.id = id;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
}

// ---- health (also fills the chain line of every view)
let health = null;
async function loadHealth() {
  try {
    health = await api("/api/health");
    $("chain-line").textContent =
      `chain ${health.chain_id} · head ${health.head} · registry ${health.registry}`;
  } catch (e) {
    showError(e.message);
  }
  return health;
}

async function viewHealth() {
  const h = await loadHealth();
  if (!h) return;
  const v = h.registry_version;
  factRows($("health-table").tBodies[0], [
    ["Chain id", h.chain_id, "health-chain"],
    ["Head block", h.head, "health-head"],
    ["Head time (UTC)", isoTime(h.head_time)],
    ["RPC endpoint(s)", h.rpc.join(", "), "health-rpc"],
    ["Registry", h.registry],
    ["Registry version", v.Ok !== undefined ? v.Ok : `none: ${v.Err}`],
    ["Confirmations", h.confirmations],
    ["Events from block", h.from_block],
    ["Writer", h.writer, "health-writer"],
    ["Writer balance", h.balance, "health-balance"],
    ["Explorer links", h.explorer ? "configured (chain.explorer_tx_url)" : "not configured"],
  ]);
}

// ---- activity
let activityWriter = "";
let activityNext = null;

function drawChart(c) {
  const fig = $("chart");
  fig.replaceChildren();
  const n = c.starts.length;
  const W = 720, H = 150, L = 34, B = 22, T = 10;
  const bw = (W - L - 6) / n;
  const totals = c.starts.map((_, i) => c.direct[i] + c.batched[i]);
  const max = Math.max(1, ...totals);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  const text = (x, y, s, anchor) => {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", x); t.setAttribute("y", y);
    if (anchor) t.setAttribute("text-anchor", anchor);
    t.textContent = s;
    svg.appendChild(t);
  };
  const hline = (y) => {
    const l = document.createElementNS(SVG, "line");
    l.setAttribute("x1", L); l.setAttribute("x2", W - 4);
    l.setAttribute("y1", y); l.setAttribute("y2", y);
    svg.appendChild(l);
  };
  const ph = H - B - T;
  hline(T); hline(T + ph);
  text(L - 4, T + 4, String(max), "end");
  text(L - 4, T + ph, "0", "end");
  c.starts.forEach((s, i) => {
    const x = L + i * bw + 1;
    let y = T + ph;
    for (const [val, cls] of [[c.direct[i], "bar-direct"], [c.batched[i], "bar-batched"]]) {
      if (!val) continue;
      const h = (val / max) * ph;
      y -= h;
      const r = document.createElementNS(SVG, "rect");
      r.setAttribute("x", x); r.setAttribute("y", y);
      r.setAttribute("width", Math.max(1, bw - 2)); r.setAttribute("height", h);
      r.setAttribute("class", cls);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${isoTime(s)}: ${val} ${cls === "bar-direct" ? "direct" : "batched"}`;
      r.appendChild(title);
      svg.appendChild(r);
    }
    const step = c.unit === "hour" ? 6 : 5;
    if (i % step === 0) {
      const d = new Date(s * 1000).toISOString();
      text(x, H - 6, c.unit === "hour" ? `${d.slice(11, 13)}:00` : d.slice(5, 10));
    }
  });
  svg.dataset.total = String(totals.reduce((a, b) => a + b, 0));
  svg.id = "chart-svg";
  fig.appendChild(svg);
  const cap = el("figcaption", null, "muted");
  cap.textContent = `Messages recorded per ${c.unit} (UTC): dark = direct stamps, light = in batches` +
    ` · ${svg.dataset.total} in all${c.partial ? " (scan bounded: the oldest bars may be low)" : ""}`;
  fig.appendChild(cap);
}

function activityRow(it) {
  const tr = el("tr");
  tr.dataset.kind = it.kind;
  tr.appendChild(el("td", it.kind === "stamp" ? "stamp (direct)" : "anchor (batch)"));
  const key = it.kind === "stamp" ? it.token : it.batch;
  const td = el("td");
  td.appendChild(recordLink(key));
  tr.appendChild(td);
  tr.appendChild(el("td", it.kind === "stamp" ? 1 : it.size));
  tr.appendChild(el("td", it.block));
  tr.appendChild(el("td", isoTime(it.time)));
  tr.appendChild(txCell(it.tx, it.explorer));
  return tr;
}

async function loadActivity(more) {
  const tbody = $("activity-table").tBodies[0];
  const q = new URLSearchParams({ writer: activityWriter || "any", limit: "25" });
  if (more && activityNext) q.set("before", activityNext);
  try {
    const r = await api(`/api/activity?${q}`);
    if (!more) tbody.replaceChildren();
    for (const it of r.page.items) tbody.appendChild(activityRow(it));
    activityNext = r.page.next;
    $("activity-older").hidden = !activityNext;
    $("activity-empty").hidden = tbody.rows.length > 0;
    $("activity-searched").textContent =
      `${tbody.rows.length} shown · blocks ${r.page.searched[0]}–${r.page.searched[1]} searched last`;
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

async function loadChart() {
  const q = new URLSearchParams({ writer: activityWriter || "any", unit: $("chart-unit").value });
  try { drawChart(await api(`/api/chart?${q}`)); } catch (e) { showError(e.message); }
}

async function viewActivity(params) {
  if (!health) await loadHealth();
  const w = params.get("writer");
  activityWriter = w !== null ? w : (health && health.writer) || "";
  $("writer-input").value = activityWriter;
  await Promise.all([loadActivity(false), loadChart()]);
}

// ---- one record
let currentRecord = null;
async function viewRecord(id) {
  $("record-id").value = id || "";
  $("record-table").hidden = true;
  $("leaf-form").hidden = true;
  $("leaf-result").textContent = "";
  if (!id) return;
  try {
    const r = await api(`/api/record?${new URLSearchParams({ id })}`);
    currentRecord = r;
    factRows($("record-table").tBodies[0], [
      ["Kind", r.kind === "stamp" ? "stamp (direct: one message)" : "anchor (batch root)", "record-kind"],
      [r.kind === "stamp" ? "Token" : "Batch id", r.key, "record-key"],
      ["Writer", r.writer, "record-writer"],
      [r.kind === "stamp" ? "Commitment" : "Merkle root", r.value, "record-value"],
      ["Messages", r.size === null ? 1 : r.size],
      ["Block", r.block, "record-block"],
      ["Time (UTC)", `${isoTime(r.time)} (${r.time})`],
      ["Confirmations now", `${r.confirmations} (${r.confirmed ? "counts as confirmed" : "not confirmed yet"})`, "record-confirmations"],
      ["Transaction", r.explorer ? link(r.explorer, r.tx) : r.tx, "record-tx"],
    ]);
    $("record-table").hidden = false;
    $("leaf-form").hidden = r.kind !== "anchor";
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

async function checkLeaf(ev) {
  ev.preventDefault();
  if (!currentRecord) return;
  const q = new URLSearchParams({
    writer: currentRecord.writer, batch: currentRecord.key,
    commitment: $("leaf-commitment").value.trim(), proof: $("leaf-proof").value.trim(),
  });
  try {
    const r = await api(`/api/verify-stamp?${q}`);
    $("leaf-result").textContent = r.verify_stamp
      ? "verifyStamp: true — the proof leads from this commitment to the anchored root"
      : "verifyStamp: false — this commitment and proof do not lead to the anchored root";
    $("leaf-result").dataset.result = String(r.verify_stamp);
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

// ---- verify a message
async function verifyBytes(bytes, name) {
  const q = new URLSearchParams();
  for (const r of $("verify-rcpt").value.split(/[\s,;]+/)) if (r) q.append("rcpt", r);
  if (name) q.set("name", name);
  $("report").hidden = true;
  try {
    const r = await api(`/api/verify?${q}`, {
      method: "POST", body: bytes, headers: { "content-type": "message/rfc822" },
    });
    showReport(r);
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

function showReport(r) {
  const v = $("verdict");
  v.textContent = r.verdict;
  v.className = `verdict ${r.verdict}`;
  $("score").textContent = r.score === null ? "" : `score ${r.score.toFixed(2)}`;
  $("reason").textContent = r.reason || "";
  const rows = [
    ["File", r.file, "report-file"],
    ["From", r.from, "report-from"],
    ["Subject", r.subject, "report-subject"],
    ["Envelope recipients", r.rcpts.join(", ") || "(none given)"],
    ["Differs", r.differs || "nothing", "report-differs"],
    ["Writer", r.writer],
    ["Writer authorised", r.writer_auth === null ? null : `${r.writer_auth}: ${r.writer_auth_detail}`, "report-auth"],
    ["Chain / registry", r.chain_id === null ? null : `${r.chain_id} / ${r.registry}`],
    // A batched message's token keys no record of its own: its batch does.
    ["Token", r.token ? (r.batch ? r.token : recordLink(r.token)) : null],
  ];
  if (r.batch) rows.push(["Batch", recordLink(r.batch)]);
  if (r.verify_stamp !== null) rows.push(["verifyStamp (contract)", String(r.verify_stamp), "report-verify-stamp"]);
  rows.push(["Recorded (UTC)", r.time === null ? null : isoTime(r.time)]);
  rows.push(["Block", r.block]);
  rows.push(["Transaction", r.tx ? (r.explorer ? link(r.explorer, r.tx) : r.tx) : null]);
  factRows($("report-table").tBodies[0], rows);
  const tb = $("components").tBodies[0];
  tb.replaceChildren();
  for (const c of r.components) {
    const tr = el("tr");
    tr.dataset.name = c.name;
    tr.dataset.status = c.match;
    if (!["match", "explained", "unavailable"].includes(c.match)) tr.className = "differs";
    tr.appendChild(el("td", c.name, "mono"));
    tr.appendChild(el("td", c.match === "mismatch" ? "differs" : c.match, `st ${c.match}`));
    tr.appendChild(el("td", c.weight));
    tr.appendChild(el("td", c.note || ""));
    tb.appendChild(tr);
  }
  $("report").hidden = false;
}

async function verifyFile(f) {
  if (!f) return;
  await verifyBytes(await f.arrayBuffer(), f.name);
}

// ---- routing
const views = ["activity", "record", "verify", "health"];
async function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [path, qs] = h.split("?");
  const [view, arg] = path.split("/");
  const name = views.includes(view) ? view : "activity";
  for (const v of views) {
    $(`view-${v}`).hidden = v !== name;
    $(`nav-${v}`).classList.toggle("active", v === name);
  }
  document.body.dataset.view = name;
  showError("");
  const params = new URLSearchParams(qs || "");
  if (name === "activity") await viewActivity(params);
  else if (name === "record") await viewRecord(arg ? decodeURIComponent(arg) : "");
  else if (name === "health") await viewHealth();
  else if (!health) await loadHealth();
  document.body.dataset.ready = name;
}

window.addEventListener("hashchange", () => { document.body.dataset.ready = ""; route(); });
window.addEventListener("DOMContentLoaded", () => {
  $("activity-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/activity?${new URLSearchParams({ writer: $("writer-input").value.trim() })}`;
  });
  $("chart-unit").addEventListener("change", loadChart);
  $("activity-older").addEventListener("click", () => loadActivity(true));
  $("record-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/record/${encodeURIComponent($("record-id").value.trim())}`;
  });
  $("leaf-form").addEventListener("submit", checkLeaf);
  $("verify-file").addEventListener("change", (ev) => verifyFile(ev.target.files[0]));
  $("verify-go").addEventListener("click", () =>
    verifyBytes(new TextEncoder().encode($("verify-paste").value), "pasted"));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    verifyFile(ev.dataTransfer.files[0]);
  });
  route();
});
