// The cache of one conversation, drawn from GET /v1/sessions/{id}.
import { el, fmt, shortId } from "./dom.js";

function seg(cls, share, label) {
  // a kept part never shrinks out of sight, however long the conversation got
  const pct = share > 0 ? Math.max(share * 100, 2) : 0;
  return el("span", { class: `seg ${cls}`, style: { flexGrow: String(pct) }, title: label }, pct >= 12 ? label : "");
}

// info: the session body; sinkTokens: the engine's sink count (GET /v1/models).
export function renderCache(info, sinkTokens) {
  if (!info) return el("div", { class: "cache-empty muted" }, "No turn yet: the cache fills with the first one.");
  const cap = info.capacity || 1;
  const fill = info.cache_fill || 0;
  const sinks = Math.min(sinkTokens ?? 0, fill);
  const windowFill = fill - sinks;
  const seen = info.tokens_seen || 0;
  const evicted = info.evictions || 0;
  const windowSize = cap - (sinkTokens ?? 0);

  const slot = el("div", { class: "bar", "aria-label": "cache slot" },
    seg("sinks", sinks / cap, `sinks ${sinks}`),
    seg("window", windowFill / cap, `window ${windowFill}/${windowSize}`),
    seg("free", (cap - fill) / cap, `free ${cap - fill}`));
  // The whole conversation as the model saw it: what stays (sinks, recent window) and what fell out.
  const kept = Math.max(0, seen - evicted);
  const history = seen > 0 ? el("div", { class: "bar", "aria-label": "conversation" },
    seg("sinks", sinks / seen, `sinks ${sinks}`),
    seg("evicted", evicted / seen, `evicted ${evicted}`),
    seg("window", Math.max(0, kept - sinks) / seen, `window ${Math.max(0, kept - sinks)}`)) : null;

  const facts = el("dl", { class: "facts" },
    fact("tokens seen", seen, "tokens-seen", seen), fact("cache fill", `${fill}/${cap}`, "cache-fill", fill),
    fact("evicted", evicted, "evictions", evicted), fact("rounds", info.rounds, "rounds", info.rounds),
    fact("replica", shortId(info.replica), "replica", info.replica),
    fact("recovered", info.recovered ? "yes" : "no", "recovered", info.recovered), fact("moves", info.moves, "moves", info.moves));

  const past = evicted > 0 ? el("p", { class: "past-window", id: "past-window" },
    `Past the window: the model answers from the ${sinks} sink tokens + the last ${windowFill} tokens. `,
    `${evicted} of ${seen} tokens (${fmt((100 * evicted) / Math.max(1, seen))}%) were evicted and are no longer in the cache; the cache never grows past ${cap}.`) : null;

  return el("div", { class: "cache" },
    el("div", { class: "bar-row" }, el("span", { class: "bar-label" }, "cache slot"), slot),
    history && el("div", { class: "bar-row" }, el("span", { class: "bar-label" }, "conversation"), history),
    facts, past);
}

// data-value keeps the raw number or id for anyone reading the page programmatically (the tests do)
function fact(name, shown, key, raw) {
  return [el("dt", {}, name), el("dd", { dataset: { fact: key, value: String(raw ?? "") }, title: String(raw ?? "") }, String(shown ?? "—"))];
}
