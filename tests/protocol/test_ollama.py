"""The Ollama native dialect: request building, NDJSON decoding, error classification."""

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
from protocol._errors import ErrorKind, ProtocolError
from protocol._messages import (
    ChatRequest,
    Completion,
    DecodedItem,
    Embeddings,
    EmbedRequest,
    Failure,
    Finished,
    FinishReason,
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
)
from protocol._ollama import DIALECT

LOCAL = ConnectionConfig(name="o", provider="ollama")
KEY = "ollama-cloud-secret-456"


def request_of(
    request: ChatRequest, conn: ConnectionConfig = LOCAL, stream: bool = False
) -> tuple[Any, dict[str, str], str]:
    http = DIALECT.chat_request(request, conn, model="llama3.2", stream=stream)
    assert http.method == "POST"
    return msgspec.json.decode(http.body), http.headers, http.url


def decode(data: bytes, cuts: list[int] | None = None) -> list[DecodedItem]:
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


def ndjson(*lines: Any, final_newline: bool = True) -> bytes:
    data = b"\n".join(msgspec.json.encode(line) for line in lines)
    return data + b"\n" if final_newline else data


def line(content: str = "", **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    for key in ("thinking", "tool_calls"):
        if key in fields:
            message[key] = fields.pop(key)
    return {
        "model": "qwen3",
        "created_at": "2025-01-01T00:00:00.1Z",
        "message": message,
        "done": False,
        **fields,
    }


def final(reason: str = "stop", prompt: int = 7, output: int = 9) -> dict[str, Any]:
    return line(
        done=True,
        done_reason=reason,
        total_duration=1,
        prompt_eval_count=prompt,
        eval_count=output,
    )


# --------------------------------------------------------------------------- contract


def test_dialect_singleton_satisfies_the_protocol() -> None:
    dialect: Dialect = DIALECT
    assert dialect_for("ollama") is DIALECT
    assert dialect.name == "ollama"
    assert dialect.supports_embeddings is True


# --------------------------------------------------------------------------- requests


def test_chat_request_defaults() -> None:
    req = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    body, headers, url = request_of(req)
    assert url == "http://localhost:11434/api/chat"
    assert "authorization" not in {k.lower() for k in headers}
    assert headers["accept"] == "application/json"
    # stream is sent explicitly even when false: the API defaults to true.
    assert body == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }
    body, headers, _ = request_of(req, stream=True)
    assert body["stream"] is True
    assert headers["accept"] == "application/x-ndjson"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://gpu:11434", "http://gpu:11434/api/chat"),
        ("http://gpu:11434/", "http://gpu:11434/api/chat"),
        ("http://gpu:11434/v1", "http://gpu:11434/api/chat"),
        ("http://gpu:11434/v1/", "http://gpu:11434/api/chat"),
        ("https://proxy/ollama", "https://proxy/ollama/api/chat"),
    ],
)
def test_base_url(base: str, url: str) -> None:
    conn = ConnectionConfig(provider="ollama", base_url=base)
    req = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    assert request_of(req, conn)[2] == url


def test_key_becomes_bearer_hidden_in_repr_and_headers_added_last() -> None:
    conn = ConnectionConfig(
        provider="ollama", api_key=Secret(KEY), headers={"x-team": "a", "accept": "*/*"}
    )
    req = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    http = DIALECT.chat_request(req, conn, model="llama3.2", stream=True)
    assert http.headers["authorization"] == f"Bearer {KEY}"
    assert http.headers["x-team"] == "a"
    assert http.headers["accept"] == "*/*"
    assert KEY not in repr(http)
    assert KEY not in str(http)
    embed = DIALECT.embed_request(EmbedRequest(model="e", inputs=["a"]), conn, model="e")
    assert KEY not in repr(embed)


def test_chat_body_every_field() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    req = ChatRequest(
        model="m",
        messages=[
            Message(role="system", content="Be brief."),
            Message(
                role="user",
                content=[
                    TextPart(text="Look: "),
                    ImagePart(data="AAAA"),
                    TextPart(text="and this"),
                    ImagePart(url="data:image/png;base64,BBBB"),
                ],
            ),
            Message(
                role="assistant",
                content=[
                    TextPart(text="Let me check."),
                    ToolUsePart(id="c1", name="weather", arguments={"city": "Paris"}),
                ],
            ),
            Message(role="tool", content=[ToolResultPart(tool_use_id="c1", content="30C")]),
            Message(
                role="tool",
                content=[ToolResultPart(tool_use_id="c9", content="x", name="explicit")],
            ),
            Message(role="tool", content="plain"),
        ],
        max_tokens=64,
        temperature=0.2,
        top_p=0.8,
        stop=["\n\n"],
        tools=[Tool(name="weather", description="Weather", parameters=schema), Tool(name="t")],
        tool_choice="auto",
        response_format=ResponseFormat(type="json_schema", schema=schema),
        extra={"keep_alive": "5m", "think": True},
    )
    body, _, _ = request_of(req, stream=True)
    assert body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Look: and this", "images": ["AAAA", "BBBB"]},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "30C", "tool_name": "weather"},
            {"role": "tool", "content": "x", "tool_name": "explicit"},
            {"role": "tool", "content": "plain"},
        ],
        "stream": True,
        "options": {"temperature": 0.2, "top_p": 0.8, "num_predict": 64, "stop": ["\n\n"]},
        "tools": [
            {
                "type": "function",
                "function": {"name": "weather", "description": "Weather", "parameters": schema},
            },
            {"type": "function", "function": {"name": "t"}},
        ],
        "format": schema,
        "keep_alive": "5m",
        "think": True,
    }


def test_json_object_format_tool_choice_none_and_extra_none_deletes() -> None:
    req = ChatRequest(
        model="m",
        messages=[Message(role="user", content="hi")],
        tools=[Tool(name="t")],
        tool_choice="none",
        response_format=ResponseFormat(type="json_object"),
        extra={"stream": None},
    )
    body, _, _ = request_of(req)
    assert body == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "format": "json",
    }


def test_image_by_http_url_is_unsupported() -> None:
    req = ChatRequest(
        model="m",
        messages=[Message(role="user", content=[ImagePart(url="https://example.com/cat.png")])],
    )
    with pytest.raises(ProtocolError) as info:
        DIALECT.chat_request(req, LOCAL, model="llava", stream=False)
    assert info.value.failure.kind is ErrorKind.UNSUPPORTED


def test_body_is_compact() -> None:
    req = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    http = DIALECT.chat_request(req, LOCAL, model="x", stream=False)
    assert http.body == b'{"model":"x","messages":[{"role":"user","content":"hi"}],"stream":false}'


# --------------------------------------------------------------------------- embeddings


def test_embeddings_request_and_response() -> None:
    http = DIALECT.embed_request(
        EmbedRequest(model="e", inputs=["a", "b"], dimensions=4),
        ConnectionConfig(provider="ollama", base_url="http://h:1/v1"),
        model="all-minilm",
    )
    assert http.url == "http://h:1/api/embed"
    assert msgspec.json.decode(http.body) == {
        "model": "all-minilm",
        "input": ["a", "b"],
        "dimensions": 4,
    }
    parsed = DIALECT.parse_embed(
        b'{"model":"all-minilm","embeddings":[[0.1,0.2],[1,2]],"total_duration":1,'
        b'"prompt_eval_count":6}'
    )
    assert parsed == Embeddings(
        vectors=[[0.1, 0.2], [1.0, 2.0]], usage=Usage(input_tokens=6), model="all-minilm"
    )
    for junk in (b"", b"{}", b"[1]", b'{"embeddings":"x"}', b"[" * 10000):
        failure = DIALECT.parse_embed(junk)
        assert isinstance(failure, Failure)
        assert failure.kind is ErrorKind.PROTOCOL


# --------------------------------------------------------------------------- non-stream


def test_parse_chat_full_message() -> None:
    body = msgspec.json.encode(
        line(
            "Answer",
            thinking="Reasoning",
            tool_calls=[
                {"id": "call_x", "function": {"name": "a", "arguments": {"q": [1]}, "index": 0}},
                {"function": {"name": "b", "arguments": {}}},
            ],
            done=True,
            done_reason="stop",
            prompt_eval_count=3,
            eval_count=4,
        )
    )
    assert DIALECT.parse_chat(body) == Completion(
        text="Answer",
        reasoning="Reasoning",
        tool_calls=[
            ToolCall(id="call_x", name="a", arguments='{"q":[1]}'),
            ToolCall(id="call_1", name="b", arguments="{}"),
        ],
        finish_reason="tool_calls",
        usage=Usage(input_tokens=3, output_tokens=4),
        model="qwen3",
    )


@pytest.mark.parametrize(
    "body",
    [b"", b"nope", b"[]", b'{"message":5}', msgspec.json.encode(line("no done")), b"{" * 10000],
)
def test_parse_chat_junk_is_protocol(body: bytes) -> None:
    failure = DIALECT.parse_chat(body)
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.PROTOCOL


def test_parse_chat_error_body_is_classified() -> None:
    failure = DIALECT.parse_chat(b'{"error":"model requires more system memory"}')
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.SERVER_ERROR
    assert failure.status == 200
    assert "more system memory" in failure.message


# --------------------------------------------------------------------------- streaming


def test_stream_text_thinking_tool_calls_and_usage() -> None:
    data = ndjson(
        line(thinking="Let me "),
        line(thinking="think."),
        line("Hel"),
        line("lo"),
        line(tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]),
        line(
            tool_calls=[
                {"id": "abc", "function": {"name": "t2", "arguments": {"n": 1}}},
                {"function": {"name": "t3"}},
            ]
        ),
        final(prompt=11, output=22),
    )
    items = decode(data)
    assert items == [
        ReasoningDelta(text="Let me "),
        ReasoningDelta(text="think."),
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        ToolCallDelta(index=0, id="call_0", name="get_weather", arguments='{"city":"Tokyo"}'),
        ToolCallDelta(index=1, id="abc", name="t2", arguments='{"n":1}'),
        ToolCallDelta(index=2, id="call_2", name="t3", arguments="{}"),
        Finished(
            finish_reason="tool_calls",
            usage=Usage(input_tokens=11, output_tokens=22),
            model="qwen3",
        ),
    ]
    completion = fold(items).completion()
    assert completion.text == "Hello"
    assert completion.reasoning == "Let me think."
    assert [c.name for c in completion.tool_calls] == ["get_weather", "t2", "t3"]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("stop", "stop"), ("length", "length"), ("load", "other"), ("unload", "other"), ("", "stop")],
)
def test_done_reason_mapping(reason: str, expected: FinishReason) -> None:
    items = decode(ndjson(line("x"), final(reason)))
    assert items[-1] == Finished(
        finish_reason=expected, usage=Usage(input_tokens=7, output_tokens=9), model="qwen3"
    )


def test_final_line_without_newline_is_processed_at_close() -> None:
    data = ndjson(line("a"), final(), final_newline=False)
    decoder = DIALECT.stream_decoder()
    assert decoder.feed(data) == [TextDelta(text="a")]
    assert not decoder.done
    closing = decoder.close()
    assert isinstance(closing[-1], Finished)
    assert decoder.done


def test_content_on_the_done_line_comes_before_finished() -> None:
    data = b'{"model":"g","response":"That","done":false}\n{"model":"g","response":"!","done":true}'
    items = decode(data)
    assert items == [TextDelta(text="That"), TextDelta(text="!"), Finished(model="g")]


def test_midstream_error_line_is_classified() -> None:
    data = ndjson(line("partial"), {"error": "an error was encountered while running the model"})
    decoder = DIALECT.stream_decoder()
    items = decoder.feed(data)
    assert items[0] == TextDelta(text="partial")
    failure = items[-1]
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.SERVER_ERROR
    assert failure.status == 200
    assert "encountered while running" in failure.message
    assert decoder.done
    assert decoder.feed(ndjson(line("late"), final())) == []
    assert decoder.close() == []


def test_midstream_context_error_is_context_length() -> None:
    items = decode(ndjson({"error": "input length exceeds the context length"}))
    assert isinstance(items[-1], Failure)
    assert items[-1].kind is ErrorKind.CONTEXT_LENGTH


def test_missing_done_line_is_interrupted() -> None:
    items = decode(ndjson(line("cut")))
    assert items[0] == TextDelta(text="cut")
    assert isinstance(items[-1], Failure)
    assert items[-1].kind is ErrorKind.STREAM_INTERRUPTED
    empty = decode(b"")
    assert len(empty) == 1
    assert isinstance(empty[0], Failure)
    assert empty[0].kind is ErrorKind.STREAM_INTERRUPTED


@pytest.mark.parametrize("bad", [b"{nope\n", b"[1,2]\n", b'{"done":"yes"}\n', b"\xff\xfe\n"])
def test_malformed_line_is_protocol_failure(bad: bytes) -> None:
    decoder = DIALECT.stream_decoder()
    items = decoder.feed(ndjson(line("ok")) + bad + ndjson(final()))
    assert items[0] == TextDelta(text="ok")
    assert len(items) == 2
    assert isinstance(items[1], Failure)
    assert items[1].kind is ErrorKind.PROTOCOL
    assert decoder.done


def test_lines_after_done_are_ignored() -> None:
    items = decode(ndjson(line("a"), final(), line("after"), {"error": "x"}))
    assert items == [
        TextDelta(text="a"),
        Finished(usage=Usage(input_tokens=7, output_tokens=9), model="qwen3"),
    ]


def test_framing_error_is_protocol_failure() -> None:
    decoder = DIALECT.stream_decoder()
    items = decoder.feed(b"x" * (5 * 1024 * 1024))
    assert len(items) == 1
    assert isinstance(items[0], Failure)
    assert items[0].kind is ErrorKind.PROTOCOL


def test_framing_error_keeps_the_lines_before_it() -> None:
    from protocol._framing import DEFAULT_MAX_BUFFER

    first = ndjson(line("a"))
    too_long = b"x" * (DEFAULT_MAX_BUFFER + 10)
    one, split = DIALECT.stream_decoder(), DIALECT.stream_decoder()
    items = one.feed(first + too_long)
    assert items == split.feed(first) + split.feed(too_long)
    assert items[0] == TextDelta(text="a")
    assert isinstance(items[-1], Failure)
    assert items[-1].kind is ErrorKind.PROTOCOL


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, b'{"error":"model \\"llama9\\" not found, try pulling it first"}', "not_found"),
        (400, b'{"error":"invalid format: expected \\"json\\""}', "bad_request"),
        (400, b'{"error":"prompt is too long for the context window"}', "context_length"),
        (429, b'{"error":"too many requests"}', "rate_limited"),
        (500, b'{"error":"the model failed to generate a response"}', "server_error"),
        (502, b"<html>bad gateway</html>", "server_error"),
        (503, b"", "overloaded"),
        (401, b'{"error":"unauthorized"}', "auth"),
        (
            404,
            b'{"error":{"message":"model not found","type":"not_found_error"}}',
            "not_found",
        ),
        (400, b"[" * 10000, "bad_request"),
    ],
)
def test_classify_error(status: int, body: bytes, kind: str) -> None:
    failure = DIALECT.classify_error(status, {}, body)
    assert failure.kind == ErrorKind(kind)
    assert failure.status == status


def test_classify_error_message_and_retry_after() -> None:
    failure = DIALECT.classify_error(
        404, {}, b'{"error":"model \\"llama9\\" not found, try pulling it first"}'
    )
    assert failure.message == 'HTTP 404: model "llama9" not found, try pulling it first'
    assert not failure.retryable
    limited = DIALECT.classify_error(429, {"retry-after": "2"}, b'{"error":"slow down"}')
    assert limited.retry_after == 2.0


# --------------------------------------------------------------------------- properties

SAMPLE = ndjson(
    line("Hé", thinking="hmm"),
    line("llo\\"),
    line(tool_calls=[{"function": {"name": "f", "arguments": {"s": "é\n"}}}]),
    final(),
    final_newline=False,
)
SAMPLE_ITEMS = decode(SAMPLE)


def test_sample_is_a_complete_stream() -> None:
    assert len(SAMPLE_ITEMS) == 5
    assert isinstance(SAMPLE_ITEMS[-1], Finished)
    assert SAMPLE_ITEMS[-1].finish_reason == "tool_calls"


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
            mutated.insert(pos, data.draw(st.sampled_from(b'{}[]":,\n \\0a')))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(mutated)), max_size=6))
    _never_raises(bytes(mutated), cuts)
    assert isinstance(DIALECT.parse_chat(bytes(mutated)), Completion | Failure)


# --------------------------------------------------------------------------- recordings

STREAMS = {
    # file: (text, finish, usage, model)
    "chat_stream.ndjson": (
        "This is test completion response",
        "stop",
        Usage(input_tokens=10, output_tokens=239),
        "phi3",
    ),
    "generate_stream.ndjson": (
        "This is test completion response",
        "stop",
        Usage(input_tokens=10, output_tokens=304),
        "phi3",
    ),
    "generate_stream_docs.ndjson": ("That's a fantastic question!", "stop", Usage(), "gemma4"),
}


@pytest.mark.fixtures
def test_recorded_streams(recordings: Path) -> None:
    folder = recordings / "ollama"
    for name, (text, finish, usage, model) in STREAMS.items():
        data = (folder / name).read_bytes()
        items = decode(data)
        assert decode(data, list(range(0, len(data), 5))) == items, name
        acc = fold(items)
        assert acc.failure is None, name
        assert acc.finished, name
        completion = acc.completion()
        assert completion.text == text, name
        assert completion.tool_calls == [], name
        assert completion.finish_reason == finish, name
        assert completion.usage == usage, name
        assert completion.model == model, name


@pytest.mark.fixtures
def test_recorded_midstream_error(recordings: Path) -> None:
    items = decode((recordings / "ollama" / "stream_error_midstream.ndjson").read_bytes())
    acc = fold(items)
    assert acc.text == " Yes.Ican"
    assert acc.failure is not None
    assert acc.failure.kind is ErrorKind.SERVER_ERROR
    assert acc.failure.status == 200
    assert "an error was encountered while running the model" in acc.failure.message
    assert not acc.finished


@pytest.mark.fixtures
def test_recorded_docs_chunks_as_a_stream(recordings: Path) -> None:
    # The docs pretty-print each object; on the wire each is one compact line.
    folder = recordings / "ollama"
    names = [
        "chat_stream_chunk_docs.json",
        "chat_stream_tool_call_chunk_docs.json",
        "chat_stream_final_docs.json",
    ]
    data = b"\n".join(
        msgspec.json.encode(msgspec.json.decode((folder / n).read_bytes())) for n in names
    )
    completion = fold(decode(data)).completion()
    assert completion.text == "The"
    assert completion.tool_calls == [
        ToolCall(id="call_0", name="get_weather", arguments='{"city":"Tokyo"}')
    ]
    assert completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(input_tokens=26, output_tokens=282)
    assert completion.model == "llama3.2"


@pytest.mark.fixtures
def test_recorded_responses(recordings: Path) -> None:
    folder = recordings / "ollama"
    plain = DIALECT.parse_chat((folder / "chat_nonstream.json").read_bytes())
    assert plain == Completion(
        text="This is test completion response",
        finish_reason="stop",
        usage=Usage(input_tokens=38, output_tokens=45),
        model="llama3.2",
    )
    tools = DIALECT.parse_chat((folder / "chat_tool_call.json").read_bytes())
    assert tools == Completion(
        text="",
        tool_calls=[
            ToolCall(
                id="call_0", name="TestPlugin_TestFunction", arguments='{"testInput":"fake-text"}'
            )
        ],
        finish_reason="tool_calls",
        usage=Usage(input_tokens=152, output_tokens=22),
        model="llama3.2",
    )
    final_docs = DIALECT.parse_chat((folder / "chat_stream_final_docs.json").read_bytes())
    assert isinstance(final_docs, Completion)
    assert final_docs.usage == Usage(input_tokens=26, output_tokens=282)


@pytest.mark.fixtures
def test_recorded_error(recordings: Path) -> None:
    body = (recordings / "ollama" / "error.json").read_bytes()
    failure = DIALECT.classify_error(500, {}, body)
    assert failure.kind is ErrorKind.SERVER_ERROR
    assert failure.message == "HTTP 500: the model failed to generate a response"
    assert failure.retryable
    missing = DIALECT.classify_error(404, {}, body)
    assert missing.kind is ErrorKind.NOT_FOUND
