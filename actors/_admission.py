"""Admission: the async shell that makes callers wait, in order, for the rate limiter.

The problem: the pure `Limiter` decides *whether* a request may go and *when* it could, but
somebody has to sleep until then, wake exactly the right callers, and clean up after callers
that give up. Those are the only jobs of this module; it decides nothing about budgets (trio's
``send_nowait``/``send`` split: the sync core holds the logic, the async method wraps it).

Options for the waiting: a background task that owns a timer and hands out grants (needs a
nursery from the caller and a channel hop per request), a shared ``trio.Condition`` that every
waiter re-checks (a thundering herd on every release), or one ``trio.Event`` per waiter with
the timer owned by the waiter at the head of the queue. We take the last: no background task,
no extra hop, and a release wakes exactly the callers it admits.

Theory of operation
-------------------

``admit`` first tries the limiter's fast path (``reserve``); with an empty queue and spare
capacity that is all, with no schedule point (only a cancellation check). Otherwise the caller
becomes a *waiter*: its ticket is queued in the limiter and it sleeps on its own ``nudge``
event, with an alarm at its deadline. The waiter at the head of the queue also sets its alarm
to the limiter's ``next_wake``, the earliest time the head could go.

``_pump(now)`` is the one place that hands out grants: it calls ``limiter.poll(now)``, stores
each grant in its waiter and sets that waiter's event, then remembers ``next_wake``. If the
head of the queue or ``next_wake`` changed since the head armed its alarm, it nudges the head
so it re-arms. Everything that can let a waiter through pumps: an alarm going off, ``finish``,
``cancel``, ``observe``, ``park`` and a waiter leaving the queue (a big request at the head that
times out unblocks the small ones behind it).

A waiter whose deadline passes withdraws its ticket and raises `AdmissionTimeout` at exactly
the deadline (a grant at that same instant wins). A cancelled waiter withdraws its ticket; if
it was granted in the same instant it was cancelled, the grant is cancelled in the limiter, so
nothing leaks.

One `Admission` serves one `Limiter` at a time (it owns the limiter's queue). The limiter
outlives it: a restarted actor builds a new `Admission` around the old limiter.
"""

from __future__ import annotations

import itertools
import math

import msgspec
import trio

from protocol._errors import ErrorKind, SwitchboardError
from protocol._messages import Failure
from protocol._ratelimit import RateLimitInfo

from ._limiter import Grant, Limiter, LimiterSnapshot, WaitReason

# Tickets are unique in the process, so tickets of an abandoned shell can never be mistaken
# for a new shell's.
_tickets = itertools.count()


class AdmissionTimeout(SwitchboardError):
    """The deadline passed before the rate limiter admitted the request. Nothing was reserved.

    ``waited`` is how long the caller queued; ``retry_after`` estimates how much longer it would
    have had to wait (a lower bound; ``None`` when only a finishing request can free capacity);
    ``reason`` is what held it back.
    """

    def __init__(self, *, waited: float, retry_after: float | None, reason: WaitReason) -> None:
        hint = "" if retry_after is None else f"; capacity in about {retry_after:.2f}s"
        super().__init__(f"deadline passed after {waited:.2f}s waiting for {reason}{hint}")
        self.waited = waited
        self.retry_after = retry_after
        self.reason = reason

    def failure(self) -> Failure:
        """This timeout as a typed ``deadline`` `Failure`."""
        return Failure.of(ErrorKind.DEADLINE, str(self), retry_after=self.retry_after)


class AdmissionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The limiter's snapshot plus the shell's counters: callers waiting now and at most,
    admitted (fast path and queued), timed out, and withdrawn (cancelled while waiting)."""

    limiter: LimiterSnapshot
    waiters: int
    peak_waiters: int
    admitted: int
    timed_out: int
    withdrawn: int


class _Waiter:
    __slots__ = ("deadline", "grant", "nudge", "ticket", "tokens")

    def __init__(self, ticket: int, tokens: int, deadline: float) -> None:
        self.ticket = ticket
        self.tokens = tokens
        self.deadline = deadline
        self.grant: Grant | None = None
        self.nudge = trio.Event()

    def granted(self) -> Grant | None:
        return self.grant


class Admission:
    """Callers wait here, first come first served, until *limiter* admits them."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self._waiters: dict[int, _Waiter] = {}  # insertion order = the limiter's queue order
        self._next_wake: float | None = None
        self._armed: tuple[int, float | None] | None = None  # (head ticket, wake it armed for)
        self._peak = 0
        self._admitted = 0
        self._timed_out = 0
        self._withdrawn = 0

    async def admit(self, tokens_estimate: int, *, deadline: float | None = None) -> Grant:
        """Wait (FIFO) until the limiter grants a request of *tokens_estimate* tokens.

        *deadline* is absolute trio time (``None``/``inf``: wait as long as it takes). Raises
        `AdmissionTimeout` when it passes first - at once, without reserving anything, if it
        has already passed. The caller must end the returned grant with `finish` or `cancel`.
        """
        if deadline is None:
            deadline = math.inf
        await trio.lowlevel.checkpoint_if_cancelled()
        grant = self.admit_nowait(tokens_estimate, deadline=deadline)
        if grant is not None:
            return grant
        return await self._wait(tokens_estimate, deadline, trio.current_time())

    def admit_nowait(self, tokens_estimate: int, *, deadline: float | None = None) -> Grant | None:
        """`admit` without waiting: the grant when the limiter admits at once (nobody
        queued, capacity left), else ``None``. Raises `AdmissionTimeout` when *deadline* has
        already passed. No checkpoint."""
        now = trio.current_time()
        if deadline is not None and now >= deadline:
            self._timed_out += 1
            raise self._timeout(tokens_estimate, 0.0, now)
        got = self.limiter.reserve(tokens_estimate, now)
        if isinstance(got, Grant):
            self._admitted += 1
            return got
        return None

    async def _wait(self, tokens: int, deadline: float, now: float) -> Grant:
        waiter = _Waiter(next(_tickets), tokens, deadline)
        self.limiter.enqueue(waiter.ticket, tokens, now)
        self._waiters[waiter.ticket] = waiter
        if len(self._waiters) > self._peak:
            self._peak = len(self._waiters)
        since = now
        try:
            self._pump(now)
            while (grant := waiter.granted()) is None:
                alarm = deadline
                if next(iter(self._waiters)) == waiter.ticket:
                    wake = self._next_wake
                    self._armed = (waiter.ticket, wake)
                    if wake is not None and wake < alarm:
                        alarm = wake
                waiter.nudge = trio.Event()
                with trio.move_on_at(alarm):
                    await waiter.nudge.wait()
                if waiter.granted() is not None:
                    continue
                now = trio.current_time()
                if now >= alarm:
                    self._pump(now)  # our alarm: the head's next_wake, or our deadline
                    if waiter.granted() is not None:
                        continue  # a grant at the deadline wins
                if now >= deadline:
                    self._timed_out += 1
                    raise self._timeout(tokens, now - since, now)
        except BaseException as exc:
            if waiter.granted() is None and not isinstance(exc, AdmissionTimeout):
                self._withdrawn += 1
            self._abandon(waiter)
            raise
        self._admitted += 1
        return grant

    def _timeout(self, tokens: int, waited: float, now: float) -> AdmissionTimeout:
        blocked = self.limiter.check(tokens, now)
        reason: WaitReason = "queue" if blocked is None else blocked.reason
        until = None if blocked is None else blocked.until
        if blocked is None or until is not None:
            wake = self._next_wake
            if wake is not None and (until is None or wake > until):
                until = wake
        retry_after = None if until is None else max(0.0, until - now)
        return AdmissionTimeout(waited=waited, retry_after=retry_after, reason=reason)

    def _abandon(self, waiter: _Waiter) -> None:
        now = trio.current_time()
        if waiter.grant is not None:
            # Granted in the same instant the caller gave up: give everything back.
            self.limiter.cancel(waiter.grant, now)
        elif self._waiters.pop(waiter.ticket, None) is not None:
            self.limiter.withdraw(waiter.ticket)
        if self._armed is not None and self._armed[0] == waiter.ticket:
            self._armed = None
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Hand out whatever the limiter grants at *now*; re-arm the head if needed."""
        waiters = self._waiters
        if not waiters:
            self._next_wake = None
            return
        granted, wake = self.limiter.poll(now)
        for ticket, grant in granted:
            waiter = waiters.pop(ticket, None) if isinstance(ticket, int) else None
            if waiter is None:
                # Not ours (a ticket some other user left in the limiter): give it back.
                self.limiter.cancel(grant, now)
                continue
            waiter.grant = grant
            waiter.nudge.set()
        self._next_wake = wake
        if waiters:
            head = next(iter(waiters.values()))
            if self._armed != (head.ticket, wake):
                head.nudge.set()

    # ------------------------------------------------------------------ delegates

    def finish(self, grant: Grant, actual_tokens: int | None) -> bool:
        """The request is over: settle its real usage and free its slot (see
        `Limiter.finish`); wakes whoever that admits."""
        now = trio.current_time()
        done = self.limiter.finish(grant, actual_tokens, now)
        self._pump(now)
        return done

    def cancel(self, grant: Grant) -> bool:
        """The request never reached the provider: refund it (see `Limiter.cancel`)."""
        now = trio.current_time()
        done = self.limiter.cancel(grant, now)
        self._pump(now)
        return done

    def observe(self, info: RateLimitInfo) -> None:
        """Take in a response's rate-limit headers (see `Limiter.observe`)."""
        now = trio.current_time()
        self.limiter.observe(info, now)
        self._pump(now)

    def park(self, until: float) -> None:
        """Admit nothing before *until* (absolute trio time), e.g. after a 429."""
        now = trio.current_time()
        self.limiter.park(until, now)
        self._pump(now)

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            limiter=self.limiter.snapshot(trio.current_time()),
            waiters=len(self._waiters),
            peak_waiters=self._peak,
            admitted=self._admitted,
            timed_out=self._timed_out,
            withdrawn=self._withdrawn,
        )
