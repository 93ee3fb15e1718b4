#!/usr/bin/env python3
"""Drives the dispatcher's agent console in headless Chromium, as an agent would.

Run through Tests/Browser/run-agent-console.sh, which picks the Python that has
Selenium (Debian's /usr/bin/python3 with python3-selenium, installed by
Deploy/local/install-deps.sh):

    Tests/Browser/run-agent-console.sh --console http://127.0.0.1:PORT \\
        --agent AGENT_ID --password PASSWORD --secret SECRET \\
        --screenshot PATH [--timeout 60] [--request-id UUID]

Scenario: sign in, accept the offered chat, send a message, request a PIN form,
wait until the customer's answer shows as verified, take a screenshot, then
check that SECRET (what the customer typed) reached the agent's browser by no
route: not in the DOM, cookies, storage or console, not in any response body,
header, EventSource message or raw event-stream bytes.

Output: progress lines `step: ...` on stderr; `FORM_REQUESTED <request-id>` on
stdout as soon as the form shows as requested (the customer may answer now);
a one-line JSON summary as the last line of stdout, also on failure.

Exit codes: 0 passed, 1 a step failed, 2 bad arguments, 3 SECRET was found,
4 the browser could not be started.

`--self-test` runs the same scenario against a fake of the console contract
served by this script (no Swift service needed); `--plant-secret WHERE` makes
the fake leak the secret by one route, and the run must then exit 3.
"""

from __future__ import annotations

import argparse
import base64
import html
import http.server
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_STEP, EXIT_USAGE, EXIT_LEAK, EXIT_ENV = 0, 1, 2, 3, 4

# What a secure form may end as once the customer has answered.
FINAL_OUTCOMES = {"verified", "not-verified", "tokenized", "invalid", "locked"}
AGENT_MESSAGE = "Hello, I can help."

_started = time.monotonic()


def log(message: str) -> None:
    print(f"step: [{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


class Replaced(Exception):
    """#panel was replaced between filling in a form and submitting it."""


class StepFailed(Exception):
    def __init__(self, step: str, message: str, exit_code: int = EXIT_STEP):
        super().__init__(f"{step}: {message}")
        self.step, self.message, self.exit_code = step, message, exit_code


# --------------------------------------------------------------------------
# Browser
# --------------------------------------------------------------------------

def start_browser(chromium: str, chromedriver: str, timeout: float):
    """Headless Chromium with performance (network) logging; no driver downloads."""
    # Never let Selenium Manager go looking for (or downloading) a driver or a
    # browser: both paths are explicit, and newer Selenium honours SE_OFFLINE.
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (chromium, chromedriver):
        if not os.access(path, os.X_OK):
            raise StepFailed("start-browser", f"{path} is missing; run Deploy/local/install-deps.sh", EXIT_ENV)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",           # the real browser, without a display
        "--no-sandbox",             # we run as root in a container: the sandbox refuses to start
        "--disable-dev-shm-usage",  # /dev/shm may be small in containers
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",  # no traffic to anything but the console
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    except Exception as error:  # noqa: BLE001 - any start failure is an environment problem
        raise StepFailed("start-browser", f"could not start {chromium} via {chromedriver}: {error}", EXIT_ENV)
    driver.set_page_load_timeout(timeout)
    return driver


# The whole console contract read in one JS turn, so a poll never sees half a
# replaced #panel and never touches a stale element.
SNAPSHOT_JS = r"""
const q = s => document.querySelector(s);
const all = (root, s) => root ? Array.from(root.querySelectorAll(s)) : [];
const text = e => e ? e.textContent.replace(/\s+/g, ' ').trim() : null;
const panel = q('#panel');
return {
  url: location.href,
  panel: !!panel,
  loginForm: !!q('#login-form'),
  loginError: text(q('#login-error')),
  queue: text(q('#panel #queue')),
  offers: all(panel, '#offers .offer').map(o => o.getAttribute('data-request-id')),
  conversations: all(panel, '#conversations .conversation').map(c => ({
    id: c.getAttribute('data-request-id'),
    messages: all(c, '.message').map(m => ({sender: m.getAttribute('data-sender'), text: text(m)})),
    forms: all(c, '.secure-form').map(f => ({
      id: f.getAttribute('data-form-id'), outcome: f.getAttribute('data-outcome'), text: text(f)})),
  })),
};
"""


def snapshot(driver) -> dict:
    return driver.execute_script(SNAPSHOT_JS)


def describe(state: dict | None) -> str:
    """A short account of what the page showed, for failure messages."""
    if not state:
        return "no page state"
    parts = [f"url={state['url']}", f"#panel={'yes' if state['panel'] else 'no'}"]
    if state["loginError"]:
        parts.append(f"#login-error={state['loginError']!r}")
    if state["queue"] is not None:
        parts.append(f"#queue={state['queue']!r}")
    parts.append(f"offers={state['offers']}")
    for c in state["conversations"]:
        forms = [(f["id"], f["outcome"]) for f in c["forms"]]
        parts.append(f"conversation {c['id']}: {len(c['messages'])} messages, forms={forms}")
    return "; ".join(parts)


def find_conversation(state: dict, request_id: str) -> dict | None:
    return next((c for c in state["conversations"] if c["id"] == request_id), None)


# --------------------------------------------------------------------------
# Network audit: every response the page received, from the performance log
# --------------------------------------------------------------------------

class NetworkAudit:
    """Collects what reached the browser over the network, for the SECRET check.

    `collect()` drains chromedriver's performance log (each read empties it) and
    must be called often: a response body can only be fetched with
    Network.getResponseBody while the browser still holds it, which may end at
    the next navigation. The waits below call it on every poll.
    """

    def __init__(self, driver):
        self.driver = driver
        self.responses: dict[str, dict] = {}    # requestId -> url, type, mime, status
        self.bodies: dict[str, str] = {}        # requestId -> decoded body
        self.unavailable: dict[str, str] = {}   # requestId -> why its body could not be read
        self.streams: dict[str, bytearray] = {} # requestId -> raw event-stream bytes
        self.stream_errors: dict[str, str] = {}
        self.leaves: list[tuple[str, str, str]] = []  # (event, requestId, string) from every network event
        self.urls: dict[str, str] = {}          # requestId -> url, from the request
        self.event_source_messages = 0
        self.redirects = 0
        self.events = 0
        # Ask Chromium to keep response bodies around (sizes in bytes).
        driver.execute_cdp_cmd("Network.enable", {
            "maxTotalBufferSize": 100_000_000, "maxResourceBufferSize": 20_000_000})

    def _cdp(self, command: str, params: dict) -> dict:
        return self.driver.execute_cdp_cmd(command, params)

    def _url(self, request_id: str) -> str:
        return (self.responses.get(request_id, {}).get("url") or self.urls.get(request_id)
                or f"request {request_id} (no request or response event seen)")

    def collect(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message.get("method", ""), message.get("params", {})
            if not method.startswith("Network."):
                continue
            self.events += 1
            request_id = params.get("requestId", "")
            if method == "Network.requestWillBeSent":
                self.urls[request_id] = params["request"].get("url", "")
            # Every string in the event: URLs, headers, post data, EventSource data...
            self.leaves.extend((method, request_id, s) for s in _strings(params))
            if method == "Network.requestWillBeSent" and params.get("redirectResponse"):
                self.redirects += 1  # a 303 and the like: headers only, no body to read
            elif method == "Network.responseReceived":
                response = params["response"]
                self.responses[request_id] = {
                    "url": response.get("url", ""), "type": params.get("type", ""),
                    "mime": response.get("mimeType", ""), "status": response.get("status")}
                if params.get("type") == "EventSource" or response.get("mimeType") == "text/event-stream":
                    self._stream(request_id)
            elif method == "Network.loadingFinished":
                self._body(request_id)
            elif method == "Network.loadingFailed":
                if request_id not in self.bodies:
                    self.unavailable.setdefault(request_id, f"loading failed: {params.get('errorText', '')}")
            elif method == "Network.eventSourceMessageReceived":
                self.event_source_messages += 1
            elif method == "Network.dataReceived" and params.get("data"):
                # Present only for streams switched on by Network.streamResourceContent.
                self.streams.setdefault(request_id, bytearray()).extend(base64.b64decode(params["data"]))

    def _stream(self, request_id: str) -> None:
        """Have Chromium hand us the raw bytes of an event stream as they arrive.

        EventSource messages also show as Network.eventSourceMessageReceived,
        but comments, unknown fields and undispatched data do not; the raw bytes
        cover them. Experimental CDP command: if refused, we say so.
        """
        try:
            result = self._cdp("Network.streamResourceContent", {"requestId": request_id})
            self.streams.setdefault(request_id, bytearray()).extend(base64.b64decode(result.get("bufferedData", "")))
        except Exception as error:  # noqa: BLE001
            self.stream_errors[request_id] = _first_line(error)

    def _body(self, request_id: str) -> None:
        if request_id in self.bodies:
            return
        try:
            result = self._cdp("Network.getResponseBody", {"requestId": request_id})
        except Exception as error:  # noqa: BLE001 - e.g. evicted, or a stream
            self.unavailable[request_id] = _first_line(error)
            return
        body = result.get("body", "")
        if result.get("base64Encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        self.bodies[request_id] = body
        self.unavailable.pop(request_id, None)

    def finish(self) -> None:
        """Last drain; try once more for bodies that never reported finishing."""
        self.collect()
        for request_id in self.responses:
            if request_id not in self.bodies and request_id not in self.streams:
                self._body(request_id)

    def find(self, matcher: "Matcher") -> list[str]:
        """Where the needle occurs in anything received over the network."""
        hits = []
        for request_id, body in self.bodies.items():
            if (context := matcher.search(body)) is not None:
                hits.append(f"response body of {self._url(request_id)}: …{context}…")
        for request_id, data in self.streams.items():
            if (context := matcher.search(data.decode("utf-8", "replace"))) is not None:
                hits.append(f"event stream {self._url(request_id)}: …{context}…")
        for method, request_id, value in self.leaves:
            if (context := matcher.search(value)) is not None:
                hits.append(f"{method} of {self._url(request_id)}: …{context}…")
        return hits

    def stats(self) -> dict:
        event_streams = [r for r in self.responses.values()
                         if r["type"] == "EventSource" or r["mime"] == "text/event-stream"]
        return {
            "responses": len(self.responses),
            "bodies_inspected": len(self.bodies),
            "bodies_unavailable": len([r for r in self.unavailable if r not in self.streams]),
            "unavailable": sorted({f"{self._url(r)} ({why})" for r, why in self.unavailable.items()
                                   if r not in self.streams}),
            "redirects": self.redirects,
            "event_streams": len(event_streams),
            "event_streams_read": len(self.streams),
            "event_stream_bytes": sum(len(d) for d in self.streams.values()),
            "event_stream_errors": sorted(set(self.stream_errors.values())),
            "event_source_messages": self.event_source_messages,
            "network_events": self.events,
        }


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _first_line(error: BaseException) -> str:
    text = getattr(error, "msg", None) or str(error)
    return text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__


class Matcher:
    """Finds a needle as typed, HTML-escaped or percent-encoded; returns context."""

    def __init__(self, needle: str):
        variants = {needle, html.escape(needle), urllib.parse.quote(needle, safe=""),
                    urllib.parse.quote_plus(needle)}
        self.pattern = re.compile("|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True)))

    def search(self, text: str) -> str | None:
        match = self.pattern.search(text)
        if not match:
            return None
        start, end = max(0, match.start() - 40), min(len(text), match.end() + 40)
        return text[start:end].replace("\n", "\\n")


# --------------------------------------------------------------------------
# Waiting and acting on a page whose #panel is replaced under our feet
# --------------------------------------------------------------------------

class Page:
    def __init__(self, driver, audit: NetworkAudit, console: str, timeout: float):
        self.driver, self.audit, self.console, self.timeout = driver, audit, console.rstrip("/"), timeout
        self.last_state: dict | None = None

    def wait(self, step: str, what: str, condition: Callable[[dict], Any], timeout: float | None = None):
        """Polls the page state until condition(state) is truthy; returns that value."""
        from selenium.common.exceptions import TimeoutException, WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        def poll(driver):
            self.audit.collect()
            try:
                self.last_state = snapshot(driver)
            except WebDriverException:  # mid-navigation: no document to script yet
                return False
            return condition(self.last_state)

        try:
            return WebDriverWait(self.driver, timeout or self.timeout, poll_frequency=0.25).until(poll)
        except TimeoutException:
            raise StepFailed(step, f"timed out after {timeout or self.timeout:.0f}s waiting for {what}; "
                                   f"page: {describe(self.last_state)}") from None

    def act(self, step: str, what: str, action: Callable[[], Any]) -> Any:
        """Runs an interaction, retrying while the elements it found go stale.

        #panel is replaced whenever an event arrives, so an element found a
        moment ago may be gone by the time we click it. Each try must find its
        elements afresh; a click on a stale element raises before anything is sent.
        """
        from selenium.common.exceptions import (ElementClickInterceptedException,
                                                ElementNotInteractableException,
                                                NoSuchElementException,
                                                StaleElementReferenceException)
        retryable = (Replaced, StaleElementReferenceException, NoSuchElementException,
                     ElementClickInterceptedException, ElementNotInteractableException)
        deadline, last = time.monotonic() + self.timeout, None
        while time.monotonic() < deadline:
            self.audit.collect()  # read bodies before a click navigates away
            try:
                return action()
            except retryable as error:
                last = error
                log(f"  retrying ({what}): {type(error).__name__}")
                time.sleep(0.2)
        try:
            self.last_state = snapshot(self.driver)
        except Exception:  # noqa: BLE001
            pass
        raise StepFailed(step, f"could not {what} within {self.timeout:.0f}s ({_first_line(last)}); "
                               f"page: {describe(self.last_state)}")

    def submit(self, button, field, expected: str) -> None:
        """Clicks `button` if `field` still holds `expected`, in one JS turn.

        A WebDriver click finds the button's position, then sends a mouse event
        there; if #panel is replaced in between, the event lands on the new
        button, in a new form whose fields are empty, and posts that. Checking
        and clicking in one script leaves no gap for the page's own JS.
        """
        if not self.driver.execute_script(
                "const [button, field, expected] = arguments;"
                "if (!button.isConnected || !field.isConnected || field.value !== expected) return false;"
                "button.click(); return true;", button, field, expected):
            raise Replaced("#panel was replaced before the form was submitted")

    def css(self, selector: str, root=None):
        from selenium.webdriver.common.by import By
        return (root or self.driver).find_element(By.CSS_SELECTOR, selector)


# --------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------

def run_scenario(page: Page, args, summary: dict) -> None:
    driver = page.driver
    from selenium.webdriver.support.ui import Select

    def step(name: str) -> None:
        summary["step"] = name
        summary.setdefault("steps", []).append(name)
        log(name)

    # 1. Sign in.
    step("login")
    driver.get(page.console + "/console/login")
    page.wait("login", "#login-form", lambda s: s["loginForm"])

    def sign_in():
        agent, password = page.css("#agent-id"), page.css("#password")
        agent.clear(); agent.send_keys(args.agent)
        password.clear(); password.send_keys(args.password)
        page.css("#sign-in").click()
    page.act("login", "fill in and submit #login-form", sign_in)
    state = page.wait("login", "#panel (or #login-error)",
                      lambda s: s if (s["panel"] or s["loginError"]) else None)
    if not state["panel"]:
        raise StepFailed("login", f"sign-in refused: #login-error says {state['loginError']!r}")
    log(f"signed in as {args.agent}; {state['queue'] or 'no #queue'}")

    # 2. Wait for the offer, accept it.
    step("await-offer")
    wanted = (args.request_id or "").lower()  # the page may print UUIDs in either case
    request_id = page.wait(
        "await-offer", f"an .offer{f' for {wanted}' if wanted else ''} in #offers",
        lambda s: next((o for o in s["offers"] if o and (not wanted or o.lower() == wanted)), None))
    summary["request_id"] = request_id
    log(f"offer {request_id}")

    step("accept")
    page.act("accept", f"click .accept of offer {request_id}", lambda: page.css(
        ".accept", page.css(f'#offers .offer[data-request-id="{request_id}"]')).click())
    conversation = f'#conversations .conversation[data-request-id="{request_id}"]'
    page.wait("accept", f"the conversation {request_id}", lambda s: find_conversation(s, request_id))

    # 3. Say hello, then request a PIN form.
    if not args.no_message:
        step("send-message")

        def send():
            root = page.css(conversation)
            button, text = page.css(".send", root), page.css("textarea.message-text", root)
            text.clear(); text.send_keys(AGENT_MESSAGE)  # typed as a person would
            page.submit(button, text, AGENT_MESSAGE)
        page.act("send-message", "type and send a message", send)
        page.wait("send-message", f"the agent's message {AGENT_MESSAGE!r} in the conversation",
                  lambda s: any(m["sender"] == "agent" and AGENT_MESSAGE in (m["text"] or "")
                                for m in (find_conversation(s, request_id) or {}).get("messages", [])))

    step("request-form")
    before = {f["id"] for f in find_conversation(page.last_state, request_id)["forms"]}

    def request_form():
        root = page.css(conversation)
        button, kind = page.css(".request-form", root), page.css("select.form-kind", root)
        Select(kind).select_by_value("pin")
        page.submit(button, kind, "pin")
    page.act("request-form", "choose 'pin' in .form-kind and click .request-form", request_form)
    form = page.wait("request-form", "a new .secure-form in the conversation",
                     lambda s: next((f for f in (find_conversation(s, request_id) or {}).get("forms", [])
                                     if f["id"] and f["id"] not in before), None))
    form_id = summary["form_id"] = form["id"]
    log(f"form {form_id} requested, outcome {form['outcome']!r}")

    # 4. Tell the Swift test the customer can answer now.
    print(f"FORM_REQUESTED {request_id}", flush=True)

    # 5. Wait for the customer's answer to show as verified.
    step("await-verified")

    def outcome(s):
        f = next((f for f in (find_conversation(s, request_id) or {}).get("forms", []) if f["id"] == form_id), None)
        return f if f and f["outcome"] in FINAL_OUTCOMES else None
    form = page.wait("await-verified", f'.secure-form[data-form-id="{form_id}"] with data-outcome="verified"', outcome)
    summary["outcome"], summary["form_text"] = form["outcome"], form["text"]
    if form["outcome"] != "verified":
        raise StepFailed("await-verified", f"form {form_id} ended as {form['outcome']!r}: {form['text']!r}")
    if not form["text"]:
        raise StepFailed("await-verified", f"form {form_id} is verified but shows no text")
    log(f"verified: {form['text']!r}")

    # 6. Screenshot, with the verified form in view.
    step("screenshot")
    page.act("screenshot", "scroll the verified form into view", lambda: driver.execute_script(
        "arguments[0].scrollIntoView({block: 'center'})", page.css(f'.secure-form[data-form-id="{form_id}"]')))
    save_screenshot(driver, args.screenshot)
    summary["screenshot"] = str(args.screenshot)

    # 7. Privacy.
    step("privacy")
    summary["privacy"] = privacy_checks(page, args.secret, canary=form_id)


def save_screenshot(driver, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)) or path.stat().st_size == 0:
        raise StepFailed("screenshot", f"could not write {path}")
    log(f"screenshot {path} ({path.stat().st_size} bytes)")


def privacy_checks(page: Page, secret: str, canary: str) -> dict:
    """Fails if SECRET reached the browser; proves first that the search can find things."""
    driver, audit = page.driver, page.audit
    audit.finish()
    # What the page holds besides the network: DOM, cookies (HttpOnly ones too,
    # through WebDriver), web storage, and the console.
    held = {
        "page source": driver.page_source,
        "cookies": json.dumps(driver.get_cookies()),
        "web storage": driver.execute_script(
            "return JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"),
        "browser console": json.dumps(driver.get_log("browser")),
    }
    stats = audit.stats()

    # Self-test of the search, so that it cannot pass vacuously: the verified
    # form's id is on the page and came in a response body (#panel's content
    # is fetched from /console/panel, or is in the /console document).
    probe = Matcher(canary)
    in_bodies = [h for h in audit.find(probe) if h.startswith("response body")]
    problems = []
    if stats["bodies_inspected"] == 0:
        problems.append("no response body could be read")
    if probe.search(held["page source"]) is None:
        problems.append(f"the form id {canary} is not found in the page source")
    if not in_bodies:
        problems.append(f"the form id {canary} is not found in any response body")
    if stats["event_streams"] == 0 or stats["event_source_messages"] == 0:
        problems.append("no /console/events EventSource messages were seen in the network log")
    if problems:
        raise StepFailed("privacy", "the SECRET check would not be meaningful: " + "; ".join(problems)
                         + f" (network: {json.dumps(stats)})")
    stats["canary"] = canary
    stats["canary_found_in"] = len(in_bodies)

    matcher = Matcher(secret)
    leaks = [f"{where}: …{ctx}…" for where, text in held.items() if (ctx := matcher.search(text)) is not None]
    leaks += audit.find(matcher)
    if leaks:
        raise StepFailed("privacy", f"the SECRET reached the agent's browser in {len(leaks)} place(s):\n  "
                         + "\n  ".join(leaks[:20]), EXIT_LEAK)
    log(f"SECRET absent from page, cookies, storage, console, {stats['bodies_inspected']} response bodies "
        f"({stats['bodies_unavailable']} unreadable), {stats['event_source_messages']} EventSource messages, "
        f"{stats['event_stream_bytes']} event-stream bytes, {stats['network_events']} network events")
    return stats


# --------------------------------------------------------------------------
# --self-test: a fake of the console contract, served on 127.0.0.1
# --------------------------------------------------------------------------

FAKE_STATIC = {
    "login.html": """<!doctype html><html><head><meta charset="utf-8"><title>Veil agent console</title>
<link rel="stylesheet" href="/console/console.css"></head><body><main>
<h1>Agent console (fake)</h1>{error}
<form id="login-form" method="post" action="/console/login">
<label>Agent <input id="agent-id" name="agentId" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password" autocomplete="current-password"></label>
<button id="sign-in" type="submit">Sign in</button></form></main></body></html>
""",
    "console.html": """<!doctype html><html><head><meta charset="utf-8"><title>Veil agent console</title>
<link rel="stylesheet" href="/console/console.css"></head><body><main>
<h1>Agent console (fake) &mdash; {agent}</h1><div id="panel">{panel}</div></main>
<script src="/console/console.js" defer></script></body></html>
""",
    # The page's own JS: on each event, fetch the panel and replace #panel.
    "console.js": """(() => {
  const panel = document.getElementById('panel');
  let busy = false, again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch('/console/panel', {cache: 'no-store', credentials: 'same-origin'});
      if (r.ok) panel.innerHTML = await r.text();
    } finally { busy = false; if (again) { again = false; refresh(); } }
  }
  new EventSource('/console/events').onmessage = refresh;
})();
""",
    "console.css": """body{font-family:"DejaVu Sans",sans-serif;margin:2em;color:#222}
.offer,.conversation{border:1px solid #bbb;border-radius:6px;padding:.8em;margin:.6em 0}
.message[data-sender=agent]{color:#0a4}.message[data-sender=system]{color:#888}
.secure-form[data-outcome=verified]{color:#070;font-weight:bold}
.secure-form[data-outcome=pending]{color:#a60}
""",
}


class FakeConsole:
    """In-memory state of one agent and one customer's chat, with a fake customer.

    The panel is republished every 0.6 s, as a busy dispatcher would, so the
    driver must cope with #panel being replaced while it works.
    """

    def __init__(self, agent: str, password: str, secret: str, plant: str | None):
        self.agent, self.password, self.secret, self.plant = agent, password, secret, plant
        self.docroot = Path(tempfile.mkdtemp(prefix="veil-fake-console-"))
        for name, text in FAKE_STATIC.items():
            (self.docroot / name).write_text(text)
        self.changed = threading.Condition()
        self.version = 0
        self.stopping = False
        self.token = secrets.token_urlsafe(16)
        self.request_id = str(uuid.uuid4())
        self.offered = self.accepted = False
        self.messages = [("customer", "Hi, my card was declined at a shop.")]
        self.forms: list[dict] = []
        self.server: http.server.ThreadingHTTPServer | None = None

    # state changes ------------------------------------------------------
    def bump(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def later(self, seconds: float, change: Callable[[], None]) -> None:
        def run():
            time.sleep(seconds)
            change()
            self.bump()
        threading.Thread(target=run, daemon=True).start()

    def offer(self) -> None:
        self.offered = True

    def customer_answers(self, form: dict) -> None:
        # The fake customer types the right PIN; any other kind of form is
        # answered wrongly, so a form requested with the wrong kind shows.
        form["outcome"] = "verified" if form["kind"] == "pin" else "invalid"

    def verified(self) -> bool:
        return any(f["outcome"] == "verified" for f in self.forms)

    # rendering ----------------------------------------------------------
    def panel(self) -> str:
        e = html.escape
        waiting = 1 if self.offered and not self.accepted else 0
        out = [f'<p id="queue">{waiting} chat{"" if waiting == 1 else "s"} waiting</p><section id="offers"><h2>Offers</h2>']
        if waiting:
            rid = self.request_id
            out.append(f'<div class="offer" data-request-id="{rid}"><p>Customer needs help with a card.</p>'
                       f'<form method="post" action="/console/chats/{rid}/accept"><button class="accept">Accept</button></form>'
                       f'<form method="post" action="/console/chats/{rid}/decline"><button class="decline">Decline</button></form></div>')
        out.append('</section><section id="conversations"><h2>Conversations</h2>')
        if self.accepted:
            rid = self.request_id
            out.append(f'<div class="conversation" data-request-id="{rid}"><ol class="messages">')
            out += [f'<li class="message" data-sender="{s}">{e(t)}</li>' for s, t in self.messages]
            out.append(f'</ol><form method="post" action="/console/chats/{rid}/messages">'
                       '<textarea class="message-text" name="text"></textarea><button class="send">Send</button></form>'
                       f'<form method="post" action="/console/chats/{rid}/forms"><select class="form-kind" name="kind">'
                       '<option value="card">Card</option><option value="pin">PIN</option>'
                       '<option value="national-id">National ID</option></select>'
                       '<button class="request-form">Request secure form</button></form><ul class="secure-forms">')
            for f in self.forms:
                label = {"pin": "PIN check", "card": "Card", "national-id": "National id"}.get(f["kind"], f["kind"])
                text = {"verified": f"{label}: verified, the customer entered the correct PIN.",
                        "pending": f"{label}: waiting for the customer."}.get(f["outcome"], f"{label}: {f['outcome']}.")
                if f["outcome"] == "verified" and self.plant == "panel":
                    text += f" (entered: {self.secret})"
                out.append(f'<li class="secure-form" data-form-id="{f["id"]}" data-outcome="{f["outcome"]}">{e(text)}</li>')
            out.append("</ul></div>")
        out.append("</section>")
        return "".join(out)

    # serving ------------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def signed_in(self) -> bool:
                return f"veil_console={fake.token}" in self.headers.get("Cookie", "")

            def send(self, status: int, body: str = "", ctype: str = "text/html; charset=utf-8",
                     headers: dict | None = None) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def redirect(self, location: str, headers: dict | None = None) -> None:
                self.send(303, headers={"Location": location, **(headers or {})})

            def static(self, name: str, **fields: str) -> str:
                """A file of the fake's docroot, with its {placeholders} filled in."""
                text = (fake.docroot / name).read_text()
                for key, value in fields.items():
                    text = text.replace("{" + key + "}", value)
                return text

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                if path == "/console/login":
                    return self.send(200, self.static("login.html", error=""))
                if path in ("/console/console.js", "/console/console.css"):
                    name = path.rsplit("/", 1)[1]
                    ctype = "text/javascript" if name.endswith(".js") else "text/css"
                    return self.send(200, self.static(name), ctype)
                if not self.signed_in():
                    return self.send(401, "sign in first") if path != "/console" else self.redirect("/console/login")
                if path == "/console":
                    if not fake.offered:
                        fake.later(1.5, fake.offer)  # the customer's request arrives while we watch
                    return self.send(200, self.static("console.html", agent=html.escape(fake.agent), panel=fake.panel()))
                if path == "/console/panel":
                    headers = {"X-Debug-Pin": fake.secret} if fake.plant == "header" and fake.verified() else None
                    return self.send(200, fake.panel(), headers=headers)
                if path == "/console/events":
                    return self.events()
                self.send(404, "not found")

            def events(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seen, planted = -1, False
                try:
                    while not fake.stopping:
                        with fake.changed:
                            fake.changed.wait_for(lambda: fake.version != seen or fake.stopping, timeout=1)
                            version = fake.version
                        if version != seen:
                            seen = version
                            data = {"version": version}
                            if fake.plant == "sse-data" and fake.verified():
                                data["pin"] = fake.secret
                            self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                        if fake.plant == "sse-comment" and fake.verified() and not planted:
                            planted = True  # a comment: never dispatched as a message
                            self.wfile.write(f": pin {fake.secret}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                path = urllib.parse.urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                field = lambda name: (form.get(name) or [""])[0]  # noqa: E731
                if path == "/console/login":
                    if field("agentId") == fake.agent and field("password") == fake.password:
                        return self.redirect("/console", {
                            "Set-Cookie": f"veil_console={fake.token}; Path=/console; HttpOnly; SameSite=Strict"})
                    return self.send(200, self.static("login.html", error='<p id="login-error">Wrong agent id or password.</p>'))
                if not self.signed_in():
                    return self.send(401, "sign in first")
                match = re.fullmatch(r"/console/chats/([0-9a-f-]+)/(accept|decline|messages|forms)", path)
                if not match or match.group(1) != fake.request_id:
                    return self.send(404, "no such chat")
                action = match.group(2)
                if action == "accept":
                    fake.accepted = True
                    fake.messages.append(("system", f"{fake.agent} joined the chat."))
                elif action == "decline":
                    fake.offered = False
                elif action == "messages" and field("text").strip():
                    fake.messages.append(("agent", field("text").strip()))
                elif action == "forms":
                    new = {"id": str(uuid.uuid4()), "kind": field("kind"), "outcome": "pending"}
                    fake.forms.append(new)
                    fake.later(2.0, lambda: fake.customer_answers(new))
                fake.bump()
                self.redirect("/console")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

        def tick():  # republish the panel often, as a busy service would
            while not self.stopping:
                time.sleep(0.6)
                self.bump()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=tick, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.stopping = True
        self.bump()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        shutil.rmtree(self.docroot, ignore_errors=True)


# --------------------------------------------------------------------------

def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--console", help="base URL of the dispatcher, e.g. http://127.0.0.1:8080")
    parser.add_argument("--agent", help="agent id to sign in with")
    parser.add_argument("--password", help="the agent's password")
    parser.add_argument("--secret", help="what the customer types into the form; must never reach the agent")
    parser.add_argument("--screenshot", type=Path, help="where to save a PNG of the verified form")
    parser.add_argument("--timeout", type=float, default=60, help="seconds each wait may take (default 60)")
    parser.add_argument("--request-id", help="accept this offer (default: the first one shown)")
    parser.add_argument("--no-message", action="store_true", help="do not send a chat message")
    parser.add_argument("--chromium", default=os.environ.get("VEIL_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--chromedriver", default=os.environ.get("VEIL_CHROMEDRIVER", "/usr/bin/chromedriver"))
    parser.add_argument("--self-test", action="store_true",
                        help="run against a fake console served by this script")
    parser.add_argument("--plant-secret", nargs="?", const="panel",
                        choices=["panel", "header", "sse-data", "sse-comment"],
                        help="with --self-test: the fake leaks the secret this way (the run must exit 3)")
    args = parser.parse_args(argv)
    if args.plant_secret and not args.self_test:
        parser.error("--plant-secret needs --self-test")
    if args.self_test:
        args.agent = args.agent or "ana"
        args.password = args.password or secrets.token_urlsafe(12)
        args.secret = args.secret or "".join(secrets.choice("0123456789") for _ in range(8))
        args.screenshot = args.screenshot or Path(tempfile.gettempdir()) / "veil-agent-console-self-test.png"
    else:
        missing = [f"--{n}" for n in ("console", "agent", "password", "secret", "screenshot") if not getattr(args, n)]
        if missing:
            parser.error("missing " + ", ".join(missing))
    if len(args.secret) < 6:
        print(f"warning: a {len(args.secret)}-character SECRET may occur by chance (in ids, timestamps); "
              "use a longer one", file=sys.stderr)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    summary: dict[str, Any] = {"ok": False, "self_test": args.self_test, "plant_secret": args.plant_secret}
    fake = driver = None
    code = EXIT_OK
    try:
        if args.self_test:
            fake = FakeConsole(args.agent, args.password, args.secret, args.plant_secret)
            args.console = fake.start()
            log(f"self-test: fake console at {args.console}" +
                (f", planting the secret in: {args.plant_secret}" if args.plant_secret else ""))
        summary["console"] = args.console
        log("start-browser")
        driver = start_browser(args.chromium, args.chromedriver, args.timeout)
        summary["browser"] = driver.capabilities.get("browserVersion")
        page = Page(driver, NetworkAudit(driver), args.console, args.timeout)
        run_scenario(page, args, summary)
        summary["ok"] = True
        summary.pop("step", None)
        log("passed")
    except StepFailed as failure:
        code = failure.exit_code
        summary.update(failed_step=failure.step, error=failure.message)
        print(f"FAILED at step {failure.step}: {failure.message}", file=sys.stderr, flush=True)
    except Exception as error:  # noqa: BLE001 - report any other error against the current step
        code = EXIT_STEP
        step = summary.get("step", "start")
        summary.update(failed_step=step, error=f"{type(error).__name__}: {_first_line(error)}")
        print(f"FAILED at step {step}: unexpected {type(error).__name__}", file=sys.stderr)
        traceback.print_exc()
    finally:
        if driver is not None:
            if code not in (EXIT_OK, EXIT_LEAK) and args.screenshot:
                keep_failure_evidence(driver, args.screenshot, summary)
            try:
                driver.quit()
            except Exception:  # noqa: BLE001
                pass
        if fake is not None:
            fake.stop()
        summary["exit_code"] = code
        summary["seconds"] = round(time.monotonic() - _started, 1)
        print(json.dumps(summary, sort_keys=True), flush=True)
    return code


def keep_failure_evidence(driver, screenshot: Path, summary: dict) -> None:
    """Next to the screenshot: what the browser showed when the step failed."""
    try:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        stem = screenshot.with_suffix("")
        driver.save_screenshot(f"{stem}.failed.png")
        Path(f"{stem}.failed.html").write_text(driver.page_source)
        summary["failure_evidence"] = [f"{stem}.failed.png", f"{stem}.failed.html"]
        print(f"note: the page at failure: {stem}.failed.png, {stem}.failed.html", file=sys.stderr)
    except Exception:  # noqa: BLE001 - the browser may be gone
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
