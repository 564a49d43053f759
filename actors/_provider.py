"""One provider connection: its durable state (`Connection`) and the actor that serves it
(`ProviderActor`).

The problem: a request to an LLM provider can fail in a dozen ways, slowly, and the provider
punishes clients that react badly (retry storms, 429 spirals). Each connection therefore owns
its own mailbox, breaker, limiter and retry policy, and requests flow through one pipeline:

    mailbox → shed if expired → admission (limiter, FIFO) → breaker permission → attempt
            (httpx, streaming) → decode (dialect) → classify → record (breaker, limiter,
            metrics, log) → retry (policy + budget) or finish

**Two objects, because of restarts.** A `Connection` is the durable slot: config, mailbox,
breaker, limiter, retry budget and metrics. A `ProviderActor` is one *incarnation* serving it:
its HTTP clients and its tasks. When an incarnation crashes (a bug), its in-flight callers get
a ``crashed`` failure at once, requests still queued stay in the mailbox, and the supervisor
starts a new incarnation on the same slot: breaker open-until, limiter debt and parks survive;
the HTTP clients do not.

**Control lane.** Overrides and breaker commands are synchronous methods on `Connection`: they
take effect immediately and can never queue behind user traffic. A request captures the
connection's *generation* (config, dialect, policies) when it starts, so a hot swap
(`Connection.override`) affects new requests only and in-flight ones finish as they began.

**Time limits.** Every wait is bounded by the request's absolute deadline (trio clock), which
covers queueing, admission, attempts, retry sleeps and streaming (also a caller that stops
reading a stream). A request still queued when its deadline passes is shed by its caller's
side (`Connection.ask`, `ReplyStream`), so no caller waits past its deadline for a busy or
crashed actor; the actor skips it later. Inside an attempt: connect (httpx), time to first
token (streamed: the first event; non-streamed: the whole body) and inter-chunk stall (once
any body byte arrived, streamed or not) - trio cancel scopes, which also work with in-memory
transports that httpx timeouts do not reach. Moving a scope's deadline costs ~3 us, as much
as decoding a chunk, and chunks read in one wake-up arrive microseconds apart: so the stall
deadline is moved before a read only when it moves by more than `REARM_SLACK_S` (1 ms). A
stall is then declared after ``stall`` seconds of silence, or up to 1 ms sooner when the
last chunks came less than 1 ms apart (trio's timers are of that resolution too); the
deadline and time to first token are exact, and a deadline that must move earlier always
does.

**One scope per attempt.** A trio cancel scope costs ~6 us, as much as the rest of a
chunk's handling, so the hot path has one per attempt: it covers sending, the body and its
drain, its deadline follows the limit in force (moved before each read), and it is bound to
the envelope, so the caller leaving cancels it (`_Abandoned` then carries that out as a
cancellation). Waiting for the limiter or sleeping before a retry - off the hot path - bind
scopes of their own. A request an idle worker took at once needs no watch on the caller's
side either (`Mailbox.put` says so): only a queued request's caller sheds it at its deadline.

**Workers.** An incarnation serves requests with long-lived worker tasks, one per request in
flight (hired as concurrency grows, up to ``max_in_flight``, see `ProviderActor._work`), so
a request costs no task of its own and goes from caller to worker in one hand-off.

**What a timeout says.** A timeout names the limit that fired and its value (``no first
token within 3s (timeouts.first_token)``, ``stream stalled: no data for 5s (timeouts.stall)``,
``connect timed out after 10s (timeouts.connect)``). When the request's own deadline (the
total budget) ends an attempt, the ``deadline`` failure says how many attempts were made on
this connection, how far the last one got (no response yet, no first token yet, streaming)
and what the attempt before it hit - never just "the deadline passed".

**Silent attempts.** An attempt is *silent* when the request went out and nothing came of it
within the first-token limit: a timeout before the head, a head and then no first token
(``timeouts.first_token``), or the provider closing the connection before the head
(a reset, or a clean close: httpx's ``ReadError`` / ``RemoteProtocolError``) - at once or
after minutes of silence alike, since either way this target took the request and did not
answer it, and waiting through the silence again is the expensive part. Its kind stays what
it is (``timeout``; ``connection`` for a close, whose message says it came with no response)
so metrics and breakers see the real signal. What changes is retrying: when the router says a
fallback exists (`Call.failover_available`), a silent attempt ends this connection's attempts
so the router fails over at once; alone, the connection retries it with backoff as before.
Failing to connect at all (``ConnectError``) or losing the connection while still writing the
request is not silent: the provider never had the request, and a retry is cheap.

**Secrets never leave.** Providers and proxies echo credentials in error bodies ("Incorrect
API key provided: sk-..."), and httpx errors quote URLs. Each generation holds a `Redactor`
built from its config (API key, credential headers, credential query parameters; see
`protocol._classify`), and every `Failure` a request ends with - provider messages, decoded
error events, translated exceptions, crash descriptions - passes through it before it is
resolved, so callers, the router, the gateway, logs and metrics only ever see redacted text.

**Bodies end cleanly.** A finished stream's trailing bytes are drained (bounded) so the HTTP
connection can be reused, and a body abandoned early is finished inside a cancelled scope
(`_discard`) so no async generator of httpx's chain is left to the garbage collector.

**Exactly once.** Each request ends with exactly one `Completion`/`Embeddings` or `Failure`
(the envelope's one-shot slot). Usage of every attempt is recorded exactly once, in a
``finally`` block that runs synchronously even when the caller cancels or the stream breaks,
and is attributed to this connection and the model that produced it.

**HTTP clients.** One `httpx.AsyncClient` per concurrent attempt, reused from a free list:
sharing one client's connection pool between many concurrent tasks costs ~3x the CPU per
request (encode/httpx#3215), while a client per task does not contend. Clients share one SSL
context, so creating one is cheap.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import msgspec
import trio

from protocol._accumulate import StreamAccumulator
from protocol._classify import Redactor
from protocol._config import ConnectionConfig, Price
from protocol._dialect import Dialect, HttpRequest, dialect_for
from protocol._errors import ErrorKind, ProtocolError, parks_limiter
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Finished,
    StreamEvent,
    TextDelta,
    Usage,
    UsageUpdate,
)
from protocol._ratelimit import RateLimitInfo, parse_rate_limit_headers
from protocol._validate import refusal

from ._admission import Admission, AdmissionTimeout
from ._breaker import Breaker, BreakerSnapshot, BreakerState, Permit
from ._groups import first_error, only_cancelled
from ._http_errors import failure_from_exception, is_httpx_error
from ._limiter import Grant, Limiter, LimiterSnapshot
from ._mailbox import (
    Envelope,
    Interrupted,
    Mailbox,
    MailboxClosed,
    MailboxStatistics,
    QueueFull,
)
from ._metrics import ConnectionMetrics, ConnectionMetricsSnapshot, cost_of, price_for
from ._retry import RetryBudget, RetryPolicy

if TYPE_CHECKING:
    from ._shared_state import ConnectionLink

log = logging.getLogger("switchboard.provider")

Request = ChatRequest | EmbedRequest
Reply = Completion | Embeddings | Failure


class Call(msgspec.Struct, frozen=True):
    """What a `ProviderActor` is asked: *request* sent to *model* (a provider model name).

    ``failover_available`` tells the connection another target exists: a silent attempt (no
    response head: a timeout, or the provider closing the connection; see the module header)
    then ends this connection's attempts instead of being retried, so the router can fail
    over without waiting through the retry schedule.
    """

    request: ChatRequest | EmbedRequest
    model: str
    failover_available: bool = False


ProviderEnvelope = Envelope[Call, Reply, StreamEvent]

DEFAULT_MAX_IN_FLIGHT = 256
_REFUSING = frozenset({BreakerState.OPEN, BreakerState.FORCED_OPEN})
STREAM_BUFFER = 16
DRAIN_S = 1.0
"""How long a finished stream may take to deliver the rest of its body (see `_drain`)."""
DRAIN_BYTES = 65536
REARM_SLACK_S = 0.001
"""A stall deadline is moved before a read only when it moves later by more than this."""


class ConnectionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of one connection."""

    name: str
    provider: str
    mailbox: MailboxStatistics
    breaker: BreakerSnapshot
    limiter: LimiterSnapshot
    metrics: ConnectionMetricsSnapshot
    incarnation: int
    running: bool


def deadline_after(budget: float) -> float:
    """The absolute deadline (trio clock) *budget* seconds from now; a budget that is not a
    positive number (0, negative, NaN) means "now": the request is already out of time."""
    now = trio.current_time()
    return now + budget if budget > 0 else now


class _Generation:
    """What a request captures when it starts: config and the policies derived from it."""

    __slots__ = ("config", "dialect", "redactor", "retry")

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self.dialect: Dialect = dialect_for(config.provider)
        self.retry = RetryPolicy(config.retry)
        self.redactor = Redactor.for_connection(config)


_SSL: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    global _SSL
    if _SSL is None:
        _SSL = httpx.create_ssl_context()  # certifi's CAs (and SSL_CERT_FILE), as httpx does
    return _SSL


class Connection:
    """The durable slot of one provider connection, and the way callers reach it.

    ``transport`` replaces the network (an `actors.testing.FakeTransport`, or any
    `httpx.AsyncBaseTransport`); ``rng`` drives retry jitter (seed it for reproducible runs);
    ``wall_clock`` (default `time.time`) is the epoch clock used to read absolute times in
    provider headers (an HTTP-date ``retry-after``, RFC 3339 resets) - tests under a virtual
    trio clock pass one that moves with it, e.g. ``lambda: EPOCH + trio.current_time()``.
    ``shared`` links it to state shared with other processes (``[runtime] state``): its
    requests are then admitted through the link too (`actors._shared_state`).
    """

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        max_in_flight: int | None = None,
        wall_clock: Callable[[], float] | None = None,
        shared: ConnectionLink | None = None,
    ) -> None:
        self.name = config.name
        self.shared = shared
        self.wall_clock: Callable[[], float] = wall_clock or time.time
        self._generation = _Generation(config)
        self.breaker = Breaker(config.breaker)
        self.limiter = Limiter(config.rate_limit)
        self.admission = (
            Admission(self.limiter) if shared is None else shared.admission(self.limiter)
        )
        self.budget = RetryBudget(config.retry)
        self.metrics = ConnectionMetrics()
        self.mailbox: Mailbox[Call, Reply, StreamEvent] = Mailbox(
            config.mailbox.capacity, when_full=config.mailbox.when_full
        )
        self.transport = transport
        self.rng = rng or random.Random()
        self._fixed_in_flight = max_in_flight
        self.max_in_flight = (
            max_in_flight or config.rate_limit.concurrent_requests or (DEFAULT_MAX_IN_FLIGHT)
        )
        # How `override` resizes the running incarnation's workers.
        self._resize: Callable[[int], None] | None = None
        self.incarnation = 0
        self.running = False
        # Envelopes an incarnation has taken from the mailbox and not yet finished.
        self._taken: set[ProviderEnvelope] = set()
        self.ttft_ewma: float | None = None

    # -- configuration (control lane: synchronous, never queued) -------------------------

    @property
    def config(self) -> ConnectionConfig:
        return self._generation.config

    def override(self, config: ConnectionConfig) -> None:
        """Hot swap: requests that start from now on use *config*; in-flight ones finish with
        the settings they started with. A changed breaker or rate-limit section replaces that
        machine (its state starts fresh); otherwise breaker and limiter state are kept."""
        old = self._generation.config
        if config.name != old.name:
            config = msgspec.structs.replace(config, name=old.name)
        # Build everything first (each constructor validates), then swap: a bad config
        # raises and changes nothing. Attempts in flight keep the machines they started with.
        generation = _Generation(config)
        breaker = Breaker(config.breaker) if config.breaker != old.breaker else self.breaker
        if config.rate_limit != old.rate_limit:
            limiter = Limiter(config.rate_limit)
            shared = self.shared
            admission = Admission(limiter) if shared is None else shared.admission(limiter)
        else:
            limiter, admission = self.limiter, self.admission
        budget = RetryBudget(config.retry) if config.retry != old.retry else self.budget
        self._generation = generation
        self.breaker, self.limiter, self.admission, self.budget = (
            breaker,
            limiter,
            admission,
            budget,
        )
        if self._fixed_in_flight is None:
            self.max_in_flight = config.rate_limit.concurrent_requests or DEFAULT_MAX_IN_FLIGHT
            if self._resize is not None:
                self._resize(self.max_in_flight)

    def force_open(self) -> None:
        """Refuse every request until `force_close` (an operator's command; idempotent)."""
        if self.breaker.state is not BreakerState.FORCED_OPEN:
            self.breaker.force_open(trio.current_time())
            self._drain_transitions()

    def force_close(self) -> None:
        """Close the breaker now, forgetting its window (idempotent)."""
        if self.breaker.state is not BreakerState.CLOSED:
            self.breaker.force_close(trio.current_time())
            self._drain_transitions()

    def _drain_transitions(self, breaker: Breaker | None = None) -> None:
        for t in (breaker or self.breaker).drain_transitions():
            self.metrics.record_transition(t.from_state.value, t.to_state.value)
            log.info(
                "%s: breaker %s -> %s (%s)",
                self.name,
                t.from_state.value,
                t.to_state.value,
                t.reason,
                extra={
                    "connection": self.name,
                    "breaker_from": t.from_state.value,
                    "breaker_to": t.to_state.value,
                },
            )

    # -- availability (for the router) --------------------------------------------------

    def unavailable_for(self, now: float) -> float | None:
        """Seconds until this connection may accept work, or ``None`` if it may now: its
        breaker refuses (``math.inf`` while forced open: only an operator reopens it) or its
        limiter is parked by a 429."""
        if self.mailbox.closed:
            return math.inf  # draining for removal or shutdown: takes no new work
        wait: float | None = None
        state = self.breaker.poll(now)  # cheap: this runs for every target of every request
        if state is BreakerState.FORCED_OPEN:
            return math.inf
        if state is BreakerState.OPEN:
            open_until = self.breaker.open_until
            if open_until is not None and open_until > now:
                wait = open_until - now
        parked = self.limiter.parked_until
        if parked is not None and parked > now and (wait is None or parked - now > wait):
            wait = parked - now
        return wait

    def load(self) -> int:
        stats = self.mailbox.statistics()
        return stats.queued + stats.in_flight

    # -- requests -----------------------------------------------------------------------

    def _deadline(self, request: Request, timeout: float | None) -> float:
        budget = timeout if timeout is not None else request.timeout
        return deadline_after(self.config.timeout if budget is None else budget)

    def _call(self, request: Request, model: str | None, failover_available: bool = False) -> Call:
        return Call(request, self.config.resolve_model(model or request.model), failover_available)

    def _rejection(self, exc: Exception, call: Call) -> Failure:
        if isinstance(exc, QueueFull):
            return Failure.of(
                ErrorKind.QUEUE_FULL,
                f"connection {self.name!r} has {self.mailbox.capacity} requests queued; "
                "retry later or raise mailbox.capacity",
                retry_after=exc.retry_after,
                connection=self.name,
                model=call.model,
                request_id=call.request.request_id,
            )
        return Failure.of(
            ErrorKind.CANCELLED,
            f"connection {self.name!r} is shut down",
            connection=self.name,
            model=call.model,
            request_id=call.request.request_id,
        )

    async def chat(
        self, request: ChatRequest, *, model: str | None = None, timeout: float | None = None
    ) -> Completion | Failure:
        """Send *request* (non-streamed) and return its one terminal result. *model*
        overrides ``request.model`` (aliases resolve through the connection's ``models``).
        An unsound request gets a ``bad_request`` failure at once."""
        refused = refusal(request, model_required=False)
        if refused is not None:
            return refused
        deadline = self._deadline(request, timeout)
        result = await self._enqueue(self._call(request, model), deadline)
        assert not isinstance(result, Embeddings)
        return result

    async def embed(
        self, request: EmbedRequest, *, model: str | None = None, timeout: float | None = None
    ) -> Embeddings | Failure:
        """Compute embeddings through the same pipeline as chat."""
        refused = refusal(request, model_required=False)
        if refused is not None:
            return refused
        deadline = self._deadline(request, timeout)
        result = await self._enqueue(self._call(request, model), deadline)
        assert not isinstance(result, Completion)
        return result

    async def ask(self, call: Call, *, deadline: float) -> Reply:
        """The raw request/reply: enqueue *call*, wait for its one result. An unsound request
        is refused here (``bad_request``), before it can reach the actor."""
        refused = refusal(call.request, model_required=False)
        if refused is not None:
            return refused
        return await self._enqueue(call, deadline)

    async def _enqueue(self, call: Call, deadline: float) -> Reply:
        envelope: ProviderEnvelope = Envelope(call, deadline=deadline)
        try:
            # No checkpoint: waiting for the result is the next one.
            handed = await self.mailbox.put(envelope, checkpoint=False)
        except (QueueFull, MailboxClosed) as exc:
            return self._rejection(exc, call)
        except BaseException:
            envelope.abandon()
            raise
        try:
            if handed:  # an idle worker took it: the actor enforces the deadline
                return await envelope.wait()
            return await self._result(envelope)
        except BaseException:
            envelope.abandon()
            raise

    async def _result(self, envelope: ProviderEnvelope) -> Reply:
        """Wait for *envelope*'s result. If its deadline passes first while no incarnation
        has taken it (it is still queued, or no actor is running), shed it here: a caller
        never waits past its deadline for an actor that is busy or gone. An envelope an
        actor has taken is left to the actor, which enforces the same deadline itself."""
        if envelope.resolved:
            return await envelope.wait()
        with trio.move_on_at(envelope.deadline):
            return await envelope.wait()
        self._expire(envelope)
        return await envelope.wait()

    def _expire(self, envelope: ProviderEnvelope) -> None:
        if envelope.resolved or envelope in self._taken:
            return
        call = envelope.request
        waited = trio.current_time() - envelope.enqueued_at
        envelope.abandon()
        envelope.resolve(
            Failure.of(
                ErrorKind.DEADLINE,
                f"deadline passed after {waited:.3f}s in the queue of {self.name!r}; "
                "no tokens were spent",
                connection=self.name,
                model=call.model,
                request_id=call.request.request_id,
            )
        )
        self.mailbox.note_shed()
        self.metrics.requests += 1
        self.metrics.record_outcome(ErrorKind.DEADLINE)

    @asynccontextmanager
    async def stream(
        self,
        request: ChatRequest,
        *,
        model: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        buffer: int = STREAM_BUFFER,
        failover_available: bool = False,
    ) -> AsyncIterator[ReplyStream]:
        """Stream *request*: ``async with conn.stream(req) as s: async for ev in s: ...``,
        then ``s.result`` is the `Completion` or `Failure`. Leaving the block early cancels
        the upstream request (its usage is still recorded). An unsound request ends at once
        with a ``bad_request`` failure."""
        refused = refusal(request, model_required=False)
        if refused is not None:
            call = Call(request, refused.model)
            deadline = trio.current_time()
        else:
            call = self._call(request, model, failover_available)
            if deadline is None:
                deadline = self._deadline(request, timeout)
        async with self._open_stream(call, deadline, buffer, refused) as handle:
            yield handle

    @asynccontextmanager
    async def _open_stream(
        self,
        call: Call,
        deadline: float,
        buffer: int = STREAM_BUFFER,
        refused: Failure | None = None,
    ) -> AsyncIterator[ReplyStream]:
        """`stream` for a request already checked (the router checks at its door): enqueue
        *call* with its reply channel, or end it at once with *refused*."""
        send, receive = trio.open_memory_channel[StreamEvent](buffer)
        envelope: ProviderEnvelope = Envelope(call, deadline=deadline, stream=send)
        handed = False
        try:
            if refused is not None:
                envelope.resolve(refused)
            else:
                # No checkpoint: the caller's first read is one.
                handed = await self.mailbox.put(envelope, checkpoint=False)
        except (QueueFull, MailboxClosed) as exc:
            envelope.resolve(self._rejection(exc, call))
        except BaseException:
            envelope.abandon()
            raise
        # Taken at once by an idle worker: the actor enforces the deadline, the caller's
        # side needs no watch of its own (see `ReplyStream`).
        handle = ReplyStream(receive, envelope, None if handed else self)
        try:
            with receive:
                yield handle
        finally:
            if not envelope.resolved:
                envelope.abandon()

    def statistics(self) -> ConnectionStatistics:
        now = trio.current_time()
        return ConnectionStatistics(
            name=self.name,
            provider=self.config.provider,
            mailbox=self.mailbox.statistics(),
            breaker=self.breaker.snapshot(now),
            limiter=self.limiter.snapshot(now),
            metrics=self.metrics.snapshot(),
            incarnation=self.incarnation,
            running=self.running,
        )


class ReplyStream:
    """The caller's side of a streamed request: iterate events, then read ``result``.

    It is its own async iterator (not an async generator, which a caller breaking out of
    its loop would leave to the garbage collector). With *connection* (the request was
    queued), waiting for an event past the request's deadline while the request is still
    queued sheds it (see `Connection.ask`); without, an actor took the request at once and
    enforces its deadline itself."""

    def __init__(
        self,
        events: trio.MemoryReceiveChannel[StreamEvent],
        envelope: ProviderEnvelope,
        connection: Connection | None = None,
    ) -> None:
        self._events = events
        self._envelope = envelope
        self._connection = connection
        self._guard = envelope.deadline if connection is not None else math.inf

    def __aiter__(self) -> ReplyStream:
        return self

    async def __anext__(self) -> StreamEvent:
        events = self._events
        if self._guard != math.inf:
            # Until the first event, the request may still be queued: shed it at its deadline.
            with trio.move_on_at(self._guard):
                try:
                    event = await events.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    raise StopAsyncIteration from None
                # An event came, so an actor has the request: its own limits apply now.
                self._guard = math.inf
                return event
            self._guard = math.inf
            if self._connection is not None:
                self._connection._expire(self._envelope)
        # The hot path: an event already buffered costs no scheduling round trip (the buffer
        # is bounded, so a consumer yields at least every `STREAM_BUFFER` events).
        try:
            return events.receive_nowait()
        except trio.WouldBlock:
            pass
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        try:
            return await events.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def next_nowait(self) -> StreamEvent:
        """The next event if one is already buffered (`__anext__` without awaiting: for a
        reader that pays a coroutine per event otherwise). Raises `trio.WouldBlock` when
        none is (or before the first event of a queued request: `__anext__` watches its
        deadline), `StopAsyncIteration` at the end."""
        if self._guard != math.inf:
            raise trio.WouldBlock
        try:
            return self._events.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        """Stop the request now: its upstream request is cancelled (its usage still
        recorded) and the stream ends with a ``cancelled`` failure. Idempotent."""
        if not self._envelope.resolved:
            self._envelope.abandon()

    async def wait(self) -> Completion | Failure:
        """The terminal result (waits for it if the stream is still running)."""
        if self._connection is not None:
            result = await self._connection._result(self._envelope)
        else:
            result = await self._envelope.wait()
        assert not isinstance(result, Embeddings)
        return result

    @property
    def result(self) -> Completion | Failure:
        """The terminal result; only valid once the events are exhausted."""
        result = self._envelope.result_nowait()
        assert not isinstance(result, Embeddings)
        return result


class _ClientPool:
    """A free list of `httpx.AsyncClient`s: one per concurrent attempt (see module header)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None, connect: float | None):
        self._transport = transport
        self._timeout = httpx.Timeout(None, connect=connect)
        self._free: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []

    def checkout(self) -> httpx.AsyncClient:
        if self._free:
            return self._free.pop()
        if self._transport is not None:
            client = httpx.AsyncClient(transport=self._transport, timeout=self._timeout)
        else:
            # No explicit transport: httpx then honours HTTP(S)_PROXY / NO_PROXY like a plain
            # client would; one shared certifi SSL context keeps creating clients cheap.
            client = httpx.AsyncClient(
                verify=_ssl_context(),
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                timeout=self._timeout,
            )
        self._all.append(client)
        return client

    def checkin(self, client: httpx.AsyncClient) -> None:
        self._free.append(client)

    async def aclose(self) -> None:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            for client in self._all:
                await client.aclose()
        self._all.clear()
        self._free.clear()


class _Attempt:
    """What one attempt did, filled in as it goes (read by the ``finally`` that records it)."""

    __slots__ = (
        "body_started",
        "deltas",
        "emitted",
        "exhausted",
        "first_token_at",
        "limit",
        "number",
        "previous",
        "rate",
        "sent",
        "silent",
        "started",
        "status",
        "usage",
    )

    def __init__(self, number: int = 1, previous: Failure | None = None) -> None:
        self.number = number
        """Which attempt of the request this is (1-based)."""
        self.previous = previous
        """How the attempt before this one failed (``None`` for the first)."""
        self.silent = False
        """The request went out and no response head came back (see the module header)."""
        self.deltas = 0
        self.sent = False
        self.body_started = False
        self.status: int | None = None
        self.usage: Usage | None = None
        self.rate: RateLimitInfo | None = None
        self.emitted = False
        self.first_token_at: float | None = None
        self.started = 0.0
        """When the exchange began (trio clock)."""
        self.limit = "deadline"
        """The name of the limit the attempt's scope is set to (see `ProviderActor._limit`)."""
        self.exhausted = False
        """The response body was read to its end (nothing to discard or close)."""


def _estimate_input(request: Request) -> int:
    """Input tokens, estimated at four characters a token."""
    if isinstance(request, EmbedRequest):
        return sum(len(t) for t in request.inputs) // 4 + 1
    return sum(len(m.text()) for m in request.messages) // 4 + 1


def _estimate_tokens(request: Request, conn: ConnectionConfig) -> int:
    """What the limiter reserves: the input estimate plus the most the answer may use."""
    if isinstance(request, EmbedRequest):
        return _estimate_input(request)
    return _estimate_input(request) + (request.max_tokens or conn.default_max_tokens)


def _billed(usage: Usage | None, state: _Attempt, request: Request) -> Usage | None:
    """The usage to record for an attempt that ended early (cut, failed or cancelled).

    Providers bill the tokens they generated, but most report usage only at the end of a
    stream (OpenAI in its last chunk): a stream cut or cancelled after N content deltas would
    otherwise record nothing. So output is at least the deltas received (about a token each)
    and a missing input count is estimated from the prompt."""
    if state.deltas == 0:
        return usage
    usage = usage or Usage()
    if usage.output_tokens >= state.deltas and usage.input_tokens:
        return usage
    return msgspec.structs.replace(
        usage,
        input_tokens=usage.input_tokens or _estimate_input(request),
        output_tokens=max(usage.output_tokens, state.deltas),
    )


async def _discard(chunks: AsyncIterator[bytes]) -> None:
    """Finish a body iterator we stop reading early, without waiting for anything.

    ``aiter_bytes`` is a chain of async generators (httpx's decoders, the transport's
    stream); closing the outermost leaves the inner ones suspended for the garbage collector,
    which trio reports as a `ResourceWarning` and which finalizes them at some random later
    moment. Instead we keep iterating inside an already-cancelled scope: chunks already
    buffered come out at once, and the first real wait raises `trio.Cancelled` *inside* the
    innermost generator, so every generator of the chain ends now, in this task."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            async for _ in chunks:
                pass
        except Exception as exc:
            if not is_httpx_error(exc):
                raise


_URLS: dict[str, httpx.URL] = {}
_DEFAULT_HEADERS = (("user-agent", "trio-switchboard"), ("accept-encoding", "gzip, deflate"))


def _build_request(http: HttpRequest) -> httpx.Request:
    """The `httpx.Request` for *http*, built directly: `AsyncClient.build_request` would
    re-parse the URL and merge client defaults and cookies on every call (a third of the
    pipeline's own cost). Parsed URLs are cached: a connection sends to a handful of them."""
    url = _URLS.get(http.url)
    if url is None:
        if len(_URLS) > 4096:
            _URLS.clear()
        url = _URLS[http.url] = httpx.URL(http.url)
    headers = dict(_DEFAULT_HEADERS)
    headers.update(http.headers)
    return httpx.Request(http.method, url, headers=headers, content=http.body)


class _Held(NamedTuple):
    """What one attempt borrowed: the breaker and admission it used, its permit and grant."""

    breaker: Breaker
    admission: Admission
    permit: Permit
    grant: Grant


def _price(gen: _Generation, answered: str, requested: str) -> Price | None:
    """The price of an attempt: the model that answered (providers report dated names such
    as ``gpt-4o-2024-08-06``), else the model that was asked for."""
    return price_for(gen.config, answered) or price_for(gen.config, requested)


class _Abandoned(BaseException):
    """The caller left while its request was being served: raised where the scope bound to
    its envelope caught the cancellation, caught by `ProviderActor._serve_started`. A
    `BaseException`, like `trio.Cancelled`, so no ``except Exception`` on the way takes it;
    ``finally`` blocks (usage recording) run as for a cancellation."""


_CLOSED_BEFORE_HEAD = (httpx.ReadError, httpx.RemoteProtocolError)
"""httpx errors that, before the response head, mean the request went out and the provider
closed the connection instead of answering (a reset; a clean close)."""


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _progress(state: _Attempt, streamed: bool) -> str:
    """How far an attempt got, for a deadline failure."""
    if not state.sent:
        return "the request was not sent yet"
    if state.status is None:
        return "no response yet"
    if state.first_token_at is None:
        got = "no first token" if streamed else "the body was not complete"
        return f"HTTP {state.status}, {got} yet"
    return f"streaming, {state.deltas} deltas received"


def _describe(exc: BaseException) -> str:
    leaf = first_error(exc)
    text = str(leaf).strip()
    return f"{type(leaf).__name__}: {text[:200]}" if text else type(leaf).__name__


class ProviderActor:
    """One incarnation serving a `Connection`: ``await nursery.start(actor.run)``.

    Runs until the connection's mailbox is closed and drained (graceful) or it is cancelled.
    A bug raises out of `run` (for the supervisor), after every in-flight caller got a
    ``crashed`` failure; queued requests stay queued for the next incarnation.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # The running incarnation's workers (see `_work`), set up by `run`.
        self._bound = connection.max_in_flight
        self._workers = 0
        self._idle = 0
        self._nursery: trio.Nursery
        self._pool: _ClientPool

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        conn = self.connection
        conn.incarnation += 1
        conn.running = True
        pool = _ClientPool(conn.transport, conn.config.timeouts.connect)
        in_flight = conn._taken
        self._bound = conn.max_in_flight
        self._workers = 1  # this task is the first worker
        self._idle = 0
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._pool = pool
                conn._resize = self._resize
                task_status.started()
                await self._work()
        except BaseException as exc:
            cancelled = only_cancelled(exc)
            redactor = conn._generation.redactor
            for envelope in in_flight:
                envelope.resolve(
                    Failure.of(
                        ErrorKind.CANCELLED if cancelled else ErrorKind.CRASHED,
                        f"connection {conn.name!r} was shut down"
                        if cancelled
                        else f"connection {conn.name!r} crashed: {redactor.text(_describe(exc))}",
                        connection=conn.name,
                        model=envelope.request.model,
                        request_id=envelope.request.request.request_id,
                    )
                )
            in_flight.clear()
            conn.limiter.abandon_in_flight()
            raise
        finally:
            conn.running = False
            conn._resize = None
            await pool.aclose()

    # -- workers --------------------------------------------------------------------------

    async def _work(self) -> None:
        """One long-lived worker: take a request from the mailbox, serve it, repeat. A
        request costs no task of its own. Each worker serves one request at a time and there
        are at most ``max_in_flight`` of them, so that bounds the requests in flight: workers
        are hired as concurrency grows (one always waits idle while the bound allows, see
        `_hire`) and stay. A worker retires when the mailbox is closed and drained, or when
        `Connection.override` lowered ``max_in_flight`` below the number of workers."""
        conn = self.connection
        mailbox = conn.mailbox
        in_flight = conn._taken
        try:
            while self._workers <= self._bound:  # else resized down: one worker too many
                self._idle += 1
                try:
                    envelope = await mailbox.get()
                except (MailboxClosed, Interrupted):
                    return
                finally:
                    self._idle -= 1
                in_flight.add(envelope)
                if not self._idle:
                    self._hire()
                await self._serve(envelope, self._pool, in_flight)
        finally:
            self._workers -= 1

    def _hire(self) -> None:
        """Start a worker if the bound allows (called when none is idle), so that a request
        arriving while every worker is busy is taken at once."""
        if self._workers < self._bound:
            self._workers += 1
            self._nursery.start_soon(self._work)

    def _resize(self, max_in_flight: int) -> None:
        """`Connection.override` changed ``max_in_flight``: a higher bound hires a worker
        for queued requests; a lower one retires idle workers at once and busy ones as they
        finish."""
        self._bound = max_in_flight
        excess = self._workers - max_in_flight
        if excess > 0:
            self.connection.mailbox.interrupt_getters(excess)
        elif not self._idle:
            self._hire()

    async def _serve(
        self, envelope: ProviderEnvelope, pool: _ClientPool, in_flight: set[ProviderEnvelope]
    ) -> None:
        conn = self.connection
        mailbox = conn.mailbox
        if envelope.resolved:  # shed by its caller while queued: already counted
            in_flight.discard(envelope)
            return
        mailbox.started()
        start = trio.current_time()
        try:
            await self._serve_started(envelope, pool, start)
        finally:
            # Also when the actor crashes: the mailbox outlives this incarnation.
            mailbox.finished(trio.current_time() - start)
        in_flight.discard(envelope)

    async def _serve_started(
        self, envelope: ProviderEnvelope, pool: _ClientPool, start: float
    ) -> None:
        conn = self.connection
        mailbox = conn.mailbox
        conn.metrics.requests += 1
        call = envelope.request
        # The generation `_execute` will capture (no checkpoint in between): its secrets are
        # the ones this request sends, and so the ones a provider may echo.
        redactor = conn._generation.redactor
        if envelope.abandoned:
            result: Reply = self._failure(
                call, ErrorKind.CANCELLED, "the caller went away before the request started"
            )
        elif start >= envelope.deadline:
            mailbox.note_shed()
            result = self._failure(
                call,
                ErrorKind.DEADLINE,
                f"deadline passed after {start - envelope.enqueued_at:.3f}s in the queue of "
                f"{conn.name!r}; no tokens were spent",
            )
        else:
            try:
                result = await self._execute(envelope, pool)
            except _Abandoned:
                result = self._failure(call, ErrorKind.CANCELLED, "the caller went away")
        if isinstance(result, Failure):
            result = redactor.failure(result)
        envelope.resolve(result)
        conn.metrics.record_outcome(result.kind if isinstance(result, Failure) else None)

    def _failure(self, call: Call, kind: ErrorKind, message: str, **fields: Any) -> Failure:
        return Failure.of(
            kind,
            message,
            connection=self.connection.name,
            model=call.model,
            request_id=call.request.request_id,
            **fields,
        )

    # -- the attempt loop ---------------------------------------------------------------

    async def _execute(self, envelope: ProviderEnvelope, pool: _ClientPool) -> Reply:
        conn = self.connection
        gen = conn._generation
        call = envelope.request
        deadline = envelope.deadline
        estimate = _estimate_tokens(call.request, gen.config)
        total = Usage()
        attempt = 0
        last: Failure | None = None
        while True:
            attempt += 1
            # The machines this attempt uses, held to its end: an `override` may replace the
            # connection's breaker or limiter meanwhile, and permits and grants must go back
            # to the machine that issued them.
            breaker, admission = conn.breaker, conn.admission
            try:
                grant = await self._admit(admission, estimate, envelope)
            except AdmissionTimeout as exc:
                message = f"deadline passed waiting for rate-limit capacity on {conn.name!r}"
                if last is not None:
                    message += f" after {_attempts(attempt - 1)}; last: {last.message}"
                return self._failure(
                    call,
                    ErrorKind.DEADLINE,
                    message,
                    retry_after=exc.retry_after,
                    attempts=attempt - 1,
                    usage=total,
                )
            now = trio.current_time()
            permit = breaker.acquire(now)
            if not isinstance(permit, Permit):
                admission.cancel(grant)
                return self._failure(
                    call,
                    ErrorKind.CIRCUIT_OPEN,
                    f"circuit breaker of {conn.name!r} is {permit.state.value}",
                    retry_after=permit.retry_after,
                    attempts=attempt - 1,
                    usage=total,
                )
            conn.metrics.attempts += 1
            if attempt == 1:
                conn.budget.record_attempt(now, retry=False)
            else:
                conn.metrics.retries += 1
            state = _Attempt(attempt, last)
            outcome: Completion | Embeddings | Failure | None = None
            try:
                outcome = await self._attempt(gen, call, envelope, pool, state)
            finally:
                held = _Held(breaker, admission, permit, grant)
                self._record(gen, call, held, state, outcome, attempt, now)
            if state.usage is not None:
                total = total + state.usage
            if not isinstance(outcome, Failure):
                return self._finish(gen, call, envelope, outcome, attempt, total, state)
            now = trio.current_time()
            decision = gen.retry.decide(
                attempt=attempt,
                failure=outcome,
                now=now,
                deadline=None if deadline == math.inf else deadline,
                emitted=state.emitted,
                rng=conn.rng,
            )
            if decision.retry and call.failover_available and state.silent:
                decision = msgspec.structs.replace(
                    decision, retry=False, reason="silent target: failing over instead"
                )
            if decision.retry and breaker.poll(now) in _REFUSING:
                # This failure (or an earlier one) opened the breaker: sleeping through the
                # backoff would only end in circuit_open. Give up now with the real cause, and
                # say when the breaker will let a call through again.
                decision = msgspec.structs.replace(
                    decision, retry=False, reason="the circuit breaker opened"
                )
                open_until = breaker.open_until
                if open_until is not None:
                    outcome = msgspec.structs.replace(
                        outcome, retry_after=max(outcome.retry_after or 0.0, open_until - now)
                    )
            if decision.retry and not conn.budget.try_retry(now):
                decision = msgspec.structs.replace(
                    decision, retry=False, reason="retry budget of the connection is spent"
                )
            if not decision.retry:
                return msgspec.structs.replace(
                    outcome,
                    connection=conn.name,
                    model=call.model,
                    request_id=call.request.request_id,
                    attempts=attempt,
                    usage=total,
                    retryable=outcome.retryable and not state.emitted,
                )
            last = outcome
            with trio.CancelScope() as scope:
                envelope.bind_scope(scope)
                await trio.sleep(decision.delay)
            if scope.cancelled_caught:
                raise _Abandoned

    async def _admit(
        self, admission: Admission, estimate: int, envelope: ProviderEnvelope
    ) -> Grant:
        """A grant of the limiter: at once when there is capacity, else waiting (FIFO, until
        the deadline) in a scope the caller leaving cancels."""
        grant = admission.admit_nowait(estimate, deadline=envelope.deadline)
        if grant is not None:
            return grant
        with trio.CancelScope() as scope:
            envelope.bind_scope(scope)
            return await admission.admit(estimate, deadline=envelope.deadline)
        raise _Abandoned

    def _finish(
        self,
        gen: _Generation,
        call: Call,
        envelope: ProviderEnvelope,
        outcome: Completion | Embeddings,
        attempts: int,
        total: Usage,
        state: _Attempt,
    ) -> Completion | Embeddings:
        now = trio.current_time()
        conn = self.connection
        latency = now - envelope.enqueued_at
        model = outcome.model or call.model
        cost = cost_of(outcome.usage, _price(gen, model, call.model))
        conn.metrics.latency.observe(latency)
        if isinstance(outcome, Embeddings):
            return msgspec.structs.replace(
                outcome,
                model=model,
                connection=conn.name,
                request_id=call.request.request_id,
                attempts=attempts,
                latency=latency,
                cost=cost,
            )
        first = state.first_token_at
        ttft = (first if first is not None else now) - envelope.enqueued_at
        conn.metrics.ttft.observe(ttft)
        conn.ttft_ewma = ttft if conn.ttft_ewma is None else 0.8 * conn.ttft_ewma + 0.2 * ttft
        return msgspec.structs.replace(
            outcome,
            model=model,
            connection=conn.name,
            request_id=call.request.request_id,
            attempts=attempts,
            latency=latency,
            time_to_first_token=ttft,
            cost=cost,
        )

    def _record(
        self,
        gen: _Generation,
        call: Call,
        held: _Held,
        state: _Attempt,
        outcome: Reply | None,
        attempt: int,
        started: float,
    ) -> None:
        """Record one attempt in breaker, limiter, metrics and log. Synchronous: runs in a
        ``finally`` and so completes even when the attempt was cancelled."""
        conn = self.connection
        breaker, admission, permit, grant = held
        now = trio.current_time()
        duration = now - started
        if outcome is None:
            breaker.release(permit, now)
        elif isinstance(outcome, Failure):
            breaker.record_failure(permit, now, duration, outcome.kind)
            if parks_limiter(outcome.kind):
                # Park until the provider's reset, but never longer than the retry policy
                # would wait: a bogus `retry-after: 864000` must not park us for days.
                cap = gen.config.retry.max_retry_after_s
                delay = outcome.retry_after if outcome.retry_after is not None else 1.0
                admission.park(now + min(delay, cap))
            if state.usage is None and outcome.usage is not None:
                state.usage = outcome.usage
        else:
            breaker.record_success(permit, now, duration)
        conn._drain_transitions(breaker)
        if state.rate is not None and not state.rate.empty:
            admission.observe(state.rate)
        if not isinstance(outcome, Completion | Embeddings):
            state.usage = _billed(state.usage, state, call.request)
        usage = state.usage
        if state.sent:
            admission.finish(grant, usage.total_tokens if usage is not None else None)
        else:
            admission.cancel(grant)
        if usage is not None:
            model = outcome.model if isinstance(outcome, Completion | Embeddings) else ""
            model = model or call.model
            conn.metrics.record_usage(
                model,
                usage,
                cost=cost_of(usage, _price(gen, model, call.model)),
                wasted=not isinstance(outcome, Completion | Embeddings),
            )
        if log.isEnabledFor(logging.INFO):
            kind = (
                "cancelled"
                if outcome is None
                else outcome.kind.value
                if isinstance(outcome, Failure)
                else "ok"
            )
            log.info(
                "%s %s attempt %d: status=%s result=%s in %.3fs",
                conn.name,
                call.model,
                attempt,
                state.status,
                kind,
                duration,
                extra={
                    "request_id": call.request.request_id,
                    "connection": conn.name,
                    "model": call.model,
                    "attempt": attempt,
                    "status": state.status,
                    "error_kind": None if kind == "ok" else kind,
                    "input_tokens": usage.input_tokens if usage else None,
                    "output_tokens": usage.output_tokens if usage else None,
                    "duration": duration,
                    "time_to_first_token": (
                        state.first_token_at - started if state.first_token_at is not None else None
                    ),
                },
            )

    # -- one attempt --------------------------------------------------------------------

    async def _attempt(
        self,
        gen: _Generation,
        call: Call,
        envelope: ProviderEnvelope,
        pool: _ClientPool,
        state: _Attempt,
    ) -> Completion | Embeddings | Failure:
        dialect = gen.dialect
        request = call.request
        streaming = isinstance(request, ChatRequest) and envelope.stream is not None
        try:
            if isinstance(request, EmbedRequest):
                if not dialect.supports_embeddings:
                    return self._failure(
                        call, ErrorKind.UNSUPPORTED, f"{gen.config.provider} has no embeddings API"
                    )
                http = dialect.embed_request(request, gen.config, model=call.model)
            else:
                http = dialect.chat_request(request, gen.config, model=call.model, stream=streaming)
        except ProtocolError as exc:
            return exc.failure
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # Data the door's checks let through but this dialect cannot encode: the
            # request's problem, never a reason to crash the actor.
            return self._failure(
                call,
                ErrorKind.BAD_REQUEST,
                f"bad request: {gen.config.provider} cannot encode it "
                f"({type(exc).__name__}: {exc})",
            )
        client = pool.checkout()
        try:
            return await self._exchange(gen, call, envelope, client, http, state, streaming)
        finally:
            pool.checkin(client)

    def _limit(
        self, gen: _Generation, envelope: ProviderEnvelope, state: _Attempt
    ) -> tuple[float, str]:
        """The next moment this attempt must give up, and the name of that limit: the
        request's deadline; time to first token (streamed: the first event; non-streamed:
        the whole body), counted from the attempt's start; and, once any body byte arrived,
        the inter-chunk stall, counted from now (called right before each read)."""
        timeouts = gen.config.timeouts
        at, what = envelope.deadline, "deadline"
        first = timeouts.first_token
        if state.first_token_at is None and first is not None and state.started + first < at:
            at, what = state.started + first, "first_token"
        if timeouts.stall is not None and state.body_started:
            stall_at = trio.current_time() + timeouts.stall
            if stall_at < at:
                at, what = stall_at, "stall"
        return at, what

    def _rearm(
        self,
        gen: _Generation,
        envelope: ProviderEnvelope,
        state: _Attempt,
        scope: trio.CancelScope,
    ) -> None:
        """Before a read: set *scope* to the limit in force (`_limit`; its name goes to
        ``state.limit``), except that a deadline moving later by no more than `REARM_SLACK_S`
        stays where it is (see "Time limits" in the module header). The name is always the
        limit in force: a first-token deadline kept after the first token is a stall's."""
        at, state.limit = self._limit(gen, envelope, state)
        current = scope.deadline
        if at < current or at - current > REARM_SLACK_S:
            scope.deadline = at

    def _timeout_failure(
        self,
        gen: _Generation,
        call: Call,
        envelope: ProviderEnvelope,
        what: str,
        state: _Attempt,
    ) -> Failure:
        """The failure for a limit that ended the attempt: which limit, its value, and for
        the request's deadline what the attempts got to (see the module header)."""
        t = gen.config.timeouts
        streamed = envelope.stream is not None
        # No head, or a head and then nothing within the first-token limit: either way this
        # target took the request and produced nothing (see the module header).
        state.silent = state.status is None or what == "first_token"
        if what == "deadline":
            spent = trio.current_time() - envelope.enqueued_at
            message = (
                f"deadline passed after {_attempts(state.number)} on {self.connection.name!r} "
                f"in {spent:.1f}s; attempt {state.number}: {_progress(state, streamed)}"
            )
            if state.previous is not None:
                message += f"; attempt {state.number - 1}: {state.previous.message}"
            return self._failure(call, ErrorKind.DEADLINE, message, usage=state.usage)
        if what == "first_token":
            got = "first token" if streamed else "answer"
            message = f"no {got} within {t.first_token:g}s (timeouts.first_token)"
        else:
            body = "stream" if streamed else "response"
            message = f"{body} stalled: no data for {t.stall:g}s (timeouts.stall)"
        return self._failure(call, ErrorKind.TIMEOUT, message, usage=state.usage)

    async def _exchange(
        self,
        gen: _Generation,
        call: Call,
        envelope: ProviderEnvelope,
        client: httpx.AsyncClient,
        http: HttpRequest,
        state: _Attempt,
        streaming: bool,
    ) -> Completion | Embeddings | Failure:
        """One HTTP exchange, in one cancel scope bound to the envelope (see "One scope per
        attempt" in the module header)."""
        state.started = trio.current_time()
        head = False
        response: httpx.Response | None = None
        chunks: AsyncIterator[bytes] | None = None
        result: Completion | Embeddings | Failure | None = None
        try:
            try:
                request = _build_request(http)
            except (UnicodeError, ValueError, TypeError, httpx.InvalidURL) as exc:
                # A header or key httpx cannot put on the wire (non-ASCII, a newline...). The
                # message names the kind of problem, never the value: it may be the key.
                return self._failure(
                    call,
                    ErrorKind.CONFIG,
                    f"cannot build the HTTP request for {gen.config.name!r} "
                    f"({type(exc).__name__}): check api_key, headers and base_url for "
                    "non-ASCII characters or line breaks",
                )
            state.sent = True
            at, state.limit = self._limit(gen, envelope, state)
            with trio.CancelScope(deadline=at) as scope:
                envelope.bind_scope(scope)
                response = await client.send(request, stream=True)
                head = True
                state.status = response.status_code
                if not streaming and gen.config.timeouts.stall is None:
                    # No per-chunk limit to enforce: the body in one `aread` - no iterator
                    # chain to walk, discard and close.
                    await response.aread()
                    state.exhausted = True
                    result = self._complete(gen, call, response, state)
                else:
                    # A plain dict: each lookup in httpx.Headers scans every header.
                    headers = dict(response.headers.items())
                    state.rate = parse_rate_limit_headers(headers, now=self.connection.wall_clock())
                    # Without a content-encoding the raw body is the body: one async
                    # generator less per chunk than `aiter_bytes` (which also serves a body
                    # an in-memory transport handed over already read).
                    chunks = (
                        response.aiter_bytes()
                        if "content-encoding" in headers or response.is_stream_consumed
                        else response.aiter_raw()
                    )
                    if response.status_code >= 300 or not streaming:
                        result = await self._read_body(
                            gen, call, envelope, response, chunks, state, scope
                        )
                    else:
                        result = await self._relay(gen, call, envelope, chunks, state, scope)
                        if not isinstance(result, Failure):
                            await self._drain(gen, envelope, chunks, state, scope)
            if scope.cancelled_caught:
                if envelope.abandoned:
                    raise _Abandoned
                if result is None or state.limit != "drain":
                    return self._timeout_failure(gen, call, envelope, state.limit, state)
            assert result is not None
            return result
        except Exception as exc:
            if not is_httpx_error(exc):
                raise
            failure = failure_from_exception(exc, streaming=head)
            if head:
                return msgspec.structs.replace(failure, usage=state.usage)
            return self._before_head(gen, exc, failure, state)
        finally:
            if response is not None and not (state.exhausted and response.is_closed):
                # Shielded, so this also happens when the caller cancelled, and bounded, so
                # a stuck transport cannot wedge us. A body read to its end needs none of it.
                with trio.move_on_after(1) as close_scope:
                    close_scope.shield = True
                    if chunks is not None:
                        await _discard(chunks)
                    await response.aclose()

    async def _read_body(
        self,
        gen: _Generation,
        call: Call,
        envelope: ProviderEnvelope,
        response: httpx.Response,
        chunks: AsyncIterator[bytes],
        state: _Attempt,
        scope: trio.CancelScope,
    ) -> Completion | Embeddings | Failure:
        """A whole body (an error, or a non-streamed answer) under the attempt's limits,
        moved before each read."""
        parts: list[bytes] = []
        while True:
            self._rearm(gen, envelope, state, scope)
            chunk = await anext(chunks, None)
            if chunk is None:
                state.exhausted = True
                break
            state.body_started = True
            parts.append(chunk)
        return self._parse(gen, call, response, b"".join(parts), state)

    def _before_head(
        self,
        gen: _Generation,
        exc: Exception,
        failure: Failure,
        state: _Attempt,
    ) -> Failure:
        """An httpx error before the response head: a connect timeout names its limit; a
        connection the provider closed after taking the request is a silent attempt (see the
        module header) and says so."""
        connect = gen.config.timeouts.connect
        if isinstance(exc, httpx.ConnectTimeout) and connect is not None:
            failure = msgspec.structs.replace(
                failure, message=f"connect timed out after {connect:g}s (timeouts.connect)"
            )
        if failure.kind is ErrorKind.TIMEOUT:
            state.silent = True
        elif isinstance(exc, _CLOSED_BEFORE_HEAD):
            state.silent = True
            waited = trio.current_time() - state.started
            failure = msgspec.structs.replace(
                failure,
                message=f"no response {waited:.1f}s after the request was sent: {failure.message}",
            )
        return msgspec.structs.replace(failure, usage=state.usage)

    def _complete(
        self, gen: _Generation, call: Call, response: httpx.Response, state: _Attempt
    ) -> Completion | Embeddings | Failure:
        """A response httpx has read whole."""
        state.status = response.status_code
        state.body_started = True
        state.rate = parse_rate_limit_headers(
            dict(response.headers.items()), now=self.connection.wall_clock()
        )
        return self._parse(gen, call, response, response.content, state)

    def _parse(
        self,
        gen: _Generation,
        call: Call,
        response: httpx.Response,
        body: bytes,
        state: _Attempt,
    ) -> Completion | Embeddings | Failure:
        """A whole body: the provider's error, or the dialect's parse of the answer."""
        dialect = gen.dialect
        if response.status_code >= 300:
            return dialect.classify_error(
                response.status_code, response.headers, body, now=self.connection.wall_clock()
            )
        state.first_token_at = trio.current_time()
        if isinstance(call.request, EmbedRequest):
            parsed: Completion | Embeddings | Failure = dialect.parse_embed(body)
        else:
            parsed = dialect.parse_chat(body)
        if not isinstance(parsed, Failure):
            state.usage = parsed.usage
        return parsed

    async def _relay(
        self,
        gen: _Generation,
        call: Call,
        envelope: ProviderEnvelope,
        chunks: AsyncIterator[bytes],
        state: _Attempt,
        scope: trio.CancelScope,
    ) -> Completion | Failure:
        """Decode a streamed body and relay its events to the caller as they arrive.

        Before each read the attempt's *scope* gets the limit in force (first token, stall,
        deadline). Events go out with ``send_nowait``; only a full channel (a slow caller)
        costs an awaited send, bounded by the deadline. A limit that fires cancels *scope*:
        `_exchange` turns that into the timeout failure.
        """
        assert envelope.stream is not None
        send = envelope.stream
        decoder = gen.dialect.stream_decoder()
        acc = StreamAccumulator()
        while True:
            self._rearm(gen, envelope, state, scope)
            chunk = await anext(chunks, None)
            if chunk is None:
                state.exhausted = True
                items = decoder.close()
            else:
                state.body_started = True
                items = decoder.feed(chunk)
            for item in items:
                acc.add(item)
                if isinstance(item, Failure):
                    state.usage = item.usage if item.usage is not None else state.usage
                    return item
                kind = type(item)
                if kind is TextDelta:  # the common case first
                    if state.first_token_at is None:
                        state.first_token_at = trio.current_time()
                    state.emitted = True
                    state.deltas += 1
                elif kind is UsageUpdate:
                    assert isinstance(item, UsageUpdate)
                    state.usage = item.usage
                    if not state.emitted:
                        continue
                elif kind is Finished:
                    assert isinstance(item, Finished)
                    state.usage = item.usage
                else:  # other content: reasoning, tool calls
                    if state.first_token_at is None:
                        state.first_token_at = trio.current_time()
                    state.emitted = True
                    state.deltas += 1
                try:
                    send.send_nowait(item)
                except trio.WouldBlock:
                    # A caller that stops reading but keeps the stream open gets
                    # backpressure, bounded by its deadline: it cannot hold this attempt
                    # (and its limiter slot) forever.
                    scope.deadline, state.limit = envelope.deadline, "deadline"
                    try:
                        await send.send(item)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        envelope.abandon()
                        await trio.lowlevel.checkpoint()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    envelope.abandon()
                    await trio.lowlevel.checkpoint()
                if kind is Finished:
                    return acc.completion()
            if chunk is None or decoder.done:
                # A decoder that ended without a terminal item is a decoder bug.
                message = "stream ended without a result"
                return self._failure(call, ErrorKind.STREAM_INTERRUPTED, message, usage=state.usage)

    async def _drain(
        self,
        gen: _Generation,
        envelope: ProviderEnvelope,
        chunks: AsyncIterator[bytes],
        state: _Attempt,
        scope: trio.CancelScope,
    ) -> None:
        """Read what follows the terminal event (a trailing ``[DONE]``, the chunked-encoding
        terminator) so the HTTP connection ends cleanly and can be reused; a response closed
        before its end costs a new TCP and TLS handshake on the next request. Bounded by
        `DRAIN_S`, `DRAIN_BYTES` and the attempt's limits (``state.limit`` is then
        ``"drain"``: `_exchange` keeps the answer when *scope* fires); any failure just stops
        it - the answer is already complete."""
        left = DRAIN_BYTES
        scope.deadline = min(trio.current_time() + DRAIN_S, self._limit(gen, envelope, state)[0])
        state.limit = "drain"
        try:
            while left > 0:
                chunk = await anext(chunks, None)
                if chunk is None:
                    state.exhausted = True
                    return
                left -= len(chunk)
        except Exception as exc:
            if not is_httpx_error(exc):
                raise
