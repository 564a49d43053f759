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
  time to first token; unmeasured targets first, so they get measured). Targets whose breaker
  is open or whose limiter is parked by a 429 are skipped without spending an attempt; if
  every target is unavailable the caller gets one failure carrying the earliest retry-after.
- **Failover.** After a connection's own retries, a failure whose kind is in the route's
  ``failover_on`` moves on to the next target; ``context_length`` goes to the route's
  ``context_fallback`` (once); everything else (``bad_request``, ``content_filter``,
  ``auth``...) is returned as is, keeping the provider's reason. A connection is told when
  another target exists, so a silent timeout fails over instead of being retried in place.
- **Mid-stream.** Once events reached the caller, a failure is handled by the route's
  ``mid_stream`` policy: ``fail`` (the typed ``stream_interrupted`` failure with partial
  usage), ``restart`` (a `Restart` event, then the next target from scratch), or
  ``continue`` (an assistant-prefill continuation on a target declared to support prefill,
  falling back to ``restart`` when none does or when the prefill is rejected: the
  rejection is never the caller's final error). A continuation's completion carries the
  whole text (prefix + continuation); its usage is the continuation attempt's.
- **Hedging.** With ``hedge_after_s`` (seconds, or ``"auto"`` for twice the target's moving
  average time to first token; no hedge until measured), a stream whose first event has not
  arrived in time starts the next target too (at once if the first fails before that); the
  first to produce an event wins, the other is cancelled (its usage is still recorded by its
  connection, as wasted). A hedged try is then treated like any other (mid-stream policy).
  Non-streamed requests are not hedged.
- **Accounting.** The result names the connection and model that answered; ``attempts``
  counts every attempt on every target; the completion's usage is the winning attempt's only
  (failed attempts are recorded by their connections as wasted usage, never billed twice).
"""

from __future__ import annotations

import fnmatch
import math
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

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
    Restart,
    StreamEvent,
    TextDelta,
)

from ._groups import unwrapping
from ._provider import Call, Connection, deadline_after

DEFAULT_ROUTE = RouteConfig(targets=[])

STRATEGIES = frozenset({"priority", "weighted", "least_busy", "lowest_latency"})

# How a model that does not accept an assistant prefill refuses a continuation.
_PREFILL_REJECTIONS = frozenset({ErrorKind.BAD_REQUEST, ErrorKind.UNSUPPORTED})


class ResolvedTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A place a request can go: a connection and the provider model name on it."""

    connection: str
    model: str
    priority: int = 0
    weight: float = 1.0


class RouterStream:
    """The caller's side of a routed stream: iterate events, then read ``result``."""

    def __init__(self, events: trio.MemoryReceiveChannel[StreamEvent]) -> None:
        self._events = events
        self._result: Completion | Failure | None = None
        self._done = trio.Event()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events.__aiter__()

    def _finish(self, result: Completion | Failure) -> None:
        if self._result is None:
            self._result = result
            self._done.set()

    async def wait(self) -> Completion | Failure:
        await self._done.wait()
        assert self._result is not None
        return self._result

    @property
    def result(self) -> Completion | Failure:
        """The terminal result; valid once the events are exhausted."""
        if self._result is None:
            raise RuntimeError("the stream has not ended yet")
        return self._result


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
        route = self.routes.get(request.model, DEFAULT_ROUTE)
        strategy = getattr(request, "strategy", None) or route.strategy
        targets = self._order(self.targets_for(request.model), strategy)
        for name in request.fallbacks:
            targets.extend(self._order(self.targets_for(name), strategy))
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
        timeout = request.timeout
        if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
            return Failure.of(
                ErrorKind.BAD_REQUEST,
                f"timeout must be a finite number of seconds >= 0, got {timeout!r}",
                model=request.model,
                request_id=request.request_id,
            )
        return None

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
            f"every target for {request.model!r} is unavailable (breaker open or rate limited)",
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
        route, targets, deadline = prepared
        attempts = 0
        waits: list[float] = []
        last: Failure | None = None
        used_context_fallback = False
        queue = list(targets)
        while queue:
            target = queue.pop(0)
            conn = self.connections.get(target.connection)
            if conn is None:  # removed while this request was being routed
                continue
            wait = conn.unavailable_for(trio.current_time())
            if wait is not None:
                if math.isfinite(wait):
                    waits.append(wait)
                continue
            if trio.current_time() >= deadline:
                break
            call = Call(request, target.model, failover_available=bool(queue))
            result = await conn.ask(call, deadline=deadline)
            if not isinstance(result, Failure):
                return msgspec.structs.replace(result, attempts=attempts + result.attempts)
            attempts += result.attempts
            last = result
            if result.retry_after is not None:
                waits.append(result.retry_after)
            if (
                result.kind is ErrorKind.CONTEXT_LENGTH
                and route.context_fallback
                and not used_context_fallback
            ):
                used_context_fallback = True
                queue = self.targets_for(route.context_fallback)
                continue
            if result.kind not in route.failover_on or not queue:
                break
            self.failovers += 1
        if last is None:
            if trio.current_time() >= deadline:
                return self._out_of_time(request, attempts)
            return self._all_unavailable(request, waits, attempts)
        return self._final_failure(request, last, waits, attempts, deadline)

    def _final_failure(
        self,
        request: ChatRequest | EmbedRequest,
        last: Failure,
        waits: list[float],
        attempts: int,
        deadline: float,
    ) -> Failure:
        """The failure the caller gets: the last one, with every target's attempts; an
        unavailable last target reports the earliest retry-after of all; a spent deadline
        is reported as ``deadline`` (naming the last failure)."""
        if last.kind is ErrorKind.CIRCUIT_OPEN and waits:
            last = msgspec.structs.replace(last, retry_after=min(waits))
        if trio.current_time() >= deadline and last.kind is not ErrorKind.DEADLINE:
            last = msgspec.structs.replace(
                last,
                kind=ErrorKind.DEADLINE,
                retryable=False,
                message=f"deadline passed; last failure: {last.message}",
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
        ev in s: ...``; then ``s.result``. Leaving early cancels the upstream request."""
        send, receive = trio.open_memory_channel[StreamEvent](0)
        handle = RouterStream(receive)
        async with unwrapping(), trio.open_nursery() as nursery:
            nursery.start_soon(self._drive, request, send, handle)
            try:
                with receive:
                    yield handle
            finally:
                nursery.cancel_scope.cancel()
                if handle._result is None:
                    handle._finish(
                        Failure.of(
                            ErrorKind.CANCELLED,
                            "the caller left the stream",
                            request_id=request.request_id,
                            model=request.model,
                        )
                    )

    async def _drive(
        self,
        request: ChatRequest,
        send: trio.MemorySendChannel[StreamEvent],
        handle: RouterStream,
    ) -> None:
        async with send:
            result = await self._stream_targets(request, send)
            handle._finish(result)

    async def _stream_targets(
        self, request: ChatRequest, send: trio.MemorySendChannel[StreamEvent]
    ) -> Completion | Failure:
        """Theory of operation (one routed stream):

        Targets are tried in order. Each try is one target (`_one_stream`) or, when the
        route hedges and nothing reached the caller yet, a race of the target and the next
        available one (`_hedged`). A try ends with a completion (done: for a continuation
        the completion's text is prefixed with the text the caller already holds), or with
        a failure, which is then handled by what the caller has seen:

        - nothing since the last `Restart`: ordinary failover (``failover_on``,
          ``context_fallback``), exactly as for `chat`;
        - events: the route's ``mid_stream`` policy - ``fail`` returns the failure,
          ``restart`` sends `Restart` and runs the original request on the next target,
          ``continue`` appends the text so far as an assistant message and sends the
          continuation to the next target that supports prefill (or restarts if none does);
        - a continuation refused before any event (``bad_request``/``unsupported``: the
          prefill rejection) falls back to ``restart`` on that same target, so the
          rejection is never the caller's final error.
        """
        prepared = self._prepare(request)
        if isinstance(prepared, Failure):
            return prepared
        route, targets, deadline = prepared
        attempts = 0
        waits: list[float] = []
        last: Failure | None = None
        emitted_text: list[str] = []
        emitted_any = False
        used_context_fallback = False
        queue = list(targets)
        current = request
        prefix = ""
        while queue:
            target = queue.pop(0)
            conn = self.connections.get(target.connection)
            if conn is None:
                continue
            wait = conn.unavailable_for(trio.current_time())
            if wait is not None:
                if math.isfinite(wait):
                    waits.append(wait)
                continue
            if trio.current_time() >= deadline:
                break
            partner = None
            hedge = self._hedge_delay(route, conn) if queue and not emitted_any else None
            if hedge is not None:
                partner = self._next_available(queue)
            if partner is not None and hedge is not None:
                queue.remove(partner)
                result, n, out, text = await self._hedged(
                    current, target, partner, deadline, send, hedge, bool(queue)
                )
            else:
                result, out, text = await self._one_stream(
                    current, target, deadline, send, bool(queue)
                )
                n = result.attempts
            attempts += n
            emitted_any = emitted_any or out
            emitted_text.extend(text)
            if not isinstance(result, Failure):
                if prefix:
                    result = msgspec.structs.replace(result, text=prefix + result.text)
                return msgspec.structs.replace(result, attempts=attempts)
            last = result
            if result.retry_after is not None:
                waits.append(result.retry_after)
            if prefix and not out and result.kind in _PREFILL_REJECTIONS:
                # The continuation was refused: restart the original request on that target.
                prefix = ""
                current = request
                emitted_text.clear()
                emitted_any = False
                queue.insert(0, target)
                await send.send(
                    Restart(
                        reason=f"prefill rejected: {result.message}",
                        connection=target.connection,
                        model=target.model,
                    )
                )
                continue
            if (
                result.kind is ErrorKind.CONTEXT_LENGTH
                and route.context_fallback
                and not used_context_fallback
                and not emitted_any
            ):
                used_context_fallback = True
                queue = self.targets_for(route.context_fallback)
                continue
            if result.kind not in route.failover_on or not queue:
                break
            if emitted_any and route.mid_stream == "fail":
                break
            self.failovers += 1
            if not emitted_any:
                continue
            prefill_target = None
            if route.mid_stream == "continue" and emitted_text:
                prefill_target = next(
                    (
                        t
                        for t in queue
                        if (c := self.connections.get(t.connection)) is not None
                        and c.config.supports_prefill
                    ),
                    None,
                )
            if prefill_target is not None:
                queue.remove(prefill_target)
                queue.insert(0, prefill_target)
                prefix = "".join(emitted_text)
                current = msgspec.structs.replace(
                    request,
                    messages=[*request.messages, Message(role="assistant", content=prefix)],
                )
            else:
                nxt = queue[0]
                await send.send(
                    Restart(
                        reason=f"{result.kind.value}: {result.message}",
                        connection=nxt.connection,
                        model=nxt.model,
                    )
                )
                emitted_text.clear()
                emitted_any = False
                prefix = ""
                current = request
        if last is None:
            if trio.current_time() >= deadline:
                return self._out_of_time(request, attempts)
            return self._all_unavailable(request, waits, attempts)
        return self._final_failure(request, last, waits, attempts, deadline)

    def _hedge_delay(self, route: RouteConfig, conn: Connection) -> float | None:
        hedge = route.hedge_after_s
        if hedge is None:
            return None
        if hedge == "auto":
            return None if conn.ttft_ewma is None else 2 * conn.ttft_ewma
        return float(hedge)

    def _next_available(self, queue: list[ResolvedTarget]) -> ResolvedTarget | None:
        now = trio.current_time()
        for t in queue:
            if self.connections[t.connection].unavailable_for(now) is None:
                return t
        return None

    async def _one_stream(
        self,
        request: ChatRequest,
        target: ResolvedTarget,
        deadline: float,
        send: trio.MemorySendChannel[StreamEvent],
        failover_available: bool,
    ) -> tuple[Completion | Failure, bool, list[str]]:
        """Stream one target into *send*; returns (result, emitted anything, emitted text)."""
        conn = self.connections[target.connection]
        emitted = False
        text: list[str] = []
        async with conn.stream(
            request, model=target.model, deadline=deadline, failover_available=failover_available
        ) as s:
            async for event in s:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                emitted = True
                await send.send(event)
            result = await s.wait()
        return result, emitted, text

    async def _hedged(
        self,
        request: ChatRequest,
        first: ResolvedTarget,
        second: ResolvedTarget,
        deadline: float,
        send: trio.MemorySendChannel[StreamEvent],
        delay: float,
        more_targets: bool,
    ) -> tuple[Completion | Failure, int, bool, list[str]]:
        """Race *first* against *second*, started *delay* seconds later (or as soon as
        *first* ends without an event). The first target to produce an event wins and the
        other is cancelled (its connection records its usage as wasted). Returns (result,
        attempts, emitted anything, emitted text)."""
        winner: list[str] = []
        results: dict[str, Completion | Failure] = {}
        started: set[str] = set()
        texts: dict[str, list[str]] = {"a": [], "b": []}
        scopes: dict[str, trio.CancelScope] = {}
        wake_second = trio.Event()

        async def run(target: ResolvedTarget, key: str, start_after: float) -> None:
            if start_after:
                with trio.move_on_after(start_after):
                    await wake_second.wait()
                if winner:
                    return
            conn = self.connections.get(target.connection)
            if conn is None:
                return
            started.add(key)
            failover = True if key == "a" else more_targets
            with trio.CancelScope() as scope:
                scopes[key] = scope
                async with conn.stream(
                    request, model=target.model, deadline=deadline, failover_available=failover
                ) as s:
                    async for event in s:
                        if not winner:
                            winner.append(key)
                            wake_second.set()
                            other = "b" if key == "a" else "a"
                            if other in scopes:
                                scopes[other].cancel()
                        if winner[0] != key:
                            break
                        if isinstance(event, TextDelta):
                            texts[key].append(event.text)
                        await send.send(event)
                    results[key] = await s.wait()
            if key == "a":
                wake_second.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, first, "a", 0.0)
            nursery.start_soon(run, second, "b", delay)
        # A cancelled loser made one attempt that has no result here.
        attempts = sum(r.attempts for r in results.values())
        attempts += sum(1 for key in started if key not in results)
        if winner and winner[0] in results:
            return results[winner[0]], attempts, True, texts[winner[0]]
        failures = [results[k] for k in ("a", "b") if isinstance(results.get(k), Failure)]
        if failures:
            return failures[-1], attempts, bool(winner), []
        return (
            Failure.of(
                ErrorKind.CANCELLED,
                "hedged stream ended without a result",
                request_id=request.request_id,
                model=request.model,
            ),
            attempts,
            bool(winner),
            [],
        )
