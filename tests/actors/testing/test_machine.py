"""The model-based state machine: it holds for our runtime, it runs hand-written programs in
exact virtual time, and it finds (and shrinks) deliberately planted bugs."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from actors._router import Router
from actors.testing._faults import FaultPlan, ServerError, StreamCut
from actors.testing._machine import (
    DEFAULT_CONFIG,
    Cancel,
    MachineViolation,
    Op,
    Send,
    SetPlan,
    SwitchboardMachine,
    check_run,
    make_machine,
    mark,
    run_program,
)
from protocol._config_load import loads_config
from protocol._errors import ErrorKind
from protocol._messages import ChatRequest, Completion, Failure, Message, Restart, Usage
from supervisors._runtime import open_runtime

FAST = settings(max_examples=30, stateful_step_count=20, deadline=None)
# Hunting a planted bug: derandomized (the same examples every run, so the hunt is
# deterministic), no example database (a stored failure would replay into other tests), one
# bug reported, enough examples to find it.
HUNT = settings(
    derandomize=True,
    max_examples=200,
    stateful_step_count=8,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)


def ask(op: int, model: str, *, stream: bool = False, timeout: float = 5.0) -> ChatRequest:
    request = ChatRequest(
        model=model,
        messages=[Message(role="user", content="hi")],
        stream=stream,
        timeout=timeout,
    )
    return mark(request, op)


CONFIG = loads_config(DEFAULT_CONFIG)


# --------------------------------------------------------------------------- it holds


def test_the_machine_holds_for_the_default_setup() -> None:
    run_state_machine_as_test(make_machine(open_runtime), settings=FAST)


class OurMachine(SwitchboardMachine):
    """The subclassing style, as a user would write it."""

    open_runtime = staticmethod(open_runtime)
    models = ("smart", "fast", "gpt-alpha", "no-such-model")


TestOurMachine = OurMachine.TestCase
TestOurMachine.settings = FAST


# --------------------------------------------------------------------------- programs by hand


def test_a_program_runs_in_exact_virtual_time_with_failover() -> None:
    program: list[Op] = [
        Send(1, 0.0, ask(1, "smart")),
        SetPlan(2, 1.0, "alpha", FaultPlan.always(ServerError(status=500))),
        Send(3, 2.0, ask(3, "smart")),
    ]
    run = run_program(CONFIG, program, open_runtime=open_runtime)
    assert check_run(run) == []
    first, second = run.requests[1], run.requests[3]
    assert isinstance(first.result, Completion)
    assert (first.result.connection, first.started, first.ended) == ("alpha", 0.0, 0.0)
    # alpha: 500, a retry 0.2 s later, 500 again; then beta answers.
    assert isinstance(second.result, Completion)
    assert (second.result.connection, second.started, second.ended) == ("beta", 2.0, 2.2)
    assert second.result.attempts == 3
    assert [(a.arrived_at, a.status) for a in run.attempts["alpha"]] == [
        (0.0, 200),
        (2.0, 500),
        (2.2, 500),
    ]
    assert second.clean is False
    assert first.clean is True
    # Accounting: the runtime recorded exactly what the fakes reported.
    alpha = run.attempts["alpha"][0].usage_reported
    assert alpha is not None
    assert run.tokens["alpha"] == (alpha.input_tokens, alpha.output_tokens)
    assert run.leaked_tasks == []


def test_a_cancel_mid_stream_and_a_restart_are_recorded() -> None:
    program: list[Op] = [
        SetPlan(1, 0.0, "alpha", FaultPlan.always(StreamCut(after_tokens=2))),
        Send(2, 0.0, ask(2, "smart", stream=True)),
        Send(3, 0.0, ask(3, "gpt-beta", stream=True)),
        Cancel(4, 0.3, 3),
    ]
    run = run_program(CONFIG, program, open_runtime=open_runtime)
    assert check_run(run) == []
    restarted, cancelled = run.requests[2], run.requests[3]
    assert isinstance(restarted.result, Completion)
    assert restarted.result.connection == "beta"
    assert sum(isinstance(e, Restart) for e in restarted.events) == 1
    # Tokens come 0.25 s apart: the cancel at 0.3 lands after the second token.
    assert cancelled.cancelled
    assert cancelled.ended == 0.3
    beta = [a for a in run.attempts["beta"] if b"[sb-op-3]" in a.body]
    assert [(a.outcome, a.tokens_emitted) for a in beta] == [("client_closed", 2)]


def test_cut_streams_are_accounted_within_bounds() -> None:
    config = loads_config(
        DEFAULT_CONFIG.replace(
            'provider = "openai"\nbase_url = "http://fake/v1"\napi_key = "sk-beta"',
            'provider = "anthropic"\nbase_url = "http://fake/v1"\napi_key = "sk-beta"',
        )
    )
    program: list[Op] = [
        SetPlan(1, 0.0, "beta", FaultPlan.always(StreamCut(after_tokens=1))),
        Send(2, 0.0, ask(2, "gpt-beta", stream=True)),
    ]
    run = run_program(config, program, open_runtime=open_runtime)
    result = run.requests[2].result
    assert isinstance(result, Failure)
    assert result.kind is ErrorKind.STREAM_INTERRUPTED
    # Anthropic's message_start carried the input tokens; the fake counts usage as reported
    # only with the final message_delta. The runtime bills what was spent (the reported input,
    # at least the one token received), so the accounting check uses its bounds here: at least
    # what was reported, at most that plus the tokens the fake emitted unreported.
    assert [a.usage_reported for a in run.attempts["beta"]] == [None]  # not retried: emitted
    assert run.attempts["beta"][0].tokens_emitted == 1
    assert run.tokens["beta"][0] > 0
    assert run.tokens["beta"][1] == 1
    assert check_run(run) == []
    assert check_run(run, exact_accounting=False) == []
    overbilled = dataclasses.replace(run, tokens={**run.tokens, "beta": (run.tokens["beta"][0], 5)})
    (violation,) = check_run(overbilled)
    assert "more than the 0 reported plus 1 emitted" in violation.problem


def test_healthy_requests_must_complete_and_unknown_models_fail_not_found() -> None:
    program = [Send(1, 0.0, ask(1, "no-such-model")), Send(2, 0.0, ask(2, "fast"))]
    run = run_program(CONFIG, program, open_runtime=open_runtime)
    assert check_run(run) == []
    unknown = run.requests[1].result
    assert isinstance(unknown, Failure)
    assert unknown.kind is ErrorKind.NOT_FOUND
    assert run.requests[1].servable == frozenset()
    assert run.requests[2].servable == {"gamma", "beta"}


# --------------------------------------------------------------------------- it finds bugs


def test_it_finds_and_shrinks_a_router_that_never_answers_one_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Router.chat

    async def drops_fast(self: Router, request: ChatRequest) -> Completion | Failure:
        if request.model == "fast":
            await trio.sleep_forever()  # the result is dropped: the caller waits forever
        return await real(self, request)

    monkeypatch.setattr(Router, "chat", drops_fast)
    machine = make_machine(open_runtime, models=["smart", "fast"])
    with pytest.raises(MachineViolation) as caught:
        run_state_machine_as_test(machine, settings=HUNT)
    violation = caught.value.violations[0]
    assert "did not end within its deadline" in violation.problem
    # Shrunk to the one request that shows it.
    sends = [op for op in caught.value.run.program if isinstance(op, Send)]
    assert [(s.request.model, s.request.stream) for s in sends] == [("fast", False)]
    assert "program:" in str(caught.value)


def test_it_finds_a_router_that_bills_failed_attempts_to_the_completion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Router.chat

    async def overbills(self: Router, request: ChatRequest) -> Completion | Failure:
        result = await real(self, request)
        if isinstance(result, Completion) and result.attempts > 1:
            extra = Usage(input_tokens=1)
            result = msgspec.structs.replace(result, usage=result.usage + extra)
        return result

    monkeypatch.setattr(Router, "chat", overbills)
    # A narrower machine (one route, one fault) keeps the hunt and its shrinking quick.
    machine = make_machine(
        open_runtime, models=["smart"], faults=[ServerError()], overrides=(), streams=False
    )
    with pytest.raises(MachineViolation) as caught:
        run_state_machine_as_test(machine, settings=HUNT)
    problems = [v.problem for v in caught.value.violations]
    assert any("is not the winning attempt's" in p for p in problems), problems
    # It needs a fault before the request: shrinking keeps a plan change and one request.
    program = caught.value.run.program
    assert any(isinstance(op, SetPlan) for op in program)
    assert sum(isinstance(op, Send) for op in program) == 1


def test_it_finds_a_router_that_answers_from_the_wrong_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Router.chat

    async def misattributes(self: Router, request: ChatRequest) -> Completion | Failure:
        result = await real(self, request)
        if isinstance(result, Completion) and result.connection == "gamma":
            result = msgspec.structs.replace(result, connection="alpha")
        return result

    monkeypatch.setattr(Router, "chat", misattributes)
    machine = make_machine(open_runtime, models=["fast"], overrides=(), streams=False)
    with pytest.raises(MachineViolation) as caught:
        run_state_machine_as_test(machine, settings=HUNT)
    problems = " ".join(v.problem for v in caught.value.violations)
    assert "answered by 'alpha', which does not serve" in problems


# --------------------------------------------------------------------------- configuration


def test_make_machine_rejects_unknown_options() -> None:
    with pytest.raises(TypeError, match="unknown machine option"):
        make_machine(open_runtime, modles=["smart"])


def test_a_machine_without_open_runtime_says_what_to_set() -> None:
    machine: Any = SwitchboardMachine()  # its rules are installed at run time
    machine.send(model="smart", stream=False, timeout=1.0)
    with pytest.raises(TypeError, match="open_runtime"):
        machine.teardown()


def test_options_reach_the_rules() -> None:
    machine_type: Any = make_machine(open_runtime, models=["fast"], timeouts=[1.5], overrides=())
    machine = machine_type()
    machine.send(model="fast", stream=True, timeout=1.5)
    machine.override(connection="alpha", changes={})
    machine.cancel(recent=0)
    assert [type(op).__name__ for op in machine.program] == ["Send", "Cancel"]
    assert machine.program[0].request.request_id == "sb-op-1"
    assert "[sb-op-1]" in machine.program[0].request.messages[0].content
