"""The runtime facade: what a long-running trio service embeds.

    async with open_runtime("switchboard.toml") as rt:
        completion = await rt.chat(ChatRequest(model="smart", messages=[...]))

The problem it solves is assembly and lifetime: a set of connections (each a `Connection`
slot served by a `ProviderActor` incarnation) kept alive by a supervisor, a router over them,
metrics and health, hot reconfiguration, and a shutdown that lets in-flight work finish.

Choices:

- **Inside the caller's nursery.** `open_runtime` is an async context manager that opens its
  own nursery; `start_runtime(config, nursery)` starts the same tree in a nursery the caller
  already has. Nothing runs in a background thread.
- **One supervisor for the connections** (``one_for_one``: connections are independent). A
  crashed actor is restarted on the same slot, so queued requests survive and in-flight ones
  get a ``crashed`` failure; intensity (``runtime.restart_intensity`` in
  ``runtime.restart_period_s``) bounds crash loops, after which the runtime itself fails
  loudly rather than serving from a broken connection forever.
- **Errors.** `Runtime.chat` and `Runtime.embed` return the result or raise `RequestFailed`
  carrying the typed `Failure`; a stream's terminal `result` is a `Completion` or a
  `Failure` (data, because the events already arrived).
- **Shutdown** closes every mailbox at once (new requests fail with ``cancelled``, queued
  ones are still served, all connections drain in parallel), waits up to
  ``runtime.shutdown_timeout_s`` for the actors to drain, then cancels what is left:
  in-flight requests end ``cancelled`` from their actor, and requests still queued in a
  mailbox nobody serves any more are failed ``cancelled`` by the runtime (`_fail_queued`),
  so every caller still gets its one terminal result. `remove_connection` does the same
  for one connection.
- **Metrics** are the connections' own counters plus what callers of the runtime saw
  (requests, completions, failures by kind after routing, failovers) and current queue
  depths; `RuntimeMetrics.prometheus` renders all of it.
- **Response cache.** Requests go to the router through `ResponseCache` (``actors._cache``):
  for a route with ``cache`` set, identical deterministic requests get a stored answer or
  share one upstream call (``actors._coalesce``, whose flights run in the runtime's
  nursery); for every other request it is the router itself.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import trio

from actors._cache import (
    CacheStatistics,
    MemoryCacheStore,
    ResponseCache,
    SharedCacheStore,
    SharedStream,
)
from actors._client_keys import ClientStatistics
from actors._groups import unwrapping
from actors._mailbox import MailboxClosed
from actors._metrics import ConnectionMetricsSnapshot, ModelUsage, prometheus_text
from actors._provider import Connection, ConnectionStatistics, ProviderActor
from actors._router import Router, RouterStream
from protocol._config import ConnectionConfig, RuntimeConfig, Secret
from protocol._errors import ConfigError, ErrorKind, RequestFailed
from protocol._messages import ChatRequest, Completion, Embeddings, EmbedRequest, Failure, Message

from ._supervisor import ChildSpec, Supervisor

if TYPE_CHECKING:
    from actors._gateway import Gateway
    from actors._shared_state import SharedState


class ModelTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and cost summed over connections for one model."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None


class RuntimeMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """A typed snapshot of the whole runtime's metrics.

    ``connections`` holds each connection's counters (what the providers saw: attempts,
    retries, tokens - wasted ones included - cost, latency and TTFT histograms, breaker
    transitions). ``requests``/``completions``/``failures`` count what callers of the runtime
    saw, after routing (a request that failed over and then succeeded is one completion);
    ``queued``/``in_flight`` are the connections' current queue depths. ``clients`` holds the
    gateway's per-client counters by client name (empty without a gateway; never a token).
    ``cache`` holds the response cache's hits, misses, stores, errors and coalesced requests
    (a hit or a coalesced request is one request and one completion, with no attempt).
    ``state`` says where limits are enforced (``local``, ``redis``, or ``local (redis
    unreachable since ...)``); ``shared_usage`` holds, with ``[runtime] state`` on Redis, the
    usage and cost of every process that used it, by connection and model (it outlives them).
    """

    connections: dict[str, ConnectionMetricsSnapshot]
    failovers: int
    requests: int = 0
    completions: int = 0
    failures: dict[str, int] = {}
    queued: dict[str, int] = {}
    in_flight: dict[str, int] = {}
    clients: dict[str, ClientStatistics] = {}
    cache: CacheStatistics = CacheStatistics()
    state: str = "local"
    shared_usage: dict[str, dict[str, ModelUsage]] = {}

    def tokens_by_connection(self, name: str) -> tuple[int, int]:
        """``(input, output)`` tokens recorded by connection *name*."""
        snap = self.connections.get(name)
        return (0, 0) if snap is None else (snap.input_tokens, snap.output_tokens)

    def tokens_by_model(self, model: str) -> tuple[int, int]:
        """``(input, output)`` tokens recorded for provider model *model*, over connections."""
        totals = self.models().get(model)
        return (0, 0) if totals is None else (totals.input_tokens, totals.output_tokens)

    def estimated_cost(self, name: str | None = None) -> float | None:
        """Estimated cost of connection *name* (all connections when ``None``)."""
        snaps = self.connections.values() if name is None else [self.connections[name]]
        costs = [s.cost for s in snaps if s.cost is not None]
        return sum(costs) if costs else None

    def models(self) -> dict[str, ModelTotals]:
        out: dict[str, ModelTotals] = {}
        for snap in self.connections.values():
            for model, usage in snap.models.items():
                prev = out.get(model, ModelTotals())
                cost = prev.cost
                if usage.cost is not None:
                    cost = (cost or 0.0) + usage.cost
                out[model] = ModelTotals(
                    input_tokens=prev.input_tokens + usage.input_tokens,
                    output_tokens=prev.output_tokens + usage.output_tokens,
                    cost=cost,
                )
        return out

    def prometheus(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        lines = [prometheus_text(self.connections).rstrip("\n")]

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP switchboard_{name} {help_text}")
            lines.append(f"# TYPE switchboard_{name} {kind}")
            lines.extend(f"switchboard_{name}{labels} {value:g}" for labels, value in samples)

        def conn(name: str) -> str:
            return '{connection="' + _label(name) + '"}'

        family("failovers_total", "counter", "Requests moved to another target.",
               [("", self.failovers)])  # fmt: skip
        family("routed_requests_total", "counter", "Requests callers made to the runtime.",
               [("", self.requests)])  # fmt: skip
        family("routed_completions_total", "counter", "Requests that ended with an answer.",
               [("", self.completions)])  # fmt: skip
        family(
            "routed_failures_total",
            "counter",
            "Requests that ended with a failure, after routing, by kind.",
            [('{kind="' + _label(k) + '"}', n) for k, n in sorted(self.failures.items())],
        )
        family("queue_depth", "gauge", "Requests waiting in a connection's mailbox.",
               [(conn(n), v) for n, v in self.queued.items()])  # fmt: skip
        family("in_flight", "gauge", "Requests a connection is working on.",
               [(conn(n), v) for n, v in self.in_flight.items()])  # fmt: skip
        wasted: list[tuple[str, float]] = []
        for name, snap in self.connections.items():
            for model, usage in sorted(snap.models.items()):
                for direction, value in (
                    ("in", usage.wasted_input_tokens),
                    ("out", usage.wasted_output_tokens),
                ):
                    labels = (
                        f'{{connection="{_label(name)}",model="{_label(model)}",'
                        f'direction="{direction}"}}'
                    )
                    wasted.append((labels, value))
        family("wasted_tokens_total", "counter",
               "Tokens of failed or cancelled attempts (never billed as a completion).",
               wasted)  # fmt: skip
        cache = self.cache
        family("cache_hits_total", "counter", "Requests answered from the response cache.",
               [("", cache.hits)])  # fmt: skip
        family("cache_misses_total", "counter", "Cache lookups that found no answer.",
               [("", cache.misses)])  # fmt: skip
        family("cache_stores_total", "counter", "Answers stored in the response cache.",
               [("", cache.stores)])  # fmt: skip
        family("cache_errors_total", "counter",
               "Cache lookups and stores that failed or timed out (served as misses).",
               [("", cache.errors)])  # fmt: skip
        family("coalesced_requests_total", "counter",
               "Requests that shared an identical request's upstream call.",
               [("", cache.coalesced)])  # fmt: skip
        family("coalesce_flights", "gauge", "Shared upstream calls in progress.",
               [("", cache.flights)])  # fmt: skip
        if self.clients:
            lines.extend(_client_families(self.clients))
        if self.state != "local":
            lines.extend(_shared_families(self.state, self.shared_usage))
        return "\n".join(lines) + "\n"


class ConnectionHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One connection's health, for dashboards and load balancers."""

    name: str
    provider: str
    running: bool
    breaker: str
    queued: int
    in_flight: int
    parked_for: float | None
    incarnation: int


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """``status`` is ``ok`` (every connection can take work), ``degraded`` (some cannot) or
    ``down`` (none can). ``state`` says where limits are enforced (see `RuntimeMetrics`): a
    shared state that is unreachable does not change ``status``, the runtime keeps serving."""

    status: str
    connections: list[ConnectionHealth]
    state: str = "local"


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of `Runtime.probe`: ``ok`` with the latency, or the failure."""

    connection: str
    ok: bool
    latency: float | None = None
    model: str = ""
    failure: Failure | None = None


class Runtime:
    """The running tree. Build it with `open_runtime` or `start_runtime`."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._wall_clock = wall_clock
        self._transports = dict(transports or {})
        self._default_transport = transport
        self._rng = rng or random.Random()
        self.connections: dict[str, Connection] = {}
        self.router = Router(self.connections, config.routes, rng=self._rng)
        settings = config.runtime
        self.supervisor = Supervisor(
            strategy="one_for_one",
            max_restarts=settings.restart_intensity,
            period=settings.restart_period_s,
        )
        self._closing = False
        self.gateway: Gateway | None = None
        """The WebSocket gateway, when the config enables one (see `start_runtime`)."""
        self._requests = 0
        self._completions = 0
        self._failures: Counter[str] = Counter()
        self.responses = ResponseCache(
            self.router,
            default=settings.cache,
            store=MemoryCacheStore(settings.cache_max_entries),
        )
        """The response cache and request coalescing in front of the router."""
        self.shared: SharedState | None = None
        if settings.state.strip() != "local":
            # Redis-shared state only when configured: its modules stay out of the import.
            from actors._shared_state import shared_state_for

            self.shared = shared_state_for(settings, wall_clock=wall_clock)
        """State shared with other processes (``[runtime] state``), ``None`` when local."""
        if self.shared is not None:  # one response cache for every process using the store
            self.responses.store = SharedCacheStore(self.shared)

    # -- lifetime -----------------------------------------------------------------------

    def _make_connection(self, config: ConnectionConfig) -> Connection:
        transport = self._transports.get(config.name, self._default_transport)
        link = None if self.shared is None else self.shared.link(config.name)
        conn = Connection(
            config,
            transport=transport,
            rng=random.Random(self._rng.getrandbits(64)),
            wall_clock=self._wall_clock,
            shared=link,
        )
        if link is not None:
            link.attach(conn)
        return conn

    def _spec(self, conn: Connection) -> ChildSpec:
        async def start(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await ProviderActor(conn).run(task_status=task_status)

        return ChildSpec(
            id=conn.name,
            start=start,
            restart="permanent",
            shutdown_timeout=self.config.runtime.shutdown_timeout_s,
            stop=conn.mailbox.close,
        )

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for name, cfg in self.config.connections.items():
            if not cfg.name:
                cfg = msgspec.structs.replace(cfg, name=name)
            self.connections[name] = self._make_connection(cfg)
        specs = [self._spec(conn) for conn in self.connections.values()]
        await self.supervisor.run(specs, task_status=task_status)

    async def aclose(self) -> None:
        """Drain and stop: close every mailbox, let actors finish their work up to
        ``runtime.shutdown_timeout_s``, then cancel what remains."""
        self._closing = True
        self.router.closed = True
        if self.gateway is not None:
            # Tell remote clients first: no new requests, running ones may finish.
            await self.gateway.shutdown(self.config.runtime.shutdown_timeout_s)
        # Close every mailbox first, so all connections drain at the same time (the
        # supervisor then stops them one by one, each within the shutdown timeout).
        for conn in list(self.connections.values()):
            conn.mailbox.close()
        try:
            await self.supervisor.stop()
        finally:
            self._fail_leftovers()
        if self.shared is not None:
            await self.shared.aclose()  # last usage, and this process's slots freed

    def _fail_leftovers(self) -> None:
        for conn in list(self.connections.values()):
            _fail_queued(conn)

    # -- requests -----------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> Completion:
        """Route *request* and return its completion; raises `RequestFailed` with the typed
        `Failure` otherwise."""
        result = await self.chat_result(request)
        if isinstance(result, Failure):
            raise RequestFailed(result)
        return result

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Route an embeddings request; raises `RequestFailed` on failure."""
        result = await self.embed_result(request)
        if isinstance(result, Failure):
            raise RequestFailed(result)
        return result

    async def chat_result(self, request: ChatRequest) -> Completion | Failure:
        """Like `chat`, but the `Failure` is returned as data (for servers and batch code)."""
        self._requests += 1
        try:
            result = await self.responses.chat(request)
        except BaseException:
            self._failures[ErrorKind.CANCELLED.value] += 1
            raise
        self._count(result)
        return result

    async def embed_result(self, request: EmbedRequest) -> Embeddings | Failure:
        """Like `embed`, but the `Failure` is returned as data."""
        self._requests += 1
        try:
            result = await self.responses.embed(request)
        except BaseException:
            self._failures[ErrorKind.CANCELLED.value] += 1
            raise
        self._count(result)
        return result

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[RouterStream | SharedStream]:
        """Stream *request*: ``async with rt.stream(req) as s: async for event in s: ...``;
        afterwards ``s.result`` is the `Completion` or the `Failure`. Leaving the block
        early cancels the upstream request (its usage is still recorded), unless identical
        requests share it (a cached route): then it goes on for them."""
        self._requests += 1
        async with self.responses.stream(request) as handle:
            try:
                yield handle
            finally:
                if handle._result is not None:
                    self._count(handle._result)
                else:
                    self._failures[ErrorKind.CANCELLED.value] += 1

    def _count(self, result: Completion | Embeddings | Failure) -> None:
        if isinstance(result, Failure):
            self._failures[result.kind.value] += 1
        else:
            self._completions += 1

    # -- connections --------------------------------------------------------------------

    def connections_for(self, model: str) -> list[str]:
        """Which connections can serve *model* (routes, aliases, declared models/patterns)."""
        return self.router.connections_for(model)

    def connection(self, name: str) -> Connection:
        try:
            return self.connections[name]
        except KeyError:
            raise KeyError(f"no connection named {name!r}") from None

    def override_connection(self, name: str, **changes: Any) -> ConnectionConfig:
        """Hot swap settings of connection *name* (any `ConnectionConfig` field, e.g.
        ``base_url=...``, ``api_key="sk-test"``, ``retry={"max_attempts": 1}``). New requests
        use the new settings; in-flight ones finish with the old. Raises `ConfigError` naming
        the bad key."""
        conn = self.connection(name)
        source = f"override_connection({name!r})"
        new = _apply_changes(conn.config, changes, source)
        try:
            conn.override(new)
            self.router.invalidate()
        except ValueError as exc:  # a cross-field rule a machine checks (nothing was changed)
            raise ConfigError(source, [("", str(exc))]) from None
        return new

    async def add_connection(
        self, config: ConnectionConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> Connection:
        """Start a new connection while running. Raises `ValueError` if the name exists."""
        if not config.name:
            raise ValueError("the connection config needs a name")
        if config.name in self.connections:
            raise ValueError(f"a connection named {config.name!r} already exists")
        if transport is not None:
            self._transports[config.name] = transport
        conn = self._make_connection(config)
        self.connections[config.name] = conn
        self.router.invalidate()
        try:
            await self.supervisor.add_child(self._spec(conn))
        except BaseException:
            del self.connections[config.name]
            self.router.invalidate()
            raise
        return conn

    async def remove_connection(self, name: str) -> None:
        """Stop connection *name* gracefully (queued work drains up to the shutdown timeout)
        and forget it."""
        conn = self.connection(name)
        conn.mailbox.close()
        try:
            await self.supervisor.remove_child(name)
        finally:
            _fail_queued(conn)
            self.connections.pop(name, None)
            self.router.invalidate()

    async def probe(
        self, name: str, *, model: str | None = None, timeout: float = 15.0
    ) -> ProbeResult:
        """A cheap real call (one output token) that checks *name*'s endpoint and key."""
        conn = self.connection(name)
        target = conn.config.resolve_model(model)
        request = ChatRequest(
            model=target,
            messages=[Message(role="user", content="ping")],
            max_tokens=1,
            metadata={"switchboard": "probe"},
        )
        start = trio.current_time()
        result = await conn.chat(request, model=target, timeout=timeout)
        if isinstance(result, Failure):
            return ProbeResult(connection=name, ok=False, model=target, failure=result)
        return ProbeResult(
            connection=name, ok=True, model=result.model, latency=trio.current_time() - start
        )

    # -- observation --------------------------------------------------------------------

    def metrics(self) -> RuntimeMetrics:
        """A typed snapshot of every counter (see `RuntimeMetrics`); ``.prometheus()``
        renders it as Prometheus text."""
        mailboxes = {n: c.mailbox.statistics() for n, c in self.connections.items()}
        return RuntimeMetrics(
            connections={n: c.metrics.snapshot() for n, c in self.connections.items()},
            failovers=self.router.failovers,
            requests=self._requests,
            completions=self._completions,
            failures=dict(self._failures),
            queued={n: m.queued for n, m in mailboxes.items()},
            in_flight={n: m.in_flight for n, m in mailboxes.items()},
            clients=(
                {} if self.gateway is None else self.gateway.clients.statistics(trio.current_time())
            ),
            cache=self.responses.statistics(),
            state=self.state,
            shared_usage={} if self.shared is None else self.shared.totals(),
        )

    def statistics(self) -> dict[str, ConnectionStatistics]:
        return {n: c.statistics() for n, c in self.connections.items()}

    def health(self) -> Health:
        now = trio.current_time()
        rows = []
        for name, conn in self.connections.items():
            stats = conn.mailbox.statistics()
            rows.append(
                ConnectionHealth(
                    name=name,
                    provider=conn.config.provider,
                    running=conn.running,
                    breaker=conn.breaker.snapshot(now).state.value,
                    queued=stats.queued,
                    in_flight=stats.in_flight,
                    parked_for=conn.unavailable_for(now),
                    incarnation=conn.incarnation,
                )
            )
        usable = [
            r
            for r in rows
            if r.running and r.parked_for is None and r.breaker not in _REFUSING_STATES
        ]
        if rows and len(usable) == len(rows):
            status = "ok"
        elif usable:
            status = "degraded"
        else:
            status = "down"
        return Health(status=status, connections=rows, state=self.state)

    @property
    def state(self) -> str:
        """Where limits, breakers and usage totals live right now (see `RuntimeMetrics`)."""
        return "local" if self.shared is None else self.shared.state


# Breaker states that refuse every call whatever the time (`Connection.unavailable_for` only
# knows the open-until time of a timed OPEN).
_REFUSING_STATES = frozenset({"forced_open"})


def _client_families(clients: Mapping[str, ClientStatistics]) -> list[str]:
    """Prometheus families of the gateway's per-client counters (labelled by client name)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Sequence[tuple[str, float]]) -> None:
        lines.append(f"# HELP switchboard_client_{name} {help_text}")
        lines.append(f"# TYPE switchboard_client_{name} {kind}")
        lines.extend(f"switchboard_client_{name}{labels} {value:g}" for labels, value in samples)

    def who(name: str, **more: str) -> str:
        extra = "".join(f',{k}="{_label(v)}"' for k, v in more.items())
        return '{client="' + _label(name) + '"' + extra + "}"

    rows = sorted(clients.items())
    refused = [(who(n, reason=r), v) for n, s in rows for r, v in sorted(s.refused.items())]
    tokens = [
        (who(n, direction=d), v)
        for n, s in rows
        for d, v in (("in", s.input_tokens), ("out", s.output_tokens))
    ]
    budgets = [(who(n), s.budget_remaining) for n, s in rows if s.budget_remaining is not None]
    family("requests_total", "counter", "Requests a gateway client was admitted for.",
           [(who(n), s.requests) for n, s in rows])  # fmt: skip
    family("refused_total", "counter", "Requests refused by a client's limits, by reason.",
           refused)  # fmt: skip
    family("in_flight", "gauge", "Admitted requests of a client that have not ended.",
           [(who(n), s.in_flight) for n, s in rows])  # fmt: skip
    family("tokens_total", "counter", "Tokens used by a client's requests.", tokens)
    family("cost_total", "counter", "Estimated cost of a client's answers.",
           [(who(n), s.cost) for n, s in rows])  # fmt: skip
    family("budget_remaining", "gauge", "What is left of a client's budget this period.",
           budgets)  # fmt: skip
    return lines


def _shared_families(state: str, usage: Mapping[str, Mapping[str, ModelUsage]]) -> list[str]:
    """Prometheus families of the shared state: whether it answers, and the usage and cost
    of every process that used it (the same in every process: do not sum across them)."""
    lines = [
        "# HELP switchboard_shared_state_up 1 while the shared state answers, 0 while limits "
        "are enforced per process.",
        "# TYPE switchboard_shared_state_up gauge",
        f"switchboard_shared_state_up {0 if state.startswith('local') else 1}",
        "# HELP switchboard_shared_tokens_total Tokens of every process sharing the state.",
        "# TYPE switchboard_shared_tokens_total counter",
    ]
    rows = [(c, m, u) for c, models in sorted(usage.items()) for m, u in sorted(models.items())]
    for conn, model, u in rows:
        for direction, value in (("in", u.input_tokens), ("out", u.output_tokens)):
            labels = f'connection="{_label(conn)}",model="{_label(model)}",direction="{direction}"'
            lines.append(f"switchboard_shared_tokens_total{{{labels}}} {value:g}")
    lines.append(
        "# HELP switchboard_shared_cost_total Estimated cost of every process sharing the state."
    )
    lines.append("# TYPE switchboard_shared_cost_total counter")
    for conn, model, u in rows:
        if u.cost is not None:
            labels = f'connection="{_label(conn)}",model="{_label(model)}"'
            lines.append(f"switchboard_shared_cost_total{{{labels}}} {u.cost:g}")
    return lines


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fail_queued(conn: Connection) -> int:
    """Resolve every request still queued in *conn*'s (closed, unserved) mailbox with a
    ``cancelled`` failure, so that no caller waits forever. Returns how many there were."""
    count = 0
    while True:
        try:
            envelope = conn.mailbox.get_nowait()
        except (trio.WouldBlock, MailboxClosed):
            return count
        call = envelope.request
        if envelope.resolve(
            Failure.of(
                ErrorKind.CANCELLED,
                f"connection {conn.name!r} was shut down before the request started",
                connection=conn.name,
                model=call.model,
                request_id=call.request.request_id,
            )
        ):
            count += 1


def _secret_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def _apply_changes(
    config: ConnectionConfig, changes: Mapping[str, Any], source: str
) -> ConnectionConfig:
    fields = {f.name: f for f in msgspec.structs.fields(ConnectionConfig)}
    converted: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, value in changes.items():
        field = fields.get(key)
        if field is None or key == "name":
            problems.append(
                (
                    key,
                    f"not a connection setting; expected one of: "
                    f"{', '.join(sorted(k for k in fields if k != 'name'))}",
                )
            )
            continue
        if isinstance(value, Secret | msgspec.Struct):
            converted[key] = value
            continue
        try:
            converted[key] = msgspec.convert(value, field.type, dec_hook=_secret_hook)
        except msgspec.ValidationError as exc:
            problems.append((key, str(exc)))
    if problems:
        raise ConfigError(source, problems)
    return msgspec.structs.replace(config, **converted)


def _resolve_config(config: RuntimeConfig | str | os.PathLike[str]) -> RuntimeConfig:
    if isinstance(config, RuntimeConfig):
        return config
    from protocol._config_load import load_config  # TOML (tomllib) only for a path

    return load_config(config)


async def start_runtime(
    config: RuntimeConfig | str | os.PathLike[str],
    nursery: trio.Nursery,
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> Runtime:
    """Start the runtime's tree in *nursery* and return it once every connection is up (and,
    when the config has an enabled ``[gateway]``, once the gateway listens: ``rt.gateway``).
    Stop it with ``await rt.aclose()`` (or cancel the nursery)."""
    runtime = Runtime(
        _resolve_config(config),
        transports=transports,
        transport=transport,
        rng=rng,
        wall_clock=wall_clock,
    )
    await nursery.start(runtime.responses.run)
    if runtime.shared is not None:
        await nursery.start(runtime.shared.run)
    await nursery.start(runtime._run)
    gateway = runtime.config.gateway
    if gateway is not None and gateway.enabled:
        from ._serving import start_gateway  # the WebSocket stack only when it is used

        runtime.gateway = await start_gateway(runtime, nursery, gateway)
    return runtime


@asynccontextmanager
async def open_runtime(
    config: RuntimeConfig | str | os.PathLike[str],
    *,
    transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> AsyncIterator[Runtime]:
    """Run the runtime for the duration of the block (a path loads a TOML config).

    *transports* maps connection names to httpx transports (e.g. the fault kit's
    `FakeTransport`); *transport* is the default for the others. *rng* seeds jitter and
    weighted routing; *wall_clock* (epoch seconds; default `time.time`) reads absolute times
    in provider headers - pass one matching a virtual clock in tests. Leaving the block drains
    in-flight work up to ``runtime.shutdown_timeout_s``, then cancels.
    """
    runtime: Runtime | None = None
    try:
        async with unwrapping(), trio.open_nursery() as nursery:
            runtime = await start_runtime(
                config,
                nursery,
                transports=transports,
                transport=transport,
                rng=rng,
                wall_clock=wall_clock,
            )
            try:
                yield runtime
            finally:
                with trio.CancelScope(shield=True):
                    grace = runtime.config.runtime.shutdown_timeout_s
                    with trio.move_on_after(grace + 1.0 if math.isfinite(grace) else 30.0):
                        await runtime.aclose()
                nursery.cancel_scope.cancel()
    finally:
        if runtime is not None:
            runtime._fail_leftovers()
