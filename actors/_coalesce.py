"""Request coalescing: identical requests in flight at the same time share one upstream call.

The problem: a burst of identical requests (a popular prompt, a retried page load, N workers
embedding the same document) costs N upstream calls, N times the tokens and N times the rate
limit, for N copies of one answer.

Choices:

- **Flights.** A `Flight` is one upstream call (chat, embeddings or a stream) run in the
  runtime's own nursery (`Flights.run`), not in any caller's task, under a key that says
  which requests are identical (``actors._cache`` computes it). Every caller is a waiter of
  the flight; the first one to ask starts it, later ones join it. Because no caller owns the
  call, a caller that leaves (cancelled, deadline, closed stream) leaves alone: the call
  goes on while any waiter remains, and is cancelled when the last one leaves (its usage is
  still recorded by its connection, as for any cancelled request).
- **Streams.** A streamed flight keeps every event it received; a waiter reads them from
  the start (a late joiner gets the events so far, then the live ones) at its own pace. The
  upstream is read at its own pace too, so a slow reader holds at most one answer in memory
  and never slows the others.
- **Deadlines.** The flight runs with the budget of the waiter that started it. A waiter
  whose own deadline is earlier stops waiting at its deadline (a ``deadline`` failure); one
  whose deadline is later, and that gets the flight's ``deadline`` failure while it still
  has time, starts (or joins) a new flight with the time it has left - for a stream after
  a `Restart` event when it had already received events. So each waiter's own deadline
  bounds its wait, and no waiter is failed by another's shorter budget.
- **One terminal result each, one bill.** Every waiter gets the flight's result (or its
  exception, re-raised) with its own ``request_id``. The waiter that joined first, of those
  still there, gets it as it came (the usage and cost it is billed for); every other one
  gets a copy marked ``served_from="coalesced"`` with zero usage and cost (a failure: no
  usage), so a shared call is billed once in every account (client budgets, usage totals).
  When the first waiter leaves before taking it, the next one in join order is billed
  instead; only when it leaves after all the others took theirs (a stream reader that stops
  before the end) is the call billed to no caller - its connection still records its usage.
- **After.** An optional ``after`` step (the cache's store) runs once the waiters have the
  result, while the flight is still joinable: a request arriving meanwhile joins it instead
  of starting another call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import trio

from protocol._messages import Completion, Embeddings, Failure, ServedFrom, StreamEvent, Usage

Outcome = Completion | Embeddings | Failure
"""What a flight ends with."""

R = TypeVar("R", Completion, Embeddings)

Work = Callable[["Flight"], Awaitable[Outcome]]
"""The upstream call of a flight; a streamed one `Flight.push`es its events as they come."""


class Flight:
    """One shared upstream call: its events so far, its result, its waiters."""

    __slots__ = (
        "_changed",
        "claimed",
        "deadline",
        "done",
        "error",
        "events",
        "key",
        "result",
        "scope",
        "seats",
    )

    def __init__(self, key: bytes | None, deadline: float) -> None:
        self.key = key
        """The key waiters find it by (``None``: a private flight nobody can join)."""
        self.deadline = deadline
        """When the upstream call gives up (the starting waiter's deadline)."""
        self.events: list[StreamEvent] = []
        self.result: Outcome | None = None
        self.error: Exception | None = None
        """An exception the upstream call raised (a bug): re-raised in every waiter."""
        self.done = trio.Event()
        self._changed = trio.Event()
        self.seats: list[Seat] = []
        """The waiters still there, in the order they joined."""
        self.claimed = False
        self.scope = trio.CancelScope()

    def push(self, event: StreamEvent) -> None:
        """One more event of a streamed flight (wakes the waiters reading it)."""
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def changed(self) -> trio.Event:
        """An event set when the next event arrives or the flight ends."""
        return self._changed

    def _finish(self) -> None:
        self.done.set()
        self._changed.set()

    def outcome(self) -> Outcome:
        """The result (re-raising the upstream call's exception); only once ``done``."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def claim(self, seat: Seat) -> bool:
        """Whether *seat*, taking the result, is billed for it: the first time the result
        is taken by the waiter that joined first among those still there (see the module
        header)."""
        if self.claimed or not self.seats or self.seats[0] is not seat:
            return False
        self.claimed = True
        return True


class Seat:
    """One waiter's place on a flight, from `Flights.join` to `Flights.leave`."""

    __slots__ = ("flight", "joined")

    def __init__(self, flight: Flight, joined: bool) -> None:
        self.flight = flight
        self.joined = joined
        """It joined a flight another request had started."""


class Flights:
    """The table of flights in progress and the nursery they run in."""

    def __init__(self) -> None:
        self._table: dict[bytes, Flight] = {}
        self._nursery: trio.Nursery | None = None
        self.joined = 0
        """Requests that joined a flight another request had started."""

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def in_flight(self) -> int:
        """Shared flights in progress."""
        return len(self._table)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery the flights run in until cancelled (then they are cancelled too,
        and their waiters get the ``cancelled`` result)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def join(
        self,
        key: bytes | None,
        deadline: float,
        work: Work,
        cancelled: Callable[[], Failure],
        after: Callable[[Outcome], Awaitable[None]] | None = None,
    ) -> Seat:
        """A seat on the flight of *key*: an existing one, or a new one that runs *work*
        until *deadline* (*cancelled* makes the result when it is cancelled, *after* runs
        once it has a result). ``key=None`` starts a private flight. Every `join` is paired
        with one `leave`."""
        if key is not None:
            flight = self._table.get(key)
            if flight is not None:
                seat = Seat(flight, joined=True)
                flight.seats.append(seat)
                self.joined += 1
                return seat
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("flights are not running (start Flights.run first)")
        flight = Flight(key, deadline)
        seat = Seat(flight, joined=False)
        flight.seats.append(seat)
        if key is not None:
            self._table[key] = flight
        nursery.start_soon(self._fly, flight, work, cancelled, after)
        return seat

    def leave(self, seat: Seat) -> None:
        """A waiter is gone (it took the result, or gave up): the last one to leave an
        unfinished flight cancels its upstream call."""
        flight = seat.flight
        if seat in flight.seats:
            flight.seats.remove(seat)
        if not flight.seats and not flight.done.is_set():
            flight.scope.cancel()
            self._forget(flight)

    def _forget(self, flight: Flight) -> None:
        if flight.key is not None and self._table.get(flight.key) is flight:
            del self._table[flight.key]

    async def _fly(
        self,
        flight: Flight,
        work: Work,
        cancelled: Callable[[], Failure],
        after: Callable[[Outcome], Awaitable[None]] | None,
    ) -> None:
        try:
            try:
                with flight.scope:
                    flight.result = await work(flight)
            except Exception as exc:  # a bug below: every waiter re-raises it, none hangs
                flight.error = exc
            finally:
                if flight.result is None and flight.error is None:
                    flight.result = cancelled()
                flight._finish()
            if after is not None and flight.result is not None and flight.error is None:
                await after(flight.result)
        finally:
            self._forget(flight)


async def wait_for(flight: Flight, deadline: float) -> Outcome | None:
    """Wait for *flight*'s outcome, at most until *deadline* (``None``: the deadline came
    first). A deadline no earlier than the flight's is not needed: the flight ends by then."""
    if deadline < flight.deadline:
        with trio.move_on_at(deadline):
            await flight.done.wait()
    else:
        await flight.done.wait()
    return flight.outcome() if flight.done.is_set() else None


def shared_copy(
    result: R,
    *,
    request_id: str,
    latency: float | None,
    served_from: ServedFrom,
    time_to_first_token: float | None = None,
) -> R:
    """*result* as a caller that is not billed for it gets it (see the module header):
    ``served_from`` set, zero usage and cost (``None`` stays ``None``: no price configured),
    no attempts, its own request id, latency and time to first token."""
    common = {
        "request_id": request_id,
        "usage": Usage(),
        "cost": None if result.cost is None else 0.0,
        "attempts": 0,
        "latency": latency,
        "served_from": served_from,
    }
    if isinstance(result, Completion):
        return msgspec.structs.replace(
            result, produced_by=[], time_to_first_token=time_to_first_token, **common
        )
    return msgspec.structs.replace(result, **common)
