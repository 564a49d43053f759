"""The typed messages: JSON and MessagePack round trips (Hypothesis), immutability, keyword-only
construction, schema evolution, and the small helpers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._errors import ErrorKind, is_retryable
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Finished,
    ImagePart,
    Message,
    ReasoningDelta,
    ResponseFormat,
    Restart,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
    UsageUpdate,
)

# --------------------------------------------------------------------------- strategies

text = st.text(max_size=20)
counts = st.integers(min_value=0, max_value=2**31)
floats = st.floats(allow_nan=False, allow_infinity=False)
opt_floats = st.none() | floats
json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | floats | text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(text, json_values, max_size=3)
finish_reasons = st.sampled_from(
    ["stop", "length", "tool_calls", "content_filter", "refusal", "other"]
)

text_parts = st.builds(TextPart, text=text)
image_parts = st.builds(
    ImagePart, url=st.none() | text, data=st.none() | text, media_type=st.just("image/jpeg") | text
)
tool_use_parts = st.builds(ToolUsePart, id=text, name=text, arguments=json_objects)
tool_result_parts = st.builds(
    ToolResultPart, tool_use_id=text, content=text, name=text, is_error=st.booleans()
)
content_parts = text_parts | image_parts | tool_use_parts | tool_result_parts
messages = st.builds(
    Message,
    role=st.sampled_from(["system", "user", "assistant", "tool"]),
    content=text | st.lists(content_parts, max_size=4),
)
tools = st.builds(Tool, name=text, description=text, parameters=json_objects)
response_formats = st.builds(
    ResponseFormat,
    type=st.sampled_from(["text", "json_object", "json_schema"]),
    name=text,
    schema=st.none() | json_objects,
    strict=st.booleans(),
)
str_dicts = st.dictionaries(text, text, max_size=3)
chat_requests = st.builds(
    ChatRequest,
    model=text,
    messages=st.lists(messages, max_size=3),
    max_tokens=st.none() | counts,
    temperature=opt_floats,
    top_p=opt_floats,
    stop=st.lists(text, max_size=2),
    tools=st.lists(tools, max_size=2),
    tool_choice=st.none() | text,
    response_format=st.none() | response_formats,
    stream=st.booleans(),
    metadata=str_dicts,
    request_id=text,
    timeout=opt_floats,
    fallbacks=st.lists(text, max_size=2),
    strategy=st.none() | text,
    extra=json_objects,
)
embed_requests = st.builds(
    EmbedRequest,
    model=text,
    inputs=st.lists(text, max_size=3),
    dimensions=st.none() | counts,
    metadata=str_dicts,
    request_id=text,
    timeout=opt_floats,
    fallbacks=st.lists(text, max_size=2),
    extra=json_objects,
)
usages = st.builds(
    Usage,
    input_tokens=counts,
    output_tokens=counts,
    cache_read_tokens=counts,
    cache_write_tokens=counts,
    reasoning_tokens=counts,
)
tool_calls = st.builds(ToolCall, id=text, name=text, arguments=text)
completions = st.builds(
    Completion,
    text=text,
    tool_calls=st.lists(tool_calls, max_size=2),
    finish_reason=finish_reasons,
    usage=usages,
    model=text,
    connection=text,
    request_id=text,
    response_id=text,
    reasoning=text,
    attempts=counts,
    latency=opt_floats,
    time_to_first_token=opt_floats,
    cost=opt_floats,
)
embeddings = st.builds(
    Embeddings,
    vectors=st.lists(st.lists(floats, max_size=4), max_size=3),
    usage=usages,
    model=text,
    connection=text,
    request_id=text,
    attempts=counts,
    latency=opt_floats,
    cost=opt_floats,
)
failures = st.builds(
    Failure,
    kind=st.sampled_from(ErrorKind),
    message=text,
    status=st.none() | st.integers(min_value=100, max_value=599),
    retryable=st.booleans(),
    retry_after=opt_floats,
    code=st.none() | text,
    connection=text,
    model=text,
    request_id=text,
    attempts=counts,
    usage=st.none() | usages,
)
stream_events: st.SearchStrategy[StreamEvent] = st.one_of(
    st.builds(TextDelta, text=text),
    st.builds(ReasoningDelta, text=text),
    st.builds(
        ToolCallDelta,
        index=counts,
        id=st.none() | text,
        name=st.none() | text,
        arguments=text,
    ),
    st.builds(UsageUpdate, usage=usages),
    st.builds(Finished, finish_reason=finish_reasons, usage=usages, model=text, response_id=text),
    st.builds(Restart, reason=text, connection=text, model=text),
)

ALL = st.one_of(
    content_parts,
    messages,
    tools,
    response_formats,
    chat_requests,
    embed_requests,
    usages,
    tool_calls,
    completions,
    embeddings,
    failures,
    stream_events,
)


# --------------------------------------------------------------------------- round trips


@settings(max_examples=200, deadline=None)
@given(ALL)
def test_json_round_trip(value: Any) -> None:
    data = msgspec.json.encode(value)
    assert msgspec.json.decode(data, type=type(value)) == value


@settings(max_examples=200, deadline=None)
@given(ALL)
def test_msgpack_round_trip(value: Any) -> None:
    data = msgspec.msgpack.encode(value)
    assert msgspec.msgpack.decode(data, type=type(value)) == value


@settings(max_examples=100, deadline=None)
@given(stream_events)
def test_stream_events_decode_through_the_tagged_union(event: StreamEvent) -> None:
    for encode, decode in (
        (msgspec.json.encode, msgspec.json.Decoder(StreamEvent).decode),
        (msgspec.msgpack.encode, msgspec.msgpack.Decoder(StreamEvent).decode),
    ):
        decoded = decode(encode(event))
        assert type(decoded) is type(event)
        assert decoded == event


@settings(max_examples=100, deadline=None)
@given(st.lists(content_parts, min_size=1, max_size=4))
def test_content_parts_keep_their_type(parts: list[Any]) -> None:
    message = Message(role="user", content=parts)
    decoded = msgspec.json.decode(msgspec.json.encode(message), type=Message)
    assert [type(p) for p in decoded.content] == [type(p) for p in parts]


def test_tags_are_the_type_field() -> None:
    assert msgspec.json.decode(msgspec.json.encode(TextDelta(text="hi"))) == {
        "type": "text_delta",
        "text": "hi",
    }
    part = msgspec.json.decode(msgspec.json.encode(ToolResultPart(tool_use_id="t", content="c")))
    assert part["type"] == "tool_result"


def test_from_type_builds_messages() -> None:
    # Hypothesis can derive strategies from the annotations of the simplest messages too.
    @settings(max_examples=50, deadline=None)
    @given(st.from_type(TextPart), st.from_type(Restart))
    def check(part: TextPart, restart: Restart) -> None:
        assert msgspec.json.decode(msgspec.json.encode(part), type=TextPart) == part
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(restart), type=Restart) == restart

    check()


# --------------------------------------------------------------------------- shape


@pytest.mark.parametrize(
    "value",
    [
        TextPart(text="a"),
        Message(role="user", content="hi"),
        ChatRequest(model="m", messages=[]),
        Usage(),
        ToolCall(id="1", name="f"),
        Completion(),
        Failure(kind=ErrorKind.TIMEOUT, message="slow"),
        TextDelta(text="x"),
        Finished(),
    ],
)
def test_frozen(value: Any) -> None:
    field = msgspec.structs.fields(type(value))[0].name
    with pytest.raises(AttributeError):
        setattr(value, field, getattr(value, field))


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (TextPart, ("a",)),
        (Message, ("user", "hi")),
        (ChatRequest, ("m", [])),
        (Usage, (1, 2)),
        (ToolCall, ("1", "f")),
        (Failure, (ErrorKind.TIMEOUT, "slow")),
        (TextDelta, ("x",)),
    ],
)
def test_keyword_only(cls: type, args: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        cls(*args)


def test_request_ids_are_fresh() -> None:
    a = ChatRequest(model="m", messages=[])
    b = ChatRequest(model="m", messages=[])
    assert a.request_id != b.request_id
    assert len(a.request_id) == 32


# --------------------------------------------------------------------------- evolution


def test_old_peer_without_optional_fields_still_decodes() -> None:
    old = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
    request = msgspec.json.decode(old, type=ChatRequest)
    assert request.model == "gpt-4o"
    assert request.messages == [Message(role="user", content="hi")]
    assert request.stream is False
    assert request.fallbacks == []
    assert request.timeout is None
    assert request.request_id  # filled by the default factory

    completion = msgspec.json.decode(b'{"text":"ok"}', type=Completion)
    assert completion == Completion(text="ok")
    failure = msgspec.msgpack.decode(
        msgspec.msgpack.encode({"kind": "overloaded", "message": "busy"}), type=Failure
    )
    assert failure == Failure(kind=ErrorKind.OVERLOADED, message="busy")
    finished = msgspec.json.decode(b'{"type":"finished"}', type=StreamEvent)
    assert finished == Finished()


def test_newer_peer_with_unknown_fields_still_decodes() -> None:
    newer = b'{"text":"ok","future_field":{"x":1},"usage":{"input_tokens":3,"new_count":9}}'
    completion = msgspec.json.decode(newer, type=Completion)
    assert completion == Completion(text="ok", usage=Usage(input_tokens=3))
    event = msgspec.json.decode(b'{"type":"text_delta","text":"a","extra":true}', type=StreamEvent)
    assert event == TextDelta(text="a")


def test_unknown_error_kind_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"kind":"gremlins","message":"?"}', type=Failure)


# --------------------------------------------------------------------------- helpers


@settings(max_examples=100, deadline=None)
@given(usages, usages, usages)
def test_usage_addition(a: Usage, b: Usage, c: Usage) -> None:
    total = a + b
    assert total.input_tokens == a.input_tokens + b.input_tokens
    assert total.output_tokens == a.output_tokens + b.output_tokens
    assert total.cache_read_tokens == a.cache_read_tokens + b.cache_read_tokens
    assert total.cache_write_tokens == a.cache_write_tokens + b.cache_write_tokens
    assert total.reasoning_tokens == a.reasoning_tokens + b.reasoning_tokens
    assert total.total_tokens == a.total_tokens + b.total_tokens
    assert a + Usage() == a
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a


def test_usage_total_tokens() -> None:
    assert Usage(input_tokens=3, output_tokens=4, cache_read_tokens=100).total_tokens == 7


def test_message_text() -> None:
    assert Message(role="user", content="plain").text() == "plain"
    parts = Message(
        role="assistant",
        content=[
            TextPart(text="a"),
            ImagePart(url="http://x/y.png"),
            ToolUsePart(id="1", name="f"),
            TextPart(text="b"),
            ToolResultPart(tool_use_id="1", content="not text"),
        ],
    )
    assert parts.text() == "ab"
    assert Message(role="user", content=[]).text() == ""


def test_tool_call_parsed_arguments() -> None:
    assert ToolCall(id="1", name="f", arguments='{"a": [1, 2]}').parsed_arguments() == {"a": [1, 2]}
    assert ToolCall(id="1", name="f", arguments="").parsed_arguments() == {}
    assert ToolCall(id="1", name="f").parsed_arguments() == {}
    with pytest.raises(msgspec.DecodeError):
        ToolCall(id="1", name="f", arguments='{"a": ').parsed_arguments()


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_failure_of_takes_retryable_from_the_table(kind: ErrorKind) -> None:
    failure = Failure.of(kind, "m", status=500)
    assert failure.retryable is is_retryable(kind)
    assert failure.status == 500
    assert Failure.of(kind, "m", retryable=True).retryable is True
