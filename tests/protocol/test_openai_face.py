"""The OpenAI face's pure codec (``protocol._openai_face``): requests in, answers and errors out.

The strongest check of the answer side is the mirror: what the face renders is decoded by our
own *client* dialect (``protocol._openai``), and must give back the same text, tool calls,
finish reason and usage - split anywhere for streams. The request side maps every field the
SDK sends, names the field in every 400, and never raises on any bytes.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._classify import classify
from protocol._config import ConnectionConfig
from protocol._errors import POLICIES, ErrorKind
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
    Switched,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
    UsageUpdate,
)
from protocol._openai import DIALECT
from protocol._openai_face import (
    HTTP_ERRORS,
    ChatCall,
    ChatChunks,
    EmbedCall,
    WireError,
    admission_error,
    completion_body,
    decode_chat,
    decode_embed,
    embeddings_body,
    failure_error,
    finish_reason,
    model_candidates,
    models_body,
)
from protocol._validate import refusal

USAGE = Usage(input_tokens=11, output_tokens=7, cache_read_tokens=3, reasoning_tokens=2)


def chat(body: Any) -> ChatCall:
    call = decode_chat(json.dumps(body).encode(), request_id="rid")
    assert isinstance(call, ChatCall), call
    return call


def chat_error(body: bytes | Any) -> WireError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = decode_chat(raw, request_id="rid")
    assert isinstance(error, WireError), error
    return error


# --------------------------------------------------------------------------- errors


def test_every_error_kind_has_one_http_answer() -> None:
    assert set(HTTP_ERRORS) == set(ErrorKind)
    assert set(POLICIES) == set(HTTP_ERRORS)
    status = {kind: row.status for kind, row in HTTP_ERRORS.items()}
    assert status[ErrorKind.BAD_REQUEST] == 400
    assert status[ErrorKind.NOT_FOUND] == 404
    assert status[ErrorKind.RATE_LIMITED] == status[ErrorKind.QUEUE_FULL] == 429
    # The provider's verdict on switchboard's own key is not the client's 401/403.
    assert status[ErrorKind.AUTH] == status[ErrorKind.PERMISSION] == 502
    # A provider that failed, is unavailable or too slow: 502, 503, 504.
    for kind, row in POLICIES.items():
        if row.from_provider and row.breaker_failure:
            assert status[kind] in (502, 503, 504), kind
    assert status[ErrorKind.TIMEOUT] == status[ErrorKind.DEADLINE] == 504
    assert status[ErrorKind.OVERLOADED] == status[ErrorKind.CIRCUIT_OPEN] == 503


@pytest.mark.parametrize(
    "kind",
    [
        ErrorKind.RATE_LIMITED,
        ErrorKind.OVERLOADED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.TIMEOUT,
        ErrorKind.BAD_REQUEST,
        ErrorKind.NOT_FOUND,
        ErrorKind.CONTEXT_LENGTH,
        ErrorKind.CONTENT_FILTER,
    ],
)
def test_a_switchboard_behind_a_switchboard_sees_the_same_kind(kind: ErrorKind) -> None:
    """Our own client dialect classifies the face's error answer back to the same kind."""
    error = failure_error(Failure.of(kind, "something happened"))
    body = json.loads(error.openai_body())["error"]
    again = classify(error.status, type_=body["type"], code=body["code"], message=body["message"])
    assert again is kind


def test_the_error_shape_is_openais_and_anthropics() -> None:
    error = failure_error(Failure.of(ErrorKind.NOT_FOUND, "no connection serves model 'x'"))
    assert json.loads(error.openai_body()) == {
        "error": {
            "message": "no connection serves model 'x'",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert json.loads(error.anthropic_body()) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no connection serves model 'x'"},
    }


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (ChatRequest(model="m", messages=[], max_tokens=5), "messages"),
        (ChatRequest(model="m", messages=[Message(role="user", content="x")], max_tokens=-1),
         "max_tokens"),
        (ChatRequest(model="m", messages=[Message(role="user", content="x")], top_p=3.0),
         "top_p"),
        (ChatRequest(model="m", messages=[Message(role="user", content=[TextPart(text=1)])]),  # type: ignore[arg-type]
         "messages[0].content[0].text"),
        (ChatRequest(model="m", messages=[Message(role="user", content="x")],
                     response_format=ResponseFormat(type="json_schema")),
         "response_format.json_schema.schema"),
        (ChatRequest(model="m", messages=[Message(role="user", content="x")], timeout=-1),
         "switchboard.timeout"),
        (EmbedRequest(model="m", inputs=[]), "input"),
        (EmbedRequest(model="m", inputs=[""]), "input[0]"),
    ],
)  # fmt: skip
def test_a_runtime_refusal_names_the_field_in_openais_words(
    request_: ChatRequest | EmbedRequest, param: str
) -> None:
    failure = refusal(request_)
    assert failure is not None
    error = failure_error(failure)
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")
    assert error.message == failure.message


def test_retry_after_headers() -> None:
    limited = failure_error(Failure.of(ErrorKind.RATE_LIMITED, "slow down", retry_after=2.2))
    assert limited.headers() == [("retry-after", "3"), ("retry-after-ms", "2200")]
    # A 429 always says when; anything else only when it knows.
    queue_full = failure_error(Failure.of(ErrorKind.QUEUE_FULL, "queue full"))
    assert queue_full.headers() == [("retry-after", "1"), ("retry-after-ms", "1000")]
    assert failure_error(Failure.of(ErrorKind.SERVER_ERROR, "boom")).headers() == []
    opened = failure_error(Failure.of(ErrorKind.CIRCUIT_OPEN, "open", retry_after=0.2))
    assert opened.status == 503
    assert opened.headers() == [("retry-after", "1"), ("retry-after-ms", "200")]


def test_admission_refusals_keep_their_code() -> None:
    budget = Failure.of(
        ErrorKind.RATE_LIMITED, "budget spent", retryable=False, code="budget_exceeded"
    )
    error = admission_error(budget)
    assert (error.status, error.code) == (429, "budget_exceeded")
    assert error.headers() == []  # retrying cannot help before the period ends: no Retry-After
    denied = admission_error(
        Failure.of(ErrorKind.PERMISSION, "not this model", code="model_not_allowed")
    )
    assert (denied.status, denied.type, denied.code) == (
        403,
        "permission_error",
        "model_not_allowed",
    )
    assert json.loads(denied.anthropic_body())["error"]["type"] == "permission_error"


# --------------------------------------------------------------------------- chat requests


def test_a_full_chat_request_maps_every_field() -> None:
    body = {
        "model": "smart",
        "messages": [
            {"role": "developer", "content": "be terse"},
            {"role": "system", "content": [{"type": "text", "text": "and kind"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"deep": true}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        ],
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",
        "tools": [
            {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": {"type": "object"}},
        },
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "user": "alice",
        "metadata": {"team": "a"},
        "seed": 42,
        "logprobs": None,
        "switchboard": {"timeout": 12.5, "fallbacks": ["cheap"], "strategy": "weighted"},
    }  # fmt: skip
    call = chat(body)
    request = call.request
    assert (call.stream, call.include_usage) == (True, True)
    assert request == ChatRequest(
        model="smart",
        messages=[
            Message(role="system", content="be terse"),
            Message(role="system", content="and kind"),
            Message(
                role="user",
                content=[
                    TextPart(text="what is this?"),
                    ImagePart(data="QUJD", media_type="image/jpeg"),
                    ImagePart(url="https://x/y.png"),
                ],
            ),
            Message(
                role="assistant",
                content=[ToolUsePart(id="call_1", name="look", arguments={"deep": True})],
            ),
            Message(
                role="tool",
                content=[ToolResultPart(tool_use_id="call_1", content="a cat", name="look")],
            ),
        ],
        max_tokens=20,  # max_completion_tokens wins
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        tools=[request.tools[0]],
        tool_choice="look",
        response_format=ResponseFormat(
            type="json_schema", name="out", schema={"type": "object"}, strict=False
        ),
        stream=True,
        metadata={"team": "a", "user": "alice"},
        request_id="rid",
        timeout=12.5,
        fallbacks=["cheap"],
        strategy="weighted",
        extra={"seed": 42},  # unknown fields pass through; null ones are dropped
    )
    assert request.tools[0].name == "look"
    assert request.tools[0].parameters == {"type": "object"}
    assert refusal(request) is None


def test_a_minimal_request_and_its_defaults() -> None:
    call = chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert (call.stream, call.include_usage) == (False, False)
    assert call.request == ChatRequest(
        model="m", messages=[Message(role="user", content="hi")], request_id="rid"
    )


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (b"", None, "body is empty"),
        (b"   \n", None, "body is empty"),
        (b"{", None, "not valid JSON"),
        (b"\xff", None, "not valid JSON"),
        (b'"text"', None, "got a string"),
        (b"null", None, "got null"),
        (b"[" * 50_000, None, "not valid JSON"),
        (b'{"model": "m", "messages": [], "temperature": 1e999}', None, "not valid JSON"),
        ({"messages": []}, "model", "model: this field is required"),
        ({"model": "m"}, "messages", "messages: this field is required"),
        ({"model": ["m"], "messages": []}, "model", "expected `str`"),
        ({"model": "m", "messages": {}}, "messages", "expected `array`"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role", "required"),
        ({"model": "m", "messages": [{"role": "function", "content": "x"}]},
         "messages[0].role", "function"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         "messages[0].content[0].type", "input_audio"),
        ({"model": "m", "messages": [], "max_tokens": "10"}, "max_tokens", "expected `int | null`"),
        ({"model": "m", "messages": [], "stream": "yes"}, "stream", "expected `bool | null`"),
        ({"model": "m", "messages": [], "n": 3}, "n", "one choice"),
        ({"model": "m", "messages": [], "stop": [1]}, "stop[0]", "expected `str`"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]},
         "messages[0].tool_call_id", "needs the id"),
        ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]},
         "messages[0].tool_calls[0].function.arguments", "JSON object"),
        ({"model": "m", "messages": [], "switchboard": {"timeout": "soon"}},
         "switchboard.timeout", "expected `float | null`"),
    ],
)  # fmt: skip
def test_a_bad_body_is_a_400_naming_the_field(body: Any, param: str | None, words: str) -> None:
    error = chat_error(body)
    assert (error.status, error.param, error.type) == (400, param, "invalid_request_error")
    assert words in error.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_no_bytes_make_the_decoders_raise(body: bytes) -> None:
    assert isinstance(decode_chat(body, request_id="r"), ChatCall | WireError)
    assert isinstance(decode_embed(body, request_id="r"), EmbedCall | WireError)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "model": JSON | st.just("m"),
            "messages": JSON
            | st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "assistant", "tool", "system", "x"])},
                    optional={"content": JSON, "tool_calls": JSON, "tool_call_id": JSON},
                ),
                max_size=3,
            ),
            "max_tokens": JSON,
            "stop": JSON,
            "tools": JSON,
            "tool_choice": JSON,
            "response_format": JSON,
            "stream_options": JSON,
            "input": JSON,
        },
    )
)
def test_no_json_makes_the_decoders_raise_and_what_they_accept_can_be_checked(
    obj: dict[str, Any],
) -> None:
    body = json.dumps(obj).encode()
    call = decode_chat(body, request_id="r")
    if isinstance(call, ChatCall):
        refusal(call.request)  # the runtime's check runs without raising on it too
    embed = decode_embed(body, request_id="r")
    if isinstance(embed, EmbedCall):
        refusal(embed.request)


# --------------------------------------------------------------------------- chat answers


def completion(**fields: Any) -> Completion:
    base: dict[str, Any] = {
        "text": "Hello there.",
        "usage": USAGE,
        "model": "gpt-x",
        "connection": "openai",
        "request_id": "rid",
    }
    return Completion(**{**base, **fields})


def test_a_completion_as_openais_object() -> None:
    body = json.loads(completion_body(completion(), model="asked", created=1700))
    assert body == {
        "id": "chatcmpl-rid",
        "object": "chat.completion",
        "created": 1700,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }


@pytest.mark.parametrize(
    "answer",
    [
        completion(),
        completion(text="", finish_reason="tool_calls", tool_calls=[
            ToolCall(id="c1", name="f", arguments='{"a": 1}'),
            ToolCall(id="c2", name="g", arguments="{}"),
        ]),
        completion(finish_reason="length", reasoning="let me think"),
        completion(finish_reason="content_filter"),
    ],
)  # fmt: skip
def test_our_client_dialect_reads_back_what_the_face_renders(answer: Completion) -> None:
    parsed = DIALECT.parse_chat(completion_body(answer, model="m", created=0))
    assert isinstance(parsed, Completion)
    assert parsed.text == answer.text
    assert parsed.tool_calls == answer.tool_calls
    assert parsed.finish_reason == answer.finish_reason
    assert parsed.reasoning == answer.reasoning
    assert parsed.usage == Usage(
        input_tokens=11, output_tokens=7, cache_read_tokens=3, reasoning_tokens=2
    )


def test_finish_reasons_in_openais_words() -> None:
    assert [finish_reason(r) for r in ("stop", "length", "tool_calls", "content_filter")] == [
        "stop",
        "length",
        "tool_calls",
        "content_filter",
    ]
    assert finish_reason("refusal") == finish_reason("other") == "stop"
    refused = json.loads(completion_body(completion(finish_reason="refusal"), model="m", created=0))
    message = refused["choices"][0]["message"]
    assert message["refusal"] == message["content"] == "Hello there."


EVENTS: list[Any] = [
    ReasoningDelta(text="hmm"),
    TextDelta(text="Hel"),
    TextDelta(text=""),
    UsageUpdate(usage=Usage(input_tokens=1)),
    TextDelta(text="lo"),
    Switched(reason="cut", connection="b"),
    ToolCallDelta(index=0, id="c1", name="f", arguments='{"a"'),
    ToolCallDelta(index=0, arguments=": 1}"),
    Finished(finish_reason="tool_calls", usage=USAGE),
]
FINAL = completion(
    text="Hello",
    reasoning="hmm",
    finish_reason="tool_calls",
    tool_calls=[ToolCall(id="c1", name="f", arguments='{"a": 1}')],
)


def render(include_usage: bool) -> bytes:
    chunks = ChatChunks(request_id="rid", model="asked", created=5, include_usage=include_usage)
    out = b""
    for event in EVENTS:
        piece = chunks.event(event)
        assert isinstance(piece, bytes)
        out += piece
    return out + chunks.finish(FINAL)


@settings(max_examples=100, deadline=None)
@given(include_usage=st.booleans(), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_our_client_decoder_reads_the_stream_back_split_anywhere(
    include_usage: bool, cuts: list[int]
) -> None:
    data = render(include_usage)
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    decoder = DIALECT.stream_decoder()
    items: list[Any] = []
    for piece in pieces:
        items += decoder.feed(piece)
    items += decoder.close()
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "Hello"
    assert "".join(i.text for i in items if isinstance(i, ReasoningDelta)) == "hmm"
    calls = [i for i in items if isinstance(i, ToolCallDelta)]
    assert (calls[0].id, calls[0].name) == ("c1", "f")
    assert "".join(c.arguments for c in calls) == '{"a": 1}'
    finished = items[-1]
    assert isinstance(finished, Finished)
    assert finished.finish_reason == "tool_calls"
    assert finished.usage == (USAGE if include_usage else Usage())
    assert finished.response_id == "chatcmpl-rid"


def test_stream_chunks_have_openais_shape() -> None:
    lines = [line for line in render(True).split(b"\n\n") if line]
    assert lines[-1] == b"data: [DONE]"
    chunks = [json.loads(line.removeprefix(b"data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "hmm"}
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-rid", 5, "asked", "chat.completion.chunk")
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    ]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 18
    assert b'"usage"' not in render(False)


def test_a_restart_after_text_ends_the_stream_and_before_text_is_absorbed() -> None:
    chunks = ChatChunks(request_id="rid", model="m", created=0, include_usage=False)
    assert chunks.event(Restart(reason="cut")) == b""  # nothing sent yet: nothing to void
    assert chunks.event(TextDelta(text="partial"))
    failure = chunks.event(Restart(reason="connection reset"))
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.STREAM_INTERRUPTED
    assert "connection reset" in failure.message
    event = chunks.error(failure_error(failure))
    assert event.startswith(b"data: {")
    assert json.loads(event.removeprefix(b"data: "))["error"]["code"] == "stream_interrupted"


# --------------------------------------------------------------------------- embeddings


def test_embeddings_requests_and_answers() -> None:
    call = decode_embed(
        b'{"model": "e", "input": "one", "dimensions": 4, "encoding_format": "base64", '
        b'"user": "u", "extra_field": 1}',
        request_id="rid",
    )
    assert isinstance(call, EmbedCall)
    assert call.base64
    assert call.request == EmbedRequest(
        model="e",
        inputs=["one"],
        dimensions=4,
        metadata={"user": "u"},
        request_id="rid",
        extra={"extra_field": 1},
    )
    result = Embeddings(vectors=[[0.5, -1.0], [2.0, 0.25]], usage=Usage(input_tokens=4), model="em")
    as_floats = json.loads(embeddings_body(result, model="e", base64=False))
    assert as_floats == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
            {"object": "embedding", "index": 1, "embedding": [2.0, 0.25]},
        ],
        "model": "em",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    packed = json.loads(embeddings_body(result, model="e", base64=True))["data"][1]["embedding"]
    assert list(struct.unpack("<2f", base64.b64decode(packed))) == [2.0, 0.25]
    parsed = DIALECT.parse_embed(embeddings_body(result, model="e", base64=True))
    assert isinstance(parsed, Embeddings)
    assert parsed.vectors == result.vectors


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "e", "input": [[1, 2]]}', "input[0]"),
        (b'{"model": "e", "input": [1, 2]}', "input[0]"),
        (b'{"model": "e", "input": ["a", null]}', "input[1]"),
        (b'{"model": "e", "input": 5}', "input"),
        (b'{"model": "e", "input": "x", "encoding_format": "int8"}', "encoding_format"),
    ],
)
def test_bad_embeddings_requests_name_the_field(body: bytes, param: str) -> None:
    error = decode_embed(body, request_id="r")
    assert isinstance(error, WireError)
    assert (error.status, error.param) == (400, param)


# --------------------------------------------------------------------------- models


def test_model_candidates_list_routes_aliases_defaults_and_plain_serves() -> None:
    connections = {
        "a": ConnectionConfig(
            name="a", default_model="m-1", models={"fast": "m-1", "big": "m-2"}, serves=["gpt-*"]
        ),
        "b": ConnectionConfig(name="b", default_model="m-1", serves=["exact", "o[13]*"]),
    }
    assert model_candidates(["smart", "fast"], connections) == [
        ("smart", "switchboard"),
        ("fast", "switchboard"),
        ("big", "a"),
        ("m-1", "a"),
        ("exact", "b"),
    ]
    assert json.loads(models_body([("smart", "switchboard")])) == {
        "object": "list",
        "data": [{"id": "smart", "object": "model", "created": 0, "owned_by": "switchboard"}],
    }


def test_wire_errors_never_carry_nan_retry_after() -> None:
    error = failure_error(Failure.of(ErrorKind.OVERLOADED, "x", retry_after=math.inf))
    assert error.headers() == []
    assert msgspec.json.decode(error.openai_body())["error"]["code"] == "overloaded"
