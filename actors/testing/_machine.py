# Why this module exists
# ----------------------
# `check_client` runs one batch of requests against fixed fault plans. The bugs that hurt in
# production come from *sequences*: a provider that starts failing while a stream is half
# way through, a cancel racing a failover, a hot swap during a retry, a breaker opened by
# earlier traffic. Hypothesis' stateful testing generates and shrinks such sequences; this
# module is a ready-made machine for switchboard setups, which users point at their own
# configuration (connections, routes, fault plans, overrides) by subclassing or with
# `make_machine`.
#
# The problem: Hypothesis rules are synchronous, the runtime is trio. Options considered:
#
# 1. One trio run kept alive across rules (a helper thread, or trio's guest mode driven by a
#    hand-written host loop). State persists naturally, but every rule has to synchronise
#    with another loop, the autojump clock must not jump while the host is deciding the next
#    rule, and thread scheduling makes runs non-reproducible: Hypothesis would report flaky
#    failures instead of shrinking them.
# 2. A fresh ``trio.run`` per rule: impossible, the runtime's state (breakers, queues,
#    in-flight streams) must persist between steps.
# 3. Rules that *write a program*, executed once, at the end, in one ``trio.run`` on the
#    virtual clock. Chosen.
#
# Theory of operation
# -------------------
# Each rule appends one timed operation (`Send`, `Cancel`, `SetPlan`, `Override`) to the
# program; `wait` advances the program's clock, so operations happen at exact virtual times
# (``at``). ``teardown`` executes the program (`run_program`):
#
#     trio.run(MockClock(autojump_threshold=0)):
#         fakes  = one FakeTransport per connection (`make_transport`)
#         open_runtime(config, transports=fakes, rng=Random(seed))
#         for op in program (in order):   sleep until op.at, then
#             Send     -> start the request in its own task, in a cancel scope made now
#             Cancel   -> cancel that scope (the caller gives up)
#             SetPlan  -> the fake for that connection follows the new FaultPlan from now on
#             Override -> rt.override_connection(name, **changes)  (a hot swap)
#         wait for every request (each bounded by its timeout + slack)
#         leave the runtime (graceful shutdown)
#     then check the invariants against what was recorded (`check_run`).
#
# Every run is reproducible: virtual time, seeded fakes and router, and trio's scheduler made
# deterministic under Hypothesis (as pytest-trio does). So Hypothesis can shrink a failing
# program to the few operations that matter, and prints them as the steps of the example;
# the `MachineViolation` it raises lists each broken invariant, then a transcript of the run
# (every request with its result, every attempt each fake provider saw).
#
# The model: what must hold whatever the providers do (checked per request unless the
# program cancelled it first):
#
# - it ends exactly once, with a `Completion` or a typed `Failure` (`RequestFailed`): no other
#   exception, no hang, a stream's ``result`` is set when its events end;
# - within its deadline (``timeout``, else `default_timeout`) plus `slack` seconds;
# - the result carries the request's id; a `Completion` names a connection that can serve the
#   requested model (its targets, fallbacks and context fallback);
# - the completion's usage is the usage the fake reported for the winning attempt (the last
#   attempt of this request that the fake delivered in full on that connection), plus, for a
#   continued stream, the cut attempts whose text it kept (`Completion.produced_by`): usage
#   of other failed attempts is never billed to the caller;
# - a stream's events come before its one result; after its last `Restart` they carry
#   exactly the completion's text and end with one `Finished` (none for a failure);
# - while every fake has been healthy since the start (no `SetPlan` with a fault, no
#   `Override`), a request for a servable model whose timeout is at least `healthy_within`
#   seconds (time enough for a healthy answer) completes; one nothing serves fails
#   ``not_found``.
#
# And for the whole run: per connection, the tokens in the runtime's metrics equal the sum of
# the usage the fake reported over all its attempts, wasted ones included (accounting
# exactness, `exact_accounting`) - when an attempt was cut after emitting tokens but before
# reporting usage, the runtime bills an estimate, so then recorded lies between the reported
# usage and that plus the tokens emitted; after the runtime closed, no task it started is left
# and no fake has an attempt still in flight; the run itself finishes (no deadlock in shutdown).
#
# Usage accounting is exact for dialects that report usage once, at the end (OpenAI, Ollama).
# Anthropic and Gemini also report input tokens at the start of a stream, so a stream cut
# half way is charged by the runtime (correctly) for tokens the fake's log does not count as
# reported: set ``exact_accounting = False`` for such setups, which checks the weaker
# "recorded >= reported" instead.
#
# This module imports Hypothesis at the top; the package imports it lazily.

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeAlias

import trio
import trio.testing
from hypothesis import register_random
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from protocol._config import RuntimeConfig
from protocol._config_load import loads_config
from protocol._errors import ErrorKind, RequestFailed
from protocol._messages import (
    ChatRequest,
    Completion,
    Failure,
    Finished,
    Message,
    Restart,
    StreamEvent,
    TextDelta,
    TextPart,
    Usage,
)

from ._checker import InvariantViolation, Violation
from ._core import AttemptRecord, ProviderCore
from ._faults import (
    ContentFiltered,
    Fault,
    FaultPlan,
    Latency,
    MalformedChunk,
    MidStreamError,
    MissingTerminator,
    NoResponse,
    RateLimited,
    ResetBeforeHeaders,
    ServerError,
    SlowFirstToken,
    Stall,
    StreamCut,
    Unauthorized,
)
from ._transport import FakeTransport

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_FAULTS",
    "Cancel",
    "MachineViolation",
    "Op",
    "OpenRuntime",
    "Override",
    "RequestLog",
    "RunLog",
    "Send",
    "SetPlan",
    "SwitchboardMachine",
    "SystemUnderTest",
    "check_run",
    "default_transport",
    "make_machine",
    "mark",
    "run_program",
]


# --------------------------------------------------------------------------- the program


@dataclass(frozen=True)
class Send:
    """Operation *op*: at virtual time *at*, send *request* (``rt.stream`` when
    ``request.stream``, else ``rt.chat``)."""

    op: int
    at: float
    request: ChatRequest

    def describe(self) -> str:
        r = self.request
        mode = "stream" if r.stream else "chat"
        return f"#{self.op} {mode} {r.model!r} timeout={r.timeout} max_tokens={r.max_tokens}"


@dataclass(frozen=True)
class Cancel:
    """At *at*, the caller of request *target* (a `Send`'s ``op``) gives up."""

    op: int
    at: float
    target: int

    def describe(self) -> str:
        return f"#{self.op} cancel #{self.target}"


@dataclass(frozen=True)
class SetPlan:
    """From *at* on, the fake provider behind *connection* follows *plan*."""

    op: int
    at: float
    connection: str
    plan: FaultPlan

    def describe(self) -> str:
        return f"#{self.op} {self.connection!r} follows {_plan_text(self.plan)}"


@dataclass(frozen=True)
class Override:
    """At *at*, hot swap settings of *connection*: ``rt.override_connection(connection,
    **changes)``."""

    op: int
    at: float
    connection: str
    changes: Mapping[str, Any]

    def describe(self) -> str:
        return f"#{self.op} override {self.connection!r} {dict(self.changes)!r}"


Op: TypeAlias = Send | Cancel | SetPlan | Override


def _plan_text(plan: FaultPlan) -> str:
    if not plan.rules and not plan.sequence:
        return "healthy"
    parts = []
    for r in plan.rules:
        fault = repr(r.fault)
        parts.append(fault if r.probability >= 1.0 else f"{fault} p={r.probability:g}")
    return " | ".join(parts) if not plan.sequence else repr(plan)


# --------------------------------------------------------------------------- what a run saw


@dataclass
class RequestLog:
    """What happened to one `Send`. Times are virtual seconds since the run started.

    ``result`` is the `Completion` or `Failure` (``None``: cancelled, overran, or an
    exception, see ``error``); ``events`` are a stream's events in order; ``servable`` the
    connections that may answer it; ``clean`` whether every fake was healthy (and nothing
    overridden) from the start until it ended."""

    send: Send
    started: float
    servable: frozenset[str]
    ended: float | None = None
    result: Completion | Failure | None = None
    events: list[StreamEvent] = field(default_factory=list)
    error: str | None = None
    cancelled: bool = False
    overran: bool = False
    clean: bool = False

    def outcome_text(self) -> str:
        end = "never" if self.ended is None else f"t={self.ended:g}"
        if self.cancelled:
            what = "cancelled by the program"
        elif self.overran:
            what = "still running past its deadline"
        elif self.error is not None:
            what = self.error
        elif isinstance(self.result, Completion):
            u = self.result.usage
            what = (
                f"Completion(connection={self.result.connection!r}, usage={u.input_tokens}+"
                f"{u.output_tokens}, attempts={self.result.attempts})"
            )
        elif isinstance(self.result, Failure):
            what = (
                f"Failure({self.result.kind.value}, connection={self.result.connection!r}, "
                f"attempts={self.result.attempts})"
            )
        else:
            what = "no result"
        events = f", {len(self.events)} events" if self.send.request.stream else ""
        return f"t={self.started:g} {self.send.describe()} -> {what} at {end}{events}"


@dataclass
class RunLog:
    """Everything one execution of a program recorded, for `check_run`."""

    program: list[Op]
    requests: dict[int, RequestLog] = field(default_factory=dict)
    attempts: dict[str, list[AttemptRecord]] = field(default_factory=dict)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    leaked_tasks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    finished_at: float | None = None

    def transcript(self, limit: int = 60) -> list[str]:
        """The run as readable lines: operations with their outcomes, then each fake's
        attempts (at most *limit* lines)."""
        lines = ["program:"]
        for op in self.program:
            if isinstance(op, Send) and op.op in self.requests:
                lines.append("  " + self.requests[op.op].outcome_text())
            else:
                lines.append(f"  t={op.at:g} {op.describe()}")
        for name, records in self.attempts.items():
            lines.append(f"fake {name!r} (runtime recorded {self.tokens.get(name)} tokens):")
            for a in records:
                u = a.usage_reported
                usage = "-" if u is None else f"{u.input_tokens}+{u.output_tokens}"
                marker = _marker_in(a.body)
                lines.append(
                    f"  t={a.arrived_at:g} {marker or '?'} {a.model!r} "
                    f"{'stream ' if a.stream else ''}{a.fault} status={a.status} "
                    f"-> {a.outcome} at t={a.ended_at} usage={usage}"
                )
        if len(lines) > limit:
            lines = [*lines[: limit - 1], f"  ... {len(lines) - limit + 1} more lines"]
        return lines


class MachineViolation(InvariantViolation):
    """A run of the machine broke invariants: ``violations`` lists them; the message also
    holds the run's transcript; ``run`` is the `RunLog`."""

    def __init__(self, violations: Sequence[Violation], run: RunLog) -> None:
        super().__init__(violations)
        self.run = run
        self.args = (self.args[0] + "\n" + "\n".join(run.transcript()),)


# --------------------------------------------------------------------------- markers

# Each request carries its marker in the text of its first user message, so the attempts a
# fake saw can be traced back to the request (the wire carries no request id).


def marker(op: int) -> str:
    return f"[sb-op-{op}]"


def _marker_in(body: bytes) -> str | None:
    start = body.find(b"[sb-op-")
    if start < 0:
        return None
    end = body.find(b"]", start)
    return body[start : end + 1].decode("ascii", "replace") if end > 0 else None


def mark(request: ChatRequest, op: int) -> ChatRequest:
    """*request* with id ``sb-op-<op>`` and `marker` appended to its first user message."""
    tag = marker(op)
    messages = list(request.messages)
    for i, m in enumerate(messages):
        if m.role != "user":
            continue
        if isinstance(m.content, str):
            content: Any = f"{m.content} {tag}"
        else:
            content = [*m.content, TextPart(text=tag)]
        messages[i] = Message(role="user", content=content)
        break
    else:
        messages.insert(0, Message(role="user", content=tag))
    return ChatRequest(
        **{
            **{f: getattr(request, f) for f in request.__struct_fields__},
            "messages": messages,
            "request_id": f"sb-op-{op}",
        }
    )


# --------------------------------------------------------------------------- execution

TransportFactory: TypeAlias = Callable[[str, int], FakeTransport]


class SystemUnderTest(Protocol):
    """What the machine drives: `supervisors.Runtime` has this shape (a service wrapping
    a runtime can too). ``chat`` raises `RequestFailed` for a failure; ``stream`` is an async
    context manager whose handle yields events and then holds ``result``; ``metrics()``
    returns an object with ``tokens_by_connection(name) -> (input, output)``."""

    async def chat(self, request: ChatRequest) -> Completion: ...

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[Any]: ...

    def override_connection(self, name: str, **changes: Any) -> object: ...

    def connections_for(self, model: str) -> list[str]: ...

    def metrics(self) -> Any: ...


OpenRuntime: TypeAlias = Callable[..., AbstractAsyncContextManager[Any]]
"""``open_runtime(config, *, transports, rng)``: `supervisors.open_runtime`, or anything
with its signature that yields a `SystemUnderTest`. (The kit lives in ``actors`` and may not
import ``supervisors``, so the caller passes it in.)"""


def default_transport(name: str, index: int) -> FakeTransport:
    """A healthy `FakeTransport` (seed *index*) with short answers (4 tokens) streamed a
    quarter second apart, so cancels, stalls and hedges can land mid-stream."""
    return FakeTransport(seed=index, answer_tokens=4, token_interval=0.25, wall_start=0.0)


def run_program(
    config: RuntimeConfig,
    program: Sequence[Op],
    *,
    open_runtime: OpenRuntime,
    make_transport: TransportFactory = default_transport,
    seed: int = 0,
    default_timeout: float = 60.0,
    slack: float = 0.5,
) -> RunLog:
    """Execute *program* on a fresh runtime (``open_runtime(config, transports=...,
    rng=Random(seed))``) with one fake per connection (made by *make_transport(name,
    index)*), in one ``trio.run`` on a `MockClock` that jumps whenever every task waits.
    Returns what happened; never raises for a misbehaving runtime (that is recorded in the
    log for `check_run`)."""
    run = RunLog(program=list(program))
    trio.run(
        _execute,
        _Setup(config, open_runtime, make_transport, seed, default_timeout, slack),
        run,
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    return run


@dataclass(frozen=True)
class _Setup:
    config: RuntimeConfig
    open_runtime: OpenRuntime
    make_transport: TransportFactory
    seed: int
    default_timeout: float
    slack: float

    def allowance(self, request: ChatRequest) -> float:
        timeout = request.timeout if request.timeout is not None else self.default_timeout
        return timeout + self.slack


async def _execute(setup: _Setup, run: RunLog) -> None:
    config = setup.config
    start = trio.current_time()
    baseline = _live_tasks()
    fakes = {name: setup.make_transport(name, i) for i, name in enumerate(config.connections)}
    cores: dict[str, ProviderCore] = {}
    for name, fake in fakes.items():
        if not isinstance(fake.core, ProviderCore):
            raise TypeError(f"the transport for {name!r} must have a ProviderCore")
        cores[name] = fake.core
    end_of_program = max((op.at for op in run.program), default=0.0)
    longest = max(
        (setup.allowance(op.request) for op in run.program if isinstance(op, Send)),
        default=0.0,
    )
    grace = config.runtime.shutdown_timeout_s
    budget = end_of_program + longest + (grace if math.isfinite(grace) else 30.0) + 60.0
    scopes: dict[int, trio.CancelScope] = {}
    first_fault: list[float] = []

    def now() -> float:
        return trio.current_time() - start

    async def one(rt: SystemUnderTest, send: Send, scope: trio.CancelScope) -> None:
        request = send.request
        log = RequestLog(send=send, started=now(), servable=_servable(rt, config, request))
        run.requests[send.op] = log
        with trio.move_on_after(setup.allowance(request)) as guard, scope:
            try:
                if request.stream:
                    async with rt.stream(request) as s:
                        async for event in s:
                            log.events.append(event)
                    log.result = s.result
                else:
                    log.result = await rt.chat(request)
            except RequestFailed as exc:
                log.result = exc.failure
            except Exception as exc:
                log.error = f"raised {type(exc).__name__}: {exc}"
        log.ended = now()
        if scope.cancel_called and log.result is None and log.error is None:
            log.cancelled = True
        elif guard.cancel_called:
            log.overran = True
        log.clean = not first_fault or first_fault[0] > log.ended

    rt: SystemUnderTest | None = None
    try:
        with trio.move_on_after(budget) as whole:
            async with setup.open_runtime(
                config, transports=fakes, rng=random.Random(setup.seed)
            ) as rt:
                assert rt is not None
                async with trio.open_nursery() as nursery:
                    for op in run.program:
                        await trio.sleep_until(start + op.at)
                        if isinstance(op, Send):
                            scopes[op.op] = scope = trio.CancelScope()
                            nursery.start_soon(one, rt, op, scope, name=f"machine op #{op.op}")
                        elif isinstance(op, Cancel):
                            target = scopes.get(op.target)
                            if target is not None:
                                target.cancel()
                        elif isinstance(op, SetPlan):
                            if op.plan.rules or op.plan.sequence:
                                first_fault.append(now())
                            cores[op.connection].plan = op.plan
                        else:
                            first_fault.append(now())
                            try:
                                rt.override_connection(op.connection, **dict(op.changes))
                            except Exception as exc:
                                run.problems.append(
                                    f"{op.describe()} raised {type(exc).__name__}: {exc}"
                                )
        if whole.cancelled_caught:
            run.problems.append(f"the run did not finish within {budget:g} virtual seconds")
        else:
            run.finished_at = now()
    except Exception as exc:  # includes ExceptionGroups out of the runtime's nursery
        run.problems.append(f"the runtime raised {type(exc).__name__}: {exc}")
    if rt is not None and run.finished_at is not None:
        # Read after the runtime closed: every attempt has been recorded by then.
        metrics = rt.metrics()
        for name in fakes:
            recorded_in, recorded_out = metrics.tokens_by_connection(name)
            run.tokens[name] = (int(recorded_in), int(recorded_out))
    for name, fake in fakes.items():
        run.attempts[name] = fake.attempts
    run.leaked_tasks = sorted(t.name for t in _live_tasks() - baseline)


def _servable(rt: Any, config: RuntimeConfig, request: ChatRequest) -> frozenset[str]:
    names: list[str] = [request.model, *request.fallbacks]
    seen: set[str] = set()
    out: set[str] = set()
    while names:
        name = names.pop()
        if name in seen:
            continue
        seen.add(name)
        out.update(rt.connections_for(name))
        route = config.routes.get(name)
        if route is not None and route.context_fallback:
            names.append(route.context_fallback)
    return frozenset(out)


def _live_tasks() -> set[Any]:
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


# --------------------------------------------------------------------------- the checks


def check_run(
    run: RunLog,
    *,
    exact_accounting: bool = True,
    healthy_within: float | None = 2.0,
) -> list[Violation]:
    """Every broken invariant of *run* (see the module header); empty when it is sound."""
    out: list[Violation] = [Violation(None, "", p) for p in run.problems]
    for op, log in sorted(run.requests.items()):
        out.extend(
            Violation(op, log.send.request.request_id, p)
            for p in _request_problems(run, log, healthy_within)
        )
    sent = {op.op for op in run.program if isinstance(op, Send)}
    for op in sorted(sent - set(run.requests)):
        out.append(Violation(op, f"sb-op-{op}", "never started (the run stopped first)"))
    if run.finished_at is not None:
        for name, records in run.attempts.items():
            reported = [a.usage_reported for a in records if a.usage_reported is not None]
            expected = (
                sum(u.input_tokens for u in reported),
                sum(u.output_tokens for u in reported),
            )
            recorded = run.tokens.get(name, (0, 0))
            # Attempts cut or cancelled after tokens went out but before the usage report: the
            # runtime bills an estimate (the deltas it received, the prompt's input estimate),
            # so only bounds hold for them.
            unreported = [a for a in records if a.usage_reported is None and a.tokens_emitted]
            emitted = sum(a.tokens_emitted for a in unreported)
            if unreported and recorded[1] > expected[1] + emitted:
                out.append(
                    Violation(
                        None,
                        "",
                        f"connection {name!r}: metrics record {recorded[1]} output tokens, more "
                        f"than the {expected[1]} reported plus {emitted} emitted unreported",
                    )
                )
            elif exact_accounting and not unreported and recorded != expected:
                out.append(
                    Violation(
                        None,
                        "",
                        f"connection {name!r}: metrics record {recorded[0]}+{recorded[1]} "
                        f"tokens, the fake reported {expected[0]}+{expected[1]}",
                    )
                )
            elif recorded[0] < expected[0] or recorded[1] < expected[1]:
                out.append(
                    Violation(
                        None,
                        "",
                        f"connection {name!r}: metrics record {recorded[0]}+{recorded[1]} "
                        f"tokens, fewer than the {expected[0]}+{expected[1]} the fake reported",
                    )
                )
            open_attempts = [a.arrival for a in records if a.outcome is None]
            if open_attempts:
                out.append(
                    Violation(
                        None,
                        "",
                        f"fake {name!r}: attempts {open_attempts} still in flight after the "
                        "runtime closed",
                    )
                )
    if run.leaked_tasks:
        out.append(
            Violation(
                None,
                "",
                f"{len(run.leaked_tasks)} task(s) left after the runtime closed: "
                + ", ".join(run.leaked_tasks[:10]),
            )
        )
    return out


def _request_problems(run: RunLog, log: RequestLog, healthy_within: float | None) -> list[str]:
    request = log.send.request
    if log.cancelled:
        return []
    if log.overran:
        timeout = request.timeout
        return [f"did not end within its deadline ({timeout} s + slack): still running"]
    if log.error is not None:
        return [f"{log.error} instead of a Completion or a typed Failure"]
    result = log.result
    if result is None:
        return ["ended without a Completion or a Failure"]
    problems: list[str] = []
    if result.request_id and result.request_id != request.request_id:
        problems.append(f"its result belongs to {result.request_id!r}")
    if isinstance(result, Failure):
        timeout = request.timeout if request.timeout is not None else math.inf
        if log.clean and log.servable and healthy_within is not None and timeout >= healthy_within:
            problems.append(
                f"failed ({result.kind.value}: {result.message}) although every provider "
                "was healthy"
            )
        if not log.servable and result.kind is not ErrorKind.NOT_FOUND:
            problems.append(f"no connection serves it, yet it failed with {result.kind.value}")
    else:
        if result.connection not in log.servable:
            problems.append(
                f"answered by {result.connection!r}, which does not serve {request.model!r} "
                f"(servable: {sorted(log.servable)})"
            )
        problems.extend(_usage_problems(run, log, result))
    if request.stream:
        problems.extend(_stream_problems(log, result))
    return problems


def _usage_problems(run: RunLog, log: RequestLog, result: Completion) -> list[str]:
    tag = marker(log.send.op).encode()
    delivered = [
        a
        for a in run.attempts.get(result.connection, [])
        if tag in a.body and a.outcome == "completed" and a.usage_reported is not None
    ]
    if not delivered:
        return [f"no attempt on {result.connection!r} delivered an answer, yet it completed"]
    winner = delivered[-1]
    # A continued stream also bills the cut attempts whose text it kept (`produced_by`, in
    # order, the winner last).
    kept = result.produced_by[:-1]
    expected = sum((p.usage for p in kept), winner.usage_reported or Usage())
    if result.usage != expected:
        also = f"; {_usage(expected)} with the attempts it continued" if kept else ""
        return [
            f"completion usage {_usage(result.usage)} is not the winning attempt's "
            f"(arrival {winner.arrival} on {result.connection!r}: "
            f"{_usage(winner.usage_reported)}{also})"
        ]
    return []


def _usage(u: Any) -> str:
    return "none" if u is None else f"{u.input_tokens}+{u.output_tokens}"


def _stream_problems(log: RequestLog, result: Completion | Failure) -> list[str]:
    events = log.events
    last_restart = max((i for i, e in enumerate(events) if isinstance(e, Restart)), default=-1)
    tail = events[last_restart + 1 :]
    finished = [i for i, e in enumerate(tail) if isinstance(e, Finished)]
    problems: list[str] = []
    if isinstance(result, Completion):
        if finished != [len(tail) - 1]:
            problems.append(
                f"completed, but its events after the last Restart hold {len(finished)} "
                "Finished, not exactly one at the end"
            )
        text = "".join(e.text for e in tail if isinstance(e, TextDelta))
        if text != result.text:
            problems.append(
                f"streamed text since the last Restart {text!r} differs from the "
                f"completion's {result.text!r}"
            )
    elif finished:
        problems.append("failed after a Finished event")
    return problems


# --------------------------------------------------------------------------- the machine

DEFAULT_CONFIG = """
[runtime]
shutdown_timeout_s = 5

[connections.alpha]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-alpha"
default_model = "gpt-alpha"
timeouts = { first_token = 4, stall = 3 }
retry = { max_attempts = 2, initial_delay_ms = 200, jitter = 0.0 }
breaker = { window_size = 6, minimum_calls = 3, open_s = 5 }

[connections.beta]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-beta"
default_model = "gpt-beta"
supports_prefill = true
retry = { max_attempts = 2, initial_delay_ms = 300, jitter = 0.0 }

[connections.gamma]
provider = "ollama"
base_url = "http://fake"
default_model = "llama-gamma"
timeouts = { first_token = 2 }
retry = { max_attempts = 1 }

[routes.smart]
targets = [{ connection = "alpha" }, { connection = "beta" }]
mid_stream = "restart"

[routes.fast]
targets = [{ connection = "gamma" }, { connection = "beta" }]
mid_stream = "continue"

[routes.hedged]
targets = [{ connection = "alpha" }, { connection = "gamma" }]
hedge_after_s = 1.0
"""
"""The setup `SwitchboardMachine` tests by default: three connections in two dialects
(usage reported once per answer, so accounting is exact), three routes covering failover,
mid-stream restart and continuation, and hedging."""

DEFAULT_FAULTS: tuple[Fault, ...] = (
    ServerError(status=500),
    ServerError(status=503),
    RateLimited(retry_after=1.0),
    RateLimited(retry_after=None, header="none"),
    ResetBeforeHeaders(),
    NoResponse(),
    Latency(seconds=2.0),
    SlowFirstToken(seconds=5.0),
    StreamCut(after_tokens=2),
    StreamCut(after_tokens=0, how="eof"),
    Stall(after_tokens=1, seconds=4.0),
    Stall(after_tokens=2, then="hang"),
    MalformedChunk(after_tokens=1),
    MissingTerminator(),
    MidStreamError(after_tokens=1),
    Unauthorized(),
    ContentFiltered(),
)
"""Faults the default machine injects (no absolute ``retry-after`` dates: the runtime reads
those with the wall clock, which the virtual clock does not move)."""

_CONFIGS: dict[tuple[type, int], RuntimeConfig] = {}


_deterministic = False


def _make_trio_deterministic() -> None:
    """Let Hypothesis seed trio's scheduler, as pytest-trio does under Hypothesis, so the same
    program always runs the same way (otherwise a race would surface as a flaky failure)."""
    global _deterministic
    if _deterministic:
        return
    core_run: Any = trio._core._run
    register_random(core_run._r)
    core_run._ALLOW_DETERMINISTIC_SCHEDULING = True
    _deterministic = True


class SwitchboardMachine(RuleBasedStateMachine):
    """A model-based test of a switchboard setup: Hypothesis writes programs of requests,
    cancels, fault-plan changes, hot swaps and waits; each is run on a fresh runtime with fake
    providers and checked against the invariants in the module header.

    Point it at your setup by subclassing (or with `make_machine`). Required:

    - ``open_runtime``: `supervisors.open_runtime` (or a factory with its signature that
      yields your own service); the kit cannot import ``supervisors`` itself.

    Optional:

    - ``config``: TOML text or a `RuntimeConfig` (default `DEFAULT_CONFIG`);
    - ``models``: the names requests ask for (default: the routes, then each connection's
      default model); a name nothing serves is allowed (it must fail ``not_found``);
    - ``faults``: the faults `SetPlan` may inject (default `DEFAULT_FAULTS`); or override
      `fault_plans` to draw whole `FaultPlan`s;
    - ``overrides``: the settings `Override` may hot swap (``rt.override_connection``
      keyword arguments; default: a few retry and timeout changes);
    - ``timeouts``: request timeouts to draw from; ``slack`` and ``default_timeout``;
    - ``streams``: ``None`` sends both kinds of request, ``True`` only streams, ``False``
      only plain chat calls;
    - ``exact_accounting``, ``healthy_within``: see the module header;
    - `make_transport` (the fake per connection) and `build_request` (the request sent).

    Run it with ``TestMyMachine = MyMachine.TestCase`` (with ``settings`` as a class
    attribute of the test case) or ``run_state_machine_as_test(MyMachine, settings=...)``.
    A failure raises `MachineViolation`.
    """

    open_runtime: ClassVar[OpenRuntime | None] = None
    config: ClassVar[RuntimeConfig | str] = DEFAULT_CONFIG
    models: ClassVar[Sequence[str] | None] = None
    faults: ClassVar[Sequence[Fault]] = DEFAULT_FAULTS
    overrides: ClassVar[Sequence[Mapping[str, Any]]] = (
        {"retry": {"max_attempts": 1}},
        {"retry": {"max_attempts": 3, "initial_delay_ms": 100, "jitter": 0.0}},
        {"timeouts": {"first_token": 1.0}},
        {"timeout": 3.0},
    )
    timeouts: ClassVar[Sequence[float]] = (5.0, 2.0, 10.0, 0.5)
    streams: ClassVar[bool | None] = None
    slack: ClassVar[float] = 0.5
    default_timeout: ClassVar[float] = 60.0
    exact_accounting: ClassVar[bool] = True
    healthy_within: ClassVar[float | None] = 2.0
    seed: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        _make_trio_deterministic()
        self.program: list[Op] = []
        self.clock = 0.0
        self.last_run: RunLog | None = None

    # -- the setup (override these) ----------------------------------------------------------
    # The strategy hooks are classmethods: rules are built per class (`__init_subclass__`)
    # with the class's own strategies, which shrink far better than strategies looked up on
    # the running machine (``st.runner().flatmap(...)``).

    @classmethod
    def runtime_config(cls) -> RuntimeConfig:
        """The `RuntimeConfig` under test (``config``, loaded once per class)."""
        key = (cls, id(cls.config))
        cached = _CONFIGS.get(key)
        if cached is None:
            config = cls.config
            cached = config if isinstance(config, RuntimeConfig) else loads_config(config)
            _CONFIGS[key] = cached
        return cached

    @classmethod
    def model_names(cls) -> st.SearchStrategy[str]:
        names = cls.models
        if names is None:
            config = cls.runtime_config()
            defaults = [c.default_model for c in config.connections.values() if c.default_model]
            names = list(dict.fromkeys([*config.routes, *defaults]))
        return st.sampled_from(list(names))

    @classmethod
    def connection_names(cls) -> st.SearchStrategy[str]:
        return st.sampled_from(list(cls.runtime_config().connections))

    @classmethod
    def fault_plans(cls) -> st.SearchStrategy[FaultPlan]:
        """Plans for `set_plan`: healthy, one fault always, or one fault half the time."""
        fault = st.sampled_from(list(cls.faults))
        return st.one_of(
            st.just(FaultPlan.healthy()),
            fault.map(FaultPlan.always),
            st.tuples(fault, st.integers(0, 3)).map(
                lambda fs: FaultPlan.mix((fs[0], 0.5), seed=fs[1])
            ),
        )

    @classmethod
    def override_changes(cls) -> st.SearchStrategy[Mapping[str, Any]]:
        """Changes for `override` (an empty mapping makes the step a no-op)."""
        return st.sampled_from(list(cls.overrides)) if cls.overrides else st.just({})

    @classmethod
    def request_timeouts(cls) -> st.SearchStrategy[float]:
        return st.sampled_from(list(cls.timeouts))

    def make_transport(self, name: str, index: int) -> FakeTransport:
        """The fake provider behind connection *name* (called inside the run)."""
        return default_transport(name, index)

    def build_request(self, *, model: str, stream: bool, timeout: float) -> ChatRequest:
        """The request a `send` step makes (the machine then marks it with its id)."""
        return ChatRequest(
            model=model,
            messages=[Message(role="user", content="Say something short.")],
            stream=stream,
            timeout=timeout,
        )

    # -- rules: each appends one operation ---------------------------------------------------

    def _next(self) -> int:
        return len(self.program) + 1

    def _send(self, model: str, stream: bool, timeout: float) -> None:
        op = self._next()
        request = mark(self.build_request(model=model, stream=stream, timeout=timeout), op)
        self.program.append(Send(op, self.clock, request))

    def _set_plan(self, connection: str, plan: FaultPlan) -> None:
        self.program.append(SetPlan(self._next(), self.clock, connection, plan))

    def _override(self, connection: str, changes: Mapping[str, Any]) -> None:
        if changes:
            self.program.append(Override(self._next(), self.clock, connection, changes))

    @rule(recent=st.integers(0, 3))
    def cancel(self, recent: int) -> None:
        """The caller of a request gives up: the latest one sent (``recent=0``), the one
        before (1), ... (wrapping around; nothing to do before the first `send`).

        (Not a ``Bundle`` with ``consumes``: rules that are only sometimes valid make
        Hypothesis 6.x shrink poorly, keeping steps that do not matter.)"""
        sent = [op.op for op in self.program if isinstance(op, Send)]
        if sent:
            target = sent[-1 - recent % len(sent)]
            self.program.append(Cancel(self._next(), self.clock, target))

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.5, 6.0]))
    def wait(self, seconds: float) -> None:
        self.clock += seconds

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _install_rules(cls)

    # -- execution ---------------------------------------------------------------------------

    def teardown(self) -> None:
        """Run the program and raise `MachineViolation` if any invariant broke."""
        if not any(isinstance(op, Send) for op in self.program):
            return
        open_runtime = type(self).open_runtime
        if open_runtime is None:
            raise TypeError(
                f"{type(self).__name__}.open_runtime is not set: assign "
                "open_runtime = supervisors.open_runtime (or your own factory)"
            )
        run = run_program(
            self.runtime_config(),
            self.program,
            open_runtime=open_runtime,
            make_transport=self.make_transport,
            seed=self.seed,
            default_timeout=self.default_timeout,
            slack=self.slack,
        )
        self.last_run = run
        violations = check_run(
            run,
            exact_accounting=self.exact_accounting,
            healthy_within=self.healthy_within,
        )
        if violations:
            raise MachineViolation(violations, run)


def make_machine(
    open_runtime: OpenRuntime,
    config: RuntimeConfig | str = DEFAULT_CONFIG,
    *,
    name: str = "ConfiguredSwitchboardMachine",
    **options: Any,
) -> type[SwitchboardMachine]:
    """A `SwitchboardMachine` subclass for *config*, driven through *open_runtime*
    (`supervisors.open_runtime`). *options* set any other class attribute (``models``,
    ``faults``, ``overrides``, ``timeouts``, ``streams``, ``slack``, ``default_timeout``,
    ``exact_accounting``, ``healthy_within``, ``seed``) or override a hook
    (``make_transport``, ``build_request``, ``fault_plans``, ...)::

        Machine = make_machine(open_runtime, MY_TOML, models=["smart"])
        run_state_machine_as_test(Machine, settings=settings(max_examples=30))
    """
    unknown = sorted(k for k in options if not hasattr(SwitchboardMachine, k) or k.startswith("_"))
    if unknown:
        raise TypeError(f"unknown machine option(s): {', '.join(unknown)}")
    attributes: dict[str, Any] = {"open_runtime": staticmethod(open_runtime), "config": config}
    attributes.update(options)
    return type(name, (SwitchboardMachine,), attributes)


def _install_rules(cls: type[SwitchboardMachine]) -> None:
    """Give *cls* its ``send``, ``set_plan`` and ``override`` rules, drawing from its own
    strategy hooks (deferred: the config loads on the first draw, not at class creation).
    Every rule is always valid (no ``@precondition``, no bundles): Hypothesis 6.x shrinks
    machines with sometimes-valid rules poorly."""

    def send(self: SwitchboardMachine, model: str, stream: bool, timeout: float) -> None:
        self._send(model, stream, timeout)

    def set_plan(self: SwitchboardMachine, connection: str, plan: FaultPlan) -> None:
        self._set_plan(connection, plan)

    def override(self: SwitchboardMachine, connection: str, changes: Mapping[str, Any]) -> None:
        self._override(connection, changes)

    connections = st.deferred(lambda: cls.connection_names())
    rules = {
        "send": rule(
            model=st.deferred(lambda: cls.model_names()),
            stream=st.booleans() if cls.streams is None else st.just(cls.streams),
            timeout=st.deferred(lambda: cls.request_timeouts()),
        )(send),
        "set_plan": rule(connection=connections, plan=st.deferred(lambda: cls.fault_plans()))(
            set_plan
        ),
        "override": rule(
            connection=connections, changes=st.deferred(lambda: cls.override_changes())
        )(override),
    }
    for name, function in rules.items():
        setattr(cls, name, function)


_install_rules(SwitchboardMachine)
