"""Backpressure end to end, over real loopback sockets: a slow reader slows the provider
stream (the fake's attempt log shows the provider was held back for as long as the reader
took) without the gateway's memory growing, and a reader that stops altogether is closed
with 4429 - after whole frames only - and its request is cancelled upstream.

The reading client shrinks its socket's receive buffer before connecting, so that the
kernel's buffers (megabytes on loopback by default) do not hide the gateway's behaviour
behind a long stream; everything else is the real stack.
"""

from __future__ import annotations

import socket
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_websocket as tw

from actors.testing import FakeTransport
from protocol._frames import (
    SUBPROTOCOL_JSON,
    Accepted,
    ChatCall,
    Done,
    EventFrame,
    FailureFrame,
    Hello,
    ServerFrame,
    Welcome,
    decode_server_frame,
    encode_frame,
)
from protocol._messages import TextDelta
from tests.integration.test_gateway import LIMIT, TOKEN, chat, serving, until

RECEIVE_BUFFER = 4096


@asynccontextmanager
async def narrow_client(port: int) -> AsyncIterator[tw.WebSocketConnection]:
    """A WebSocket whose TCP receive buffer is small, authenticated and welcomed."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    try:
        async with trio.open_nursery() as nursery:
            ws = await tw.wrap_client_stream(
                nursery,
                stream,
                f"127.0.0.1:{port}",
                "/",
                subprotocols=[SUBPROTOCOL_JSON],
                extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
            )
            try:
                await ws.send_message(encode_frame(Hello()))
                assert isinstance(decode_server_frame(await ws.get_message()), Welcome)
                yield ws
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()


async def receive(ws: tw.WebSocketConnection) -> ServerFrame:
    return decode_server_frame(await ws.get_message())


async def test_a_slow_reader_slows_the_provider_and_memory_stays_bounded() -> None:
    tokens = 2000
    slow_frames = 250
    transport = FakeTransport(seed=1, answer_tokens=tokens)
    with trio.fail_after(LIMIT * 2):
        async with serving(transport) as s:
            reference = await s.runtime.chat(chat("long"))
            async with narrow_client(s.gateway.port or 0) as ws:
                await ws.send_message(encode_frame(ChatCall(id="a", request=chat("long"))))
                assert await receive(ws) == Accepted(id="a")
                texts: list[str] = []
                tracemalloc.start()
                try:
                    start = trio.current_time()
                    for index in range(slow_frames):
                        frame = await receive(ws)
                        assert isinstance(frame, EventFrame)
                        assert isinstance(frame.event, TextDelta)
                        texts.append(frame.event.text)
                        if index == 50:
                            baseline, _ = tracemalloc.get_traced_memory()
                        await trio.sleep(0.002)
                    slow_phase = trio.current_time() - start
                    grown = tracemalloc.get_traced_memory()[0] - baseline
                finally:
                    tracemalloc.stop()
                # The provider is held back: a fast provider would have finished the whole
                # answer long ago, but it may only run ahead of the reader by the buffers.
                attempt = s.transport.attempts[-1]
                assert attempt.outcome is None
                # Unbounded buffering would hold the ~1700 frames the reader has not read
                # (hundreds of kilobytes of frames and event objects); bounded buffers do not
                # grow while the reader crawls.
                assert grown < 100_000, grown
                while True:
                    frame = await receive(ws)
                    if isinstance(frame, Done):
                        break
                    assert isinstance(frame, EventFrame)
                    if isinstance(frame.event, TextDelta):
                        texts.append(frame.event.text)
            assert "".join(texts) == frame.result.text == reference.text
            assert frame.result.usage == reference.usage
            assert frame.result.usage.output_tokens == tokens
            attempt = s.transport.attempts[-1]
            assert attempt.outcome == "completed"
            assert attempt.duration is not None
            assert attempt.duration >= slow_phase  # the provider stream took as long


async def test_a_reader_that_stops_is_closed_4429_and_its_request_cancelled() -> None:
    tokens = 5000
    # A pause between tokens: the in-memory body then waits like a socket would, so that
    # cancelling the reader stops it at once (without one, the actor's bounded discard of
    # an abandoned body can read the rest of an in-memory body without ever waiting).
    transport = FakeTransport(seed=1, answer_tokens=tokens, token_interval=0.0005)
    with trio.fail_after(LIMIT):
        async with serving(transport, slow_client_timeout_s=0.3) as s:
            async with narrow_client(s.gateway.port or 0) as ws:
                await ws.send_message(encode_frame(ChatCall(id="a", request=chat("long"))))
                assert await receive(ws) == Accepted(id="a")
                for _ in range(10):
                    assert isinstance(await receive(ws), EventFrame)
                stopped = trio.current_time()
                await until(lambda: s.gateway.statistics().slow_closed == 1)
                assert trio.current_time() - stopped >= 0.3
                # Reading again: whole frames only (no half-written one), then the code.
                frames: list[ServerFrame] = []
                with pytest.raises(tw.ConnectionClosed) as info:
                    while True:
                        frames.append(await receive(ws))
                assert info.value.reason is not None
                assert info.value.reason.code == 4429
                assert "did not read" in (info.value.reason.reason or "")
            assert frames
            assert all(isinstance(f, EventFrame) for f in frames)
            assert not any(isinstance(f, Done | FailureFrame) for f in frames)
            await until(lambda: s.transport.attempts[-1].outcome is not None)
            attempt = s.transport.attempts[-1]
            assert attempt.outcome == "client_closed"
            assert attempt.tokens_emitted < tokens
            await until(lambda: s.gateway.statistics().in_flight == 0)
            assert s.gateway.statistics().sessions == 0
