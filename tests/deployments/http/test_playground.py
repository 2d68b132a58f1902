"""The browser playground and cluster view in a real headless Chromium (Selenium)
against the real service: one app with two LLM replicas and the default model.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package
(dev extras); ``make test`` installs the first two when it runs as root. Without
them these tests skip and say what to install. Screenshots go to a temporary folder, or to
$SWIFTINFER_SCREENSHOTS (docs/img for the README's).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from serve_helpers import app_config, chat, deploy, replica_actors, wait_for

from deployments.http.playground import FILES

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"
# the README's screenshots are refreshed on request only, so a test run leaves the tree clean:
# SWIFTINFER_SCREENSHOTS=docs/img pytest -k playground
SHOTS = Path(os.environ.get("SWIFTINFER_SCREENSHOTS") or Path(tempfile.gettempdir()) / "swiftinfer-playground")
APP = "play"
# A window the first turns fit in, so the fill visibly grows; the third turn runs past it.
ENGINE = {"device": "cpu", "sink_tokens": 4, "window": 200, "max_sessions": 8}
TURN_TIMEOUT_S = 120
# Absolute URLs (http://host, https://host, //host) in the page's own files: any would be an outside fetch.
EXTERNAL_URL = re.compile(r"(?:https?:)?//[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def _missing() -> str | None:
    """What is missing for the browser tests, as an instruction; None when nothing is."""
    needs = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        needs.append("the selenium package (pip install -e '.[dev]')")
    debs = [pkg for exe, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")) if shutil.which(exe) is None]
    if debs:
        needs.append(f"apt-get install -y {' '.join(debs)} (make test does it when run as root)")
    return "; ".join(needs) or None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"browser tests need a headless Chromium, missing: {_missing()}")


@pytest.fixture(scope="module")
def play(cluster):
    cfg = app_config("play-sessions", engine=ENGINE, scaling={"min_replicas": 2, "max_replicas": 2})
    prefix = deploy(APP, cfg)
    with httpx.Client(base_url=cluster, timeout=180) as client:
        wait_for(lambda: client.get(f"{prefix}/healthz").json().get("replicas") == 2, 120, "both LLM replicas reporting")
        yield client, prefix, f"{cluster}{prefix}"  # the page's URL is the last
    serve.delete(APP)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--no-first-run", "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    # the driver named explicitly: Selenium Manager must not go looking for (or download) one
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which(CHROMEDRIVER)))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# ---- page helpers ------------------------------------------------------------------------
def _until(driver, predicate, timeout_s: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(lambda d: predicate(d), message=f"waiting for {what}")


def _open(driver, url: str) -> None:
    driver.get(url)
    _until(driver, lambda d: d.execute_script("return document.getElementById('conv-session').textContent"), 30, "the playground to start")


def _session_id(driver) -> str:
    return driver.execute_script("return document.getElementById('conv-session').textContent")


def _set_number(driver, element_id: str, value) -> None:
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1]; e.dispatchEvent(new Event('change'));",
        element_id, str(value))


def _fact(driver, key: str) -> str | None:
    return driver.execute_script(
        "const e = document.querySelector(`#cache [data-fact='${arguments[0]}']`); return e ? e.dataset.value : null;", key)


def _watch_reply(driver) -> None:
    """Record every distinct text the last assistant message shows, as the page changes it."""
    driver.execute_script("""
        window.__seen = [];
        const list = document.getElementById('messages');
        new MutationObserver(() => {
            const last = list.lastElementChild;
            if (!last || !last.classList.contains('assistant')) return;
            const text = last.querySelector('.text').textContent;
            if (window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
        }).observe(list, {subtree: true, childList: true, characterData: true});
    """)


def _send(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "prompt")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def _last_reply_state(driver) -> str | None:
    return driver.execute_script(
        "const m = [...document.querySelectorAll('#messages .msg.assistant')].pop(); return m ? m.dataset.state : null;")


def _wait_turn(driver, n_replies: int) -> str:
    _until(driver, lambda d: d.execute_script("return document.querySelectorAll('#messages .msg.assistant').length") == n_replies,
           10, "the reply to appear")
    _until(driver, lambda d: _last_reply_state(d) != "streaming", TURN_TIMEOUT_S, "the turn to end")
    state = _last_reply_state(driver)
    if state != "done":
        error = driver.execute_script("return document.getElementById('conv-error').textContent")
        raise AssertionError(f"the turn ended {state!r}: {error}")
    return driver.execute_script("return [...document.querySelectorAll('#messages .msg.assistant .text')].pop().textContent")


def _wait_rounds(driver, rounds: int) -> None:
    _until(driver, lambda d: _fact(d, "rounds") == str(rounds), 20, f"the cache view to show {rounds} rounds")


def _shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / name))


def _session(client: httpx.Client, prefix: str, sid: str) -> dict:
    resp = client.get(f"{prefix}/v1/sessions/{sid}")
    if resp.status_code != 200:
        raise AssertionError(f"GET session {sid}: {resp.status_code} {resp.text}")
    return resp.json()


# ---- tests (in order: each continues the conversation of the one before) -------------------
def test_playground_streams_a_reply(play, browser):
    client, prefix, base = play
    _open(browser, f"{base}/")
    assert not browser.execute_script("return document.getElementById('key-field').offsetParent")  # no keys here: no field
    _set_number(browser, "max-tokens", 40)
    _set_number(browser, "temperature", 0)
    _watch_reply(browser)
    _send(browser, "Count from 1 to 100, separated by commas.")
    final = _wait_turn(browser, 1)
    seen = [t for t in browser.execute_script("return window.__seen") if t]
    assert len(seen) >= 3, f"the reply changed only {len(seen)} times: {seen}"
    for a, b in pairwise(seen):
        assert b.startswith(a) and len(b) > len(a), f"the reply did not grow: {a!r} -> {b!r}"
    assert seen[-1] == final
    stats = browser.execute_script("return [...document.querySelectorAll('.turn-stats')].pop().dataset")
    assert float(stats["ttftMs"]) > 0 and float(stats["tps"]) > 0, stats
    _wait_rounds(browser, 1)
    assert _session(client, prefix, _session_id(browser))["rounds"] == 1


def test_playground_second_turn_grows_the_cache_on_the_same_replica(play, browser):
    client, prefix, _ = play
    sid = _session_id(browser)
    fill, replica = int(_fact(browser, "cache-fill")), _fact(browser, "replica")
    _send(browser, "Now count from 100 down to 1.")
    _wait_turn(browser, 2)
    _wait_rounds(browser, 2)
    _until(browser, lambda d: int(_fact(d, "cache-fill")) > fill, 10, "the cache fill to grow")
    assert _fact(browser, "replica") == replica
    info = _session(client, prefix, sid)
    assert info["rounds"] == 2 and info["cache_fill"] > fill and info["replica"] == replica, info


def test_playground_reload_keeps_the_conversation(play, browser):
    client, prefix, _ = play
    sid = _session_id(browser)
    # a second conversation beside the first, with its own session
    browser.execute_script("document.getElementById('new-conv').click()")
    _until(browser, lambda d: _session_id(d) != sid, 5, "a new conversation")
    other = _session_id(browser)
    _set_number(browser, "max-tokens", 8)
    _send(browser, "Hello from the second conversation.")
    _wait_turn(browser, 1)
    _wait_rounds(browser, 1)
    browser.execute_script("document.querySelector(`#conv-list li[data-session='${arguments[0]}']`).click()", sid)
    _until(browser, lambda d: _session_id(d) == sid, 5, "the first conversation again")
    browser.refresh()  # a real reload: everything comes back from localStorage
    _until(browser, _session_id, 30, "the playground to start again")
    assert _session_id(browser) == sid
    listed = browser.execute_script("return [...document.querySelectorAll('#conv-list li')].map(li => li.dataset.session)")
    assert sorted(listed) == sorted([sid, other]), listed
    assert _session(client, prefix, other)["rounds"] == 1
    assert browser.execute_script("return document.querySelectorAll('#messages .msg').length") == 4
    assert browser.execute_script("return document.getElementById('max-tokens').value") == "40"
    _wait_rounds(browser, 2)
    _send(browser, "And what comes after 100?")
    _wait_turn(browser, 3)
    _wait_rounds(browser, 3)
    info = _session(client, prefix, sid)
    assert info["rounds"] == 3, info
    if info["evictions"] > 0:  # past the window: the page says it answers from sinks + window
        _until(browser, lambda d: d.execute_script("return !!document.getElementById('past-window')"), 10, "the past-window note")
    _shot(browser, "playground-chat.png")


def test_playground_stop_mid_stream_leaves_the_session_usable(play, browser):
    client, prefix, _ = play
    sid = _session_id(browser)
    replica = _session(client, prefix, sid)["replica"]
    _set_number(browser, "max-tokens", 200)
    _send(browser, "Write a long story about a dragon who learns to count.")
    _until(browser, lambda d: _last_reply_state(d) == "streaming" and len(
        d.execute_script("return [...document.querySelectorAll('#messages .msg.assistant .text')].pop().textContent")) > 10,
        TURN_TIMEOUT_S, "the reply to start streaming")
    browser.execute_script("document.getElementById('stop').click()")
    _until(browser, lambda d: _last_reply_state(d) == "stopped", 10, "the page to show the turn stopped")
    # the server rolled the turn back: still 3 rounds, and the next turn is accepted
    wait_for(lambda: _session(client, prefix, sid)["seq"] == 3, 20, "the stopped turn to be rolled back")

    def next_turn():
        resp = chat(client, prefix, [{"role": "user", "content": "Still there?"}], sid)
        if resp.status_code == 409:  # the abort is still on its way to the replica
            return None
        assert resp.status_code == 200, resp.text
        return resp

    wait_for(next_turn, 20, "a turn after the stop")
    info = _session(client, prefix, sid)
    assert info["rounds"] == 4 and info["seq"] == 4 and info["replica"] == replica, info


def test_playground_cluster_view_shows_both_replicas_and_their_conversations(play, browser):
    client, prefix, _ = play
    for sid in ("cluster-a", "cluster-b"):  # the fewest-owned replica takes each new one: both get some
        assert chat(client, prefix, [{"role": "user", "content": "Hi"}], sid, max_tokens=4).status_code == 200
    owners: dict[str, set[str]] = {}
    for sid in ("cluster-a", "cluster-b", _session_id(browser)):
        owners.setdefault(_session(client, prefix, sid)["replica"], set()).add(sid)
    assert len(owners) == 2, f"expected conversations on both replicas: {owners}"
    browser.execute_script("document.getElementById('tab-cluster').click()")
    assert browser.current_url.endswith("/cluster")

    def shown() -> dict[str, set[str]]:
        return browser.execute_script("""
            const out = {};
            for (const r of document.querySelectorAll('#replicas .replica'))
                out[r.dataset.replica] = [...r.querySelectorAll('li[data-session]')].map(li => li.dataset.session);
            return out;""")

    def all_shown(d) -> bool:
        view = shown()
        return all(sids <= set(view.get(rid, ())) for rid, sids in owners.items())

    _until(browser, all_shown, 20, f"the cluster view to show {owners}")
    assert len(shown()) == 2
    mine = browser.execute_script("return [...document.querySelectorAll('#replicas li.mine')].map(li => li.dataset.session)")
    assert _session_id(browser) in mine and "cluster-a" not in mine and "cluster-b" not in mine, mine
    _until(browser, lambda d: d.execute_script("return document.querySelectorAll('#events li[data-kind=replica_joined]').length") >= 2,
           10, "the replicas' join events")
    _shot(browser, "playground-cluster.png")
    # a reload lands on the same tab
    browser.refresh()
    _until(browser, lambda d: d.execute_script("return document.querySelectorAll('#replicas .replica').length") == 2, 20, "the view after reload")


def test_playground_loads_nothing_from_outside_the_service(play, browser):
    client, prefix, base = play
    origin = re.match(r"https?://[^/]+", base).group(0)
    for page in ("", "cluster", "plots"):
        browser.get(f"{base}/{page}")
        _until(browser, lambda d: d.execute_script("return document.readyState") == "complete", 20, f"/{page} to load")
        time.sleep(1.0)  # the page's own fetches (config, session info, cluster feed, plots)
        if page == "plots":
            _until(browser, lambda d: d.execute_script(
                "const i = [...document.querySelectorAll('#plots img')]; return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0)"),
                20, "the perplexity plots to render")
        urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls, f"/{page} recorded no resource at all"
        outside = [u for u in urls if not u.startswith(origin + "/")]
        assert not outside, f"/{page} loaded from outside the service: {outside}"
    bare = client.get(prefix, follow_redirects=True)  # /play without its slash: redirected, so relative paths resolve
    assert bare.status_code == 200 and str(bare.url).endswith(f"{prefix}/") and "ui/main.js" in bare.text, (bare.status_code, bare.url)
    page = client.get(f"{prefix}/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    files = [page.text] + [client.get(f"{prefix}/ui/{name}").text for name in FILES]
    for text in files:
        assert not EXTERNAL_URL.findall(text), EXTERNAL_URL.findall(text)
    # the plots page's pictures are the allow-list only
    assert client.get(f"{prefix}/ui/plots/..%2Fsummary.json").status_code == 404
    assert client.get(f"{prefix}/ui/plots/summary.json").status_code == 404


# Answers the service gives under conditions too costly to stage on this app (a tenant past
# its rate limit, no LLM replica ready yet) are put in place of the first matching fetch of
# the page; what is tested is how the page shows them.
_FAKE_ANSWERS = """
(() => {
  const real = window.fetch.bind(window);
  const json = (status, body, retry) => new Response(JSON.stringify(body),
      {status, headers: {"Content-Type": "application/json", "Retry-After": retry}});
  let healthz = 1, chat = 1;
  window.fetch = (input, init) => {
    const url = String(input);
    if (url.endsWith("/healthz") && healthz-- > 0) return Promise.resolve(json(503, {status: "starting", replicas: 0}, "1"));
    if (url.endsWith("/v1/chat/completions") && chat-- > 0) return Promise.resolve(json(429,
        {error: {message: "tenant is past its request rate", type: "rate_limit_error", param: null, code: "rate_limit_exceeded"}}, "2"));
    return real(input, init);
  };
})();
"""


def test_playground_shows_service_starting_and_rate_limits_with_their_retry_time(play, browser):
    _, _, base = play
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _FAKE_ANSWERS})
    try:
        browser.get(f"{base}/")
        _until(browser, _session_id, 30, "the playground to start")
        banner = "return document.getElementById('banner')"
        _until(browser, lambda d: "starting" in d.execute_script(banner + ".textContent"), 10, "the starting banner")
        _until(browser, lambda d: d.execute_script(banner + ".hidden"), 10, "the banner to go once the service is up")
        _set_number(browser, "max-tokens", 8)
        _send(browser, "Hello?")
        error = "return document.getElementById('conv-error')"
        _until(browser, lambda d: not d.execute_script(error + ".hidden"), 10, "the 429 to show")
        text = browser.execute_script(error + ".textContent")
        assert "Too busy" in text and "Retry in 2 s" in text, text
        note = "return [...document.querySelectorAll('#messages .turn-note')].pop().textContent"
        assert "Retry in 2 s" in browser.execute_script(note)  # the failed turn keeps its reason
        _until(browser, lambda d: d.execute_script(error + ".hidden"), 10, "the 429 note to clear after its retry time")
        _send(browser, "Hello again?")  # the fake answered once: this one reaches the service
        _wait_turn(browser, browser.execute_script("return document.querySelectorAll('#messages .msg.assistant').length"))
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})


def test_playground_shows_a_lost_replica_and_the_recovered_conversation(play, browser):
    client, prefix, base = play
    _open(browser, f"{base}/")
    sid = _session_id(browser)
    before = _session(client, prefix, sid)
    ray.kill(replica_actors(APP)[before["replica"]], no_restart=True)
    _set_number(browser, "max-tokens", 16)
    _send(browser, "Are you still with me?")  # the ingress sends it to the other replica, which rebuilds
    _wait_turn(browser, browser.execute_script("return document.querySelectorAll('#messages .msg.assistant').length"))
    _until(browser, lambda d: d.execute_script("return !!document.getElementById('move-notice')"), 20, "the moved notice")
    notice = browser.execute_script("return document.getElementById('move-notice').textContent")
    assert "moved" in notice and "rebuilt" in notice, notice
    assert _fact(browser, "recovered") == "true" and _fact(browser, "replica") != before["replica"]
    info = _session(client, prefix, sid)
    assert info["recovered"] and info["moves"] >= 1 and info["rounds"] == before["rounds"] + 1, info
    # far past the window by now, and still answering from sinks + window: the page says so
    assert info["tokens_seen"] > 2 * info["capacity"] and info["cache_fill"] <= info["capacity"], info
    past = browser.execute_script("return document.getElementById('past-window').textContent")
    assert "sink tokens" in past and "evicted" in past, past
    _shot(browser, "playground-recovered.png")
    browser.execute_script("document.getElementById('tab-cluster').click()")
    _until(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll(`#replicas li[data-session='${arguments[0]}'] .badge`)].some(b => b.textContent.startsWith('landed here'))",
        sid), 20, "the conversation marked where it landed")
    _until(browser, lambda d: d.execute_script("return !!document.querySelector('#events li[data-kind=moved]')"), 10, "the move event")
    _shot(browser, "playground-cluster-moved.png")


def test_playground_asks_for_a_key_when_the_service_requires_one(browser, tmp_path):
    """The key field in the browser. No LLM app is needed for it: the playground's routes
    behind the real key check, on uvicorn in a thread, with a fake directory's cluster feed."""
    import socket
    import threading

    import uvicorn
    from fastapi import FastAPI
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from test_playground_feed import FakeDirectory

    from deployments.http.api_keys import KeyRing, add_key
    from deployments.http.auth import KeyCheck
    from deployments.config import AppConfig
    from deployments.http.playground import Playground

    path = tmp_path / "keys.json"
    key = add_key(path, "alice", "acme")
    app = FastAPI()
    Playground(AppConfig(auth={"keys_file": str(path)}), FakeDirectory()).add_routes(app)
    app.add_api_route("/healthz", lambda: {"status": "ok"}, methods=["GET"])
    app.add_middleware(KeyCheck, ring=KeyRing(path), metrics_keyed=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "uvicorn to start", period_s=0.05)
        browser.get(f"http://127.0.0.1:{port}/cluster")  # the page itself needs no key
        _until(browser, lambda d: d.find_element(By.ID, "key-field").is_displayed(), 10, "the key field")
        _until(browser, lambda d: "API key" in d.find_element(By.ID, "replicas").text, 10, "the 401 explained")
        field = browser.find_element(By.ID, "api-key")
        field.send_keys(key)
        field.send_keys(Keys.TAB)  # change: the page keeps it for this tab and sends it from now on
        _until(browser, lambda d: d.execute_script(
            "return !!document.querySelector(`#replicas [data-replica='r1'] li[data-session='chat-1']`)"), 10, "the cluster view with the key")
    finally:
        server.should_exit = True
        thread.join(10)
