"""The provider actor with its machines: breaker, limiter and retry budget, end to end.

Same setting as ``test_provider.py``: `FakeTransport` under ``autojump_clock``, fixed jitter,
exact arrival times read from the fake's attempt log.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors._breaker import BreakerState
from actors.testing._faults import Budget, FaultPlan, Latency, RateLimited, Rule, ServerError
from protocol._config import BreakerConfig, RateLimitConfig, RetryConfig
from protocol._errors import ErrorKind
from protocol._messages import Completion, Failure

from .test_provider import arrivals, chat_request, config, connect, serving

ONE_ATTEMPT = RetryConfig(max_attempts=1)


async def test_breaker_opens_fails_fast_probes_and_recovers(autojump_clock: Any) -> None:
    breaker = BreakerConfig(
        window_size=4, minimum_calls=4, open_s=10.0, open_backoff=2.0, max_open_s=60.0
    )
    cfg = config("anthropic", breaker=breaker, retry=ONE_ATTEMPT)
    conn, fake = connect(cfg, FaultPlan.flapping(20.0, status=503))
    with trio.fail_after(300):
        async with serving(conn):
            for _ in range(4):
                failure = await conn.chat(chat_request())
                assert isinstance(failure, Failure)
                assert failure.kind is ErrorKind.OVERLOADED
            assert conn.breaker.snapshot(0.0).state is BreakerState.OPEN
            # Open: fail fast, with the time until the probe, and nothing reaches the fake.
            fast = await conn.chat(chat_request())
            assert isinstance(fast, Failure)
            assert fast.kind is ErrorKind.CIRCUIT_OPEN
            assert fast.retry_after == 10.0
            assert fast.attempts == 0
            assert len(fake.attempts) == 4
            assert conn.unavailable_for(0.0) == 10.0
            # t=10: half-open, one probe goes through; still down, so it opens for 20 s.
            await trio.sleep(10.0)
            probe = await conn.chat(chat_request())
            assert isinstance(probe, Failure)
            assert probe.kind is ErrorKind.OVERLOADED
            assert conn.breaker.snapshot(10.0).open_until == 30.0
            again = await conn.chat(chat_request())
            assert isinstance(again, Failure)
            assert again.kind is ErrorKind.CIRCUIT_OPEN
            assert again.retry_after == 20.0
            # t=30: the provider is back; the probe succeeds and the breaker closes.
            await trio.sleep(20.0)
            assert isinstance(await conn.chat(chat_request()), Completion)
            assert conn.breaker.snapshot(30.0).state is BreakerState.CLOSED
            assert isinstance(await conn.chat(chat_request()), Completion)
    assert arrivals(fake) == [0.0, 0.0, 0.0, 0.0, 10.0, 30.0, 30.0]
    transitions = conn.metrics.snapshot().breaker_transitions
    assert sum(transitions.values()) == 5  # open, half-open, open, half-open, closed


async def test_auth_failure_leaves_the_breaker_alone(autojump_clock: Any) -> None:
    from actors.testing._faults import Unauthorized

    breaker = BreakerConfig(window_size=2, minimum_calls=2)
    conn, fake = connect(config("openai", breaker=breaker), FaultPlan.always(Unauthorized()))
    with trio.fail_after(60):
        async with serving(conn):
            for _ in range(5):
                result = await conn.chat(chat_request())
                assert isinstance(result, Failure)
                assert result.kind is ErrorKind.AUTH
    snap = conn.breaker.snapshot(trio.current_time())
    assert snap.state is BreakerState.CLOSED
    assert snap.failures == 0
    assert len(fake.attempts) == 5  # never retried


async def _concurrently(conn: Any, n: int, **options: Any) -> list[Completion | Failure]:
    results: list[Completion | Failure] = []

    async def one() -> None:
        results.append(await conn.chat(chat_request(**options)))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return results


async def test_rpm_admission_waits_exactly(autojump_clock: Any) -> None:
    cfg = config("openai", rate_limit=RateLimitConfig(requests_per_minute=2), timeout=120.0)
    conn, fake = connect(cfg)
    with trio.fail_after(300):
        async with serving(conn):
            results = await _concurrently(conn, 4)
    assert all(isinstance(r, Completion) for r in results)
    # A bucket of 2 that refills one request every 30 s.
    assert arrivals(fake) == [0.0, 0.0, 30.0, 60.0]


async def test_tpm_admission_waits_exactly(autojump_clock: Any) -> None:
    # Each request reserves 1 (prompt) + 10 (max_tokens) = 11 tokens and uses exactly 11.
    cfg = config("openai", rate_limit=RateLimitConfig(tokens_per_minute=22), timeout=120.0)
    conn, fake = connect(cfg)
    with trio.fail_after(300):
        async with serving(conn):
            results = await _concurrently(conn, 3, max_tokens=10)
    assert all(isinstance(r, Completion) for r in results)
    assert [a.usage_reported.total_tokens for a in fake.attempts if a.usage_reported] == [11] * 3
    assert arrivals(fake) == pytest.approx([0.0, 0.0, 30.0], abs=1e-9)


async def test_concurrency_admission_waits_exactly(autojump_clock: Any) -> None:
    cfg = config("openai", rate_limit=RateLimitConfig(concurrent_requests=2))
    conn, fake = connect(cfg, FaultPlan.always(Latency(seconds=5.0)))
    with trio.fail_after(300):
        async with serving(conn):
            results = await _concurrently(conn, 5)
    assert all(isinstance(r, Completion) for r in results)
    assert arrivals(fake) == [0.0, 0.0, 5.0, 5.0, 10.0]


async def test_429_parks_the_limiter_for_everyone(autojump_clock: Any) -> None:
    plan = FaultPlan(rules=(Rule(fault=RateLimited(retry_after=3.0), arrivals=(1,)),))
    conn, fake = connect(config("anthropic"), plan)
    late: list[Completion | Failure] = []

    async def later() -> None:
        await trio.sleep(1.0)
        late.append(await conn.chat(chat_request()))

    with trio.fail_after(60):
        async with serving(conn) as nursery:
            nursery.start_soon(later)
            first = await conn.chat(chat_request())
            assert conn.limiter.parked_until is None or conn.limiter.parked_until <= 3.0
    assert isinstance(first, Completion)
    assert first.attempts == 2
    assert isinstance(late[0], Completion)
    # The request that came at t=1 waited for the reset too: nobody earned a second 429.
    assert arrivals(fake) == [0.0, 3.0, 3.0]
    assert [a.status for a in fake.attempts] == [429, 200, 200]


async def test_rate_limit_headers_resync_the_limiter(autojump_clock: Any) -> None:
    # No limit configured on our side; the provider allows 2 requests per 60 s window and
    # says so in its headers (x-ratelimit-remaining/reset-requests). After two answers the
    # limiter knows the budget is spent and holds the third request instead of sending it.
    conn, fake = connect(config("openai", timeout=120.0), budget=Budget(requests_per_minute=2))
    seen: list[float | None] = []
    with trio.fail_after(300):
        async with serving(conn):
            seen.append(conn.statistics().limiter.available_requests)
            for _ in range(2):
                assert isinstance(await conn.chat(chat_request()), Completion)
                seen.append(conn.statistics().limiter.available_requests)
            third = await conn.chat(chat_request())
    assert seen == [None, 1, 0]
    assert isinstance(third, Completion)
    # The learned bucket refills linearly (OpenAI's documented semantics: "time until the
    # limit resets to its initial state"), so it lets one request go after 30 s; the fake's
    # budget is a fixed 60 s window, so that one earns a 429, which parks the limiter until
    # the window ends, and the retry succeeds.
    assert arrivals(fake) == [0.0, 0.0, 30.0, 60.0]
    assert [a.fault for a in fake.attempts] == [
        "healthy",
        "healthy",
        "budget_exhausted",
        "healthy",
    ]
    assert third.attempts == 2


async def test_retry_budget_stops_retry_amplification(autojump_clock: Any) -> None:
    retry = RetryConfig(budget_min_retries=2, budget_ratio=0.2)
    cfg = config("openai", retry=retry, breaker=BreakerConfig(enabled=False))
    conn, fake = connect(cfg, FaultPlan.always(ServerError(status=503)))
    with trio.fail_after(60):
        async with serving(conn):
            results = await _concurrently(conn, 10)
    assert all(isinstance(r, Failure) and r.kind is ErrorKind.OVERLOADED for r in results)
    # Without the budget: 10 x 3 = 30 attempts. With it: 10 first attempts + max(2, 0.2 x 10).
    assert len(fake.attempts) == 12
    assert conn.metrics.snapshot().retries == 2
