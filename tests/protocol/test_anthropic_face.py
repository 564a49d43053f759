"""The Anthropic Messages face's pure codec (``protocol._anthropic_face``).

As for the OpenAI face, the answer side is checked against our own Anthropic *client* dialect
(``protocol._anthropic``): what the face renders, whole or streamed and split anywhere, is
read back as the same answer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._anthropic import DIALECT
from protocol._anthropic_face import MessageEvents, MessagesCall, decode_messages, message_body
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Failure,
    Finished,
    ImagePart,
    Message,
    ReasoningDelta,
    Restart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from protocol._openai_face import WireError, failure_error

USAGE = Usage(input_tokens=9, output_tokens=4, cache_read_tokens=2, cache_write_tokens=1)


def decode(body: Any) -> MessagesCall | WireError:
    return decode_messages(json.dumps(body).encode(), request_id="rid")


def test_a_full_messages_request_maps_every_field() -> None:
    call = decode(
        {
            "model": "claude-x",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "be terse"}, {"type": "text", "text": "be kind"}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "checking"},
                        {"type": "tool_use", "id": "t1", "name": "weather", "input": {"c": "X"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "and this image", "cache_control": {}},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/gif", "data": "R0"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    ],
                },
            ],
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_p": 0.5,
            "top_k": 3,
            "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "stream": True,
            "metadata": {"user_id": "u-1"},
        }
    )
    assert isinstance(call, MessagesCall)
    assert call.stream
    assert call.request == ChatRequest(
        model="claude-x",
        messages=[
            Message(role="system", content="be terse\n\nbe kind"),
            Message(role="user", content="weather?"),
            Message(
                role="assistant",
                content=[
                    TextPart(text="checking"),
                    ToolUsePart(id="t1", name="weather", arguments={"c": "X"}),
                ],
            ),
            Message(
                role="tool",
                content=[ToolResultPart(tool_use_id="t1", content="sunny", name="weather")],
            ),
            Message(
                role="user",
                content=[
                    TextPart(text="and this image"),
                    ImagePart(data="R0", media_type="image/gif"),
                    ImagePart(url="https://x/y.png"),
                ],
            ),
        ],
        max_tokens=64,
        temperature=0.2,
        top_p=0.5,
        stop=["END"],
        tools=[Tool(name="weather", description="d", parameters={"type": "object"})],
        tool_choice="required",
        stream=True,
        metadata={"user": "u-1"},
        request_id="rid",
        extra={"top_k": 3},
    )


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"max_tokens": 5, "messages": []}, "model", "required"),
        ({"model": "m", "messages": [{"role": "system", "content": "x"}]},
         "messages[0].role", "system"),
        ({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
         "messages[0].content[0]", "assistant turns"),
        ({"model": "m", "messages": [], "tools": [{"type": "web_search_20250305", "name": "w"}]},
         "tools[0].type", "server tools"),
        ({"model": "m", "messages": [], "tool_choice": {"type": "tool"}},
         "tool_choice.name", "required"),
        ({"model": "m", "messages": [], "max_tokens": "many"}, "max_tokens", "expected"),
    ],
)  # fmt: skip
def test_a_bad_messages_body_names_the_field(body: Any, param: str, words: str) -> None:
    error = decode(body)
    assert isinstance(error, WireError)
    assert (error.status, error.param) == (400, param)
    assert words in error.message
    assert json.loads(error.anthropic_body())["error"]["type"] == "invalid_request_error"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_no_bytes_make_the_decoder_raise(body: bytes) -> None:
    assert isinstance(decode_messages(body, request_id="r"), MessagesCall | WireError)


@pytest.mark.parametrize(
    "answer",
    [
        Completion(text="Hi.", usage=USAGE, request_id="rid", model="claude-x"),
        Completion(
            text="",
            finish_reason="tool_calls",
            tool_calls=[ToolCall(id="t1", name="f", arguments='{"a": [1, 2]}')],
            usage=USAGE,
            request_id="rid",
        ),
        Completion(text="cut", finish_reason="length", reasoning="think", usage=USAGE),
        Completion(text="no", finish_reason="refusal", usage=USAGE),
    ],
)
def test_our_client_dialect_reads_back_the_message(answer: Completion) -> None:
    body = message_body(answer, model="asked")
    parsed = DIALECT.parse_chat(body)
    assert isinstance(parsed, Completion)
    assert (parsed.text, parsed.reasoning, parsed.finish_reason) == (
        answer.text,
        answer.reasoning,
        answer.finish_reason,
    )
    assert [(c.id, c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        (c.id, c.name, json.loads(c.arguments)) for c in answer.tool_calls
    ]
    assert parsed.usage == USAGE
    assert json.loads(body)["model"] == (answer.model or "asked")


EVENTS: list[Any] = [
    ReasoningDelta(text="let me "),
    ReasoningDelta(text="see"),
    TextDelta(text="It is "),
    TextDelta(text="sunny."),
    ToolCallDelta(index=0, id="t1", name="f", arguments='{"a"'),
    ToolCallDelta(index=0, arguments=": 1}"),
    ToolCallDelta(index=1, id="t2", name="g", arguments=""),
    Finished(finish_reason="tool_calls", usage=USAGE),
]
FINAL = Completion(text="It is sunny.", finish_reason="tool_calls", usage=USAGE, model="m")


def rendered() -> bytes:
    events = MessageEvents(request_id="rid", model="asked")
    out = b""
    for event in EVENTS:
        piece = events.event(event)
        assert isinstance(piece, bytes)
        out += piece
    return out + events.finish(FINAL)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_our_client_decoder_reads_the_event_stream_back_split_anywhere(cuts: list[int]) -> None:
    data = rendered()
    points = sorted({c % (len(data) + 1) for c in cuts})
    decoder = DIALECT.stream_decoder()
    items: list[Any] = []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        items += decoder.feed(data[a:b])
    items += decoder.close()
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "It is sunny."
    assert "".join(i.text for i in items if isinstance(i, ReasoningDelta)) == "let me see"
    calls = [i for i in items if isinstance(i, ToolCallDelta)]
    assert [(c.index, c.id, c.name) for c in calls if c.id] == [(0, "t1", "f"), (1, "t2", "g")]
    assert "".join(c.arguments for c in calls if c.index == 0) == '{"a": 1}'
    finished = items[-1]
    assert isinstance(finished, Finished)
    assert finished.finish_reason == "tool_calls"
    assert finished.usage == USAGE


def test_the_event_stream_has_anthropics_shape() -> None:
    events = [
        json.loads(block.split(b"\ndata: ", 1)[1]) for block in rendered().split(b"\n\n") if block
    ]
    types = [e["type"] for e in events]
    assert types[0] == "message_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert starts == stops == [0, 1, 2, 3]  # thinking, text, two tool calls: each closed
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert events[-2]["usage"]["input_tokens"] == 6  # without the 2 + 1 cached tokens


def test_an_empty_answer_still_has_a_text_block() -> None:
    events = MessageEvents(request_id="rid", model="m")
    data = events.finish(Completion(text="", usage=USAGE))
    parsed = DIALECT.stream_decoder()
    items = parsed.feed(data) + parsed.close()
    assert isinstance(items[-1], Finished)
    assert b'"content_block_start"' in data


def test_a_restart_after_text_is_an_error_event() -> None:
    events = MessageEvents(request_id="rid", model="m")
    assert events.event(Restart(reason="x")) == b""
    assert events.event(TextDelta(text="part"))
    failure = events.event(Restart(reason="reset"))
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.STREAM_INTERRUPTED
    error = events.error(failure_error(failure))
    assert error.startswith(b"event: error\ndata: ")
    decoder = DIALECT.stream_decoder()
    items = decoder.feed(error)
    assert isinstance(items[-1], Failure)
