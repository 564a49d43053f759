"""A provider that echoes the API key in its 401 never makes the key visible to anyone.

A real loopback HTTP server (h11 on trio, port 0) answers every request with a 401 in the
dialect's error shape whose message repeats the credential header it received - whole, and a
truncated piece of it, as providers and proxies do. The runtime (with its gateway) talks to it
for each dialect, and the key must appear nowhere: not in the `Failure` (message, code, repr,
JSON), not in `RequestFailed`, not in a stream's result, not in `probe()`, not in what a
gateway client receives, not in metrics, not in logs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import h11
import msgspec
import pytest
import trio

from actors import Client
from protocol import ChatRequest, Failure, Message, RequestFailed, loads_config
from protocol._config import ProviderName
from supervisors import open_runtime

KEY = "sk-ant-api03-Qm7Rk2Vx9Lp4Tz8Wn3Bc6Hd1Jf5Gs0Ye"
TOKEN = "gateway-t0ken"
DIALECTS: tuple[ProviderName, ...] = ("openai", "anthropic", "gemini", "ollama")
PATHS = {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta", "ollama": ""}
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


def echo_body(dialect: ProviderName, credential: str) -> bytes:
    """The dialect's 401 body, echoing *credential* whole and a 15-character piece of it."""
    said = f"Incorrect API key provided: {credential}. (starts {credential[:15]}...)"
    if dialect == "openai":
        body: object = {
            "error": {"message": said, "type": "invalid_request_error", "code": "invalid_api_key"}
        }
    elif dialect == "anthropic":
        body = {"type": "error", "error": {"type": "authentication_error", "message": said}}
    elif dialect == "gemini":
        body = {"error": {"code": 401, "message": said, "status": "UNAUTHENTICATED"}}
    else:
        body = {"error": said}
    return msgspec.json.encode(body)


async def echo_401(dialect: ProviderName, echoed: list[bytes], stream: trio.SocketStream) -> None:
    """Serve one HTTP/1.1 connection: read each request, answer it with the echoing 401."""
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            headers: dict[str, str] = {}
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            credential = next((headers[h] for h in CREDENTIAL_HEADERS if h in headers), "")
            body = echo_body(dialect, credential)
            echoed.append(body)
            head = h11.Response(
                status_code=401,
                headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
            )
            await stream.send_all(conn.send(head) + conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()


@asynccontextmanager
async def echo_server(dialect: ProviderName) -> AsyncIterator[tuple[str, list[bytes]]]:
    """The server's base URL for *dialect*, and the bodies it sent."""
    echoed: list[bytes] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(echo_401, dialect, echoed), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}{PATHS[dialect]}", echoed
        nursery.cancel_scope.cancel()


def runtime_config(dialect: ProviderName, base_url: str) -> str:
    return f"""
[connections.p]
provider = "{dialect}"
base_url = "{base_url}"
api_key = "{KEY}"
default_model = "m"

[gateway]
host = "127.0.0.1"
port = 0
tokens = ["{TOKEN}"]
"""


def shows_key(text: str) -> bool:
    """Whether *text* holds the key or any 10-character piece of it."""
    return any(KEY[i : i + 10] in text for i in range(len(KEY) - 9))


def views(failure: Failure) -> list[str]:
    return [
        failure.message,
        failure.code or "",
        repr(failure),
        msgspec.json.encode(failure).decode(),
        str(RequestFailed(failure)),
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_key_echoed_by_the_provider_never_leaves_the_runtime(
    dialect: ProviderName, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    failures: list[Failure] = []
    with trio.fail_after(30):
        async with (
            echo_server(dialect) as (url, echoed),
            open_runtime(loads_config(runtime_config(dialect, url))) as rt,
        ):
            with pytest.raises(RequestFailed) as direct:
                await rt.chat(request)
            failures.append(direct.value.failure)
            async with rt.stream(request) as s:
                async for _ in s:
                    pass
            assert isinstance(s.result, Failure)
            failures.append(s.result)
            probe = await rt.probe("p")
            assert probe.failure is not None
            failures.append(probe.failure)
            assert rt.gateway is not None
            async with Client.connect(rt.gateway.url, token=TOKEN) as client:
                with pytest.raises(RequestFailed) as remote:
                    await client.chat(request)
                failures.append(remote.value.failure)
                async with client.stream(request) as cs:
                    async for _ in cs:
                        pass
                assert isinstance(cs.result, Failure)
                failures.append(cs.result)
            metrics = rt.metrics()
    # The provider really echoed the key, every time.
    assert len(echoed) == 5
    assert all(KEY.encode() in body for body in echoed)
    for failure in failures:
        assert failure.kind.value == "auth"
        assert "Incorrect API key provided" in failure.message
        assert "[redacted]" in failure.message
        for text in views(failure):
            assert not shows_key(text), text
    assert not shows_key(str(direct.value))
    assert not shows_key(str(remote.value))
    assert not shows_key(repr(probe))
    assert not shows_key(metrics.prometheus())
    assert not shows_key(repr(metrics))
    assert not shows_key(caplog.text)
