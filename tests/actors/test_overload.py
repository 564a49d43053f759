"""Overload: offer ten times what a connection's limits admit, for a minute.

RPM 60, concurrency 4, a mailbox of 32, and 600 requests arriving over 60 virtual seconds
(10 per second, deadlines of 5-10 s) at a provider that takes 0.5-3 s per answer. The limits
admit about 120 (a full bucket of 60 plus one per second). What must hold:

- every request gets exactly one result: a completion, ``queue_full`` or ``deadline`` - none
  lost (count == offered), none hung (the whole test runs under ``trio.fail_after`` on the
  virtual clock) and none later than its own deadline;
- memory stays bounded: the mailbox never holds more than its capacity, the actor never has
  more than the concurrency limit in flight (at the fake too), the limiter's queue never
  exceeds the actor's slots, and the traced heap peak stays far below what buffering 600
  requests' work would take.
"""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import trio

from actors.testing._faults import FaultPlan, Latency
from protocol._config import MailboxConfig, RateLimitConfig
from protocol._errors import ErrorKind
from protocol._messages import Completion, Failure

from .test_provider import chat_request, config, connect, serving

OFFERED = 600
CAPACITY = 32
CONCURRENCY = 4


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, step in events:  # ends sort before starts at the same instant
        level += step
        peak = max(peak, level)
    return peak


async def test_overload_is_bounded_and_loses_nothing(autojump_clock: Any) -> None:
    cfg = config(
        "openai",
        rate_limit=RateLimitConfig(requests_per_minute=60, concurrent_requests=CONCURRENCY),
        mailbox=MailboxConfig(capacity=CAPACITY, when_full="wait"),
    )
    conn, fake = connect(cfg, FaultPlan.always(Latency(seconds=0.2, up_to=1.0)))
    draw = random.Random(7)
    results: list[tuple[float, float, Completion | Failure]] = []
    peak_waiters = 0

    async def client(timeout: float) -> None:
        deadline = trio.current_time() + timeout
        result = await conn.chat(chat_request(), timeout=timeout)
        results.append((trio.current_time(), deadline, result))

    async def monitor() -> None:
        nonlocal peak_waiters
        while True:
            peak_waiters = max(peak_waiters, conn.admission.statistics().waiters)
            await trio.sleep(0.25)

    tracemalloc.start()
    try:
        with trio.fail_after(200):
            async with serving(conn), trio.open_nursery() as watch:
                watch.start_soon(monitor)
                async with trio.open_nursery() as clients:
                    for _ in range(OFFERED):
                        clients.start_soon(client, draw.uniform(5.0, 10.0))
                        await trio.sleep(60.0 / OFFERED)
                # Every client has its result: stop watching, let the actor drain.
                watch.cancel_scope.cancel()
            ended = trio.current_time()
        _, heap_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ended <= 60.0 + 10.0 + 3.0
    # None lost, none hung, none late.
    assert len(results) == OFFERED
    assert all(at <= deadline for at, deadline, _ in results)
    kinds = [None if isinstance(r, Completion) else r.kind for _, _, r in results]
    assert set(kinds) <= {None, ErrorKind.QUEUE_FULL, ErrorKind.DEADLINE}
    completed = kinds.count(None)
    assert kinds.count(ErrorKind.QUEUE_FULL) > 0
    assert kinds.count(ErrorKind.DEADLINE) > 0
    # The provider never saw more than the limits admit: a full bucket of 60, then one per
    # second. Every attempt either completed or was closed by its request's deadline (a
    # request admitted with less time left than the provider took); expired requests never
    # reached it.
    attempts = fake.attempts
    assert len(attempts) <= 60 + int(ended) + 1
    assert sum(a.outcome == "completed" for a in attempts) == completed
    assert all(a.outcome in ("completed", "client_closed") for a in attempts)
    assert completed >= len(attempts) // 2
    # Bounded: the mailbox, the slots in flight, the limiter's queue, the fake's view.
    stats = conn.statistics()
    assert stats.mailbox.peak_queued <= CAPACITY
    assert stats.mailbox.peak_in_flight <= CONCURRENCY
    assert conn.admission.statistics().peak_waiters <= CONCURRENCY
    assert peak_waiters <= CONCURRENCY
    spans = [(a.arrived_at, a.ended_at) for a in fake.attempts if a.ended_at is not None]
    assert _max_overlap(spans) <= CONCURRENCY
    assert stats.mailbox.accepted + stats.mailbox.rejected == OFFERED
    # The traced heap (600 client tasks included) peaks around 1 MB; 5 MB leaves room for
    # interpreter noise while still catching per-request buffers that pile up.
    assert heap_peak < 5_000_000
