"""The kit's Hypothesis strategies produce only valid values."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from actors.testing._faults import (
    FAULT_TYPES,
    FaultPlan,
    NoResponse,
    RequestFacts,
    Stall,
)
from actors.testing._strategies import (
    byte_splits,
    chat_requests,
    fault_plans,
    faults,
    rules,
)
from protocol._messages import ChatRequest, ToolResultPart, ToolUsePart

SETTINGS = settings(max_examples=150, deadline=None)
# For `find`: the first example that matches, without shrinking it (shrinking is slow and
# these tests only show that a value is reachable, or what the simplest example is - the
# first one Hypothesis tries).
FIND = settings(
    phases=[Phase.generate],
    database=None,
    max_examples=3000,
    suppress_health_check=list(HealthCheck),
)

facts = st.builds(
    RequestFacts,
    arrival=st.integers(1, 12),
    model_arrival=st.integers(1, 12),
    now=st.floats(0, 12),
    model=st.sampled_from(["a", "b"]),
    dialect=st.sampled_from(["openai", "anthropic", "gemini", "ollama"]),
    endpoint=st.sampled_from(["chat", "embed"]),
    stream=st.booleans(),
    last_role=st.sampled_from([None, "user", "assistant", "tool"]),
)


# --------------------------------------------------------------------------- requests


@SETTINGS
@given(chat_requests(models=["a", "b"], prefill=True))
def test_chat_requests_are_valid_and_round_trip(request: ChatRequest) -> None:
    assert request.model in ("a", "b")
    for encode, decode in (
        (msgspec.json.encode, msgspec.json.decode),
        (msgspec.msgpack.encode, msgspec.msgpack.decode),
    ):
        assert decode(encode(request), type=ChatRequest) == request
    roles = [m.role for m in request.messages if m.role != "system"]
    assert roles[0] == "user"
    assert all(m.role != "system" for m in request.messages[1:])
    assert request.max_tokens is None or request.max_tokens >= 1
    assert request.timeout is None or request.timeout > 0
    # Every tool result answers a tool call made just before it, by a defined tool.
    names = {t.name for t in request.tools}
    for before, message in zip(request.messages, request.messages[1:], strict=False):
        if message.role == "tool":
            assert isinstance(message.content, list)
            assert isinstance(before.content, list)
            calls = {p.id for p in before.content if isinstance(p, ToolUsePart)}
            for part in message.content:
                assert isinstance(part, ToolResultPart)
                assert part.tool_use_id in calls
                assert part.name in names


@SETTINGS
@given(chat_requests(stream=True, prefill=False, timeouts=False))
def test_chat_request_options_are_respected(request: ChatRequest) -> None:
    assert request.stream
    assert request.timeout is None
    assert request.messages[-1].role in ("user", "tool")


def test_chat_requests_reach_tools_and_prefill() -> None:
    with_tools = find(
        chat_requests(max_turns=2),
        lambda r: any(m.role == "tool" for m in r.messages),
        settings=FIND,
    )
    assert with_tools.tools
    prefilled = find(
        chat_requests(prefill=True), lambda r: r.messages[-1].role == "assistant", settings=FIND
    )
    assert prefilled.messages[-1].role == "assistant"


@pytest.mark.parametrize(
    "options",
    [{"models": []}, {"models": [""]}, {"max_turns": 0}],
)
def test_chat_requests_validate_arguments(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"models|max_turns"):
        chat_requests(**options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- faults and plans


@pytest.mark.parametrize("fault_type", FAULT_TYPES, ids=lambda t: t.__name__)
def test_every_fault_type_can_be_generated(fault_type: type) -> None:
    found = find(faults(), lambda f: type(f) is fault_type, settings=FIND)
    assert isinstance(found, fault_type)


@SETTINGS
@given(faults(hangs=False, max_seconds=0.2, max_tokens=3))
def test_faults_without_hangs_and_within_bounds(fault: object) -> None:
    assert not isinstance(fault, NoResponse)
    assert not (isinstance(fault, Stall) and fault.then == "hang")
    for name in ("seconds", "retry_after"):
        value = getattr(fault, name, None)
        assert value is None or 0 <= value <= 0.2
    assert getattr(fault, "after_tokens", 0) <= 3


@SETTINGS
@given(fault_plans(models=["a", "b"]), facts)
def test_fault_plans_round_trip_and_select_deterministically(
    plan: FaultPlan, request: RequestFacts
) -> None:
    assert FaultPlan.from_json(plan.to_json()) == plan
    assert FaultPlan.from_dict(plan.to_dict()) == plan
    chosen = plan.select(request)
    assert plan.select(request) == chosen
    assert FaultPlan.from_json(plan.to_json()).select(request) == chosen
    fault, index = chosen
    assert index is None or plan.rules[index].fault == fault


@SETTINGS
@given(rules(models=["a"], max_arrival=4))
def test_rules_are_valid(rule: object) -> None:
    assert rule == msgspec.json.decode(msgspec.json.encode(rule), type=type(rule))
    assert set(getattr(rule, "models", ())) <= {"a"}
    for n in (*getattr(rule, "arrivals", ()), getattr(rule, "arrival_to", None)):
        assert n is None or 1 <= n <= 4


def test_the_simplest_fault_plan_is_healthy() -> None:
    assert find(fault_plans(), lambda plan: True, settings=FIND) == FaultPlan()


def test_fault_plan_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="max_rules"):
        fault_plans(max_rules=-1)
    with pytest.raises(ValueError, match="max_seconds"):
        faults(max_seconds=0)
    with pytest.raises(ValueError, match="max_arrival"):
        rules(max_arrival=0)


# --------------------------------------------------------------------------- byte splits


@SETTINGS
@given(st.data(), st.binary(max_size=64))
def test_byte_splits_concatenate_to_the_data(data: st.DataObject, payload: bytes) -> None:
    pieces = data.draw(byte_splits(payload))
    assert b"".join(pieces) == payload
    assert sum(piece == b"" for piece in pieces) <= 1


@SETTINGS
@given(st.data(), st.binary(min_size=1, max_size=64), st.integers(1, 4))
def test_byte_splits_respect_max_pieces(
    data: st.DataObject, payload: bytes, max_pieces: int
) -> None:
    pieces = data.draw(byte_splits(payload, max_pieces=max_pieces))
    assert b"".join(pieces) == payload
    assert 1 <= len([p for p in pieces if p]) <= max_pieces


def test_byte_splits_reach_single_bytes_and_start_from_one_piece() -> None:
    single = find(byte_splits(b"abcd"), lambda p: len([x for x in p if x]) == 4, settings=FIND)
    assert [x for x in single if x] == [b"a", b"b", b"c", b"d"]
    assert find(byte_splits(b"abcd"), lambda p: True, settings=FIND) == [b"abcd"]


def test_byte_splits_validate_arguments() -> None:
    with pytest.raises(TypeError, match="bytes"):
        byte_splits("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pieces"):
        byte_splits(b"x", max_pieces=0)
