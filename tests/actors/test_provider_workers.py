"""The provider actor's long-lived workers: a request costs no task of its own, workers are
hired as concurrency grows up to ``max_in_flight``, and `Connection.override` resizes them
at once in both directions. Structure and counts only (the cost is `bench/overhead.py`'s)."""

from __future__ import annotations

import sys

import msgspec
import pytest
import trio
import trio.testing

from actors._mailbox import Interrupted, Mailbox
from actors.testing._faults import FaultPlan, Latency
from protocol._config import RateLimitConfig
from protocol._errors import ErrorKind
from protocol._messages import Completion, Failure
from tests.supervisors.test_runtime_hot_path import spawns

from .test_provider import chat_request, config, connect, serving, stream_all


async def test_requests_start_no_task_of_their_own(autojump_clock: trio.testing.MockClock) -> None:
    conn, _ = connect(config("openai"))
    async with serving(conn):
        await conn.chat(chat_request())  # warm: the first request hires the idle worker
        with spawns() as spawned:
            for _ in range(5):
                assert isinstance(await conn.chat(chat_request()), Completion)
                _, result = await stream_all(conn, chat_request())
                assert isinstance(result, Completion)
        assert spawned.names == []


async def test_workers_grow_with_concurrency_up_to_max_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn, _ = connect(config("openai"), FaultPlan.always(Latency(seconds=10.0)))
    conn.max_in_flight = 3
    async with serving(conn) as nursery:
        with spawns() as spawned:
            for _ in range(5):
                nursery.start_soon(conn.chat, chat_request())
            await trio.testing.wait_all_tasks_blocked()
            stats = conn.statistics().mailbox
        assert (stats.in_flight, stats.queued) == (3, 2)
        workers = [n for n in spawned.names if n.endswith("ProviderActor._work")]
        assert len(workers) == 2  # with the actor's own task: three, one per slot


async def test_override_up_takes_queued_requests_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = config("openai", rate_limit=RateLimitConfig(concurrent_requests=1))
    conn, _ = connect(cfg, FaultPlan.always(Latency(seconds=10.0)))
    async with serving(conn) as nursery:
        for _ in range(3):
            nursery.start_soon(conn.chat, chat_request())
        await trio.testing.wait_all_tasks_blocked()
        assert conn.statistics().mailbox.in_flight == 1
        conn.override(
            msgspec.structs.replace(cfg, rate_limit=RateLimitConfig(concurrent_requests=3))
        )
        await trio.testing.wait_all_tasks_blocked()
        stats = conn.statistics().mailbox
        assert (stats.in_flight, stats.queued) == (3, 0)
        assert trio.current_time() == 0.0


async def test_override_down_retires_idle_workers_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = config("openai", rate_limit=RateLimitConfig(concurrent_requests=4))
    conn, _ = connect(cfg, FaultPlan.always(Latency(seconds=10.0)))
    async with serving(conn) as nursery:
        async with trio.open_nursery() as burst:
            for _ in range(4):
                burst.start_soon(conn.chat, chat_request())
        # Four workers now wait idle, each holding a slot.
        conn.override(
            msgspec.structs.replace(cfg, rate_limit=RateLimitConfig(concurrent_requests=1))
        )
        for _ in range(3):
            nursery.start_soon(conn.chat, chat_request())
        await trio.testing.wait_all_tasks_blocked()
        stats = conn.statistics().mailbox
        assert (stats.in_flight, stats.queued) == (1, 2)


async def test_interrupt_getters_wakes_only_tasks_already_waiting() -> None:
    mailbox: Mailbox[str, str, str] = Mailbox(4)
    outcomes: list[str] = []

    async def getter() -> None:
        try:
            outcomes.append((await mailbox.get()).request)
        except Interrupted:
            outcomes.append("interrupted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        assert mailbox.interrupt_getters(5) == 2
    assert outcomes == ["interrupted", "interrupted"]
    assert mailbox.interrupt_getters(1) == 0  # nobody waits: nothing is sent or queued
    assert mailbox.statistics().queued == 0


class _ScopeCount:
    """Counts cancel scopes entered by code of `actors._provider` (any part of a request:
    the caller's side and the actor's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = trio.CancelScope.__enter__

        def enter(scope: trio.CancelScope) -> trio.CancelScope:
            if sys._getframe(1).f_globals.get("__name__") == "actors._provider":
                self.count += 1
            return real(scope)

        monkeypatch.setattr(trio.CancelScope, "__enter__", enter)


async def test_a_request_taken_at_once_costs_one_cancel_scope(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _ = connect(config("openai"))
    async with serving(conn):
        await conn.chat(chat_request())  # warm: a worker waits idle from now on
        scopes = _ScopeCount(monkeypatch)
        assert isinstance(await conn.chat(chat_request()), Completion)
        assert scopes.count == 1  # the attempt's, bound to the envelope
        _, result = await stream_all(conn, chat_request())
        assert isinstance(result, Completion)
        assert scopes.count == 2


async def test_a_queued_request_is_still_shed_by_its_caller_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn, _ = connect(config("openai"), FaultPlan.always(Latency(seconds=20.0)))
    conn.max_in_flight = 1
    async with serving(conn) as nursery:
        nursery.start_soon(conn.chat, chat_request())
        await trio.testing.wait_all_tasks_blocked()
        chat = await conn.chat(chat_request(), timeout=5.0)
        assert trio.current_time() == 5.0
        async with conn.stream(chat_request(), timeout=5.0) as s:
            events = [e async for e in s]
        assert trio.current_time() == 10.0
    assert isinstance(chat, Failure)
    assert chat.kind is ErrorKind.DEADLINE
    assert events == []
    result = s.result
    assert isinstance(result, Failure)
    assert result.kind is ErrorKind.DEADLINE
