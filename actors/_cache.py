"""The response cache: an identical request gets a stored answer back, at no cost.

The problem: services ask the same deterministic question again and again (a classifier over
the same text, an eval rerun, an embedding of the same document). Each time is a provider
call: latency, tokens, rate limit and money for an answer already known. And identical
requests that arrive together each pay for a call of their own (``actors._coalesce``).

Choices:

- **Opt-in, per route.** ``[routes.<name>] cache = { ttl_s = 300 }`` (or a runtime-wide
  default, ``[runtime] cache``, that a route can turn off with ``enabled = false``). Nothing
  is looked up, keyed or stored for a request whose route has no cache: the runtime calls
  the router directly (one dictionary lookup on the hot path).
- **Only deterministic requests.** A request is deterministic when it asks for
  ``temperature = 0`` or passes a ``seed`` in ``extra`` (it asks for the same answer every
  time); a request with no temperature (the provider's default, usually 1) or a higher one
  asks for a fresh sample and is neither cached nor coalesced, unless the route sets
  ``nondeterministic = true``. Embeddings are always deterministic.
- **Per request.** ``ChatRequest.cache`` (and ``EmbedRequest.cache``): ``default`` follows
  the route; ``refresh`` skips the lookup and coalescing but stores its answer (the way to
  replace a stored answer); ``off`` bypasses everything.
- **Exact-match key.** SHA-256 of a canonical encoding (JSON, dict keys sorted) of the model
  name as asked for, the messages and every parameter that changes the answer: max_tokens,
  temperature, top_p, stop, tools, tool_choice, response_format and extra (embeddings:
  inputs, dimensions, extra). Not request_id, timeout, metadata, fallbacks, strategy or
  stream: they change who answers or how it is delivered, not the answer. Streamed and
  non-streamed requests share entries. A request whose ``extra`` cannot be encoded is not
  cached.
- **What is stored.** Only answers (`Completion`, `Embeddings`) from an upstream call,
  never failures, never a stream that did not end with its completion. A hit is the stored
  answer with ``served_from="cache"``, the caller's request id and latency, zero usage and
  cost (zero, or ``None`` when no price is configured), no attempts and no ``produced_by``:
  it is billed nowhere (connections recorded nothing; client budgets and token limits see
  zero). ``connection``, ``model`` and ``response_id`` still name who produced it. A stream
  served from the cache replays the answer: the reasoning, the whole text and each tool
  call as one delta each, then `Finished` (with the zero usage).
- **Stores.** A `CacheStore` is two coroutines, ``get(key) -> bytes | None`` and
  ``set(key, value, ttl)``: `MemoryCacheStore` (in-process, bounded, least recently used first)
  by default; `SharedCacheStore` keeps them in the shared state's Redis, so every process
  using it shares one cache. A store that fails or takes longer than ``STORE_TIMEOUT_S`` is
  a miss (counted in ``errors``, logged), never a failed request; a stored value that does
  not decode is a miss too.
- **Coalescing** (``coalesce = true``, the default) runs every cached request as a flight
  (``actors._coalesce``): identical requests in flight share one upstream call, and the
  answer is stored once the callers have it, while later identical requests still join.
- **Metrics**: hits, misses (lookups that found nothing), stores, errors, coalesced
  requests (joined a flight) and flights in progress (`CacheStatistics`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
import trio

from protocol._config import CacheConfig
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Finished,
    ReasoningDelta,
    Restart,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from protocol._validate import refusal

from ._coalesce import Flight, Flights, Outcome, Seat, shared_copy, wait_for
from ._provider import deadline_after
from ._router import Router, RouterStream

if TYPE_CHECKING:
    from ._shared_state import SharedState

log = logging.getLogger("switchboard.cache")

STORE_TIMEOUT_S = 1.0
"""The longest a cache lookup or store may take before it counts as a miss (an error)."""

_KEY_VERSION = 1
_KEY_ENCODER = msgspec.json.Encoder(order="deterministic")

R = TypeVar("R", Completion, Embeddings)


class CacheStore(Protocol):
    """Where answers are kept: values are opaque bytes, keys short ASCII strings."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under *key*, or ``None`` (never stored, or expired)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store *value* under *key* for *ttl* seconds (``inf``: until evicted)."""
        ...


class MemoryCacheStore:
    """The in-process store: at most *max_entries* values, each until its TTL passes; when
    full, the least recently used goes first. Times come from *clock* (default: trio's)."""

    def __init__(
        self, max_entries: int = 10_000, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_at(self, key: str, now: float) -> bytes | None:
        """The value of *key* at time *now*: served while ``now < stored_at + ttl``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def set_at(self, key: str, value: bytes, ttl: float, now: float) -> None:
        """Store *value* under *key* at time *now* for *ttl* seconds (≤ 0: not at all)."""
        if not ttl > 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (now + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        return self.get_at(key, self._clock())

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.set_at(key, value, ttl, self._clock())


class SharedCacheStore:
    """The cache in the shared state's store (``[runtime] state = "redis://..."``), so every
    process using the same Redis shares one cache.

    Keys are ``switchboard:cache:<key>``; Redis expires them itself (``PX``). Every call goes
    through *shared* (`actors._shared_state.SharedState.call`): bounded by
    ``state_timeout_s``, and a failure marks the store unreachable, after which calls fail at
    once until it answers again - for the cache, a miss (counted in ``errors``), never a
    failed request. Any exception of the client is translated to `StoreUnavailable` here."""

    PREFIX = "switchboard:cache:"

    def __init__(self, shared: SharedState, *, prefix: str = PREFIX) -> None:
        from ._shared_state import StoreUnavailable  # only with shared state

        self._shared = shared
        self._prefix = prefix
        self._unavailable = StoreUnavailable

    def _client(self) -> Any:
        client = getattr(self._shared.store, "client", None)
        if client is None:
            raise self._unavailable("not connected")
        return client

    async def get(self, key: str) -> bytes | None:
        client = self._client()

        async def read() -> object:
            try:
                return await client.get(self._prefix + key)
            except Exception as exc:
                raise self._unavailable(type(exc).__name__) from None

        value = await self._shared.call(read)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if not ttl > 0:
            return
        client = self._client()
        px = None if math.isinf(ttl) else max(1, round(ttl * 1000))

        async def write() -> object:
            try:
                return await client.set(self._prefix + key, value, px=px)
            except Exception as exc:
                raise self._unavailable(type(exc).__name__) from None

        await self._shared.call(write)


class CacheStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The response cache's counters (see the module header)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    errors: int = 0
    coalesced: int = 0
    flights: int = 0


# --------------------------------------------------------------------------- pure parts


def deterministic(request: ChatRequest) -> bool:
    """Whether *request* asks for the same answer every time: ``temperature == 0`` or a
    ``seed`` in ``extra``."""
    return request.temperature == 0 or request.extra.get("seed") is not None


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def request_key(request: ChatRequest | EmbedRequest) -> str:
    """The exact-match cache key of *request* (see the module header). Raises `TypeError`
    (or `msgspec.EncodeError`) when a field cannot be encoded."""
    parts: tuple[Any, ...]
    if isinstance(request, ChatRequest):
        parts = (
            "chat",
            _KEY_VERSION,
            request.model,
            request.messages,
            request.max_tokens,
            _number(request.temperature),
            _number(request.top_p),
            request.stop,
            request.tools,
            request.tool_choice,
            request.response_format,
            request.extra,
        )
    else:
        parts = (
            "embed",
            _KEY_VERSION,
            request.model,
            request.inputs,
            request.dimensions,
            request.extra,
        )
    return hashlib.sha256(_KEY_ENCODER.encode(parts)).hexdigest()


def replay(completion: Completion) -> list[StreamEvent]:
    """The events a stream served from the cache sends for *completion*: its reasoning, its
    whole text and each tool call as one delta each, then `Finished` with *completion*'s
    usage."""
    events: list[StreamEvent] = []
    if completion.reasoning:
        events.append(ReasoningDelta(text=completion.reasoning))
    if completion.text:
        events.append(TextDelta(text=completion.text))
    events.extend(
        ToolCallDelta(index=i, id=call.id, name=call.name, arguments=call.arguments)
        for i, call in enumerate(completion.tool_calls)
    )
    events.append(
        Finished(
            finish_reason=completion.finish_reason,
            usage=completion.usage,
            model=completion.model,
            response_id=completion.response_id,
        )
    )
    return events


# --------------------------------------------------------------------------- the shell


class _Plan:
    """How the cache treats one request: its policy and keys."""

    __slots__ = ("flight_key", "key", "lookup", "policy", "request")

    def __init__(
        self,
        request: ChatRequest | EmbedRequest,
        policy: CacheConfig,
        key: str,
        lookup: bool,
        flight_key: bytes | None,
    ) -> None:
        self.request = request
        self.policy = policy
        self.key = key
        self.lookup = lookup
        """Look the answer up first (the route stores answers and the request does not
        refresh)."""
        self.flight_key = flight_key
        """The coalescing key (``None``: this request's flight is private)."""


Req = TypeVar("Req", ChatRequest, EmbedRequest)


def _timed(request: Req, budget: float | None) -> Req:
    """*request* with the timeout *budget* (``None``: as it is)."""
    return request if budget is None else msgspec.structs.replace(request, timeout=budget)


class ResponseCache:
    """The cache and coalescing in front of a `Router` (see the module header).

    ``chat``, ``embed`` and ``stream`` are the router's own for requests their route does
    not cache. Start `run` in a nursery before use: shared calls run there."""

    def __init__(self, router: Router, *, default: CacheConfig | None, store: CacheStore) -> None:
        self._router = router
        self._default = default
        self.store = store
        self.flights = Flights()
        self._hits = 0
        self._misses = 0
        self._stores = 0
        self._errors = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery shared calls run in, until cancelled."""
        await self.flights.run(task_status=task_status)

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            hits=self._hits,
            misses=self._misses,
            stores=self._stores,
            errors=self._errors,
            coalesced=self.flights.joined,
            flights=self.flights.in_flight(),
        )

    # -- policy -------------------------------------------------------------------------

    def policy(self, request: ChatRequest | EmbedRequest) -> CacheConfig | None:
        """The cache settings that apply to *request* (``None``: no caching)."""
        if request.cache == "off":
            return None
        route = self._router.routes.get(request.model)
        policy = route.cache if route is not None and route.cache is not None else self._default
        if policy is None or not policy.enabled:
            return None
        if (
            isinstance(request, ChatRequest)
            and not policy.nondeterministic
            and not deterministic(request)
        ):
            return None
        return policy

    def _plan(self, request: ChatRequest | EmbedRequest, kind: str) -> _Plan | None:
        if self._router.closed or not self.flights.running:
            return None
        try:
            policy = self.policy(request)
        except (TypeError, ValueError):  # an unsound request: the router refuses it
            return None
        if policy is None or refusal(request) is not None:
            # Unsound requests are never keyed, coalesced or planned: the router refuses
            # them (checked here only on cached routes, where it is cheap next to a call).
            return None
        refresh = request.cache == "refresh"
        stores = policy.ttl_s > 0
        coalesce = policy.coalesce and not refresh
        if not stores and not coalesce:
            return None
        try:
            key = request_key(request)
        except (TypeError, ValueError, msgspec.EncodeError):
            return None
        flight_key = None
        if coalesce:
            routing = [kind, key, request.fallbacks, getattr(request, "strategy", None)]
            flight_key = _KEY_ENCODER.encode(routing)
        return _Plan(request, policy, key, stores and not refresh, flight_key)

    def _deadline(self, request: ChatRequest | EmbedRequest) -> tuple[float, float]:
        """``(budget, deadline)`` of *request*: its timeout, else the configured timeout of
        the first target in priority order (as the router would), else 60 s."""
        budget = request.timeout
        if budget is None:
            budget = 60.0
            conns = self._router.connections
            targets = [t for t in self._router.targets_for(request.model) if t.connection in conns]
            if targets:
                first = min(targets, key=lambda t: t.priority)
                budget = conns[first.connection].config.timeout
        return budget, deadline_after(budget)

    # -- the store ----------------------------------------------------------------------

    async def _lookup(self, key: str, type_: type[R]) -> R | None:
        raw: bytes | None = None
        failed = True
        with trio.move_on_after(STORE_TIMEOUT_S):
            try:
                raw = await self.store.get(key)
                failed = False
            except Exception as exc:
                log.warning("cache lookup failed: %s", type(exc).__name__)
        value: R | None = None
        if raw is not None:
            try:
                value = msgspec.msgpack.decode(raw, type=type_)
            except msgspec.DecodeError:
                failed = True
                log.warning("cache entry did not decode as %s", type_.__name__)
        if failed:
            self._errors += 1
        if value is None:
            self._misses += 1
        else:
            self._hits += 1
        return value

    async def _store(self, plan: _Plan, outcome: Outcome) -> None:
        if not plan.policy.ttl_s > 0 or isinstance(outcome, Failure):
            return
        if outcome.served_from != "upstream":
            return
        value = msgspec.msgpack.encode(outcome)
        with trio.move_on_after(STORE_TIMEOUT_S) as scope:
            try:
                await self.store.set(plan.key, value, plan.policy.ttl_s)
            except Exception as exc:
                log.warning("cache store failed: %s", type(exc).__name__)
                self._errors += 1
                return
        if scope.cancelled_caught:
            self._errors += 1
        else:
            self._stores += 1

    # -- flights ------------------------------------------------------------------------

    def _join(
        self, plan: _Plan, deadline: float, work: Callable[[Flight], Awaitable[Outcome]]
    ) -> Seat:
        request = plan.request

        def cancelled() -> Failure:
            return Failure.of(
                ErrorKind.CANCELLED,
                "the runtime shut down before the shared request ended",
                model=request.model,
                request_id=request.request_id,
            )

        async def store(outcome: Outcome) -> None:
            await self._store(plan, outcome)

        return self.flights.join(plan.flight_key, deadline, work, cancelled, store)

    def _take(
        self,
        seat: Seat,
        outcome: Outcome,
        request: ChatRequest | EmbedRequest,
        start: float,
        time_to_first_token: float | None = None,
    ) -> Outcome:
        """*outcome* as the caller in *seat* gets it: as is (with its request id) when it
        is billed for it, a coalesced copy otherwise (`Flight.claim`)."""
        rid = request.request_id
        if seat.flight.claim(seat):
            if outcome.request_id == rid:
                return outcome
            return msgspec.structs.replace(outcome, request_id=rid)
        if isinstance(outcome, Failure):
            return msgspec.structs.replace(outcome, request_id=rid, usage=None)
        latency = trio.current_time() - start
        if isinstance(outcome, Embeddings):
            return shared_copy(outcome, request_id=rid, latency=latency, served_from="coalesced")
        return shared_copy(
            outcome,
            request_id=rid,
            latency=latency,
            served_from="coalesced",
            time_to_first_token=time_to_first_token,
        )

    @staticmethod
    def _outran(outcome: Outcome, flight: Flight, deadline: float) -> bool:
        """The flight ran out of its time while this caller still has some: fly again."""
        return (
            isinstance(outcome, Failure)
            and outcome.kind is ErrorKind.DEADLINE
            and flight.deadline < deadline
            and trio.current_time() < deadline
        )

    @staticmethod
    def _late(request: ChatRequest | EmbedRequest) -> Failure:
        return Failure.of(
            ErrorKind.DEADLINE,
            "the request's deadline passed while it waited for an identical request in flight",
            model=request.model,
            request_id=request.request_id,
        )

    # -- non-streamed -------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> Completion | Failure:
        plan = self._plan(request, "chat")
        if plan is None:
            return await self._router.chat(request)
        router = self._router

        def call(budget: float | None) -> Callable[[Flight], Awaitable[Outcome]]:
            async def work(flight: Flight) -> Outcome:
                return await router.chat(_timed(request, budget))

            return work

        result = await self._answer(plan, Completion, call)
        assert not isinstance(result, Embeddings)
        return result

    async def embed(self, request: EmbedRequest) -> Embeddings | Failure:
        plan = self._plan(request, "embed")
        if plan is None:
            return await self._router.embed(request)
        router = self._router

        def call(budget: float | None) -> Callable[[Flight], Awaitable[Outcome]]:
            async def work(flight: Flight) -> Outcome:
                return await router.embed(_timed(request, budget))

            return work

        result = await self._answer(plan, Embeddings, call)
        assert not isinstance(result, Completion)
        return result

    async def _answer(
        self,
        plan: _Plan,
        type_: type[R],
        call: Callable[[float | None], Callable[[Flight], Awaitable[Outcome]]],
    ) -> Outcome:
        request = plan.request
        start = trio.current_time()
        if plan.lookup:
            stored = await self._lookup(plan.key, type_)
            if stored is not None:
                return shared_copy(
                    stored,
                    request_id=request.request_id,
                    latency=trio.current_time() - start,
                    served_from="cache",
                )
        budget, deadline = self._deadline(request)
        first: float | None = None if request.timeout is not None else budget
        while True:
            seat = self._join(plan, deadline, call(first))
            try:
                outcome = await wait_for(seat.flight, deadline)
                if outcome is None:
                    return self._late(request)
                if not self._outran(outcome, seat.flight, deadline):
                    return self._take(seat, outcome, request, start)
            finally:
                self.flights.leave(seat)
            first = deadline - trio.current_time()

    # -- streamed -----------------------------------------------------------------------

    def stream(
        self, request: ChatRequest
    ) -> AbstractAsyncContextManager[RouterStream | SharedStream]:
        """The router's stream, or for a cached route a `SharedStream`."""
        plan = self._plan(request, "stream")
        if plan is None:
            return self._router.stream(request)
        return self._shared_stream(plan)

    @asynccontextmanager
    async def _shared_stream(self, plan: _Plan) -> AsyncIterator[SharedStream]:
        handle = SharedStream(self, plan)
        try:
            await handle._begin()
            yield handle
        finally:
            handle._close()

    def _stream_work(
        self, request: ChatRequest, budget: float | None
    ) -> Callable[[Flight], Awaitable[Outcome]]:
        router = self._router

        async def work(flight: Flight) -> Outcome:
            async with router.stream(_timed(request, budget)) as upstream:
                async for event in upstream:
                    flight.push(event)
                return await upstream.wait()

        return work


class SharedStream:
    """The caller's side of a stream on a cached route: the same interface as
    `RouterStream` (iterate the events, then ``result`` or ``await wait()``).

    The events are a cache hit's replay, or those of the flight it follows (from the
    first, whenever it joined). Leaving the ``async with`` block early leaves the flight
    (its upstream call goes on for the others)."""

    def __init__(self, cache: ResponseCache, plan: _Plan) -> None:
        assert isinstance(plan.request, ChatRequest)
        self._cache = cache
        self._plan = plan
        self._request: ChatRequest = plan.request
        self._start = trio.current_time()
        self._deadline = math.inf
        self._pending: list[StreamEvent] = []
        self._hit: Completion | None = None
        self._seat: Seat | None = None
        self._index = 0
        self._first: float | None = None
        self._result: Completion | Failure | None = None

    async def _begin(self) -> None:
        plan = self._plan
        if plan.lookup:
            stored = await self._cache._lookup(plan.key, Completion)
            if stored is not None:
                self._hit = stored
                self._pending = replay(
                    msgspec.structs.replace(stored, usage=Usage())  # what the hit is billed
                )
                return
        budget, self._deadline = self._cache._deadline(self._request)
        self._fly(None if self._request.timeout is not None else budget)

    def _fly(self, budget: float | None) -> None:
        work = self._cache._stream_work(self._request, budget)
        self._seat = self._cache._join(self._plan, self._deadline, work)
        self._index = 0

    def _leave(self) -> None:
        seat, self._seat = self._seat, None
        if seat is not None:
            self._cache.flights.leave(seat)

    def _close(self) -> None:
        self._leave()
        if self._result is None:
            self._result = Failure.of(
                ErrorKind.CANCELLED,
                "the caller left the stream",
                request_id=self._request.request_id,
                model=self._request.model,
            )

    def _emit(self, event: StreamEvent) -> StreamEvent:
        if self._first is None:
            self._first = trio.current_time() - self._start
        return event

    def __aiter__(self) -> SharedStream:
        return self

    async def __anext__(self) -> StreamEvent:
        await trio.lowlevel.checkpoint()
        while True:
            if self._pending:
                return self._emit(self._pending.pop(0))
            if self._result is not None:
                raise StopAsyncIteration
            if self._hit is not None:
                self._result = shared_copy(
                    self._hit,
                    request_id=self._request.request_id,
                    latency=trio.current_time() - self._start,
                    served_from="cache",
                    time_to_first_token=self._first,
                )
                raise StopAsyncIteration
            seat = self._seat
            assert seat is not None
            flight = seat.flight
            if self._index < len(flight.events):
                self._index += 1
                return self._emit(flight.events[self._index - 1])
            if flight.done.is_set():
                self._settle(seat)
                continue
            changed = flight.changed()
            if self._deadline < flight.deadline:
                with trio.move_on_at(self._deadline):
                    await changed.wait()
                if not changed.is_set():
                    self._leave()
                    self._result = self._cache._late(self._request)
            else:
                await changed.wait()

    def _settle(self, seat: Seat) -> None:
        """The flight ended and this caller has read all its events: take its result, or
        fly again when the flight ran out of the time this caller still has."""
        outcome = seat.flight.outcome()
        if ResponseCache._outran(outcome, seat.flight, self._deadline):
            self._leave()
            if self._index:
                self._pending.append(
                    Restart(reason="the shared request ran out of time; starting again")
                )
            self._fly(self._deadline - trio.current_time())
            return
        result = self._cache._take(seat, outcome, self._request, self._start, self._first)
        self._leave()
        assert not isinstance(result, Embeddings)
        self._result = result

    async def wait(self) -> Completion | Failure:
        """The terminal result. Events not read yet are read and dropped."""
        async for _ in self:
            pass
        assert self._result is not None
        return self._result

    @property
    def result(self) -> Completion | Failure:
        """The terminal result; valid once the events are exhausted."""
        if self._result is None:
            raise RuntimeError("the stream has not ended yet")
        return self._result
