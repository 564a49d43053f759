"""The router: from the model name a client asked for to the connection that answers.

The problem: one logical model ("smart") may be served by several connections (OpenAI, then
Anthropic as a fallback, then a local Ollama), each of which can be down, rate limited, slow,
or fail halfway through a stream. The caller wants one answer within one deadline and does
not want to know which target gave it - except for accounting, which must be exact.

Choices:

- **Targets.** A name resolves, in order, to a configured route's targets; else to every
  connection that serves it (an alias in its ``models``, a glob in ``serves``, its
  ``default_model``), or ``connection/model`` to pin one. Per-request ``fallbacks`` append
  more names. `connections_for` exposes the same resolution.
- **Order.** ``priority`` (ascending, then declaration order), ``weighted`` (a weighted random
  permutation), ``least_busy`` (queued + in flight), ``lowest_latency`` (moving average of
  time to first token; unmeasured targets first, so they get measured).
- **Waiting for capacity.** Targets whose breaker is open or whose limiter is parked by a
  429 are set aside without spending an attempt, and taken back, in their place in the
  order, as soon as they are available again. When no target is available now, the router
  sleeps (cancellable) until the earliest target that is only out of capacity (parked by a
  429) is available again, if that is before the request's deadline: rate limits are waited
  for, as admission waits for capacity. An open breaker is not waited for: it fails fast,
  which is its purpose (a caller's fallback, such as a cached answer, runs at once). When no
  target can be tried before the deadline the caller gets one ``circuit_open`` failure
  carrying the earliest retry-after. A target that was tried and failed is not tried again
  (its connection already retried as its policy allows).
- **Failover.** After a connection's own retries, a failure whose kind is in the route's
  ``failover_on`` moves on to the next target; ``context_length`` goes to the route's
  ``context_fallback`` (once); everything else (``bad_request``, ``content_filter``,
  ``auth``...) is returned as is, keeping the provider's reason. A connection is told when
  another target exists, so a silent timeout fails over instead of being retried in place.
- **Mid-stream.** Once events reached the caller, a failure is handled by the route's
  ``mid_stream`` policy: ``fail`` (the typed ``stream_interrupted`` failure with partial
  usage), ``restart`` (a `Restart` event, then the next target from scratch), or
  ``continue`` (an assistant-prefill continuation on a target declared to support prefill,
  falling back to ``restart`` when none is available or when the prefill is rejected: the
  rejection is never the caller's final error). The switch is announced just before the
  new target's first event, naming that target: `Switched` for a continuation (keep the
  text), `Restart` for a restart (discard it). A continuation's completion carries the
  whole text (prefix + continuation).
- **Hedging.** With ``hedge_after_s`` (seconds, or ``"auto"`` for twice the target's moving
  average time to first token; no hedge until measured), a stream whose first event has not
  arrived in time starts the next target too (at once if the first fails before that); the
  first to produce an event wins, the other is cancelled (its usage is still recorded by its
  connection, as wasted). A hedged try is then treated like any other (mid-stream policy).
  Non-streamed requests are not hedged.
- **Accounting.** The result names the connection and model that answered; ``attempts``
  counts every attempt on every target. A completion's ``produced_by`` lists, in order, the
  attempts whose text it is made of - the winner, preceded for a continued stream by the
  failed tries whose text became its prefix - and its usage and cost are their sums. Every
  other attempt (failed before any kept text, restarted over, a hedge's loser) is recorded
  by its connection as wasted and never billed to the caller; a kept prefix, which its
  connection recorded as wasted when it failed, is counted back as used there
  (`ConnectionMetrics.record_kept`), so metrics and results agree.
- **Causes.** A failure names what went wrong. When the deadline ends a request after
  attempts failed, the ``deadline`` failure says how many attempts on how many targets, the
  last real cause (``last cause: timeout: no first token within 3s ... on 'a'``) and what
  the last target was doing when time ran out - never just that the deadline passed.
"""

from __future__ import annotations

import fnmatch
import math
import random
from bisect import insort
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import NamedTuple

import msgspec
import trio

from protocol._config import RouteConfig
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Message,
    Producer,
    Restart,
    StreamEvent,
    Switched,
    TextDelta,
    Usage,
)
from protocol._validate import refusal

from ._breaker import BreakerState
from ._metrics import cost_of, price_for
from ._provider import Call, Connection, ReplyStream, deadline_after

DEFAULT_ROUTE = RouteConfig(targets=[])

STRATEGIES = frozenset({"priority", "weighted", "least_busy", "lowest_latency"})

_REFUSING = frozenset({BreakerState.OPEN, BreakerState.FORCED_OPEN})

# How a model that does not accept an assistant prefill refuses a continuation.
_PREFILL_REJECTIONS = frozenset({ErrorKind.BAD_REQUEST, ErrorKind.UNSUPPORTED})


class ResolvedTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A place a request can go: a connection and the provider model name on it."""

    connection: str
    model: str
    priority: int = 0
    weight: float = 1.0


class _Targets:
    """The targets one request may still try, in order, and those set aside as unavailable
    (see "Waiting for capacity" in the module header).

    Each target keeps its rank in the original order: a set-aside target that becomes
    available goes back to its place, ahead of lower-priority ones. Ranks below zero put a
    target in front of every other (`push_front`)."""

    def __init__(
        self, connections: Mapping[str, Connection], targets: list[ResolvedTarget], deadline: float
    ) -> None:
        self._connections = connections
        self.deadline = deadline
        self._queue: list[tuple[int, ResolvedTarget]] = list(enumerate(targets))
        self._aside: list[tuple[int, ResolvedTarget]] = []
        self._front = 0
        self.retry_afters: list[float] = []
        """Retry-afters the failures of this request carried."""

    def _wait(self, target: ResolvedTarget, now: float) -> float | None:
        """Seconds until *target* is available (``None``: now; ``inf``: not for this request)."""
        conn = self._connections.get(target.connection)
        if conn is None:  # removed while this request was being routed
            return math.inf
        return conn.unavailable_for(now)

    def _waitable(self, target: ResolvedTarget, now: float) -> bool:
        """Whether the router may wait for *target*: it is only out of capacity (its limiter
        parked by a 429), not refused by its breaker - an open breaker fails fast, which is
        its purpose (the caller's fallback runs at once)."""
        conn = self._connections.get(target.connection)
        return conn is not None and conn.breaker.poll(now) not in _REFUSING

    def _take_back(self, now: float) -> None:
        """Return set-aside targets that are available again to their places in the queue."""
        aside: list[tuple[int, ResolvedTarget]] = []
        for entry in self._aside:
            wait = self._wait(entry[1], now)
            if wait is None:
                insort(self._queue, entry, key=lambda e: e[0])
            elif math.isfinite(wait):
                aside.append(entry)
        self._aside = aside

    def take(
        self, now: float, prefer: Callable[[ResolvedTarget], bool] | None = None
    ) -> ResolvedTarget | None:
        """The first target available now (with *prefer*, the first available one it accepts,
        if any), removed from the queue; unavailable ones met on the way are set aside. No
        waiting."""
        if self._aside:
            self._take_back(now)
        queue = self._queue
        fallback: int | None = None
        i = 0
        while i < len(queue):
            entry = queue[i]
            wait = self._wait(entry[1], now)
            if wait is not None:
                del queue[i]
                if math.isfinite(wait):
                    insort(self._aside, entry, key=lambda e: e[0])
                continue
            if prefer is None or prefer(entry[1]):
                del queue[i]
                return entry[1]
            if fallback is None:
                fallback = i
            i += 1
        return None if fallback is None else queue.pop(fallback)[1]

    async def next(
        self, prefer: Callable[[ResolvedTarget], bool] | None = None
    ) -> ResolvedTarget | None:
        """The next target to try (see `take`). When none is available now and a set-aside
        target out of capacity will be available before the deadline, sleep until the first
        set-aside one is available again. ``None`` when no target can be tried before the
        deadline."""
        while True:
            now = trio.current_time()
            if now >= self.deadline:
                return None
            target = self.take(now, prefer)
            if target is not None:
                return target
            earliest = self.earliest(now)
            if earliest is None or earliest >= self.deadline:
                return None
            # Waiting anyway: wake as soon as any set-aside target is available again.
            first = self.earliest(now, waitable=False)
            await trio.sleep_until(earliest if first is None else min(first, earliest))

    def earliest(self, now: float, *, waitable: bool = True) -> float | None:
        """When the first set-aside target becomes available (absolute), or ``None``; with
        *waitable*, only targets the router may wait for count (see `_waitable`)."""
        waits = [
            self._wait(t, now) for _, t in self._aside if not waitable or self._waitable(t, now)
        ]
        finite = [w for w in waits if w is not None and math.isfinite(w)]
        return now + min(finite) if finite else None

    def more(self) -> bool:
        """Whether another target may still be tried: one is queued, or a set-aside one
        becomes available before the deadline."""
        if self._queue:
            return True
        if not self._aside:
            return False
        earliest = self.earliest(trio.current_time())
        return earliest is not None and earliest < self.deadline

    def waits(self) -> list[float]:
        """Seconds until each set-aside target is available, and the failures' retry-afters."""
        now = trio.current_time()
        earliest = self.earliest(now, waitable=False)
        return [*self.retry_afters, *([] if earliest is None else [earliest - now])]

    def push_front(self, target: ResolvedTarget) -> None:
        """Try *target* next (before any other, set-aside ones included)."""
        self._front -= 1
        self._queue.insert(0, (self._front, target))

    def replace(self, targets: list[ResolvedTarget]) -> None:
        """Try *targets* instead of everything left (the context-length fallback)."""
        self._queue = list(enumerate(targets))
        self._aside = []


class _Try(NamedTuple):
    """How one streamed try (one target, or a hedged pair) went."""

    result: Completion | Failure
    attempts: int
    emitted: bool
    """Events of this try reached the caller."""
    text: list[str]
    """The text this try sent to the caller."""
    failures: list[Failure]
    """Every failure of the try (a hedged try may have two)."""


_Switch = tuple[str, str]
"""A pending mid-stream switch: (``"continue"`` or ``"restart"``, the reason)."""


def _announcement(switch: _Switch | None, target: ResolvedTarget) -> StreamEvent | None:
    """The event that tells the caller *target* takes over, or ``None``."""
    if switch is None:
        return None
    mode, reason = switch
    if mode == "continue":
        return Switched(reason=reason, connection=target.connection, model=target.model)
    return Restart(reason=reason, connection=target.connection, model=target.model)


def _producer(result: Completion) -> Producer:
    return Producer(
        connection=result.connection, model=result.model, usage=result.usage, cost=result.cost
    )


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


class _Source:
    """One try as the caller reads it: the connection's stream, the event announcing it (sent
    just before its first event), events already taken from it (a hedge's first event), and
    what of it reached the caller."""

    __slots__ = ("ahead", "announce", "collect", "emitted", "stream", "text")

    def __init__(self, stream: ReplyStream, announce: StreamEvent | None, *, collect: bool) -> None:
        self.stream = stream
        self.announce = announce
        self.ahead: list[StreamEvent] = []
        self.emitted = False
        """Events of this try reached the caller."""
        self.collect = collect
        """Keep the text: only a route that continues streams (``mid_stream = "continue"``)
        uses it (the prefix of a continuation, and who produced it)."""
        self.text: list[str] = []
        """The text this try sent to the caller (when it is kept)."""


class RouterStream:
    """The caller's side of a routed stream: iterate events, then read ``result``.

    The caller's task reads each try's events straight from its connection's stream: no
    task and no channel in between, so a routed event costs what a connection's does. The
    routing itself (`Router._tries`, an async generator yielding one try at a time) runs in
    the caller's task too, between tries."""

    def __init__(self) -> None:
        self._tries: AsyncGenerator[_Source, None] | None = None
        self._source: _Source | None = None
        self._result: Completion | Failure | None = None

    def __aiter__(self) -> RouterStream:
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            source = self._source
            if source is not None:
                stream = source.stream
                event: StreamEvent | None
                if source.ahead:
                    event = source.ahead.pop(0)
                else:
                    try:
                        event = stream.next_nowait()  # the hot path: no coroutine
                    except trio.WouldBlock:
                        try:
                            event = await stream.__anext__()
                        except StopAsyncIteration:
                            event = None
                    except StopAsyncIteration:
                        event = None
                if event is not None:
                    if not source.emitted:
                        source.emitted = True
                        announce = source.announce
                        if announce is not None:  # the switch to this try, just before it
                            source.announce = None
                            source.ahead.insert(0, event)
                            return announce
                    if source.collect and isinstance(event, TextDelta):
                        source.text.append(event.text)
                    return event
                self._source = None
            tries = self._tries
            if tries is None:
                raise StopAsyncIteration
            try:
                self._source = await tries.__anext__()  # route: the next try, or the end
            except StopAsyncIteration:
                self._tries = None
                raise

    def _finish(self, result: Completion | Failure) -> None:
        if self._result is None:
            self._result = result

    async def wait(self) -> Completion | Failure:
        """The terminal result. Events not read yet are read and dropped."""
        while self._result is None:
            async for _ in self:
                pass
            if self._result is None:  # only when the routing ended without one (a bug)
                raise RuntimeError("the stream ended without a result")
        return self._result

    @property
    def result(self) -> Completion | Failure:
        """The terminal result; valid once the events are exhausted."""
        if self._result is None:
            raise RuntimeError("the stream has not ended yet")
        return self._result


async def _result_of(stream: ReplyStream) -> Completion | Failure:
    """A try's result: read at once when its stream has ended (the common case, no schedule
    point), else waited for."""
    try:
        return stream.result
    except trio.WouldBlock:
        return await stream.wait()


class _Race:
    """A hedged try (see `Router._race`): two targets, the first to send an event wins."""

    def __init__(self, pair: tuple[ResolvedTarget, ResolvedTarget]) -> None:
        self.pair = pair
        self.sources: dict[int, _Source] = {}
        """The targets started, by position in the pair."""
        self.results: dict[int, Completion | Failure] = {}
        self.winner: int | None = None

    async def first_event(self, key: int) -> bool:
        """Wait for the first event of *key*; on it, *key* wins unless the other won first.
        False when the stream ended without an event."""
        source = self.sources[key]
        try:
            event = await source.stream.__anext__()
        except StopAsyncIteration:
            return False
        source.ahead.append(event)
        if self.winner is None:
            self.winner = key
        return True

    async def ended(self, key: int) -> None:
        """*key*'s stream ended without an event: take its result."""
        self.results[key] = await _result_of(self.sources[key].stream)

    async def outcome(self, request: ChatRequest) -> _Try:
        """How the race went, once the caller read the winner to its end."""
        winner = self.winner
        if winner is not None:
            self.results[winner] = await _result_of(self.sources[winner].stream)
        # A cancelled loser made one attempt that has no result here.
        attempts = sum(r.attempts for r in self.results.values())
        attempts += sum(1 for key in self.sources if key not in self.results)
        failures = [r for k in (0, 1) if isinstance(r := self.results.get(k), Failure)]
        if winner is not None:
            source = self.sources[winner]
            return _Try(self.results[winner], attempts, source.emitted, source.text, failures)
        if failures:
            return _Try(failures[-1], attempts, False, [], failures)
        cancelled = Failure.of(
            ErrorKind.CANCELLED,
            "hedged stream ended without a result",
            request_id=request.request_id,
            model=request.model,
        )
        return _Try(cancelled, attempts, False, [], [cancelled])


class Router:
    """Routes requests over *connections* according to *routes* (see the module header)."""

    def __init__(
        self,
        connections: Mapping[str, Connection],
        routes: Mapping[str, RouteConfig],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.connections = connections
        self.routes = routes
        self.rng = rng or random.Random()
        self.failovers = 0
        self.closed = False
        self._resolved: dict[str, list[ResolvedTarget]] = {}
        self._planned: dict[str, tuple[RouteConfig, tuple[ResolvedTarget, ...]]] = {}
        """Plans in a fixed order (the ``priority`` strategy, no per-request choices), by
        name: ordering them again for every request costs as much as routing it."""
        """Set by the runtime when it shuts down: every new request fails ``cancelled``."""

    # -- resolution ---------------------------------------------------------------------

    def connections_for(self, model: str) -> list[str]:
        """Names of the connections that can serve *model* (route targets, aliases, declared
        models and patterns, default models, or ``connection/model``)."""
        return list(dict.fromkeys(t.connection for t in self.targets_for(model)))

    def invalidate(self) -> None:
        """Forget cached name resolutions: call after connections are added, removed or
        reconfigured (the runtime does)."""
        self._resolved.clear()
        self._planned.clear()

    def targets_for(self, model: str) -> list[ResolvedTarget]:
        """Where *model* can go (see the module header), in declaration order. Cached per
        name: resolving a name otherwise scans every connection's aliases and patterns."""
        cached = self._resolved.get(model)
        if cached is None:
            if len(self._resolved) > 10_000:
                self._resolved.clear()
            cached = self._resolved[model] = self._resolve(model)
        return list(cached)

    def _resolve(self, model: str) -> list[ResolvedTarget]:
        route = self.routes.get(model)
        if route is not None:
            out = []
            for t in route.targets:
                conn = self.connections.get(t.connection)
                if conn is None:
                    continue
                cfg = conn.config
                out.append(
                    ResolvedTarget(
                        connection=t.connection,
                        model=cfg.resolve_model(t.model),
                        priority=t.priority if t.priority is not None else cfg.priority,
                        weight=t.weight if t.weight is not None else cfg.weight,
                    )
                )
            return out
        if "/" in model:
            name, _, rest = model.partition("/")
            conn = self.connections.get(name)
            if conn is not None:
                cfg = conn.config
                return [
                    ResolvedTarget(
                        connection=name,
                        model=cfg.resolve_model(rest),
                        priority=cfg.priority,
                        weight=cfg.weight,
                    )
                ]
        out = []
        for name, conn in self.connections.items():
            cfg = conn.config
            if (
                model in cfg.models
                or model == cfg.default_model
                or any(fnmatch.fnmatchcase(model, pattern) for pattern in cfg.serves)
                or model == name
            ):
                target_model = cfg.resolve_model(None if model == name else model)
                out.append(
                    ResolvedTarget(
                        connection=name,
                        model=target_model,
                        priority=cfg.priority,
                        weight=cfg.weight,
                    )
                )
        return out

    def _order(self, targets: list[ResolvedTarget], strategy: str) -> list[ResolvedTarget]:
        if strategy == "weighted":
            pool = list(targets)
            ordered: list[ResolvedTarget] = []
            while pool:
                weights = [max(t.weight, 0.0) for t in pool]
                if sum(weights) <= 0:
                    ordered.extend(pool)
                    break
                pick = self.rng.choices(range(len(pool)), weights=weights)[0]
                ordered.append(pool.pop(pick))
            return ordered
        if strategy == "least_busy":
            return sorted(
                targets, key=lambda t: (self.connections[t.connection].load(), t.priority)
            )
        if strategy == "lowest_latency":
            return sorted(
                targets,
                key=lambda t: (self.connections[t.connection].ttft_ewma or 0.0, t.priority),
            )
        return sorted(targets, key=lambda t: t.priority)

    def _plan(
        self, request: ChatRequest | EmbedRequest
    ) -> tuple[RouteConfig, list[ResolvedTarget]]:
        model = request.model
        chosen = getattr(request, "strategy", None)
        plain = chosen is None and not request.fallbacks  # nothing chosen per request
        if plain:
            planned = self._planned.get(model)
            if planned is not None:
                return planned[0], list(planned[1])
        route = self.routes.get(model, DEFAULT_ROUTE)
        strategy = chosen or route.strategy
        targets = self._order(self.targets_for(model), strategy)
        for name in request.fallbacks:
            targets.extend(self._order(self.targets_for(name), strategy))
        if plain and strategy == "priority":  # a fixed order: the same for every request
            if len(self._planned) > 10_000:
                self._planned.clear()
            self._planned[model] = (route, tuple(targets))
        return route, targets

    def _deadline(
        self, request: ChatRequest | EmbedRequest, targets: list[ResolvedTarget]
    ) -> float:
        budget = request.timeout
        if budget is None:
            budget = self.connections[targets[0].connection].config.timeout if targets else 60.0
        return deadline_after(budget)

    def _prepare(
        self, request: ChatRequest | EmbedRequest
    ) -> Failure | tuple[RouteConfig, list[ResolvedTarget], float]:
        """The route, ordered targets and absolute deadline of *request*, or the failure that
        ends it before any target is tried."""
        refused = self._refuse(request)
        if refused is not None:
            return refused
        route, targets = self._plan(request)
        if not targets:
            return self._no_target(request)
        invalid = self._invalid_strategy(request, route)
        if invalid is not None:
            return invalid
        return route, targets, self._deadline(request, targets)

    def _refuse(self, request: ChatRequest | EmbedRequest) -> Failure | None:
        """A failure for a request that must not be routed at all, else ``None``."""
        if self.closed:
            return Failure.of(
                ErrorKind.CANCELLED,
                "the runtime is shut down",
                model=request.model,
                request_id=request.request_id,
            )
        return refusal(request)

    def _out_of_time(self, request: ChatRequest | EmbedRequest, attempts: int) -> Failure:
        return Failure.of(
            ErrorKind.DEADLINE,
            "the request's deadline passed before a target could be tried",
            model=request.model,
            request_id=request.request_id,
            attempts=attempts,
        )

    def _no_target(self, request: ChatRequest | EmbedRequest) -> Failure:
        known = sorted(
            set(self.routes) | {m for c in self.connections.values() for m in c.config.models}
        )
        hint = f"; known names: {', '.join(known[:20])}" if known else ""
        return Failure.of(
            ErrorKind.NOT_FOUND,
            f"no connection serves model {request.model!r}{hint}",
            model=request.model,
            request_id=request.request_id,
        )

    def _all_unavailable(
        self, request: ChatRequest | EmbedRequest, waits: list[float], attempts: int
    ) -> Failure:
        return Failure.of(
            ErrorKind.CIRCUIT_OPEN,
            f"every target for {request.model!r} is unavailable (breaker open or rate "
            "limited) and none becomes available before the request's deadline",
            retry_after=min(waits) if waits else None,
            retryable=True,
            model=request.model,
            request_id=request.request_id,
            attempts=attempts,
        )

    # -- non-streamed -------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> Completion | Failure:
        result = await self._call(request)
        assert not isinstance(result, Embeddings)
        return result

    async def embed(self, request: EmbedRequest) -> Embeddings | Failure:
        result = await self._call(request)
        assert not isinstance(result, Completion)
        return result

    async def _call(self, request: ChatRequest | EmbedRequest) -> Completion | Embeddings | Failure:
        prepared = self._prepare(request)
        if isinstance(prepared, Failure):
            return prepared
        route, ordered, deadline = prepared
        targets = _Targets(self.connections, ordered, deadline)
        attempts = 0
        failures: list[Failure] = []
        used_context_fallback = False
        while (target := await targets.next()) is not None:
            conn = self.connections[target.connection]
            call = Call(request, target.model, failover_available=targets.more())
            result = await conn._enqueue(call, deadline)  # checked at the door (_prepare)
            if isinstance(result, Embeddings):
                return msgspec.structs.replace(result, attempts=attempts + result.attempts)
            if isinstance(result, Completion):
                return msgspec.structs.replace(
                    result,
                    attempts=attempts + result.attempts,
                    produced_by=[_producer(result)],
                )
            attempts += result.attempts
            failures.append(result)
            if result.retry_after is not None:
                targets.retry_afters.append(result.retry_after)
            if (
                result.kind is ErrorKind.CONTEXT_LENGTH
                and route.context_fallback
                and not used_context_fallback
            ):
                used_context_fallback = True
                targets.replace(self.targets_for(route.context_fallback))
                continue
            if result.kind not in route.failover_on or not targets.more():
                break
            self.failovers += 1
        return self._failed(request, failures, targets, attempts)

    def _failed(
        self,
        request: ChatRequest | EmbedRequest,
        failures: list[Failure],
        targets: _Targets,
        attempts: int,
    ) -> Failure:
        """The failure the caller gets when no target produced an answer."""
        if not failures:
            if trio.current_time() >= targets.deadline:
                return self._out_of_time(request, attempts)
            return self._all_unavailable(request, targets.waits(), attempts)
        return self._final_failure(failures, targets.waits(), attempts, targets.deadline)

    def _final_failure(
        self, failures: list[Failure], waits: list[float], attempts: int, deadline: float
    ) -> Failure:
        """The last failure, with every target's attempts; an unavailable last target reports
        the earliest retry-after of all. When the deadline ended the request (it passed, or
        the last failure is a ``deadline``), the failure is a ``deadline`` that says what the
        attempts hit: the last failure of another kind, and what the last target was doing
        when time ran out - a precise cause is never replaced by a generic one."""
        last = failures[-1]
        if last.kind is ErrorKind.CIRCUIT_OPEN and waits:
            last = msgspec.structs.replace(last, retry_after=min(waits))
        if trio.current_time() >= deadline or last.kind is ErrorKind.DEADLINE:
            cause = next((f for f in reversed(failures) if f.kind is not ErrorKind.DEADLINE), None)
            if cause is not None:
                tried = len({(f.connection, f.model) for f in failures})
                message = (
                    f"deadline passed after {_count(attempts, 'attempt')} on "
                    f"{_count(tried, 'target')}; last cause: {cause.kind.value}: {cause.message} "
                    f"on {cause.connection!r}"
                )
                if cause is not failures[-1]:
                    message += f"; at the deadline: {last.message}"
                last = msgspec.structs.replace(
                    last, kind=ErrorKind.DEADLINE, retryable=False, message=message
                )
        return msgspec.structs.replace(last, attempts=attempts)

    def _invalid_strategy(
        self, request: ChatRequest | EmbedRequest, route: RouteConfig
    ) -> Failure | None:
        strategy = getattr(request, "strategy", None) or route.strategy
        if strategy in STRATEGIES:
            return None
        return Failure.of(
            ErrorKind.BAD_REQUEST,
            f"unknown routing strategy {strategy!r}; expected one of: "
            f"{', '.join(sorted(STRATEGIES))}",
            model=request.model,
            request_id=request.request_id,
        )

    # -- streamed -----------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[RouterStream]:
        """Stream *request* over its targets: ``async with router.stream(req) as s: async for
        ev in s: ...``; then ``s.result``. The request is checked, its targets planned and its
        deadline fixed on entering the block; the first try starts with the first read.
        Leaving early cancels the upstream request."""
        handle = RouterStream()
        tries = handle._tries = self._tries(request, self._prepare(request), handle)
        try:
            yield handle
        finally:
            # Closes the try in progress (its upstream request is cancelled, its usage still
            # recorded by its connection). Nothing in there waits: safe when cancelled.
            await tries.aclose()
            if handle._result is None:
                handle._finish(
                    Failure.of(
                        ErrorKind.CANCELLED,
                        "the caller left the stream",
                        request_id=request.request_id,
                        model=request.model,
                    )
                )

    async def _tries(
        self,
        request: ChatRequest,
        prepared: Failure | tuple[RouteConfig, list[ResolvedTarget], float],
        handle: RouterStream,
    ) -> AsyncGenerator[_Source, None]:
        """Theory of operation (one routed stream):

        This generator yields the tries of the stream one at a time, and the caller's
        `RouterStream` reads each try's events until it ends, then asks for the next; at
        the end the result goes to *handle*. Each try's connection stream is opened here, so
        closing the generator (the caller left) closes it and cancels the upstream request.

        Targets are tried in order (`_Targets`: unavailable ones set aside, waited for when
        nothing else is left). Each try is one target or, when the route hedges and the
        caller holds nothing, a race of the target and the next available one (`_race`). A
        try ends with a completion (done: for a continuation the completion's text is
        prefixed with the text the caller already holds, and its usage and cost add up every
        try in ``produced_by``), or with a failure, which is then handled by what the caller
        holds:

        - nothing (or only text a pending restart discards): ordinary failover
          (``failover_on``, ``context_fallback``), exactly as for `chat`;
        - events: the route's ``mid_stream`` policy - ``fail`` returns the failure,
          ``restart`` runs the original request on the next target, ``continue`` appends the
          text so far as an assistant message and sends it to the next available target that
          supports prefill (or restarts if none does);
        - a continuation refused before any event (``bad_request``/``unsupported``: the
          prefill rejection) falls back to ``restart`` on that same target, so the
          rejection is never the caller's final error.

        A switch is pending until a try sends its first event: that event is preceded by
        `Switched` (continue) or `Restart` (restart) naming the target that sent it.
        """
        if isinstance(prepared, Failure):
            handle._finish(prepared)
            return
        route, ordered, deadline = prepared
        targets = _Targets(self.connections, ordered, deadline)
        attempts = 0
        failures: list[Failure] = []
        used_context_fallback = False
        # The answer the caller holds: the text since the last restart, and the failed tries
        # that produced it (a continuation's prefix).
        holding = False
        emitted_text: list[str] = []
        kept: list[Producer] = []
        switch: _Switch | None = None
        prefix = ""
        current = request

        def discard() -> None:
            nonlocal holding, prefix, current
            holding = False
            emitted_text.clear()
            kept.clear()
            prefix = ""
            current = request

        def prefills(target: ResolvedTarget) -> bool:
            conn = self.connections.get(target.connection)
            return conn is not None and conn.config.supports_prefill

        while True:
            continuing = switch is not None and switch[0] == "continue"
            target = await targets.next(prefills if continuing else None)
            if target is None:
                break
            conn = self.connections[target.connection]
            if switch is not None and continuing:
                if conn.config.supports_prefill:
                    prefix = "".join(emitted_text)
                    current = msgspec.structs.replace(
                        request,
                        messages=[*request.messages, Message(role="assistant", content=prefix)],
                    )
                else:  # no prefill target available: restart instead
                    discard()
                    switch = ("restart", switch[1])
            collect = route.mid_stream == "continue"
            hedge = self._hedge_delay(route, conn) if not holding else None
            partner = targets.take(trio.current_time()) if hedge is not None else None
            if partner is not None and hedge is not None:
                async with AsyncExitStack() as stack:
                    race = await self._race(
                        stack,
                        current,
                        (target, partner),
                        deadline,
                        hedge,
                        targets.more(),
                        switch,
                        collect,
                    )
                    if race.winner is not None:
                        yield race.sources[race.winner]
                    done = await race.outcome(request)
            else:
                async with conn._open_stream(
                    Call(current, target.model, targets.more()), deadline
                ) as stream:
                    source = _Source(stream, _announcement(switch, target), collect=collect)
                    yield source
                    one = await _result_of(stream)
                done = _Try(
                    one,
                    one.attempts,
                    source.emitted,
                    source.text,
                    [one] if isinstance(one, Failure) else [],
                )
            result = done.result
            attempts += done.attempts
            failures.extend(done.failures)
            if done.emitted:
                switch = None  # announced with the try's first event
                holding = True
                emitted_text.extend(done.text)
            if not isinstance(result, Failure):
                handle._finish(self._assemble(result, prefix, kept, attempts))
                return
            if done.text:
                kept.append(self._kept(result))
            if result.retry_after is not None:
                targets.retry_afters.append(result.retry_after)
            if prefix and not done.emitted and result.kind in _PREFILL_REJECTIONS:
                # The continuation was refused: restart the original request on that target.
                targets.push_front(target)
                discard()
                switch = ("restart", f"prefill rejected: {result.message}")
                continue
            if (
                result.kind is ErrorKind.CONTEXT_LENGTH
                and route.context_fallback
                and not used_context_fallback
                and not holding
            ):
                used_context_fallback = True
                targets.replace(self.targets_for(route.context_fallback))
                continue
            if result.kind not in route.failover_on or not targets.more():
                break
            if holding and route.mid_stream == "fail":
                break
            self.failovers += 1
            if not done.emitted:
                continue  # nothing new reached the caller: a pending switch stays pending
            reason = f"{result.kind.value}: {result.message}"
            if route.mid_stream == "continue" and emitted_text:
                switch = ("continue", reason)
            else:
                discard()
                switch = ("restart", reason)
        handle._finish(self._failed(request, failures, targets, attempts))

    def _kept(self, failure: Failure) -> Producer:
        """A failed try whose text the caller holds, as a producer of the answer: the usage
        its connection recorded and its cost at that connection's price."""
        usage = failure.usage or Usage()
        conn = self.connections.get(failure.connection)
        price = price_for(conn.config, failure.model) if conn is not None else None
        return Producer(
            connection=failure.connection,
            model=failure.model,
            usage=usage,
            cost=cost_of(usage, price),
        )

    def _assemble(
        self, result: Completion, prefix: str, kept: list[Producer], attempts: int
    ) -> Completion:
        """The caller's completion: *result* after the *kept* tries whose text (*prefix*) it
        continues. Usage and cost are the sums over all of them, and the kept tries' usage,
        recorded as wasted when they failed, is counted back as used by their connections."""
        producers = [*kept, _producer(result)]
        if not kept:  # the common case: one producer
            return msgspec.structs.replace(result, attempts=attempts, produced_by=producers)
        usage = Usage()
        for p in producers:
            usage = usage + p.usage
        costs = [p.cost for p in producers if p.cost is not None]
        for p in kept:
            conn = self.connections.get(p.connection)
            if conn is not None:
                conn.metrics.record_kept(p.model, p.usage)
        return msgspec.structs.replace(
            result,
            text=prefix + result.text,
            usage=usage,
            cost=sum(costs) if costs else None,
            attempts=attempts,
            produced_by=producers,
        )

    def _hedge_delay(self, route: RouteConfig, conn: Connection) -> float | None:
        hedge = route.hedge_after_s
        if hedge is None:
            return None
        if hedge == "auto":
            return None if conn.ttft_ewma is None else 2 * conn.ttft_ewma
        return float(hedge)

    async def _race(
        self,
        stack: AsyncExitStack,
        request: ChatRequest,
        pair: tuple[ResolvedTarget, ResolvedTarget],
        deadline: float,
        delay: float,
        more_targets: bool,
        switch: _Switch | None,
        collect: bool,
    ) -> _Race:
        """Race the first target of *pair* against the second, started *delay* seconds later
        (or as soon as the first ends without an event), until one produces an event: it
        wins (the event waits in its source's ``ahead``, announced by *switch* naming it) and
        the other is cancelled (its connection records its usage as wasted). The streams are
        opened on *stack*, so they stay open while the caller reads the winner."""
        race = _Race(pair)

        async def start(key: int) -> _Source | None:
            target = pair[key]
            conn = self.connections.get(target.connection)
            if conn is None:  # removed while this request was being routed
                return None
            call = conn._call(request, target.model, True if key == 0 else more_targets)
            stream = await stack.enter_async_context(conn._open_stream(call, deadline))
            announce = _announcement(switch, target)
            source = race.sources[key] = _Source(stream, announce, collect=collect)
            return source

        first = await start(0)
        running: list[int] = []
        if first is not None:
            with trio.move_on_after(delay):
                if await race.first_event(0):
                    return race
                await race.ended(0)
            if 0 not in race.results:
                running.append(0)  # no event yet: hedge
        if await start(1) is not None:
            running.append(1)
        if len(running) == 1:
            if not await race.first_event(running[0]):
                await race.ended(running[0])
        elif running:
            async with trio.open_nursery() as nursery:

                async def watch(key: int) -> None:
                    if await race.first_event(key):
                        nursery.cancel_scope.cancel()  # the first event wins
                    else:
                        await race.ended(key)

                for key in running:
                    nursery.start_soon(watch, key)
        for key in running:
            if key != race.winner and key not in race.results:
                race.sources[key].stream.cancel()  # the loser, or still silent at the end
        return race
