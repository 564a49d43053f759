"""Shared state end to end in virtual time: several "processes" (a `SharedState` each, with its
own connection and fake provider) share one in-process `MemoryStore`. Exact times: the store
reads the trio clock. The same code runs against Redis in tests/integration."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from actors._breaker import BreakerState
from actors._provider import Connection
from actors._shared_limits import TakeRequest
from actors._shared_state import (
    IDLE_SYNC_S,
    RETRY_S,
    SYNC_S,
    MemoryStore,
    SharedAdmission,
    SharedState,
)
from actors.testing._faults import FaultPlan, Latency, RateLimited, ServerError
from actors.testing._transport import FakeTransport
from protocol._config import BreakerConfig, ConnectionConfig, RateLimitConfig, RetryConfig
from protocol._errors import ErrorKind
from protocol._messages import Completion, Failure

from .test_provider import EPOCH, FixedRandom, chat_request, config, serving

S = BreakerState


class Process:
    """One process: its shared state service, connection and fake provider."""

    def __init__(self, shared: SharedState, conn: Connection, fake: FakeTransport) -> None:
        self.shared = shared
        self.conn = conn
        self.fake = fake

    async def chat(self, text: str = "hi", **fields: Any) -> Completion | Failure:
        return await self.conn.chat(chat_request(text, **fields))


@asynccontextmanager
async def process(
    store: MemoryStore,
    cfg: ConnectionConfig,
    plan: FaultPlan | None = None,
    *,
    pid: str,
    timeout: float = 0.25,
) -> AsyncIterator[Process]:
    shared = SharedState(
        store, pid=pid, timeout=timeout, wall_clock=lambda: EPOCH + trio.current_time()
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(shared.run)
        link = shared.link(cfg.name)
        fake = FakeTransport(plan=plan, seed=1, wall_start=EPOCH)
        conn = Connection(
            cfg,
            transport=fake,
            rng=FixedRandom(),
            wall_clock=lambda: EPOCH + trio.current_time(),
            shared=link,
        )
        link.attach(conn)
        async with serving(conn):
            yield Process(shared, conn, fake)
        await shared.aclose()
        nursery.cancel_scope.cancel()


def arrivals(*processes: Process) -> list[float]:
    return sorted(a.arrived_at for p in processes for a in p.fake.attempts)


async def burst(p: Process, n: int, results: list[Completion | Failure]) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(n):

            async def one(i: int = i) -> None:
                results.append(await p.chat(f"request {i}"))

            nursery.start_soon(one)


def limited(**limits: int) -> ConnectionConfig:
    return config(
        rate_limit=RateLimitConfig(**limits), retry=RetryConfig(max_attempts=1), timeout=120.0
    )


# ---------------------------------------------------------------------------- limits


async def test_two_processes_share_one_request_bucket(autojump_clock: Any) -> None:
    store = MemoryStore()
    cfg = limited(requests_per_minute=6)
    results: list[Completion | Failure] = []
    with trio.fail_after(200):
        async with (
            process(store, cfg, pid="a") as a,
            process(store, cfg, pid="b") as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(burst, a, 6, results)
            nursery.start_soon(burst, b, 6, results)
    assert all(isinstance(r, Completion) for r in results)
    # One bucket for both: 6 at once, then one every 10 s (alone, each would send 6 at t=0).
    assert arrivals(a, b) == [0.0] * 6 + [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]


async def test_without_shared_state_each_process_spends_the_whole_budget(
    autojump_clock: Any,
) -> None:
    """The control for the test above: two connections with the same limits and no link."""
    cfg = limited(requests_per_minute=6)
    fakes = [FakeTransport(seed=1, wall_start=EPOCH) for _ in range(2)]
    conns = [Connection(cfg, transport=f, rng=FixedRandom()) for f in fakes]
    with trio.fail_after(200):
        async with serving(conns[0]), serving(conns[1]), trio.open_nursery() as nursery:
            for conn in conns:
                for i in range(6):
                    nursery.start_soon(conn.chat, chat_request(f"request {i}"))
    assert sorted(a.arrived_at for f in fakes for a in f.attempts) == [0.0] * 12


async def test_tokens_are_reserved_then_settled_with_the_real_usage(autojump_clock: Any) -> None:
    store = MemoryStore()
    # 600 TPM: 10 tokens a second. Each request reserves 1 (prompt) + 100 (max_tokens) and
    # uses 1 + 12 (the fake's answer): the refund comes back to the shared bucket.
    cfg = limited(tokens_per_minute=600)
    with trio.fail_after(200):
        async with process(store, cfg, pid="a") as a, process(store, cfg, pid="b") as b:
            for p in (a, b, a, b, a):
                assert isinstance(await p.chat("hi", max_tokens=100), Completion)
            await trio.sleep(IDLE_SYNC_S)
            level = store.model.connections["c"].tokens
            assert level is not None
            level.refill(trio.current_time())
            # 5 requests used 13 tokens each; the rest was given back (the leases too); the
            # bucket refilled 10 tokens a second since.
            assert trio.current_time() == IDLE_SYNC_S
            assert level.level == 600 - 5 * 13 + 10 * IDLE_SYNC_S


async def test_leases_spare_the_store_a_call_per_request(autojump_clock: Any) -> None:
    store = MemoryStore()
    cfg = limited(requests_per_minute=60_000, tokens_per_minute=10_000_000)
    takes = 0
    original = store.model.take

    def counting(name: str, req: TakeRequest, now: float) -> Any:
        nonlocal takes
        takes += 1
        return original(name, req, now)

    store.model.take = counting  # type: ignore[method-assign]
    with trio.fail_after(200):
        async with process(store, cfg, pid="a") as a:
            for _ in range(200):
                assert isinstance(await a.chat(), Completion)
                await trio.sleep(0.001)  # 1000 requests a second
    assert takes <= 10


async def test_a_429_in_one_process_parks_the_others(autojump_clock: Any) -> None:
    store = MemoryStore()
    cfg = limited(requests_per_minute=600)
    plan = FaultPlan.first(1, RateLimited(retry_after=7.0))
    with trio.fail_after(200):
        async with process(store, cfg, plan, pid="a") as a, process(store, cfg, pid="b") as b:
            refused = await a.chat()
            assert isinstance(refused, Failure)
            assert refused.kind is ErrorKind.RATE_LIMITED
            await trio.sleep(SYNC_S)  # b learns it at its next sync (a synced at once)
            assert isinstance(await b.chat(), Completion)
    assert arrivals(b) == [7.0]


async def test_concurrency_is_counted_across_processes(autojump_clock: Any) -> None:
    store = MemoryStore()
    cfg = limited(concurrent_requests=1)
    slow = FaultPlan.always(Latency(seconds=3.0))
    with trio.fail_after(200):
        async with (
            process(store, cfg, slow, pid="a") as a,
            process(store, cfg, slow, pid="b") as b,
            trio.open_nursery() as nursery,
        ):
            for p in (a, b, a, b):
                nursery.start_soon(p.chat)
    spans = sorted(
        (x.arrived_at, x.ended_at)
        for p in (a, b)
        for x in p.fake.attempts
        if x.ended_at is not None
    )
    assert len(spans) == 4
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # never two at once


async def test_waiting_past_the_deadline_fails_with_deadline_and_a_retry_after(
    autojump_clock: Any,
) -> None:
    store = MemoryStore()
    cfg = limited(requests_per_minute=6)
    with trio.fail_after(200):
        async with process(store, cfg, pid="a") as a, process(store, cfg, pid="b") as b:
            for _ in range(6):
                assert isinstance(await a.chat(), Completion)
            late = await b.chat(timeout=4.0)
    assert isinstance(late, Failure)
    assert late.kind is ErrorKind.DEADLINE
    assert late.retry_after == pytest.approx(6.0)
    assert trio.current_time() >= 4.0
    assert arrivals(b) == []


async def test_a_new_admission_after_override_is_shared_too(autojump_clock: Any) -> None:
    store = MemoryStore()
    with trio.fail_after(60):
        async with process(store, limited(requests_per_minute=6), pid="a") as a:
            a.conn.override(limited(requests_per_minute=12))
            assert isinstance(a.conn.admission, SharedAdmission)
            assert a.conn.admission.limiter.config.requests_per_minute == 12


# ---------------------------------------------------------------------------- breakers


def breaking(**fields: Any) -> ConnectionConfig:
    return config(
        retry=RetryConfig(max_attempts=1),
        breaker=BreakerConfig(window_size=4, minimum_calls=2, failure_rate=50.0, open_s=5.0),
        **fields,
    )


async def test_a_breaker_opened_in_one_process_is_seen_by_the_others(
    autojump_clock: Any,
) -> None:
    store = MemoryStore()
    failing = FaultPlan.always(ServerError(status=503))
    with trio.fail_after(200):
        async with (
            process(store, breaking(), failing, pid="a") as a,
            process(store, breaking(), pid="b") as b,
        ):
            await trio.sleep(0.5)
            for _ in range(2):
                assert isinstance(await a.chat(), Failure)
            opened_at = trio.current_time()
            assert a.conn.breaker.state is S.OPEN
            await trio.sleep(IDLE_SYNC_S + SYNC_S)  # b, idle, learns it at its next sync
            assert b.conn.breaker.poll(trio.current_time()) is S.OPEN
            assert b.conn.breaker.open_until == pytest.approx(opened_at + 5.0)
            refused = await b.chat()
            assert isinstance(refused, Failure)
            assert refused.kind is ErrorKind.CIRCUIT_OPEN
            assert arrivals(b) == []
            assert b.conn.metrics.snapshot().breaker_transitions == {"closed->open": 1}
            # After the shared end b probes on its own (its provider is healthy): closed,
            # and a follows the close.
            await trio.sleep_until(opened_at + 5.0)
            assert isinstance(await b.chat(), Completion)
            assert b.conn.breaker.state is S.CLOSED
            await trio.sleep(SYNC_S * 2 + 0.01)
            assert a.conn.breaker.poll(trio.current_time()) is S.CLOSED


async def test_a_forced_open_is_shared_and_so_is_its_end(autojump_clock: Any) -> None:
    store = MemoryStore()
    with trio.fail_after(200):
        async with (
            process(store, breaking(), pid="a") as a,
            process(store, breaking(), pid="b") as b,
        ):
            a.conn.force_open()
            await trio.sleep(IDLE_SYNC_S * 2 + 0.01)
            assert b.conn.breaker.state is S.FORCED_OPEN
            a.conn.force_close()
            await trio.sleep(IDLE_SYNC_S * 2 + 0.01)
            assert b.conn.breaker.state is S.CLOSED


async def test_a_new_process_starts_with_the_shared_open_breaker(autojump_clock: Any) -> None:
    store = MemoryStore()
    failing = FaultPlan.always(ServerError(status=503))
    with trio.fail_after(200):
        async with process(store, breaking(), failing, pid="a") as a:
            for _ in range(2):
                await a.chat()
            await trio.sleep(SYNC_S * 2)
            async with process(store, breaking(), pid="late") as late:
                await trio.sleep(SYNC_S)
                assert late.conn.breaker.poll(trio.current_time()) is S.OPEN


# ---------------------------------------------------------------------------- the store goes away


async def test_an_unreachable_store_costs_nothing_and_is_resynced(autojump_clock: Any) -> None:
    store = MemoryStore()
    cfg = limited(requests_per_minute=600)
    with trio.fail_after(200):
        async with process(store, cfg, pid="a") as a:
            assert a.shared.state == "memory"
            assert isinstance(await a.chat(), Completion)
            await trio.sleep(IDLE_SYNC_S)
            store.available = False
            for _ in range(3):  # served on local state; the first call notices
                assert isinstance(await a.chat(), Completion)
            await trio.sleep(SYNC_S * 2)
            assert a.shared.state.startswith("local (memory unreachable since ")
            assert a.shared.state.endswith("Z)")
            assert not a.shared.up
            calls = store.calls
            assert isinstance(await a.chat(), Completion)  # no call while it is down
            assert store.calls == calls
            store.available = True
            await trio.sleep(RETRY_S + IDLE_SYNC_S + SYNC_S)
            assert a.shared.state == "memory"
            # Usage counted during the outage reached the store once it was back.
            [totals] = a.shared.totals().values()
            assert totals["m"].input_tokens == a.conn.metrics.snapshot().input_tokens
    assert a.shared.outages == 1


async def test_a_slow_store_delays_a_request_at_most_once_by_the_timeout(
    autojump_clock: Any,
) -> None:
    store = MemoryStore()
    cfg = limited(requests_per_minute=600)
    with trio.fail_after(200):
        async with process(store, cfg, pid="a", timeout=0.25) as a:
            await trio.sleep(IDLE_SYNC_S)
            store.delay = 30.0
            start = trio.current_time()
            assert isinstance(await a.chat(), Completion)
            assert trio.current_time() - start <= 0.25
            start = trio.current_time()
            assert isinstance(await a.chat(), Completion)
            assert trio.current_time() == start
            assert not a.shared.up
            store.delay = 0.0


async def test_usage_totals_outlive_the_process(autojump_clock: Any) -> None:
    store = MemoryStore()
    cfg = limited(requests_per_minute=600)
    with trio.fail_after(200):
        async with process(store, cfg, pid="a") as a:
            for _ in range(3):
                await a.chat()
            used = a.conn.metrics.snapshot()
        async with process(store, cfg, pid="b") as b:
            await trio.sleep(SYNC_S)
            totals = b.shared.totals()["c"]["m"]
    assert (totals.input_tokens, totals.output_tokens) == (used.input_tokens, used.output_tokens)
    assert b.conn.metrics.snapshot().input_tokens == 0


async def test_leaving_frees_the_slots_at_once(autojump_clock: Any) -> None:
    store = MemoryStore()
    cfg = limited(concurrent_requests=1)
    with trio.fail_after(60):
        async with process(store, cfg, pid="a") as a:
            await a.chat()
            assert store.model.connections["c"].slots["a"] in (0, 1)
        assert "a" not in store.model.connections["c"].slots


def _unused(x: Sequence[float]) -> float:
    return math.fsum(x)


def test_a_redis_state_without_coredis_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from actors._shared_state import shared_state_for
    from protocol._config import RuntimeSettings
    from protocol._errors import ConfigError

    assert shared_state_for(RuntimeSettings()) is None
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "coredis" else real(name, *a)
    )
    with pytest.raises(ConfigError) as info:
        shared_state_for(RuntimeSettings(state="redis://127.0.0.1:1/0"))
    [(key, what)] = info.value.problems
    assert key == "runtime.state"
    assert "trio-switchboard[redis]" in what
