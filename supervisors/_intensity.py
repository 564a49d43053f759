################################################################
# Restart decisions: intensity, restart types, strategies, backoff
################################################################
#
# Why this module exists: a supervisor makes four decisions each time a child exits, and all
# four are pure functions of data the supervisor already holds. Kept here, without trio and
# without a clock, they are tested exactly against Erlang/OTP's `supervisor.erl` (the
# reference semantics), and the trio shell in `_supervisor.py` only carries them out:
#
#   should_restart      "does this exit call for a restart at all?"        (restart type)
#   RestartIntensity    "may the supervisor afford one more restart now?"  (add_restart)
#   children_to_restart "which children go down and come back with it?"   (strategy)
#   RestartBackoff      "how long to wait before starting them again?"     (our addition)
#
# Rule: nothing here reads a clock. `now` is the supervisor's monotonic time in float seconds
# (`trio.current_time()`), passed in by the caller. (triotp reads the clock inside its
# restart callback, which makes its timelines untestable; we do not copy that.)
#
#
# Theory of operation
# ===================
#
# Restart types (OTP `do_restart/3`). A child is
#   permanent  restarted whatever the reason it exited (even a normal return: a permanent
#              child is supposed to run forever),
#   transient  restarted only when it exited abnormally (`error`: it raised); a normal
#              return, or a shutdown the supervisor asked for, ends it for good,
#   temporary  never restarted; when it exits it is removed from the supervisor.
#
# Intensity (OTP `add_restart/3`). The supervisor keeps the timestamps of its restarts. On
# each new restart at `now` it keeps the timestamps `t` with `t >= now - period` (OTP's
# `Threshold = Now - Period`, `R >= Threshold`: a restart exactly `period` seconds old is
# still inside the period), adds `now`, and the restart is allowed iff the number of
# timestamps is `<= max_restarts`. Otherwise the supervisor gives up: it stops every child
# and fails itself, escalating to its parent. So with 3 in 5 s, restarts at t = 0, 1, 2 are
# allowed, a fourth at t = 3 is refused; at t = 5.0 the restart at t = 0 still counts (5 - 5
# = 0 >= 0) and a fourth restart is refused too; at t = 5.5 (or 6) it has left the period and
# the restart is allowed. One difference from OTP, on purpose: OTP truncates time to whole
# seconds (`erlang:monotonic_time(1)`); we compare the float times exactly. The comparison is
# written as OTP writes it (`t >= now - period`, not `now - t <= period`) so floating point
# rounding agrees with it too. The history returned also holds a refused restart, as OTP's
# state does; the supervisor dies with it anyway.
#
# One failure costs one restart, whatever the strategy: a `one_for_all` restart of ten
# children counts once, as in OTP (`restart/2` calls `add_restart/1` once per exit).
#
# Strategies (OTP `restart/3`). Children are kept in start order. When the child at index
# `failed` must be restarted:
#   one_for_one   only that child is restarted;
#   one_for_all   every other child is stopped too (in reverse start order), then all are
#                 started again in start order;
#   rest_for_one  the children started after it are stopped (reverse start order), then the
#                 failed child and those after it are started again in start order.
# Temporary bystanders are stopped and *removed*, never restarted (OTP `terminate_children`
# skips them when it builds the list to start again). A non-temporary bystander that was not
# running (a transient child that had returned normally) is started again with its group,
# exactly as OTP's `start_children` does for every child left in the list.
#
# Backoff (not in OTP: an Erlang process restart is microseconds; reconnecting to an LLM
# provider that just failed is not). Optional: the n-th restart of a child within the
# intensity period waits `min(maximum, initial * multiplier ** (n - 1))` before starting.
# Note the interplay with intensity: time spent waiting also ages the restart history, so a
# long backoff lets more restarts fit in the period. Choose `period` with the backoff in mind.
#

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RestartType = Literal["permanent", "transient", "temporary"]
"""How a child is treated when it exits (see the module header)."""

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
"""Which children are restarted with a failed one (see the module header)."""

ExitReason = Literal["normal", "shutdown", "error"]
"""Why a child exited: it returned (``normal``), the supervisor stopped it (``shutdown``), or
it raised (``error``)."""

RESTART_TYPES: tuple[RestartType, ...] = ("permanent", "transient", "temporary")
STRATEGIES: tuple[Strategy, ...] = ("one_for_one", "one_for_all", "rest_for_one")


def should_restart(restart: RestartType, reason: ExitReason) -> bool:
    """True when a child of type *restart* that exited for *reason* must be restarted.

    ``permanent``: always. ``transient``: only for ``error``. ``temporary``: never.
    Raises `ValueError` for an unknown restart type.
    """
    if restart == "permanent":
        return True
    if restart == "transient":
        return reason == "error"
    if restart == "temporary":
        return False
    raise ValueError(f"unknown restart type {restart!r}; expected one of {RESTART_TYPES}")


@dataclass(frozen=True, slots=True)
class RestartIntensity:
    """At most *max_restarts* restarts within any *period* seconds (OTP intensity/period).

    Raises `ValueError` when *max_restarts* is negative or *period* is not a positive finite
    number of seconds.
    """

    max_restarts: int = 3
    period: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int):
            raise TypeError(f"max_restarts must be an int, got {self.max_restarts!r}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if not (self.period > 0 and math.isfinite(self.period)):
            raise ValueError(f"period must be a positive number of seconds, got {self.period}")

    def in_period(self, history: Sequence[float], now: float) -> tuple[float, ...]:
        """The timestamps of *history* still inside the period at *now* (``t >= now - period``),
        oldest first."""
        threshold = now - self.period
        return tuple(t for t in history if t >= threshold)

    def add_restart(self, history: Sequence[float], now: float) -> tuple[tuple[float, ...], bool]:
        """Record a restart at *now*. Returns ``(new_history, allowed)``.

        *history* holds earlier restart times (oldest first); *new_history* keeps those still
        inside the period and appends *now*. *allowed* is ``len(new_history) <=
        max_restarts``: when False the supervisor must give up.
        """
        kept = (*self.in_period(history, now), now)
        return kept, len(kept) <= self.max_restarts


@dataclass(frozen=True, slots=True)
class RestartPlan:
    """What the supervisor does after deciding to restart the child at index ``failed``.

    Indexes refer to the children in start order, as given to `children_to_restart`.
    """

    stop: tuple[int, ...]
    """Bystanders to stop first, in this order (reverse start order). Excludes the failed
    child, which has already exited."""
    remove: tuple[int, ...]
    """Children to forget once stopped (temporary bystanders), ascending."""
    restart: tuple[int, ...]
    """Children to start again, in this order (start order); includes the failed child."""


def children_to_restart(
    strategy: Strategy, children: Sequence[RestartType], failed: int
) -> RestartPlan:
    """The `RestartPlan` for *strategy* when ``children[failed]`` must be restarted.

    *children* lists the restart type of every child in start order. The caller has already
    decided (with `should_restart`) that the failed child is restarted; should it be temporary
    anyway, it is put in ``remove`` rather than ``restart``. Raises `ValueError` for an unknown
    strategy and `IndexError` when *failed* is not an index of *children*.
    """
    if not 0 <= failed < len(children):
        raise IndexError(f"failed index {failed} is outside 0..{len(children) - 1}")
    if strategy == "one_for_one":
        group = [failed]
    elif strategy == "one_for_all":
        group = list(range(len(children)))
    elif strategy == "rest_for_one":
        group = list(range(failed, len(children)))
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    stop = tuple(i for i in reversed(group) if i != failed)
    remove = tuple(i for i in group if children[i] == "temporary")
    restart = tuple(i for i in group if children[i] != "temporary")
    return RestartPlan(stop=stop, remove=remove, restart=restart)


@dataclass(frozen=True, slots=True)
class RestartBackoff:
    """Wait ``min(maximum, initial * multiplier ** (n - 1))`` seconds before the n-th restart.

    Raises `ValueError` unless ``0 <= initial <= maximum`` (finite) and ``multiplier >= 1``.
    """

    initial: float
    maximum: float
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum and math.isfinite(self.maximum)):
            raise ValueError(
                f"backoff needs 0 <= initial <= maximum (finite), got "
                f"initial={self.initial}, maximum={self.maximum}"
            )
        if not (self.multiplier >= 1 and math.isfinite(self.multiplier)):
            raise ValueError(f"backoff multiplier must be >= 1, got {self.multiplier}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number *attempt* (1-based). Raises `ValueError` for
        ``attempt < 1``."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        try:
            raw = self.initial * self.multiplier ** (attempt - 1)
        except OverflowError:
            return self.maximum
        return min(self.maximum, raw)
