################################################################
# Retrying a failed attempt on the same connection
################################################################
#
# Why this module exists: most provider failures are transient (a 503 during a deploy, a
# reset connection, a 429 until the minute rolls over), so one more attempt often succeeds.
# But retries done badly make outages worse: every client retrying at the same instant
# (synchronised waves), retrying what cannot succeed (a 400), retrying past the caller's
# deadline (work nobody will read), or multiplying the load on a provider that is already
# down. Two small pure objects answer the two questions separately:
#
#   RetryPolicy  "may *this request* try again, and after how long?"   (per request)
#   RetryBudget  "may *this connection* afford one more retry now?"     (per connection)
#
# Rule: nothing here reads a clock or a random source. `now` is the actor's monotonic time in
# float seconds (`trio.current_time()`) and jitter comes from an `Rng` argument (anything
# with `.random() -> float` in [0, 1), e.g. a seeded `random.Random`), so tests assert exact
# schedules.
#
#
# Theory of operation
# ===================
#
# RetryPolicy.decide(attempt=n, ...) is asked after the n-th attempt failed (n counts the
# first attempt, so n == 1 after the first failure). It stops, in this order, when:
#
#   1. n >= max_attempts                    ("max attempts")
#   2. the kind's row in the error table says `never`, or the kind is not in `retry_on`
#   3. stream events already reached the caller (`emitted`). The table requires this for
#      `if_nothing_emitted` kinds; we apply it to every kind, because a silent retry on the
#      same connection after text was emitted would make the caller see that text twice
#      (Anthropic can send `overloaded_error` mid-stream). Mid-stream failures belong to the
#      router's mid-stream policy (fail, or restart on a fallback with a `Restart` event).
#   4. the provider's Retry-After exceeds `max_retry_after_s` (waiting that long is worse
#      than failing over; the reason says so)
#   5. the delay would reach the request's deadline: `now + delay >= deadline`.
#
# The delay. The backoff base for retry n is `initial_delay_ms` times 0 (`none`), n
# (`linear`) or 2**(n-1) (`exponential`), capped at `max_delay_ms`; then jitter scales it by
# `1 - jitter * rng.random()`, i.e. uniformly down to `(1 - jitter)` of it. With the defaults
# (3 attempts, 500 ms, 8000 ms, 25 %) that is the official OpenAI and Anthropic SDKs' schedule:
# 0.5 s then 1 s (each up to 25 % shorter), doubling to 8 s with more attempts. Jitter only
# shortens, so the cap is a true upper bound. We chose this "proportional" jitter over
# decorrelated jitter (Polly v8's exponential backoff with UseJitter, AWS's "decorrelated")
# because it keeps the SDKs' schedule users already know while still spreading the retries of
# many clients; decorrelated jitter also needs the previous delay as state, which this
# stateless policy avoids.
#
# Retry-After. For `after_reset` kinds (429) the provider's Retry-After is the delay, exact
# (no jitter: retrying before the reset is a wasted request); without one, the backoff delay
# is used. For other kinds (a 503 with Retry-After) the delay is the larger of the jittered
# backoff and Retry-After. In both cases a Retry-After above `max_retry_after_s` stops.
#
# RetryBudget. Per connection, over a sliding window of `budget_window_s` seconds, retries may
# be at most `max(budget_min_retries, budget_ratio * first attempts in the window)` (the
# gRPC / Finagle retry budget). When a provider fails everything, each request then gets its
# retries only while the budget lasts, and the load stays near (1 + ratio) times the offered
# load instead of max_attempts times. Memory is bounded: one bucket per whole second
# (second `floor(t)`), a bucket leaving the window when `floor(now) - second >= N` with
# N = ceil(budget_window_s), so an attempt counts for between N - 1 and N seconds.
#
# Order in the actor: after a failed attempt, (1) `decision = policy.decide(...)`; (2) if
# `decision.retry`, `budget.try_retry(now)` (or `can_retry` then
# `record_attempt(now, retry=True)`), which reserves the retry at decision time so that
# concurrent requests cannot all pass the check while they sleep; if the budget refuses, give
# up with the original failure; (3) sleep `decision.delay`; (4) attempt again. Every first
# attempt is recorded with `record_attempt(now, retry=False)` when it starts. The policy does
# not know the budget, so each can be tested (and replaced) alone.

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

import msgspec

from protocol._config import RetryConfig
from protocol._errors import policy
from protocol._messages import Failure


class Rng(Protocol):
    """A source of uniform floats in [0, 1): `random.Random` or a test's fixed stub."""

    def random(self) -> float: ...


class RetryDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Whether to retry, after how many seconds (``0.0`` when not retrying), and why."""

    retry: bool
    delay: float
    reason: str


def _stop(reason: str) -> RetryDecision:
    return RetryDecision(retry=False, delay=0.0, reason=reason)


def _validate(config: RetryConfig) -> None:
    problems = []
    if config.max_attempts < 1:
        problems.append("max_attempts must be at least 1")
    if config.initial_delay_ms < 0:
        problems.append("initial_delay_ms must not be negative")
    if config.max_delay_ms < 0:
        problems.append("max_delay_ms must not be negative")
    if not 0.0 <= config.jitter <= 1.0:
        problems.append("jitter must be in [0, 1]")
    if config.max_retry_after_s < 0:
        problems.append("max_retry_after_s must not be negative")
    if config.budget_ratio < 0:
        problems.append("budget_ratio must not be negative")
    if config.budget_window_s <= 0:
        problems.append("budget_window_s must be positive")
    if config.budget_min_retries < 0:
        problems.append("budget_min_retries must not be negative")
    if problems:
        raise ValueError("invalid RetryConfig: " + "; ".join(problems))


class RetryPolicy:
    """Decides whether and when one request retries on the same connection.

    Stateless apart from its config, so one instance serves every request of a connection.
    Raises `ValueError` at construction when *config* is inconsistent.
    """

    def __init__(self, config: RetryConfig) -> None:
        _validate(config)
        self._config = config
        self._retry_on = frozenset(config.retry_on)

    @property
    def config(self) -> RetryConfig:
        return self._config

    def backoff(self, retry: int) -> float:
        """The delay in seconds before retry number *retry* (1-based), before jitter."""
        config = self._config
        if config.backoff == "none":
            factor = 0
        elif config.backoff == "linear":
            factor = retry
        else:
            factor = 2 ** (retry - 1)
        return min(config.initial_delay_ms * factor, config.max_delay_ms) / 1000

    def decide(
        self,
        *,
        attempt: int,
        failure: Failure,
        now: float,
        deadline: float | None,
        emitted: bool,
        rng: Rng,
    ) -> RetryDecision:
        """Whether to make attempt ``attempt + 1`` after *failure* ended attempt *attempt*.

        *now* and *deadline* are on the same monotonic clock (``None``: no deadline);
        *emitted* tells whether any stream event already reached the caller; *rng* gives the
        jitter. Raises `ValueError` when *attempt* is below 1.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be at least 1, got {attempt}")
        config = self._config
        kind = failure.kind
        if attempt >= config.max_attempts:
            return _stop(f"max attempts ({config.max_attempts}) reached")
        rule = policy(kind).retry
        if rule == "never":
            return _stop(f"{kind.value} is never retried")
        if kind not in self._retry_on:
            return _stop(f"{kind.value} is not in retry_on")
        if emitted:
            return _stop(f"{kind.value} after stream events were emitted")
        retry_after = failure.retry_after
        if retry_after is not None:
            retry_after = max(retry_after, 0.0)
            if retry_after > config.max_retry_after_s:
                return _stop(
                    f"retry-after {retry_after:g} s exceeds max_retry_after_s "
                    f"{config.max_retry_after_s:g} s"
                )
        if rule == "after_reset" and retry_after is not None:
            delay = retry_after
            how = "retry-after"
        else:
            delay = self.backoff(attempt) * (1 - config.jitter * rng.random())
            how = f"{config.backoff} backoff"
            if retry_after is not None and retry_after > delay:
                delay, how = retry_after, "retry-after"
        if deadline is not None and now + delay >= deadline:
            return _stop(f"deadline: a retry after {delay:g} s would reach it")
        return RetryDecision(
            retry=True,
            delay=delay,
            reason=f"{kind.value}: attempt {attempt + 1} of {config.max_attempts} "
            f"after {delay:g} s ({how})",
        )


class RetryBudgetSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The budget's window: first attempts, retries, and how many retries it allows."""

    first_attempts: int
    retries: int
    allowance: float


class RetryBudget:
    """Caps one connection's retries at a fraction of its first attempts (see the theory of
    operation). Raises `ValueError` at construction when *config* is inconsistent."""

    def __init__(self, config: RetryConfig) -> None:
        _validate(config)
        self._config = config
        self._seconds = math.ceil(config.budget_window_s)
        # Each bucket: [second, first attempts, retries].
        self._buckets: deque[list[int]] = deque()
        self._first = 0
        self._retries = 0

    def record_attempt(self, now: float, *, retry: bool) -> None:
        """Count one attempt starting (or reserved) at *now*: a retry or a first attempt."""
        self._expire(now)
        second = math.floor(now)
        # A `now` earlier than the newest bucket (never with a monotonic clock) joins it.
        if not self._buckets or self._buckets[-1][0] < second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        if retry:
            bucket[2] += 1
            self._retries += 1
        else:
            bucket[1] += 1
            self._first += 1

    def can_retry(self, now: float) -> bool:
        """True when one more retry at *now* stays within the budget."""
        self._expire(now)
        return self._retries + 1 <= self._allowance()

    def try_retry(self, now: float) -> bool:
        """`can_retry` and, when true, record the retry: check and reserve in one step."""
        if not self.can_retry(now):
            return False
        self.record_attempt(now, retry=True)
        return True

    def snapshot(self, now: float | None = None) -> RetryBudgetSnapshot:
        """The window's figures (aged to *now* when given)."""
        if now is not None:
            self._expire(now)
        return RetryBudgetSnapshot(
            first_attempts=self._first, retries=self._retries, allowance=self._allowance()
        )

    def _allowance(self) -> float:
        config = self._config
        return max(float(config.budget_min_retries), config.budget_ratio * self._first)

    def _expire(self, now: float) -> None:
        current = math.floor(now)
        buckets = self._buckets
        while buckets and current - buckets[0][0] >= self._seconds:
            _, first, retries = buckets.popleft()
            self._first -= first
            self._retries -= retries
