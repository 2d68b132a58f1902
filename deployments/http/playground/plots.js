// The committed perplexity plots (bench/results/ppl_*.png), with captions from their eval JSON.
import { getJson } from "./api.js";
import { el } from "./dom.js";

let loaded = false;

export async function showPlots() {
  if (loaded) return;
  loaded = true;
  const box = document.getElementById("plots");
  try {
    const { plots } = await getJson("ui/plots.json");
    box.replaceChildren(...(plots.length ? plots.map((p) => el("figure", {},
      el("img", { src: p.url, alt: p.name, loading: "lazy" }), el("figcaption", {}, el("code", {}, p.name), " ", p.caption)))
      : [el("p", { class: "muted" }, "No perplexity plots in bench/results on this server.")]));
  } catch (e) {
    loaded = false;
    box.replaceChildren(el("p", { class: "error" }, e.message));
  }
}
