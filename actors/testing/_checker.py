# Why this module exists
# ----------------------
# A fault plan says how the provider misbehaves; something must then say whether the client
# under test behaved. Asserting on every client's own API would make each user write the same
# checks again, and miss the ones that matter most in production: a request that never ends,
# an exception that escapes instead of a typed failure, a stream that "finishes" twice, a
# background task or a socket left behind after the client is closed.
#
# Choice: one checker, independent of the client's design. The user wraps their client in a
# callable (`ChatRequest` -> `Completion | Failure`, or -> an async iterable of stream items),
# and `check_client` / `check_stream_client` run a batch of requests through it and assert the
# invariants every well-behaved client keeps, whatever the provider does:
#
# 1. each request ends exactly once: a call returns one `Completion` or one typed `Failure`
#    (a raised `RequestFailed` counts as its `Failure`); a stream yields stream events and ends
#    with exactly one `Finished` or `Failure`, nothing after it. Any other exception or value
#    is a violation, and so is a result that names another request's id;
# 2. it ends within its deadline (``request.timeout``, else the checker's ``default_timeout``)
#    plus ``slack``: the checker cancels a call that overruns and reports it;
# 3. nothing leaks: after the calls and the user's ``close`` hook, every trio task that was
#    started while the checker ran has finished, and a `FakeProvider` given as ``provider`` is
#    back to zero open connections (and saw no internal error).
#
# It raises one `InvariantViolation` (an `AssertionError`, so pytest and Hypothesis treat it as
# a test failure and Hypothesis can shrink it) listing every violation, each naming the request.
# Time is `trio.current_time()`, so it works the same under ``autojump_clock`` (with the
# in-memory transport) and on the real clock (with a loopback `FakeProvider`; there, use the
# real clock, since the autojump clock would jump over socket waits).
#
# The module imports no Hypothesis: it is useful on its own, with hand-written requests.

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeAlias

import trio

from protocol._errors import RequestFailed
from protocol._messages import (
    ChatRequest,
    Completion,
    Failure,
    Finished,
    ReasoningDelta,
    Restart,
    Switched,
    TextDelta,
    ToolCallDelta,
    UsageUpdate,
)

__all__ = [
    "CheckReport",
    "InvariantViolation",
    "RequestOutcome",
    "Violation",
    "check_client",
    "check_stream_client",
]

ChatCall: TypeAlias = Callable[[ChatRequest], Awaitable[Completion | Failure]]
StreamCall: TypeAlias = Callable[[ChatRequest], AsyncIterable[Any]]

_EVENTS = (TextDelta, ReasoningDelta, ToolCallDelta, UsageUpdate, Restart, Switched)
_POLL = 0.005


class Violation(NamedTuple):
    """One broken invariant. ``position`` is the request's index in the batch (``None`` for a
    batch-wide problem such as a leak)."""

    position: int | None
    request_id: str
    problem: str

    def __str__(self) -> str:
        if self.position is None:
            return self.problem
        return f"request #{self.position} ({self.request_id}): {self.problem}"


class InvariantViolation(AssertionError):
    """The client broke at least one invariant; ``violations`` lists them all."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = list(violations)
        shown = "\n".join(f"  - {v}" for v in self.violations[:20])
        more = len(self.violations) - 20
        if more > 0:
            shown += f"\n  ... and {more} more"
        super().__init__(f"{len(self.violations)} invariant violation(s):\n{shown}")


class RequestOutcome(NamedTuple):
    """How one request ended. ``result`` is the `Completion` or `Failure` (for a stream: the
    final `Finished` or `Failure`), ``None`` when it ended in a violation; ``events`` counts
    the stream items before it; times are `trio.current_time()` values."""

    position: int
    request: ChatRequest
    result: Completion | Finished | Failure | None
    started: float
    ended: float
    events: int = 0

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


class CheckReport(NamedTuple):
    """What a passing check saw: one `RequestOutcome` per request, in batch order."""

    outcomes: tuple[RequestOutcome, ...]

    @property
    def completed(self) -> int:
        """How many requests ended with an answer (`Completion` or a stream's `Finished`)."""
        return sum(isinstance(o.result, (Completion, Finished)) for o in self.outcomes)

    @property
    def failures(self) -> Counter[str]:
        """How many requests failed, by `ErrorKind` value."""
        return Counter(o.result.kind.value for o in self.outcomes if isinstance(o.result, Failure))


class _Run:
    """The state of one check: violations found so far and the outcome of each request."""

    def __init__(self, requests: Sequence[ChatRequest], timeout: float, slack: float) -> None:
        self.requests = list(requests)
        self.timeout = timeout
        self.slack = slack
        self.violations: list[Violation] = []
        self.outcomes: list[RequestOutcome | None] = [None] * len(self.requests)

    def allowance(self, request: ChatRequest) -> float:
        budget = request.timeout if request.timeout is not None else self.timeout
        return budget + self.slack

    def violate(self, index: int, problem: str) -> None:
        request = self.requests[index]
        self.violations.append(Violation(index, request.request_id, problem))

    def check_id(self, index: int, result: Completion | Failure) -> bool:
        expected = self.requests[index].request_id
        if result.request_id and result.request_id != expected:
            self.violate(index, f"its result belongs to request {result.request_id!r}")
            return False
        return True


async def check_client(
    call: ChatCall,
    requests: Sequence[ChatRequest],
    *,
    provider: object | None = None,
    close: Callable[[], Awaitable[object]] | None = None,
    default_timeout: float = 30.0,
    slack: float = 0.5,
    grace: float = 1.0,
    concurrency: int | None = None,
) -> CheckReport:
    """Run every request of *requests* through *call* and check the invariants (module
    header): each ends exactly once, in time, with a `Completion` or a typed `Failure`, and
    nothing leaks.

    *call* is the client under test. *provider* is the `FakeProvider` (or any object with
    ``open_connections`` / ``internal_errors``) it talks to, checked for leaks and kit bugs.
    *close* is awaited after all calls (close the client there: sockets and tasks are checked
    after it). A request without ``timeout`` gets *default_timeout* seconds; each gets *slack*
    more before it counts as late and is cancelled. *grace* is how long tasks and sockets may take
    to wind down after *close*. *concurrency* bounds the calls in flight (``None``: all at
    once).

    Returns a `CheckReport`; raises `InvariantViolation` listing every broken invariant.
    """

    async def one(run: _Run, index: int) -> None:
        request = run.requests[index]
        started = trio.current_time()
        result: Completion | Failure | None = None
        try:
            value: object = await call(request)
        except RequestFailed as exc:
            value = exc.failure
        except Exception as exc:
            run.violate(index, f"raised {_describe(exc)} instead of returning a typed Failure")
            value = None
        else:
            if not isinstance(value, (Completion, Failure)):
                run.violate(index, f"returned {_short(value)}, not a Completion or Failure")
                value = None
        if isinstance(value, (Completion, Failure)) and run.check_id(index, value):
            result = value
        run.outcomes[index] = RequestOutcome(index, request, result, started, trio.current_time())

    return await _check(one, requests, provider, close, default_timeout, slack, grace, concurrency)


async def check_stream_client(
    stream: StreamCall,
    requests: Sequence[ChatRequest],
    *,
    provider: object | None = None,
    close: Callable[[], Awaitable[object]] | None = None,
    default_timeout: float = 30.0,
    slack: float = 0.5,
    grace: float = 1.0,
    concurrency: int | None = None,
) -> CheckReport:
    """Like `check_client`, for a streaming client: *stream* returns an async iterable of
    stream events (`TextDelta`, `ToolCallDelta`, `UsageUpdate`, `Restart`, ...) that ends
    with exactly one `Finished` or `Failure` and nothing after it. Raising `RequestFailed`
    instead of yielding the `Failure` is accepted; any other exception, item or a stream
    that stops without its final item is a violation. The iterable is closed after use
    (``aclose`` when it has one), also when it broke an invariant."""

    async def one(run: _Run, index: int) -> None:
        request = run.requests[index]
        started = trio.current_time()
        final: Finished | Failure | None = None
        events = 0
        broken = False
        try:
            async with _closing(stream(request)) as items:
                async for item in items:
                    if final is not None:
                        if not broken:
                            run.violate(
                                index,
                                f"yielded {_short(item)} after its final {_short(final)}",
                            )
                        broken = True
                    elif isinstance(item, (Finished, Failure)):
                        final = item
                    elif isinstance(item, _EVENTS):
                        events += 1
                    else:
                        run.violate(index, f"yielded {_short(item)}, not a stream event")
                        broken = True
        except RequestFailed as exc:
            if final is None:
                final = exc.failure
            elif not broken:
                run.violate(index, f"raised {_describe(exc)} after its final {_short(final)}")
                broken = True
        except Exception as exc:
            if final is None:
                run.violate(index, f"raised {_describe(exc)} instead of ending with a Failure")
            elif not broken:
                run.violate(index, f"raised {_describe(exc)} after its final {_short(final)}")
            broken = True
        if final is None and not broken:
            run.violate(index, f"its stream ended after {events} events without Finished/Failure")
        if isinstance(final, Failure) and not run.check_id(index, final):
            broken = True
        result = None if broken else final
        run.outcomes[index] = RequestOutcome(
            index, request, result, started, trio.current_time(), events
        )

    return await _check(one, requests, provider, close, default_timeout, slack, grace, concurrency)


async def _check(
    one: Callable[[_Run, int], Awaitable[None]],
    requests: Sequence[ChatRequest],
    provider: object | None,
    close: Callable[[], Awaitable[object]] | None,
    default_timeout: float,
    slack: float,
    grace: float,
    concurrency: int | None,
) -> CheckReport:
    for name, value in (("default_timeout", default_timeout), ("slack", slack), ("grace", grace)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 or None, got {concurrency!r}")
    seen: set[str] = set()
    for request in requests:
        if request.request_id in seen:
            raise ValueError(f"request_id {request.request_id!r} appears twice in the batch")
        seen.add(request.request_id)

    run = _Run(requests, default_timeout, slack)
    before = _live_tasks()
    # A semaphore taken by the starting loop and released by each call: calls start in batch
    # order (trio's scheduler would otherwise pick waiting tasks in any order).
    slots = trio.Semaphore(concurrency or max(1, len(run.requests)))

    async def guarded(index: int) -> None:
        try:
            allowance = run.allowance(run.requests[index])
            started = trio.current_time()
            with trio.move_on_after(allowance) as scope:
                await one(run, index)
            if scope.cancel_called:  # also when the call swallowed the cancellation
                run.violate(
                    index,
                    f"did not end within its deadline: still running after {allowance:g} s "
                    f"(timeout {allowance - slack:g} s + slack {slack:g} s); cancelled",
                )
                now = trio.current_time()
                run.outcomes[index] = RequestOutcome(index, run.requests[index], None, started, now)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for index in range(len(run.requests)):
            await slots.acquire()
            nursery.start_soon(guarded, index, name=f"check_client request #{index}")

    if close is not None:
        try:
            await close()
        except Exception as exc:
            run.violations.append(Violation(None, "", f"close() raised {_describe(exc)}"))
    await _check_leaks(run, before, provider, grace)
    if run.violations:
        # Batch order (tasks finish in any order), batch-wide problems last.
        ordered = sorted(run.violations, key=lambda v: (v.position is None, v.position or 0))
        raise InvariantViolation(ordered)
    return CheckReport(tuple(o for o in run.outcomes if o is not None))


async def _check_leaks(run: _Run, before: set[Any], provider: object | None, grace: float) -> None:
    """Wait up to *grace* for new tasks to finish and the provider's sockets to close."""

    def leaked_tasks() -> list[Any]:
        return list(_live_tasks() - before)

    def open_sockets() -> int:
        count = getattr(provider, "open_connections", 0)
        return count if isinstance(count, int) else 0

    with trio.move_on_after(grace):
        # Polling: a task ending and a socket closing signal no event we could wait for.
        while leaked_tasks() or open_sockets():  # noqa: ASYNC110
            await trio.sleep(_POLL)
    tasks = leaked_tasks()
    if tasks:
        names = ", ".join(sorted(t.name for t in tasks)[:10])
        run.violations.append(
            Violation(None, "", f"{len(tasks)} task(s) still running after the check: {names}")
        )
    sockets = open_sockets()
    if sockets:
        run.violations.append(
            Violation(
                None,
                "",
                f"{sockets} connection(s) to the provider still open after the client was "
                "closed (pass close= to close the client)",
            )
        )
    errors = getattr(provider, "internal_errors", None)
    if errors:
        run.violations.append(
            Violation(None, "", f"the fake provider hit internal errors: {errors!r}")
        )


def _live_tasks() -> set[Any]:
    """Every task of this trio run, found by walking the task tree from its root."""
    found: set[Any] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


@asynccontextmanager
async def _closing(items: AsyncIterable[Any]) -> AsyncIterator[AsyncIterable[Any]]:
    """Close *items* after use when it can be closed (async generators can)."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
