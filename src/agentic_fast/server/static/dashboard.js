// agentic-fast dashboard: live calls from GET /calls/events (SSE), recent calls from
// GET /calls/history, one call from GET /calls/{id}, hang-up by POST /calls/{id}/hangup.
// Plain JS, no build step, no dependency; the session cookie set by /dashboard?token=
// authorises the requests (same origin).
"use strict";

const HISTORY_LIMIT = 50;
const CHART_MINUTES = 30;
const live = new Map();      // call_id -> {summary, seenAt, firstAudioMs, bargeInMs}
const recent = new Map();    // call_id -> summary (ended calls), newest first on render
const createdPerMinute = new Map();  // minute (epoch ms) -> count
const errorsPerMinute = new Map();
const latencies = [];        // [{t, ms}] first-audio latency per call
let info = {provider: "", carrier: ""};
let selected = null;

const $ = (id) => document.getElementById(id);

function maskNumber(number) {
  // as the server's logs do: +15551230000 -> +15*******00; other ids only by kind
  const n = (number || "").trim();
  if (/^\+[1-9][0-9]{6,14}$/.test(n)) return n.slice(0, 3) + "*".repeat(n.length - 5) + n.slice(-2);
  if (!n) return "(none)";
  const scheme = n.includes(":") ? n.split(":")[0].toLowerCase() : "";
  return scheme === "client" || scheme === "sip" ? `(${scheme}:...)` : "(not e164)";
}

function otherParty(s) { return s.direction === "inbound" ? s.from : s.to; }

function fmtDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

function minuteOf(iso) {
  const t = iso ? Date.parse(iso) : Date.now();
  return Math.floor(t / 60000) * 60000;
}

function bump(map, minute) { map.set(minute, (map.get(minute) || 0) + 1); }

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function showError(message) {
  $("error").textContent = message || "";
}

async function api(path, options) {
  const resp = await fetch(path, Object.assign({credentials: "same-origin"}, options || {}));
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const why = body && body.error ? body.error : resp.statusText;
    throw new Error(`${resp.status} ${why}`);
  }
  return body;
}

// -- live calls -------------------------------------------------------------------------

function liveDuration(entry) {
  const s = entry.summary;
  if (s.status !== "in-progress") return s.duration_s || 0;
  return (s.duration_s || 0) + (performance.now() - entry.seenAt) / 1000;
}

function latencyText(entry) {
  const parts = [];
  if (entry.firstAudioMs != null) parts.push(`first audio ${Math.round(entry.firstAudioMs)} ms`);
  if (entry.bargeInMs != null) parts.push(`barge-in ${Math.round(entry.bargeInMs)} ms`);
  return parts.join(" · ");
}

function renderLive() {
  const body = $("live").tBodies[0];
  body.textContent = "";
  const rows = [...live.values()].sort((a, b) => (a.summary.created_at < b.summary.created_at ? -1 : 1));
  for (const entry of rows) {
    const s = entry.summary;
    const tr = document.createElement("tr");
    tr.dataset.callId = s.call_id;
    tr.append(cell(maskNumber(otherParty(s))), cell(s.direction), cell(s.status, `status-${s.status}`),
              cell(fmtDuration(liveDuration(entry)), "duration"), cell(info.provider),
              cell(info.carrier), cell(latencyText(entry)));
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hangup";
    button.textContent = "Hang up";
    button.disabled = !s.call_sid || entry.hangingUp === true;
    button.addEventListener("click", () => hangUp(s.call_id, button));
    td.append(button);
    tr.append(td);
    body.append(tr);
  }
  $("live-empty").hidden = live.size > 0;
  $("counts").textContent = `${live.size} live · ${recent.size} recent`;
}

function tickDurations() {
  for (const tr of $("live").tBodies[0].rows) {
    const entry = live.get(tr.dataset.callId);
    if (entry) tr.querySelector(".duration").textContent = fmtDuration(liveDuration(entry));
  }
}

async function hangUp(callId, button) {
  const entry = live.get(callId);
  if (entry) entry.hangingUp = true;
  button.disabled = true;
  try {
    await api(`/calls/${encodeURIComponent(callId)}/hangup`, {method: "POST"});
    showError("");
  } catch (e) {
    if (entry) entry.hangingUp = false;
    button.disabled = false;
    showError(`hang-up failed: ${e.message}`);
  }
}

// -- recent calls -----------------------------------------------------------------------

function renderRecent() {
  const body = $("recent").tBodies[0];
  body.textContent = "";
  const rows = [...recent.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1))
    .slice(0, HISTORY_LIMIT);
  for (const s of rows) {
    const tr = document.createElement("tr");
    tr.dataset.callId = s.call_id;
    if (s.call_id === selected) tr.className = "selected";
    tr.append(cell(fmtTime(s.created_at)), cell(maskNumber(otherParty(s))), cell(s.direction),
              cell(s.status, `status-${s.status}`), cell(s.reason || ""),
              cell(fmtDuration(s.duration_s || 0)), cell(String(s.transcript_turns || 0)));
    tr.addEventListener("click", () => showDetail(s.call_id));
    body.append(tr);
  }
  $("recent-empty").hidden = recent.size > 0;
}

async function showDetail(callId) {
  selected = callId;
  renderRecent();
  let call;
  try {
    call = await api(`/calls/${encodeURIComponent(callId)}`);
  } catch (e) {
    showError(`cannot load call: ${e.message}`);
    return;
  }
  $("detail").hidden = false;
  $("detail-id").textContent = call.call_id;
  const meta = $("detail-meta");
  meta.textContent = "";
  const fields = [["Number", maskNumber(otherParty(call))], ["Direction", call.direction],
                  ["Status", call.status], ["Ended by", call.reason || ""],
                  ["Started", call.created_at || ""], ["Answered", call.answered_at || ""],
                  ["Ended", call.ended_at || ""], ["Duration", fmtDuration(call.duration_s || 0)]];
  for (const [k, v] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    meta.append(dt, dd);
  }
  const transcript = $("detail-transcript");
  transcript.textContent = "";
  for (const line of call.transcript || []) {
    const li = document.createElement("li");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = line.role === "user" ? "caller" : line.role === "assistant" ? "agent" : line.role;
    li.append(role, document.createTextNode(line.text));
    transcript.append(li);
  }
  const commands = $("detail-commands");
  commands.textContent = "";
  for (const cmd of call.commands || []) {
    const li = document.createElement("li");
    const answer = cmd.answer || cmd.error || "";
    li.textContent = `${cmd.command} → ${cmd.status}${answer ? ": " + answer : ""}`;
    commands.append(li);
  }
  showError("");
}

// -- charts (hand-drawn on canvas) ------------------------------------------------------

function minutesSeries(map) {
  const now = Math.floor(Date.now() / 60000) * 60000;
  const out = [];
  for (let i = CHART_MINUTES - 1; i >= 0; i--) out.push(map.get(now - i * 60000) || 0);
  return out;
}

function drawBars(canvas, values, color) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 18;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...values);
  ctx.fillStyle = "#6b7380";
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(String(max), 2, 10);
  ctx.fillText("0", 2, h - pad + 4);
  ctx.strokeStyle = "#dfe3ea";
  ctx.beginPath();
  ctx.moveTo(pad, h - pad + 0.5);
  ctx.lineTo(w, h - pad + 0.5);
  ctx.stroke();
  const bw = (w - pad) / values.length;
  ctx.fillStyle = color;
  values.forEach((v, i) => {
    const bh = (h - pad - 12) * (v / max);
    ctx.fillRect(pad + i * bw + 1, h - pad - bh, Math.max(1, bw - 2), bh);
  });
  ctx.fillStyle = "#6b7380";
  ctx.fillText(`-${values.length} min`, pad, h - 4);
  ctx.fillText("now", w - 22, h - 4);
}

function drawLine(canvas, points, color) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#6b7380";
  ctx.font = "10px system-ui, sans-serif";
  if (!points.length) {
    ctx.fillText("no data yet", w / 2 - 25, h / 2);
    return;
  }
  const max = Math.max(1, ...points.map((p) => p.ms));
  ctx.fillText(`${Math.round(max)}`, 2, 10);
  ctx.fillText("0", 2, h - 6);
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.beginPath();
  const step = points.length > 1 ? (w - pad - 4) / (points.length - 1) : 0;
  points.forEach((p, i) => {
    const x = pad + i * step, y = h - 6 - (h - 18) * (p.ms / max);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  points.forEach((p, i) => {
    const x = pad + i * step, y = h - 6 - (h - 18) * (p.ms / max);
    ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
  });
}

function drawCharts() {
  drawBars($("chart-calls"), minutesSeries(createdPerMinute), "#2a6fdb");
  drawLine($("chart-latency"), latencies.slice(-50), "#1e8e3e");
  drawBars($("chart-errors"), minutesSeries(errorsPerMinute), "#c0392b");
}

// -- events -----------------------------------------------------------------------------

function upsertLive(summary) {
  const entry = live.get(summary.call_id) || {};
  entry.summary = summary;
  entry.seenAt = performance.now();
  live.set(summary.call_id, entry);
}

function onSummary(summary) {
  if (summary.status === "completed" || summary.status === "failed") {
    live.delete(summary.call_id);
    recent.set(summary.call_id, summary);
    renderRecent();
  } else {
    upsertLive(summary);
  }
  renderLive();
}

const handlers = {
  "calls.snapshot": (data) => {
    info = {provider: data.provider || "", carrier: data.carrier || ""};
    live.clear();
    for (const s of data.active || []) upsertLive(s);
    renderLive();
  },
  "call.created": (data) => { bump(createdPerMinute, minuteOf(data.created_at)); onSummary(data); },
  "call.updated": onSummary,
  "call.status": (data) => {
    if (data.status === "failed") bump(errorsPerMinute, minuteOf(data.ended_at));
    onSummary(data);
  },
  "call.first_audio": (data, ev) => {
    const entry = live.get(ev.call_id);
    if (entry) entry.firstAudioMs = data.after_start_ms;
    latencies.push({t: Date.now(), ms: data.after_start_ms});
    renderLive();
  },
  "call.barge_in": (data, ev) => {
    const entry = live.get(ev.call_id);
    if (entry) { entry.bargeInMs = data.reaction_ms; renderLive(); }
  },
  "call.transcript": (data, ev) => { if (ev.call_id === selected) showDetail(selected); },
  "call.command": (data, ev) => { if (ev.call_id === selected) showDetail(selected); },
  "events.dropped": () => { loadHistory(); },  // we missed some: reload what we show
};

function connect() {
  const source = new EventSource("/calls/events");
  const status = $("conn");
  source.onopen = () => { status.textContent = "live"; status.className = "conn conn-ok"; };
  source.onerror = () => {
    status.textContent = "reconnecting…";
    status.className = "conn conn-bad";
  };
  for (const type of Object.keys(handlers)) {
    source.addEventListener(type, (msg) => {
      const ev = JSON.parse(msg.data);
      handlers[type](ev.data, ev);
      drawCharts();
    });
  }
}

async function loadHistory() {
  try {
    const doc = await api(`/calls/history?limit=${HISTORY_LIMIT}`);
    info = {provider: doc.provider || info.provider, carrier: doc.carrier || info.carrier};
    for (const s of doc.calls) {
      if (s.status === "completed" || s.status === "failed") {
        if (!recent.has(s.call_id)) {
          bump(createdPerMinute, minuteOf(s.created_at));
          if (s.status === "failed") bump(errorsPerMinute, minuteOf(s.ended_at));
        }
        recent.set(s.call_id, s);
        live.delete(s.call_id);
      } else if (!live.has(s.call_id)) {
        bump(createdPerMinute, minuteOf(s.created_at));
        upsertLive(s);
      }
    }
    renderLive();
    renderRecent();
    drawCharts();
  } catch (e) {
    showError(`cannot load recent calls: ${e.message}`);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("detail-close").addEventListener("click", () => {
    $("detail").hidden = true;
    selected = null;
    renderRecent();
  });
  renderLive();
  renderRecent();
  drawCharts();
  loadHistory().then(connect);
  setInterval(tickDurations, 1000);
  setInterval(drawCharts, 30000);
});
