"""Tests of the Anthropic Messages dialect: request building, non-streamed parsing, the stream
decoder (inline streams, recorded streams, Hypothesis splits and mutations) and error
classification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._accumulate import StreamAccumulator
from protocol._anthropic import DIALECT, AnthropicStreamDecoder
from protocol._config import ConnectionConfig, Secret
from protocol._dialect import dialect_for
from protocol._errors import ErrorKind, ProtocolError
from protocol._messages import (
    ChatRequest,
    Completion,
    DecodedItem,
    EmbedRequest,
    Failure,
    Finished,
    ImagePart,
    Message,
    ReasoningDelta,
    ResponseFormat,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
    UsageUpdate,
)

KEY = "sk-ant-test-0123456789"
CONN = ConnectionConfig(name="claude", provider="anthropic", api_key=Secret(KEY))


def _request(messages: list[Message], **fields: Any) -> ChatRequest:
    return ChatRequest(model="claude", messages=messages, **fields)


def _body(request: ChatRequest, conn: ConnectionConfig = CONN, *, stream: bool = False) -> Any:
    http = DIALECT.chat_request(request, conn, model="claude-x", stream=stream)
    return json.loads(http.body)


def _user(text: str) -> Message:
    return Message(role="user", content=text)


# --------------------------------------------------------------------------- request building


def test_dialect_identity() -> None:
    assert dialect_for("anthropic") is DIALECT
    assert DIALECT.name == "anthropic"
    assert DIALECT.supports_embeddings is False


def test_request_url_headers_and_required_fields() -> None:
    http = DIALECT.chat_request(_request([_user("hi")]), CONN, model="claude-x", stream=False)
    assert http.method == "POST"
    assert http.url == "https://api.anthropic.com/v1/messages"
    assert http.headers == {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "accept": "application/json",
    }
    # Compact JSON, model from the argument, max_tokens from the connection's default.
    assert http.body == (
        b'{"model":"claude-x","max_tokens":4096,"messages":[{"role":"user","content":"hi"}]}'
    )


def test_key_is_sent_but_never_shown() -> None:
    http = DIALECT.chat_request(_request([_user("hi")]), CONN, model="m", stream=False)
    assert http.headers["x-api-key"] == KEY
    assert KEY not in repr(http)
    assert KEY not in str(http)
    assert "x-api-key" in repr(http)


def test_streaming_request_and_connection_settings() -> None:
    conn = ConnectionConfig(
        provider="anthropic",
        base_url="http://127.0.0.1:8080/v1/",
        api_version="2099-01-01",
        default_max_tokens=123,
        headers={"Anthropic-Beta": "x-2025", "Accept": "custom/type"},
    )
    http = DIALECT.chat_request(_request([_user("hi")]), conn, model="m", stream=True)
    assert http.url == "http://127.0.0.1:8080/v1/messages"
    # No key configured: no x-api-key header; the connection's headers win, whatever case.
    assert http.headers == {
        "anthropic-version": "2099-01-01",
        "content-type": "application/json",
        "Anthropic-Beta": "x-2025",
        "Accept": "custom/type",
    }
    body = json.loads(http.body)
    assert body["stream"] is True
    assert body["max_tokens"] == 123
    assert "stream" not in _body(_request([_user("hi")]))
    assert _body(_request([_user("hi")]), stream=True)["stream"] is True


def test_request_max_tokens_wins_over_default() -> None:
    assert _body(_request([_user("hi")], max_tokens=7))["max_tokens"] == 7


def test_system_messages_go_to_the_top_level() -> None:
    body = _body(
        _request(
            [
                Message(role="system", content="Be brief."),
                _user("hi"),
                Message(role="system", content=[TextPart(text="Be "), TextPart(text="kind.")]),
            ]
        )
    )
    assert body["system"] == "Be brief.\n\nBe kind."
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_no_system_field_without_system_messages() -> None:
    assert "system" not in _body(_request([_user("hi")]))


def test_tool_round_trip_merges_results_into_one_user_turn() -> None:
    messages = [
        _user("Weather in Paris and Rome?"),
        Message(
            role="assistant",
            content=[
                TextPart(text="Checking."),
                ToolUsePart(id="toolu_1", name="weather", arguments={"city": "Paris"}),
                ToolUsePart(id="toolu_2", name="weather", arguments={"city": "Rome"}),
            ],
        ),
        Message(role="tool", content=[ToolResultPart(tool_use_id="toolu_1", content="20C")]),
        Message(
            role="tool",
            content=[ToolResultPart(tool_use_id="toolu_2", content="boom", is_error=True)],
        ),
        _user("And tomorrow?"),
    ]
    body = _body(_request(messages))
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "20C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "boom",
                    "is_error": True,
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


def test_tool_results_are_moved_before_text_in_a_merged_user_turn() -> None:
    messages = [
        Message(role="assistant", content=[ToolUsePart(id="t1", name="f")]),
        _user("note first"),
        Message(role="tool", content=[ToolResultPart(tool_use_id="t1", content="ok")]),
    ]
    body = _body(_request([_user("go"), *messages]))
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    ]
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
            {"type": "text", "text": "note first"},
        ],
    }


def test_consecutive_user_messages_merge() -> None:
    body = _body(_request([_user("a"), _user("b")]))
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        }
    ]


def test_images() -> None:
    content: list[Any] = [
        TextPart(text="What is this?"),
        ImagePart(data="AAAA", media_type="image/jpeg"),
        ImagePart(url="https://example.com/cat.png"),
        ImagePart(url="data:image/webp;base64,BBBB"),
    ]
    body = _body(_request([Message(role="user", content=content)]))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "BBBB"}},
    ]


def test_trailing_assistant_prefill_is_kept() -> None:
    body = _body(_request([_user("Answer in JSON"), Message(role="assistant", content="{")]))
    assert body["messages"] == [
        {"role": "user", "content": "Answer in JSON"},
        {"role": "assistant", "content": "{"},
    ]


def test_tools() -> None:
    tools = [
        Tool(
            name="weather",
            description="Get the weather",
            parameters={"type": "object", "properties": {"city": {"type": "string"}}},
        ),
        Tool(name="noargs"),
    ]
    body = _body(_request([_user("hi")], tools=tools))
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "Get the weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ("weather", {"type": "tool", "name": "weather"}),
    ],
)
def test_tool_choice(choice: str, wire: dict[str, str]) -> None:
    body = _body(_request([_user("hi")], tools=[Tool(name="weather")], tool_choice=choice))
    assert body["tool_choice"] == wire


def test_sampling_stop_and_extra() -> None:
    body = _body(
        _request(
            [_user("hi")],
            temperature=0.5,
            top_p=0.9,
            stop=["END"],
            extra={"top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        )
    )
    assert body["temperature"] == 0.5
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["top_k"] == 5
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_extra_none_removes_a_field() -> None:
    body = _body(_request([_user("hi")], temperature=0.5, extra={"temperature": None}))
    assert "temperature" not in body


def test_response_format_json_schema_uses_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = ResponseFormat(type="json_schema", schema=schema)
    body = _body(
        _request([_user("hi")], response_format=fmt, extra={"output_config": {"effort": "low"}})
    )
    assert body["output_config"] == {
        "format": {"type": "json_schema", "schema": schema},
        "effort": "low",
    }


@pytest.mark.parametrize(
    "fmt",
    [
        ResponseFormat(type="json_object"),
        ResponseFormat(type="text"),
        ResponseFormat(type="json_schema"),
    ],
)
def test_response_formats_anthropic_cannot_express_send_nothing(fmt: ResponseFormat) -> None:
    assert "output_config" not in _body(_request([_user("hi")], response_format=fmt))


def test_embeddings_are_unsupported() -> None:
    with pytest.raises(ProtocolError) as info:
        DIALECT.embed_request(EmbedRequest(model="m", inputs=["x"]), CONN, model="m")
    assert info.value.failure.kind is ErrorKind.UNSUPPORTED
    parsed = DIALECT.parse_embed(b'{"data": []}')
    assert isinstance(parsed, Failure)
    assert parsed.kind is ErrorKind.UNSUPPORTED


# --------------------------------------------------------------------------- non-streamed


def _message(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "model": "claude-x",
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 4},
    }
    base.update(fields)
    return json.dumps(base).encode()


def test_parse_chat_all_block_kinds() -> None:
    body = _message(
        content=[
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
            {"type": "text", "text": "Hello ", "citations": None},
            {"type": "text", "text": "world"},
            {
                "type": "tool_use",
                "id": "toolu_9",
                "name": "f",
                "input": {"x": [1, 2], "y": "z"},
                "caller": {"type": "direct"},
            },
            {"type": "redacted_thinking", "data": "xyz"},
        ],
        stop_reason="tool_use",
        usage={
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 40,
            "cache_creation": {"ephemeral_5m_input_tokens": 40},
            "service_tier": "standard",
        },
        brand_new_field={"nested": True},
    )
    result = DIALECT.parse_chat(body)
    assert isinstance(result, Completion)
    assert result.text == "Hello world"
    assert result.reasoning == "Hmm."
    assert len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert (call.id, call.name) == ("toolu_9", "f")
    assert call.parsed_arguments() == {"x": [1, 2], "y": "z"}
    assert result.finish_reason == "tool_calls"
    assert result.usage == Usage(
        input_tokens=10 + 30 + 40, output_tokens=20, cache_read_tokens=30, cache_write_tokens=40
    )
    assert result.model == "claude-x"
    assert result.response_id == "msg_1"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "refusal"),
        ("something_new", "other"),
        (None, "other"),
    ],
)
def test_parse_chat_stop_reasons(stop_reason: str | None, finish: str) -> None:
    result = DIALECT.parse_chat(_message(stop_reason=stop_reason))
    assert isinstance(result, Completion)
    assert result.finish_reason == finish


def test_parse_chat_error_body_is_classified() -> None:
    result = DIALECT.parse_chat(_err("overloaded_error", "Overloaded"))
    assert isinstance(result, Failure)
    assert result.kind is ErrorKind.OVERLOADED
    assert result.status == 200
    assert result.code == "overloaded_error"
    assert "Overloaded" in result.message


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>502 Bad Gateway</html>",
        b"[1, 2]",
        b'{"content": "not a list"}',
        b'{"id": "msg_1"}',
        b'{"content": [{"type": "text", "text": "\xff"}]}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_parse_chat_junk_is_a_protocol_failure(body: bytes) -> None:
    result = DIALECT.parse_chat(body)
    assert isinstance(result, Failure)
    assert result.kind is ErrorKind.PROTOCOL


# --------------------------------------------------------------------------- streaming helpers


def _event(data: dict[str, Any], *, name: str | None = None, pad: str = "") -> bytes:
    return f"event: {name or data['type']}\ndata: {json.dumps(data)}{pad}\n\n".encode()


def _start(**usage: int) -> bytes:
    return _event(
        {
            "type": "message_start",
            "message": {
                "id": "msg_s",
                "type": "message",
                "role": "assistant",
                "model": "claude-s",
                "content": [],
                "stop_reason": None,
                "usage": usage or {"input_tokens": 10, "output_tokens": 1},
            },
        }
    )


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return _event({"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _event({"type": "content_block_delta", "index": index, "delta": delta})


def _text(index: int, text: str) -> bytes:
    return _delta(index, {"type": "text_delta", "text": text})


def _json(index: int, piece: str) -> bytes:
    return _delta(index, {"type": "input_json_delta", "partial_json": piece})


def _block_stop(index: int) -> bytes:
    return _event({"type": "content_block_stop", "index": index})


def _message_delta(stop_reason: str, **usage: int) -> bytes:
    return _event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage or {"output_tokens": 5},
        }
    )


PING = b'event: ping\ndata: {"type": "ping"}\n\n'
STOP = _event({"type": "message_stop"})


def _tool_start(index: int, tool_id: str, name: str) -> bytes:
    block = {
        "type": "tool_use",
        "id": tool_id,
        "name": name,
        "input": {},
        "caller": {"type": "direct"},
    }
    return _block_start(index, block)


def _decode(stream: bytes, decoder: AnthropicStreamDecoder | None = None) -> list[DecodedItem]:
    decoder = decoder or DIALECT.stream_decoder()
    items = decoder.feed(stream) + decoder.close()
    assert decoder.done
    assert decoder.feed(stream) == []
    assert decoder.close() == []
    return items


def _fold(items: list[DecodedItem]) -> StreamAccumulator:
    acc = StreamAccumulator()
    for item in items:
        acc.add(item)
    return acc


TEXT_STREAM = b"".join(
    [
        _start(input_tokens=10, output_tokens=1),
        _block_start(0, {"type": "text", "text": ""}),
        PING,
        _text(0, "Hello"),
        _text(0, ", world"),
        _block_stop(0),
        _message_delta("end_turn", output_tokens=5),
        STOP,
    ]
)

THINKING_STREAM = b"".join(
    [
        _start(),
        _block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        _delta(0, {"type": "thinking_delta", "thinking": "Let me think."}),
        _delta(0, {"type": "thinking_delta", "thinking": ""}),
        _delta(0, {"type": "signature_delta", "signature": "EuYD"}),
        _block_stop(0),
        _block_start(1, {"type": "text", "text": ""}),
        _text(1, "Pouch"),
        _delta(1, {"type": "citations_delta", "citation": {"type": "char_location"}}),
        _block_stop(1),
        _message_delta("end_turn", output_tokens=9),
        STOP,
    ]
)

TWO_TOOLS_STREAM = b"".join(
    [
        _start(),
        _block_start(0, {"type": "text", "text": "Let me check."}),
        _block_stop(0),
        _tool_start(1, "toolu_a", "weather"),
        _json(1, ""),
        _json(1, '{"city": "Pa'),
        _json(1, 'ris"}'),
        _block_stop(1),
        _block_start(2, {"type": "text", "text": ""}),
        _text(2, " And"),
        _block_stop(2),
        _tool_start(3, "toolu_b", "time"),
        _json(3, '{"tz": "CET"}'),
        _block_stop(3),
        _message_delta("tool_use", output_tokens=30),
        STOP,
    ]
)


# --------------------------------------------------------------------------- streaming


def test_stream_text() -> None:
    items = _decode(TEXT_STREAM)
    assert items == [
        UsageUpdate(usage=Usage(input_tokens=10, output_tokens=1)),
        TextDelta(text="Hello"),
        TextDelta(text=", world"),
        UsageUpdate(usage=Usage(input_tokens=10, output_tokens=5)),
        Finished(
            finish_reason="stop",
            usage=Usage(input_tokens=10, output_tokens=5),
            model="claude-s",
            response_id="msg_s",
        ),
    ]


def test_stream_padding_and_crlf_are_tolerated() -> None:
    padded = b"".join(
        [
            _start(),
            _event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                pad="      ",
            ),
            _event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "x"},
                },
                pad="   ",
            ),
            _event({"type": "message_stop"}, pad="            "),
        ]
    ).replace(b"\n", b"\r\n")
    items = _decode(padded)
    assert TextDelta(text="x") in items
    assert isinstance(items[-1], Finished)
    assert items[-1].finish_reason == "other"  # no message_delta came


def test_stream_thinking() -> None:
    items = _decode(THINKING_STREAM)
    assert [i for i in items if isinstance(i, TextDelta | ReasoningDelta)] == [
        ReasoningDelta(text="Let me think."),
        TextDelta(text="Pouch"),
    ]
    completion = _fold(items).completion()
    assert completion.reasoning == "Let me think."
    assert completion.text == "Pouch"


def test_stream_one_tool_use_after_text_gets_ordinal_zero() -> None:
    stream = b"".join(
        [
            _start(),
            _block_start(0, {"type": "text", "text": ""}),
            _text(0, "I'll check."),
            _block_stop(0),
            _tool_start(1, "toolu_1", "get_weather"),
            _json(1, ""),
            _json(1, '{"locati'),
            _json(1, 'on": "Paris"}'),
            _block_stop(1),
            _message_delta("tool_use", output_tokens=65),
            STOP,
        ]
    )
    items = _decode(stream)
    assert [i for i in items if isinstance(i, ToolCallDelta)] == [
        ToolCallDelta(index=0, id="toolu_1", name="get_weather", arguments=""),
        ToolCallDelta(index=0, arguments='{"locati'),
        ToolCallDelta(index=0, arguments='on": "Paris"}'),
    ]
    completion = _fold(items).completion()
    assert completion.finish_reason == "tool_calls"
    assert completion.text == "I'll check."
    assert [(c.id, c.name, c.parsed_arguments()) for c in completion.tool_calls] == [
        ("toolu_1", "get_weather", {"location": "Paris"})
    ]


def test_stream_two_tool_uses_interleaved_with_text() -> None:
    items = _decode(TWO_TOOLS_STREAM)
    starts = [i for i in items if isinstance(i, ToolCallDelta) and i.id]
    assert [(i.index, i.id, i.name) for i in starts] == [
        (0, "toolu_a", "weather"),
        (1, "toolu_b", "time"),
    ]
    completion = _fold(items).completion()
    assert completion.text == "Let me check. And"
    assert [(c.name, c.parsed_arguments()) for c in completion.tool_calls] == [
        ("weather", {"city": "Paris"}),
        ("time", {"tz": "CET"}),
    ]


def test_stream_empty_tool_input_becomes_empty_object() -> None:
    stream = b"".join(
        [
            _start(),
            _tool_start(0, "toolu_e", "noargs"),
            PING,
            _json(0, ""),
            _block_stop(0),
            _message_delta("tool_use"),
            STOP,
        ]
    )
    completion = _fold(_decode(stream)).completion()
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("toolu_e", "noargs", "{}")
    ]


def test_stream_max_tokens_mid_tool_input_keeps_partial_arguments() -> None:
    stream = b"".join(
        [
            _start(),
            _tool_start(0, "toolu_m", "make_file"),
            _json(0, '{"filename": "taxes.txt'),
            _json(0, '", "lines": ["# TAX'),
            # No content_block_stop: the output limit cut the block.
            _message_delta("max_tokens", output_tokens=124),
            STOP,
        ]
    )
    items = _decode(stream)
    assert isinstance(items[-1], Finished)
    assert items[-1].finish_reason == "length"
    completion = _fold(items).completion()
    assert completion.tool_calls[0].arguments == '{"filename": "taxes.txt", "lines": ["# TAX'
    with pytest.raises(msgspec.DecodeError):
        completion.tool_calls[0].parsed_arguments()


def test_stream_refusal() -> None:
    refusal = _event(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": "refusal",
                "stop_sequence": None,
                "stop_details": {"type": "refusal", "category": "cyber", "explanation": "no"},
            },
            "usage": {"output_tokens": 0},
        }
    )
    stream = (
        _start() + _block_start(0, {"type": "text", "text": ""}) + _block_stop(0) + refusal + STOP
    )
    items = _decode(stream)
    assert isinstance(items[-1], Finished)
    assert items[-1].finish_reason == "refusal"
    assert items[-1].usage == Usage(input_tokens=10, output_tokens=0)


def test_stream_error_event_after_content_carries_partial_usage() -> None:
    error = (
        b"event: error\n"
        b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
        b"\n\n"
    )
    stream = (
        _start(input_tokens=12, output_tokens=1)
        + _block_start(0, {"type": "text", "text": ""})
        + _text(0, "Hi")
        + error
        + _text(0, "ignored")
        + STOP
    )
    items = _decode(stream)
    assert items[:2] == [
        UsageUpdate(usage=Usage(input_tokens=12, output_tokens=1)),
        TextDelta(text="Hi"),
    ]
    failure = items[-1]
    assert isinstance(failure, Failure)
    assert len(items) == 3
    assert failure.kind is ErrorKind.OVERLOADED
    assert failure.status == 200
    assert failure.code == "overloaded_error"
    assert failure.retryable
    assert failure.usage == Usage(input_tokens=12, output_tokens=1)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"type": "api_error", "message": "Internal server error"}, ErrorKind.SERVER_ERROR),
        ({"type": "rate_limit_error", "message": "slow down"}, ErrorKind.RATE_LIMITED),
        (
            {"type": "invalid_request_error", "message": "prompt is too long"},
            ErrorKind.CONTEXT_LENGTH,
        ),
        ("plain text", ErrorKind.SERVER_ERROR),
        (None, ErrorKind.SERVER_ERROR),
    ],
)
def test_stream_error_event_kinds(error: Any, kind: ErrorKind) -> None:
    items = _decode(_event({"type": "error", "error": error}))
    assert len(items) == 1
    assert isinstance(items[0], Failure)
    assert items[0].kind is kind
    assert items[0].usage is None


def test_stream_usage_merging_with_input_tokens_in_message_delta() -> None:
    stream = (
        _start(
            input_tokens=10,
            cache_read_input_tokens=3,
            cache_creation_input_tokens=4,
            output_tokens=2,
        )
        + _message_delta(
            "end_turn",
            input_tokens=11,
            cache_read_input_tokens=5,
            cache_creation_input_tokens=6,
            output_tokens=40,
        )
        + STOP
    )
    items = _decode(stream)
    # Our input_tokens counts every input token: Anthropic's input + cache reads + writes.
    final = Usage(
        input_tokens=11 + 5 + 6, output_tokens=40, cache_read_tokens=5, cache_write_tokens=6
    )
    assert items == [
        UsageUpdate(
            usage=Usage(
                input_tokens=10 + 3 + 4, output_tokens=2, cache_read_tokens=3, cache_write_tokens=4
            )
        ),
        UsageUpdate(usage=final),
        Finished(finish_reason="stop", usage=final, model="claude-s", response_id="msg_s"),
    ]


def test_stream_usage_merging_without_input_tokens_in_message_delta() -> None:
    stream = (
        _start(input_tokens=10, cache_read_input_tokens=3, output_tokens=2)
        + _message_delta("end_turn", output_tokens=20)
        + _message_delta("end_turn", output_tokens=25)  # cumulative: the last one wins
        + STOP
    )
    items = _decode(stream)
    assert isinstance(items[-1], Finished)
    assert items[-1].usage == Usage(input_tokens=10 + 3, output_tokens=25, cache_read_tokens=3)


def test_stream_without_message_start_still_finishes() -> None:
    items = _decode(_message_delta("end_turn", output_tokens=3) + STOP)
    assert items[-1] == Finished(finish_reason="stop", usage=Usage(output_tokens=3))


def test_stream_missing_message_stop_is_interrupted() -> None:
    stream = (
        _start(input_tokens=7, output_tokens=1)
        + _block_start(0, {"type": "text", "text": ""})
        + _text(0, "par")
    )
    decoder = DIALECT.stream_decoder()
    assert decoder.feed(stream) == [
        UsageUpdate(usage=Usage(input_tokens=7, output_tokens=1)),
        TextDelta(text="par"),
    ]
    done_before = decoder.done
    rest = decoder.close()
    assert len(rest) == 1
    failure = rest[0]
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.STREAM_INTERRUPTED
    assert failure.usage == Usage(input_tokens=7, output_tokens=1)
    assert (done_before, decoder.done) == (False, True)
    assert decoder.close() == []


def test_stop_reason_and_a_clean_end_without_message_stop_is_complete() -> None:
    # Issue 10 item 3: message_delta (stop reason, final usage) then the body ends cleanly.
    assert _decode(TEXT_STREAM[: -len(STOP)]) == _decode(TEXT_STREAM)
    items = _decode(_start() + _message_delta("max_tokens", output_tokens=9))
    assert items[-1] == Finished(
        finish_reason="length",
        usage=Usage(input_tokens=10, output_tokens=9),
        model="claude-s",
        response_id="msg_s",
    )


def test_stop_reason_then_a_cut_message_stop_is_complete() -> None:
    for cut in (4, 20, len(STOP) - 4):
        assert _decode(TEXT_STREAM[: -len(STOP)] + STOP[:cut]) == _decode(TEXT_STREAM), cut


def test_body_cut_inside_its_last_event_before_a_stop_reason_is_interrupted() -> None:
    delta = _message_delta("end_turn")
    items = _decode(_start() + _text(0, "par") + delta[: len(delta) - 12])
    failure = items[-1]
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.STREAM_INTERRUPTED
    assert "inside an event" in failure.message
    assert failure.usage == Usage(input_tokens=10, output_tokens=1)


def test_empty_body_is_interrupted_without_usage() -> None:
    items = _decode(b"")
    assert len(items) == 1
    assert isinstance(items[0], Failure)
    assert items[0].kind is ErrorKind.STREAM_INTERRUPTED
    assert items[0].usage is None


def test_message_stop_without_final_blank_line_is_flushed_at_close() -> None:
    decoder = DIALECT.stream_decoder()
    body = TEXT_STREAM.rstrip(b"\n")
    items = decoder.feed(body)
    assert not any(isinstance(i, Finished) for i in items)
    rest = decoder.close()
    assert isinstance(rest[-1], Finished)
    assert rest[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    "bad",
    [
        b"event: content_block_delta\ndata: {not json\n\n",
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":"zero"}\n\n',
        b'event: message_start\ndata: {"type":"message_start","message":[]}\n\n',
        b"event: content_block_delta\ndata: "
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\xff"}}\n\n',
        b"event: content_block_delta\ndata: " + b"[" * 3000 + b"\n\n",
        b"data: [1, 2]\n\n",
    ],
)
def test_malformed_chunk_is_a_protocol_failure(bad: bytes) -> None:
    decoder = DIALECT.stream_decoder()
    head = _start(input_tokens=4, output_tokens=1)
    items = decoder.feed(head + bad + _text(0, "never"))
    assert decoder.done
    assert items[0] == UsageUpdate(usage=Usage(input_tokens=4, output_tokens=1))
    failure = items[-1]
    assert isinstance(failure, Failure)
    assert len(items) == 2
    assert failure.kind is ErrorKind.PROTOCOL
    assert failure.usage == Usage(input_tokens=4, output_tokens=1)
    assert decoder.feed(STOP) == []
    assert decoder.close() == []


def test_framing_error_is_a_protocol_failure() -> None:
    decoder = AnthropicStreamDecoder(max_buffer=64)
    items = decoder.feed(b"data: " + b"x" * 100)
    assert len(items) == 1
    assert isinstance(items[0], Failure)
    assert items[0].kind is ErrorKind.PROTOCOL
    assert decoder.done


def test_framing_error_keeps_the_events_before_it_and_close_never_raises() -> None:
    # The items before a too-long line do not depend on how the body was split.
    text = _text(0, "a")
    too_long = b"data: " + b"x" * 200
    one = AnthropicStreamDecoder(max_buffer=150)
    split = AnthropicStreamDecoder(max_buffer=150)
    items = one.feed(text + too_long)
    assert items == split.feed(text) + split.feed(too_long)
    assert items[0] == TextDelta(text="a")
    assert isinstance(items[1], Failure)
    assert items[1].kind is ErrorKind.PROTOCOL
    # An unterminated last data line that makes its event too long is found by close(): a
    # protocol failure, never an exception.
    decoder = AnthropicStreamDecoder(max_buffer=100)
    assert decoder.feed(b"data: " + b"a" * 60 + b"\n" + b"data: " + b"b" * 60) == []
    (failure,) = decoder.close()
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.PROTOCOL
    assert decoder.done


def test_unknown_events_and_keepalives_are_ignored() -> None:
    stream = b"".join(
        [
            b": comment\n\n",
            _start(),
            b"event: ping\ndata:\n\n",
            _event({"type": "brand_new_event", "index": "weird", "delta": 5}),
            b'event: future\ndata: {"delta": "shape we do not know"}\n\n',
            _block_start(
                0,
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
            ),
            _json(0, '{"query": "x"}'),  # a server tool's input: not our tool call
            _block_stop(0),
            _block_start(1, {"type": "text", "text": "Found."}),
            _delta(1, {"type": "unknown_delta", "text": "?"}),
            _message_delta("end_turn"),
            STOP,
        ]
    )
    items = _decode(stream)
    assert [i for i in items if not isinstance(i, UsageUpdate)] == [
        TextDelta(text="Found."),
        Finished(
            finish_reason="stop",
            usage=Usage(input_tokens=10, output_tokens=5),
            model="claude-s",
            response_id="msg_s",
        ),
    ]


def test_event_name_is_the_fallback_type() -> None:
    stream = (
        b"event: content_block_delta\n"
        b'data: {"index":0,"delta":{"type":"text_delta","text":"a"}}\n\n'
        b"event: message_stop\ndata: {}\n\n"
    )
    items = _decode(stream)
    assert items[0] == TextDelta(text="a")
    assert isinstance(items[1], Finished)


def test_data_type_wins_over_the_event_name() -> None:
    stream = (
        b"event: ping\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"b"}}\n\n'
    )
    assert _decode(stream + STOP)[0] == TextDelta(text="b")


# --------------------------------------------------------------------------- error classification


def _err(type_: str, message: str) -> bytes:
    """An Anthropic error body."""
    return msgspec.json.encode(
        {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}
    )


PREFILL = "This model does not support assistant message prefill. The conversation must end"
K = ErrorKind


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry_after"),
    [
        (529, {}, _err("overloaded_error", "Overloaded"), K.OVERLOADED, None),
        (529, {}, b"", K.OVERLOADED, None),
        (429, {"retry-after": "17"}, _err("rate_limit_error", "slow down"), K.RATE_LIMITED, 17.0),
        (429, {"retry-after-ms": "1500"}, b"rate limited", K.RATE_LIMITED, 1.5),
        (
            400,
            {},
            _err("invalid_request_error", "prompt is too long: 210000 tokens"),
            K.CONTEXT_LENGTH,
            None,
        ),
        (400, {}, _err("invalid_request_error", PREFILL), K.UNSUPPORTED, None),
        (400, {}, _err("invalid_request_error", "max_tokens: Field required"), K.BAD_REQUEST, None),
        (401, {}, _err("authentication_error", "invalid x-api-key"), K.AUTH, None),
        (401, {}, b"Unauthorized", K.AUTH, None),
        (402, {}, _err("billing_error", "credit balance too low"), K.PERMISSION, None),
        (403, {}, _err("permission_error", "no"), K.PERMISSION, None),
        (404, {}, _err("not_found_error", "model: claude-9"), K.NOT_FOUND, None),
        (
            413,
            {},
            _err("request_too_large", "Request exceeds the maximum size"),
            K.CONTEXT_LENGTH,
            None,
        ),
        (413, {}, b"<html>413</html>", K.CONTEXT_LENGTH, None),
        (500, {}, _err("api_error", "Internal server error"), K.SERVER_ERROR, None),
        (502, {}, b"<html>Bad gateway</html>", K.SERVER_ERROR, None),
        (504, {}, _err("timeout_error", "timeout"), K.TIMEOUT, None),
        (503, {}, b"[" * 5000, K.OVERLOADED, None),
        (500, {}, b'{"error": "plain"}', K.SERVER_ERROR, None),
    ],
)
def test_classify_error(
    status: int, headers: dict[str, str], body: bytes, kind: ErrorKind, retry_after: float | None
) -> None:
    failure = DIALECT.classify_error(status, headers, body)
    assert failure.kind is kind
    assert failure.status == status
    assert failure.retry_after == retry_after


def test_classify_error_keeps_type_and_message() -> None:
    failure = DIALECT.classify_error(404, {}, _err("not_found_error", "model: claude-9"))
    assert failure.code == "not_found_error"
    assert failure.message == "HTTP 404: model: claude-9"


def test_classify_error_reads_http_date_retry_after_with_a_clock() -> None:
    headers = {"retry-after": "Thu, 01 Jan 2026 00:00:30 GMT"}
    now = 1767225600.0  # 2026-01-01T00:00:00Z
    failure = DIALECT.classify_error(429, headers, b"", now=now)
    assert failure.retry_after == 30.0
    assert DIALECT.classify_error(429, headers, b"").retry_after is None


# --------------------------------------------------------------------------- Hypothesis

SAMPLE_STREAMS = [TEXT_STREAM, THINKING_STREAM, TWO_TOOLS_STREAM]


def _decode_in_pieces(stream: bytes, cuts: list[int]) -> list[DecodedItem]:
    decoder = DIALECT.stream_decoder()
    items: list[DecodedItem] = []
    last = 0
    for cut in sorted(set(cuts)):
        items += decoder.feed(stream[last:cut])
        last = cut
    items += decoder.feed(stream[last:])
    items += decoder.close()
    return items


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_split_decodes_the_same(data: st.DataObject) -> None:
    stream = data.draw(st.sampled_from(SAMPLE_STREAMS))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40))
    assert _decode_in_pieces(stream, cuts) == _decode(stream)


def _check_contract(items: list[DecodedItem]) -> None:
    """Exactly one terminal item, and it is the last."""
    terminal = [i for i in items if isinstance(i, Finished | Failure)]
    assert len(terminal) == 1
    assert items[-1] is terminal[0]


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_never_raise(chunks: list[bytes]) -> None:
    decoder = DIALECT.stream_decoder()
    items: list[DecodedItem] = []
    for chunk in chunks:
        items += decoder.feed(chunk)
    items += decoder.close()
    assert decoder.done
    _check_contract(items)
    assert isinstance(DIALECT.parse_chat(b"".join(chunks)), Completion | Failure)
    assert isinstance(DIALECT.classify_error(500, {}, b"".join(chunks)), Failure)


_MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=10_000),
    st.binary(min_size=1, max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(
    stream=st.sampled_from(SAMPLE_STREAMS),
    mutations=st.lists(_MUTATION, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_mutated_streams_never_raise(
    stream: bytes, mutations: list[tuple[str, int, bytes]], cuts: list[int]
) -> None:
    buf = bytearray(stream)
    for op, pos, payload in mutations:
        at = pos % (len(buf) + 1)
        if op == "flip" and at < len(buf):
            buf[at] ^= payload[0] or 1
        elif op == "insert":
            buf[at:at] = payload
        elif op == "delete":
            del buf[at : at + len(payload)]
        else:
            del buf[at:]
    mutated = bytes(buf)
    items = _decode_in_pieces(mutated, [c % (len(mutated) + 1) for c in cuts])
    _check_contract(items)
    assert items == _decode(mutated)


# --------------------------------------------------------------------------- recordings


def _headers(path: Path) -> dict[str, str]:
    """A recorded header map (either ``{name: value}`` or ``{name: [values]}``) with
    lower-case names, as httpx would present them."""
    raw = json.loads(path.read_text())["headers"]
    return {k.lower(): (v[0] if isinstance(v, list) else v) for k, v in raw.items()}


# file -> (text, [(tool name, parsed args)], finish, (input, output, cache read, cache write))
STREAM_RECORDINGS: dict[str, tuple[str, list[tuple[str, Any]], str, tuple[int, int, int, int]]] = {
    "messages_stream_basic_sdk.sse": ("Hello there!", [], "stop", (11, 6, 0, 0)),
    "messages_stream_text.sse": ("Hello", [], "stop", (10, 4, 0, 0)),
    "messages_stream_thinking.sse": (
        "1. **Pouch** - references their iconic bill pouch\n"
        '2. **Pelé** - playful take on "pelican"',
        [],
        "stop",
        (46, 133, 0, 0),
    ),
    "messages_stream_tool_use.sse": (
        "I'll check the current weather in Paris for you.",
        [("get_weather", {"location": "Paris"})],
        "tool_calls",
        (377, 65, 0, 0),
    ),
    "messages_stream_tool_use_empty_input.sse": (
        "",
        [("pelican_name_generator", {})],
        "tool_calls",
        (543, 40, 0, 0),
    ),
    "messages_stream_two_tool_uses.sse": (
        "",
        [("pelican_name_generator", {}), ("pelican_name_generator", {})],
        "tool_calls",
        (542, 62, 0, 0),
    ),
    "messages_stream_refusal_sdk.sse": ("", [], "refusal", (20, 0, 0, 0)),
}


def test_recorded_streams(recordings: Path) -> None:
    folder = recordings / "anthropic"
    seen = {p.name for p in folder.glob("*.sse")}
    assert (
        set(STREAM_RECORDINGS)
        | {
            "messages_stream_max_tokens_mid_tool_input.sse",
            "stream_error_overloaded.sse",
        }
        == seen
    )
    for name, (text, calls, finish, usage) in STREAM_RECORDINGS.items():
        body = (folder / name).read_bytes()
        items = _decode(body)
        # Byte by byte gives the same items as the whole body.
        assert _decode_in_pieces(body, list(range(len(body)))) == items, name
        acc = _fold(items)
        assert acc.finished, name
        completion = acc.completion()
        assert completion.text == text, name
        assert [(c.name, c.parsed_arguments()) for c in completion.tool_calls] == calls, name
        assert completion.finish_reason == finish, name
        assert completion.usage == Usage(
            input_tokens=usage[0],
            output_tokens=usage[1],
            cache_read_tokens=usage[2],
            cache_write_tokens=usage[3],
        ), name
        assert completion.response_id.startswith("msg_"), name


def test_recorded_thinking_stream_reasoning(recordings: Path) -> None:
    completion = _fold(
        _decode((recordings / "anthropic/messages_stream_thinking.sse").read_bytes())
    ).completion()
    assert completion.reasoning.startswith("The user wants two names for a pet pelican")
    assert completion.reasoning.endswith("Let me give two brief, catchy names:")
    assert completion.model == "claude-haiku-4-5-20251001"


def test_recorded_max_tokens_mid_tool_input(recordings: Path) -> None:
    body = (recordings / "anthropic/messages_stream_max_tokens_mid_tool_input.sse").read_bytes()
    acc = _fold(_decode(body))
    completion = acc.completion()
    assert acc.finished
    assert completion.finish_reason == "length"
    assert completion.usage == Usage(input_tokens=450, output_tokens=124)
    assert completion.text.startswith("I'll create a comprehensive tax guide")
    [call] = completion.tool_calls
    assert (call.id, call.name) == ("toolu_01EKqbqmZrGRXy18eN7m9kvY", "make_file")
    assert call.arguments.startswith('{"filename": "taxes.txt", "lines_of_text": [')
    assert call.arguments.endswith('\n"Filing taxes')
    with pytest.raises(msgspec.DecodeError):
        call.parsed_arguments()


def test_recorded_error_event(recordings: Path) -> None:
    items = _decode((recordings / "anthropic/stream_error_overloaded.sse").read_bytes())
    assert len(items) == 1
    failure = items[0]
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.OVERLOADED
    assert failure.status == 200
    assert failure.code == "overloaded_error"
    assert failure.message == "error event: Overloaded"


def test_recorded_messages(recordings: Path) -> None:
    folder = recordings / "anthropic"
    assert {p.name for p in folder.glob("messages_*.json")} == {
        "messages_text.json",
        "messages_tool_use.json",
    }
    text = DIALECT.parse_chat((folder / "messages_text.json").read_bytes())
    assert isinstance(text, Completion)
    assert text.text.startswith("I apologize, but I'm getting an error")
    assert text.tool_calls == []
    assert text.finish_reason == "stop"
    assert text.usage == Usage(input_tokens=760, output_tokens=63)
    assert text.response_id == "msg_01GJyhkguJrrqMbZNzEybYFL"
    tool = DIALECT.parse_chat((folder / "messages_tool_use.json").read_bytes())
    assert isinstance(tool, Completion)
    assert tool.text == ""
    assert [(c.id, c.name, c.parsed_arguments()) for c in tool.tool_calls] == [
        (
            "toolu_01A9HHF5Ezy3oBrKmSgfASm9",
            "get_weather",
            {"location": "San Francisco, CA", "units": "f"},
        )
    ]
    assert tool.finish_reason == "tool_calls"
    assert tool.usage == Usage(input_tokens=656, output_tokens=74)
    assert tool.model == "claude-haiku-4-5-20251001"


def test_recorded_errors(recordings: Path) -> None:
    folder = recordings / "anthropic"
    assert {p.name for p in folder.glob("error_*.json")} == {
        "error_400_invalid_request.json",
        "error_429_rate_limit.json",
    }
    body_429 = (folder / "error_429_rate_limit.json").read_bytes()
    headers_429 = _headers(folder / "headers_error_429.json")
    failure = DIALECT.classify_error(429, headers_429, body_429)
    assert failure.kind is ErrorKind.RATE_LIMITED
    assert failure.code == "rate_limit_error"
    assert failure.retryable
    assert failure.retry_after is None  # that recording kept no retry-after header
    assert failure.message.startswith("HTTP 429: This request would exceed your organization's")
    # The same body with the retry-after header Anthropic also sends (24 s in the recording).
    with_retry = DIALECT.classify_error(
        429, _headers(folder / "headers_200_with_retry_after.json"), body_429
    )
    assert with_retry.retry_after == 24.0

    failure = DIALECT.classify_error(
        400, {}, (folder / "error_400_invalid_request.json").read_bytes()
    )
    assert failure.kind is ErrorKind.BAD_REQUEST
    assert failure.code == "invalid_request_error"
    assert not failure.retryable
    assert "tool_result" in failure.message
