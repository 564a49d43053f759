"""The pure restart decisions against Erlang/OTP's `supervisor.erl` (`add_restart/3`,
`do_restart/3`, `restart/3`) and against naive models."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisors._intensity import (
    RestartBackoff,
    RestartIntensity,
    RestartPlan,
    RestartType,
    Strategy,
    children_to_restart,
    should_restart,
)


def replay(intensity: RestartIntensity, times: list[float]) -> list[bool]:
    """Feed restarts at *times* one after another; the `allowed` flags."""
    history: tuple[float, ...] = ()
    flags = []
    for now in times:
        history, allowed = intensity.add_restart(history, now)
        flags.append(allowed)
    return flags


# -- intensity: OTP's add_restart ---------------------------------------------------------------


def test_three_in_five_seconds_fourth_is_refused() -> None:
    assert replay(RestartIntensity(3, 5.0), [0, 1, 2, 3]) == [True, True, True, False]


def test_restart_exactly_period_old_still_counts() -> None:
    # OTP: Threshold = Now - Period, kept when R >= Threshold: at t=5 the restart at t=0 stays.
    assert replay(RestartIntensity(3, 5.0), [0, 1, 2, 5.0]) == [True, True, True, False]


@pytest.mark.parametrize("now", [5.5, 6.0])
def test_restart_older_than_period_has_left(now: float) -> None:
    intensity = RestartIntensity(3, 5.0)
    history, allowed = intensity.add_restart((0.0, 1.0, 2.0), now)
    assert allowed
    assert history == (1.0, 2.0, now)


def test_history_keeps_only_the_period_and_appends_now() -> None:
    intensity = RestartIntensity(3, 5.0)
    assert intensity.add_restart((), 7.0) == ((7.0,), True)
    assert intensity.add_restart((1.0, 2.0, 3.0), 3.0) == ((1.0, 2.0, 3.0, 3.0), False)
    assert intensity.add_restart((0.0, 4.0), 10.0) == ((10.0,), True)
    assert intensity.in_period((0.0, 4.0, 9.0), 9.0) == (4.0, 9.0)


def test_zero_intensity_refuses_the_first_restart() -> None:
    assert RestartIntensity(0, 5.0).add_restart((), 0.0) == ((0.0,), False)


def test_defaults_are_three_in_five_seconds() -> None:
    assert RestartIntensity() == RestartIntensity(3, 5.0)


def test_same_instant_restarts_all_count() -> None:
    assert replay(RestartIntensity(2, 1.0), [4.0, 4.0, 4.0]) == [True, True, False]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((-1, 5.0), ValueError),
        ((3, 0.0), ValueError),
        ((3, -1.0), ValueError),
        ((3, float("inf")), ValueError),
        ((3, float("nan")), ValueError),
        ((1.5, 5.0), TypeError),
        ((True, 5.0), TypeError),
    ],
)
def test_intensity_rejects_bad_arguments(
    args: tuple[object, float], error: type[Exception]
) -> None:
    with pytest.raises(error):
        RestartIntensity(*args)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    max_restarts=st.integers(0, 5),
    period=st.sampled_from([0.5, 1.0, 2.5, 5.0, 7.0]),
    steps=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 7.0]), max_size=30),
)
def test_add_restart_matches_a_window_count_model(
    max_restarts: int, period: float, steps: list[float]
) -> None:
    intensity = RestartIntensity(max_restarts, period)
    times = list(itertools.accumulate(steps))
    history: tuple[float, ...] = ()
    for i, now in enumerate(times):
        # The model: every earlier restart still within the period, plus this one.
        in_window = [t for t in times[:i] if t >= now - period]
        history, allowed = intensity.add_restart(history, now)
        assert history == (*in_window, now)
        assert allowed == (len(in_window) + 1 <= max_restarts)


# -- restart types: OTP's do_restart ------------------------------------------------------------

RESTART_TABLE = [
    ("permanent", "normal", True),
    ("permanent", "shutdown", True),
    ("permanent", "error", True),
    ("transient", "normal", False),
    ("transient", "shutdown", False),
    ("transient", "error", True),
    ("temporary", "normal", False),
    ("temporary", "shutdown", False),
    ("temporary", "error", False),
]


@pytest.mark.parametrize(("restart", "reason", "expected"), RESTART_TABLE)
def test_should_restart_table(restart: RestartType, reason: str, expected: bool) -> None:
    assert should_restart(restart, reason) is expected  # type: ignore[arg-type]


def test_should_restart_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown restart type"):
        should_restart("sometimes", "error")  # type: ignore[arg-type]


# -- strategies: OTP's restart/3 ----------------------------------------------------------------

P: RestartType = "permanent"
T: RestartType = "transient"
X: RestartType = "temporary"


@pytest.mark.parametrize(
    ("strategy", "children", "failed", "plan"),
    [
        ("one_for_one", [P, P, P], 1, RestartPlan(stop=(), remove=(), restart=(1,))),
        ("one_for_all", [P, P, P], 1, RestartPlan(stop=(2, 0), remove=(), restart=(0, 1, 2))),
        ("rest_for_one", [P, P, P, P], 1, RestartPlan(stop=(3, 2), remove=(), restart=(1, 2, 3))),
        ("rest_for_one", [P, P, P], 2, RestartPlan(stop=(), remove=(), restart=(2,))),
        ("rest_for_one", [P, P, P], 0, RestartPlan(stop=(2, 1), remove=(), restart=(0, 1, 2))),
        # Temporary bystanders are stopped and removed, never restarted.
        (
            "one_for_all",
            [X, P, T, X],
            2,
            RestartPlan(stop=(3, 1, 0), remove=(0, 3), restart=(1, 2)),
        ),
        ("rest_for_one", [X, P, X, T], 1, RestartPlan(stop=(3, 2), remove=(2,), restart=(1, 3))),
        ("one_for_one", [X, P, X], 1, RestartPlan(stop=(), remove=(), restart=(1,))),
        # A temporary failed child (the caller should not ask) is removed, not restarted.
        ("one_for_one", [X], 0, RestartPlan(stop=(), remove=(0,), restart=())),
    ],
)
def test_children_to_restart_table(
    strategy: Strategy, children: list[RestartType], failed: int, plan: RestartPlan
) -> None:
    assert children_to_restart(strategy, children, failed) == plan


def test_children_to_restart_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        children_to_restart("all_for_one", [P], 0)  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        children_to_restart("one_for_one", [P], 1)
    with pytest.raises(IndexError):
        children_to_restart("one_for_one", [], 0)


@settings(max_examples=150, deadline=None)
@given(
    strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
    children=st.lists(st.sampled_from([P, T, X]), min_size=1, max_size=8),
    data=st.data(),
)
def test_children_to_restart_matches_model(
    strategy: Strategy, children: list[RestartType], data: st.DataObject
) -> None:
    failed = data.draw(st.integers(0, len(children) - 1))
    plan = children_to_restart(strategy, children, failed)
    group = {
        "one_for_one": {failed},
        "one_for_all": set(range(len(children))),
        "rest_for_one": set(range(failed, len(children))),
    }[strategy]
    assert set(plan.restart) | set(plan.remove) == group
    assert not set(plan.restart) & set(plan.remove)
    assert list(plan.restart) == sorted(plan.restart)
    assert list(plan.stop) == sorted(group - {failed}, reverse=True)
    assert all(children[i] == "temporary" for i in plan.remove)
    assert all(children[i] != "temporary" for i in plan.restart)


# -- backoff ------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = RestartBackoff(0.5, 4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_huge_attempt_is_capped_without_overflow() -> None:
    assert RestartBackoff(1.0, 30.0).delay(100_000) == 30.0
    assert RestartBackoff(1.0, 30.0, multiplier=1.0).delay(100_000) == 1.0
    assert RestartBackoff(0.0, 30.0).delay(5) == 0.0


@pytest.mark.parametrize(
    "args",
    [(-1.0, 1.0), (2.0, 1.0), (1.0, float("inf")), (1.0, float("nan")), (1.0, 2.0, 0.5)],
)
def test_backoff_rejects_bad_arguments(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        RestartBackoff(*args)


def test_backoff_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        RestartBackoff(1.0, 2.0).delay(0)
