################################################################
# The circuit breaker of one provider connection
################################################################
#
# Why this module exists: when a provider is down, every request sent to it costs the caller
# a full timeout and costs the provider load it cannot serve. A circuit breaker notices that
# calls are failing (or are too slow), stops sending for a while ("open"), then lets a few
# probe calls through ("half-open") to learn whether the provider has recovered. The options
# were a consecutive-failure counter (Hystrix-era, trips on a burst of three errors among
# thousands of successes) or rate-based sliding windows (resilience4j). We follow resilience4j:
# its semantics are documented, widely deployed, and its defaults are what operators expect.
#
# Rule 1: every decision that changes the breaker's state lives in this file, and every state
# change goes through the `TRANSITIONS` table. Code outside only asks (`acquire`), reports
# (`record_success`, `record_failure`, `release`) and commands (`force_open`, ...).
#
# Rule 2: this file knows nothing about trio, HTTP or clocks. Time is the `now` argument
# (float seconds, monotonic: `trio.current_time()` in the actor), so tests drive it with exact
# values and the actor can keep the object across restarts as durable knowledge.
#
#
# Theory of operation
# ===================
#
# States. CLOSED lets every call through and records outcomes in a sliding window. OPEN
# refuses every call until `open_until`. HALF_OPEN lets up to `half_open_probes` probe calls
# through and refuses the rest until the probes have given a verdict. Three states are set by
# an operator and never left automatically: FORCED_OPEN refuses everything, DISABLED permits
# everything and records nothing, METRICS_ONLY permits everything and records outcomes (so
# rates stay observable) but never trips.
#
# Events. Five are triggered by the breaker itself:
#
#   TRIP            CLOSED    -> OPEN       the window reached a threshold
#   OPEN_ELAPSED    OPEN      -> HALF_OPEN  `now >= open_until`
#   PROBES_PASSED   HALF_OPEN -> CLOSED     every probe succeeded
#   PROBE_FAILED    HALF_OPEN -> OPEN       a probe failed (or the probes were too slow)
#   PROBE_TIMEOUT   HALF_OPEN -> OPEN       a probe gave no verdict in `half_open_timeout_s`
#
# and five by commands: FORCE_OPEN, FORCE_CLOSE, DISABLE, METRICS_ONLY (each legal from any
# state except the one it leads to: "already there" is reported, not silently absorbed) and
# RESET (legal from every state, always lands in CLOSED). Anything not in the table raises
# `BreakerTransitionError` before any field is touched, so the state is unchanged. Two more
# come from other processes when state is shared (`actors._shared_state`): SHARED_OPEN
# (CLOSED or HALF_OPEN -> OPEN until the other process's end, `adopt_open`) and SHARED_CLOSE
# (OPEN or HALF_OPEN -> CLOSED, `adopt_close`): each process keeps its own window, and what
# is shared is the decision.
#
# Time-triggered transitions are lazy. Nothing runs in the background: every public method
# that receives `now` first applies the transitions that time has made due (OPEN_ELAPSED,
# PROBE_TIMEOUT), then does its work. `poll(now)` does only the first part, for callers (the
# router, a health endpoint) that want the current state without asking for a permit.
#
# The window. Count-based: the last `window_size` outcomes. Time-based: the outcomes of the
# last `window_size` seconds, in one bucket per whole second (second `floor(t)`), a bucket
# leaving the window when `floor(now) - second >= window_size` (resilience4j's rule; memory
# is `window_size` buckets whatever the call rate). Each outcome is (failed, slow); totals
# are kept incrementally, so reading rates is O(1). The breaker trips, after recording an
# outcome in CLOSED, when the window holds at least `minimum_calls` calls (capped at
# `window_size` for a count window, which could never hold more) and the failure rate or the
# slow-call rate reaches its threshold (percent, `>=`).
#
# What counts. `record_success` is a healthy call. `record_failure(kind)` consults the error
# table: a kind that counts against the breaker (`protocol._errors.counts_against_breaker`:
# 5xx, timeouts, resets, broken streams) is a failure; any other kind *the provider reported*
# (429, 400, 401, context length) is a success, because the provider answered promptly and
# sanely; a kind the runtime produced itself (cancelled, deadline, queue_full, circuit_open,
# crashed, config) says nothing about the provider and is treated like `release`: the permit
# is freed, nothing is recorded. A call whose duration reaches `slow_call_s` is also slow,
# whether it succeeded or failed.
#
# Half-open. Each half-open period admits `half_open_probes` probes in total; a probe that is
# released (cancelled) frees its slot for another. The first failing probe re-opens the
# breaker at once (the verdict cannot improve). When all probes have succeeded, the breaker
# closes, unless the probes' slow-call rate reaches `slow_call_rate`, which re-opens it. Each
# re-opening multiplies the open duration by `open_backoff`, capped at `max_open_s` (or at
# `open_s` when that is larger: a long `open_s` is then simply not grown, as Envoy treats a
# base ejection time above its maximum); entering CLOSED resets it to `open_s`. A stuck
# half-open (the oldest outstanding probe issued at least `half_open_timeout_s` ago) counts
# as a failed probe. We measure from the probe, not from entering HALF_OPEN: a half-open
# period with no traffic is not stuck (the next call simply becomes the probe), and
# re-opening it would only lengthen the outage for nothing.
#
# Epochs and stale permits. Every transition starts a new epoch and clears the window and the
# probe accounting. A `Permit` carries the epoch it was issued in, and an outcome is recorded
# only for a permit of the current epoch. A stale outcome is dropped (counted as neither):
# a call that started while CLOSED and fails after the breaker opened adds nothing (the
# breaker is already open); one that succeeds during HALF_OPEN is not a probe and must not
# close the breaker; one that finishes after a RESET describes the provider from before the
# operator's decision. Dropping is always safe: the current epoch's own calls decide.
#
# Reporting contract. Each permit gets exactly one verdict: `record_success`,
# `record_failure` or `release`. A second *verdict* on a current-epoch permit raises
# `ValueError` (a bug in the caller, which would otherwise be counted twice); `release` after
# a verdict is a no-op, so `try: ... record ...; finally: release(permit)` is safe.
#
# Transitions are queued as `Transition` records; the actor drains them with
# `drain_transitions()` and turns them into metrics and log records.
#
# Default open times (`BreakerConfig`). resilience4j's window defaults are kept, but not its
# fixed 60 s open time, nor the 30 s doubling to 300 s we had: a connection here almost
# always sits behind a router with a fallback, so a breaker kept open too long does not
# protect the caller, it only keeps traffic off a primary that has recovered. A primary down
# for 60 s was not tried again for the rest of a 76 s run. Now the open time is 5 s, grows
# by 1.5 per failed probe and stops at 10 s (5, 7.5, 10, 10, ...). What that buys:
#   - a recovered provider is probed at most 10 s after it recovered (the last failed probe
#     came at worst just before), and the first call after that is the probe that closes the
#     breaker, so traffic is back within 10 s plus the wait for the next request and that
#     request's own time;
#   - a provider that stays down gets one probe every 10 s, at most six calls a minute, each
#     a request that fails over like any other;
#   - a brief outage (a few seconds of 503s) costs 5 s of fallback after the trip.
# `half_open_timeout_s` (60 s) matches the default request budget, so only a probe that
# outlives any default deadline counts as stuck; a probe that fails re-opens at once anyway.

from __future__ import annotations

import enum
import math
from collections import deque

import msgspec

from protocol._config import BreakerConfig
from protocol._errors import ErrorKind, SwitchboardError, counts_against_breaker, policy


class BreakerState(enum.StrEnum):
    """The states of a `Breaker`. The value is the stable name used in metrics and logs."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"
    METRICS_ONLY = "metrics_only"


class BreakerEvent(enum.StrEnum):
    """What moves a `Breaker` from one state to another (see the theory of operation)."""

    # Triggered by the breaker itself.
    TRIP = "trip"
    OPEN_ELAPSED = "open_elapsed"
    PROBES_PASSED = "probes_passed"
    PROBE_FAILED = "probe_failed"
    PROBE_TIMEOUT = "probe_timeout"
    # Commanded by an operator (or the runtime's control lane).
    FORCE_OPEN = "force_open"
    FORCE_CLOSE = "force_close"
    DISABLE = "disable"
    METRICS_ONLY = "metrics_only"
    RESET = "reset"
    # Another process's breaker decided (shared state: actors._shared_state).
    SHARED_OPEN = "shared_open"
    SHARED_CLOSE = "shared_close"


S = BreakerState
E = BreakerEvent

TRANSITIONS: dict[tuple[BreakerState, BreakerEvent], BreakerState] = {
    # automatic
    (S.CLOSED, E.TRIP): S.OPEN,
    (S.OPEN, E.OPEN_ELAPSED): S.HALF_OPEN,
    (S.HALF_OPEN, E.PROBES_PASSED): S.CLOSED,
    (S.HALF_OPEN, E.PROBE_FAILED): S.OPEN,
    (S.HALF_OPEN, E.PROBE_TIMEOUT): S.OPEN,
    # force_open: from anywhere but FORCED_OPEN
    (S.CLOSED, E.FORCE_OPEN): S.FORCED_OPEN,
    (S.OPEN, E.FORCE_OPEN): S.FORCED_OPEN,
    (S.HALF_OPEN, E.FORCE_OPEN): S.FORCED_OPEN,
    (S.DISABLED, E.FORCE_OPEN): S.FORCED_OPEN,
    (S.METRICS_ONLY, E.FORCE_OPEN): S.FORCED_OPEN,
    # force_close: from anywhere but CLOSED
    (S.OPEN, E.FORCE_CLOSE): S.CLOSED,
    (S.HALF_OPEN, E.FORCE_CLOSE): S.CLOSED,
    (S.FORCED_OPEN, E.FORCE_CLOSE): S.CLOSED,
    (S.DISABLED, E.FORCE_CLOSE): S.CLOSED,
    (S.METRICS_ONLY, E.FORCE_CLOSE): S.CLOSED,
    # disable: from anywhere but DISABLED
    (S.CLOSED, E.DISABLE): S.DISABLED,
    (S.OPEN, E.DISABLE): S.DISABLED,
    (S.HALF_OPEN, E.DISABLE): S.DISABLED,
    (S.FORCED_OPEN, E.DISABLE): S.DISABLED,
    (S.METRICS_ONLY, E.DISABLE): S.DISABLED,
    # metrics_only: from anywhere but METRICS_ONLY
    (S.CLOSED, E.METRICS_ONLY): S.METRICS_ONLY,
    (S.OPEN, E.METRICS_ONLY): S.METRICS_ONLY,
    (S.HALF_OPEN, E.METRICS_ONLY): S.METRICS_ONLY,
    (S.FORCED_OPEN, E.METRICS_ONLY): S.METRICS_ONLY,
    (S.DISABLED, E.METRICS_ONLY): S.METRICS_ONLY,
    # shared: another process's breaker opened or closed (see adopt_open / adopt_close)
    (S.CLOSED, E.SHARED_OPEN): S.OPEN,
    (S.HALF_OPEN, E.SHARED_OPEN): S.OPEN,
    (S.OPEN, E.SHARED_CLOSE): S.CLOSED,
    (S.HALF_OPEN, E.SHARED_CLOSE): S.CLOSED,
    # reset: from anywhere, to CLOSED
    (S.CLOSED, E.RESET): S.CLOSED,
    (S.OPEN, E.RESET): S.CLOSED,
    (S.HALF_OPEN, E.RESET): S.CLOSED,
    (S.FORCED_OPEN, E.RESET): S.CLOSED,
    (S.DISABLED, E.RESET): S.CLOSED,
    (S.METRICS_ONLY, E.RESET): S.CLOSED,
}
"""Every legal ``(state, event) -> new state``. A pair that is absent is illegal."""

del S, E


class BreakerTransitionError(SwitchboardError):
    """An event that is illegal in the breaker's current state. The state is unchanged."""

    def __init__(self, state: BreakerState, event: BreakerEvent) -> None:
        super().__init__(f"circuit breaker cannot handle {event.value!r} in state {state.value!r}")
        self.state = state
        self.event = event


def next_state(state: BreakerState, event: BreakerEvent) -> BreakerState:
    """The state *event* leads to from *state*; raises `BreakerTransitionError` if illegal."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise BreakerTransitionError(state, event) from None


class Permit(msgspec.Struct, frozen=True, kw_only=True):
    """Permission for one call. Give it back with exactly one verdict.

    ``epoch`` identifies the breaker period it was issued in (outcomes of older periods are
    dropped); ``probe`` is true for a half-open probe.
    """

    id: int
    epoch: int
    issued_at: float
    probe: bool = False


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """No permission. ``retry_after`` is seconds until the breaker may let a call through:
    exact while OPEN; ``None`` when it cannot tell (FORCED_OPEN; HALF_OPEN with every probe
    slot taken, which depends on the probes' verdicts)."""

    state: BreakerState
    retry_after: float | None


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One state change, at time ``at``, caused by ``event``, explained by ``reason``."""

    at: float
    from_state: BreakerState
    to_state: BreakerState
    event: BreakerEvent
    reason: str


class BreakerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The breaker at a glance. Rates are percentages of the calls in the window (``None``
    with an empty window); ``open_until`` is set only while OPEN; ``open_duration`` is the
    duration the next opening from HALF_OPEN will be based on."""

    state: BreakerState
    failure_rate: float | None
    slow_rate: float | None
    calls: int
    failures: int
    slow_calls: int
    open_until: float | None
    open_duration: float
    probes_in_flight: int


class _CountWindow:
    """The last *size* outcomes, with running totals (subtract on evict)."""

    def __init__(self, size: int) -> None:
        self._outcomes: deque[tuple[bool, bool]] = deque()
        self._size = size
        self.calls = self.failures = self.slow = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        if len(self._outcomes) == self._size:
            old_failed, old_slow = self._outcomes.popleft()
            self.calls -= 1
            self.failures -= old_failed
            self.slow -= old_slow
        self._outcomes.append((failed, slow))
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def expire(self, now: float) -> None:
        """Count windows do not age."""

    def clear(self) -> None:
        self._outcomes.clear()
        self.calls = self.failures = self.slow = 0


class _TimeWindow:
    """The outcomes of the last *seconds* seconds, one bucket per whole second."""

    def __init__(self, seconds: int) -> None:
        # Each bucket: [second, calls, failures, slow].
        self._buckets: deque[list[int]] = deque()
        self._seconds = seconds
        self.calls = self.failures = self.slow = 0

    def expire(self, now: float) -> None:
        current = math.floor(now)
        while self._buckets and current - self._buckets[0][0] >= self._seconds:
            _, calls, failures, slow = self._buckets.popleft()
            self.calls -= calls
            self.failures -= failures
            self.slow -= slow

    def add(self, now: float, failed: bool, slow: bool) -> None:
        self.expire(now)
        second = math.floor(now)
        # A `now` earlier than the newest bucket (never with a monotonic clock) joins it.
        if not self._buckets or self._buckets[-1][0] < second:
            self._buckets.append([second, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = self.failures = self.slow = 0


def _validate(config: BreakerConfig) -> None:
    problems = []
    if config.window_size < 1:
        problems.append("window_size must be at least 1")
    if config.minimum_calls < 1:
        problems.append("minimum_calls must be at least 1")
    if not 0 < config.failure_rate <= 100:
        problems.append("failure_rate must be in (0, 100]")
    if not 0 < config.slow_call_rate <= 100:
        problems.append("slow_call_rate must be in (0, 100]")
    if config.slow_call_s <= 0:
        problems.append("slow_call_s must be positive")
    if config.open_s < 0:
        problems.append("open_s must not be negative")
    if config.open_backoff < 1:
        problems.append("open_backoff must be at least 1")
    if config.half_open_probes < 1:
        problems.append("half_open_probes must be at least 1")
    if config.half_open_timeout_s <= 0:
        problems.append("half_open_timeout_s must be positive")
    if problems:
        raise ValueError("invalid BreakerConfig: " + "; ".join(problems))


class Breaker:
    """The circuit breaker of one connection: a pure state machine driven by `now`.

    Raises `ValueError` at construction when *config* is inconsistent. Starts CLOSED, or
    DISABLED when ``config.enabled`` is false. See the module's theory of operation.
    """

    def __init__(self, config: BreakerConfig) -> None:
        _validate(config)
        self._config = config
        self._state = BreakerState.CLOSED if config.enabled else BreakerState.DISABLED
        self._epoch = 0
        self._next_id = 0
        self._window: _CountWindow | _TimeWindow
        if config.window == "time":
            self._window = _TimeWindow(config.window_size)
            self._minimum_calls = config.minimum_calls
        else:
            self._window = _CountWindow(config.window_size)
            self._minimum_calls = min(config.minimum_calls, config.window_size)
        self._open_until: float | None = None
        self._open_duration = config.open_s
        # Outstanding permits of the current epoch: id -> issued_at (not tracked in DISABLED).
        self._outstanding: dict[int, float] = {}
        self._probes_passed = 0
        self._probes_slow = 0
        self._transitions: list[Transition] = []

    @property
    def state(self) -> BreakerState:
        """The state as of the last call that saw a `now` (use `poll` to bring it up to date)."""
        return self._state

    @property
    def config(self) -> BreakerConfig:
        return self._config

    # ------------------------------------------------------------------ asking

    @property
    def open_until(self) -> float | None:
        """When an OPEN breaker lets a probe through (``None`` in the other states)."""
        return self._open_until

    def poll(self, now: float) -> BreakerState:
        """Apply the transitions time has made due (OPEN -> HALF_OPEN, stuck HALF_OPEN ->
        OPEN) and return the current state."""
        self._advance(now)
        return self._state

    def acquire(self, now: float) -> Permit | Refusal:
        """Ask to make one call at *now*: a `Permit` to report back, or a `Refusal`."""
        self._advance(now)
        state = self._state
        if state is BreakerState.OPEN:
            assert self._open_until is not None
            return Refusal(state=state, retry_after=self._open_until - now)
        if state is BreakerState.FORCED_OPEN:
            return Refusal(state=state, retry_after=None)
        probe = state is BreakerState.HALF_OPEN
        if probe and (
            len(self._outstanding) + self._probes_passed >= self._config.half_open_probes
        ):
            return Refusal(state=state, retry_after=None)
        permit = Permit(id=self._next_id, epoch=self._epoch, issued_at=now, probe=probe)
        self._next_id += 1
        if state is not BreakerState.DISABLED:
            self._outstanding[permit.id] = now
        return permit

    # ------------------------------------------------------------------ reporting

    def record_success(self, permit: Permit, now: float, duration: float) -> None:
        """The call of *permit* succeeded after *duration* seconds."""
        self._record(permit, now, duration, failed=False)

    def record_failure(self, permit: Permit, now: float, duration: float, kind: ErrorKind) -> None:
        """The call of *permit* failed with *kind* after *duration* seconds.

        Only kinds that count against the breaker are failures; other provider-reported
        kinds are successes; runtime-produced kinds are treated like `release`.
        """
        if not policy(kind).from_provider:
            self.release(permit, now)
            return
        self._record(permit, now, duration, failed=counts_against_breaker(kind))

    def release(self, permit: Permit, now: float) -> None:
        """Give *permit* back without a verdict (the call was cancelled or never started).

        Frees a half-open probe slot; records nothing. A no-op after a verdict.
        """
        self._advance(now)
        if permit.epoch == self._epoch:
            self._outstanding.pop(permit.id, None)

    # ------------------------------------------------------------------ commands

    def force_open(self, now: float) -> None:
        """Refuse every call until `force_close`, `reset`, `disable` or `metrics_only`."""
        self._fire(BreakerEvent.FORCE_OPEN, now, "forced open")

    def force_close(self, now: float) -> None:
        """Go to CLOSED with an empty window and the initial open duration."""
        self._fire(BreakerEvent.FORCE_CLOSE, now, "forced closed")

    def disable(self, now: float) -> None:
        """Permit every call and record nothing, until another command."""
        self._fire(BreakerEvent.DISABLE, now, "disabled")

    def metrics_only(self, now: float) -> None:
        """Permit every call, keep computing rates, never trip, until another command."""
        self._fire(BreakerEvent.METRICS_ONLY, now, "metrics only")

    def adopt_open(self, until: float, now: float) -> None:
        """Another process's breaker opened (shared state): refuse until *until*, then
        probe as after any opening. Legal from CLOSED and HALF_OPEN; the open duration does
        not grow."""
        self._fire(BreakerEvent.SHARED_OPEN, now, "opened by another process", until=until)

    def adopt_close(self, now: float) -> None:
        """Another process's breaker closed (its probes passed): close from OPEN or
        HALF_OPEN with an empty window."""
        self._fire(BreakerEvent.SHARED_CLOSE, now, "closed by another process")

    def reset(self, now: float) -> None:
        """Start over in CLOSED from any state (also from DISABLED: reset re-enables)."""
        self._fire(BreakerEvent.RESET, now, "reset")

    # ------------------------------------------------------------------ observing

    def drain_transitions(self) -> list[Transition]:
        """The transitions since the last call, oldest first."""
        transitions, self._transitions = self._transitions, []
        return transitions

    def snapshot(self, now: float | None = None) -> BreakerSnapshot:
        """The breaker's current figures. With *now*, first applies due transitions and ages
        a time-based window (like `poll`)."""
        if now is not None:
            self._advance(now)
        window = self._window
        calls = window.calls
        return BreakerSnapshot(
            state=self._state,
            failure_rate=window.failures * 100 / calls if calls else None,
            slow_rate=window.slow * 100 / calls if calls else None,
            calls=calls,
            failures=window.failures,
            slow_calls=window.slow,
            open_until=self._open_until,
            open_duration=self._open_duration,
            probes_in_flight=(
                len(self._outstanding) if self._state is BreakerState.HALF_OPEN else 0
            ),
        )

    # ------------------------------------------------------------------ internals

    def _advance(self, now: float) -> None:
        self._window.expire(now)
        while True:
            if (
                self._state is BreakerState.OPEN
                and self._open_until is not None
                and now >= self._open_until
            ):
                self._fire(BreakerEvent.OPEN_ELAPSED, now, "open duration elapsed")
            elif (
                self._state is BreakerState.HALF_OPEN
                and self._outstanding
                and now >= min(self._outstanding.values()) + self._config.half_open_timeout_s
            ):
                self._fire(
                    BreakerEvent.PROBE_TIMEOUT,
                    now,
                    f"no probe verdict within {self._config.half_open_timeout_s} s",
                )
            else:
                return

    def _record(self, permit: Permit, now: float, duration: float, *, failed: bool) -> None:
        self._advance(now)
        state = self._state
        if permit.epoch != self._epoch or state is BreakerState.DISABLED:
            return  # stale, or nothing is recorded
        if self._outstanding.pop(permit.id, None) is None:
            raise ValueError(f"permit {permit.id} was already reported")
        slow = duration >= self._config.slow_call_s
        if state is BreakerState.HALF_OPEN:
            self._record_probe(now, failed, slow)
            return
        # CLOSED or METRICS_ONLY (OPEN and FORCED_OPEN issue no permits of their own epoch).
        window = self._window
        window.add(now, failed, slow)
        if state is not BreakerState.CLOSED or window.calls < self._minimum_calls:
            return
        config = self._config
        calls = window.calls
        if window.failures * 100 >= config.failure_rate * calls:
            rate, threshold, what = window.failures * 100 / calls, config.failure_rate, "failure"
        elif window.slow * 100 >= config.slow_call_rate * calls:
            rate, threshold, what = window.slow * 100 / calls, config.slow_call_rate, "slow-call"
        else:
            return
        self._fire(
            BreakerEvent.TRIP,
            now,
            f"{what} rate {rate:.1f}% >= {threshold:g}% over {calls} calls",
        )

    def _record_probe(self, now: float, failed: bool, slow: bool) -> None:
        config = self._config
        if failed:
            self._fire(BreakerEvent.PROBE_FAILED, now, "a half-open probe failed")
            return
        self._probes_passed += 1
        self._probes_slow += slow
        passed = self._probes_passed
        if passed < config.half_open_probes:
            return
        if self._probes_slow * 100 >= config.slow_call_rate * passed:
            self._fire(
                BreakerEvent.PROBE_FAILED,
                now,
                f"{self._probes_slow} of {passed} half-open probes were slow",
            )
        else:
            self._fire(BreakerEvent.PROBES_PASSED, now, f"{passed} half-open probes succeeded")

    def _fire(
        self, event: BreakerEvent, now: float, reason: str, *, until: float | None = None
    ) -> None:
        """Apply *event*: the only place that changes ``_state``."""
        old = self._state
        new = next_state(old, event)  # raises before anything changes
        config = self._config
        if new is BreakerState.OPEN and until is not None:
            self._open_until = until
        elif new is BreakerState.OPEN:
            if old is BreakerState.HALF_OPEN:
                self._open_duration = min(
                    self._open_duration * config.open_backoff,
                    max(config.max_open_s, config.open_s),
                )
            self._open_until = now + self._open_duration
        else:
            self._open_until = None
        if new is BreakerState.CLOSED:
            self._open_duration = config.open_s
        self._state = new
        self._epoch += 1
        self._window.clear()
        self._outstanding.clear()
        self._probes_passed = 0
        self._probes_slow = 0
        self._transitions.append(
            Transition(at=now, from_state=old, to_state=new, event=event, reason=reason)
        )
