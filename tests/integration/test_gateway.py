"""The WebSocket gateway and its Python client over real loopback sockets.

Each test runs a runtime on the in-memory `FakeTransport` (the provider side is cheap and its
attempt log says what the provider experienced), a `Gateway` on 127.0.0.1 port 0, and either
the Python `Client` or a raw trio-websocket connection (to see exactly what goes over the
wire). Real clock, short timings, and every test under ``trio.fail_after``.

Backpressure and slow consumers are in ``test_gateway_backpressure.py``.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import trio
import trio_websocket as tw

from actors._client import Client, GatewayError, translate_error
from actors._gateway import Gateway
from actors.testing import FakeTransport, FaultPlan, Latency
from protocol._config import GatewayConfig, Secret
from protocol._config_load import loads_config
from protocol._errors import ErrorKind, RequestFailed
from protocol._frames import (
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    Accepted,
    Cancel,
    ChatCall,
    ClientFrame,
    Done,
    EventFrame,
    FailureFrame,
    Goodbye,
    Hello,
    Ping,
    Pong,
    ServerFrame,
    Welcome,
    decode_server_frame,
    encode_frame,
)
from protocol._messages import (
    ChatRequest,
    Completion,
    EmbedRequest,
    Failure,
    Finished,
    Message,
    StreamEvent,
    TextDelta,
)
from supervisors._runtime import Runtime, open_runtime
from supervisors._serving import start_gateway

TOKEN = "tok-0123456789"
CONFIG = """
[runtime]
shutdown_timeout_s = 1.0

[connections.local]
provider = "openai"
base_url = "http://fake/v1"
default_model = "fake-model"
"""
ANTHROPIC_CONFIG = """
[runtime]
shutdown_timeout_s = 1.0

[connections.claude]
provider = "anthropic"
base_url = "http://fake/v1"
api_key = "k"
default_model = "fake-claude"
"""
LIMIT = 15  # seconds: every test ends well within this


@dataclass
class Served:
    runtime: Runtime
    gateway: Gateway
    transport: FakeTransport

    @property
    def url(self) -> str:
        return self.gateway.url


@asynccontextmanager
async def serving(
    transport: FakeTransport | None = None, *, config: str = CONFIG, **gateway_options: Any
) -> AsyncIterator[Served]:
    """A runtime on *transport* with a gateway on a free loopback port (token ``TOKEN``)."""
    transport = transport if transport is not None else FakeTransport(seed=1)
    options: dict[str, Any] = {"port": 0, "tokens": [Secret(TOKEN)], **gateway_options}
    async with (
        open_runtime(loads_config(config), transport=transport) as rt,
        trio.open_nursery() as nursery,
    ):
        gateway = await start_gateway(rt, nursery, GatewayConfig(**options))
        try:
            yield Served(rt, gateway, transport)
        finally:
            nursery.cancel_scope.cancel()


def chat(prompt: str = "hi", **fields: Any) -> ChatRequest:
    return ChatRequest(
        model="fake-model", messages=[Message(role="user", content=prompt)], **fields
    )


def text_of(events: Sequence[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@asynccontextmanager
async def raw(
    url: str,
    *,
    token: str | None = TOKEN,
    subprotocol: str | None = SUBPROTOCOL_JSON,
    hello: bool = True,
) -> AsyncIterator[tw.WebSocketConnection]:
    """A bare WebSocket to the gateway: bearer header when *token*, then (with *hello*) a
    hello frame and the welcome read. Leaving the block closes the WebSocket, then the TCP
    stream (owned here: trio-websocket's own helpers leave it open after a server close)."""
    port = int(url.rsplit(":", 1)[1])
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await tw.wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{port}",
                "/",
                subprotocols=[subprotocol] if subprotocol else [],
                extra_headers=headers,
            )
            try:
                if hello:
                    await send(ws, Hello())
                    assert isinstance(await receive(ws), Welcome)
                yield ws
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


async def send(ws: tw.WebSocketConnection, frame: ClientFrame) -> None:
    await ws.send_message(encode_frame(frame))


async def receive(ws: tw.WebSocketConnection) -> ServerFrame:
    return decode_server_frame(await ws.get_message())


async def close_code(ws: tw.WebSocketConnection) -> tuple[int | None, list[ServerFrame]]:
    """Read until the socket closes: the close code and every frame received before."""
    frames: list[ServerFrame] = []
    while True:
        try:
            frames.append(await receive(ws))
        except tw.ConnectionClosed as exc:
            return (exc.reason.code if exc.reason else None), frames


async def until(condition: Any, *, step: float = 0.005) -> None:
    """Poll *condition* (the caller's ``fail_after`` bounds the wait)."""
    while not condition():  # noqa: ASYNC110 - the conditions are other objects' state
        await trio.sleep(step)


def slow(seconds: float) -> FakeTransport:
    """A provider whose every answer starts after *seconds*."""
    return FakeTransport(plan=FaultPlan.always(Latency(seconds=seconds)), seed=1)


# --------------------------------------------------------------------------- the happy paths


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_chat_stream_embed_status_and_ping(encoding: Any) -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s, Client.connect(s.url, token=TOKEN, encoding=encoding) as c:
            assert c.welcome.version == 1
            reference = await s.runtime.chat(chat("same prompt"))
            completion = await c.chat(chat("same prompt"))
            assert completion.text == reference.text != ""
            assert completion.usage == reference.usage
            async with c.stream(chat("same prompt")) as stream:
                events = [e async for e in stream]
            result = stream.result
            assert isinstance(result, Completion)
            assert text_of(events) == result.text == reference.text
            assert isinstance(events[-1], Finished)
            assert events[-1].usage == result.usage == reference.usage
            vectors = await c.embed(EmbedRequest(model="fake-model", inputs=["a", "b"]))
            assert len(vectors.vectors) == 2
            status = await c.status()
            assert [row.name for row in status.connections] == ["local"]
            assert status.connections[0].completions == 4
            assert await c.ping() >= 0
        stats = s.gateway.statistics()
        assert stats.sessions_total == 1
        assert stats.requests == 3  # chat, stream, embed (status and ping are not requests)


async def test_msgpack_is_negotiated_by_subprotocol_and_json_is_the_default() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s:
            async with raw(s.url, subprotocol=SUBPROTOCOL_MSGPACK, hello=False) as ws:
                assert ws.subprotocol == SUBPROTOCOL_MSGPACK
                await ws.send_message(encode_frame(Hello(), "msgpack"))
                welcome = await ws.get_message()
                assert isinstance(welcome, bytes)
                assert isinstance(decode_server_frame(welcome), Welcome)
                await ws.send_message(encode_frame(Ping(nonce="x"), "msgpack"))
                pong = await ws.get_message()
                assert isinstance(pong, bytes)
                assert decode_server_frame(pong) == Pong(nonce="x")
            async with raw(s.url, subprotocol=None) as ws:
                assert ws.subprotocol is None
                await send(ws, Ping(nonce="y"))
                pong = await ws.get_message()
                assert isinstance(pong, str)
                assert msgspec.json.decode(pong) == {"type": "pong", "nonce": "y"}


async def test_200_concurrent_streams_over_20_sockets() -> None:
    """Every stream gets the fake's deterministic answer for its prompt, with exact usage,
    and exactly one terminal result; the provider saw exactly these 200 attempts."""
    prompts = [f"prompt number {i}" for i in range(200)]
    with trio.fail_after(LIMIT * 2):
        async with serving() as s:
            references = {p: await s.runtime.chat(chat(p)) for p in prompts}
            before = len(s.transport.attempts)
            results: dict[str, tuple[list[StreamEvent], Completion | Failure]] = {}

            async def one(c: Client, prompt: str) -> None:
                async with c.stream(chat(prompt)) as stream:
                    events = [e async for e in stream]
                results[prompt] = (events, stream.result)

            async def socket_(index: int) -> None:
                async with Client.connect(s.url, token=TOKEN) as c, trio.open_nursery() as n:
                    for prompt in prompts[index::20]:
                        n.start_soon(one, c, prompt)

            async with trio.open_nursery() as nursery:
                for index in range(20):
                    nursery.start_soon(socket_, index)
            stats = s.gateway.statistics()
            assert stats.peak_sessions == 20
            assert stats.requests == 200
            assert stats.in_flight == 0

        assert len(results) == 200
        for prompt, (events, result) in results.items():
            reference = references[prompt]
            assert isinstance(result, Completion), result
            assert text_of(events) == result.text == reference.text
            assert result.usage == reference.usage
            assert result.usage.output_tokens == 12
            finished = [e for e in events if isinstance(e, Finished)]
            assert len(finished) == 1
            assert finished[0].usage == reference.usage
        attempts = s.transport.attempts[before:]
        assert len(attempts) == 200
        assert all(a.outcome == "completed" and a.stream for a in attempts)
        reported = sorted(
            msgspec.structs.astuple(a.usage_reported) for a in attempts if a.usage_reported
        )
        received = sorted(
            msgspec.structs.astuple(r.usage)
            for _, r in results.values()
            if isinstance(r, Completion)
        )
        assert reported == received
        model = s.runtime.metrics().connections["local"].models["fake-model"]
        expected_output = sum(r.usage.output_tokens for r in references.values()) * 2
        assert model.output_tokens == expected_output


async def test_idle_connections_stay_open_across_pings() -> None:
    with trio.fail_after(LIMIT):
        async with serving(ping_interval_s=0.05) as s, Client.connect(s.url, token=TOKEN) as c:
            await trio.sleep(0.4)  # several ping rounds, answered by the client's socket
            assert (await c.chat(chat())).text
            assert s.gateway.statistics().sessions == 1


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("token", [None, "wrong", TOKEN[:-1], TOKEN + "x"])
async def test_a_bad_or_missing_token_gets_4401_and_nothing_else(token: str | None) -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s:
            async with raw(s.url, token=token, hello=False) as ws:
                await send(ws, Hello(token=token))
                code, frames = await close_code(ws)
            assert code == 4401
            assert frames == []
            with pytest.raises(GatewayError) as info:
                async with Client.connect(s.url, token=token):
                    pytest.fail("connected with a bad token")  # pragma: no cover
            assert info.value.code == 4401
            assert "refused the token" in str(info.value)
            assert s.gateway.statistics().rejected_auth == 2


async def test_a_first_frame_that_is_not_hello_gets_4401() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s, raw(s.url, token=None, hello=False) as ws:
            await send(ws, ChatCall(id="a", request=chat()))
            assert await close_code(ws) == (4401, [])
        assert s.transport.attempts == []


async def test_hello_token_authenticates_without_a_header() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s, raw(s.url, token=None, hello=False) as ws:
            await send(ws, Hello(token=TOKEN, client="browser"))
            welcome = await receive(ws)
            assert isinstance(welcome, Welcome)
            assert welcome.max_concurrent == 64
            await send(ws, ChatCall(id="a", request=chat(), stream=False))
            assert await receive(ws) == Accepted(id="a")
            done = await receive(ws)
            assert isinstance(done, Done)
            assert done.result.usage.output_tokens == 12


async def test_no_tokens_configured_means_no_authentication() -> None:
    with trio.fail_after(LIMIT):
        async with serving(tokens=[]) as s, Client.connect(s.url) as c:
            assert (await c.chat(chat())).text


async def test_handshake_timeout_closes_4408() -> None:
    with trio.fail_after(LIMIT):
        async with serving(handshake_timeout_s=0.2) as s, raw(s.url, token=None, hello=False) as ws:
            start = trio.current_time()
            assert await close_code(ws) == (4408, [])
            assert trio.current_time() - start >= 0.2


async def test_an_unsupported_protocol_version_closes_4426() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s:
            async with raw(s.url, token=None, hello=False) as ws:
                await send(ws, Hello(token=TOKEN, version=2))
                assert await close_code(ws) == (4426, [])
            async with raw(s.url, hello=False) as ws:  # header-authenticated: welcome first
                await send(ws, Hello(version=99))
                code, frames = await close_code(ws)
                assert code == 4426
                assert [type(f) for f in frames] == [Welcome]


# --------------------------------------------------------------------------- bad frames


async def test_malformed_and_unknown_frames_get_typed_failures_and_disturb_no_one() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s, Client.connect(s.url, token=TOKEN) as bystander:
            async with bystander.stream(chat("bystander")) as stream:
                async with raw(s.url) as ws:
                    await ws.send_message("this is not json")
                    await ws.send_message('{"type": "teleport", "id": "t1"}')
                    await ws.send_message('{"type": "chat", "id": "c1", "request": {"model": 1}}')
                    await ws.send_message(b"\xc1")  # undecodable msgpack
                    replies = [await receive(ws) for _ in range(4)]
                    for reply in replies:
                        assert isinstance(reply, FailureFrame)
                        assert reply.failure.kind is ErrorKind.BAD_REQUEST
                        assert reply.failure.retryable is False
                    assert [r.id for r in replies if isinstance(r, FailureFrame)] == [
                        "",
                        "t1",
                        "c1",
                        "",
                    ]
                    # The same socket still works.
                    await send(ws, ChatCall(id="ok", request=chat(), stream=False))
                    assert await receive(ws) == Accepted(id="ok")
                    assert isinstance(await receive(ws), Done)
                events = [e async for e in stream]
            assert isinstance(stream.result, Completion)
            assert text_of(events) == stream.result.text
        assert s.gateway.statistics().malformed_frames == 4


async def test_an_oversized_frame_closes_1009_and_other_sockets_go_on() -> None:
    with trio.fail_after(LIMIT):
        async with serving(max_frame_bytes=4096) as s, Client.connect(s.url, token=TOKEN) as c:
            async with raw(s.url) as ws:
                await send(ws, ChatCall(id="big", request=chat("x" * 10_000)))
                code, frames = await close_code(ws)
            assert code == 1009
            assert frames == []
            assert (await c.chat(chat())).text
            assert s.transport.attempts[-1].outcome == "completed"
            assert len(s.transport.attempts) == 1  # the big one never reached the provider


async def test_a_reused_id_is_refused_without_a_second_terminal_frame() -> None:
    with trio.fail_after(LIMIT):
        async with serving(slow(0.3)) as s, raw(s.url) as ws:
            await send(ws, ChatCall(id="a", request=chat()))
            assert await receive(ws) == Accepted(id="a")
            await send(ws, ChatCall(id="a", request=chat("again")))
            refusal = await receive(ws)
            assert isinstance(refusal, FailureFrame)
            assert refusal.id == ""
            assert "'a' is already in use" in refusal.failure.message
            await ws.send_message('{"type": "chat", "id": "a", "request": 7}')
            refusal = await receive(ws)
            assert isinstance(refusal, FailureFrame)
            assert refusal.id == ""
            frames = [await receive(ws) for _ in range(15)]  # 14 events and the done
            assert all(f.id == "a" for f in frames if isinstance(f, EventFrame | Done))
            assert isinstance(frames[-1], Done)
            assert len(s.transport.attempts) == 1


# --------------------------------------------------------------------------- cancellation


async def test_cancel_by_id_cancels_upstream_and_answers_cancelled() -> None:
    with trio.fail_after(LIMIT):
        async with serving(slow(30)) as s, raw(s.url) as ws:
            await send(ws, ChatCall(id="a", request=chat()))
            await send(ws, ChatCall(id="b", request=chat("other")))
            assert {await receive(ws), await receive(ws)} == {Accepted(id="a"), Accepted(id="b")}
            await until(lambda: len(s.transport.attempts) == 2)
            await send(ws, Cancel(id="a"))
            await send(ws, Cancel(id="nobody"))  # unknown ids are ignored
            reply = await receive(ws)
            assert isinstance(reply, FailureFrame)
            assert (reply.id, reply.failure.kind) == ("a", ErrorKind.CANCELLED)
            await until(lambda: s.transport.attempts[0].outcome is not None)
            attempts = {a.body.decode().count("other"): a for a in s.transport.attempts}
            assert attempts[0].outcome == "client_closed"
            assert attempts[1].outcome is None  # "b" still runs
            assert s.gateway.statistics().in_flight == 1


async def test_leaving_a_client_stream_cancels_the_request_upstream() -> None:
    transport = FakeTransport(seed=1, answer_tokens=400, token_interval=0.01)
    with trio.fail_after(LIMIT):
        async with serving(transport) as s, Client.connect(s.url, token=TOKEN) as c:
            async with c.stream(chat()) as stream:
                async for event in stream:
                    assert isinstance(event, TextDelta)
                    break
            await until(lambda: s.transport.attempts[0].outcome is not None)
            attempt = s.transport.attempts[0]
            assert attempt.outcome == "client_closed"
            assert attempt.tokens_emitted < 400
            await until(lambda: s.gateway.statistics().in_flight == 0)
            assert (await c.chat(chat("next"))).usage.output_tokens == 400  # socket still fine


async def test_per_client_concurrency_limit() -> None:
    with trio.fail_after(LIMIT):
        async with serving(slow(0.5), max_concurrent_per_client=2) as s:
            async with Client.connect(s.url, token=TOKEN) as c, trio.open_nursery() as nursery:
                assert c.welcome.max_concurrent == 2
                done: list[Completion] = []

                async def run(prompt: str) -> None:
                    done.append(await c.chat(chat(prompt)))

                nursery.start_soon(run, "one")
                nursery.start_soon(run, "two")
                await until(lambda: s.gateway.statistics().in_flight == 2)
                with pytest.raises(RequestFailed) as info:
                    await c.chat(chat("three"))
                failure = info.value.failure
                assert failure.kind is ErrorKind.QUEUE_FULL
                assert failure.retry_after == 1.0
                assert "at most 2 concurrent requests" in failure.message
                async with Client.connect(s.url, token=TOKEN) as other:  # a per-socket limit
                    assert (await other.chat(chat("elsewhere"))).text
            assert len(done) == 2
            assert len(s.transport.attempts) == 3


async def test_a_disconnect_cancels_upstream_and_usage_is_recorded() -> None:
    """The socket drops mid-stream (no cancel frame): the provider sees the client leave,
    and the runtime still records what the attempt consumed. (Anthropic's dialect reports
    input usage at the start of a stream, so there is usage to record before the end.)"""
    transport = FakeTransport(seed=1, answer_tokens=400, token_interval=0.01)
    request = ChatRequest(model="fake-claude", messages=[Message(role="user", content="hi there")])
    with trio.fail_after(LIMIT):
        async with serving(transport, config=ANTHROPIC_CONFIG) as s:
            async with raw(s.url) as ws:
                await send(ws, ChatCall(id="a", request=request))
                assert await receive(ws) == Accepted(id="a")
                for _ in range(5):
                    frame = await receive(ws)
                    assert isinstance(frame, EventFrame)
            # The block closed the socket without cancelling anything.
            await until(lambda: s.transport.attempts[0].outcome is not None)
            attempt = s.transport.attempts[0]
            assert attempt.outcome == "client_closed"
            assert 5 <= attempt.tokens_emitted < 400
            await until(lambda: s.gateway.statistics().in_flight == 0)
            await until(lambda: s.gateway.statistics().sessions == 0)
            metrics = s.runtime.metrics().connections["claude"]
            assert metrics.requests == 1
            assert metrics.failures == {ErrorKind.CANCELLED: 1}
            usage = metrics.models["fake-claude"]
            assert usage.input_tokens == usage.wasted_input_tokens == 2
            assert usage.output_tokens >= 1


# --------------------------------------------------------------------------- shutdown


async def test_graceful_shutdown_says_goodbye_drains_and_closes_1001() -> None:
    transport = FakeTransport(seed=1, answer_tokens=30, token_interval=0.01)
    with trio.fail_after(LIMIT):
        async with serving(transport) as s:
            async with Client.connect(s.url, token=TOKEN) as c, raw(s.url) as ws:
                async with c.stream(chat("in flight")) as stream, trio.open_nursery() as n:
                    first = await stream.__aiter__().__anext__()
                    assert isinstance(first, TextDelta)
                    n.start_soon(s.gateway.shutdown, 5.0)
                    goodbye = await receive(ws)
                    assert isinstance(goodbye, Goodbye)
                    assert goodbye.drain_s == 5.0
                    await send(ws, ChatCall(id="late", request=chat()))
                    refused = await receive(ws)
                    assert isinstance(refused, FailureFrame)
                    assert refused.id == "late"
                    assert refused.failure.kind is ErrorKind.CANCELLED
                    assert "shutting down" in refused.failure.message
                    await until(lambda: c.draining)
                    with pytest.raises(GatewayError, match="shutting down"):
                        await c.chat(chat("refused"))
                    rest = [e async for e in stream]
                result = stream.result
                assert isinstance(result, Completion)
                assert text_of([first, *rest]) == result.text
                assert result.usage.output_tokens == 30
                assert await close_code(ws) == (1001, [])
                with pytest.raises(GatewayError) as info:
                    await c.chat(chat("after"))
                assert info.value.code == 1001
            with pytest.raises(GatewayError):  # nobody listens any more
                async with Client.connect(s.url, token=TOKEN, connect_timeout=1):
                    pytest.fail("connected after shutdown")  # pragma: no cover
        assert [a.outcome for a in transport.attempts] == ["completed"]


async def test_shutdown_cancels_what_does_not_finish_within_the_drain_time() -> None:
    with trio.fail_after(LIMIT):
        async with serving(slow(30)) as s, raw(s.url) as ws:
            await send(ws, ChatCall(id="a", request=chat()))
            assert await receive(ws) == Accepted(id="a")
            await until(lambda: len(s.transport.attempts) == 1)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(s.gateway.shutdown, 0.2)
                code, frames = await close_code(ws)
            assert trio.current_time() - start >= 0.2
            assert code == 1001
            assert isinstance(frames[0], Goodbye)
            cancelled = frames[1]
            assert isinstance(cancelled, FailureFrame)
            assert (cancelled.id, cancelled.failure.kind) == ("a", ErrorKind.CANCELLED)
            assert cancelled.failure.message == "server shutting down"
            await until(lambda: s.transport.attempts[0].outcome is not None)
            assert s.transport.attempts[0].outcome == "client_closed"


# --------------------------------------------------------------------------- client errors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_connecting_where_nothing_listens_gives_advice() -> None:
    with trio.fail_after(LIMIT):
        with pytest.raises(GatewayError) as info:
            async with Client.connect(f"ws://127.0.0.1:{free_port()}", token=TOKEN):
                pytest.fail("connected to nothing")  # pragma: no cover
        message = str(info.value)
        assert "could not connect to the gateway at ws://127.0.0.1:" in message
        assert "switchboard serve" in message
        assert info.value.code is None


async def test_a_server_that_goes_away_ends_each_pending_request_with_a_connection_failure() -> (
    None
):
    with trio.fail_after(LIMIT):
        async with (
            open_runtime(loads_config(CONFIG), transport=slow(30)) as rt,
            trio.open_nursery() as outer,
        ):
            gateway_scope = trio.CancelScope()

            async def run_gateway(*, task_status: trio.TaskStatus[Gateway]) -> None:
                with gateway_scope:
                    async with trio.open_nursery() as nursery:
                        config = GatewayConfig(port=0, tokens=[Secret(TOKEN)])
                        task_status.started(await start_gateway(rt, nursery, config))

            gateway: Gateway = await outer.start(run_gateway)
            failures: list[Failure] = []
            async with Client.connect(gateway.url, token=TOKEN) as c:

                async def pending_chat(prompt: str) -> None:
                    with pytest.raises(RequestFailed) as info:
                        await c.chat(chat(prompt))
                    failures.append(info.value.failure)

                async def pending_stream() -> None:
                    async with c.stream(chat("streamed")) as stream:
                        assert [e async for e in stream] == []
                    assert isinstance(stream.result, Failure)
                    failures.append(stream.result)

                async with trio.open_nursery() as nursery:
                    for i in range(3):
                        nursery.start_soon(pending_chat, f"chat {i}")
                    nursery.start_soon(pending_stream)
                    await until(lambda: gateway.statistics().in_flight == 4)
                    gateway_scope.cancel()  # the server goes away
                assert c.closed
                with pytest.raises(GatewayError, match="closed"):
                    await c.chat(chat("after"))
        assert len(failures) == 4
        assert {f.kind for f in failures} == {ErrorKind.CONNECTION}
        assert all(f.retryable for f in failures)
        assert len({f.request_id for f in failures}) == 4
        assert all("gateway connection closed" in f.message for f in failures)


async def test_the_callers_own_exceptions_pass_through_the_client_unchanged() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s:

            async def own_timeout() -> None:
                async with Client.connect(s.url, token=TOKEN):
                    with trio.fail_after(0.01):
                        await trio.sleep(1)

            async def own_error() -> None:
                async with Client.connect(s.url, token=TOKEN):
                    raise KeyError("mine")

            with pytest.raises(trio.TooSlowError):
                await own_timeout()
            with pytest.raises(KeyError):
                await own_error()


def test_every_trio_websocket_exception_is_translated() -> None:
    """The one translation point covers every exception class trio-websocket exports."""
    public = {
        value
        for name in dir(tw)
        if isinstance(value := getattr(tw, name), type) and issubclass(value, BaseException)
    }
    samples: dict[type[BaseException], BaseException] = {
        tw.ConnectionClosed: tw.ConnectionClosed(tw.CloseReason(4401, "unauthorized")),
        tw.ConnectionRejected: tw.ConnectionRejected(503, (), b"server shutting down"),
        tw.ConnectionTimeout: tw.ConnectionTimeout(),
        tw.DisconnectionTimeout: tw.DisconnectionTimeout(),
        tw.HandshakeError: tw.HandshakeError(),
    }
    assert public == set(samples)
    for cls, exc in samples.items():
        error = translate_error(exc, "ws://h:1")
        assert isinstance(error, GatewayError), cls
        assert "ws://h:1" in str(error) or error.code == 4401
    closed = translate_error(samples[tw.ConnectionClosed], "ws://h:1")
    assert closed is not None
    assert closed.code == 4401
    rejected = str(translate_error(samples[tw.ConnectionRejected], "ws://h:1"))
    assert "HTTP 503: server shutting down" in rejected
    refused = tw.HandshakeError()
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert "Connection refused" in str(translate_error(refused, "ws://h:1"))
    assert translate_error(ValueError("not ours"), "ws://h:1") is None
