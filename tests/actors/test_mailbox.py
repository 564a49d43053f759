"""Mailbox, envelope and ask/ask_stream: bounded, exactly-once, cancellable."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from actors._mailbox import Envelope, Mailbox, MailboxClosed, QueueFull, ask, ask_stream


async def test_envelope_resolves_exactly_once() -> None:
    env: Envelope[str, str, str] = Envelope("req")
    assert env.resolve("first") is True
    assert env.resolve("second") is False
    assert await env.wait() == "first"
    assert env.result_nowait() == "first"


async def test_reject_policy_raises_queue_full_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Mailbox[int, int, None] = Mailbox(2, when_full="reject")
    await box.put(Envelope(1))
    await box.put(Envelope(2))
    start = trio.current_time()
    with pytest.raises(QueueFull) as info:
        await box.put(Envelope(3))
    assert trio.current_time() == start
    assert info.value.retry_after > 0
    stats = box.statistics()
    assert (stats.queued, stats.accepted, stats.rejected, stats.peak_queued) == (2, 2, 1, 2)


async def test_wait_policy_waits_until_deadline_then_rejects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Mailbox[int, int, None] = Mailbox(1, when_full="wait")
    await box.put(Envelope(1))
    start = trio.current_time()
    with pytest.raises(QueueFull):
        await box.put(Envelope(2, deadline=start + 5))
    assert trio.current_time() == start + 5
    assert box.statistics().rejected == 1


async def test_wait_policy_is_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    box: Mailbox[int, int, None] = Mailbox(1)
    await box.put(Envelope(1))
    admitted_at: list[float] = []

    async def producer() -> None:
        await box.put(Envelope(2))
        admitted_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.sleep(3)
        assert box.statistics().waiting_senders == 1
        assert (await box.get()).request == 1
    assert admitted_at == [3.0]
    assert (await box.get()).request == 2


async def test_fifo_order_and_close() -> None:
    box: Mailbox[int, int, None] = Mailbox(4)
    for i in range(3):
        box.put_nowait(Envelope(i))
    box.close()
    assert [(await box.get()).request for _ in range(3)] == [0, 1, 2]
    with pytest.raises(MailboxClosed):
        await box.get()
    with pytest.raises(MailboxClosed):
        box.put_nowait(Envelope(9))


async def test_ask_round_trip_and_in_flight_statistics() -> None:
    box: Mailbox[int, int, None] = Mailbox(4)

    async def actor() -> None:
        env = await box.get()
        box.started()
        assert box.statistics().in_flight == 1
        env.resolve(env.request * 2)
        box.finished(0.5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        assert await ask(box, 21) == 42
    stats = box.statistics()
    assert (stats.in_flight, stats.peak_in_flight) == (0, 1)


async def test_cancelled_ask_abandons_and_cancels_bound_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Mailbox[int, int, None] = Mailbox(4)
    work_cancelled_at: list[float] = []

    async def actor() -> None:
        env = await box.get()
        with trio.CancelScope() as scope:
            env.bind_scope(scope)
            await trio.sleep(100)
        work_cancelled_at.append(trio.current_time())
        assert env.abandoned

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        with trio.move_on_after(2):
            await ask(box, 1)
    assert work_cancelled_at == [2.0]


async def test_bind_after_abandon_cancels_immediately() -> None:
    env: Envelope[int, int, None] = Envelope(1)
    env.abandon()
    with trio.CancelScope() as scope:
        env.bind_scope(scope)
        await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_ask_stream_events_then_result() -> None:
    box: Mailbox[str, str, str] = Mailbox(4)

    async def actor() -> None:
        env = await box.get()
        assert env.stream is not None
        for word in env.request.split():
            await env.stream.send(word)
        env.resolve("done")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        async with ask_stream(box, "a b c", buffer=1) as (events, env):
            got = [ev async for ev in events]
            assert await env.wait() == "done"
    assert got == ["a", "b", "c"]


async def test_leaving_ask_stream_early_abandons(autojump_clock: trio.testing.MockClock) -> None:
    box: Mailbox[str, str, str] = Mailbox(4)
    producer_saw: list[str] = []

    async def actor() -> None:
        env = await box.get()
        assert env.stream is not None
        try:
            for i in range(1000):
                await env.stream.send(str(i))
        except trio.BrokenResourceError:
            producer_saw.append("broken")
        assert env.abandoned
        assert env.resolve("late") is True  # nobody reads it; harmless

    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor)
        async with ask_stream(box, "x", buffer=2) as (events, _env):
            async for ev in events:
                if ev == "3":
                    break
    assert producer_saw == ["broken"]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Mailbox(0)


async def test_default_deadline_is_infinite() -> None:
    assert Envelope(1).deadline == math.inf
