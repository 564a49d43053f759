"""The gateway session's send path, by its structure (never by time: `bench/gateway.py`
measures the cost), on an in-memory WebSocket: `send` queues without a lock or a checkpoint
while there is room and waits when the queue is full (backpressure); one writer writes
everything queued per wake-up - one `Batch` message to a client that offered ``batch``, one
message per frame to any other - in order; each message is written whole even when the
writer is cancelled, and none is started after; a close writes what is queued first, except
for a slow consumer, whose frames are dropped; a write blocked for the slow-client timeout
closes the socket with 4429.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio_websocket as tw
from trio.testing import MockClock, assert_checkpoints, assert_no_checkpoints

from actors._gateway import _WRITE_BYTES, Gateway, GatewayBackend, _Closed, _Session
from protocol._config import GatewayConfig
from protocol._frames import (
    FEATURE_BATCH,
    Accepted,
    Batch,
    BatchItem,
    Done,
    EventFrame,
    Hello,
    decode_server_frame,
    encode_frame,
    frame_bytes,
)
from protocol._messages import Completion, TextDelta


class MemoryWebSocket:
    """What `_Session` uses of a trio-websocket connection, in memory: each message sent
    is recorded; while ``blocked`` is set, a write waits (as on a full socket) until it is
    cleared or the socket is closed."""

    remote = ("127.0.0.1", 4242)

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.writes_started = 0
        self.closed: tuple[int, str | None] | None = None
        self.blocked = False
        self._unblocked = trio.Event()

    async def send_message(self, message: str | bytes) -> None:
        if self.closed is not None:
            raise tw.ConnectionClosed(None)
        self.writes_started += 1
        await trio.lowlevel.checkpoint()
        if self.blocked:
            await self._unblocked.wait()
            if self.closed is not None:
                raise tw.ConnectionClosed(None)
        self.messages.append(message)

    def unblock(self) -> None:
        self.blocked = False
        self._unblocked.set()
        self._unblocked = trio.Event()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        try:
            await trio.lowlevel.checkpoint()
        finally:  # also when cancelled, like trio-websocket: the TCP stream is closed
            self.closed = (code, reason)
            self._unblocked.set()  # which ends a blocked write

    def frames(self) -> list[Any]:
        return [decode_server_frame(m) for m in self.messages]


def new_session(*, batching: bool, **config: Any) -> tuple[_Session, MemoryWebSocket]:
    gateway = Gateway(cast(GatewayBackend, object()), GatewayConfig(**config))
    ws = MemoryWebSocket()
    session = _Session(gateway, cast(tw.WebSocketConnection, ws), "json")
    session.greet(Hello(features=[FEATURE_BATCH] if batching else []))
    return session, ws


@asynccontextmanager
async def writing(session: _Session) -> AsyncIterator[trio.Nursery]:
    """The session's writer (and watchdog) running, as in a session's nursery."""
    async with trio.open_nursery() as nursery:
        await nursery.start(session.write_loop)
        nursery.start_soon(session.watch_writes)
        yield nursery
        nursery.cancel_scope.cancel()


async def later(seconds: float, action: Callable[[], None]) -> None:
    await trio.sleep(seconds)
    action()


async def send_when(ready: trio.Event, session: _Session, frame: BatchItem) -> None:
    await ready.wait()
    await session.send(frame)


def flat(frames: list[Any]) -> list[Any]:
    """The frames of a client's messages, batches unpacked."""
    return [f for b in frames for f in (b.frames if isinstance(b, Batch) else [b])]


def event(rid: str, text: str) -> EventFrame:
    return EventFrame(id=rid, event=TextDelta(text=text))


def test_only_a_client_that_offers_batch_gets_batches() -> None:
    assert new_session(batching=True)[0].batching
    assert not new_session(batching=False)[0].batching
    session, _ = new_session(batching=False)
    session.greet(Hello(features=["something-new", FEATURE_BATCH]))
    assert session.batching


async def test_send_queues_without_a_lock_or_a_checkpoint_while_there_is_room() -> None:
    session, ws = new_session(batching=True)
    with assert_no_checkpoints():
        await session.send(Accepted(id="a"))
        for i in range(20):
            await session.send(event("a", str(i)))
    assert ws.messages == []  # only the writer writes


@pytest.mark.parametrize("batching", [True, False])
async def test_the_writer_writes_all_that_is_queued_per_wake_up_in_order(
    batching: bool, autojump_clock: MockClock
) -> None:
    session, ws = new_session(batching=batching)
    sent: list[BatchItem] = [Accepted(id="a"), Accepted(id="b")]
    sent += [event(rid, f"{rid}{i}") for i in range(5) for rid in "ab"]
    sent += [Done(id="a", result=Completion(text="a0a1a2a3a4"))]
    for frame in sent:
        await session.send(frame)
    async with writing(session):
        await trio.sleep(1)
        assert ws.writes_started == (1 if batching else len(sent))
        if batching:
            assert ws.frames() == [Batch(frames=sent)]
        else:
            assert ws.frames() == sent
            assert ws.messages == [encode_frame(frame) for frame in sent]
        # The next frame, queued alone, goes as itself (no batch of one).
        await session.send(event("b", "more"))
        await trio.sleep(1)
        assert ws.frames()[-1] == event("b", "more")


async def test_what_tasks_ready_with_the_writer_queue_goes_in_the_same_write(
    autojump_clock: MockClock,
) -> None:
    """A frame wakes the writer; a task woken at the same moment (as a stream's next event
    makes its request task ready) queues its frame before the writer takes the queue, so
    both go in one write, whichever of the two trio runs first."""
    for _ in range(20):  # trio runs the tasks of a round in a random order
        session, ws = new_session(batching=True)
        ready = trio.Event()
        async with writing(session) as nursery:
            nursery.start_soon(send_when, ready, session, event("b", "2"))
            await trio.sleep(1)  # the writer is parked, the second task waits
            await session.send(event("a", "1"))
            ready.set()
            await trio.sleep(1)
        assert ws.frames() == [Batch(frames=[event("a", "1"), event("b", "2")])]


async def test_a_batch_holds_at_most_the_write_bound(autojump_clock: MockClock) -> None:
    session, ws = new_session(batching=True)
    text = "x" * 1000
    sent = [event("a", text) for _ in range(3 * _WRITE_BYTES // 1000)]
    for frame in sent:
        session._queue.append(frame_bytes(frame))  # more than `send` would allow
    async with writing(session):
        await trio.sleep(1)
    assert len(ws.messages) >= 3
    assert all(len(m) <= _WRITE_BYTES + 100 for m in ws.messages)
    assert flat(ws.frames()) == sent


async def test_a_full_queue_makes_send_wait_until_the_writer_takes_it(
    autojump_clock: MockClock,
) -> None:
    session, ws = new_session(batching=True)
    ws.blocked = True
    big = event("a", "x" * (_WRITE_BYTES // 4))
    async with writing(session):
        await session.send(big)
        await trio.sleep(1)  # the writer took it and is blocked writing it
        assert ws.writes_started == 1
        for _ in range(4):
            await session.send(big)  # the queue fills up to the bound
        with trio.move_on_after(5) as waited, assert_checkpoints():
            await session.send(big)
        assert waited.cancelled_caught  # backpressure: no room while the writer is blocked
        assert len(ws.messages) == 0
        ws.unblock()
        with trio.fail_after(1):
            await session.send(big)  # the writer took the queue: room again
        await trio.sleep(1)
        assert flat(ws.frames()) == [big] * (1 + 4 + 1)


async def test_a_write_is_whole_even_when_the_writer_is_cancelled_and_the_last(
    autojump_clock: MockClock,
) -> None:
    session, ws = new_session(batching=False)
    ws.blocked = True
    await session.send(event("a", "whole"))
    await session.send(event("a", "not written"))  # taken with the first, one message each
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(session.write_loop)
            await trio.sleep(1)
            assert ws.writes_started == 1
            outer.start_soon(later, 5, ws.unblock)
            nursery.cancel_scope.cancel()  # the write is shielded: the nursery waits for it
        assert trio.current_time() >= 6
    # The blocked message was finished; the next one was not started once cancelled (no
    # watchdog would end it if it blocked).
    assert ws.frames() == [event("a", "whole")]
    assert ws.writes_started == 1


async def test_a_close_writes_what_is_queued_first(autojump_clock: MockClock) -> None:
    session, ws = new_session(batching=False)
    async with writing(session):
        await session.send(Accepted(id="a"))
        await session.send(Done(id="a", result=Completion(text="")))
        await session.close(1001, "server shutting down")
        assert ws.frames() == [Accepted(id="a"), Done(id="a", result=Completion(text=""))]
        assert ws.closed == (1001, "server shutting down")
        with pytest.raises(_Closed):
            await session.send(Accepted(id="b"))


async def test_a_slow_consumer_is_closed_4429_and_its_queue_dropped(
    autojump_clock: MockClock,
) -> None:
    session, ws = new_session(batching=False, slow_client_timeout_s=3.0)
    ws.blocked = True
    async with writing(session):
        await session.send(event("a", "1"))
        await trio.sleep(0.5)  # the writer is blocked writing it
        await session.send(event("a", "2"))
        await session.send(event("a", "3"))
        start = trio.current_time()
        while ws.closed is None:  # noqa: ASYNC110 - the watchdog closes it
            await trio.sleep(0.1)
        assert trio.current_time() - start >= 2.5
        assert ws.closed[0] == 4429
        assert session.gateway.statistics().slow_closed == 1
        with pytest.raises(_Closed):
            await session.send(event("a", "4"))
    # The blocked write was ended by the close, and nothing queued after it was written.
    assert ws.messages == []
    assert ws.writes_started == 1
