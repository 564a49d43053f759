"""The async admission shell under the autojump clock: exact virtual times, FIFO order,
deadlines, cancellation, parks, and an overload that must end with nobody hung."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from actors._admission import Admission, AdmissionTimeout
from actors._limiter import Grant, Limiter
from protocol._config import RateLimitConfig
from protocol._errors import ErrorKind
from protocol._ratelimit import RateLimitInfo

Log = list[tuple[str, str, float, int]]
"""(name, "admitted" | "timeout" | "cancelled", time, grant id or -1)."""


def outcomes(log: Log) -> list[tuple[str, str, float]]:
    """The log in the order things happened: by time, then by grant id (callers granted in the
    same instant wake in an arbitrary order; their grant ids give the order of the grants)."""
    return [entry[:3] for entry in sorted(log, key=lambda e: (e[2], e[3]))]


def admission(
    rpm: int | None = None, tpm: int | None = None, concurrency: int | None = None
) -> Admission:
    return Admission(
        Limiter(
            RateLimitConfig(
                requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=concurrency
            )
        )
    )


@asynccontextmanager
async def bounded_nursery(limit: float = 1000.0) -> AsyncIterator[trio.Nursery]:
    """A nursery under a virtual-time limit: a waiter that hangs fails the test instead of
    hanging it (the autojump clock jumps straight to the limit)."""
    with trio.fail_after(limit):
        async with trio.open_nursery() as nursery:
            yield nursery


async def spend(adm: Admission, count: int, tokens: int = 0) -> None:
    """Take *count* grants on the fast path and finish them at once."""
    for _ in range(count):
        grant = await adm.admit(tokens)
        adm.finish(grant, tokens)


async def start_waiter(
    nursery: trio.Nursery,
    adm: Admission,
    name: str,
    log: Log,
    *,
    tokens: int = 0,
    deadline: float | None = None,
    hold: bool = False,
) -> None:
    """Start a caller and return once it is queued (arrival order is start order). It logs
    ``(name, "admitted" | "timeout", time)`` and finishes its grant at once unless *hold*."""

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            grant = await adm.admit(tokens, deadline=deadline)
        except AdmissionTimeout:
            log.append((name, "timeout", trio.current_time(), -1))
            return
        log.append((name, "admitted", trio.current_time(), grant.id))
        if not hold:
            adm.finish(grant, tokens)

    await nursery.start(run)


async def test_fast_path_grants_at_once(autojump_clock: trio.testing.MockClock) -> None:
    adm = admission()
    grants = [await adm.admit(100) for _ in range(3)]
    assert [g.granted_at for g in grants] == [0.0, 0.0, 0.0]
    assert trio.current_time() == 0.0
    stats = adm.statistics()
    assert (stats.admitted, stats.waiters, stats.limiter.in_flight) == (3, 0, 3)


async def test_waiters_admitted_fifo_at_exact_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(rpm=60)
    await spend(adm, 60)
    log: Log = []
    async with bounded_nursery() as nursery:
        for name in "abcde":
            await start_waiter(nursery, adm, name, log)
    assert outcomes(log) == [
        ("a", "admitted", 1.0),
        ("b", "admitted", 2.0),
        ("c", "admitted", 3.0),
        ("d", "admitted", 4.0),
        ("e", "admitted", 5.0),
    ]


async def test_big_head_times_out_at_its_deadline_and_unblocks_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(tpm=600)  # 10 tokens per second
    await spend(adm, 1, tokens=600)
    log: Log = []
    async with bounded_nursery() as nursery:
        await start_waiter(nursery, adm, "big", log, tokens=600, deadline=5.0)
        await start_waiter(nursery, adm, "small", log, tokens=30, deadline=100.0)
        await start_waiter(nursery, adm, "medium", log, tokens=100, deadline=100.0)
    # "small" could have gone at 3 s, but FIFO keeps it behind "big" until big gives up.
    assert outcomes(log) == [
        ("big", "timeout", 5.0),
        ("small", "admitted", 5.0),
        ("medium", "admitted", 13.0),
    ]
    stats = adm.statistics()
    assert (stats.timed_out, stats.admitted, stats.waiters, stats.limiter.queued) == (1, 3, 0, 0)


async def test_timeout_carries_an_estimate_and_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(rpm=6)  # one per 10 s
    await spend(adm, 6)
    with pytest.raises(AdmissionTimeout) as caught:
        await adm.admit(0, deadline=4.0)
    assert trio.current_time() == 4.0
    err = caught.value
    assert (err.waited, err.retry_after, err.reason) == (4.0, 6.0, "requests")
    failure = err.failure()
    assert failure.kind is ErrorKind.DEADLINE
    assert failure.retry_after == 6.0
    assert adm.limiter.queued == 0


async def test_deadline_already_passed_reserves_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(rpm=60)
    await trio.sleep(5)
    with pytest.raises(AdmissionTimeout):
        await adm.admit(0, deadline=5.0)
    snap = adm.statistics().limiter
    assert (snap.available_requests, snap.in_flight, snap.queued) == (60, 0, 0)


async def test_cancelled_waiter_withdraws_and_the_next_moves_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(rpm=60)
    await spend(adm, 60)
    log: Log = []
    async with bounded_nursery() as nursery:
        scope = trio.CancelScope()

        async def doomed(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                task_status.started()
                await adm.admit(0)
            log.append(("doomed", "cancelled", trio.current_time(), -1))

        await nursery.start(doomed)
        await start_waiter(nursery, adm, "next", log)
        await trio.sleep(0.5)
        scope.cancel()
    assert outcomes(log) == [("doomed", "cancelled", 0.5), ("next", "admitted", 1.0)]
    stats = adm.statistics()
    assert (stats.withdrawn, stats.waiters, stats.limiter.queued) == (1, 0, 0)


async def test_granted_in_the_instant_of_cancellation_gives_the_grant_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(rpm=10, concurrency=1)
    holder = await adm.admit(0)
    outcome: list[str] = []
    scope = trio.CancelScope()

    async def waiter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            task_status.started()
            await adm.admit(0)
            outcome.append("returned")  # pragma: no cover - must not happen
        outcome.append("cancelled")

    async with bounded_nursery() as nursery:
        await nursery.start(waiter)
        await trio.testing.wait_all_tasks_blocked()
        # Cancel first, then free the slot in the same step: the pump grants the waiter
        # whose cancellation is already on its way.
        scope.cancel()
        adm.finish(holder, 0)
    assert outcome == ["cancelled"]
    snap = adm.statistics().limiter
    assert (snap.in_flight, snap.queued, snap.available_requests) == (0, 0, 9)


async def test_park_delays_everyone_until_the_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(concurrency=10)
    adm.park(30.0)
    log: Log = []
    async with bounded_nursery() as nursery:
        for name in "abc":
            await start_waiter(nursery, adm, name, log, hold=True)
        await trio.sleep(10)
        adm.park(50.0)  # a second 429 while they wait pushes everyone further
    assert outcomes(log) == [
        ("a", "admitted", 50.0),
        ("b", "admitted", 50.0),
        ("c", "admitted", 50.0),
    ]
    assert adm.statistics().limiter.parked_until == 50.0


async def test_concurrency_slot_release_admits_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(concurrency=1)
    holder = await adm.admit(0)
    log: Log = []
    async with bounded_nursery() as nursery:
        await start_waiter(nursery, adm, "a", log)
        await trio.sleep(3)
        assert adm.statistics().waiters == 1
        adm.finish(holder, 0)
    assert outcomes(log) == [("a", "admitted", 3.0)]


async def test_cancel_of_a_grant_refunds_and_admits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(rpm=1)
    grant = await adm.admit(0)
    log: Log = []
    async with bounded_nursery() as nursery:
        await start_waiter(nursery, adm, "a", log)
        await trio.sleep(2)
        assert adm.cancel(grant)
        assert not adm.cancel(grant)
    assert outcomes(log) == [("a", "admitted", 2.0)]


async def test_observe_wakes_waiters(autojump_clock: trio.testing.MockClock) -> None:
    adm = admission()
    adm.observe(RateLimitInfo(remaining_requests=0, reset_requests=30.0))
    log: Log = []
    async with bounded_nursery() as nursery:
        await start_waiter(nursery, adm, "a", log)
        await start_waiter(nursery, adm, "b", log)
        await trio.sleep(5)
        # A fresh response says the provider's bucket is full again.
        adm.observe(RateLimitInfo(limit_requests=10, remaining_requests=10))
    assert outcomes(log) == [("a", "admitted", 5.0), ("b", "admitted", 5.0)]


async def test_observe_that_tightens_pushes_the_head_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(rpm=60)
    await spend(adm, 60)
    log: Log = []
    async with bounded_nursery() as nursery:
        await start_waiter(nursery, adm, "a", log)
        await trio.sleep(0.5)
        adm.observe(RateLimitInfo(remaining_requests=0, reset_requests=4.5))
    assert outcomes(log) == [("a", "admitted", 5.0)]


@pytest.mark.parametrize(
    ("make", "deadline", "expected_admitted", "peak"),
    [
        # 60 at once, then one per second up to and including t=10 (a grant at the deadline
        # wins over the timeout).
        (lambda: admission(rpm=60), 10.0, 70, 40),
        # Two slots, each request holds its slot 1 s: 2 per second, the last pair at t=9.
        (lambda: admission(concurrency=2), 9.5, 20, 98),
    ],
)
async def test_overload_ends_with_everyone_admitted_or_timed_out(
    autojump_clock: trio.testing.MockClock,
    make: Callable[[], Admission],
    deadline: float,
    expected_admitted: int,
    peak: int,
) -> None:
    adm = make()
    log: Log = []

    async def caller(name: str, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            grant = await adm.admit(0, deadline=deadline)
        except AdmissionTimeout:
            log.append((name, "timeout", trio.current_time(), -1))
            return
        log.append((name, "admitted", trio.current_time(), grant.id))
        await trio.sleep(1)
        adm.finish(grant, 0)

    async with bounded_nursery(30) as nursery:
        for i in range(100):
            await nursery.start(caller, f"w{i:03}")
    admitted = [entry for entry in outcomes(log) if entry[1] == "admitted"]
    timed_out = [entry for entry in outcomes(log) if entry[1] == "timeout"]
    assert len(admitted) == expected_admitted
    assert len(admitted) + len(timed_out) == 100
    assert all(when == deadline for _, _, when in timed_out)
    # FIFO: admitted in arrival order, and every one admitted came before every one timed out.
    assert [name for name, _, _ in admitted] == [f"w{i:03}" for i in range(expected_admitted)]
    assert all(when <= deadline for _, _, when in admitted)
    stats = adm.statistics()
    assert (stats.waiters, stats.limiter.queued, stats.limiter.in_flight) == (0, 0, 0)
    assert (stats.admitted, stats.timed_out, stats.peak_waiters) == (
        expected_admitted,
        100 - expected_admitted,
        peak,
    )


async def test_no_deadline_waits_as_long_as_it_takes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adm = admission(rpm=1)
    await spend(adm, 1)
    grant = await adm.admit(0, deadline=math.inf)
    assert isinstance(grant, Grant)
    assert trio.current_time() == 60.0
