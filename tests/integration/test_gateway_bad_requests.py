"""Bad request data over the WebSocket gateway (real loopback sockets): every frame with a bad
field gets its own ``bad_request`` failure naming the field, in the client's encoding; the
session, the gateway and every provider actor keep serving.

The regression: ``switchboard chat --max-tokens -5 hi`` four times stopped the server (each
crashed connection ``local`` until the supervisor gave up).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
import trio
import trio_websocket as tw

from actors._client import Client
from protocol._errors import ErrorKind, RequestFailed
from protocol._frames import (
    SUBPROTOCOL_MSGPACK,
    Accepted,
    Done,
    FailureFrame,
    ServerFrame,
    decode_server_frame,
)
from protocol._messages import Completion, Failure
from tests.integration.test_gateway import LIMIT, TOKEN, chat, raw, serving

HI = [{"role": "user", "content": "hi"}]


async def terminal(ws: tw.WebSocketConnection) -> ServerFrame:
    """The next frame that is not an `Accepted` (the gateway accepts a decodable call
    first, then ends it)."""
    while True:
        frame = decode_server_frame(await ws.get_message())
        if not isinstance(frame, Accepted):
            return frame


def call(id: str, **request: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-model", "messages": HI, **request}
    return {"type": "chat", "id": id, "request": body, "stream": False}


# (what is sent, a phrase the failure must contain)
BAD_CHATS: list[tuple[dict[str, Any], str]] = [
    (call("neg", max_tokens=-5), "max_tokens must be >= 1"),
    (call("zero", max_tokens=0), "max_tokens must be >= 1"),
    (call("huge", max_tokens=10**15), "max_tokens must be <= 1,000,000"),
    (call("float", max_tokens=2.5), "Expected `int | null`"),
    (call("empty", messages=[]), "messages must hold at least one message"),
    (call("role", messages=[{"role": "wizard", "content": "x"}]), "Invalid enum value 'wizard'"),
    (call("temp", temperature=-1), "temperature must be a number from 0 to 2"),
    (call("temp-big", temperature=2.5), "temperature must be a number from 0 to 2"),
    (call("top-p", top_p=7), "top_p must be a number from 0 to 1"),
    (call("n", extra={"n": 1_000_000}), "extra.n must be 1"),
    (call("stop", stop=[""]), "stop[0] must be a non-empty string"),
    (call("timeout", timeout=-3), "timeout must be a finite number of seconds >= 0"),
    (call("model", model=""), "model must be a non-empty string"),
    (call("type", model=5), "Expected `str`, got `int`"),
    (call("tool", tool_choice="ghost"), "tool_choice names tool 'ghost'"),
]


async def test_every_bad_field_gets_its_own_bad_request_and_the_gateway_keeps_serving() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s, raw(s.url) as ws:
            for _round in range(3):  # more than restart intensity, many times over
                for frame, phrase in BAD_CHATS:
                    await ws.send_message(msgspec.json.encode(frame).decode())
                    reply = await terminal(ws)
                    assert isinstance(reply, FailureFrame), reply
                    assert reply.id == frame["id"]
                    assert reply.failure.kind is ErrorKind.BAD_REQUEST, reply.failure
                    assert phrase in reply.failure.message, reply.failure.message
            # The same session still answers a sound request.
            await ws.send_message(msgspec.json.encode(call("ok", max_tokens=5)).decode())
            done = await terminal(ws)
            assert isinstance(done, Done)
            assert isinstance(done.result, Completion)
            health = s.runtime.health()
            assert [(h.running, h.incarnation) for h in health.connections] == [(True, 1)]
            assert s.runtime.metrics().failures.get("crashed", 0) == 0


async def test_nan_and_infinity_over_messagepack_are_refused() -> None:
    """JSON has no NaN; MessagePack carries any float."""
    with trio.fail_after(LIMIT):
        async with serving() as s, raw(s.url, subprotocol=SUBPROTOCOL_MSGPACK) as ws:
            for i, value in enumerate([math.nan, math.inf, -math.inf]):
                for field in ("temperature", "top_p", "timeout"):
                    frame = call(f"{field}-{i}", **{field: value})
                    await ws.send_message(msgspec.msgpack.encode(frame))
                    reply = await terminal(ws)
                    assert isinstance(reply, FailureFrame), reply
                    assert reply.failure.kind is ErrorKind.BAD_REQUEST
                    assert field in reply.failure.message
            assert [h.incarnation for h in s.runtime.health().connections] == [1]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_the_python_client_raises_the_typed_failure(encoding: Any) -> None:
    with trio.fail_after(LIMIT):
        async with serving() as s, Client.connect(s.url, token=TOKEN, encoding=encoding) as c:
            for _ in range(5):
                with pytest.raises(RequestFailed) as caught:
                    await c.chat(chat(max_tokens=-5))
                assert caught.value.failure.kind is ErrorKind.BAD_REQUEST
                assert "max_tokens must be >= 1, got -5" in caught.value.failure.message
                async with c.stream(chat(temperature=-0.5)) as st:
                    assert [event async for event in st] == []
                assert isinstance(st.result, Failure)
                assert st.result.kind is ErrorKind.BAD_REQUEST
                assert "temperature must be a number from 0 to 2" in st.result.message
            completion = await c.chat(chat(max_tokens=3))
            assert completion.connection == "local"
            assert [h.incarnation for h in s.runtime.health().connections] == [1]


async def test_a_bad_request_over_the_cli_path_does_not_stop_the_server() -> None:
    """What `switchboard chat --max-tokens -5` sends: a streamed chat frame."""
    with trio.fail_after(LIMIT):
        async with serving() as s:
            for _ in range(6):
                async with Client.connect(s.url, token=TOKEN) as c, c.stream(
                    chat(max_tokens=-5)
                ) as st:
                    assert [event async for event in st] == []
                assert isinstance(st.result, Failure)
                assert st.result.kind is ErrorKind.BAD_REQUEST
            async with Client.connect(s.url, token=TOKEN) as c:
                assert (await c.chat(chat())).text
            assert [h.incarnation for h in s.runtime.health().connections] == [1]
