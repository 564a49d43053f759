"""The Gemini dialect: request building, response and stream decoding, error classification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._accumulate import StreamAccumulator
from protocol._config import ConnectionConfig, Secret
from protocol._dialect import Dialect, dialect_for
from protocol._errors import ErrorKind
from protocol._gemini import DIALECT
from protocol._messages import (
    ChatRequest,
    Completion,
    DecodedItem,
    Embeddings,
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
    ToolCall,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
    UsageUpdate,
)

KEY = "AIza-secret-test-key-123"
CONN = ConnectionConfig(name="g", provider="gemini", api_key=Secret(KEY))
BASE = "https://generativelanguage.googleapis.com/v1beta"


def body_of(request: ChatRequest, conn: ConnectionConfig = CONN, stream: bool = False) -> Any:
    return msgspec.json.decode(
        DIALECT.chat_request(request, conn, model="gemini-2.0-flash", stream=stream).body
    )


def decode(data: bytes, cuts: list[int] | None = None) -> list[DecodedItem]:
    """Feed *data* to a fresh decoder, split at *cuts*, then close it."""
    decoder = DIALECT.stream_decoder()
    items: list[DecodedItem] = []
    start = 0
    for cut in sorted(cuts or []):
        items += decoder.feed(data[start:cut])
        start = cut
    items += decoder.feed(data[start:])
    items += decoder.close()
    assert decoder.done
    return items


def fold(items: list[DecodedItem]) -> StreamAccumulator:
    acc = StreamAccumulator()
    for item in items:
        acc.add(item)
    return acc


def sse(*chunks: Any) -> bytes:
    """An alt=sse body in Gemini's style (CRLF CRLF between events)."""
    return b"".join(b"data: " + msgspec.json.encode(c) + b"\r\n\r\n" for c in chunks)


def chunk(
    parts: list[dict[str, Any]] | None = None,
    *,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts or [], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": "gemini-x",
        "responseId": "resp-1",
    }
    if usage is not None:
        out["usageMetadata"] = usage
    return out


# --------------------------------------------------------------------------- contract


def test_dialect_singleton_satisfies_the_protocol() -> None:
    dialect: Dialect = DIALECT
    assert dialect_for("gemini") is DIALECT
    assert dialect.name == "gemini"
    assert dialect.supports_embeddings is True


# --------------------------------------------------------------------------- requests


def test_chat_request_urls_headers_and_key_hidden() -> None:
    req = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    plain = DIALECT.chat_request(req, CONN, model="gemini-2.0-flash", stream=False)
    assert plain.method == "POST"
    assert plain.url == f"{BASE}/models/gemini-2.0-flash:generateContent"
    assert plain.headers["x-goog-api-key"] == KEY
    assert plain.headers["content-type"] == "application/json"
    assert KEY not in repr(plain)
    assert KEY not in str(plain)
    streamed = DIALECT.chat_request(req, CONN, model="gemini-2.0-flash", stream=True)
    assert streamed.url == f"{BASE}/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    assert streamed.headers["accept"] == "text/event-stream"
    assert KEY not in repr(streamed)


def test_base_url_override_trailing_slash_headers_last_and_no_key() -> None:
    conn = ConnectionConfig(
        provider="gemini",
        base_url="http://127.0.0.1:9/v1beta/",
        headers={"x-extra": "1", "content-type": "application/json; charset=utf-8"},
    )
    req = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    http = DIALECT.chat_request(req, conn, model="tunedModels/mine", stream=False)
    assert http.url == "http://127.0.0.1:9/v1beta/tunedModels/mine:generateContent"
    assert "x-goog-api-key" not in http.headers
    assert http.headers["x-extra"] == "1"
    assert http.headers["content-type"] == "application/json; charset=utf-8"


def test_chat_body_every_field() -> None:
    req = ChatRequest(
        model="m",
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="system", content=[TextPart(text="Use tools.")]),
            Message(
                role="user",
                content=[
                    TextPart(text="What is this?"),
                    ImagePart(data="AAAA", media_type="image/jpeg"),
                    ImagePart(url="data:image/webp;base64,BBBB"),
                    ImagePart(url="gs://bucket/cat.png"),
                ],
            ),
            Message(
                role="assistant",
                content=[
                    TextPart(text="Checking."),
                    ToolUsePart(id="t1", name="weather", arguments={"city": "Paris"}),
                    ToolUsePart(id="t2", name="time", arguments={}),
                ],
            ),
            Message(role="tool", content=[ToolResultPart(tool_use_id="t1", content='{"c":30}')]),
            Message(
                role="tool",
                content=[ToolResultPart(tool_use_id="t2", content="noon", name="time")],
            ),
            Message(role="user", content="Thanks"),
        ],
        max_tokens=100,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        tools=[
            Tool(
                name="weather",
                description="Weather by city",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}},
            ),
            Tool(name="time"),
        ],
        tool_choice="auto",
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
        extra={"safetySettings": [{"category": "X", "threshold": "BLOCK_NONE"}]},
    )
    assert body_of(req) == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is this?"},
                    {"inlineData": {"mimeType": "image/jpeg", "data": "AAAA"}},
                    {"inlineData": {"mimeType": "image/webp", "data": "BBBB"}},
                    {"fileData": {"fileUri": "gs://bucket/cat.png"}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "time", "args": {}}},
                ],
            },
            {
                # Both tool results and the following user text share one user turn.
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "weather", "response": {"c": 30}}},
                    {"functionResponse": {"name": "time", "response": {"result": "noon"}}},
                    {"text": "Thanks"},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]},
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.9,
            "maxOutputTokens": 100,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "weather",
                        "description": "Weather by city",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                    {"name": "time"},
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        "safetySettings": [{"category": "X", "threshold": "BLOCK_NONE"}],
    }


def test_minimal_body_omits_unset_fields_and_is_compact() -> None:
    req = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    http = DIALECT.chat_request(req, CONN, model="x", stream=False)
    assert http.body == b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ("weather", {"mode": "ANY", "allowedFunctionNames": ["weather"]}),
    ],
)
def test_tool_choice(choice: str, config: dict[str, Any]) -> None:
    req = ChatRequest(
        model="m",
        messages=[Message(role="user", content="hi")],
        tools=[Tool(name="weather")],
        tool_choice=choice,
    )
    assert body_of(req)["toolConfig"] == {"functionCallingConfig": config}


def test_response_format_json_object_and_text() -> None:
    msgs = [Message(role="user", content="hi")]
    as_json = body_of(
        ChatRequest(model="m", messages=msgs, response_format=ResponseFormat(type="json_object"))
    )
    assert as_json["generationConfig"] == {"responseMimeType": "application/json"}
    as_text = body_of(
        ChatRequest(model="m", messages=msgs, response_format=ResponseFormat(type="text"))
    )
    assert "generationConfig" not in as_text


def test_tool_result_error_and_unknown_name_and_extra_none_deletes() -> None:
    req = ChatRequest(
        model="m",
        messages=[
            Message(role="user", content="hi"),
            Message(
                role="tool",
                content=[ToolResultPart(tool_use_id="zz", content="boom", is_error=True)],
            ),
        ],
        extra={"contents": None, "cachedContent": "cachedContents/1"},
    )
    assert body_of(req) == {"cachedContent": "cachedContents/1"}
    req = msgspec.structs.replace(req, extra={})
    part = body_of(req)["contents"][0]["parts"][1]
    # No name given and no earlier call with that id: the id is the best we have.
    assert part == {"functionResponse": {"name": "zz", "response": {"error": "boom"}}}


def test_non_object_json_tool_result_is_wrapped() -> None:
    req = ChatRequest(
        model="m",
        messages=[
            Message(
                role="tool", content=[ToolResultPart(tool_use_id="a", content="[1,2]", name="f")]
            )
        ],
    )
    part = body_of(req)["contents"][0]["parts"][0]
    assert part == {"functionResponse": {"name": "f", "response": {"result": "[1,2]"}}}


# --------------------------------------------------------------------------- embeddings


def test_embed_request_single_and_batch() -> None:
    one = DIALECT.embed_request(
        EmbedRequest(model="e", inputs=["a"], dimensions=8), CONN, model="text-embedding-004"
    )
    assert one.url == f"{BASE}/models/text-embedding-004:embedContent"
    assert msgspec.json.decode(one.body) == {
        "content": {"parts": [{"text": "a"}]},
        "outputDimensionality": 8,
    }
    assert one.headers["x-goog-api-key"] == KEY
    assert KEY not in repr(one)
    many = DIALECT.embed_request(EmbedRequest(model="e", inputs=["a", "b"]), CONN, model="emb")
    assert many.url == f"{BASE}/models/emb:batchEmbedContents"
    assert msgspec.json.decode(many.body) == {
        "requests": [
            {"model": "models/emb", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/emb", "content": {"parts": [{"text": "b"}]}},
        ]
    }


def test_parse_embed() -> None:
    assert DIALECT.parse_embed(b'{"embedding":{"values":[0.5,1]}}') == Embeddings(
        vectors=[[0.5, 1.0]]
    )
    batch = DIALECT.parse_embed(b'{"embeddings":[{"values":[1]},{"values":[2,3]}]}')
    assert batch == Embeddings(vectors=[[1.0], [2.0, 3.0]])
    for junk in (b"", b"nope", b"{}", b'{"embedding":{"values":"x"}}', b"[" * 5000):
        failure = DIALECT.parse_embed(junk)
        assert isinstance(failure, Failure)
        assert failure.kind is ErrorKind.PROTOCOL


# --------------------------------------------------------------------------- non-stream


def test_parse_chat_text_reasoning_tool_call_and_usage() -> None:
    body = msgspec.json.encode(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "thinking...", "thought": True},
                            {"text": "Hello "},
                            {"text": "world"},
                            {"functionCall": {"name": "f", "args": {"x": 1}, "id": "fc-9"}},
                            {"functionCall": {"name": "g"}},
                        ],
                    },
                    "finishReason": "STOP",
                    "safetyRatings": [],
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 10,
                "candidatesTokenCount": 5,
                "thoughtsTokenCount": 7,
                "cachedContentTokenCount": 4,
                "totalTokenCount": 22,
            },
            "modelVersion": "gemini-2.5-pro",
            "responseId": "r1",
        }
    )
    assert DIALECT.parse_chat(body) == Completion(
        text="Hello world",
        reasoning="thinking...",
        tool_calls=[
            ToolCall(id="fc-9", name="f", arguments='{"x":1}'),
            ToolCall(id="call_1", name="g", arguments="{}"),
        ],
        finish_reason="tool_calls",
        usage=Usage(input_tokens=10, output_tokens=12, reasoning_tokens=7, cache_read_tokens=4),
        model="gemini-2.5-pro",
        response_id="r1",
    )


def test_parse_chat_blocked_prompt_is_content_filter() -> None:
    body = b'{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3}}'
    completion = DIALECT.parse_chat(body)
    assert isinstance(completion, Completion)
    assert completion.finish_reason == "content_filter"
    assert completion.text == ""
    assert completion.usage == Usage(input_tokens=3)


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b"{}", b'{"candidates":"x"}', b"{" * 10000, b"\xff\xfe"]
)
def test_parse_chat_junk_is_protocol(body: bytes) -> None:
    failure = DIALECT.parse_chat(body)
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.PROTOCOL


def test_parse_chat_error_object_in_200_is_classified() -> None:
    failure = DIALECT.parse_chat(b'{"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}')
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.OVERLOADED
    assert failure.status == 200


# --------------------------------------------------------------------------- streaming


def test_stream_text_reasoning_tool_calls_and_usage_last_wins() -> None:
    data = sse(
        chunk(
            [{"text": "hmm", "thought": True}],
            usage={"promptTokenCount": 15, "totalTokenCount": 15},
        ),
        chunk([{"text": "Hi"}], usage={"promptTokenCount": 15, "totalTokenCount": 15}),
        chunk(
            [{"functionCall": {"name": "a", "args": {"k": [1, 2]}}}, {"text": " there"}],
            usage={"promptTokenCount": 15, "candidatesTokenCount": 3, "thoughtsTokenCount": 2},
        ),
        chunk(
            [{"text": ""}, {"functionCall": {"name": "b", "args": {}, "id": "idb"}}],
            finish="STOP",
            usage={
                "promptTokenCount": 13,
                "candidatesTokenCount": 8,
                "thoughtsTokenCount": 4,
                "cachedContentTokenCount": 2,
            },
        ),
    )
    items = decode(data)
    final = Usage(input_tokens=13, output_tokens=12, reasoning_tokens=4, cache_read_tokens=2)
    assert items == [
        ReasoningDelta(text="hmm"),
        UsageUpdate(usage=Usage(input_tokens=15)),
        TextDelta(text="Hi"),
        ToolCallDelta(index=0, id="call_0", name="a", arguments='{"k":[1,2]}'),
        TextDelta(text=" there"),
        UsageUpdate(usage=Usage(input_tokens=15, output_tokens=5, reasoning_tokens=2)),
        ToolCallDelta(index=1, id="idb", name="b", arguments="{}"),
        UsageUpdate(usage=final),
        Finished(finish_reason="tool_calls", usage=final, model="gemini-x", response_id="resp-1"),
    ]
    acc = fold(items)
    assert acc.text == "Hi there"
    assert acc.completion().reasoning == "hmm"
    assert acc.tool_calls() == [
        ToolCall(id="call_0", name="a", arguments='{"k":[1,2]}'),
        ToolCall(id="idb", name="b", arguments="{}"),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "other"),
        ("LANGUAGE", "other"),
        ("SOMETHING_NEW", "other"),
    ],
)
def test_finish_reason_mapping(raw: str, expected: str) -> None:
    items = decode(sse(chunk([{"text": "x"}], finish=raw)))
    assert isinstance(items[-1], Finished)
    assert items[-1].finish_reason == expected
    completion = DIALECT.parse_chat(msgspec.json.encode(chunk([{"text": "x"}], finish=raw)))
    assert isinstance(completion, Completion)
    assert completion.finish_reason == expected


def test_stream_blocked_prompt_finishes_with_content_filter() -> None:
    items = decode(sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}))
    assert items == [Finished(finish_reason="content_filter")]


def test_stream_error_segment_is_classified_with_partial_usage() -> None:
    data = sse(
        chunk([{"text": "part"}], usage={"promptTokenCount": 4, "candidatesTokenCount": 1}),
    ) + (
        b'data: {"error": {"code": 429, "message": "Quota exceeded", '
        b'"status": "RESOURCE_EXHAUSTED"}}\r\n\r\n'
    )
    decoder = DIALECT.stream_decoder()
    items = decoder.feed(data)
    assert decoder.done
    failure = items[-1]
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.RATE_LIMITED
    assert failure.status == 200
    assert failure.code == "RESOURCE_EXHAUSTED"
    assert "Quota exceeded" in failure.message
    assert failure.usage == Usage(input_tokens=4, output_tokens=1)
    # Terminal: nothing more comes out.
    assert decoder.feed(sse(chunk([{"text": "late"}], finish="STOP"))) == []
    assert decoder.close() == []


def test_stream_without_finish_reason_is_interrupted() -> None:
    items = decode(sse(chunk([{"text": "cut"}], usage={"promptTokenCount": 2})))
    failure = items[-1]
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.STREAM_INTERRUPTED
    assert failure.usage == Usage(input_tokens=2)
    assert items[0] == TextDelta(text="cut")
    empty = decode(b"")
    assert len(empty) == 1
    assert isinstance(empty[0], Failure)
    assert empty[0].kind is ErrorKind.STREAM_INTERRUPTED
    assert empty[0].usage is None


def test_final_event_without_blank_line_still_counts() -> None:
    data = sse(chunk([{"text": "a"}], finish="STOP")).rstrip(b"\r\n")
    items = decode(data)
    assert items == [TextDelta(text="a"), Finished(model="gemini-x", response_id="resp-1")]


def test_finish_reason_then_a_chunk_cut_by_the_end_of_the_body_is_complete() -> None:
    # Issue 10 item 3, Gemini's form: a chunk after the finishReason (usage only) cut by a
    # clean end of body loses nothing of the answer.
    head = sse(chunk([{"text": "a"}], finish="STOP", usage={"promptTokenCount": 2}))
    tail = sse({"usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1}})
    items = decode(head + tail[:30])
    assert items[0] == TextDelta(text="a")
    assert items[-1] == Finished(
        usage=Usage(input_tokens=2), model="gemini-x", response_id="resp-1"
    )


def test_a_chunk_cut_by_the_end_of_the_body_before_a_finish_reason_is_interrupted() -> None:
    whole = sse(chunk([{"text": "a"}])) + sse(chunk([{"text": "b"}], finish="STOP"))
    items = decode(whole[:-40])
    assert items[0] == TextDelta(text="a")
    failure = items[-1]
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.STREAM_INTERRUPTED


@pytest.mark.parametrize(
    "bad", [b"data: {not json\r\n\r\n", b"data: []\r\n\r\n", b'data: {"candidates": 5}\r\n\r\n']
)
def test_malformed_chunk_is_protocol_failure(bad: bytes) -> None:
    data = sse(chunk([{"text": "ok"}], usage={"promptTokenCount": 1})) + bad
    decoder = DIALECT.stream_decoder()
    items = decoder.feed(data)
    assert items[0] == TextDelta(text="ok")
    failure = items[-1]
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.PROTOCOL
    assert failure.usage == Usage(input_tokens=1)
    assert decoder.done
    assert decoder.close() == []


def test_framing_error_is_protocol_failure() -> None:
    decoder = DIALECT.stream_decoder()
    items = decoder.feed(b"data: " + b"x" * (5 * 1024 * 1024))
    assert len(items) == 1
    assert isinstance(items[0], Failure)
    assert items[0].kind is ErrorKind.PROTOCOL
    assert decoder.done


def test_framing_error_keeps_the_chunks_before_it_and_close_never_raises() -> None:
    from protocol._framing import DEFAULT_MAX_BUFFER

    # The items before a too-long line do not depend on how the body was split.
    first = sse(chunk([{"text": "a"}]))
    too_long = b"data: " + b"x" * (DEFAULT_MAX_BUFFER + 10)
    one, split = DIALECT.stream_decoder(), DIALECT.stream_decoder()
    items = one.feed(first + too_long)
    assert items == split.feed(first) + split.feed(too_long)
    assert items[0] == TextDelta(text="a")
    assert isinstance(items[-1], Failure)
    assert items[-1].kind is ErrorKind.PROTOCOL
    # An unterminated last data line that makes its event too long is found by close(): a
    # protocol failure, never an exception.
    decoder = DIALECT.stream_decoder()
    half = b"a" * (DEFAULT_MAX_BUFFER // 2 + 10)
    assert decoder.feed(b"data: " + half + b"\r\n" + b"data: " + half) == []
    (failure,) = decoder.close()
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.PROTOCOL
    assert decoder.done


# --------------------------------------------------------------------------- errors


def test_429_with_retry_info_gives_retry_after() -> None:
    body = msgspec.json.encode(
        {
            "error": {
                "code": 429,
                "message": "You exceeded your current quota.",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"},
                ],
            }
        }
    )
    failure = DIALECT.classify_error(429, {}, body)
    assert failure.kind is ErrorKind.RATE_LIMITED
    assert failure.retry_after == 27.0
    assert failure.status == 429
    assert failure.code == "RESOURCE_EXHAUSTED"
    assert failure.retryable
    # A header wins over the body's hint.
    assert DIALECT.classify_error(429, {"retry-after": "3"}, body).retry_after == 3.0


def test_503_unavailable_is_overloaded() -> None:
    body = b'{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}'
    failure = DIALECT.classify_error(503, {}, body)
    assert failure.kind is ErrorKind.OVERLOADED
    assert failure.retryable
    assert "The model is overloaded." in failure.message


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            402,
            b'{"error":{"code":402,"message":"credit","status":"RESOURCE_EXHAUSTED"}}',
            "permission",
        ),
        (
            400,
            b'{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT",'
            b'"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",'
            b'"reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}',
            "auth",
        ),
        (
            400,
            b'{"error":{"code":400,"message":"The input token count (1200000) exceeds the '
            b'maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}',
            "context_length",
        ),
        (403, b'{"error":{"code":403,"message":"no","status":"PERMISSION_DENIED"}}', "permission"),
        (500, b'{"error":{"code":500,"message":"oops","status":"INTERNAL"}}', "server_error"),
        (504, b'{"error":{"code":504,"status":"DEADLINE_EXCEEDED"}}', "timeout"),
        (
            400,
            b'[{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}]',
            "bad_request",
        ),
        (502, b"<html>Bad Gateway</html>", "server_error"),
        (429, b"", "rate_limited"),
        (404, b'{"error":"nope"}', "not_found"),
        (400, b"[" * 10000, "bad_request"),
    ],
)
def test_classify_error(status: int, body: bytes, kind: str) -> None:
    failure = DIALECT.classify_error(status, {}, body)
    assert failure.kind == ErrorKind(kind)
    assert failure.status == status


def test_api_key_invalid_reports_the_reason() -> None:
    body = (
        b'{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT",'
        b'"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",'
        b'"reason":"API_KEY_INVALID"}]}}'
    )
    failure = DIALECT.classify_error(400, {}, body)
    assert failure.code == "API_KEY_INVALID"
    assert not failure.retryable


# --------------------------------------------------------------------------- properties

SAMPLE = sse(
    chunk([{"text": "Hé"}], usage={"promptTokenCount": 15}),
    chunk([{"text": "llo", "thought": True}], usage={"promptTokenCount": 15}),
    chunk(
        [{"functionCall": {"name": "f", "args": {"a": "é\r\n"}}}],
        usage={"promptTokenCount": 15, "candidatesTokenCount": 2},
    ),
    chunk(
        [{"text": "!"}], finish="STOP", usage={"promptTokenCount": 13, "candidatesTokenCount": 3}
    ),
)
SAMPLE_ITEMS = decode(SAMPLE)


def test_sample_is_a_complete_stream() -> None:
    assert isinstance(SAMPLE_ITEMS[-1], Finished)
    assert SAMPLE_ITEMS[-1].finish_reason == "tool_calls"
    assert len(SAMPLE_ITEMS) == 8


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=12))
def test_any_split_yields_the_same_items(cuts: list[int]) -> None:
    assert decode(SAMPLE, cuts) == SAMPLE_ITEMS


def _never_raises(data: bytes, cuts: list[int]) -> None:
    items = decode(data, cuts)
    assert items
    assert isinstance(items[-1], Finished | Failure)
    assert all(not isinstance(i, Finished | Failure) for i in items[:-1])


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=6))
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    _never_raises(data, [c for c in cuts if c <= len(data)])
    assert isinstance(DIALECT.parse_chat(data), Completion | Failure)
    assert isinstance(DIALECT.parse_embed(data), Embeddings | Failure)
    assert isinstance(DIALECT.classify_error(500, {}, data), Failure)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_streams_never_raise(data: st.DataObject) -> None:
    mutated = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        pos = data.draw(st.integers(min_value=0, max_value=len(mutated) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            mutated[pos] = data.draw(st.integers(min_value=0, max_value=255))
        elif action == "delete":
            del mutated[pos]
        else:
            mutated.insert(pos, data.draw(st.sampled_from(b'{}[]":,\r\n \\0a')))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(mutated)), max_size=6))
    _never_raises(bytes(mutated), cuts)
    assert isinstance(DIALECT.parse_chat(bytes(mutated)), Completion | Failure)


# --------------------------------------------------------------------------- recordings

STREAMS = {
    # file: (text, tool calls, finish, usage, model, response_id)
    "stream.sse": (
        "The capital of France is Paris.\n",
        [],
        "stop",
        Usage(input_tokens=13, output_tokens=8),
        "gemini-2.0-flash-exp",
        "w1peaMz6INOvnvgPgYfPiQY",
    ),
    "stream_after_function_response.sse": (
        "The temperature in Paris is 30°C.\n",
        [],
        "stop",
        Usage(input_tokens=79, output_tokens=12),
        "gemini-2.0-flash",
        "11peaI_ZJLq3nvgP0vasuQk",
    ),
    "stream_function_call.sse": (
        "",
        [ToolCall(id="call_0", name="get_capital", arguments='{"country":"France"}')],
        "tool_calls",
        Usage(input_tokens=52, output_tokens=5),
        "gemini-2.0-flash",
        "1lpeaMTxIpW1nvgP-O3vwQY",
    ),
    "stream_function_call_thought_signature.sse": (
        "",
        [ToolCall(id="call_0", name="get_country", arguments="{}")],
        "tool_calls",
        Usage(input_tokens=29, output_tokens=212, reasoning_tokens=202),
        "gemini-3-pro-preview",
        "QUVVadTSNJ6_qtsPvN7J8Q0",
    ),
}


@pytest.mark.fixtures
def test_recorded_streams(recordings: Path) -> None:
    folder = recordings / "gemini"
    assert {p.name for p in folder.glob("*.sse")} == set(STREAMS)
    for name, (text, calls, finish, usage, model, response_id) in STREAMS.items():
        data = (folder / name).read_bytes()
        items = decode(data)
        assert decode(data, list(range(0, len(data), 7))) == items, name
        acc = fold(items)
        assert acc.failure is None, name
        assert acc.finished, name
        completion = acc.completion()
        assert completion.text == text, name
        assert completion.tool_calls == calls, name
        assert completion.finish_reason == finish, name
        assert completion.usage == usage, name
        assert completion.model == model, name
        assert completion.response_id == response_id, name
    # stream.sse: promptTokenCount 15 on the first chunks, 13 on the last; the last wins.
    updates = [
        i for i in decode((folder / "stream.sse").read_bytes()) if isinstance(i, UsageUpdate)
    ]
    assert [u.usage.input_tokens for u in updates] == [15, 13]


@pytest.mark.fixtures
def test_recorded_responses(recordings: Path) -> None:
    folder = recordings / "gemini"
    basic = DIALECT.parse_chat((folder / "generate_content_basic.json").read_bytes())
    assert isinstance(basic, Completion)
    assert basic.text.startswith("```python\n# Example list to be sorted\n")
    assert basic.text.endswith("[1, 2, 3, 4, 5]\n```")
    assert basic.finish_reason == "stop"
    assert basic.usage == Usage(input_tokens=9, output_tokens=87)
    assert basic.tool_calls == []
    call = DIALECT.parse_chat((folder / "generate_content_function_call.json").read_bytes())
    assert isinstance(call, Completion)
    assert call.text == ""
    assert call.tool_calls == [
        ToolCall(
            id="call_0",
            name="find_theaters",
            arguments='{"movie":"Barbie","location":"Mountain View, CA"}',
        )
    ]
    assert call.finish_reason == "tool_calls"
    assert call.usage == Usage()


@pytest.mark.fixtures
def test_recorded_error(recordings: Path) -> None:
    folder = recordings / "gemini"
    headers = msgspec.json.decode((folder / "headers_error_404.json").read_bytes())["headers"]
    flat = {k.lower(): v[0] for k, v in headers.items()}
    failure = DIALECT.classify_error(404, flat, (folder / "error_404_not_found.json").read_bytes())
    assert failure.kind is ErrorKind.NOT_FOUND
    assert failure.code == "NOT_FOUND"
    assert failure.status == 404
    assert failure.retry_after is None
    assert "models/gemini-3.6-flahs is not found" in failure.message
    assert not failure.retryable
