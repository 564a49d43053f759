"""The circuit breaker: timelines with exact `now` values, the transition table pair by pair,
and a Hypothesis state machine that checks the breaker against a deliberately simple model."""

from __future__ import annotations

import math
from typing import Any, Literal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from actors._breaker import (
    TRANSITIONS,
    Breaker,
    BreakerEvent,
    BreakerState,
    BreakerTransitionError,
    Permit,
    Refusal,
    Transition,
    next_state,
)
from protocol._config import BreakerConfig
from protocol._errors import ErrorKind

S = BreakerState
E = BreakerEvent
Outcome = Literal["ok", "fail"]


def config(**kwargs: Any) -> BreakerConfig:
    base: dict[str, Any] = {
        "window_size": 10,
        "minimum_calls": 4,
        "failure_rate": 50.0,
        "open_s": 30.0,
        "open_backoff": 2.0,  # the mechanism under test, not the defaults (see below)
        "max_open_s": 300.0,
        "half_open_timeout_s": 5.0,
    }
    base.update(kwargs)
    return BreakerConfig(**base)


def state_of(b: Breaker) -> BreakerState:
    """``b.state`` (a call, so that mypy does not narrow it across calls that change it)."""
    return b.state


def permit(b: Breaker, now: float) -> Permit:
    result = b.acquire(now)
    assert isinstance(result, Permit), result
    return result


def call(b: Breaker, now: float, outcome: Outcome, duration: float = 0.0) -> None:
    """One call at *now* that succeeds or fails with a breaker-counting kind."""
    p = permit(b, now)
    if outcome == "ok":
        b.record_success(p, now, duration)
    else:
        b.record_failure(p, now, duration, ErrorKind.SERVER_ERROR)


def tripped(b: Breaker | None = None, now: float = 0.0) -> Breaker:
    """A breaker opened at *now* by minimum_calls failures."""
    b = b or Breaker(config())
    for _ in range(b.config.minimum_calls):
        call(b, now, "fail")
    assert state_of(b) is S.OPEN
    b.drain_transitions()
    return b


def breaker_in(state: BreakerState) -> Breaker:
    """A fresh breaker brought into *state* at t=0..30."""
    b = Breaker(config())
    if state in (S.OPEN, S.HALF_OPEN):
        tripped(b)
        if state is S.HALF_OPEN:
            assert b.poll(30.0) is S.HALF_OPEN
    elif state is S.FORCED_OPEN:
        b.force_open(0.0)
    elif state is S.DISABLED:
        b.disable(0.0)
    elif state is S.METRICS_ONLY:
        b.metrics_only(0.0)
    assert b.state is state
    b.drain_transitions()
    return b


# ---------------------------------------------------------------------------- closed -> open


def test_opens_exactly_at_the_threshold_once_minimum_calls_are_in() -> None:
    b = Breaker(config())
    call(b, 0.0, "ok")
    call(b, 1.0, "fail")
    call(b, 2.0, "fail")
    assert state_of(b) is S.CLOSED  # 67 % failures, but only 3 of 4 minimum calls
    assert b.snapshot().failure_rate == pytest.approx(200 / 3)
    call(b, 3.0, "ok")  # 2 of 4 = 50 %
    assert state_of(b) is S.OPEN
    assert b.drain_transitions() == [
        Transition(
            at=3.0,
            from_state=S.CLOSED,
            to_state=S.OPEN,
            event=E.TRIP,
            reason="failure rate 50.0% >= 50% over 4 calls",
        )
    ]
    snap = b.snapshot()
    assert (snap.open_until, snap.open_duration, snap.calls) == (33.0, 30.0, 0)


def test_below_the_threshold_stays_closed() -> None:
    b = Breaker(config())
    outcomes: list[Outcome] = ["ok", "ok", "ok", "fail", "fail"]
    for t, outcome in enumerate(outcomes):
        call(b, float(t), outcome)
    assert state_of(b) is S.CLOSED  # 2 of 5 = 40 %
    call(b, 5.0, "fail")  # 3 of 6 = 50 %
    assert state_of(b) is S.OPEN


def test_count_window_forgets_the_oldest_outcome() -> None:
    b = Breaker(config(window_size=4, minimum_calls=4))
    outcomes: list[Outcome] = ["fail", "ok", "ok", "ok", "ok", "fail"]
    for t, outcome in enumerate(outcomes):
        call(b, float(t), outcome)
        assert state_of(b) is S.CLOSED
    assert b.snapshot().calls == 4
    call(b, 6.0, "fail")  # window ok ok fail fail; 3 of 7 overall would not trip
    assert state_of(b) is S.OPEN


def test_minimum_calls_is_capped_by_a_count_window() -> None:
    b = Breaker(config(window_size=3, minimum_calls=10))
    call(b, 0.0, "fail")
    call(b, 0.0, "fail")
    assert state_of(b) is S.CLOSED
    call(b, 0.0, "ok")  # 2 of 3 failed, and the window is full
    assert state_of(b) is S.OPEN


def test_slow_calls_trip_the_breaker() -> None:
    b = Breaker(config(minimum_calls=2, slow_call_s=2.0, slow_call_rate=50.0))
    call(b, 0.0, "ok", duration=1.99)
    assert b.snapshot().slow_calls == 0
    call(b, 1.0, "ok", duration=2.0)  # exactly slow_call_s is slow
    assert state_of(b) is S.OPEN
    assert b.drain_transitions()[0].reason == "slow-call rate 50.0% >= 50% over 2 calls"


def test_time_window_buckets_by_second_and_slides() -> None:
    b = Breaker(config(window="time", window_size=10, minimum_calls=3, failure_rate=60.0))
    call(b, 0.5, "fail")
    call(b, 1.0, "ok")
    call(b, 2.0, "ok")
    call(b, 9.9, "fail")  # 2 of 4
    # At 10.2 second 0 has left: ok ok fail fail = 50 % (with it, 3 of 5 = 60 % would trip).
    call(b, 10.2, "fail")
    assert state_of(b) is S.CLOSED
    snap = b.snapshot(10.5)
    assert (snap.calls, snap.failures) == (4, 2)
    call(b, 11.0, "fail")  # second 1 leaves: ok fail fail fail = 75 %
    assert state_of(b) is S.OPEN
    assert b.drain_transitions()[0].at == 11.0


def test_time_window_ages_and_stays_bounded() -> None:
    b = Breaker(config(window="time", window_size=5, minimum_calls=1000))
    for i in range(400):
        call(b, i * 0.25, "ok")
    assert len(b._window._buckets) <= 5  # type: ignore[union-attr]
    assert b.snapshot().calls == 20  # seconds 95..99, four calls each
    empty = b.snapshot(200.0)
    assert (empty.calls, empty.failure_rate, empty.slow_rate) == (0, None, None)


# ---------------------------------------------------------------------------- what counts


@pytest.mark.parametrize(
    "kind",
    [ErrorKind.RATE_LIMITED, ErrorKind.BAD_REQUEST, ErrorKind.AUTH, ErrorKind.CONTEXT_LENGTH],
)
def test_provider_kinds_that_do_not_count_are_successes(kind: ErrorKind) -> None:
    b = Breaker(config())
    for t in range(10):
        p = permit(b, float(t))
        b.record_failure(p, float(t), 0.1, kind)
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.failures, snap.failure_rate) == (S.CLOSED, 10, 0, 0.0)


@pytest.mark.parametrize(
    "kind",
    [
        ErrorKind.CANCELLED,
        ErrorKind.DEADLINE,
        ErrorKind.QUEUE_FULL,
        ErrorKind.CIRCUIT_OPEN,
        ErrorKind.CRASHED,
        ErrorKind.CONFIG,
    ],
)
def test_runtime_kinds_count_as_neither(kind: ErrorKind) -> None:
    b = Breaker(config())
    for t in range(10):
        b.record_failure(permit(b, float(t)), float(t), 100.0, kind)
    assert b.snapshot().calls == 0


@pytest.mark.parametrize(
    "kind",
    [
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.TIMEOUT,
        ErrorKind.CONNECTION,
        ErrorKind.STREAM_INTERRUPTED,
        ErrorKind.PROTOCOL,
    ],
)
def test_provider_health_kinds_are_failures(kind: ErrorKind) -> None:
    b = Breaker(config())
    for t in range(4):
        b.record_failure(permit(b, float(t)), float(t), 0.1, kind)
    assert state_of(b) is S.OPEN


def test_release_records_nothing() -> None:
    b = Breaker(config())
    b.release(permit(b, 0.0), 0.0)
    assert b.snapshot().calls == 0


def test_double_verdict_raises_and_release_after_verdict_is_a_noop() -> None:
    b = Breaker(config())
    p = permit(b, 0.0)
    b.record_success(p, 0.0, 0.1)
    b.release(p, 0.0)
    with pytest.raises(ValueError, match="already reported"):
        b.record_failure(p, 0.0, 0.1, ErrorKind.SERVER_ERROR)
    with pytest.raises(ValueError, match="already reported"):
        b.record_success(p, 0.0, 0.1)
    assert b.snapshot().calls == 1


# ---------------------------------------------------------------------------- open, half-open


def test_open_refuses_with_the_time_left() -> None:
    b = tripped(now=3.0)
    assert b.acquire(10.0) == Refusal(state=S.OPEN, retry_after=23.0)
    assert b.acquire(32.5) == Refusal(state=S.OPEN, retry_after=0.5)
    assert b.drain_transitions() == []


def test_half_open_after_open_s_admits_one_probe() -> None:
    b = tripped(now=3.0)
    p = permit(b, 33.0)
    assert (p.issued_at, p.probe) == (33.0, True)
    assert state_of(b) is S.HALF_OPEN
    assert b.acquire(33.5) == Refusal(state=S.HALF_OPEN, retry_after=None)
    assert b.snapshot().probes_in_flight == 1
    [t] = b.drain_transitions()
    assert (t.at, t.from_state, t.to_state, t.event) == (33.0, S.OPEN, S.HALF_OPEN, E.OPEN_ELAPSED)


def test_poll_moves_to_half_open_lazily() -> None:
    b = tripped()
    assert b.poll(29.999) is S.OPEN
    assert b.poll(30.0) is S.HALF_OPEN


def test_probe_success_closes_and_resets() -> None:
    b = tripped()
    p = permit(b, 30.0)
    b.record_success(p, 31.0, 1.0)
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.open_until, snap.open_duration) == (
        S.CLOSED,
        0,
        None,
        30.0,
    )
    assert [(t.event, t.to_state, t.at) for t in b.drain_transitions()] == [
        (E.OPEN_ELAPSED, S.HALF_OPEN, 30.0),
        (E.PROBES_PASSED, S.CLOSED, 31.0),
    ]
    assert isinstance(b.acquire(31.0), Permit)


def test_probe_failure_reopens_with_growing_capped_duration() -> None:
    b = tripped(Breaker(config(open_s=10.0, open_backoff=2.0, max_open_s=35.0)))
    assert b.snapshot().open_until == 10.0
    expected = [(10.0, 20.0, 30.0), (30.0, 35.0, 65.0), (65.0, 35.0, 100.0)]
    for at, duration, until in expected:
        p = permit(b, at)
        assert p.probe
        b.record_failure(p, at, 0.1, ErrorKind.OVERLOADED)
        snap = b.snapshot()
        assert (snap.state, snap.open_duration, snap.open_until) == (S.OPEN, duration, until)
    b.record_success(permit(b, 100.0), 100.0, 0.1)
    assert b.snapshot().open_duration == 10.0
    # The next trip uses open_s again.
    tripped(b, now=200.0)
    assert b.snapshot().open_until == 210.0


def test_default_open_time_grows_from_5_s_to_a_10_s_cap() -> None:
    # Issue 10 item 6: a provider that stays down is probed after 5, 7.5, then every 10 s,
    # so one that recovers is probed at most 10 s later (the old 30 s doubling to 300 s kept
    # it out for minutes).
    defaults = BreakerConfig()
    assert (defaults.open_s, defaults.open_backoff, defaults.max_open_s) == (5.0, 1.5, 10.0)
    b = tripped(Breaker(BreakerConfig(window_size=4, minimum_calls=4)))
    assert b.snapshot().open_until == 5.0
    expected = [(5.0, 7.5, 12.5), (12.5, 10.0, 22.5), (22.5, 10.0, 32.5), (32.5, 10.0, 42.5)]
    for at, duration, until in expected:
        p = permit(b, at)
        b.record_failure(p, at, 0.1, ErrorKind.SERVER_ERROR)
        snap = b.snapshot()
        assert (snap.state, snap.open_duration, snap.open_until) == (S.OPEN, duration, until)
    b.record_success(permit(b, 42.5), 42.5, 0.1)
    assert b.state is S.CLOSED


def test_open_s_above_max_open_s_is_used_without_growth() -> None:
    # A config that sets only a long open_s (open_s = 30 with the 10 s default cap) is valid:
    # the open time is open_s and does not grow, as Envoy treats a base ejection time above
    # its maximum.
    b = tripped(Breaker(config(open_s=30.0, open_backoff=2.0, max_open_s=10.0)))
    assert b.snapshot().open_until == 30.0
    for at in (30.0, 60.0, 90.0):
        b.record_failure(permit(b, at), at, 0.1, ErrorKind.SERVER_ERROR)
        snap = b.snapshot()
        assert (snap.open_duration, snap.open_until) == (30.0, at + 30.0)


def test_half_open_timeout_reopens_and_late_probe_is_ignored() -> None:
    b = tripped()
    p = permit(b, 40.0)  # half-open since 40.0 (lazily)
    assert b.poll(44.99) is S.HALF_OPEN
    assert b.poll(45.0) is S.OPEN
    snap = b.snapshot()
    assert (snap.open_duration, snap.open_until) == (60.0, 105.0)
    [_, t] = b.drain_transitions()
    assert (t.at, t.event, t.reason) == (45.0, E.PROBE_TIMEOUT, "no probe verdict within 5.0 s")
    b.record_success(p, 46.0, 6.0)  # stale: its half-open period is over
    assert state_of(b) is S.OPEN


def test_a_late_verdict_first_applies_the_timeout() -> None:
    b = tripped()
    p = permit(b, 30.0)
    b.record_success(p, 35.0, 5.0)  # the timeout fired at 35.0, before the verdict
    assert state_of(b) is S.OPEN


def test_an_idle_half_open_does_not_time_out() -> None:
    b = tripped()
    assert b.poll(30.0) is S.HALF_OPEN
    assert b.poll(1000.0) is S.HALF_OPEN
    p = permit(b, 1000.0)
    assert b.poll(1004.0) is S.HALF_OPEN
    b.record_success(p, 1004.0, 4.0)
    assert state_of(b) is S.CLOSED


def test_several_probes_all_must_succeed_and_a_cancelled_one_frees_its_slot() -> None:
    b = tripped(Breaker(config(half_open_probes=3)))
    probes = [permit(b, 30.0) for _ in range(3)]
    assert isinstance(b.acquire(30.0), Refusal)
    b.release(probes[0], 31.0)  # cancelled: neither success nor failure
    assert b.snapshot().probes_in_flight == 2
    replacement = permit(b, 31.0)
    b.record_success(probes[1], 32.0, 2.0)
    b.record_success(probes[2], 32.0, 2.0)
    assert state_of(b) is S.HALF_OPEN
    assert isinstance(b.acquire(32.0), Refusal)  # two passed + one in flight = three
    b.record_success(replacement, 33.0, 2.0)
    assert state_of(b) is S.CLOSED


def test_the_first_failing_probe_reopens_at_once() -> None:
    b = tripped(Breaker(config(half_open_probes=3)))
    first, second, _third = (permit(b, 30.0) for _ in range(3))
    b.record_success(first, 31.0, 1.0)
    b.record_failure(second, 31.5, 1.5, ErrorKind.TIMEOUT)
    snap = b.snapshot()
    assert (snap.state, snap.open_until, snap.probes_in_flight) == (S.OPEN, 91.5, 0)


def test_cancelled_probe_via_runtime_kind_frees_the_slot() -> None:
    b = tripped()
    b.record_failure(permit(b, 30.0), 30.5, 0.5, ErrorKind.CANCELLED)
    assert state_of(b) is S.HALF_OPEN
    assert permit(b, 30.5).probe


def test_slow_probes_reopen() -> None:
    b = tripped(Breaker(config(half_open_probes=2, slow_call_s=2.0, slow_call_rate=50.0)))
    fast, slow = permit(b, 30.0), permit(b, 30.0)
    b.record_success(fast, 31.0, 1.0)
    b.record_success(slow, 32.0, 2.0)
    assert state_of(b) is S.OPEN
    assert b.drain_transitions()[-1].reason == "1 of 2 half-open probes were slow"


def test_probe_answered_with_a_429_counts_as_healthy() -> None:
    b = tripped()
    b.record_failure(permit(b, 30.0), 30.1, 0.1, ErrorKind.RATE_LIMITED)
    assert state_of(b) is S.CLOSED


def test_zero_open_duration_goes_half_open_at_once() -> None:
    b = tripped(Breaker(config(open_s=0.0, max_open_s=0.0)))
    assert b.poll(0.0) is S.HALF_OPEN


# ---------------------------------------------------------------------------- stale permits


def test_calls_from_before_the_trip_do_not_count_while_open_or_half_open() -> None:
    b = Breaker(config())
    early = [permit(b, 0.0) for _ in range(2)]
    tripped(b, now=1.0)
    b.record_failure(early[0], 2.0, 2.0, ErrorKind.SERVER_ERROR)  # while OPEN: dropped
    assert state_of(b) is S.OPEN
    probe = permit(b, 31.0)
    b.record_success(early[1], 32.0, 32.0)  # while HALF_OPEN: not a probe, must not close
    assert state_of(b) is S.HALF_OPEN
    assert b.snapshot().probes_in_flight == 1
    b.record_success(probe, 33.0, 2.0)
    assert state_of(b) is S.CLOSED


def test_calls_from_before_a_reset_are_dropped() -> None:
    b = Breaker(config())
    old = permit(b, 0.0)
    b.reset(1.0)
    b.record_failure(old, 2.0, 2.0, ErrorKind.SERVER_ERROR)
    assert b.snapshot().calls == 0
    b.record_success(old, 2.0, 2.0)  # stale permits are not checked for double verdicts


def test_calls_from_an_earlier_closed_period_are_dropped() -> None:
    b = Breaker(config())
    old = permit(b, 0.0)
    tripped(b, now=0.0)
    b.record_success(permit(b, 30.0), 30.0, 0.0)  # closed again, a new period
    b.record_failure(old, 31.0, 31.0, ErrorKind.SERVER_ERROR)
    assert b.snapshot().calls == 0


# ---------------------------------------------------------------------------- commands


def test_forced_open_refuses_until_closed() -> None:
    b = Breaker(config())
    b.force_open(5.0)
    assert b.acquire(6.0) == Refusal(state=S.FORCED_OPEN, retry_after=None)
    assert b.poll(10_000.0) is S.FORCED_OPEN
    b.force_close(10_001.0)
    assert isinstance(b.acquire(10_001.0), Permit)
    assert [(t.from_state, t.to_state, t.reason) for t in b.drain_transitions()] == [
        (S.CLOSED, S.FORCED_OPEN, "forced open"),
        (S.FORCED_OPEN, S.CLOSED, "forced closed"),
    ]


def test_force_close_from_open_resets_window_and_duration() -> None:
    b = tripped(Breaker(config(open_s=10.0)))
    b.record_failure(permit(b, 10.0), 10.0, 0.0, ErrorKind.SERVER_ERROR)
    assert b.snapshot().open_duration == 20.0
    b.force_close(11.0)
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.open_until, snap.open_duration) == (
        S.CLOSED,
        0,
        None,
        10.0,
    )


def test_disabled_by_config_permits_everything_and_records_nothing() -> None:
    b = Breaker(config(enabled=False))
    assert state_of(b) is S.DISABLED
    for t in range(50):
        call(b, float(t), "fail", duration=1000.0)
    snap = b.snapshot()
    assert (snap.state, snap.calls) == (S.DISABLED, 0)
    assert b.drain_transitions() == []


def test_disable_and_reset_reenables() -> None:
    b = tripped()
    b.disable(1.0)
    assert isinstance(b.acquire(2.0), Permit)
    b.reset(3.0)
    assert state_of(b) is S.CLOSED
    tripped(b, now=4.0)


def test_metrics_only_records_but_never_trips() -> None:
    b = Breaker(config())
    b.metrics_only(0.0)
    for t in range(10):
        call(b, float(t), "fail", duration=100.0)
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.failure_rate, snap.slow_rate) == (
        S.METRICS_ONLY,
        10,
        100.0,
        100.0,
    )
    assert isinstance(b.acquire(10.0), Permit)
    b.force_close(11.0)
    assert b.snapshot().calls == 0


@pytest.mark.parametrize(
    ("state", "command", "event"),
    [
        (S.FORCED_OPEN, "force_open", E.FORCE_OPEN),
        (S.CLOSED, "force_close", E.FORCE_CLOSE),
        (S.DISABLED, "disable", E.DISABLE),
        (S.METRICS_ONLY, "metrics_only", E.METRICS_ONLY),
    ],
)
def test_illegal_command_raises_and_changes_nothing(
    state: BreakerState, command: str, event: BreakerEvent
) -> None:
    b = breaker_in(state)
    p = b.acquire(31.0)
    before = b.snapshot()
    with pytest.raises(BreakerTransitionError) as info:
        getattr(b, command)(31.0)
    assert (info.value.state, info.value.event) == (state, event)
    assert str(info.value) == (
        f"circuit breaker cannot handle {event.value!r} in state {state.value!r}"
    )
    assert b.snapshot() == before
    assert b.drain_transitions() == []
    if isinstance(p, Permit):  # permits of the current period are still current
        b.record_failure(p, 31.0, 0.0, ErrorKind.SERVER_ERROR)
        expected_calls = before.calls + (state in (S.CLOSED, S.METRICS_ONLY))
        assert b.snapshot().calls == expected_calls


# ---------------------------------------------------------------------------- the table

# The table written out again, independently, as the specification.
LEGAL: dict[tuple[BreakerState, BreakerEvent], BreakerState] = {
    (S.CLOSED, E.TRIP): S.OPEN,
    (S.OPEN, E.OPEN_ELAPSED): S.HALF_OPEN,
    (S.HALF_OPEN, E.PROBES_PASSED): S.CLOSED,
    (S.HALF_OPEN, E.PROBE_FAILED): S.OPEN,
    (S.HALF_OPEN, E.PROBE_TIMEOUT): S.OPEN,
    (S.CLOSED, E.SHARED_OPEN): S.OPEN,
    (S.HALF_OPEN, E.SHARED_OPEN): S.OPEN,
    (S.OPEN, E.SHARED_CLOSE): S.CLOSED,
    (S.HALF_OPEN, E.SHARED_CLOSE): S.CLOSED,
}
for _state in S:
    LEGAL[(_state, E.RESET)] = S.CLOSED
    for _event, _target in [
        (E.FORCE_OPEN, S.FORCED_OPEN),
        (E.FORCE_CLOSE, S.CLOSED),
        (E.DISABLE, S.DISABLED),
        (E.METRICS_ONLY, S.METRICS_ONLY),
    ]:
        if _state is not _target:
            LEGAL[(_state, _event)] = _target

ALL_PAIRS = [(state, event) for state in S for event in E]
COMMANDS = {
    E.FORCE_OPEN: "force_open",
    E.FORCE_CLOSE: "force_close",
    E.DISABLE: "disable",
    E.METRICS_ONLY: "metrics_only",
    E.RESET: "reset",
}


def test_table_is_the_specification() -> None:
    assert TRANSITIONS == LEGAL


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS)
def test_next_state_for_every_pair(state: BreakerState, event: BreakerEvent) -> None:
    if (state, event) in LEGAL:
        assert next_state(state, event) is LEGAL[(state, event)]
    else:
        with pytest.raises(BreakerTransitionError):
            next_state(state, event)


@pytest.mark.parametrize(
    ("state", "event"), [(s, e) for s, e in ALL_PAIRS if e in COMMANDS], ids=str
)
def test_every_command_in_every_state(state: BreakerState, event: BreakerEvent) -> None:
    b = breaker_in(state)
    command = getattr(b, COMMANDS[event])
    if (state, event) in LEGAL:
        command(31.0)
        assert b.state is LEGAL[(state, event)]
        [t] = b.drain_transitions()
        assert (t.at, t.from_state, t.to_state, t.event) == (31.0, state, b.state, event)
    else:
        with pytest.raises(BreakerTransitionError):
            command(31.0)
        assert b.state is state
        assert b.drain_transitions() == []


def test_automatic_events_only_fire_in_their_own_state() -> None:
    """The breaker never fires an automatic event outside the table: drive each state with
    everything that could trigger one and check nothing changes."""
    for state in (S.FORCED_OPEN, S.DISABLED, S.METRICS_ONLY):
        b = breaker_in(state)
        for t in range(1, 20):
            result = b.acquire(float(t) * 100)
            if isinstance(result, Permit):
                b.record_failure(result, float(t) * 100, 1000.0, ErrorKind.SERVER_ERROR)
        assert b.state is state
        assert b.drain_transitions() == []


@pytest.mark.parametrize(
    "bad",
    [
        {"window_size": 0},
        {"minimum_calls": 0},
        {"failure_rate": 0.0},
        {"slow_call_rate": 101.0},
        {"open_backoff": 0.5},
        {"half_open_probes": 0},
        {"half_open_timeout_s": 0.0},
    ],
)
def test_bad_configs_are_rejected_early(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid BreakerConfig"):
        Breaker(config(**bad))


# ---------------------------------------------------------------------------- the model

COUNTING = {
    ErrorKind.OVERLOADED,
    ErrorKind.SERVER_ERROR,
    ErrorKind.TIMEOUT,
    ErrorKind.CONNECTION,
    ErrorKind.STREAM_INTERRUPTED,
    ErrorKind.PROTOCOL,
}
RUNTIME = {
    ErrorKind.CIRCUIT_OPEN,
    ErrorKind.QUEUE_FULL,
    ErrorKind.DEADLINE,
    ErrorKind.CANCELLED,
    ErrorKind.CRASHED,
    ErrorKind.CONFIG,
}
COMMAND_TARGETS = {
    "force_open": S.FORCED_OPEN,
    "force_close": S.CLOSED,
    "disable": S.DISABLED,
    "metrics_only": S.METRICS_ONLY,
    "reset": S.CLOSED,
}


class Model:
    """A deliberately plain breaker: a list of outcomes and "should it be open"."""

    def __init__(self, c: BreakerConfig) -> None:
        self.c = c
        self.state = S.CLOSED if c.enabled else S.DISABLED
        self.period = 0
        self.outcomes: list[tuple[float, bool, bool]] = []  # (time, failed, slow)
        self.open_until: float | None = None
        self.open_for = c.open_s
        self.probes: dict[int, float] = {}
        self.passed: list[bool] = []  # slow flags of passed probes
        self.log: list[tuple[float, BreakerState, BreakerState]] = []

    def go(self, to: BreakerState, now: float) -> None:
        if to is S.OPEN and self.state is S.HALF_OPEN:
            cap = max(self.c.max_open_s, self.c.open_s)
            self.open_for = min(self.open_for * self.c.open_backoff, cap)
        if to is S.CLOSED:
            self.open_for = self.c.open_s
        self.open_until = now + self.open_for if to is S.OPEN else None
        self.log.append((now, self.state, to))
        self.state = to
        self.period += 1
        self.outcomes, self.probes, self.passed = [], {}, []

    def tick(self, now: float) -> None:
        while True:
            if self.state is S.OPEN and self.open_until is not None and now >= self.open_until:
                self.go(S.HALF_OPEN, now)
            elif (
                self.state is S.HALF_OPEN
                and self.probes
                and now - min(self.probes.values()) >= self.c.half_open_timeout_s
            ):
                self.go(S.OPEN, now)
            else:
                return

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        if self.c.window == "count":
            return self.outcomes[-self.c.window_size :]
        return [o for o in self.outcomes if math.floor(now) - math.floor(o[0]) < self.c.window_size]

    def should_open(self, now: float) -> bool:
        calls = self.window(now)
        needed = self.c.minimum_calls
        if self.c.window == "count":
            needed = min(needed, self.c.window_size)
        if len(calls) < needed:
            return False
        failed = sum(f for _, f, _ in calls)
        slow = sum(s for _, _, s in calls)
        return failed * 100 >= self.c.failure_rate * len(
            calls
        ) or slow * 100 >= self.c.slow_call_rate * len(calls)


class BreakerMachine(RuleBasedStateMachine):
    """The breaker and the model, driven by the same calls at the same times."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.permits: list[tuple[Permit, int]] = []  # (permit, model period)
        self.seen: list[Transition] = []
        self.setup(BreakerConfig())

    def setup(self, c: BreakerConfig) -> None:
        self.c = c
        self.breaker = Breaker(c)
        self.model = Model(c)

    @initialize(
        window=st.sampled_from(["count", "time"]),
        window_size=st.integers(1, 5),
        minimum_calls=st.integers(1, 5),
        failure_rate=st.sampled_from([25.0, 50.0, 100.0]),
        slow_call_rate=st.sampled_from([50.0, 100.0]),
        open_s=st.sampled_from([1.0, 2.5, 5.0]),
        open_backoff=st.sampled_from([1.0, 2.0]),
        extra_open=st.sampled_from([-0.5, 0.0, 7.0]),  # -0.5: max_open_s below open_s
        probes=st.integers(1, 3),
        timeout=st.sampled_from([1.0, 3.0]),
        enabled=st.sampled_from([True, True, True, False]),
    )
    def configure(
        self,
        window: Literal["count", "time"],
        window_size: int,
        minimum_calls: int,
        failure_rate: float,
        slow_call_rate: float,
        open_s: float,
        open_backoff: float,
        extra_open: float,
        probes: int,
        timeout: float,
        enabled: bool,
    ) -> None:
        self.setup(
            BreakerConfig(
                enabled=enabled,
                window=window,
                window_size=window_size,
                minimum_calls=minimum_calls,
                failure_rate=failure_rate,
                slow_call_rate=slow_call_rate,
                slow_call_s=1.0,
                open_s=open_s,
                open_backoff=open_backoff,
                max_open_s=open_s + extra_open,
                half_open_probes=probes,
                half_open_timeout_s=timeout,
            )
        )

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 5.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.model.open_until is not None)
    @rule()
    def wait_out_open(self) -> None:
        """Jump to exactly ``open_until`` (the boundary, and the way to HALF_OPEN)."""
        assert self.model.open_until is not None
        self.now = max(self.now, self.model.open_until)

    @rule()
    def acquire(self) -> None:
        m, now = self.model, self.now
        m.tick(now)
        result = self.breaker.acquire(now)
        if m.state in (S.CLOSED, S.METRICS_ONLY, S.DISABLED):
            assert isinstance(result, Permit)  # never refuses while closed
        elif m.state is S.OPEN:
            assert m.open_until is not None
            assert result == Refusal(state=S.OPEN, retry_after=m.open_until - now)
            assert m.open_until > now  # never permits in OPEN before open_until
        elif m.state is S.FORCED_OPEN:
            assert result == Refusal(state=S.FORCED_OPEN, retry_after=None)
        elif len(m.probes) + len(m.passed) < self.c.half_open_probes:
            assert isinstance(result, Permit)
            assert result.probe
            m.probes[result.id] = now
        else:
            assert result == Refusal(state=S.HALF_OPEN, retry_after=None)
        if isinstance(result, Permit):
            self.permits.append((result, m.period))

    @precondition(lambda self: self.permits)
    @rule(
        pick=st.integers(0, 1000),
        verdict=st.sampled_from(["success", "release", *ErrorKind]),
        duration=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    )
    def report(self, pick: int, verdict: str, duration: float) -> None:
        m, now = self.model, self.now
        permit, period = self.permits.pop(pick % len(self.permits))
        m.tick(now)
        if verdict == "success":
            self.breaker.record_success(permit, now, duration)
        elif verdict == "release":
            self.breaker.release(permit, now)
        else:
            self.breaker.record_failure(permit, now, duration, ErrorKind(verdict))
        if period != m.period or m.state is S.DISABLED:
            return  # stale, or nothing recorded
        if verdict == "release" or verdict in RUNTIME:
            m.probes.pop(permit.id, None)
            return
        failed = verdict in COUNTING
        slow = duration >= 1.0
        if m.state is S.HALF_OPEN:
            del m.probes[permit.id]
            if failed:
                m.go(S.OPEN, now)
                return
            m.passed.append(slow)
            if len(m.passed) == self.c.half_open_probes:
                too_slow = sum(m.passed) * 100 >= self.c.slow_call_rate * len(m.passed)
                m.go(S.OPEN if too_slow else S.CLOSED, now)
            return
        m.outcomes.append((now, failed, slow))
        if m.state is S.CLOSED and m.should_open(now):
            m.go(S.OPEN, now)

    @rule(verdict=st.sampled_from(["success", ErrorKind.SERVER_ERROR]))
    def whole_call(self, verdict: str) -> None:
        """Acquire and report at once: reaches OPEN and HALF_OPEN in fewer steps."""
        before = len(self.permits)
        self.acquire()
        if len(self.permits) > before:
            self.report(pick=len(self.permits) - 1, verdict=verdict, duration=0.0)

    @rule(calls=st.integers(1, 5))
    def failure_storm(self, calls: int) -> None:
        """Several failing calls in a row: the quickest way to OPEN (and then HALF_OPEN)."""
        for _ in range(calls):
            self.whole_call(ErrorKind.SERVER_ERROR)

    @rule(command=st.sampled_from(sorted(COMMAND_TARGETS)))
    def command(self, command: str) -> None:
        m, now = self.model, self.now
        m.tick(now)
        target = COMMAND_TARGETS[command]
        if command != "reset" and m.state is target:
            with pytest.raises(BreakerTransitionError):
                getattr(self.breaker, command)(now)
        else:
            getattr(self.breaker, command)(now)
            m.go(target, now)

    @invariant()
    def agrees_with_model(self) -> None:
        m, now = self.model, self.now
        m.tick(now)
        assert self.breaker.poll(now) is m.state
        snap = self.breaker.snapshot()
        window = m.window(now) if m.state in (S.CLOSED, S.METRICS_ONLY) else []
        assert snap.calls == len(window)
        assert snap.failures == sum(f for _, f, _ in window)
        assert snap.slow_calls == sum(s for _, _, s in window)
        assert snap.open_until == m.open_until
        assert snap.open_duration == m.open_for
        assert snap.probes_in_flight == len(m.probes)
        assert snap.probes_in_flight <= self.c.half_open_probes

    @invariant()
    def transitions_follow_the_table(self) -> None:
        new = self.breaker.drain_transitions()
        for t in new:
            assert next_state(t.from_state, t.event) is t.to_state
            if self.seen:
                assert t.from_state is self.seen[-1].to_state
                assert t.at >= self.seen[-1].at
        self.seen.extend(new)
        assert [(t.at, t.from_state, t.to_state) for t in self.seen] == self.model.log


BreakerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestBreakerMachine = BreakerMachine.TestCase


# ---------------------------------------------------------------------------- shared decisions


def test_adopt_open_refuses_until_the_given_end_then_probes() -> None:
    b = Breaker(config())
    call(b, 1.0, "fail")  # a window in progress is forgotten with the period
    b.adopt_open(17.5, 2.0)
    assert state_of(b) is S.OPEN
    [t] = b.drain_transitions()
    assert (t.at, t.from_state, t.to_state, t.event) == (2.0, S.CLOSED, S.OPEN, E.SHARED_OPEN)
    refusal = b.acquire(3.0)
    assert isinstance(refusal, Refusal)
    assert refusal.retry_after == 14.5
    assert b.snapshot(3.0).open_duration == 30.0  # not grown: another process decided
    assert b.poll(17.5) is S.HALF_OPEN
    assert permit(b, 17.5).probe


def test_adopt_open_from_half_open_keeps_the_open_duration() -> None:
    b = tripped(now=0.0)
    assert b.poll(30.0) is S.HALF_OPEN
    b.adopt_open(40.0, 31.0)
    assert b.open_until == 40.0
    assert b.snapshot().open_duration == 30.0


def test_adopt_close_from_open_and_half_open_resets_the_duration() -> None:
    b = tripped(now=0.0)
    b.adopt_close(5.0)
    assert state_of(b) is S.CLOSED
    assert b.open_until is None
    [t] = b.drain_transitions()
    assert t.event is E.SHARED_CLOSE
    b = tripped(now=0.0)
    assert b.poll(30.0) is S.HALF_OPEN
    p = permit(b, 30.0)
    b.record_failure(p, 30.0, 0.0, ErrorKind.SERVER_ERROR)  # grows to 60 s
    assert b.poll(90.0) is S.HALF_OPEN
    b.adopt_close(91.0)
    assert b.snapshot().open_duration == 30.0


@pytest.mark.parametrize("state", [S.OPEN, S.FORCED_OPEN, S.DISABLED, S.METRICS_ONLY])
def test_adopt_open_is_illegal_outside_closed_and_half_open(state: BreakerState) -> None:
    b = breaker_in(state)
    with pytest.raises(BreakerTransitionError):
        b.adopt_open(100.0, 31.0)
    assert b.state is state
