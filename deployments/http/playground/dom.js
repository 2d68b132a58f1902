// A tiny element builder. Text always goes in as text nodes, never as HTML:
// replies and ids come from the model and from other clients.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function shortId(id) {
  return id && id.length > 12 ? id.slice(0, 8) + "…" : id || "—";
}

export function fmt(n, digits = 0) {
  return n === null || n === undefined || Number.isNaN(n) ? "—" : Number(n).toFixed(digits);
}
