"""Request validation at the door: every unsound field is named, sound requests pass, and no
value of any type makes the check itself raise."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import refusal, request_problem
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    EmbedRequest,
    ImagePart,
    Message,
    ResponseFormat,
    TextPart,
    Tool,
    ToolResultPart,
    ToolUsePart,
)

HI = [Message(role="user", content="hi")]


def chat(**fields: Any) -> ChatRequest:
    fields.setdefault("model", "m")
    fields.setdefault("messages", HI)
    return ChatRequest(**fields)


def embed(**fields: Any) -> EmbedRequest:
    fields.setdefault("model", "e")
    fields.setdefault("inputs", ["a"])
    return EmbedRequest(**fields)


SOUND = [
    chat(),
    chat(max_tokens=1, temperature=0.0, top_p=1.0),
    chat(max_tokens=1_000_000, temperature=2.0, top_p=0.0, timeout=0.0),
    chat(
        messages=[
            Message(role="system", content="be brief"),
            Message(
                role="user",
                content=[TextPart(text="look"), ImagePart(url="http://x/i.png")],
            ),
            Message(
                role="assistant",
                content=[ToolUsePart(id="c1", name="f", arguments={"a": [1, 2]})],
            ),
            Message(role="tool", content=[ToolResultPart(tool_use_id="c1", content="ok")]),
        ],
        tools=[Tool(name="f", parameters={"type": "object"})],
        tool_choice="f",
        stop=["\n\n"],
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
        metadata={"user": "u1"},
        extra={"seed": 7, "n": 1},
        fallbacks=["other"],
        stream=True,
    ),
    embed(),
    embed(inputs=["a", "b"], dimensions=256, timeout=3.5),
]


@pytest.mark.parametrize("request_", SOUND)
def test_sound_requests_pass(request_: ChatRequest | EmbedRequest) -> None:
    assert request_problem(request_) is None
    assert refusal(request_) is None


BAD: list[tuple[ChatRequest | EmbedRequest, str]] = [
    (chat(max_tokens=-5), "max_tokens must be >= 1"),
    (chat(max_tokens=0), "max_tokens must be >= 1"),
    (chat(max_tokens=10**12), "max_tokens must be <= 1,000,000"),
    (chat(max_tokens=2.5), "max_tokens must be an integer"),
    (chat(max_tokens=True), "max_tokens must be an integer"),
    (chat(max_tokens="100"), "max_tokens must be an integer"),
    (chat(messages=[]), "messages must hold at least one message"),
    (chat(messages="hi"), "messages must be a list"),
    (chat(messages=["hi"]), "messages[0].(the message) must be a Message"),
    (chat(messages=[Message(role="robot", content="x")]), "messages[0].role must be one of"),
    (chat(messages=[Message(role=["user"], content="x")]), "messages[0].role must be one of"),
    (chat(messages=[Message(role="user", content=5)]), "messages[0].content must be a string"),
    (
        chat(messages=[Message(role="user", content=[TextPart(text=None)])]),
        "messages[0].content[0].text must be a string",
    ),
    (
        chat(messages=[Message(role="user", content=[ImagePart()])]),
        "needs a url or base64 data",
    ),
    (
        chat(messages=[Message(role="user", content=[{"type": "text"}])]),
        "messages[0].content[0] must be a text, image, tool_use or tool_result part",
    ),
    (chat(temperature=math.nan), "temperature must be a number from 0 to 2, got nan"),
    (chat(temperature=-0.1), "temperature must be a number from 0 to 2"),
    (chat(temperature=math.inf), "temperature must be a number from 0 to 2"),
    (chat(temperature="hot"), "temperature must be a number"),
    (chat(top_p=1.5), "top_p must be a number from 0 to 1"),
    (chat(timeout=-1.0), "timeout must be a finite number of seconds >= 0"),
    (chat(timeout=math.nan), "timeout must be a finite number of seconds >= 0"),
    (chat(timeout="soon"), "timeout must be a number of seconds"),
    (chat(model=""), "model must be a non-empty string"),
    (chat(model="   "), "model must be a non-empty string"),
    (chat(model=5), "model must be a non-empty string"),
    (chat(model="m" * 10_000), "model must be at most 512 characters"),
    (chat(request_id=""), "request_id must be a non-empty string"),
    (chat(request_id="r" * 1000), "request_id must be at most 256 characters"),
    (chat(stop=[""]), "stop[0] must be a non-empty string"),
    (chat(stop=["x"] * 65), "stop may hold at most 64 entries"),
    (chat(stop="x"), "stop must be a list of strings"),
    (chat(tools=[Tool(name="")]), "tools[0].name must be a non-empty string"),
    (chat(tools=["f"]), "tools[0] must be a Tool"),
    (chat(tool_choice="g"), "tool_choice names tool 'g', but no such tool is given"),
    (chat(tool_choice="required"), "tool_choice is 'required' but no tools are given"),
    (chat(tool_choice=3), "tool_choice must be auto, none, required or a tool's name"),
    (
        chat(response_format=ResponseFormat(type="json_schema")),
        "response_format.schema is required",
    ),
    (chat(response_format=ResponseFormat(type="yaml")), "response_format.type must be one of"),
    (chat(response_format=ResponseFormat(type={})), "response_format.type must be one of"),
    (chat(stream="yes"), "stream must be true or false"),
    (chat(extra={"n": 10**9}), "extra.n must be 1"),
    (chat(extra={"x": object()}), "extra must be JSON-encodable"),
    (chat(extra={1: "x"}), "extra keys must be strings"),
    (chat(extra=["x"]), "extra must be an object"),
    (chat(metadata={"k": 1}), "metadata must map strings to strings"),
    (chat(fallbacks=[""]), "fallbacks[0] must be a non-empty string"),
    (chat(strategy=""), "strategy must be a non-empty string"),
    (chat(cache="sometimes"), "cache must be one of default, refresh, off"),
    (embed(cache=None), "cache must be one of default, refresh, off"),
    (chat(cache=["off"]), "cache must be one of default, refresh, off"),
    (embed(inputs=[]), "inputs must hold at least one text"),
    (embed(inputs=[""]), "inputs[0] must be a non-empty string"),
    (embed(inputs="abc"), "inputs must be a list of strings"),
    (embed(dimensions=0), "dimensions must be >= 1"),
    (embed(dimensions=-3), "dimensions must be >= 1"),
]


@pytest.mark.parametrize(("request_", "expected"), BAD)
def test_each_unsound_field_is_named(request_: ChatRequest | EmbedRequest, expected: str) -> None:
    problem = request_problem(request_)
    assert problem is not None
    assert expected in problem
    failure = refusal(request_)
    assert failure is not None
    assert failure.kind is ErrorKind.BAD_REQUEST
    assert failure.message == f"bad request: {problem}"
    assert not failure.retryable


def test_refusal_keeps_only_sound_identifiers() -> None:
    failure = refusal(chat(model=["m"], request_id="r1"))
    assert failure is not None
    assert (failure.model, failure.request_id) == ("", "r1")
    failure = refusal(chat(max_tokens=-1, model="gpt", request_id=7))
    assert failure is not None
    assert (failure.model, failure.request_id) == ("gpt", "")


def test_a_request_of_another_type_is_named() -> None:
    assert request_problem("hello") == "expected a ChatRequest or EmbedRequest, got str"


ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.builds(object),
)
FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "stream",
    "metadata",
    "request_id",
    "timeout",
    "fallbacks",
    "strategy",
    "extra",
    "cache",
]


@given(st.dictionaries(st.sampled_from(FIELDS), ANYTHING))
def test_no_value_of_any_type_makes_the_check_raise(fields: dict[str, Any]) -> None:
    request = chat(**fields)
    problem = request_problem(request)
    assert problem is None or isinstance(problem, str)
    failure = refusal(request)
    assert (failure is None) == (problem is None)


@pytest.mark.parametrize("field", ["extra", "metadata"])
def test_a_missing_dictionary_is_named(field: str) -> None:
    problem = request_problem(chat(**{field: None}))
    assert problem is not None
    assert problem.startswith(f"{field} must be")


def test_an_empty_model_is_sound_only_where_it_means_the_default() -> None:
    """A `Connection` reads ``model=""`` as its default_model; the router needs a name."""
    assert request_problem(chat(model=""), model_required=False) is None
    assert request_problem(embed(model=""), model_required=False) is None
    problem = request_problem(chat(model=None), model_required=False)
    assert problem is not None
    assert problem.startswith("model must be a non-empty string")
    assert request_problem(chat(model=""), model_required=True) is not None


PARTS = st.one_of(
    ANYTHING,
    st.builds(TextPart, text=ANYTHING),
    st.builds(ImagePart, url=ANYTHING, data=ANYTHING),
    st.builds(ToolUsePart, id=ANYTHING, name=ANYTHING, arguments=ANYTHING),
    st.builds(ToolResultPart, tool_use_id=ANYTHING, content=ANYTHING),
)
MESSAGES = st.builds(
    Message,
    role=st.one_of(st.sampled_from(["user", "assistant"]), ANYTHING),
    content=st.one_of(ANYTHING, st.lists(PARTS, max_size=3)),
)


@given(
    st.lists(st.one_of(MESSAGES, ANYTHING), max_size=3),
    st.one_of(ANYTHING, st.builds(ResponseFormat, type=ANYTHING, schema=ANYTHING, name=ANYTHING)),
    st.one_of(ANYTHING, st.lists(st.builds(Tool, name=ANYTHING, parameters=ANYTHING), max_size=2)),
)
def test_no_nested_value_makes_the_check_raise(
    messages: list[Any], response_format: Any, tools: Any
) -> None:
    request = chat(messages=messages, response_format=response_format, tools=tools)
    problem = request_problem(request)
    assert problem is None or isinstance(problem, str)
