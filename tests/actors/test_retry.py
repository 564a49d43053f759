"""The retry policy and the retry budget: exact schedules with fixed random sources, every stop
rule, and the budget against a simple model (a list of timestamps)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from actors._retry import RetryBudget, RetryDecision, RetryPolicy
from protocol._config import RetryConfig
from protocol._errors import POLICIES, ErrorKind
from protocol._messages import Failure


class FixedRng:
    """Always returns the same "random" value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


ZERO = FixedRng(0.0)
HALF = FixedRng(0.5)


def failure(kind: ErrorKind = ErrorKind.OVERLOADED, retry_after: float | None = None) -> Failure:
    return Failure.of(kind, "boom", retry_after=retry_after)


def schedule(
    policy: RetryPolicy,
    fail: Failure,
    *,
    rng: FixedRng = ZERO,
    now: float = 0.0,
    deadline: float | None = None,
) -> tuple[list[float], RetryDecision]:
    """Delays of consecutive retries until the policy stops, and the stopping decision."""
    delays: list[float] = []
    attempt = 1
    while True:
        decision = policy.decide(
            attempt=attempt, failure=fail, now=now, deadline=deadline, emitted=False, rng=rng
        )
        if not decision.retry:
            assert decision.delay == 0.0
            return delays, decision
        delays.append(decision.delay)
        now += decision.delay
        attempt += 1


# ---------------------------------------------------------------------------- schedules


def test_default_schedule_matches_the_official_sdks() -> None:
    delays, stop = schedule(RetryPolicy(RetryConfig()), failure())
    assert delays == [0.5, 1.0]
    assert stop.reason == "max attempts (3) reached"


def test_default_jitter_shortens_by_at_most_a_quarter() -> None:
    policy = RetryPolicy(RetryConfig())
    assert schedule(policy, failure(), rng=HALF)[0] == [0.4375, 0.875]
    assert schedule(policy, failure(), rng=FixedRng(1.0))[0] == [0.375, 0.75]


def test_exponential_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(RetryConfig(max_attempts=8))
    assert schedule(policy, failure())[0] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_linear_and_none_backoff() -> None:
    linear = RetryPolicy(
        RetryConfig(max_attempts=6, backoff="linear", initial_delay_ms=300, max_delay_ms=1000)
    )
    assert schedule(linear, failure())[0] == [0.3, 0.6, 0.9, 1.0, 1.0]
    none = RetryPolicy(RetryConfig(max_attempts=4, backoff="none"))
    assert schedule(none, failure(), rng=HALF)[0] == [0.0, 0.0, 0.0]


def test_backoff_helper_is_the_uncapped_then_capped_base() -> None:
    policy = RetryPolicy(RetryConfig(initial_delay_ms=250, max_delay_ms=1500))
    assert [policy.backoff(n) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.5, 1.5]


def test_jitter_zero_ignores_the_rng() -> None:
    policy = RetryPolicy(RetryConfig(jitter=0.0))
    assert schedule(policy, failure(), rng=FixedRng(0.99))[0] == [0.5, 1.0]


def test_full_jitter_can_reach_zero() -> None:
    policy = RetryPolicy(RetryConfig(jitter=1.0))
    assert schedule(policy, failure(), rng=HALF)[0] == [0.25, 0.5]


def test_single_attempt_never_retries() -> None:
    delays, stop = schedule(RetryPolicy(RetryConfig(max_attempts=1)), failure())
    assert delays == []
    assert stop.reason == "max attempts (1) reached"


def test_reason_of_a_retry_names_kind_attempt_and_delay() -> None:
    decision = RetryPolicy(RetryConfig()).decide(
        attempt=1, failure=failure(), now=0.0, deadline=None, emitted=False, rng=ZERO
    )
    assert decision == RetryDecision(
        retry=True, delay=0.5, reason="overloaded: attempt 2 of 3 after 0.5 s (exponential backoff)"
    )


# ---------------------------------------------------------------------------- retry-after


def test_rate_limited_waits_exactly_the_retry_after() -> None:
    policy = RetryPolicy(RetryConfig(max_attempts=4))
    delays, _ = schedule(policy, failure(ErrorKind.RATE_LIMITED, retry_after=7.0), rng=HALF)
    assert delays == [7.0, 7.0, 7.0]


def test_rate_limited_without_retry_after_uses_backoff() -> None:
    delays, _ = schedule(RetryPolicy(RetryConfig()), failure(ErrorKind.RATE_LIMITED), rng=HALF)
    assert delays == [0.4375, 0.875]


def test_retry_after_at_the_cap_is_honoured_above_it_stops() -> None:
    policy = RetryPolicy(RetryConfig(max_retry_after_s=20.0))
    at_cap = failure(ErrorKind.RATE_LIMITED, retry_after=20.0)
    assert schedule(policy, at_cap)[0] == [20.0, 20.0]
    over = failure(ErrorKind.RATE_LIMITED, retry_after=20.5)
    delays, stop = schedule(policy, over)
    assert delays == []
    assert stop.reason == "retry-after 20.5 s exceeds max_retry_after_s 20 s"


def test_retry_after_on_a_503_is_the_larger_of_backoff_and_retry_after() -> None:
    policy = RetryPolicy(RetryConfig(max_attempts=5))
    # Backoff 0.5, 1, 2, 4 against Retry-After 1.5.
    delays, _ = schedule(policy, failure(ErrorKind.OVERLOADED, retry_after=1.5))
    assert delays == [1.5, 1.5, 2.0, 4.0]
    delays, stop = schedule(policy, failure(ErrorKind.SERVER_ERROR, retry_after=61.0))
    assert delays == []
    assert stop.reason.startswith("retry-after 61 s exceeds")


def test_negative_retry_after_counts_as_zero() -> None:
    policy = RetryPolicy(RetryConfig())
    assert schedule(policy, failure(ErrorKind.RATE_LIMITED, retry_after=-3.0))[0] == [0.0, 0.0]
    assert schedule(policy, failure(ErrorKind.OVERLOADED, retry_after=-3.0))[0] == [0.5, 1.0]


# ---------------------------------------------------------------------------- stop rules


def test_deadline_cuts_off_the_schedule() -> None:
    policy = RetryPolicy(RetryConfig(max_attempts=5))
    # Retries at 0.5 (t=10.5), 1 (t=11.5); the next (2 s) would end at 13.5 >= 13.5.
    delays, stop = schedule(policy, failure(), now=10.0, deadline=13.5)
    assert delays == [0.5, 1.0]
    assert stop.reason == "deadline: a retry after 2 s would reach it"
    # Just beyond: the third retry fits.
    assert schedule(policy, failure(), now=10.0, deadline=13.5001)[0] == [0.5, 1.0, 2.0]


def test_deadline_already_passed_stops_even_with_no_delay() -> None:
    policy = RetryPolicy(RetryConfig(backoff="none"))
    decision = policy.decide(
        attempt=1, failure=failure(), now=5.0, deadline=5.0, emitted=False, rng=ZERO
    )
    assert not decision.retry
    assert decision.reason.startswith("deadline")


def test_retry_after_beyond_the_deadline_stops() -> None:
    policy = RetryPolicy(RetryConfig())
    decision = policy.decide(
        attempt=1,
        failure=failure(ErrorKind.RATE_LIMITED, retry_after=30.0),
        now=0.0,
        deadline=29.0,
        emitted=False,
        rng=ZERO,
    )
    assert not decision.retry
    assert decision.reason == "deadline: a retry after 30 s would reach it"


@pytest.mark.parametrize("kind", [k for k, p in POLICIES.items() if p.retry == "never"])
def test_never_kinds_are_never_retried(kind: ErrorKind) -> None:
    # Even when a misconfiguration lists them in retry_on.
    policy = RetryPolicy(RetryConfig(retry_on=tuple(ErrorKind)))
    delays, stop = schedule(policy, failure(kind))
    assert delays == []
    assert stop.reason == f"{kind.value} is never retried"


@pytest.mark.parametrize("kind", RetryConfig().retry_on)
def test_default_retry_on_kinds_are_retried(kind: ErrorKind) -> None:
    assert schedule(RetryPolicy(RetryConfig()), failure(kind))[0] == [0.5, 1.0]


def test_kinds_outside_retry_on_stop() -> None:
    policy = RetryPolicy(RetryConfig(retry_on=(ErrorKind.OVERLOADED,)))
    assert schedule(policy, failure(ErrorKind.OVERLOADED))[0] == [0.5, 1.0]
    delays, stop = schedule(policy, failure(ErrorKind.SERVER_ERROR))
    assert delays == []
    assert stop.reason == "server_error is not in retry_on"


@pytest.mark.parametrize(
    "kind", [ErrorKind.STREAM_INTERRUPTED, ErrorKind.PROTOCOL, ErrorKind.OVERLOADED]
)
def test_nothing_is_retried_once_events_were_emitted(kind: ErrorKind) -> None:
    policy = RetryPolicy(RetryConfig())
    before = policy.decide(
        attempt=1, failure=failure(kind), now=0.0, deadline=None, emitted=False, rng=ZERO
    )
    after = policy.decide(
        attempt=1, failure=failure(kind), now=0.0, deadline=None, emitted=True, rng=ZERO
    )
    assert before.retry
    assert after == RetryDecision(
        retry=False, delay=0.0, reason=f"{kind.value} after stream events were emitted"
    )


def test_max_attempts_is_checked_before_everything_else() -> None:
    decision = RetryPolicy(RetryConfig()).decide(
        attempt=3, failure=failure(ErrorKind.AUTH), now=0.0, deadline=0.0, emitted=True, rng=ZERO
    )
    assert decision.reason == "max attempts (3) reached"


def test_attempt_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempt must be at least 1"):
        RetryPolicy(RetryConfig()).decide(
            attempt=0, failure=failure(), now=0.0, deadline=None, emitted=False, rng=ZERO
        )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (RetryConfig(max_attempts=0), "max_attempts"),
        (RetryConfig(jitter=1.5), "jitter"),
        (RetryConfig(initial_delay_ms=-1), "initial_delay_ms"),
        (RetryConfig(budget_window_s=0.0), "budget_window_s"),
        (RetryConfig(budget_ratio=-0.1), "budget_ratio"),
    ],
)
def test_bad_configs_are_rejected_early(config: RetryConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(config)
    with pytest.raises(ValueError, match=message):
        RetryBudget(config)


def test_seeded_random_stays_within_the_jitter_band() -> None:
    policy = RetryPolicy(RetryConfig(max_attempts=10))
    rng = random.Random(1234)
    for attempt in range(1, 10):
        decision = policy.decide(
            attempt=attempt, failure=failure(), now=0.0, deadline=None, emitted=False, rng=rng
        )
        base = policy.backoff(attempt)
        assert 0.75 * base <= decision.delay <= base


# ---------------------------------------------------------------------------- budget


def budget(
    *, budget_min_retries: int = 10, budget_ratio: float = 0.2, budget_window_s: float = 10.0
) -> RetryBudget:
    return RetryBudget(
        RetryConfig(
            budget_min_retries=budget_min_retries,
            budget_ratio=budget_ratio,
            budget_window_s=budget_window_s,
        )
    )


def test_budget_allows_the_minimum_then_refuses_then_slides() -> None:
    b = budget(budget_min_retries=3, budget_ratio=0.0, budget_window_s=10.0)
    granted = [b.try_retry(t) for t in (0.0, 0.5, 1.0, 1.5)]
    assert granted == [True, True, True, False]
    assert not b.can_retry(9.99)  # seconds 0 and 1 are still in the window
    assert b.can_retry(10.0)  # second 0 (two retries) left the window
    assert b.snapshot(10.0).retries == 1
    assert [b.try_retry(10.0), b.try_retry(10.2), b.try_retry(10.4)] == [True, True, False]
    assert b.snapshot(10.4).retries == 3


def test_budget_grows_with_first_attempts() -> None:
    b = budget(budget_min_retries=2, budget_ratio=0.2, budget_window_s=5.0)
    for _ in range(20):
        b.record_attempt(0.0, retry=False)
    # max(2, 0.2 * 20) = 4 retries.
    assert [b.try_retry(1.0) for _ in range(5)] == [True, True, True, True, False]
    assert b.snapshot(1.0).allowance == 4.0
    # One more first attempt: 0.2 * 21 = 4.2, still at most 4 whole retries.
    b.record_attempt(1.0, retry=False)
    assert not b.can_retry(1.0)
    for _ in range(4):
        b.record_attempt(2.0, retry=False)
    assert b.can_retry(2.0)  # 0.2 * 25 = 5
    # At t=5 the 20 first attempts of second 0 leave: max(2, 0.2 * 5) = 2 < 4 retries.
    assert not b.can_retry(5.0)
    assert b.snapshot(5.0) == b.snapshot()
    assert b.snapshot().first_attempts == 5
    # At t=6 the retries of second 1 leave too.
    assert b.can_retry(6.0)


def test_budget_with_no_minimum_and_no_traffic_refuses() -> None:
    b = budget(budget_min_retries=0, budget_ratio=0.5)
    assert not b.can_retry(0.0)
    b.record_attempt(0.0, retry=False)
    assert not b.can_retry(0.0)  # 0.5 retries allowed: not a whole one
    b.record_attempt(0.0, retry=False)
    assert b.try_retry(0.0)
    assert not b.can_retry(0.0)


def test_budget_memory_is_bounded_by_the_window() -> None:
    b = budget(budget_window_s=3.0)
    for i in range(1000):
        b.record_attempt(i * 0.25, retry=i % 2 == 0)
    assert len(b._buckets) <= 3
    snap = b.snapshot()
    # Seconds 247, 248, 249: four attempts each, half of them retries.
    assert (snap.first_attempts, snap.retries) == (6, 6)


def window_count(stamps: list[tuple[float, bool]], now: float, seconds: int) -> tuple[int, int]:
    """The model: attempts whose whole second is less than *seconds* behind now's."""
    live = [retry for t, retry in stamps if math.floor(now) - math.floor(t) < seconds]
    return sum(not r for r in live), sum(live)


class BudgetMachine(RuleBasedStateMachine):
    """RetryBudget against a list of timestamps."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.stamps: list[tuple[float, bool]] = []
        self.config = RetryConfig()
        self.budget = RetryBudget(self.config)

    @initialize(
        ratio=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
        minimum=st.integers(0, 3),
        window=st.sampled_from([0.5, 1.0, 2.0, 3.5, 10.0]),
    )
    def configure(self, ratio: float, minimum: int, window: float) -> None:
        self.config = RetryConfig(
            budget_ratio=ratio, budget_min_retries=minimum, budget_window_s=window
        )
        self.budget = RetryBudget(self.config)

    def model_allows(self) -> bool:
        first, retries = window_count(self.stamps, self.now, math.ceil(self.config.budget_window_s))
        allowance = max(self.config.budget_min_retries, self.config.budget_ratio * first)
        return retries + 1 <= allowance

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, 2.5, 4.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def first_attempt(self) -> None:
        self.budget.record_attempt(self.now, retry=False)
        self.stamps.append((self.now, False))

    @rule()
    def retry(self) -> None:
        expected = self.model_allows()
        assert self.budget.try_retry(self.now) == expected
        if expected:
            self.stamps.append((self.now, True))

    @invariant()
    def agrees_with_model(self) -> None:
        assert self.budget.can_retry(self.now) == self.model_allows()
        first, retries = window_count(self.stamps, self.now, math.ceil(self.config.budget_window_s))
        snap = self.budget.snapshot(self.now)
        assert (snap.first_attempts, snap.retries) == (first, retries)


BudgetMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestBudgetMachine = BudgetMachine.TestCase
