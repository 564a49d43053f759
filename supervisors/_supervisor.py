"""A supervisor: Erlang/OTP supervision semantics on a trio nursery.

The problem: a provider connection is a long-running task that will eventually crash on a
bug, a poisoned response or an exhausted resource. Trio's answer to a crashing child is to
cancel its siblings and raise to the parent: correct, but one bad connection then takes the
whole runtime down. Erlang/OTP answered this thirty years ago with supervisors: a crash is
expected, the supervisor restarts the child (and, by strategy, the children that depend on
it), and only when crashes come too fast (*intensity*) does it give up and escalate to its
own parent. Options we looked at: a retry loop around each task (no strategies, no
intensity, no ordered shutdown), triotp (restarts read the clock inside callbacks; timelines
are untestable), a port of OTP's process model (links and monitors have no meaning in trio).
The choice: keep OTP's decisions exactly (pure, in `_intensity.py`) and map its process
machinery onto structured concurrency.

Usage::

    supervisor = Supervisor(strategy="one_for_one", max_restarts=3, period=5.0)
    await nursery.start(supervisor.run, [ChildSpec("openai", actor.run, stop=mailbox.close)])
    ...
    await supervisor.stop()            # graceful: reverse start order, per-child timeouts

or ``async with open_supervisor([...]) as supervisor:`` which stops it gracefully on exit.
When the supervisor gives up, `Supervisor.run` raises `SupervisorGaveUp` to its parent
(inside the parent nursery's `ExceptionGroup`: catch it with ``except* SupervisorGaveUp``).


Theory of operation
===================

One *control loop* (the task running `Supervisor.run`) owns the table of children, in start
order, and makes every decision, one at a time, like OTP's gen_server: child exits, dynamic
`add_child`/`remove_child` requests and due restarts are handled in sequence, so no two
decisions ever race. Children report to it through an unbounded inbox (at most one message
per incarnation or pending request, so it cannot grow without bound).

Each child incarnation runs in a wrapper task in the supervisor's nursery, inside its own
cancel scope, and is started with ``nursery.start`` so that "failed to start" (an exception
before ``task_status.started()``) is told apart from "crashed". The wrapper never lets an
ordinary exception reach the nursery (that would cancel the siblings, trio's default): it
records the exit and tells the loop. A child's exit is

  normal    it returned after starting;
  error     it raised (an exception, or an exception group holding exceptions) or failed to
            start;
  shutdown  the supervisor stopped it (its stop hook, then its cancel scope), or an *outer*
            cancellation reached it.

An outer `trio.Cancelled` (the supervisor's parent, or the supervisor itself, being
cancelled) is never a crash: the wrapper re-raises it, the loop is cancelled too, and nothing
is restarted. Outer cancellation is immediate (trio semantics: children see `Cancelled`);
graceful, ordered shutdown is what `stop()` does.

On an exit the loop asks `should_restart`. If no: a temporary child is removed, another stays
in the table as ``stopped``. If yes: `RestartIntensity.add_restart` at ``trio.current_time()``
decides whether the supervisor may afford it. If not, the supervisor *gives up*: emits
`GaveUp`, stops every child in reverse start order (gracefully) and `run` raises
`SupervisorGaveUp` (``__cause__`` = the child's last exception). If so, `children_to_restart`
gives the plan: bystanders are stopped in reverse start order (temporary ones removed),
every child of the group is marked ``restarting`` (`ChildRestarted` events) and a restart is
scheduled at ``now + backoff``. The loop waits for "next message or next due restart", so a
backoff wait never blocks anything else, and `stop()` interrupts it at once.

A due restart starts the group in start order. A start that fails counts as a new failure of
that child (OTP's ``try_again_restart``): intensity again, a new plan, a new schedule. So a
child that never starts costs one restart per attempt and intensity ends it; meanwhile the
loop keeps handling requests between attempts, and `stop()` interrupts a start in progress.

Once `stop()` is requested nothing is restarted any more, not even a child whose exit
raced with the request. Stopping one child (graceful shutdown): call its spec's ``stop``
hook (e.g. close its mailbox so it drains and returns), wait up to ``shutdown_timeout``, then
cancel its scope and wait for it to finish. A child that shields itself from cancellation
cannot be stopped; that is a bug in the child.

Events: every decision is a typed `SupervisorEvent`, kept in a bounded `events` deque, logged
on the ``switchboard.supervisor`` logger and published to subscribers. A subscriber gets a
bounded memory channel; when it is full the *oldest* buffered event is dropped (the newest
events describe the current state) and counted in `SupervisorStatistics.events_dropped`.
Publishing never waits, so a slow subscriber never slows supervision.

As in OTP's ``init_children``, a child given to `run` that fails to start fails `run`
(`ChildStartFailed`, before it reports started) after the children already started are
stopped in reverse order. Differences from OTP, on purpose: times are exact floats (OTP
truncates to seconds); restarts may be delayed by an optional backoff; an exit that races
with `stop()` is not restarted; no ``simple_one_for_one`` (use dynamic children) and no
``significant``/``auto_shutdown``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass
from typing import Literal, Protocol

import msgspec
import trio

from actors._groups import only_cancelled
from protocol._errors import SwitchboardError

from ._intensity import (
    RESTART_TYPES,
    STRATEGIES,
    ExitReason,
    RestartBackoff,
    RestartIntensity,
    RestartType,
    Strategy,
    children_to_restart,
    should_restart,
)

log = logging.getLogger("switchboard.supervisor")

ChildState = Literal["starting", "running", "stopping", "restarting", "stopped"]
"""Where a child is: ``starting`` (before ``task_status.started()``), ``running``,
``stopping`` (graceful shutdown in progress), ``restarting`` (waiting for its group's restart,
e.g. a backoff) or ``stopped`` (not running and not going to be restarted automatically)."""


# ----------------------------------------------------------------------------------------------
# Specs, errors, events, snapshots
# ----------------------------------------------------------------------------------------------


class ChildStart(Protocol):
    """How a child is started: an async function taking ``task_status`` (``nursery.start``
    convention). It calls ``task_status.started()`` once it is ready to serve; raising before
    that is a failure to start. E.g. `actors._provider.ProviderActor.run`."""

    def __call__(self, *, task_status: trio.TaskStatus[None]) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start, restart and stop one child.

    ``id`` names the child (unique per supervisor). ``start`` runs one incarnation. ``restart``
    is its restart type. ``shutdown_timeout`` bounds a graceful stop: the supervisor calls
    ``stop`` (if given; e.g. close the child's mailbox so it drains and returns), waits up to
    that many seconds for the child to return, then cancels it. Raises `ValueError` for an
    empty id, an unknown restart type or a negative/NaN timeout.
    """

    id: str
    start: ChildStart
    _: KW_ONLY
    restart: RestartType = "permanent"
    shutdown_timeout: float = 5.0
    stop: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"a child id must be a non-empty string, got {self.id!r}")
        if self.restart not in RESTART_TYPES:
            raise ValueError(f"restart must be one of {RESTART_TYPES}, got {self.restart!r}")
        if not self.shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")


class SupervisorGaveUp(SwitchboardError):
    """Restarts came faster than the supervisor's intensity allows; it stopped every child.

    ``child_id`` is the child whose exit was one restart too many, ``restarts`` the number of
    restarts counted in the period (including the refused one). ``__cause__`` is that child's
    last exception (None when a permanent child returned normally).
    """

    def __init__(self, child_id: str, restarts: int, max_restarts: int, period: float) -> None:
        super().__init__(
            f"supervisor gave up: child {child_id!r} needed restart {restarts} within "
            f"{period:g}s (max_restarts={max_restarts})"
        )
        self.child_id = child_id
        self.restarts = restarts
        self.max_restarts = max_restarts
        self.period = period


class ChildStartFailed(SwitchboardError):
    """A child given to `Supervisor.run` or `Supervisor.add_child` failed to start.

    ``child_id`` names it; ``__cause__`` is what it raised before ``task_status.started()``.
    """

    def __init__(self, child_id: str) -> None:
        super().__init__(f"child {child_id!r} failed to start")
        self.child_id = child_id


class SupervisorClosed(SwitchboardError):
    """The supervisor is not running (not started yet, stopping or stopped)."""


class ChildStarted(msgspec.Struct, frozen=True, kw_only=True, tag="child_started"):
    """Incarnation *incarnation* of child *id* called ``task_status.started()`` at *at*."""

    id: str
    at: float
    incarnation: int


class ChildExited(msgspec.Struct, frozen=True, kw_only=True, tag="child_exited"):
    """Incarnation *incarnation* of child *id* ended at *at*. *error* describes what it raised
    (``"ValueError: boom"``), if anything; *during_start* is True when it never started."""

    id: str
    at: float
    incarnation: int
    reason: ExitReason
    error: str | None = None
    during_start: bool = False


class ChildRestarted(msgspec.Struct, frozen=True, kw_only=True, tag="child_restarted"):
    """At *at* the supervisor decided to restart child *id* (and counted it against intensity)
    because child *cause* (maybe *id* itself) exited. Emitted once the group's bystanders have
    stopped; the child starts *delay* seconds (backoff) after that. *restart_count* counts
    this child's restarts so far, this one included."""

    id: str
    at: float
    restart_count: int
    cause: str
    delay: float = 0.0


class GaveUp(msgspec.Struct, frozen=True, kw_only=True, tag="gave_up"):
    """At *at* the supervisor gave up after child *child_id* exited (see `SupervisorGaveUp`);
    it then stops every child and `run` raises."""

    at: float
    child_id: str
    restarts: int
    max_restarts: int
    period: float
    error: str | None = None


SupervisorEvent = ChildStarted | ChildExited | ChildRestarted | GaveUp
"""Everything a supervisor reports, as a tagged union (``type`` field)."""


class ChildInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One child, as `Supervisor.children` sees it."""

    id: str
    state: ChildState
    restart: RestartType
    incarnation: int
    """Start attempts so far (the current or last incarnation's number; 0 before the first)."""
    restart_count: int
    """Restarts ordered for this child so far."""


class SupervisorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen snapshot of a supervisor."""

    strategy: Strategy
    max_restarts: int
    period: float
    running: bool
    children: tuple[ChildInfo, ...]
    restarts_in_period: int
    """Restarts that still count against intensity now."""
    total_restarts: int
    """Restarts allowed since the supervisor started."""
    subscribers: int
    events_dropped: int
    """Events dropped from full subscriber channels (oldest first), over all subscribers."""


# ----------------------------------------------------------------------------------------------
# Internals
# ----------------------------------------------------------------------------------------------


class _Run:
    """One incarnation of a child, as seen by its wrapper task and the control loop."""

    __slots__ = (
        "done",
        "during_start",
        "error",
        "exited_at",
        "incarnation",
        "reason",
        "reported",
        "scope",
        "started",
        "stop_deadline",
        "stopping",
    )

    def __init__(self, incarnation: int) -> None:
        self.incarnation = incarnation
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.stopping = False
        self.stop_deadline = math.inf
        self.reason: ExitReason = "normal"
        self.error: BaseException | None = None
        self.exited_at = 0.0
        self.during_start = False
        self.reported = False
        self.started = False  # task_status.started() was called


class _Child:
    """A row of the supervisor's table (persists across incarnations)."""

    __slots__ = ("history", "incarnation", "restart_count", "run", "spec", "state")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.run: _Run | None = None
        self.state: ChildState = "stopped"
        self.incarnation = 0
        self.restart_count = 0
        self.history: tuple[float, ...] = ()  # this child's restarts, for its backoff


class _StartStatus:
    """The ``task_status`` handed to a child: forwards ``started()`` and remembers it."""

    __slots__ = ("inner", "nursery", "run")

    def __init__(self, inner: trio.TaskStatus[None], run: _Run, nursery: trio.Nursery) -> None:
        self.inner = inner
        self.run = run
        self.nursery = nursery

    def started(self, value: None = None) -> None:
        self.inner.started()
        # When the start() waiting for this child was cancelled meanwhile (stop() interrupts
        # a start), trio does not move the task into the supervisor's nursery: it stays in
        # the startup nursery and is cancelled there. Only a task that moved has started.
        self.run.started = trio.lowlevel.current_task().parent_nursery is self.nursery


class _Exited:
    __slots__ = ("child", "run")

    def __init__(self, child: _Child, run: _Run) -> None:
        self.child = child
        self.run = run


class _Request:
    """``add_child``/``remove_child``, executed by the control loop; the caller waits."""

    __slots__ = ("child_id", "done", "error", "spec")

    def __init__(self, spec: ChildSpec | None, child_id: str) -> None:
        self.spec = spec
        self.child_id = child_id
        self.done = trio.Event()
        self.error: BaseException | None = None


class _Pending:
    """A scheduled group restart."""

    __slots__ = ("children", "due")

    def __init__(self, due: float, children: list[_Child]) -> None:
        self.due = due
        self.children = children


class _Subscriber:
    __slots__ = ("drain", "send")

    def __init__(
        self,
        send: trio.MemorySendChannel[SupervisorEvent],
        drain: trio.MemoryReceiveChannel[SupervisorEvent],
    ) -> None:
        self.send = send
        self.drain = drain  # our clone of the receive side, to drop the oldest event

    def close(self) -> None:
        self.send.close()
        self.drain.close()


def _without_cancelled(exc: BaseException) -> BaseException:
    """*exc* with the `trio.Cancelled` leaves of an exception group removed."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        if rest is not None:
            return rest
    return exc


def _describe(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_LEVELS: dict[str, int] = {"normal": logging.INFO, "shutdown": logging.INFO, "error": logging.ERROR}

_Phase = Literal["new", "running", "finished"]


# ----------------------------------------------------------------------------------------------
# The supervisor
# ----------------------------------------------------------------------------------------------


class Supervisor:
    """Supervises children with OTP semantics (see the module docstring).

    Keyword-only options: *strategy* (``one_for_one``, ``one_for_all``, ``rest_for_one``),
    *max_restarts* within *period* seconds (intensity), *backoff* ``(initial, maximum)``
    seconds for an exponential restart delay (None: restart at once), *event_history* (how
    many events `events` keeps), *name* (for logs). Raises `ValueError` on a bad option.

    Run it once with ``await nursery.start(supervisor.run, specs)``.
    """

    def __init__(
        self,
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        period: float = 5.0,
        backoff: tuple[float, float] | None = None,
        event_history: int = 1000,
        name: str = "supervisor",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if event_history < 0:
            raise ValueError(f"event_history must be >= 0, got {event_history}")
        self.strategy: Strategy = strategy
        self.name = name
        self._intensity = RestartIntensity(max_restarts, period)
        self._backoff = RestartBackoff(*backoff) if backoff is not None else None
        self.events: deque[SupervisorEvent] = deque(maxlen=event_history)
        """The latest events, oldest first (bounded by *event_history*)."""
        self._children: list[_Child] = []
        self._history: tuple[float, ...] = ()
        self._total_restarts = 0
        self._pending: list[_Pending] = []
        self._subscribers: list[_Subscriber] = []
        self._events_dropped = 0
        self._inbox_send, self._inbox = trio.open_memory_channel[_Exited | _Request](math.inf)
        self._nursery: trio.Nursery | None = None
        self._phase: _Phase = "new"
        self._stop_requested = False
        self._interrupt: trio.CancelScope | None = None
        self._finished = trio.Event()
        self._ended_at = -math.inf

    # -- public API ----------------------------------------------------------------------------

    async def run(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start *children* in order, report started, then supervise until `stop()`.

        Returns after a `stop()` once every child is stopped. Raises `SupervisorGaveUp` when
        intensity is exceeded (after stopping every child), `ChildStartFailed` (before
        reporting started) when one of *children* fails to start, `ValueError` for duplicate
        ids, `RuntimeError` when run twice. Outer cancellation cancels every child at once.
        """
        if self._phase != "new":
            raise RuntimeError("a Supervisor can run only once")
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate child ids in {ids}")
        self._phase = "running"
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                failure = await self._start_initial(children)
                if failure is None:
                    task_status.started()
                    failure = await self._loop()
                await self._shutdown_all()
        finally:
            self._finish()
        if failure is not None:
            raise failure

    async def stop(self) -> None:
        """Stop every child gracefully in reverse start order and wait until `run` returns.

        Interrupts a backoff wait or a start in progress at once. Safe to call more than once
        and after the supervisor ended. Before `run`, makes `run` stop right after starting.
        """
        self._stop_requested = True
        if self._interrupt is not None:
            self._interrupt.cancel()
        if self._phase == "running":
            await self._finished.wait()

    async def add_child(self, spec: ChildSpec) -> None:
        """Start a new child (appended to the start order); returns once it has started.

        Raises `ValueError` if a child with that id exists, `ChildStartFailed` if it fails
        to start (it is not kept and no restart is counted, as in OTP), `SupervisorClosed`
        when the supervisor is not running. Requests are carried out one at a time by the
        supervisor, between its other decisions: one made while it is still starting the
        children given to `run` waits for that; one whose caller is cancelled still completes.
        Do not call it from a child's start function before ``task_status.started()``: the
        supervisor is waiting for that child.
        """
        await self._call(_Request(spec, spec.id))

    async def remove_child(self, child_id: str) -> None:
        """Stop child *child_id* gracefully (stop hook, ``shutdown_timeout``, cancel) and
        forget it; it is not restarted. Raises `LookupError` for an unknown id and
        `SupervisorClosed` when the supervisor is not running."""
        await self._call(_Request(None, child_id))

    def children(self) -> tuple[ChildInfo, ...]:
        """Every child in start order, with its state and restart count."""
        return tuple(
            ChildInfo(
                id=c.spec.id,
                state=c.state,
                restart=c.spec.restart,
                incarnation=c.incarnation,
                restart_count=c.restart_count,
            )
            for c in self._children
        )

    def subscribe(self, buffer: int = 64) -> trio.MemoryReceiveChannel[SupervisorEvent]:
        """A channel receiving every event emitted from now on.

        At most *buffer* events wait in it; beyond that the oldest is dropped (counted in
        `statistics`), so a slow subscriber never blocks supervision. The channel ends
        (``EndOfChannel``) when the supervisor ends. Close it to unsubscribe.
        """
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer}")
        send, receive = trio.open_memory_channel[SupervisorEvent](buffer)
        if self._phase == "finished":
            send.close()
        else:
            self._subscribers.append(_Subscriber(send, receive.clone()))
        return receive

    def statistics(self) -> SupervisorStatistics:
        """A frozen snapshot. ``restarts_in_period`` is counted at ``trio.current_time()``,
        or, outside trio, at the time the supervisor ended."""
        try:
            now = trio.current_time()
        except RuntimeError:
            now = self._ended_at
        return SupervisorStatistics(
            strategy=self.strategy,
            max_restarts=self._intensity.max_restarts,
            period=self._intensity.period,
            running=self._phase == "running",
            children=self.children(),
            restarts_in_period=len(self._intensity.in_period(self._history, now)),
            total_restarts=self._total_restarts,
            subscribers=len(self._subscribers),
            events_dropped=self._events_dropped,
        )

    # -- the control loop ----------------------------------------------------------------------

    async def _start_initial(self, specs: Sequence[ChildSpec]) -> BaseException | None:
        for spec in specs:
            child = _Child(spec)
            self._children.append(child)
            error = await self._start(child)
            if self._stop_requested:
                return None
            if error is not None:
                self._children.remove(child)
                await self._shutdown_all()
                failure = ChildStartFailed(spec.id)
                failure.__cause__ = error
                return failure
        return None

    async def _loop(self) -> SupervisorGaveUp | None:
        while not self._stop_requested:
            message: _Exited | _Request | None = None
            try:
                message = self._inbox.receive_nowait()
            except trio.WouldBlock:
                due = min((p.due for p in self._pending), default=math.inf)
                if due <= trio.current_time():
                    gave_up = await self._restart_due()
                    if gave_up is not None:
                        return gave_up
                    continue
                with trio.CancelScope(deadline=due) as scope:
                    self._interrupt = scope
                    message = await self._inbox.receive()
                self._interrupt = None
            if isinstance(message, _Exited):
                gave_up = await self._on_exit(message.child, message.run)
                if gave_up is not None:
                    return gave_up
            elif isinstance(message, _Request):
                await self._on_request(message)
        return None

    async def _on_exit(self, child: _Child, run: _Run) -> SupervisorGaveUp | None:
        self._record_exit(child, run)
        if child.run is not run or child not in self._children:
            return None  # stale: the supervisor already stopped that incarnation
        child.run = None
        child.state = "stopped"
        if self._stop_requested:
            return None  # an exit that raced with stop(): shutting down, nothing restarts
        if should_restart(child.spec.restart, run.reason):
            return await self._restart(child, run.error)
        if child.spec.restart == "temporary":
            self._children.remove(child)
        return None

    async def _restart(
        self, failed: _Child, cause: BaseException | None
    ) -> SupervisorGaveUp | None:
        now = trio.current_time()
        self._history, allowed = self._intensity.add_restart(self._history, now)
        if not allowed:
            failed.state = "stopped"
            self._emit(
                GaveUp(
                    at=now,
                    child_id=failed.spec.id,
                    restarts=len(self._history),
                    max_restarts=self._intensity.max_restarts,
                    period=self._intensity.period,
                    error=_describe(cause),
                )
            )
            await self._shutdown_all()
            gave_up = SupervisorGaveUp(
                failed.spec.id,
                len(self._history),
                self._intensity.max_restarts,
                self._intensity.period,
            )
            gave_up.__cause__ = cause
            return gave_up
        self._total_restarts += 1
        failed.history = (*self._intensity.in_period(failed.history, now), now)
        delay = self._backoff.delay(len(failed.history)) if self._backoff is not None else 0.0

        table = self._children
        plan = children_to_restart(
            self.strategy, [c.spec.restart for c in table], table.index(failed)
        )
        group = [table[i] for i in plan.restart]
        removed = [table[i] for i in plan.remove]
        for child in (table[i] for i in plan.stop):
            await self._terminate(child)
            if self._stop_requested:
                return None
        for child in removed:
            self._children.remove(child)
        for child in group:
            self._unschedule(child)
        for child in group:
            child.state = "restarting"
            child.restart_count += 1
            self._emit(
                ChildRestarted(
                    id=child.spec.id,
                    at=now,
                    restart_count=child.restart_count,
                    cause=failed.spec.id,
                    delay=delay,
                )
            )
        self._pending.append(_Pending(trio.current_time() + delay, group))
        return None

    async def _restart_due(self) -> SupervisorGaveUp | None:
        pending = min(self._pending, key=lambda p: p.due)
        self._pending.remove(pending)
        for child in pending.children:
            if child not in self._children:
                continue  # removed while waiting
            error = await self._start(child)
            if self._stop_requested:
                return None
            if error is not None:
                return await self._restart(child, error)
        return None

    async def _on_request(self, request: _Request) -> None:
        try:
            if request.spec is not None:
                await self._add(request.spec)
            else:
                await self._remove(request.child_id)
        except (ValueError, LookupError, SwitchboardError) as exc:
            request.error = exc
        except BaseException:
            request.error = SupervisorClosed("the supervisor ended while handling the request")
            raise
        finally:
            request.done.set()

    async def _add(self, spec: ChildSpec) -> None:
        if any(c.spec.id == spec.id for c in self._children):
            raise ValueError(f"a child with id {spec.id!r} already exists")
        child = _Child(spec)
        self._children.append(child)
        error = await self._start(child)
        if error is None and not self._stop_requested:
            return
        self._children.remove(child)
        if error is None:
            raise SupervisorClosed("the supervisor stopped while the child was starting")
        failure = ChildStartFailed(spec.id)
        failure.__cause__ = error
        raise failure

    async def _remove(self, child_id: str) -> None:
        for child in self._children:
            if child.spec.id == child_id:
                await self._terminate(child)
                self._children.remove(child)
                return
        raise LookupError(f"no child with id {child_id!r}")

    async def _call(self, request: _Request) -> None:
        if self._phase != "running" or self._stop_requested:
            raise SupervisorClosed("the supervisor is not running")
        self._inbox_send.send_nowait(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error

    # -- one child -----------------------------------------------------------------------------

    async def _start(self, child: _Child) -> BaseException | None:
        """Start one incarnation. Returns what it raised before starting, or None (started, or
        interrupted by `stop()`: then ``_stop_requested`` is set)."""
        assert self._nursery is not None
        child.incarnation += 1
        run = _Run(child.incarnation)
        child.run = run
        child.state = "starting"
        error: BaseException | None = None
        with trio.CancelScope() as scope:
            self._interrupt = scope
            if self._stop_requested:
                scope.cancel()
            try:
                await self._nursery.start(self._child_main, child, run)
            except Exception as exc:
                error = exc
        self._interrupt = None
        # `run.started` rather than "no exception": a stop() racing with the child's
        # started() may cancel this scope after the child moved into our nursery.
        if error is None and run.started:
            child.state = "running"
            self._emit(
                ChildStarted(id=child.spec.id, at=trio.current_time(), incarnation=run.incarnation)
            )
            return None
        child.run = None
        child.state = "stopped"
        run.during_start = True
        if error is not None:
            run.reason, run.error = "error", error
        else:
            run.reason = "shutdown"
        self._record_exit(child, run)  # the wrapper has set `exited_at`
        return error

    async def _child_main(
        self, child: _Child, run: _Run, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The wrapper task of one incarnation: runs it and reports how it ended."""
        assert self._nursery is not None
        status = _StartStatus(task_status, run, self._nursery)
        try:
            with run.scope:
                await child.spec.start(task_status=status)
        except BaseException as exc:
            run.exited_at = trio.current_time()
            if not run.started:
                run.done.set()
                raise  # to the loop's nursery.start(): a failure to start
            if only_cancelled(exc):
                run.reason = "shutdown"  # outer cancellation: never a crash
                run.done.set()
                self._record_exit(child, run)
                raise
            error = _without_cancelled(exc)
            run.reason = "shutdown" if run.stopping else "error"
            run.error = error
            run.done.set()
            if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit, ...
                self._record_exit(child, run)
                raise
            if not run.stopping:
                self._inbox_send.send_nowait(_Exited(child, run))
            return
        run.exited_at = trio.current_time()
        run.done.set()
        if not run.started:
            return  # trio raises RuntimeError in the loop's nursery.start()
        run.reason = "shutdown" if run.stopping else "normal"
        if not run.stopping:
            self._inbox_send.send_nowait(_Exited(child, run))

    async def _terminate(self, child: _Child) -> None:
        """Stop *child* gracefully: stop hook, wait up to its timeout, cancel, wait."""
        self._unschedule(child)
        run = child.run
        if run is None:
            if child.state == "restarting":
                child.state = "stopped"
            return
        if not run.stopping:
            run.stopping = True
            run.stop_deadline = trio.current_time() + child.spec.shutdown_timeout
            child.state = "stopping"
            if child.spec.stop is not None and not run.done.is_set():
                try:
                    child.spec.stop()
                except Exception:
                    log.exception("%s: stop hook of child %r raised", self.name, child.spec.id)
        with trio.move_on_at(run.stop_deadline):
            await run.done.wait()
        if not run.done.is_set():
            run.scope.cancel()
            await run.done.wait()
        child.run = None
        child.state = "stopped"
        self._record_exit(child, run)

    async def _shutdown_all(self) -> None:
        for child in reversed(list(self._children)):
            await self._terminate(child)
        self._pending.clear()

    def _unschedule(self, child: _Child) -> None:
        for pending in list(self._pending):
            if child in pending.children:
                pending.children.remove(child)
                if not pending.children:
                    self._pending.remove(pending)

    def _finish(self) -> None:
        """Synchronous end of `run`: report what is left, fail waiting callers, close."""
        self._phase = "finished"
        self._nursery = None
        self._ended_at = trio.current_time()
        while True:
            try:
                message = self._inbox.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(message, _Exited):
                self._record_exit(message.child, message.run)
            else:
                message.error = SupervisorClosed("the supervisor stopped")
                message.done.set()
        for child in self._children:  # every wrapper task has ended with the nursery
            child.run = None
            child.state = "stopped"
        self._inbox_send.close()
        self._inbox.close()
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()
        self._finished.set()

    # -- events --------------------------------------------------------------------------------

    def _record_exit(self, child: _Child, run: _Run) -> None:
        if run.reported:
            return
        run.reported = True
        self._emit(
            ChildExited(
                id=child.spec.id,
                at=run.exited_at,
                incarnation=run.incarnation,
                reason=run.reason,
                error=_describe(run.error),
                during_start=run.during_start,
            )
        )

    def _emit(self, event: SupervisorEvent) -> None:
        self.events.append(event)
        self._log(event)
        for subscriber in list(self._subscribers):
            if subscriber.send.statistics().open_receive_channels <= 1:
                subscriber.close()  # only our drain clone is left: the subscriber went away
                self._subscribers.remove(subscriber)
                continue
            try:
                subscriber.send.send_nowait(event)
            except trio.WouldBlock:
                subscriber.drain.receive_nowait()  # drop the oldest
                self._events_dropped += 1
                subscriber.send.send_nowait(event)

    def _log(self, event: SupervisorEvent) -> None:
        if isinstance(event, ChildStarted):
            log.info(
                "%s: child %r started (incarnation %d)", self.name, event.id, event.incarnation
            )
        elif isinstance(event, ChildExited):
            log.log(
                _LEVELS[event.reason],
                "%s: child %r exited (%s%s)%s",
                self.name,
                event.id,
                event.reason,
                ", during start" if event.during_start else "",
                f": {event.error}" if event.error else "",
            )
        elif isinstance(event, ChildRestarted):
            log.info(
                "%s: restarting child %r (restart %d, cause %r, delay %gs)",
                self.name,
                event.id,
                event.restart_count,
                event.cause,
                event.delay,
            )
        else:
            log.error(
                "%s: gave up after child %r: %d restarts within %gs (max %d)%s",
                self.name,
                event.child_id,
                event.restarts,
                event.period,
                event.max_restarts,
                f": {event.error}" if event.error else "",
            )


@asynccontextmanager
async def open_supervisor(
    children: Sequence[ChildSpec] = (),
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    period: float = 5.0,
    backoff: tuple[float, float] | None = None,
    event_history: int = 1000,
    name: str = "supervisor",
) -> AsyncIterator[Supervisor]:
    """Run a `Supervisor` with *children* for the duration of the block, then `stop()` it
    gracefully. Options as for `Supervisor`. Errors from the supervisor (`SupervisorGaveUp`)
    cancel the block and leave it inside an `ExceptionGroup`."""
    supervisor = Supervisor(
        strategy=strategy,
        max_restarts=max_restarts,
        period=period,
        backoff=backoff,
        event_history=event_history,
        name=name,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run, children)
        try:
            yield supervisor
        finally:
            await supervisor.stop()
