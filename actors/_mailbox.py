"""Mailboxes, envelopes and actor refs: how a caller reaches an actor.

The problem: a provider connection must accept work from any number of callers, but it can
only do so much at once, and a caller must never wait forever nor get two answers. The
options were (a) callers invoke methods on a shared object under a lock, (b) a queue per actor
with a reply path per request. (a) gives no backpressure and no place to shed stale work; we
take (b), the actor model, with three rules:

1. **Bounded mailbox.** User requests go through a bounded trio memory channel. When it is
   full a caller either waits (backpressure, bounded by its own deadline) or is rejected at
   once with `QueueFull` carrying a retry-after estimate: `MailboxConfig.when_full`.
2. **One reply, exactly.** Each request travels in an `Envelope` holding a one-shot result
   slot and a `trio.Event` (the cheapest reply path we measured, cheaper than a channel per
   request). ``resolve()`` succeeds once; later calls are ignored and return False, so a
   request can never end twice. Streamed replies also flow through a bounded per-request
   channel, so a slow reader slows the producer instead of growing a buffer.
3. **Control lane.** Shutdown, overrides and breaker commands travel through a separate
   channel served by its own task, so they are never stuck behind user traffic.

The mailbox belongs to the actor's *slot*, not to one incarnation: when a crashed actor is
restarted, requests still queued are served by the next incarnation.

Cancellation: a caller that gives up (cancelled, or its deadline passed while waiting for the
answer) marks the envelope abandoned and cancels the scope the actor bound to it, so the
upstream HTTP request is closed at once.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, Literal, TypeVar

import msgspec
import trio

Req = TypeVar("Req")
Rep = TypeVar("Rep")
Ev = TypeVar("Ev")
Ctl = TypeVar("Ctl")

_UNSET: object = object()


class QueueFull(Exception):
    """The mailbox is full and its policy is ``reject`` (or the caller could not wait).
    ``retry_after`` estimates when a slot will be free, in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"mailbox full; retry in about {retry_after:.2f}s")
        self.retry_after = retry_after


class MailboxClosed(Exception):
    """The actor behind this mailbox was stopped for good."""


class Interrupted(Exception):
    """Raised by `Mailbox.get` in a task woken by `Mailbox.interrupt_getters`."""


class _Interrupt:
    """What `Mailbox.interrupt_getters` sends: never an envelope, never queued."""

    __slots__ = ()


_INTERRUPT = _Interrupt()


class Envelope(Generic[Req, Rep, Ev]):
    """One request in flight: the payload, its absolute deadline (trio clock, ``inf`` for
    none), the one-shot reply slot and, for streams, the send side of the reply channel."""

    __slots__ = (
        "_event",
        "_result",
        "_scope",
        "abandoned",
        "deadline",
        "enqueued_at",
        "request",
        "stream",
    )

    def __init__(
        self,
        request: Req,
        *,
        deadline: float = math.inf,
        stream: trio.MemorySendChannel[Ev] | None = None,
    ) -> None:
        self.request = request
        self.deadline = deadline
        self.stream = stream
        self.enqueued_at = 0.0
        self.abandoned = False
        self._event = trio.Event()
        self._result: object = _UNSET
        self._scope: trio.CancelScope | None = None

    @property
    def resolved(self) -> bool:
        return self._result is not _UNSET

    def resolve(self, result: Rep) -> bool:
        """Deliver the terminal result. Returns False (and changes nothing) if the envelope
        was already resolved: a request ends exactly once."""
        if self._result is not _UNSET:
            return False
        self._result = result
        self._event.set()
        if self.stream is not None:
            self.stream.close()
        return True

    def bind_scope(self, scope: trio.CancelScope) -> None:
        """The actor binds the cancel scope of the work done for this envelope, so that an
        abandoning caller can stop it. If the caller already left, the scope is cancelled."""
        self._scope = scope
        if self.abandoned:
            scope.cancel()

    def abandon(self) -> None:
        """The caller went away: stop the work (if any is running) and drop the result."""
        self.abandoned = True
        if self._scope is not None:
            self._scope.cancel()

    async def wait(self) -> Rep:
        """Wait for the terminal result."""
        await self._event.wait()
        return self._result  # type: ignore[return-value]

    def result_nowait(self) -> Rep:
        if self._result is _UNSET:
            raise trio.WouldBlock
        return self._result  # type: ignore[return-value]


class MailboxStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a mailbox."""

    capacity: int
    queued: int
    peak_queued: int
    in_flight: int
    peak_in_flight: int
    accepted: int
    rejected: int
    shed: int
    waiting_senders: int


class Mailbox(Generic[Req, Rep, Ev]):
    """A bounded mailbox of `Envelope`s plus its statistics.

    ``in_flight`` is maintained by the actor through `started` / `finished`; ``shed`` counts
    envelopes dropped because their deadline passed before any work was spent on them.
    """

    def __init__(self, capacity: int, *, when_full: Literal["wait", "reject"] = "wait") -> None:
        if capacity < 1:
            raise ValueError("mailbox capacity must be at least 1")
        self.capacity = capacity
        self.when_full = when_full
        send, receive = trio.open_memory_channel[Envelope[Req, Rep, Ev] | _Interrupt](capacity)
        self._send = send
        self._receive = receive
        self._peak_queued = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._accepted = 0
        self._rejected = 0
        self._shed = 0
        self._service_ewma = 0.0
        self._closed = False

    # -- caller side -------------------------------------------------------------------

    def retry_after_estimate(self) -> float:
        """How long until a slot frees up, from the queue depth and recent service times."""
        queued = self._send.statistics().current_buffer_used
        per_item = self._service_ewma or 0.1
        parallel = max(1, self._in_flight)
        return round(max(0.05, per_item * (queued + 1) / parallel), 3)

    def put_nowait(self, envelope: Envelope[Req, Rep, Ev]) -> bool:
        """Enqueue or raise `QueueFull` at once; `MailboxClosed` if the actor is gone.
        Returns True when the envelope went straight to an actor task waiting in `get`."""
        try:
            self._send.send_nowait(envelope)
        except trio.WouldBlock:
            self._rejected += 1
            raise QueueFull(self.retry_after_estimate()) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise MailboxClosed from None
        return self._note_put(envelope)

    async def put(self, envelope: Envelope[Req, Rep, Ev], *, checkpoint: bool = True) -> bool:
        """Enqueue, honouring the ``when_full`` policy. With ``wait`` the caller waits for a
        slot until the envelope's deadline, then gets `QueueFull`.

        Returns True when the envelope went straight to an actor task waiting in `get`
        (it was never queued: that actor now answers for it, deadline included). With
        *checkpoint* false an envelope accepted at once costs no schedule point - for a
        caller whose next step is to wait for the reply, which is one."""
        if self.when_full == "reject":
            handed = self.put_nowait(envelope)
            if checkpoint:
                await trio.lowlevel.checkpoint()
            return handed
        try:
            self._send.send_nowait(envelope)
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise MailboxClosed from None
        else:
            handed = self._note_put(envelope)
            if checkpoint:
                await trio.lowlevel.checkpoint()
            return handed
        with trio.move_on_at(envelope.deadline):
            try:
                await self._send.send(envelope)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise MailboxClosed from None
            return self._note_put(envelope)
        self._rejected += 1
        raise QueueFull(self.retry_after_estimate())

    def _note_put(self, envelope: Envelope[Req, Rep, Ev]) -> bool:
        """Count an accepted envelope; True when it was handed to a waiting `get`."""
        envelope.enqueued_at = trio.current_time()
        self._accepted += 1
        queued = self._send.statistics().current_buffer_used
        if queued > self._peak_queued:
            self._peak_queued = queued
        return queued == 0

    # -- actor side --------------------------------------------------------------------

    async def get(self) -> Envelope[Req, Rep, Ev]:
        """The next envelope (FIFO). Raises `MailboxClosed` once closed and drained, and
        `Interrupted` in a task woken by `interrupt_getters`."""
        try:
            item = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MailboxClosed from None
        if isinstance(item, _Interrupt):
            raise Interrupted
        return item

    def get_nowait(self) -> Envelope[Req, Rep, Ev]:
        """The next envelope, or `trio.WouldBlock`."""
        try:
            item = self._receive.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise MailboxClosed from None
        assert not isinstance(item, _Interrupt)  # only ever handed to a waiting task
        return item

    def interrupt_getters(self, count: int) -> int:
        """Make up to *count* tasks waiting in `get` right now raise `Interrupted` (an actor
        retiring idle workers). Only tasks already waiting are woken, so nothing queued is
        passed over; returns how many were."""
        woken = 0
        while woken < count and self._send.statistics().tasks_waiting_receive:
            try:
                self._send.send_nowait(_INTERRUPT)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                break
            woken += 1
        return woken

    def note_shed(self) -> None:
        self._shed += 1

    def started(self) -> None:
        self._in_flight += 1
        if self._in_flight > self._peak_in_flight:
            self._peak_in_flight = self._in_flight

    def finished(self, service_time: float) -> None:
        self._in_flight -= 1
        self._service_ewma = (
            service_time
            if not self._service_ewma
            else 0.8 * self._service_ewma + 0.2 * service_time
        )

    @property
    def closed(self) -> bool:
        """True once `close` was called: the actor drains and takes no new work."""
        return self._closed

    def close(self) -> None:
        """No new envelopes are accepted; queued ones can still be taken."""
        self._closed = True
        self._send.close()

    def statistics(self) -> MailboxStatistics:
        stats = self._send.statistics()
        return MailboxStatistics(
            capacity=self.capacity,
            queued=stats.current_buffer_used,
            peak_queued=self._peak_queued,
            in_flight=self._in_flight,
            peak_in_flight=self._peak_in_flight,
            accepted=self._accepted,
            rejected=self._rejected,
            shed=self._shed,
            waiting_senders=stats.tasks_waiting_send,
        )


async def ask(mailbox: Mailbox[Req, Rep, Ev], request: Req, *, deadline: float = math.inf) -> Rep:
    """Send *request* and wait for its one reply. If the caller is cancelled, the envelope is
    abandoned (the actor stops working on it). Raises `QueueFull` / `MailboxClosed`."""
    envelope: Envelope[Req, Rep, Ev] = Envelope(request, deadline=deadline)
    try:
        await mailbox.put(envelope)
        return await envelope.wait()
    except BaseException:
        envelope.abandon()
        raise


@asynccontextmanager
async def ask_stream(
    mailbox: Mailbox[Req, Rep, Ev],
    request: Req,
    *,
    deadline: float = math.inf,
    buffer: int = 16,
) -> AsyncIterator[tuple[trio.MemoryReceiveChannel[Ev], Envelope[Req, Rep, Ev]]]:
    """Send *request* and receive its events through a bounded channel of *buffer* items.

    Yields ``(events, envelope)``: iterate ``events`` until it ends, then ``await
    envelope.wait()`` for the terminal result. Leaving the block early abandons the request.
    """
    send, receive = trio.open_memory_channel[Ev](buffer)
    envelope: Envelope[Req, Rep, Ev] = Envelope(request, deadline=deadline, stream=send)
    try:
        await mailbox.put(envelope)
        with receive:
            yield receive, envelope
    finally:
        if not envelope.resolved:
            envelope.abandon()
