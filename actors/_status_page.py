"""The live status page: what the runtime is doing, readable at a glance, in a browser.

Problem: ``/metrics`` is for Prometheus and ``switchboard status`` for a terminal; an operator
who opens the gateway's address in a browser wants to see at once whether it is healthy,
which connections are up (breaker states), what is queued, and what the traffic costs, and
to watch it move. This module is that page and its data; the HTTP face
(``actors._http_face``) serves it on the gateway's port:

- ``GET /``: the page (`actors._status_html`): one self-contained HTML document with its
  CSS and script inline (no CDN, fonts or external scripts: the gateway may be reachable on
  loopback only). It holds no data.
- ``GET /status``: one `StatusSnapshot` as JSON (for scripts, and for the page to learn why
  its event stream was refused).
- ``GET /status/events``: Server-Sent Events: the snapshot at once, then again whenever it
  changed, checked every ``interval`` seconds (1 s), and a ``ping`` event after
  ``ping_every`` quiet checks, so the page can tell a quiet server from a lost connection.
  SSE and not the WebSocket gateway: a browser's ``EventSource`` reconnects by itself and
  needs no framing code, and the data flows one way.

Bounded work. A snapshot is built at most once per half ``interval`` however many pages
watch (they share it, `StatusPage.current`); each viewer compares bytes and writes at most
one event per ``interval``; at most ``max_viewers`` event streams are open at once (the next
gets 503 with ``Retry-After``); a viewer that stops reading is closed by the face's
slow-client write bound; a viewer that leaves ends its stream at once (the face watches for
the disconnect); `StatusPage.close` (the face's shutdown) ends every stream.

Auth, decided: **the page shell is public, the data is not.** ``/`` is static code with no
data in it, so any visitor may load it; ``/status`` and ``/status/events`` need a valid
token, checked by the same `ClientKeys.authenticate` as every other endpoint (any client's
token, like ``/metrics``; an open loopback gateway with no tokens lets everyone in). A
browser's ``EventSource`` cannot send an ``Authorization`` header, so these two endpoints
also take the token as the ``token`` query parameter (and only these two: the API
endpoints keep to headers). The page gets the token from the URL *fragment*
(``http://host:8765/#token=...``, which the browser never sends to the server and
``switchboard serve`` prints for a token it generated) or from a small form, keeps it in the
tab's ``sessionStorage``, and removes the fragment from the address bar. The token is never
written into the page, the face logs paths without query strings, and every page answer
carries ``Cache-Control: no-store``, ``Referrer-Policy: no-referrer`` and a
Content-Security-Policy that allows only the page's own inline style and script (by hash)
and connections to its own origin.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec
import trio

from ._client_keys import ClientStatistics
from ._metrics import ConnectionMetricsSnapshot, HistogramSnapshot
from ._status_html import SCRIPT, STYLE, page

# --------------------------------------------------------------------------- the snapshot


class TimingView(msgspec.Struct, frozen=True, kw_only=True):
    """A latency histogram made readable: ``count`` observations, their ``mean`` (seconds,
    ``None`` when empty), and the ``p50``/``p95`` estimates, which are bucket upper bounds
    (``None`` when empty or above ``top``, the largest bound)."""

    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    top: float


class ConnectionView(msgspec.Struct, frozen=True, kw_only=True):
    """One connection on the page. ``parked`` is True while it refuses work (an open breaker
    or a rate-limit pause); ``parked_for`` is then the whole seconds until it takes work again,
    ``None`` when that has no set end (forced open: until an operator closes it). ``failures``
    counts requests that ended failed, by error kind; ``cost`` is ``None`` without prices."""

    name: str
    provider: str
    running: bool
    breaker: str
    parked: bool
    parked_for: float | None
    incarnation: int
    queued: int
    in_flight: int
    requests: int
    completions: int
    failures: dict[str, int]
    attempts: int
    retries: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    latency: TimingView
    first_token: TimingView


class ClientView(msgspec.Struct, frozen=True, kw_only=True):
    """One client (virtual key) of the gateway: its counters, never its token."""

    name: str
    requests: int
    in_flight: int
    completions: int
    failures: int
    refused: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost: float
    budget: float | None
    budget_period: str
    spend: float


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """The runtime as callers saw it (``requests``, ``completions``, ``failures`` by kind,
    after routing; ``failovers``), current queues summed, and tokens and cost summed over
    connections (``cost`` ``None`` when no connection has prices)."""

    requests: int
    completions: int
    failures: dict[str, int]
    failovers: int
    queued: int
    in_flight: int
    input_tokens: int
    output_tokens: int
    cost: float | None


class StatusSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the page shows. ``status`` is the runtime's health: ``ok``, ``degraded``
    or ``down``."""

    status: str
    totals: Totals
    connections: list[ConnectionView]
    clients: list[ClientView] = []


class HealthRow(Protocol):
    """What `build_snapshot` reads of one connection's health (``supervisors``'
    ``ConnectionHealth``)."""

    @property
    def name(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def running(self) -> bool: ...
    @property
    def breaker(self) -> str: ...
    @property
    def queued(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def parked_for(self) -> float | None: ...
    @property
    def incarnation(self) -> int: ...


class MetricsView(Protocol):
    """What `build_snapshot` reads of the runtime's metrics (``supervisors``'
    ``RuntimeMetrics``)."""

    @property
    def connections(self) -> Mapping[str, ConnectionMetricsSnapshot]: ...
    @property
    def failovers(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def completions(self) -> int: ...
    @property
    def failures(self) -> Mapping[str, int]: ...
    @property
    def clients(self) -> Mapping[str, ClientStatistics]: ...


def timing_view(histogram: HistogramSnapshot) -> TimingView:
    """*histogram* as the page shows it (see `TimingView`)."""
    top = histogram.bounds[-1] if histogram.bounds else math.inf

    def bound(q: float) -> float | None:
        value = histogram.quantile(q)
        return value if value is not None and math.isfinite(value) else None

    count = histogram.count
    return TimingView(
        count=count,
        mean=histogram.total / count if count else None,
        p50=bound(0.5),
        p95=bound(0.95),
        top=top,
    )


def build_snapshot(
    status: str, health: Sequence[HealthRow], metrics: MetricsView
) -> StatusSnapshot:
    """The page's snapshot from the runtime's health (*status* and its connection rows, in
    their order) and its *metrics*."""
    connections = []
    for row in health:
        m = metrics.connections.get(row.name)
        wait = row.parked_for
        parked_for = float(math.ceil(wait)) if wait is not None and math.isfinite(wait) else None
        connections.append(
            ConnectionView(
                name=row.name,
                provider=row.provider,
                running=row.running,
                breaker=row.breaker,
                parked=wait is not None,
                parked_for=parked_for,
                incarnation=row.incarnation,
                queued=row.queued,
                in_flight=row.in_flight,
                requests=m.requests if m else 0,
                completions=m.completions if m else 0,
                failures=dict(m.failures) if m else {},
                attempts=m.attempts if m else 0,
                retries=m.retries if m else 0,
                input_tokens=m.input_tokens if m else 0,
                output_tokens=m.output_tokens if m else 0,
                cost=m.cost if m else None,
                latency=timing_view(m.latency) if m else _NO_TIMING,
                first_token=timing_view(m.time_to_first_token) if m else _NO_TIMING,
            )
        )
    costs = [c.cost for c in connections if c.cost is not None]
    totals = Totals(
        requests=metrics.requests,
        completions=metrics.completions,
        failures=dict(metrics.failures),
        failovers=metrics.failovers,
        queued=sum(c.queued for c in connections),
        in_flight=sum(c.in_flight for c in connections),
        input_tokens=sum(c.input_tokens for c in connections),
        output_tokens=sum(c.output_tokens for c in connections),
        cost=sum(costs) if costs else None,
    )
    clients = [
        ClientView(
            name=name,
            requests=c.requests,
            in_flight=c.in_flight,
            completions=c.completions,
            failures=c.failures,
            refused=dict(c.refused),
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
            cost=c.cost,
            budget=c.budget,
            budget_period=c.budget_period,
            spend=c.spend,
        )
        for name, c in sorted(metrics.clients.items())
    ]
    return StatusSnapshot(status=status, totals=totals, connections=connections, clients=clients)


_NO_TIMING: Final = TimingView(count=0, mean=None, p50=None, p95=None, top=math.inf)


# --------------------------------------------------------------------------- the page


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


PAGE: Final = page().encode()
"""The page's HTML document."""

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; "
    f"script-src {_csp_hash(SCRIPT)}; "
    f"style-src {_csp_hash(STYLE)}; "
    "connect-src 'self'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

PAGE_HEADERS: Final[list[tuple[bytes, bytes]]] = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
"""Headers of every answer of the page's three endpoints (see the module docstring)."""


def query_token(scope: Mapping[str, Any]) -> str | None:
    """The ``token`` query parameter of an ASGI *scope* (the first one), or ``None``."""
    raw = scope.get("query_string") or b""
    query = bytes(raw).decode("latin-1")
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("token")
    return values[0] if values else None


class StatusSource(Protocol):
    """Where the page's data comes from (the runtime's serving backend)."""

    def status_snapshot(self) -> StatusSnapshot:
        """The current snapshot."""
        ...


Write = Callable[[bytes], Awaitable[None]]


class StatusPage:
    """The page's data side: the shared snapshot and the event streams.

    *source* gives the snapshot; *interval* (seconds) is how often a stream checks it for
    changes; a stream with nothing new for *ping_every* checks sends a ``ping`` event;
    *max_viewers* bounds the streams open at once.
    """

    def __init__(
        self,
        source: StatusSource,
        *,
        interval: float = 1.0,
        ping_every: int = 5,
        max_viewers: int = 16,
    ) -> None:
        if not interval > 0 or ping_every < 1 or max_viewers < 1:
            raise ValueError("interval must be > 0, ping_every and max_viewers >= 1")
        self.source = source
        self.interval = interval
        self.ping_every = ping_every
        self.max_viewers = max_viewers
        self.viewers = 0
        self.builds = 0
        self._cached: bytes | None = None
        self._built_at = -math.inf
        self._scopes: set[trio.CancelScope] = set()
        self._closed = False

    def current(self, now: float) -> bytes:
        """The snapshot as JSON, built again only when the last one is half an ``interval``
        old at *now* (so any number of viewers costs one build per tick)."""
        if self._cached is None or now - self._built_at >= self.interval / 2:
            self._cached = msgspec.json.encode(self.source.status_snapshot())
            self._built_at = now
            self.builds += 1
        return self._cached

    @contextlib.contextmanager
    def viewer(self) -> Iterator[bool]:
        """Count one viewer for the ``with`` block: ``True`` when admitted, ``False`` when
        ``max_viewers`` are already watching (or the page is closed)."""
        admitted = not self._closed and self.viewers < self.max_viewers
        if admitted:
            self.viewers += 1
        try:
            yield admitted
        finally:
            if admitted:
                self.viewers -= 1

    async def stream(self, write: Write) -> None:
        """Write this viewer's event stream with *write* until `close` (or until the caller
        is cancelled, e.g. because the viewer left; a failed write raises out of here)."""
        with trio.CancelScope() as scope:
            if self._closed:
                return
            self._scopes.add(scope)
            try:
                await write(f"retry: {math.ceil(self.interval * 2000)}\n\n".encode())
                last = b""
                quiet = 0
                while True:
                    body = self.current(trio.current_time())
                    if body != last:
                        await write(b"data: " + body + b"\n\n")
                        last, quiet = body, 0
                    else:
                        quiet += 1
                        if quiet >= self.ping_every:
                            await write(b"event: ping\ndata: {}\n\n")
                            quiet = 0
                    await trio.sleep(self.interval)
            finally:
                self._scopes.discard(scope)

    def close(self) -> None:
        """End every stream and refuse new viewers (the server is shutting down)."""
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()
