"""Shared state: the runtime's link to a store that several processes share (Redis).

The problem: with ``[runtime] state = "redis://..."`` the rate limits, breakers and usage
totals of every connection are shared by all processes using the store, but no request may
wait on, or fail because of, a store that is slow or gone. What is decided lives in
`actors._shared_limits` (pure); this module is the shell around it: the `Store` interface
and its in-process implementation (`MemoryStore`), one `ConnectionLink` per connection, the
`SharedAdmission` a connection admits its requests through, and `SharedState`, the runtime's
service that syncs links in the background and watches the store.

Choices:

- **Wrap admission, do not replace it.** A connection keeps its own `Limiter` and `Admission`
  (FIFO order, local parks, concurrency, the router's view); `SharedAdmission` adds one step
  after a local grant: draw the request's share from the store through the link's lease (no
  round trip while the lease covers it, see `actors._shared_limits`). Its own limits never
  bind before the shared ones (every process draws from the shared buckets at least what it
  draws locally), so the order of waiters stays the local one. Without shared state nothing
  is wrapped and nothing costs anything.
- **The store's calls are bounded and optional.** Every call is bounded by
  ``[runtime] state_timeout_s``; a call that fails or times out marks the store unreachable,
  and from then on requests are admitted on local state alone (no call at all) while the
  service tries the store again every `RETRY_S`. When it answers, every link syncs at once:
  batches whose fate was unknown are sent again (applied at most once), usage counted
  meanwhile is added, the breaker's state is published. Capacity used during the outage is
  not charged again: the provider's rate-limit headers correct the shared buckets.
- **Background syncs, not per request.** Settling, giving back leases, provider observations,
  parks, usage and the breaker's decisions reach the store in one call per connection,
  `SYNC_S` after traffic (at once after a 429), or every `IDLE_SYNC_S` as a heartbeat that
  also reads the shared breaker and the usage totals back.
- **Waiting in order, served in batches.** A caller the lease does not cover joins the
  link's queue; the waiter at the head asks the store for its shortfall, plus what the others
  queued need and the next lease as far as available, and sleeps out the store's answer (or
  until a local request gives capacity back); `ConnectionLink._pump` then serves every
  waiter the lease covers at once, in order. A queue does not outlive the shortage that
  formed it, so under load most requests still take the lease's fast path.
- **One store call at a time per connection** (a lock), so the store always learns the slot
  count a process holds in the order the process changed it.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import trio

from protocol._config import RateLimitConfig, RuntimeSettings
from protocol._errors import ConfigError
from protocol._ratelimit import RateLimitInfo
from protocol._state_url import parse_state

from ._admission import Admission, AdmissionTimeout
from ._breaker import Breaker, BreakerState
from ._limiter import Grant, Limiter, WaitReason
from ._metrics import ModelUsage
from ._shared_limits import (
    NOTHING,
    Allowance,
    BreakerView,
    Delta,
    ModelDelta,
    Need,
    StoreModel,
    SyncReply,
    SyncRequest,
    TakeReply,
    TakeRequest,
    observation,
    plan_adopt,
    plan_publish,
)

if TYPE_CHECKING:
    from ._provider import Connection

log = logging.getLogger("switchboard.state")

SYNC_S = 0.1
"""A connection with traffic syncs this long after its last sync."""
IDLE_SYNC_S = 1.0
"""An idle connection syncs this often (heartbeat; reads the shared breaker and totals)."""
RETRY_S = 1.0
"""How often an unreachable store is tried again."""
POLL_S = (0.02, 0.25)
"""Waiting for a concurrency slot another process holds: first and longest poll interval."""
MIN_WAIT_S = 0.001
"""The shortest wait for shared capacity (waits are durations from the store's clock)."""
MAX_DOUBT = 16
"""Batches of unknown fate kept to send again (older ones are dropped, with a warning)."""
DEFAULT_TIMEOUT_S = 0.25


class StoreUnavailable(Exception):
    """The store did not answer (unreachable, too slow, or it failed). Never reaches a
    request: the runtime goes on with local state."""


class Store(Protocol):
    """Where shared state lives (`actors._shared_limits` defines the calls).

    ``open`` holds whatever the store needs (a connection pool) for the life of the runtime;
    ``take``/``sync``/``ping`` raise `StoreUnavailable` for any failure."""

    kind: str
    """What the state is called in health and metrics (``redis``)."""

    def open(self) -> AbstractAsyncContextManager[None]: ...

    async def take(self, name: str, request: TakeRequest) -> TakeReply: ...

    async def sync(self, name: str, request: SyncRequest) -> SyncReply: ...

    async def ping(self) -> None: ...


class MemoryStore:
    """The in-process `Store`: `StoreModel` on a clock (the trio clock by default), for tests
    and for several runtimes in one process. ``available = False`` makes every call fail and
    ``delay`` makes every call that slow, to rehearse an outage."""

    kind = "memory"

    def __init__(
        self, model: StoreModel | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self.model = model or StoreModel()
        self.clock = clock or trio.current_time
        self.available = True
        self.delay = 0.0
        self.calls = 0

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        yield

    async def _enter(self) -> None:
        self.calls += 1
        if self.delay:
            await trio.sleep(self.delay)
        else:
            await trio.lowlevel.checkpoint()
        if not self.available:
            raise StoreUnavailable("the memory store is switched off")

    async def take(self, name: str, request: TakeRequest) -> TakeReply:
        await self._enter()
        return self.model.take(name, request, self.clock())

    async def sync(self, name: str, request: SyncRequest) -> SyncReply:
        await self._enter()
        return self.model.sync(name, request, self.clock())

    async def ping(self) -> None:
        await self._enter()


def _limits(config: RateLimitConfig) -> tuple[int, int, int]:
    return (
        config.requests_per_minute or 0,
        config.tokens_per_minute or 0,
        config.concurrent_requests or 0,
    )


class SharedState:
    """The runtime's service for one store: ``await nursery.start(shared.run)``.

    ``link(name)`` gives each connection its `ConnectionLink`. ``state`` says where limits
    are enforced right now: the store's ``kind`` (``redis``), or ``local (redis unreachable
    since <UTC time>)``. *pid* names this process in the store (random by default).
    """

    def __init__(
        self,
        store: Store,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        wall_clock: Callable[[], float] | None = None,
        pid: str | None = None,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.pid = pid or secrets.token_hex(8)
        self.links: dict[str, ConnectionLink] = {}
        self.up = False
        self.down_since: float | None = None
        """Epoch seconds since when the store is unreachable (``None`` while it answers)."""
        self.outages = 0
        self._wall = wall_clock or time.time
        self._open = False
        self._wake = trio.Event()

    # -- reading

    @property
    def state(self) -> str:
        if self.up:
            return self.store.kind
        if self.down_since is None:
            return f"local ({self.store.kind} not reached yet)"
        since = datetime.fromtimestamp(self.down_since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"local ({self.store.kind} unreachable since {since})"

    def totals(self) -> dict[str, dict[str, ModelUsage]]:
        """Usage and cost by connection and model, summed over every process that used the
        store, as last read from it (empty before the first read)."""
        return {name: dict(link.totals) for name, link in self.links.items() if link.totals}

    # -- links

    def link(self, name: str) -> ConnectionLink:
        link = self.links.get(name)
        if link is None:
            link = self.links[name] = ConnectionLink(self, name)
            self.wake()
        return link

    def wake(self) -> None:
        self._wake.set()

    # -- calls

    async def call(self, fn: Callable[..., Awaitable[object]], *args: object) -> object:
        """``await fn(*args)`` bounded by the timeout; raises `StoreUnavailable` when the
        store is marked unreachable, fails or is too slow (and marks it unreachable)."""
        if not self.up:
            raise StoreUnavailable("marked unreachable")
        if not self._open:
            exc = StoreUnavailable("the store's client is not open")
            self.failed(exc)
            raise exc
        try:
            with trio.move_on_after(self.timeout):
                return await fn(*args)
            raise StoreUnavailable(f"no answer within {self.timeout:g}s (state_timeout_s)")
        except StoreUnavailable as exc:
            self.failed(exc)
            raise

    def failed(self, exc: BaseException) -> None:
        """A call failed: serve on local state until the store answers again."""
        if self.up:
            self.up = False
            self.outages += 1
            self.down_since = self._wall()
            log.warning(
                "shared state: %s unreachable (%s); limits are enforced per process until "
                "it answers again",
                self.store.kind,
                exc,
            )
        elif self.down_since is None:
            self.down_since = self._wall()
        self._wake.set()

    async def _connect(self) -> bool:
        try:
            with trio.move_on_after(self.timeout):
                await self.store.ping()
                if not self.up:
                    was_down = self.down_since is not None
                    self.up = True
                    self.down_since = None
                    if was_down:
                        log.warning("shared state: %s answers again; resyncing", self.store.kind)
                    for link in self.links.values():
                        link.urgent = True
                return True
            raise StoreUnavailable(f"no answer within {self.timeout:g}s (state_timeout_s)")
        except StoreUnavailable as exc:
            self.failed(exc)
            return False

    # -- the service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the store open and sync links until cancelled. Reports started after the
        first attempt to reach the store (bounded by the timeout), reached or not."""
        started = False
        while True:
            try:
                async with self.store.open():
                    self._open = True
                    try:
                        await self._connect()
                        if not started:
                            started = True
                            task_status.started()
                        await self._loop()
                    finally:
                        self._open = False
            except Exception as exc:  # the store's client itself broke: start it again
                self.failed(StoreUnavailable(f"{type(exc).__name__}: {exc}"))
            if not started:
                started = True
                task_status.started()
            await trio.sleep(RETRY_S)

    async def _loop(self) -> None:
        while True:
            if not self.up:
                await trio.sleep(RETRY_S)
                await self._connect()
                continue
            now = trio.current_time()
            next_at = now + IDLE_SYNC_S
            answered = True
            for link in list(self.links.values()):
                due = link.due()
                if due <= now:
                    answered = await link.sync()
                    if not answered:
                        break
                    due = link.due()
                next_at = min(next_at, due)
            if not answered:
                continue
            with trio.move_on_at(next_at):
                await self._wake.wait()
            self._wake = trio.Event()

    async def aclose(self) -> None:
        """Flush every link and leave the store (frees this process's slots). Bounded."""
        with trio.CancelScope(shield=True), trio.move_on_after(max(1.0, 4 * self.timeout)):
            for link in list(self.links.values()):
                if self.up and self._open:
                    await link.sync(leave=True)


class ConnectionLink:
    """One connection's part of the shared state: its `Allowance`, what is waiting to be
    synced, the breaker as last synced and the usage totals as last read."""

    def __init__(self, shared: SharedState, name: str) -> None:
        self.shared = shared
        self.name = name
        self.allowance = Allowance()
        self.connection: Connection | None = None
        self.totals: dict[str, ModelUsage] = {}
        self.dirty = False
        self.urgent = False
        self.last_sync = -math.inf
        self._queue: deque[_Waiter] = deque()  # callers waiting for shared capacity
        self._taking = False  # the head of the queue is asking the store
        self._io = trio.Lock()  # one store call at a time for this connection
        self._seq = 0
        self._doubt: list[Delta] = []
        self._park: float | None = None  # absolute (trio clock)
        self._observed: tuple[RateLimitInfo, float] | None = None
        self._flushed: dict[str, ModelUsage] = {}
        self._breaker: Breaker | None = None
        self._seen = BreakerView(BreakerState.CLOSED, None)
        self._version = 0
        self._limiter: Limiter | None = None
        self._totals_at = -math.inf

    def attach(self, connection: Connection) -> None:
        """The connection whose breaker and metrics this link shares."""
        self.connection = connection
        self._breaker = connection.breaker
        self._seen = _view(connection.breaker, trio.current_time())

    def admission(self, limiter: Limiter) -> SharedAdmission:
        """The admission a connection should use with *limiter*."""
        return SharedAdmission(limiter, self)

    def _touch(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.shared.wake()

    def due(self) -> float:
        """When this link should sync next (trio clock)."""
        if self.urgent:
            return -math.inf
        a = self.allowance
        busy = self.dirty or a.requests or a.tokens or a.idle_slots or a.debt
        return self.last_sync + (SYNC_S if busy else IDLE_SYNC_S)

    # -- requests

    def covers(self, need: Need) -> bool:
        """Whether *need* can be drawn at once: nobody waits before it and the lease covers
        it."""
        a = self.allowance
        return (
            a.requests >= need.requests
            and a.tokens >= need.tokens
            and a.idle_slots >= need.slots
            and not self._queue
        )

    def draw(self, need: Need) -> None:
        """Draw *need* from the lease (the caller checked `covers`)."""
        self.allowance.consume(need, trio.current_time())
        self._touch()

    async def acquire(
        self, need: Need, rpm: int, tpm: int, concurrency: int, deadline: float
    ) -> Need:
        """Draw *need* (a request's share under these limits) from the shared budget,
        waiting (in order, up to *deadline*) for it. Returns what was drawn (`NOTHING` when
        the store is unreachable: nothing is drawn, nothing waits). Raises
        `AdmissionTimeout` when the deadline passes first."""
        if not self.shared.up:
            return NOTHING
        if self.covers(need):
            self.draw(need)
            return need
        return await self._wait(need, rpm, tpm, concurrency, deadline)

    async def _wait(
        self, need: Need, rpm: int, tpm: int, concurrency: int, deadline: float
    ) -> Need:
        """Queue for *need*. Waiters are served strictly in order by `_pump` (all that the
        lease covers at once, so a queue never outlives the shortage that formed it); the
        waiter at the head asks the store for the shortfall and sleeps out the store's wait,
        the others sleep until they are served or become the head."""
        waiter = _Waiter(need)
        self._queue.append(waiter)
        since = trio.current_time()
        try:
            with trio.move_on_at(deadline):
                while waiter.drawn is None:
                    if self._queue[0] is waiter and not self._taking:
                        await self._ask(waiter, rpm, tpm, concurrency)
                    else:
                        waiter.nudge = trio.Event()
                        await waiter.nudge.wait()
        finally:
            if waiter.drawn is None:
                self._leave(waiter)
        if waiter.drawn is not None:
            return waiter.drawn
        now = trio.current_time()
        until = waiter.until
        retry_after = None if until is None else max(0.0, until - now)
        raise AdmissionTimeout(waited=now - since, retry_after=retry_after, reason=waiter.reason)

    async def _ask(self, head: _Waiter, rpm: int, tpm: int, concurrency: int) -> None:
        """The head's turn: ask the store for what the lease lacks, then serve whoever it
        covers; or sleep as long as the store says (polling when only a release helps)."""
        allowance = self.allowance
        short = allowance.shortfall(head.need)
        # Beyond the head's need: the lease, or what the others queued need if more.
        extra_r, extra_t = allowance.lease(rpm, tpm)
        queued = Need(0, 0, 0)
        for waiter in self._queue:
            queued = Need(*(a + b for a, b in zip(queued, waiter.need, strict=True)))
        extra_r = max(extra_r, queued.requests - allowance.requests - short.requests)
        extra_t = max(extra_t, queued.tokens - allowance.tokens - short.tokens)
        extra_s = max(0, queued.slots - allowance.idle_slots - short.slots)
        self._taking = True
        try:
            async with self._io:
                request = TakeRequest(
                    pid=self.shared.pid,
                    rpm=rpm,
                    tpm=tpm,
                    concurrency=concurrency,
                    need_requests=short.requests,
                    need_tokens=short.tokens,
                    need_slots=short.slots,
                    extra_requests=extra_r,
                    extra_tokens=extra_t,
                    extra_slots=extra_s,
                    held=allowance.held,
                )
                reply = await self.shared.call(self.shared.store.take, self.name, request)
        except StoreUnavailable:
            reply = None
        finally:
            self._taking = False
        if reply is None:
            self._pump()  # the store is unreachable: everyone goes on local state
            return
        assert isinstance(reply, TakeReply)
        if reply.ok:
            allowance.credit(reply)
            self._touch()
            self._pump()
            return
        wait = reply.wait
        if wait is None:
            wait, head.poll = head.poll, min(head.poll * 2, POLL_S[1])
            head.until = None
        else:
            head.until = trio.current_time() + wait
        head.reason = reply.reason or "queue"
        head.nudge = trio.Event()
        with trio.move_on_after(max(wait, MIN_WAIT_S)):
            await head.nudge.wait()  # or a local request gives capacity back

    def _pump(self) -> None:
        """Serve waiters from the head while the lease covers them (all of them, drawing
        nothing, when the store is unreachable); nudge the new head so it asks next."""
        queue = self._queue
        allowance = self.allowance
        up = self.shared.up
        served = False
        while queue:
            waiter = queue[0]
            if up:
                if allowance.shortfall(waiter.need) != NOTHING:
                    break
                allowance.consume(waiter.need, trio.current_time())
                waiter.drawn = waiter.need
                served = True
            else:
                waiter.drawn = NOTHING
            queue.popleft()
            waiter.nudge.set()
        if served:
            self._touch()
        if queue and not self._taking:
            queue[0].nudge.set()

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter gave up (deadline, cancelled): out of the queue; the rest may go."""
        try:
            self._queue.remove(waiter)
        except ValueError:
            return
        self._pump()

    def finish(self, need: Need | None, actual_tokens: int | None) -> None:
        """A request that drew *need* (``None``: nothing) is over (see `Allowance.settle`).
        Any request ending makes the link sync soon: its breaker may have changed, its usage
        has."""
        if need is not None:
            self.allowance.settle(need, actual_tokens if need.tokens else None)
            if self._queue:
                self._pump()  # a slot, maybe tokens, came back
        self._touch()

    def cancel(self, need: Need | None) -> None:
        """A request that drew *need* (``None``: nothing) never left: give it back."""
        if need is not None:
            self.allowance.cancel(need)
            if self._queue:
                self._pump()
        self._touch()

    def observe(self, info: RateLimitInfo) -> None:
        """A response's rate-limit headers, for the shared learned buckets."""
        if info.remaining_requests is None and info.remaining_tokens is None:
            return
        self._observed = (info, trio.current_time())
        self._touch()

    def park(self, until: float) -> None:
        """A 429: park the shared budget until *until* (trio clock) and give the lease back;
        synced at once."""
        if self._park is None or until > self._park:
            self._park = until
        self.allowance.give_back_all()
        self.urgent = True
        self._touch()
        self.shared.wake()

    # -- syncing

    async def sync(self, *, leave: bool = False) -> bool:
        """One sync call (see the module header); *leave* frees this process's slots and
        unregisters it. Returns False when the store did not answer."""
        async with self._io:
            return await self._sync(leave)

    async def _sync(self, leave: bool) -> bool:
        conn = self.connection
        now = trio.current_time()
        self.dirty = self.urgent = False
        rpm = tpm = 0
        breaker_publish = None
        view = self._seen
        breaker: Breaker | None = None
        if conn is not None:
            limiter = conn.admission.limiter
            rpm, tpm, _ = _limits(limiter.config)
            if limiter is self._limiter:
                self.allowance.forget_in_use(limiter.in_flight)
            self._limiter = limiter
            breaker = conn.breaker
            view = _view(breaker, now)
            if breaker is not self._breaker:
                self._breaker, self._seen = breaker, view  # a fresh machine: no news
            breaker_publish = plan_publish(self._seen, view, self._version, now)
        if leave:
            self.allowance.give_back_all()
        self._batch(now, rpm, tpm)
        read_totals = leave or now - self._totals_at >= IDLE_SYNC_S
        request = SyncRequest(
            pid=self.shared.pid,
            rpm=rpm,
            tpm=tpm,
            held=-1 if leave else self.allowance.held,
            deltas=list(self._doubt),
            breaker=breaker_publish,
            totals=read_totals,
        )
        try:
            reply = await self.shared.call(self.shared.store.sync, self.name, request)
        except StoreUnavailable:
            self.dirty = True
            if len(self._doubt) > MAX_DOUBT:
                dropped = self._doubt[:-MAX_DOUBT]
                del self._doubt[:-MAX_DOUBT]
                log.warning(
                    "shared state: %s: %d batches of unknown fate dropped", self.name, len(dropped)
                )
            return False
        assert isinstance(reply, SyncReply)
        self._doubt.clear()
        now = trio.current_time()
        self.last_sync = now
        if read_totals:
            self._totals_at = now
        if reply.totals is not None:
            self.totals = {m: _usage(row) for m, row in reply.totals.items()}
        if conn is None or breaker is None:
            return True
        seen = view
        if reply.version != self._version:
            current = _view(breaker, now)
            if current == view and breaker is conn.breaker:
                seen = self._adopt(conn, breaker, reply, now)
            self._version = reply.version
        self._seen = seen
        if reply.parked > 0.0:
            admission = conn.admission
            if isinstance(admission, SharedAdmission):
                admission.park_local(now + reply.parked)
            self.allowance.give_back_all()
        return True

    def _batch(self, now: float, rpm: int, tpm: int) -> None:
        """Gather what adds up since the last sync into a new numbered batch (none when
        there is nothing)."""
        requests, tokens, _ = self.allowance.surplus(now, rpm, tpm)
        park = None
        if self._park is not None:
            park = max(self._park - now, 0.0)
            self._park = None
        observed = None
        if self._observed is not None:
            info, at = self._observed
            observed = observation(info, now - at) if rpm or tpm else None
            self._observed = None
        usage = self._usage_delta()
        if requests or tokens or park is not None or observed is not None or usage:
            self._seq += 1
            self._doubt.append(
                Delta(
                    seq=self._seq,
                    requests=requests,
                    tokens=tokens,
                    park=park,
                    observed=observed,
                    usage=usage,
                )
            )

    def _usage_delta(self) -> dict[str, ModelDelta]:
        conn = self.connection
        if conn is None:
            return {}
        models = conn.metrics.snapshot().models
        out: dict[str, ModelDelta] = {}
        for model, now in models.items():
            was = self._flushed.get(model, _NO_USAGE)
            if now == was:
                continue
            out[model] = ModelDelta(
                input=now.input_tokens - was.input_tokens,
                output=now.output_tokens - was.output_tokens,
                wasted_input=now.wasted_input_tokens - was.wasted_input_tokens,
                wasted_output=now.wasted_output_tokens - was.wasted_output_tokens,
                cost=(now.cost or 0.0) - (was.cost or 0.0),
            )
        self._flushed = models
        return out

    def _adopt(
        self, conn: Connection, breaker: Breaker, reply: SyncReply, now: float
    ) -> BreakerView:
        plan = plan_adopt(
            breaker.state, breaker.open_until, reply.breaker, reply.breaker_remaining, now
        )
        if plan is not None:
            what, until = plan
            if what == "open":
                assert until is not None
                breaker.adopt_open(until, now)
            elif what == "close":
                breaker.adopt_close(now)
            elif what == "force_open":
                breaker.force_open(now)
            else:
                breaker.force_close(now)
            conn._drain_transitions(breaker)
        return _view(breaker, now)


class _Waiter:
    """A caller queued for shared capacity: what it needs, what it drew once served
    (``drawn``), and while it heads the queue what the store said (until when, why)."""

    __slots__ = ("drawn", "need", "nudge", "poll", "reason", "until")

    def __init__(self, need: Need) -> None:
        self.need = need
        self.drawn: Need | None = None
        self.nudge = trio.Event()
        self.poll = POLL_S[0]
        self.until: float | None = None
        self.reason: WaitReason = "queue"


class SharedAdmission(Admission):
    """An `Admission` that, after the local grant, draws the request's share of the shared
    budget through *link* (see the module header). Settling, cancelling, observations and
    parks go to both."""

    def __init__(self, limiter: Limiter, link: ConnectionLink) -> None:
        super().__init__(limiter)
        self.link = link
        self._needs: dict[int, Need] = {}  # grant id -> what it drew from the shared budget
        self._limits = rpm, tpm, concurrency = _limits(limiter.config)
        self._shares = bool(rpm or tpm or concurrency)

    def _need(self, estimate: int) -> Need:
        rpm, tpm, concurrency = self._limits
        return Need(
            1 if rpm else 0,
            (estimate if estimate < tpm else tpm) if tpm else 0,
            1 if concurrency else 0,
        )

    def admit_nowait(self, tokens_estimate: int, *, deadline: float | None = None) -> Grant | None:
        link = self.link
        if not self._shares or not link.shared.up:
            return super().admit_nowait(tokens_estimate, deadline=deadline)
        need = self._need(tokens_estimate)
        if not link.covers(need):
            return None
        grant = super().admit_nowait(tokens_estimate, deadline=deadline)
        if grant is not None:
            link.draw(need)
            self._needs[grant.id] = need
        return grant

    async def admit(self, tokens_estimate: int, *, deadline: float | None = None) -> Grant:
        grant = await super().admit(tokens_estimate, deadline=deadline)
        if not self._shares:
            return grant
        try:
            need = await self.link.acquire(
                self._need(tokens_estimate),
                *self._limits,
                math.inf if deadline is None else deadline,
            )
        except BaseException:
            super().cancel(grant)
            raise
        if need is not NOTHING:
            self._needs[grant.id] = need
        return grant

    def finish(self, grant: Grant, actual_tokens: int | None) -> bool:
        done = super().finish(grant, actual_tokens)
        self.link.finish(self._needs.pop(grant.id, None), actual_tokens)
        return done

    def cancel(self, grant: Grant) -> bool:
        done = super().cancel(grant)
        self.link.cancel(self._needs.pop(grant.id, None))
        return done

    def observe(self, info: RateLimitInfo) -> None:
        super().observe(info)
        self.link.observe(info)

    def park(self, until: float) -> None:
        super().park(until)
        self.link.park(until)

    def park_local(self, until: float) -> None:
        """Park only this process's limiter (the shared budget is parked already)."""
        super().park(until)


_NO_USAGE = ModelUsage()


def _usage(row: list[float]) -> ModelUsage:
    cost = row[4] if len(row) > 4 else 0.0
    return ModelUsage(
        input_tokens=int(row[0]),
        output_tokens=int(row[1]),
        wasted_input_tokens=int(row[2]),
        wasted_output_tokens=int(row[3]),
        cost=cost or None,
    )


def _view(breaker: Breaker, now: float) -> BreakerView:
    state = breaker.poll(now)
    return BreakerView(state, breaker.open_until if state is BreakerState.OPEN else None)


def shared_state_for(
    settings: RuntimeSettings, *, wall_clock: Callable[[], float] | None = None
) -> SharedState | None:
    """The `SharedState` for ``[runtime] state`` (``None`` for ``local``). Raises
    `ValueError` for a URL the config loader would have refused, `ConfigError` when coredis
    is not installed."""
    url = parse_state(settings.state)
    if url is None:
        return None
    if importlib.util.find_spec("coredis") is None:
        needs = "a Redis state needs coredis: pip install 'trio-switchboard[redis]'"
        raise ConfigError("[runtime]", [("runtime.state", needs)])
    from ._redis_state import RedisStore  # coredis itself is imported when the store opens

    store = RedisStore(url, password=settings.state_password, timeout=settings.state_timeout_s)
    return SharedState(store, timeout=settings.state_timeout_s, wall_clock=wall_clock)
