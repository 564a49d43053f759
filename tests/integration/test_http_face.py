"""The HTTP face over real loopback sockets, driven by the vendors' own SDKs.

The proof that ``base_url="http://127.0.0.1:<port>/v1"`` is enough: the official ``openai``
and ``anthropic`` SDKs (sync clients in worker threads, async clients on trio) talk to an
in-process runtime's gateway port (port 0) whose provider side is the in-memory
`FakeTransport` - streamed and not, embeddings, the model list, every error status in the
client's own error shape, per-client limits, and a client that leaves mid-stream cancelling
the upstream attempt (the transport's attempt log says ``client_closed``). Raw HTTP checks bad
input: nothing a client sends crashes the server, and the WebSocket gateway keeps working on
the same port. One test runs a real ``switchboard serve`` subprocess on its embedded default.

The SDKs never reach the internet: every client has a loopback ``base_url`` and
``max_retries=0``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest
import trio

from actors import Client
from actors._http_face import HttpFace
from actors.testing import FakeTransport, FaultPlan, NoResponse, RateLimited, ServerError
from protocol import (
    ChatRequest,
    ConnectionConfig,
    GatewayConfig,
    Message,
    RetryConfig,
    RouteConfig,
    RuntimeConfig,
    Secret,
    Target,
    TimeoutConfig,
)
from protocol._config import ClientConfig
from supervisors import Runtime, open_runtime

LIMIT = 30.0
TOKEN = "face-token"
T = TypeVar("T")
MESSAGES: Any = [{"role": "user", "content": "what is a nursery in trio?"}]

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object :pytest.PytestUnraisableExceptionWarning"
)
"""The SDKs' async clients on trio: ``openai.AsyncStream`` stops reading its SSE generators
(and httpx's under them) at ``[DONE]``, or when the caller leaves, without closing them, and
httpx abandons a request body's generator when the server answers before reading it all
(a 413); trio warns when such an async generator is collected, possibly during a later test.
That is the clients' way on any server, not something the face can change."""


def config(
    *, connection: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None
) -> RuntimeConfig:
    conn = ConnectionConfig(
        name="local",
        provider="openai",
        base_url="http://fake/v1",
        default_model="fake-model",
        models={"fast": "fake-model"},
        retry=RetryConfig(max_attempts=1),
        **(connection or {}),
    )
    return RuntimeConfig(
        connections={"local": conn},
        routes={"default": RouteConfig(targets=[Target(connection="local")])},
        gateway=GatewayConfig(port=0, tokens=[Secret(TOKEN)], **(gateway or {})),
    )


@dataclass
class Served:
    rt: Runtime
    transport: FakeTransport
    url: str  # http://127.0.0.1:<port>

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def openai(self, token: str = TOKEN) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=token, max_retries=0)

    def async_openai(self, token: str = TOKEN) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.v1, api_key=token, max_retries=0)

    def anthropic(self, token: str = TOKEN) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=token, max_retries=0)

    def async_anthropic(self, token: str = TOKEN) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=token, max_retries=0)


@asynccontextmanager
async def serving(
    *,
    plan: FaultPlan | None = None,
    connection: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    **core: Any,
) -> AsyncIterator[Served]:
    transport = FakeTransport(plan=plan, seed=7, **core)
    with trio.fail_after(LIMIT):
        async with open_runtime(
            config(connection=connection, gateway=gateway), transport=transport
        ) as rt:
            assert rt.gateway is not None
            url = "http" + rt.gateway.url.removeprefix("ws")
            yield Served(rt=rt, transport=transport, url=url)


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait (polling) until *condition* holds: it is other objects' state."""
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - the conditions are other objects' state
            await trio.sleep(0.01)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def face_of(served: Served) -> HttpFace:
    assert served.rt.gateway is not None
    face = served.rt.gateway.http
    assert isinstance(face, HttpFace)
    return face


def usage_of(served: Served, index: int) -> tuple[int, int]:
    record = served.transport.attempts[index]
    assert record.usage_reported is not None
    return record.usage_reported.input_tokens, record.usage_reported.output_tokens


# --------------------------------------------------------------------------- openai SDK


async def test_openai_sdk_chat_completion_and_its_usage() -> None:
    async with serving() as served:

        def call() -> Any:
            with served.openai() as client:
                return client.chat.completions.with_raw_response.create(
                    model="default", messages=MESSAGES, extra_headers={"x-request-id": "r-1"}
                )

        raw = await in_thread(call)
    completion = raw.parse()
    assert raw.headers["x-request-id"] == "r-1"
    assert raw.headers["x-switchboard-connection"] == "local"
    assert completion.id == "chatcmpl-r-1"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.model == "fake-model"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == usage_of(
        served, 0
    )
    assert completion.usage.total_tokens == sum(usage_of(served, 0))


async def test_openai_sdk_stream_with_usage_is_the_same_answer() -> None:
    async with serving() as served:

        def call() -> tuple[str, list[Any]]:
            with served.openai() as client:
                whole = client.chat.completions.create(model="fast", messages=MESSAGES)
                stream = client.chat.completions.create(
                    model="fast",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                with stream:
                    return whole.choices[0].message.content or "", list(stream)

        text, chunks = await in_thread(call)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # same seed, model and prompt: same words
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == usage_of(served, 1)


async def test_openai_sdk_stream_without_include_usage_has_no_usage_chunk() -> None:
    async with serving() as served:

        def call() -> list[Any]:
            with served.openai() as client:
                stream = client.chat.completions.create(
                    model="default", messages=MESSAGES, stream=True
                )
                with stream:
                    return list(stream)

        chunks = await in_thread(call)
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_async_openai_sdk_on_trio_streams_and_completes() -> None:
    async with serving() as served, served.async_openai() as client:
        completion = await client.chat.completions.create(model="default", messages=MESSAGES)
        stream = await client.chat.completions.create(
            model="default", messages=MESSAGES, stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == completion.choices[0].message.content


async def test_openai_sdk_tool_calls_round_trip() -> None:
    tool: Any = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    async with serving() as served:

        def call() -> tuple[Any, list[Any]]:
            with served.openai() as client:
                whole = client.chat.completions.create(
                    model="default", messages=MESSAGES, tools=[tool], tool_choice="required"
                )
                stream = client.chat.completions.create(
                    model="default",
                    messages=MESSAGES,
                    tools=[tool],
                    tool_choice={"type": "function", "function": {"name": "get_weather"}},
                    stream=True,
                )
                with stream:
                    return whole, list(stream)

        whole, chunks = await in_thread(call)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    [tool_call] = choice.message.tool_calls
    assert tool_call.function.name == "get_weather"
    assert isinstance(json.loads(tool_call.function.arguments)["city"], str)
    fragments = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert fragments[0].function.name == "get_weather"
    assert json.loads("".join(f.function.arguments or "" for f in fragments))["city"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    sent = json.loads(served.transport.attempts[0].body)
    assert sent["tools"][0]["function"]["name"] == "get_weather"


async def test_openai_sdk_embeddings_in_base64_and_float() -> None:
    async with serving() as served:

        def call() -> tuple[Any, Any]:
            with served.openai() as client:
                default = client.embeddings.create(model="default", input=["a b", "c"])
                floats = client.embeddings.create(
                    model="default", input="one text", encoding_format="float"
                )
                return default, floats

        default, floats = await in_thread(call)
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 8  # the fake's default dimensions
    assert all(isinstance(x, float) for x in default.data[0].embedding)
    assert default.usage.prompt_tokens == served.transport.attempts[0].usage_reported.input_tokens  # type: ignore[union-attr]
    [only] = floats.data
    assert len(only.embedding) == 8
    assert floats.model == "fake-model"


async def test_openai_sdk_lists_every_routable_model_and_retrieves_one() -> None:
    async with serving(connection={"serves": ["gpt-*", "exact-name"]}) as served:

        def call() -> tuple[list[Any], Any, Any]:
            with served.openai() as client:
                listed = list(client.models.list())
                by_glob = client.models.retrieve("gpt-4o")
                with pytest.raises(openai.NotFoundError) as info:
                    client.models.retrieve("nothing-serves-this")
                return listed, by_glob, info.value

        listed, by_glob, missing = await in_thread(call)
    assert [(m.id, m.owned_by) for m in listed] == [
        ("default", "switchboard"),
        ("fast", "local"),
        ("fake-model", "local"),
        ("exact-name", "local"),
    ]
    assert by_glob.id == "gpt-4o"
    assert missing.status_code == 404


# --------------------------------------------------------------------------- anthropic SDK


async def test_anthropic_sdk_messages_and_stream() -> None:
    async with serving() as served:

        def call() -> tuple[Any, list[str], Any]:
            with served.anthropic() as client:
                message = client.messages.create(
                    model="default",
                    max_tokens=100,
                    system="be brief",
                    messages=MESSAGES,
                )
                with client.messages.stream(
                    model="default", max_tokens=100, system="be brief", messages=MESSAGES
                ) as stream:
                    texts = list(stream.text_stream)
                    final = stream.get_final_message()
                return message, texts, final

        message, texts, final = await in_thread(call)
    assert message.type == "message"
    assert message.stop_reason == "end_turn"
    [block] = message.content
    assert block.type == "text"
    assert "".join(texts) == block.text
    assert final.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == usage_of(served, 0)
    assert (final.usage.input_tokens, final.usage.output_tokens) == usage_of(served, 1)
    sent = json.loads(served.transport.attempts[0].body)
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}


async def test_async_anthropic_sdk_streams_on_trio() -> None:
    async with (
        serving() as served,
        served.async_anthropic() as client,
        client.messages.stream(model="fast", max_tokens=50, messages=MESSAGES) as stream,
    ):
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == final.content[0].text  # type: ignore[union-attr]


async def test_anthropic_sdk_errors_are_its_own() -> None:
    async with serving() as served:

        def call() -> tuple[Any, Any]:
            with (
                served.anthropic(token="wrong") as bad,
                pytest.raises(anthropic.AuthenticationError) as auth,
            ):
                bad.messages.create(model="default", max_tokens=10, messages=MESSAGES)
            with served.anthropic() as client, pytest.raises(anthropic.NotFoundError) as nf:
                client.messages.create(model="nope", max_tokens=10, messages=MESSAGES)
            return auth.value, nf.value

        auth, missing = await in_thread(call)
    assert auth.body["type"] == "error"
    assert auth.body["error"]["type"] == "authentication_error"
    assert missing.body["error"]["type"] == "not_found_error"
    assert "nope" in missing.body["error"]["message"]


# --------------------------------------------------------------------------- error statuses


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


async def test_401_for_a_missing_or_wrong_token() -> None:
    async with serving() as served:

        def call() -> list[openai.APIStatusError]:
            out = []
            with served.openai("wrong") as client:
                with pytest.raises(openai.AuthenticationError) as info:
                    client.chat.completions.create(model="default", messages=MESSAGES)
                out.append(info.value)
                with pytest.raises(openai.AuthenticationError) as info:
                    client.models.list()
                out.append(info.value)
            return out

        errors = await in_thread(call)
        async with httpx.AsyncClient(base_url=served.url) as http:
            missing = await http.post(
                "/v1/chat/completions", json={"model": "default", "messages": MESSAGES}
            )
        assert served.transport.attempts == []
    for exc in errors:
        assert exc.status_code == 401
        assert error_of(exc)["code"] == "invalid_api_key"
        assert exc.response.headers["www-authenticate"] == "Bearer"
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"


async def test_400_names_the_field() -> None:
    async with serving() as served:

        def call() -> list[openai.APIStatusError]:
            out = []
            bad: list[dict[str, Any]] = [
                {"max_tokens": -4},
                {"temperature": 7},
                {"messages": []},
                {"extra_body": {"stop": 3}},
                {"n": 2},
            ]
            with served.openai() as client:
                for fields in bad:
                    kwargs: dict[str, Any] = {"model": "default", "messages": MESSAGES, **fields}
                    with pytest.raises(openai.BadRequestError) as info:
                        client.chat.completions.create(**kwargs)
                    out.append(info.value)
                with pytest.raises(openai.BadRequestError) as info:
                    client.embeddings.create(model="default", input=[])
                out.append(info.value)
            return out

        errors = await in_thread(call)
        assert served.transport.attempts == []  # refused at the door
    params = [error_of(e)["param"] for e in errors]
    assert params == ["max_tokens", "temperature", "messages", "stop", "n", "input"]
    assert all(error_of(e)["type"] == "invalid_request_error" for e in errors)
    assert "max_tokens must be >= 1" in error_of(errors[0])["message"]


async def test_404_for_an_unknown_model() -> None:
    async with serving() as served:

        def call() -> openai.APIStatusError:
            with served.openai() as client, pytest.raises(openai.NotFoundError) as info:
                client.chat.completions.create(model="no-such-model", messages=MESSAGES)
            return info.value

        exc = await in_thread(call)
    error = error_of(exc)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize(
    ("setup", "status", "code", "error_class"),
    [
        (
            {"plan": FaultPlan.always(ServerError(status=500))},
            502,
            "server_error",
            openai.InternalServerError,
        ),
        (
            {"plan": FaultPlan.always(ServerError(status=503))},
            503,
            "overloaded",
            openai.InternalServerError,
        ),
        (
            {
                "plan": FaultPlan.always(NoResponse()),
                "connection": {"timeouts": TimeoutConfig(first_token=0.3)},
            },
            504,
            "timeout",
            openai.InternalServerError,
        ),
        (
            {"plan": FaultPlan.always(RateLimited(retry_after=30.0))},
            429,
            "rate_limit_exceeded",
            openai.RateLimitError,
        ),
    ],
    ids=["500->502", "503->503", "timeout->504", "429->429"],
)
async def test_provider_failures_get_their_status(
    setup: dict[str, Any], status: int, code: str, error_class: type[openai.APIStatusError]
) -> None:
    errors = []
    for stream in (False, True):  # a stream that fails before its first chunk: same status
        async with serving(**setup) as served:

            def call(stream: bool = stream) -> openai.APIStatusError:
                with served.openai() as client, pytest.raises(error_class) as info:
                    client.chat.completions.create(
                        model="default",
                        messages=MESSAGES,
                        stream=stream,
                        extra_body={"switchboard": {"timeout": 5}},
                    )
                return info.value

            errors.append(await in_thread(call))
    for exc in errors:
        assert exc.status_code == status
        assert error_of(exc)["code"] == code
        if status == 429:
            assert exc.response.headers["retry-after"] == "30"


async def test_503_with_retry_after_when_every_breaker_is_open() -> None:
    async with serving() as served:
        served.rt.connection("local").force_open()

        def call() -> openai.APIStatusError:
            with served.openai() as client, pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="default", messages=MESSAGES)
            return info.value

        exc = await in_thread(call)
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{served.url}/readyz")
    assert exc.status_code == 503
    assert error_of(exc)["code"] == "circuit_open"
    assert ready.status_code == 503
    assert ready.json()["status"] == "down"


async def test_429_with_retry_after_from_the_clients_own_limits() -> None:
    clients = {
        "team": ClientConfig(token=Secret("team-token"), requests_per_minute=1),
        "narrow": ClientConfig(token=Secret("narrow-token"), models=["fast"]),
    }
    async with serving(gateway={"clients": clients}) as served:

        def call() -> tuple[Any, openai.APIStatusError, openai.APIStatusError]:
            with served.openai("team-token") as team:
                first = team.chat.completions.create(model="default", messages=MESSAGES)
                with pytest.raises(openai.RateLimitError) as limited:
                    team.chat.completions.create(model="default", messages=MESSAGES)
            with served.openai("narrow-token") as narrow:
                narrow.chat.completions.create(model="fast", messages=MESSAGES)
                with pytest.raises(openai.PermissionDeniedError) as denied:
                    narrow.chat.completions.create(model="default", messages=MESSAGES)
            return first, limited.value, denied.value

        first, limited, denied = await in_thread(call)
        stats = served.rt.gateway.clients.statistics()  # type: ignore[union-attr]
    assert first.choices[0].message.content
    assert limited.status_code == 429
    assert 1 <= int(limited.response.headers["retry-after"]) <= 60
    assert denied.status_code == 403
    assert error_of(denied)["type"] == "permission_error"
    assert len(served.transport.attempts) == 2  # the refused ones never reached the provider
    assert stats["team"].completions == 1


# --------------------------------------------------------------------------- cancellation


async def test_a_client_that_leaves_mid_stream_cancels_the_upstream_attempt() -> None:
    async with serving(answer_tokens=400, token_interval=0.02) as served:
        async with served.async_openai() as client:
            stream = await client.chat.completions.create(
                model="default", messages=MESSAGES, stream=True
            )
            received = 0
            async for chunk in stream:
                received += bool(chunk.choices and chunk.choices[0].delta.content)
                if received == 3:
                    break
            await stream.close()
        await until(lambda: served.transport.attempts[0].outcome is not None)
        record = served.transport.attempts[0]
        http = face_of(served)
        await until(lambda: http.statistics().in_flight == 0)
        face = http.statistics()
        metrics = served.rt.metrics()
    assert record.outcome == "client_closed"
    assert record.tokens_emitted < 400
    assert face.disconnects == 1
    assert metrics.failures == {"cancelled": 1}


async def test_a_client_that_leaves_a_non_streamed_request_cancels_it() -> None:
    async with serving(plan=FaultPlan.always(NoResponse())) as served:
        with trio.move_on_after(0.5):
            async with served.async_openai() as client:
                await client.chat.completions.create(model="default", messages=MESSAGES)
        await until(lambda: served.transport.attempts[0].outcome is not None)
        assert served.transport.attempts[0].outcome == "hung"  # the client went away
        await until(lambda: served.rt.metrics().failures == {"cancelled": 1})
        assert face_of(served).statistics().disconnects == 1


# --------------------------------------------------------------------------- bad input


BAD_INPUT = [
    # (method, path, headers, body, status, param, words in the message)
    ("POST", "/v1/chat/completions", {}, b"{bad json", 400, None, "not valid JSON"),
    ("POST", "/v1/chat/completions", {}, b"", 400, None, "body is empty"),
    ("POST", "/v1/chat/completions", {}, b"[1, 2]", 400, None, "must be a JSON object"),
    ("POST", "/v1/chat/completions", {}, b'{"messages": []}', 400, "model", "required"),
    (
        "POST",
        "/v1/chat/completions",
        {},
        b'{"model": 5, "messages": []}',
        400,
        "model",
        "expected `str`",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {},
        b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}',
        400,
        "messages[0].role",
        "wizard",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {},
        b'{"model": "default", "messages": [{"role": "user", "content": "x"}], '
        b'"max_tokens": 100000000000000000000000000000}',
        400,
        "max_tokens",
        "max_tokens must be <=",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {},
        b'{"model": "m", "messages": [], "temperature": 1e999}',
        400,
        None,
        "not valid JSON",
    ),
    ("POST", "/v1/chat/completions", {}, b"[" * 100_000, 400, None, ""),
    ("POST", "/v1/chat/completions", {}, b"\xff\xfe\x00garbage", 400, None, "not valid JSON"),
    (
        "POST",
        "/v1/chat/completions",
        {"content-type": "application/x-www-form-urlencoded"},
        b"model=default",
        415,
        None,
        "application/json",
    ),
    ("POST", "/v1/chat/completions", {}, b" " * 2_000_000, 413, None, "max_frame_bytes"),
    ("GET", "/v1/chat/completions", {}, b"", 405, None, "use POST"),
    ("DELETE", "/v1/models", {}, b"", 405, None, "use GET"),
    ("GET", "/v1/nothing", {}, b"", 404, None, "unknown path"),
    ("POST", "/chat/completions", {}, b"{}", 404, None, "did you mean /v1/chat/completions"),
    (
        "POST",
        "/v1/embeddings",
        {},
        b'{"model": "default", "input": [[1, 2, 3]]}',
        400,
        "input[0]",
        "token arrays",
    ),
    (
        "POST",
        "/v1/chat/completions",
        {},
        b'{"model": "default", "messages": [{"role": "assistant", "content": null, '
        b'"tool_calls": [{"id": "c", "type": "function", '
        b'"function": {"name": "f", "arguments": "{oops"}}]}]}',
        400,
        "messages[0].tool_calls[0].function.arguments",
        "JSON object",
    ),
]


async def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving() -> None:
    async with serving() as served, httpx.AsyncClient(base_url=served.url) as http:
        auth = {"authorization": f"Bearer {TOKEN}"}
        for method, path, headers, body, status, param, words in BAD_INPUT:
            response = await http.request(method, path, content=body, headers={**auth, **headers})
            assert response.status_code == status, (path, body[:60], response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["param"] == param, (body[:60], error)
            assert words in error["message"], (body[:60], error)
        anthropic_error = await http.post("/v1/messages", content=b"{", headers=auth)
        assert anthropic_error.status_code == 400
        assert anthropic_error.json()["type"] == "error"
        assert anthropic_error.json()["error"]["type"] == "invalid_request_error"
        ok = await http.post(
            "/v1/chat/completions",
            json={"model": "default", "messages": MESSAGES},
            headers=auth,
        )
        assert ok.status_code == 200
        assert served.transport.attempts[-1].index == 0  # only the sound request went out
        metrics = await http.get("/metrics", headers=auth)
    assert metrics.status_code == 200
    assert 'switchboard_http_responses_total{status="400"}' in metrics.text
    assert "switchboard_routed_requests_total" in metrics.text


async def test_not_http_at_all_is_answered_and_the_port_keeps_serving_both_protocols() -> None:
    async with serving() as served:
        port = int(served.url.rsplit(":", 1)[1])
        for garbage in (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
            b"HELLO\r\n\r\n",
        ):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(garbage)
                answer = b""
                with trio.move_on_after(5):
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
            assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{served.url}/healthz")
            ready = await http.get(f"{served.url}/readyz")
        assert health.status_code == 200
        assert ready.status_code == 200
        assert ready.json()["connections"][0]["name"] == "local"
        assert served.rt.gateway is not None
        async with Client.connect(served.rt.gateway.url, token=TOKEN) as ws:
            request = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])
            completion = await ws.chat(request)
        assert completion.text


async def test_metrics_need_the_token_and_health_probes_do_not() -> None:
    async with serving() as served, httpx.AsyncClient(base_url=served.url) as http:
        refused = await http.get("/metrics")
        health = await http.get("/healthz")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert health.json() == {"status": "alive"}


# --------------------------------------------------------------------------- switchboard serve


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("OLLAMA_HOST", None)
    env.pop("SWITCHBOARD_TOKEN", None)
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    return env


def test_the_openai_sdk_against_a_real_switchboard_serve(
    env: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "switchboard" / "gateway.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "supervisors._cli", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not state.exists():
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "serve did not announce itself in 30 s"
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written whole, but give the writer a moment
        announced = json.loads(state.read_text())
        base = "http" + announced["url"].removeprefix("ws") + "/v1"
        with openai.OpenAI(base_url=base, api_key=announced["token"], max_retries=0) as client:
            completion = client.chat.completions.create(
                model="local", messages=[{"role": "user", "content": "hello"}]
            )
            stream = client.chat.completions.create(
                model="local",
                messages=[{"role": "user", "content": "hello"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            with stream:
                chunks = list(stream)
            models = [m.id for m in client.models.list()]
            vectors = client.embeddings.create(model="local", input="hello")
        with (
            openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.models.list()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    text = completion.choices[0].message.content
    assert text
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == completion.usage.completion_tokens
    assert "local" in models
    assert vectors.data[0].embedding
    assert server.returncode == 0, output
    assert f"OpenAI-compatible API on {base}" in output


async def test_http_false_leaves_the_port_to_the_websocket_gateway() -> None:
    async with serving(gateway={"http": False}) as served:
        assert served.rt.gateway is not None
        assert served.rt.gateway.http is None
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.HTTPError):  # no HTTP API: the handshake is refused
                response = await http.get(f"{served.url}/v1/models", timeout=5)
                response.raise_for_status()
        async with Client.connect(served.rt.gateway.url, token=TOKEN) as ws:
            request = ChatRequest(model="fast", messages=[Message(role="user", content="hi")])
            assert (await ws.chat(request)).text


async def test_an_sse_response_names_its_content_type_once() -> None:
    """One ``content-type`` header on a streamed answer (it was sent twice)."""
    body = {"model": "default", "messages": MESSAGES, "stream": True}
    auth = {"authorization": f"Bearer {TOKEN}"}
    async with (
        serving() as served,
        httpx.AsyncClient(base_url=served.url) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=auth) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers.get_list("content-type") == ["text/event-stream; charset=utf-8"]
        assert b"data: [DONE]" in await resp.aread()
