"""Per-client tokens (virtual keys) at the WebSocket gateway, over real loopback sockets.

Each test runs ``open_runtime`` with a ``[gateway]`` on 127.0.0.1 port 0 and
``[gateway.clients.*]`` (the way ``switchboard serve`` runs), the provider side on the
in-memory `FakeTransport`. Real clock, short timings, every test under ``trio.fail_after``;
``retry_after`` values are checked to the elapsed real time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
import trio
import trio_websocket as tw

from actors._client import Client
from actors._gateway import Gateway
from actors.testing import FakeTransport, FaultPlan, Latency
from protocol._config_load import loads_config
from protocol._errors import ErrorKind, RequestFailed
from protocol._frames import (
    Accepted,
    Cancel,
    ChatCall,
    Done,
    EventFrame,
    FailureFrame,
    Hello,
    Welcome,
    decode_server_frame,
)
from protocol._messages import ChatRequest, Completion, Message, TextDelta
from supervisors._runtime import Runtime, open_runtime
from tests.integration.test_gateway import close_code, raw, send

LIMIT = 15
TOKENS = {
    "ADMIN_TOKEN": "tok-admin-1f3e5d7c",
    "SLOW_TOKEN": "tok-slow-2a4b6c8d",
    "FAST_TOKEN": "tok-fast-9e8d7c6b",
    "THRIFTY_TOKEN": "tok-thrifty-0a1b2c3d",
}
CONFIG = """
[runtime]
shutdown_timeout_s = 1.0

[connections.local]
provider = "openai"
base_url = "http://fake/v1"
default_model = "fake-model"
prices = { fake-model = { input = 1000.0, output = 1000.0 } }   # $0.001 a token

[routes.fast]
targets = [{ connection = "local", model = "fake-model" }]

[gateway]
port = 0
tokens = ['env("ADMIN_TOKEN")']

[gateway.clients.slow]
token = 'env("SLOW_TOKEN")'
requests_per_minute = 2

[gateway.clients.fast]
token = 'env("FAST_TOKEN")'
requests_per_minute = 600
models = ["fast", "fake-*"]

[gateway.clients.thrifty]
token = 'env("THRIFTY_TOKEN")'
budget_usd = 0.001
budget_period = "day"
"""


@asynccontextmanager
async def serving(transport: FakeTransport | None = None) -> AsyncIterator[Runtime]:
    config = loads_config(CONFIG, env=TOKENS)
    transport = transport if transport is not None else FakeTransport(seed=1)
    async with open_runtime(config, transport=transport) as rt:
        assert rt.gateway is not None
        yield rt


def gateway_of(rt: Runtime) -> Gateway:
    assert rt.gateway is not None
    return rt.gateway


def chat(prompt: str = "hi", model: str = "fake-model", **fields: object) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[Message(role="user", content=prompt)],
        **fields,  # type: ignore[arg-type]
    )


async def test_a_client_over_its_rpm_is_refused_with_retry_after_and_others_keep_working() -> None:
    with trio.fail_after(LIMIT):
        async with (
            serving() as rt,
            Client.connect(gateway_of(rt).url, token=TOKENS["SLOW_TOKEN"]) as slow,
            Client.connect(gateway_of(rt).url, token=TOKENS["FAST_TOKEN"]) as fast,
        ):
            start = trio.current_time()
            await slow.chat(chat("one"))
            await slow.chat(chat("two"))
            with pytest.raises(RequestFailed) as info:
                await slow.chat(chat("three", request_id="req-3"))
            elapsed = trio.current_time() - start
            failure = info.value.failure
            assert failure.kind is ErrorKind.RATE_LIMITED
            assert failure.retryable
            assert failure.code == "rate_limit_exceeded"
            assert failure.request_id == "req-3"
            assert failure.retry_after is not None
            assert 30.0 - elapsed <= failure.retry_after <= 30.0  # one request per 30 s
            assert failure.message.startswith(
                "client 'slow' is over its limit of 2 requests per minute; retry in "
            )
            answers = [await fast.chat(chat(f"fast {i}")) for i in range(5)]  # not held back
            async with fast.stream(chat("streamed", model="fast")) as stream:
                events = [e async for e in stream]
            assert isinstance(stream.result, Completion)
            assert any(isinstance(e, TextDelta) for e in events)
            answers.append(stream.result)
            with pytest.raises(RequestFailed) as info:  # still refused
                await slow.chat(chat("four"))
            assert info.value.failure.kind is ErrorKind.RATE_LIMITED
            stats = gateway_of(rt).clients.statistics()
            assert (stats["slow"].requests, stats["slow"].refused) == (
                2,
                {"requests_per_minute": 2},
            )
            assert (stats["fast"].requests, stats["fast"].completions) == (6, 6)
            assert stats["fast"].in_flight == 0
            assert stats["fast"].output_tokens == sum(a.usage.output_tokens for a in answers) > 0
            assert stats["fast"].cost == pytest.approx(sum(a.cost or 0.0 for a in answers))
            assert gateway_of(rt).statistics().requests == 8  # refusals never started


async def test_a_stream_settles_with_its_final_usage() -> None:
    with trio.fail_after(LIMIT):
        async with (
            serving() as rt,
            Client.connect(gateway_of(rt).url, token=TOKENS["FAST_TOKEN"]) as c,
        ):
            async with c.stream(chat("tell me a story", model="fast")) as stream:
                async for _ in stream:
                    pass
            result = stream.result
            assert isinstance(result, Completion)
            assert result.usage.output_tokens > 0
            stats = gateway_of(rt).clients.statistics()["fast"]
            assert (stats.input_tokens, stats.output_tokens) == (
                result.usage.input_tokens,
                result.usage.output_tokens,
            )
            assert result.cost is not None
            assert stats.cost == pytest.approx(result.cost)
            assert (stats.completions, stats.in_flight) == (1, 0)


async def test_the_allow_list_refuses_other_models_with_permission() -> None:
    with trio.fail_after(LIMIT):
        async with (
            serving() as rt,
            Client.connect(gateway_of(rt).url, token=TOKENS["FAST_TOKEN"]) as c,
        ):
            for request in (chat(model="smart"), chat(model="fast", fallbacks=["smart"])):
                with pytest.raises(RequestFailed) as info:
                    await c.chat(request)
                failure = info.value.failure
                assert failure.kind is ErrorKind.PERMISSION
                assert failure.code == "model_not_allowed"
                assert not failure.retryable
            assert (await c.chat(chat(model="fast"))).text
            assert gateway_of(rt).clients.statistics()["fast"].refused == {"model": 2}


async def test_a_spent_budget_is_refused_until_the_next_day() -> None:
    with trio.fail_after(LIMIT):
        async with (
            serving() as rt,
            Client.connect(gateway_of(rt).url, token=TOKENS["THRIFTY_TOKEN"]) as c,
        ):
            first = await c.chat(chat("a question that costs more than a tenth of a cent"))
            assert first.cost is not None
            assert first.cost >= 0.001
            with pytest.raises(RequestFailed) as info:
                await c.chat(chat("another"))
            failure = info.value.failure
            assert failure.kind is ErrorKind.RATE_LIMITED
            assert failure.code == "budget_exceeded"
            assert not failure.retryable
            assert failure.retry_after is not None
            assert 0.0 < failure.retry_after <= 86_400.0
            assert "client 'thrifty' has spent its budget of 0.001" in failure.message
            assert "this day (it resets at " in failure.message
            stats = gateway_of(rt).clients.statistics()["thrifty"]
            assert stats.spend == pytest.approx(first.cost)
            assert (stats.budget_remaining, stats.refused) == (0.0, {"budget": 1})
            metrics = rt.metrics()
            assert metrics.clients["thrifty"].requests == 1
            text = metrics.prometheus()
            assert 'switchboard_client_requests_total{client="thrifty"} 1' in text
            assert 'switchboard_client_refused_total{client="thrifty",reason="budget"} 1' in text
            assert 'switchboard_client_budget_remaining{client="thrifty"} 0' in text
            assert 'switchboard_client_requests_total{client="tokens[0]"} 0' in text


async def test_wrong_tokens_are_refused_and_the_plain_token_is_unlimited() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as rt:
            url = gateway_of(rt).url
            for token in ("wrong", TOKENS["SLOW_TOKEN"] + "x", TOKENS["SLOW_TOKEN"][:-1]):
                async with raw(url, token=token, hello=False) as ws:  # in the header
                    await send(ws, Hello())
                    code, frames = await close_code(ws)
                    assert (code, frames) == (4401, [])
                async with raw(url, token=None, hello=False) as ws:  # in the hello frame
                    await send(ws, Hello(token=token))
                    code, frames = await close_code(ws)
                    assert (code, frames) == (4401, [])
            assert gateway_of(rt).statistics().rejected_auth == 6
            async with raw(url, token=None, hello=False) as ws:  # a right one in the hello
                await send(ws, Hello(token=TOKENS["SLOW_TOKEN"]))
                assert isinstance(decode_server_frame(await ws.get_message()), Welcome)
            async with Client.connect(url, token=TOKENS["ADMIN_TOKEN"]) as admin:
                for i in range(4):  # more than "slow" may, any model
                    await admin.chat(chat(f"admin {i}", model="fast"))
            stats = gateway_of(rt).clients.statistics()
            assert stats["tokens[0]"].requests == 4
            assert stats["slow"].requests == 0


async def test_a_cancelled_request_is_settled() -> None:
    slow_provider = FakeTransport(plan=FaultPlan.always(Latency(seconds=5.0)), seed=1)
    with trio.fail_after(LIMIT):
        async with (
            serving(slow_provider) as rt,
            raw(gateway_of(rt).url, token=TOKENS["FAST_TOKEN"]) as ws,
        ):
            await send(ws, ChatCall(id="r1", request=chat("wait")))
            assert decode_server_frame(await ws.get_message()) == Accepted(id="r1")
            assert gateway_of(rt).clients.statistics()["fast"].in_flight == 1
            await send(ws, Cancel(id="r1"))
            terminal = decode_server_frame(await ws.get_message())
            assert isinstance(terminal, FailureFrame)
            assert terminal.failure.kind is ErrorKind.CANCELLED
            stats = gateway_of(rt).clients.statistics()["fast"]
            assert (stats.in_flight, stats.failures) == (0, 1)


async def test_the_token_is_in_no_frame_log_line_repr_or_metric(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with trio.fail_after(LIMIT):
        async with serving() as rt:
            url = gateway_of(rt).url
            for name in ("SLOW_TOKEN", "FAST_TOKEN", "THRIFTY_TOKEN"):
                async with raw(url, token=TOKENS[name]) as ws:
                    for i in range(4):  # answers, refusals by RPM, budget and allow-list
                        for request in (chat(f"q{i}"), chat(model="smart")):
                            await send(
                                ws, ChatCall(id=f"{name}-{i}-{request.model}", request=request)
                            )
                            while True:
                                message = await ws.get_message()
                                seen.append(str(message))
                                frame = decode_server_frame(message)
                                if isinstance(frame, Done | FailureFrame):
                                    break
                                assert isinstance(frame, Accepted | EventFrame)
            async with raw(url, token="not-a-token", hello=False) as ws:
                await send(ws, Hello(token="also-not-a-token"))
                with pytest.raises(tw.ConnectionClosed):
                    await ws.get_message()
            stats = gateway_of(rt).clients.statistics(trio.current_time())
            assert sum(sum(s.refused.values()) for s in stats.values()) >= 6
            seen.append(repr(gateway_of(rt).clients))
            seen.append(repr(gateway_of(rt).clients.clients))
            seen.append(repr(stats))
            seen.append(msgspec.json.encode(stats).decode())
            seen.append(rt.metrics().prometheus())
            seen.append(repr(rt.metrics()))
            seen.append(repr(rt.config))
    seen.extend(record.getMessage() + repr(vars(record)) for record in caplog.records)
    assert any("rate_limited" in text for text in seen)
    everything = "\n".join(seen)
    for token in TOKENS.values():
        assert token not in everything
