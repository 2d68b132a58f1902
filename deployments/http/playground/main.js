// Start-up: configuration, the API key field, the service's health, and the three tabs.
import { BASE, apiKey, setApiKey } from "./api.js";
import { initChat, render } from "./chat.js";
import { startCluster, stopCluster } from "./cluster.js";
import { showPlots } from "./plots.js";

const $ = (id) => document.getElementById(id);
const TABS = { chat: "./", cluster: "cluster", plots: "plots" };

function tabOfPath() {
  const rest = window.location.pathname.slice(BASE.pathname.length);
  return rest === "cluster" ? "cluster" : rest === "plots" ? "plots" : "chat";
}

function show(tab) {
  for (const name of Object.keys(TABS)) {
    $(`view-${name}`).hidden = name !== tab;
    $(`tab-${name}`).classList.toggle("current", name === tab);
  }
  if (tab === "cluster") startCluster(); else stopCluster();
  if (tab === "plots") showPlots();
}

// 503 "starting" while no LLM replica is ready: a banner, and a look again after Retry-After.
async function watchHealth() {
  let resp = null;
  try { resp = await fetch(new URL("healthz", BASE)); } catch { /* the service itself is down */ }
  const banner = $("banner");
  if (resp && resp.ok) { banner.hidden = true; return; }
  const retry = resp ? Number(resp.headers.get("Retry-After")) || 5 : 5;
  banner.textContent = resp && resp.status === 503
    ? `The service is starting: the model is loading, no replica is ready yet. Checking again in ${retry} s.`
    : `The service does not answer${resp ? ` (HTTP ${resp.status})` : ""}. Checking again in ${retry} s.`;
  banner.hidden = false;
  setTimeout(watchHealth, retry * 1000);
}

async function main() {
  const cfg = await (await fetch(new URL("ui/config.json", BASE))).json();
  $("model-name").textContent = cfg.model_id;
  if (cfg.keys_required) { // the field appears only when the service needs keys
    $("key-field").hidden = false;
    $("api-key").value = apiKey();
    $("api-key").addEventListener("change", (ev) => { setApiKey(ev.target.value.trim()); render(); });
  }
  for (const [name, href] of Object.entries(TABS)) {
    $(`tab-${name}`).addEventListener("click", (ev) => {
      ev.preventDefault(); // switch in place: streams and timers keep running
      history.pushState({}, "", new URL(href, BASE));
      show(name);
    });
  }
  window.addEventListener("popstate", () => show(tabOfPath()));
  await initChat(cfg);
  show(tabOfPath());
  watchHealth();
}

main().catch((e) => {
  $("banner").textContent = `The playground could not start: ${e.message}`;
  $("banner").hidden = false;
});
