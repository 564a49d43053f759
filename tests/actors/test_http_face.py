"""The HTTP face's own mechanisms, in memory and in virtual time (``autojump_clock``).

The ASGI app is called directly (no sockets, no Hypercorn) with a scripted backend, so the
exact times of the request-body timeout, the shutdown drain and the slow-client write timeout
can be asserted; `sniff` and `_Replay` run on in-memory streams. The loopback tests with the
real SDKs are in ``tests/integration/test_http_face.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing

from actors._client_keys import ClientKeys
from actors._http_face import HEAD_LIMIT, HttpFace, _Replay, sniff
from protocol._config import GatewayConfig, Secret
from protocol._errors import ErrorKind
from protocol._frames import ConnectionStatus
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    StreamEvent,
    TextDelta,
    Usage,
)

TOKEN = "t0ken"
CONFIG = GatewayConfig(port=0, tokens=[Secret(TOKEN)], handshake_timeout_s=4.0)
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Handle:
    def __init__(self, events: list[StreamEvent], result: Completion | Failure) -> None:
        self.events = events
        self.result = result

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        for event in self.events:
            await trio.sleep(1)
            yield event

    async def wait(self) -> Completion | Failure:
        return self.result


class Backend:
    """A scripted runtime: ``chat_delay`` seconds per answer (``inf``: never)."""

    def __init__(self, *, chat_delay: float = 0.0, crash: bool = False) -> None:
        self.chat_delay = chat_delay
        self.crash = crash
        self.cancelled = 0
        self.streams_closed = 0

    @asynccontextmanager
    async def stream_request(self, request: ChatRequest) -> AsyncIterator[Handle]:
        events: list[StreamEvent] = [TextDelta(text=f"w{i} ") for i in range(10)]
        try:
            yield Handle(events, Completion(text="", request_id=request.request_id))
        finally:
            self.streams_closed += 1

    async def chat_request(self, request: ChatRequest) -> Completion | Failure:
        if self.crash:
            raise RuntimeError("backend bug")
        try:
            await trio.sleep(self.chat_delay)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        return Completion(text="ok", usage=Usage(input_tokens=1), request_id=request.request_id)

    async def embed_request(self, request: EmbedRequest) -> Embeddings | Failure:
        return Failure.of(ErrorKind.UNSUPPORTED, "no embeddings here")

    def status_report(self) -> tuple[str, list[ConnectionStatus]]:
        return "ok", []

    def model_list(self) -> list[tuple[str, str]]:
        return [("m", "local")]

    def routable(self, model: str) -> bool:
        return model == "m"

    def health_report(self) -> tuple[str, bytes]:
        return "ok", b'{"status":"ok"}'

    def metrics_text(self) -> str:
        return "# runtime metrics\n"


def make_face(backend: Backend, config: GatewayConfig = CONFIG) -> HttpFace:
    return HttpFace(backend, config, clients=ClientKeys(config))


class Exchange:
    """One request driven through the ASGI app: what it was sent, and a way to leave."""

    def __init__(self, face: HttpFace, method: str, path: str, body: bytes | None) -> None:
        self.face = face
        self.scope = {
            "type": "http",
            "method": method,
            "path": path,
            "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
            "client": ("127.0.0.1", 5555),
        }
        self.body = body
        self.sent: list[dict[str, Any]] = []
        self.left = trio.Event()
        self.done = trio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def run(self) -> None:
        try:
            await self.face(self.scope, self.receive, self.send)
        finally:
            self.done.set()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body_bytes(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    def json(self) -> Any:
        return json.loads(self.body_bytes)


async def request(
    face: HttpFace, path: str = "/v1/chat/completions", body: bytes = CHAT
) -> Exchange:
    ex = Exchange(face, "POST", path, body)
    await ex.run()
    return ex


# --------------------------------------------------------------------------- requests


async def test_a_body_that_does_not_arrive_in_time_is_a_408(autojump_clock: Any) -> None:
    face = make_face(Backend())
    ex = Exchange(face, "POST", "/v1/chat/completions", None)  # the body never comes
    start = trio.current_time()
    await ex.run()
    assert trio.current_time() - start == CONFIG.handshake_timeout_s
    assert ex.status == 408
    assert "did not arrive in 4s" in ex.json()["error"]["message"]


async def test_a_backend_bug_is_a_500_for_that_request_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = Backend(crash=True)
    face = make_face(backend)
    with caplog.at_level(logging.ERROR, logger="switchboard.http"):
        broken = await request(face)
    assert broken.status == 500
    assert broken.json()["error"]["type"] == "server_error"
    assert "backend bug" in caplog.text
    assert TOKEN not in caplog.text
    backend.crash = False
    assert (await request(face)).status == 200


async def test_every_request_is_settled_with_its_client_once(autojump_clock: Any) -> None:
    backend = Backend(chat_delay=float("inf"))
    face = make_face(backend)
    async with trio.open_nursery() as nursery:
        ex = Exchange(face, "POST", "/v1/chat/completions", CHAT)
        nursery.start_soon(ex.run)
        await trio.sleep(1)
        assert face.clients.statistics()["tokens[0]"].in_flight == 1
        ex.left.set()  # the client disconnects
    assert backend.cancelled == 1
    assert ex.sent == []  # nobody to answer
    stats = face.clients.statistics()["tokens[0]"]
    assert (stats.in_flight, stats.requests) == (0, 1)
    assert face.statistics().disconnects == 1


async def test_a_stream_left_by_its_client_closes_the_upstream_stream(autojump_clock: Any) -> None:
    backend = Backend()
    face = make_face(backend)
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    )
    async with trio.open_nursery() as nursery:
        ex = Exchange(face, "POST", "/v1/chat/completions", body.encode())
        nursery.start_soon(ex.run)
        await trio.sleep(3.5)  # three events went out (one a second)
        ex.left.set()
    assert ex.status == 200
    assert ex.body_bytes.count(b"data: ") == 3
    assert b"[DONE]" not in ex.body_bytes
    assert backend.streams_closed == 1
    assert face.statistics().disconnects == 1


async def test_metrics_models_and_probes(autojump_clock: Any) -> None:
    face = make_face(Backend())
    await request(face)
    metrics = Exchange(face, "GET", "/metrics", b"")
    await metrics.run()
    assert metrics.status == 200
    assert metrics.body_bytes.startswith(b"# runtime metrics\n")
    assert b'switchboard_http_responses_total{status="200"} 1' in metrics.body_bytes
    models = Exchange(face, "GET", "/v1/models", b"")
    await models.run()
    assert [m["id"] for m in models.json()["data"]] == ["m"]
    ready = Exchange(face, "GET", "/readyz", b"")
    await ready.run()
    assert (ready.status, ready.json()) == (200, {"status": "ok"})


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_drains_running_requests_and_refuses_new_ones(autojump_clock: Any) -> None:
    backend = Backend(chat_delay=3.0)
    face = make_face(backend)
    async with trio.open_nursery() as nursery:
        running = Exchange(face, "POST", "/v1/chat/completions", CHAT)
        nursery.start_soon(running.run)
        await trio.sleep(1)
        start = trio.current_time()
        nursery.start_soon(face.shutdown, 10.0)
        await trio.testing.wait_all_tasks_blocked()
        late = await request(face)
        await running.done.wait()
        assert trio.current_time() - start == 2.0  # the running one finished, in time
    assert late.status == 503
    assert late.json()["error"]["message"] == "server shutting down"
    assert running.status == 200
    ready = Exchange(face, "GET", "/readyz", b"")
    await ready.run()
    assert ready.status == 503


async def test_shutdown_cancels_what_outlives_the_drain(autojump_clock: Any) -> None:
    backend = Backend(chat_delay=float("inf"))
    face = make_face(backend)
    async with trio.open_nursery() as nursery:
        running = Exchange(face, "POST", "/v1/chat/completions", CHAT)
        nursery.start_soon(running.run)
        await trio.sleep(1)
        start = trio.current_time()
        await face.shutdown(5.0)
        assert trio.current_time() - start == 5.0
    assert running.status == 503
    assert running.json()["error"]["code"] == "cancelled"
    assert backend.cancelled == 1
    assert face.clients.statistics()["tokens[0]"].in_flight == 0


# --------------------------------------------------------------------------- one port


WS_HEAD = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def sniffed(*pieces: bytes, close: bool = False) -> tuple[bytes, bool]:
    send, receive = trio.testing.memory_stream_pair()
    for piece in pieces:
        await send.send_all(piece)
    if close:
        await send.aclose()
    return await sniff(receive)


@pytest.mark.parametrize("split", [1, 20, len(WS_HEAD) - 1])
async def test_a_websocket_handshake_is_recognised_however_it_arrives(split: int) -> None:
    assert await sniffed(WS_HEAD[:split], WS_HEAD[split:]) == (WS_HEAD, True)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00",  # a TLS hello: known at once, no head needed
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
)
async def test_anything_else_is_plain_http(head: bytes) -> None:
    with trio.fail_after(1):  # nothing more is waited for
        assert await sniffed(head) == (head, False)


async def test_a_peer_that_stops_or_overflows_is_plain_http() -> None:
    assert await sniffed(b"GET / HTTP/1.1\r\nHo", close=True) == (b"GET / HTTP/1.1\r\nHo", False)
    assert await sniffed(b"", close=True) == (b"", False)
    huge = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * HEAD_LIMIT + b"\r\n"
    head, upgrade = await sniffed(huge)
    assert not upgrade
    assert len(head) <= len(huge)


async def test_the_replay_stream_gives_the_head_first_then_reads_on() -> None:
    send, receive = trio.testing.memory_stream_pair()
    replay = _Replay(cast(trio.SocketStream, receive), b"abcdef")
    assert await replay.receive_some(4) == b"abcd"
    assert await replay.receive_some() == b"ef"
    await send.send_all(b"more")
    assert await replay.receive_some() == b"more"


async def test_a_client_that_does_not_read_is_closed_after_the_slow_client_timeout(
    autojump_clock: Any,
) -> None:
    client, server = trio.testing.lockstep_stream_pair()  # a write waits for a read
    slow: list[bool] = []
    replay = _Replay(
        cast(trio.SocketStream, server), b"", write_timeout=30.0, on_slow=lambda: slow.append(True)
    )
    start = trio.current_time()
    with trio.CancelScope(shield=True), pytest.raises(trio.BrokenResourceError):
        await replay.send_all(b"chunk")  # shielded, as Hypercorn writes: still bounded
    assert trio.current_time() - start == 30.0
    assert slow == [True]
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")
    await client.aclose()
