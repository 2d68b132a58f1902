// Conversations: the list (kept in localStorage), one turn's SSE stream, Stop, and the live cache view.
import { ApiError, apiFetch, errorOf, explain, getJson, sseEvents } from "./api.js";
import { renderCache } from "./cachebar.js";
import { el, fmt, shortId } from "./dom.js";

const STORE = "swiftinfer.playground.v1";
const POLL_MS = 1000; // session info while a turn streams
const $ = (id) => document.getElementById(id);

let cfg = null; // {model_id, sink_tokens, window}
let state = { convs: [], active: null };
const running = new Map(); // conversation id -> AbortController of its turn in flight

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "null");
    if (saved && Array.isArray(saved.convs)) state = saved;
  } catch { /* a damaged store starts empty rather than breaking the page */ }
  for (const c of state.convs) {
    for (const m of c.messages) if (m.state === "streaming") m.state = "stopped"; // the page went away mid-turn
  }
}

function save() { localStorage.setItem(STORE, JSON.stringify(state)); }

function randomHex(n) {
  // getRandomValues, not randomUUID: the latter needs a secure context (https or localhost)
  return Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function newConv() {
  const c = { id: randomHex(6), sessionId: `pg-${randomHex(6)}`, title: `Conversation ${state.convs.length + 1}`,
              temperature: 0.7, maxTokens: 128, messages: [], info: null, notice: null, error: null };
  state.convs.unshift(c);
  state.active = c.id;
  save();
  return c;
}

const active = () => state.convs.find((c) => c.id === state.active) || null;

// ---- rendering --------------------------------------------------------------------------
function renderList() {
  $("conv-list").replaceChildren(...state.convs.map((c) => el("li", {
    class: `${c.id === state.active ? "active" : ""} ${running.has(c.id) ? "running" : ""}`,
    dataset: { conv: c.id, session: c.sessionId },
    onclick: () => { state.active = c.id; save(); render(); },
  }, el("span", { class: "title" }, c.title), el("small", {}, `${c.sessionId} · ${rounds(c)}`))));
}

function rounds(c) {
  const n = c.info ? c.info.rounds : 0;
  return `${n} round${n === 1 ? "" : "s"}`;
}

function turnStats(m) {
  const s = m.stats;
  if (!s) return null;
  return el("div", { class: "turn-stats", dataset: { ttftMs: fmt(s.ttftMs), tps: fmt(s.tps, 1) } },
    `TTFT ${fmt(s.ttftMs)} ms · ${fmt(s.tps, 1)} tokens/s · ${s.tokens ?? "?"} tokens · ${s.cache || "?"} cache · replica ${shortId(s.replica)}`);
}

function renderMessage(m) {
  const label = { stopped: "stopped: the server rolled this turn back", error: `failed: ${m.error || "no reason given"}` }[m.state];
  return el("li", { class: `msg ${m.role}`, dataset: { state: m.state || "done" } },
    el("div", { class: "text" }, m.content), label && el("div", { class: "turn-note" }, label), turnStats(m));
}

function renderConv() {
  const c = active();
  $("conv").hidden = !c;
  if (!c) return;
  $("conv-title").textContent = c.title;
  $("conv-session").textContent = c.sessionId;
  $("temperature").value = c.temperature;
  $("max-tokens").value = c.maxTokens;
  $("messages").replaceChildren(...c.messages.map(renderMessage));
  followEnd();
  renderInfo(c);
  const busy = running.has(c.id);
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("conv-error").hidden = !c.error;
  $("conv-error").textContent = c.error || "";
}

function renderInfo(c) {
  $("cache").replaceChildren(renderCache(c.info, cfg ? cfg.sink_tokens : 0),
    c.notice ? el("p", { class: "notice", id: "move-notice" }, c.notice) : "");
}

export function render() { renderList(); renderConv(); }

// ---- session info -----------------------------------------------------------------------
async function refreshInfo(c) {
  let info;
  try {
    info = await getJson(`v1/sessions/${encodeURIComponent(c.sessionId)}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return; // nothing committed yet
    throw e;
  }
  const before = c.info;
  if (before && before.replica && info.replica && before.replica !== info.replica) {
    c.notice = `This conversation moved from replica ${shortId(before.replica)} to ${shortId(info.replica)}` +
      (info.recovered ? ": rebuilt there from its log (sinks + window recomputed), nothing lost." : ".");
  } else if (info.recovered && !(before && before.recovered)) {
    c.notice = "Recovered: the replica rebuilt this conversation from its log (sinks + window recomputed).";
  }
  c.info = info;
  if (c.id === state.active) renderInfo(c);
  renderList();
}

// ---- a turn -----------------------------------------------------------------------------
async function send(c, text) {
  const user = { role: "user", content: text, state: "done" };
  const reply = { role: "assistant", content: "", state: "streaming" };
  c.messages.push(user, reply);
  if (c.messages.length === 2) c.title = text.slice(0, 40);
  c.error = null;
  const ctl = new AbortController();
  running.set(c.id, ctl);
  save();
  render();
  const poll = setInterval(() => refreshInfo(c).catch(() => {}), POLL_MS);
  const t0 = performance.now();
  let tFirst = null;
  let last = null;
  try {
    const resp = await apiFetch("v1/chat/completions", {
      method: "POST", signal: ctl.signal,
      // only the new message: the server keeps the conversation (its cache and log) under session_id
      body: JSON.stringify({ model: cfg.model_id, session_id: c.sessionId, stream: true, temperature: Number(c.temperature),
                             max_tokens: Number(c.maxTokens), messages: [{ role: "user", content: text }] }),
    });
    if (!resp.ok) throw await errorOf(resp);
    for await (const ev of sseEvents(resp)) {
      if (ev.error) { // headers were sent already: the service reports in-band
        const code = ev.error.code || "";
        throw explain(/replica|engine/.test(code) ? 503 : 500, ev.error, null);
      }
      const delta = ev.choices && ev.choices[0] && ev.choices[0].delta && ev.choices[0].delta.content;
      if (delta) {
        if (tFirst === null) tFirst = performance.now();
        reply.content += delta;
        if (c.id === state.active) updateStreaming(reply);
      }
      if (ev.usage) last = ev;
    }
    const tEnd = performance.now();
    const tokens = last ? last.usage.completion_tokens : null;
    reply.state = "done";
    reply.stats = { ttftMs: tFirst === null ? null : tFirst - t0, tokens,
                    tps: tokens > 1 && tFirst !== null && tEnd > tFirst ? (tokens - 1) / ((tEnd - tFirst) / 1000) : null,
                    cache: last && last.cache, replica: (last && last.replica_id) || resp.headers.get("x-replica-id") };
  } catch (e) {
    if (e.name === "AbortError") {
      reply.state = "stopped";
    } else {
      reply.state = "error";
      reply.error = e.message; // stays with the message; the note below the composer clears after the retry time
      c.error = e.message;
      if (e.retryAfterS) setTimeout(() => { if (c.error === e.message) { c.error = null; render(); } }, e.retryAfterS * 1000);
    }
  } finally {
    clearInterval(poll);
    running.delete(c.id);
    save();
    render();
    // after a stop the server needs a moment to roll the turn back; read the committed state then
    setTimeout(() => refreshInfo(c).then(save).catch(() => {}), reply.state === "stopped" ? 500 : 0);
  }
}

// While streaming, only the last message's text changes: no full re-render per chunk.
function updateStreaming(reply) {
  const node = $("messages").lastElementChild;
  if (node) node.querySelector(".text").textContent = reply.content;
  followEnd();
}

// Keep the newest text in sight, as a chat does.
function followEnd() { const list = $("messages"); list.scrollTop = list.scrollHeight; }

// ---- wiring -----------------------------------------------------------------------------
export async function initChat(config) {
  cfg = config;
  load();
  if (!state.convs.length) newConv();
  $("new-conv").addEventListener("click", () => { newConv(); render(); $("prompt").focus(); });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const c = active();
    const text = $("prompt").value.trim();
    if (!c || !text || running.has(c.id)) return;
    $("prompt").value = "";
    send(c, text);
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => { const c = active(); if (c && running.has(c.id)) running.get(c.id).abort(); });
  $("temperature").addEventListener("change", (ev) => { const c = active(); if (c) { c.temperature = ev.target.value; save(); } });
  $("max-tokens").addEventListener("change", (ev) => { const c = active(); if (c) { c.maxTokens = ev.target.value; save(); } });
  $("delete-conv").addEventListener("click", async () => {
    const c = active();
    if (!c || running.has(c.id)) return;
    const resp = await apiFetch(`v1/sessions/${encodeURIComponent(c.sessionId)}`, { method: "DELETE" }).catch(() => null);
    if (resp && !resp.ok && resp.status !== 404) { c.error = (await errorOf(resp)).message; render(); return; }
    state.convs = state.convs.filter((x) => x !== c);
    state.active = state.convs.length ? state.convs[0].id : newConv().id;
    save();
    render();
  });
  render();
  for (const c of state.convs) refreshInfo(c).catch(() => {});
}

// The cluster view marks the conversations of this browser.
export function mySessions() { return new Set(state.convs.map((c) => c.sessionId)); }
