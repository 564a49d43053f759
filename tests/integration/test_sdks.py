"""The official ``openai`` and ``anthropic`` SDKs accept the fake provider as the real thing.

This is the proof that the fakes speak the real protocols: not our own codecs (which could
share our misunderstandings), but the vendors' SDKs parse `FakeProvider`'s answers - streamed
and not, tool calls, error statuses and mid-stream error events - and report exactly the usage
the fake's attempt log says it sent. The SDK clients are synchronous, so they run in a worker
thread (``trio.to_thread.run_sync``) while the server runs in the test's nursery on loopback.

When ``../shared/fixtures/providers`` is present, the fake's stream framing is also compared
with recordings of the real services: same event names in the same order, same separators.

Note the base URLs: the OpenAI SDK takes ``{url}/v1`` (``fake.base_url("openai")``), while the
Anthropic SDK adds ``/v1`` itself and takes the root ``fake.url``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest
import trio

from actors.testing._faults import (
    ContextLengthExceeded,
    FaultPlan,
    MidStreamError,
    RateLimited,
    ServerError,
)
from actors.testing._server import FakeProvider
from protocol._config import ConnectionConfig, ProviderName, Secret
from protocol._dialect import dialect_for
from protocol._messages import ChatRequest, Message

LIMIT = 20.0
T = TypeVar("T")
MESSAGES: list[Any] = [{"role": "user", "content": "what is a nursery in trio?"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@asynccontextmanager
async def serving(fake: FakeProvider) -> AsyncIterator[FakeProvider]:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            yield fake
            nursery.cancel_scope.cancel()


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def openai_client(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url("openai"), api_key="dummy", max_retries=0)


def anthropic_client(fake: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="dummy", max_retries=0)


# --------------------------------------------------------------------------- openai


async def test_openai_sdk_parses_a_completion_and_its_usage() -> None:
    async with serving(FakeProvider(seed=5)) as fake:

        def call() -> Any:
            with openai_client(fake) as client:
                return client.chat.completions.create(model="fake-model", messages=MESSAGES)

        completion = await in_thread(call)
        await fake.wait_settled()
    [record] = fake.attempts
    assert record.usage_reported is not None
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.model == "fake-model"
    assert completion.usage.prompt_tokens == record.usage_reported.input_tokens
    assert completion.usage.completion_tokens == record.usage_reported.output_tokens
    assert completion.usage.total_tokens == record.usage_reported.total_tokens
    assert record.path == "/v1/chat/completions"
    assert record.headers["authorization"] == "Bearer dummy"


async def test_openai_sdk_streams_the_same_answer_with_usage() -> None:
    async with serving(FakeProvider(seed=5)) as fake:

        def call() -> tuple[str, list[Any]]:
            with openai_client(fake) as client:
                whole = client.chat.completions.create(model="fake-model", messages=MESSAGES)
                stream = client.chat.completions.create(
                    model="fake-model",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                with stream:
                    chunks = list(stream)
                return whole.choices[0].message.content or "", chunks

        text, chunks = await in_thread(call)
        await fake.wait_settled()
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # same seed, model and prompt: same words
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    usage = chunks[-1].usage
    record = fake.attempts[1]
    assert record.stream
    assert record.usage_reported is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        record.usage_reported.input_tokens,
        record.usage_reported.output_tokens,
    )


async def test_openai_sdk_parses_a_forced_tool_call() -> None:
    async with serving(FakeProvider()) as fake:

        def call() -> Any:
            with openai_client(fake) as client:
                return client.chat.completions.create(
                    model="fake-model",
                    messages=MESSAGES,
                    tools=[WEATHER_TOOL],
                    tool_choice="required",
                )

        completion = await in_thread(call)
        await fake.wait_settled()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [tool_call] = choice.message.tool_calls
    assert tool_call.function.name == "get_weather"
    assert isinstance(json.loads(tool_call.function.arguments)["city"], str)
    record = fake.attempts[0]
    assert record.usage_reported is not None
    assert completion.usage.completion_tokens == record.usage_reported.output_tokens


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (RateLimited(retry_after=3.0), openai.RateLimitError, 429),
        (ServerError(status=500), openai.InternalServerError, 500),
        (ContextLengthExceeded(), openai.BadRequestError, 400),
    ],
    ids=["429", "500", "context-length"],
)
async def test_openai_sdk_raises_its_own_errors(
    fault: Any, error: type[openai.APIStatusError], status: int
) -> None:
    async with serving(FakeProvider(plan=FaultPlan.always(fault))) as fake:

        def call() -> openai.APIStatusError:
            with openai_client(fake) as client, pytest.raises(error) as info:
                client.chat.completions.create(model="fake-model", messages=MESSAGES)
            return info.value

        exc = await in_thread(call)
    assert exc.status_code == status
    if status == 429:
        assert exc.response.headers["retry-after"] == "3"
    if isinstance(fault, ContextLengthExceeded):
        assert exc.code == "context_length_exceeded"


async def test_openai_sdk_raises_on_a_mid_stream_error_event() -> None:
    async with serving(FakeProvider(plan=FaultPlan.always(MidStreamError()))) as fake:

        def consume(client: openai.OpenAI, received: list[Any]) -> None:
            stream = client.chat.completions.create(
                model="fake-model", messages=MESSAGES, stream=True
            )
            with stream:
                received.extend(stream)

        def call() -> list[Any]:
            received: list[Any] = []
            with openai_client(fake) as client, pytest.raises(openai.APIError):
                consume(client, received)
            return received

        received = await in_thread(call)
    assert received  # the tokens before the error event arrived


# --------------------------------------------------------------------------- anthropic


async def test_anthropic_sdk_parses_a_message_and_its_usage() -> None:
    async with serving(FakeProvider(seed=9)) as fake:

        def call() -> Any:
            with anthropic_client(fake) as client:
                return client.messages.create(model="fake-model", max_tokens=256, messages=MESSAGES)

        message = await in_thread(call)
        await fake.wait_settled()
    [record] = fake.attempts
    assert record.usage_reported is not None
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert isinstance(message.content[0], anthropic.types.TextBlock)
    assert message.content[0].text
    assert message.usage.input_tokens == record.usage_reported.input_tokens
    assert message.usage.output_tokens == record.usage_reported.output_tokens
    assert record.path == "/v1/messages"
    assert "anthropic-version" in record.headers


async def test_anthropic_sdk_streams_events_in_order_with_usage() -> None:
    async with serving(FakeProvider(seed=9)) as fake:

        def call() -> tuple[str, list[str], Any]:
            with anthropic_client(fake) as client:
                whole = client.messages.create(
                    model="fake-model", max_tokens=256, messages=MESSAGES
                )
                with client.messages.stream(
                    model="fake-model", max_tokens=256, messages=MESSAGES
                ) as stream:
                    events = [str(event.type) for event in stream]
                    final = stream.get_final_message()
                assert isinstance(whole.content[0], anthropic.types.TextBlock)
                return whole.content[0].text, events, final

        text, events, final = await in_thread(call)
        await fake.wait_settled()
    raw = [e for e in events if e not in ("text", "ping")]
    assert [k for k, _ in itertools.groupby(raw)] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert final.content[0].text == text
    record = fake.attempts[1]
    assert record.usage_reported is not None
    assert final.usage.input_tokens == record.usage_reported.input_tokens
    assert final.usage.output_tokens == record.usage_reported.output_tokens


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (RateLimited(retry_after=2.0), anthropic.RateLimitError, 429),
        (ServerError(status=529), anthropic.APIStatusError, 529),
        (ContextLengthExceeded(), anthropic.BadRequestError, 400),
    ],
    ids=["429", "529", "context-length"],
)
async def test_anthropic_sdk_raises_its_own_errors(
    fault: Any, error: type[anthropic.APIStatusError], status: int
) -> None:
    async with serving(FakeProvider(plan=FaultPlan.always(fault))) as fake:

        def call() -> anthropic.APIStatusError:
            with anthropic_client(fake) as client, pytest.raises(error) as info:
                client.messages.create(model="fake-model", max_tokens=64, messages=MESSAGES)
            return info.value

        exc = await in_thread(call)
    assert exc.status_code == status
    if status == 529:
        assert "overloaded" in str(exc.body)
    if status == 429:
        assert exc.response.headers["retry-after"] == "2"


async def test_anthropic_sdk_raises_on_a_mid_stream_overloaded_event() -> None:
    async with serving(FakeProvider(plan=FaultPlan.always(MidStreamError()))) as fake:

        def call() -> anthropic.APIStatusError:
            with (
                anthropic_client(fake) as client,
                pytest.raises(anthropic.APIStatusError) as info,
                client.messages.stream(
                    model="fake-model", max_tokens=64, messages=MESSAGES
                ) as stream,
            ):
                stream.until_done()
            return info.value

        exc = await in_thread(call)
    assert "overloaded_error" in str(exc)


# --------------------------------------------------------------------------- recordings

RECORDED: dict[ProviderName, str] = {
    "openai": "openai/chat_stream_basic.sse",
    "anthropic": "anthropic/messages_stream_text.sse",
    "gemini": "gemini/stream.sse",
    "ollama": "ollama/chat_stream.ndjson",
}


def separator(dialect: ProviderName, body: bytes) -> bytes:
    """The record separator of a stream body."""
    if dialect == "ollama":
        return b"\n"
    return b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"


def shape(dialect: ProviderName, body: bytes) -> list[str]:
    """The stream as a list of record labels, consecutive repeats collapsed: event names
    (Anthropic), or what each record carries (role / content / finish / usage / done)."""
    sep = separator(dialect, body)
    labels: list[str] = []
    for record in body.split(sep):
        if not record.strip():
            continue
        lines = record.decode().splitlines()
        if dialect == "anthropic":
            labels.append(lines[0].removeprefix("event: "))
            assert lines[1].startswith("data: ")
            continue
        data = lines[0] if dialect == "ollama" else lines[0].removeprefix("data: ")
        if data == "[DONE]":
            labels.append("done")
            continue
        obj = json.loads(data)
        if dialect == "openai":
            choices = obj["choices"]
            labels.append(
                "usage"
                if not choices
                else "role"
                if "role" in choices[0]["delta"]
                else "finish"
                if choices[0]["finish_reason"]
                else "content"
            )
        elif dialect == "gemini":
            labels.append("finish" if obj["candidates"][0].get("finishReason") else "content")
        else:
            labels.append("done" if obj["done"] else "content")
    return [label for label, _ in itertools.groupby(labels)]


async def fake_stream(dialect: ProviderName) -> bytes:
    async with serving(FakeProvider()) as fake, httpx.AsyncClient() as client:
        conn = ConnectionConfig(
            name="fake", provider=dialect, base_url=fake.base_url(dialect), api_key=Secret("k")
        )
        request = ChatRequest(
            model="fake-model", messages=[Message(role="user", content="hi")], stream=True
        )
        http = dialect_for(dialect).chat_request(request, conn, model="fake-model", stream=True)
        response = await client.request(
            http.method, http.url, headers=http.headers, content=http.body
        )
    assert response.status_code == 200
    return response.content


@pytest.mark.fixtures
@pytest.mark.parametrize("dialect", list(RECORDED))
async def test_stream_shape_matches_a_recording(recordings: Path, dialect: ProviderName) -> None:
    recorded = (recordings / RECORDED[dialect]).read_bytes()
    body = await fake_stream(dialect)
    assert shape(dialect, body) == shape(dialect, recorded)


@pytest.mark.fixtures
@pytest.mark.parametrize("dialect", list(RECORDED))
async def test_stream_separators_match_a_recording(recordings: Path, dialect: ProviderName) -> None:
    recorded = (recordings / RECORDED[dialect]).read_bytes()
    body = await fake_stream(dialect)
    assert separator(dialect, body) == separator(dialect, recorded)
    if dialect != "ollama":
        other = b"\n\n" if separator(dialect, recorded) == b"\r\n\r\n" else b"\r\n"
        assert other not in body
