// Talking to the service: the base URL, the API key, error wording and the SSE reader.

// The page is served at <prefix>/, <prefix>/cluster or <prefix>/plots: "." of the
// page's URL is the application's root whatever route prefix Serve gives it.
export const BASE = new URL(".", window.location.href);

const KEY_STORE = "swiftinfer.apiKey";

// sessionStorage, not localStorage: a key should not outlive the browser tab.
export function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }
export function setApiKey(key) { key ? sessionStorage.setItem(KEY_STORE, key) : sessionStorage.removeItem(KEY_STORE); }

export class ApiError extends Error {
  constructor(message, status, code, retryAfterS) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }
}

export async function apiFetch(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  if (options.body && !headers.has("Content-Type")) headers.set("Content-Type", "application/json");
  return fetch(new URL(path, BASE), { ...options, headers });
}

// JSON of a successful response, or an ApiError worded for people.
export async function getJson(path, options = {}) {
  const resp = await apiFetch(path, options);
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

export async function errorOf(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: a proxy's page */ }
  const retry = Number(resp.headers.get("Retry-After")) || null;
  return explain(resp.status, body && body.error ? body.error : {}, retry);
}

// The service's OpenAI-style error as one sentence a person can act on.
export function explain(status, err, retryAfterS) {
  const code = err.code || null;
  const msg = err.message || `HTTP ${status}`;
  const retry = retryAfterS ? ` Retry in ${retryAfterS} s.` : "";
  let text;
  if (status === 401) text = "This service needs an API key: enter it at the top right.";
  else if (status === 429) text = `Too busy right now (${code || "rate limit"}): ${msg}.${retry}`;
  else if (status === 503 && code === "starting") text = `The service is starting: the model is loading.${retry}`;
  else if (status === 503 && /replica|engine/.test(code || "")) text = `The replica holding this conversation was lost (${code}). Send again: another replica rebuilds the conversation from its log (sinks + window).${retry}`;
  else if (status === 409 && code === "session_busy") text = "A turn of this conversation is still running; wait for it to end.";
  else if (status === 409) text = `${msg}`;
  else text = `${msg}${retry}`;
  return new ApiError(text, status, code, retryAfterS);
}

// Yields the parsed JSON of each `data:` event of an SSE response until [DONE].
export async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}
