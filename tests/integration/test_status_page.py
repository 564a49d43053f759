"""The status page at ``/``, in a real headless browser (Debian's ``chromium``).

A runtime with two connections (``local`` healthy, ``backup`` forced open) serves its gateway
on loopback port 0; chromium loads the page and the test reads the DOM through the DevTools
protocol (``Runtime.evaluate`` over a WebSocket, with trio-websocket: no browser-driver
dependency). Checked: the page asks for a token and refuses a wrong one, then shows the
overall health and one card per connection with its breaker state; a request through the
runtime changes the displayed request and token counts without a reload; a network cut is
shown and the page comes back by itself; a server that goes away is shown. The HTTP
answers themselves (auth, headers, the viewer bound) are checked with httpx.

Every browser step is bounded by ``trio.fail_after``; the browser runs in its own process
group and is terminated (then killed) whatever happens. Chromium is a system package:
``tests/system-deps.sh`` installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from actors._http_face import HttpFace
from actors.testing import FakeTransport
from protocol import (
    ChatRequest,
    ConnectionConfig,
    GatewayConfig,
    Message,
    RetryConfig,
    RouteConfig,
    RuntimeConfig,
    Secret,
    Target,
)
from supervisors import Runtime, open_runtime

TOKEN = "status-token"
LIMIT = 60.0
STEP = 20.0

STATE_JS = """(() => {
  if (!document.getElementById("health")) return null;  // not loaded yet
  const fields = (root) => Object.fromEntries(
    [...root.querySelectorAll("[data-field]")].map((f) => [f.dataset.field, f.textContent]));
  return {
    health: document.getElementById("health").textContent,
    live: document.getElementById("live").className,
    liveText: document.getElementById("live").textContent,
    stale: document.body.classList.contains("stale"),
    asking: !document.getElementById("auth").hidden,
    refused: !document.getElementById("auth-error").hidden,
    connections: [...document.querySelectorAll("[data-connection]")].map((c) => ({
      name: c.dataset.connection, ...fields(c) })),
    totals: fields(document.getElementById("totals")),
    href: location.href,
    html: document.documentElement.outerHTML,
  };
})()"""


def config(*, port: int = 0, spare: bool = False) -> RuntimeConfig:
    def conn(name: str) -> ConnectionConfig:
        return ConnectionConfig(
            name=name,
            provider="openai",
            base_url=f"http://{name}/v1",
            default_model="fake-model",
            retry=RetryConfig(max_attempts=1),
        )

    names = ["local", "backup", *(["spare"] if spare else [])]
    return RuntimeConfig(
        connections={name: conn(name) for name in names},
        routes={"default": RouteConfig(targets=[Target(connection="local")])},
        gateway=GatewayConfig(port=port, tokens=[Secret(TOKEN)]),
    )


@asynccontextmanager
async def serving(*, port: int = 0, spare: bool = False) -> AsyncIterator[tuple[Runtime, str]]:
    """A runtime (provider side in memory) with ``backup`` forced open, and its HTTP URL
    (on *port*; with a third connection ``spare`` when asked)."""
    cfg = config(port=port, spare=spare)
    async with open_runtime(cfg, transport=FakeTransport(seed=3)) as rt:
        assert rt.gateway is not None
        rt.connections["backup"].force_open()
        yield rt, "http" + rt.gateway.url.removeprefix("ws")


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed: run tests/system-deps.sh (apt-get install chromium)")


class DevTools:
    """The DevTools protocol of one page, over its WebSocket."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self._next = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        await self.ws.send_message(json.dumps({"id": ident, "method": method, "params": params}))
        while True:  # skip events: only replies carry our id
            reply = json.loads(await self.ws.get_message())
            if reply.get("id") == ident:
                assert "error" not in reply, reply
                result: dict[str, Any] = reply["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def state(self) -> dict[str, Any] | None:
        """What the page shows (``None`` until the page has loaded)."""
        state: dict[str, Any] | None = await self.evaluate(STATE_JS)
        return state

    async def until(self, what: str, check: Any) -> dict[str, Any]:
        """Poll the page's state until ``check(state)`` holds (bounded by `STEP`)."""
        state: dict[str, Any] | None = None
        try:
            with trio.fail_after(STEP):
                while True:
                    state = await self.state()
                    if state is not None and check(state):
                        return state
                    await trio.sleep(0.1)
        except trio.TooSlowError:
            if state is not None:
                state.pop("html", None)
            raise AssertionError(f"the page never showed {what}; last state: {state}") from None


@dataclass
class Browser:
    page: DevTools
    log: Path


@asynccontextmanager
async def browser(url: str) -> AsyncIterator[Browser]:
    """Headless chromium showing *url*, and the DevTools connection to its page. The
    browser and its children are terminated on the way out."""
    with tempfile.TemporaryDirectory(prefix="switchboard-chromium-") as tmp:
        profile = Path(tmp) / "profile"
        log = Path(tmp) / "chromium.log"
        args = [
            chromium_path(),
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            url,
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # chromium's sandbox refuses to run as root
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        try:
            with trio.fail_after(STEP):
                ws_url = await _page_target(profile, log)
            async with trio_websocket.open_websocket_url(ws_url) as ws:
                yield Browser(page=DevTools(ws), log=log)
        finally:
            with trio.CancelScope(shield=True):
                await _stop(process)


async def _page_target(profile: Path, log: Path) -> str:
    """The WebSocket URL of the browser's page, once its DevTools server listens."""
    active = profile / "DevToolsActivePort"
    while not active.exists() or not active.read_text().strip():  # noqa: ASYNC110 - a file
        await trio.sleep(0.05)
    port = int(active.read_text().split()[0])
    async with httpx.AsyncClient() as http:
        while True:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                ws_url: str = pages[0]["webSocketDebuggerUrl"]
                return ws_url
            await trio.sleep(0.05)


async def _stop(process: trio.Process) -> None:
    """Terminate *process* (it closes its children), give it 10 s, then kill whatever is
    left of its process group."""
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers (or the process itself)
    await process.wait()


def card(state: dict[str, Any], name: str) -> dict[str, str]:
    cards = {c["name"]: c for c in state["connections"]}
    found: dict[str, str] = cards[name]
    return found


# --------------------------------------------------------------------------- the browser


async def test_the_page_shows_the_connections_and_updates_live_in_a_real_browser() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            first: Server = await nursery.start(Server.run)
            async with browser(first.url + "/") as chrome:
                await watch(chrome.page, first)


@dataclass
class Server:
    """A `serving` runtime in its own task, stopped (gracefully) by `stop`."""

    rt: Runtime
    url: str
    stopping: trio.Event
    stopped: trio.Event

    @classmethod
    async def run(cls, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        async with serving() as (rt, url):
            server = cls(rt=rt, url=url, stopping=trio.Event(), stopped=trio.Event())
            task_status.started(server)
            await server.stopping.wait()
        server.stopped.set()

    async def stop(self) -> None:
        self.stopping.set()
        await self.stopped.wait()


async def watch(page: DevTools, first: Server) -> None:
    """The browser part of the test above."""
    rt = first.rt
    # No token in the URL: the page asks for one, and says when one is refused.
    await page.until("the token form", lambda s: s["asking"])
    await page.evaluate(
        'document.getElementById("token").value = "wrong";'
        'document.getElementById("auth").requestSubmit()'
    )
    await page.until("the refusal", lambda s: s["asking"] and s["refused"])
    await page.evaluate(
        f'document.getElementById("token").value = "{TOKEN}";'
        'document.getElementById("auth").requestSubmit()'
    )
    state = await page.until("both connections", lambda s: len(s["connections"]) == 2)
    assert state["health"] == "degraded"  # backup is forced open
    assert not state["asking"]
    assert [c["name"] for c in state["connections"]] == ["local", "backup"]
    assert card(state, "local")["breaker"] == "closed"
    assert card(state, "backup")["breaker"] == "forced open"
    assert card(state, "local")["requests"] == "0"
    assert card(state, "local")["tokens"] == "0 in · 0 out"
    assert state["totals"]["requests"] == "0"
    assert state["live"] == "live on"
    assert TOKEN not in state["html"]  # the token is never written into the page

    # A request through the runtime shows up without a reload.
    await page.evaluate("window.marker = 1")  # gone if the page reloaded
    request = ChatRequest(model="default", messages=[Message(role="user", content="hi")])
    completion = await rt.chat(request)
    inp, out = completion.usage.input_tokens, completion.usage.output_tokens
    assert out > 0
    state = await page.until("the request", lambda s: card(s, "local")["requests"] == "1")
    assert card(state, "local")["tokens"] == f"{inp} in · {out} out"
    assert state["totals"]["requests"] == "1"
    assert state["totals"]["output_tokens"] == str(out)
    assert card(state, "local")["latency"].startswith("mean ")
    assert card(state, "backup")["requests"] == "0"
    assert await page.evaluate("window.marker") == 1

    # The server going away is shown; when one serves again, the page reconnects by itself.
    await first.stop()
    lost = await page.until("the lost server", lambda s: s["stale"])
    assert lost["live"] != "live on"
    port = int(first.url.rsplit(":", 1)[1])
    async with serving(port=port, spare=True):
        state = await page.until("live again", lambda s: len(s["connections"]) == 3)
        assert state["live"] == "live on"
        assert not state["stale"]
        assert card(state, "spare")["requests"] == "0"
        assert await page.evaluate("window.marker") == 1


async def test_switchboard_serve_prints_a_status_link_that_opens_the_page(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    for name in ("XDG_RUNTIME_DIR", "OLLAMA_HOST", "SWITCHBOARD_TOKEN"):
        env.pop(name, None)
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    command = [sys.executable, "-m", "supervisors._cli", "serve", "--port", "0"]
    serve = await trio.lowlevel.open_process(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True
    )
    assert serve.stdout is not None
    printed = b""
    try:
        with trio.fail_after(LIMIT):
            while b"status page: " not in printed or not printed.endswith(b"\n"):
                data = await serve.stdout.receive_some()
                assert data, printed.decode()
                printed += data
            line = printed.decode().partition("status page: ")[2].splitlines()[0]
            state = json.loads((tmp_path / "switchboard" / "gateway.json").read_text())
            assert line == "http" + state["url"].removeprefix("ws") + "/#token=" + state["token"]
            async with browser(line) as chrome:
                shown = await chrome.page.until("the local connection", lambda s: s["connections"])
        assert [c["name"] for c in shown["connections"]] == ["local"]
        assert shown["live"] == "live on"
        assert "#token" not in shown["href"]  # taken out of the address bar
        assert state["token"] not in shown["html"]
    finally:
        with trio.CancelScope(shield=True):
            if serve.returncode is None:
                serve.send_signal(signal.SIGINT)
            with trio.move_on_after(30):
                await serve.wait()
            await _stop(serve)


# --------------------------------------------------------------------------- plain HTTP


async def test_the_shell_is_public_the_data_needs_the_token() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as (_, url), httpx.AsyncClient(base_url=url) as http:
            shell = await http.get("/")
            no_token = await http.get("/status")
            wrong = await http.get("/status", params={"token": "nope"})
            by_header = await http.get("/status", headers={"authorization": f"Bearer {TOKEN}"})
            by_query = await http.get("/status", params={"token": TOKEN})
            events = await http.get("/status/events")
    assert shell.status_code == 200
    assert shell.headers["content-type"] == "text/html; charset=utf-8"
    csp = shell.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert "'unsafe-inline'" not in csp
    assert shell.headers["cache-control"] == "no-store"
    assert shell.headers["referrer-policy"] == "no-referrer"
    assert "local" not in shell.text
    assert TOKEN not in shell.text
    assert "http://" not in shell.text
    assert "https://" not in shell.text
    assert (no_token.status_code, wrong.status_code, events.status_code) == (401, 401, 401)
    assert TOKEN not in no_token.text
    assert "nope" not in wrong.text
    assert by_header.status_code == by_query.status_code == 200
    snapshot = by_query.json()
    assert snapshot["status"] == "degraded"
    assert [c["breaker"] for c in snapshot["connections"]] == ["closed", "forced_open"]
    assert TOKEN not in by_query.text


async def open_events(port: int) -> tuple[trio.SocketStream, bytes]:
    """A raw viewer of ``/status/events``: its socket and what it read up to the first
    snapshot (headers, the ``retry`` field and the first ``data`` event)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = f"GET /status/events?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    await stream.send_all(request.encode())
    seen = b""
    while b"\n\n" not in seen.partition(b"data: ")[2]:
        data = await stream.receive_some()
        assert data, seen
        seen += data
    return stream, seen


async def test_event_streams_are_bounded_and_end_when_the_viewer_leaves() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as (rt, url), httpx.AsyncClient(base_url=url) as http:
            assert rt.gateway is not None
            face = rt.gateway.http
            assert isinstance(face, HttpFace)
            assert face.status_page is not None
            page = face.status_page
            page.max_viewers = 1
            port = int(url.rsplit(":", 1)[1])
            viewer, seen = await open_events(port)
            head, _, body = seen.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"content-type: text/event-stream" in head.lower()
            assert b"retry: 2000\n\n" in body
            snapshot = json.loads(body.partition(b"data: ")[2].partition(b"\n\n")[0])
            assert [c["name"] for c in snapshot["connections"]] == ["local", "backup"]
            assert page.viewers == 1
            busy = await http.get("/status/events", params={"token": TOKEN})
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "5"
            assert busy.json()["error"]["code"] == "too_many_viewers"
            await viewer.aclose()  # the viewer leaves: its stream ends, its place is free
            while page.viewers:  # noqa: ASYNC110 - the server's state, not ours
                await trio.sleep(0.01)
            again, _ = await open_events(port)
            await again.aclose()
