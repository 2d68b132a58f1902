// The cluster view: one JSON feed (GET /v1/cluster), polled while the tab is open.
import { getJson } from "./api.js";
import { mySessions } from "./chat.js";
import { el, fmt, shortId } from "./dom.js";

const POLL_MS = 1500;
const $ = (id) => document.getElementById(id);
let timer = null;
let lastIds = null; // replica ids of the previous poll
const observed = []; // replica set changes this page saw between polls

export function startCluster() {
  if (timer) return;
  const tick = () => poll().catch((e) => showError(e.message));
  tick();
  timer = setInterval(tick, POLL_MS);
}

export function stopCluster() { clearInterval(timer); timer = null; }

function showError(msg) {
  $("replicas").replaceChildren(el("p", { class: "error" }, msg));
}

async function poll() {
  const view = await getJson("v1/cluster");
  const ids = new Set(view.replicas.map((r) => r.id));
  if (lastIds) {
    for (const id of ids) if (!lastIds.has(id)) observed.push({ t: view.time, kind: "observed", text: `replica ${shortId(id)} appeared` });
    for (const id of lastIds) if (!ids.has(id)) observed.push({ t: view.time, kind: "observed", text: `replica ${shortId(id)} disappeared` });
  }
  lastIds = ids;
  render(view);
}

function render(view) {
  const d = view.deployment;
  $("deployment").replaceChildren(el("p", {},
    `${view.replicas.length} LLM replica(s) reporting (scaling ${view.scaling.min_replicas}–${view.scaling.max_replicas}). `,
    d ? `Serve: ${d.status} (${d.trigger}), ${Object.entries(d.replica_states).map(([k, v]) => `${v} ${k}`).join(", ")}. ` : "",
    `Cache per conversation: ${view.engine.sink_tokens} sinks + ${view.engine.window ?? "default"} window.`));
  const mine = mySessions();
  $("replicas").replaceChildren(...view.replicas.map((r) => replicaCard(r, mine, view.events)));
  const events = [...view.events.map((e) => ({ t: e.t, kind: e.kind, text: describe(e) })), ...observed]
    .sort((a, b) => b.t - a.t).slice(0, 40);
  $("events").replaceChildren(...(events.length ? events.map((e) => el("li", { dataset: { kind: e.kind } },
    el("time", {}, new Date(e.t * 1000).toLocaleTimeString()), " ", e.text)) : [el("li", { class: "muted" }, "none yet")]));
}

function replicaCard(r, mine, events) {
  const used = (r.slots ?? 0) - (r.free_slots ?? 0);
  const landed = new Set(events.filter((e) => e.kind === "moved" && e.dst === r.id).map((e) => e.session));
  return el("section", { class: "replica", dataset: { replica: r.id } },
    el("h3", { title: r.id }, `replica ${shortId(r.id)}`, r.draining ? el("span", { class: "badge warn" }, "draining") : ""),
    el("div", { class: "bar", title: `${used} of ${r.slots} KV slots in use` },
      el("span", { class: "seg window", style: { flexGrow: String(100 * used / Math.max(1, r.slots)) } }),
      el("span", { class: "seg free", style: { flexGrow: String(100 - 100 * used / Math.max(1, r.slots)) } })),
    el("dl", { class: "facts" },
      el("dt", {}, "KV slots"), el("dd", {}, `${used}/${r.slots} (${fmt(100 * (r.kv_use ?? 0))}%)`),
      el("dt", {}, "tokens/s"), el("dd", { dataset: { fact: "tokens-per-s" } }, fmt(r.tokens_per_s, 1)),
      el("dt", {}, "running / waiting"), el("dd", {}, `${r.running ?? "—"} / ${r.waiting ?? "—"}`),
      el("dt", {}, "conversations"), el("dd", {}, String(r.conversations_owned)),
      el("dt", {}, "reported"), el("dd", {}, `${fmt(r.reported_s_ago, 1)} s ago`)),
    el("ul", { class: "convs" }, ...r.conversations.map((c) => el("li", {
      class: mine.has(c.id) ? "mine" : "", dataset: { session: c.id } },
      el("code", {}, c.id), ` ${c.turns} turn${c.turns === 1 ? "" : "s"}`,
      c.busy ? el("span", { class: "badge" }, "streaming") : "",
      c.moves > 0 ? el("span", { class: "badge warn", title: "moved here after a drain, a rebalance or a lost replica" },
        landed.has(c.id) ? `landed here (moves ${c.moves})` : `moved ×${c.moves}`) : "",
      mine.has(c.id) ? el("span", { class: "badge mine" }, "yours") : ""))));
}

function describe(e) {
  switch (e.kind) {
    case "moved": return `conversation ${e.session} moved ${e.src ? `from ${shortId(e.src)} ` : ""}to replica ${shortId(e.dst)}${e.reason ? ` (${e.reason})` : ""}`;
    case "sessions_handed_back": return `replica ${shortId(e.replica)} handed back ${e.sessions} conversation(s) (${e.reason})`;
    case "replica_joined": return `replica ${shortId(e.replica)} joined`;
    case "replica_drained": return `replica ${shortId(e.replica)} drained, handing back ${e.sessions} conversation(s)`;
    case "replica_lost": return `replica ${shortId(e.replica)} stopped reporting (lost)`;
    case "deployment": return `autoscaling/Serve: ${e.status} (${e.trigger}): ${Object.entries(e.replica_states).map(([k, v]) => `${v} ${k}`).join(", ")}`;
    default: return e.kind;
  }
}
