"""The gateway under overload, and what it logs: ``max_connections`` over real loopback
sockets, the out-of-file-descriptors path of the accept loop with a fake listener (virtual
clock, no sockets), and the one log line per failed request.

Real-socket tests run on the real clock under ``trio.fail_after``, like ``test_gateway.py``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from actors._client import Client, GatewayError
from actors._gateway import Gateway
from actors.testing import FakeTransport, FaultPlan, Latency, Unauthorized
from protocol._config import GatewayConfig, Secret
from protocol._config_load import loads_config
from protocol._errors import RequestFailed
from protocol._messages import ChatRequest, Message
from supervisors._runtime import open_runtime
from supervisors._serving import start_gateway

TOKEN = "gw-token-5ecret-0123"
API_KEY = "sk-conn-key-5ecret-4567"
PROMPT = "a prompt that must stay out of the logs"
CONFIG = f"""
[runtime]
shutdown_timeout_s = 1.0

[connections.local]
provider = "openai"
base_url = "http://fake/v1"
api_key = "{API_KEY}"
default_model = "fake-model"
"""
LIMIT = 15  # seconds: every real-socket test ends well within this


@asynccontextmanager
async def serving(
    transport: FakeTransport | None = None, **gateway_options: Any
) -> AsyncIterator[Gateway]:
    """A runtime on *transport* with a gateway on a free loopback port (token ``TOKEN``)."""
    options: dict[str, Any] = {"port": 0, "tokens": [Secret(TOKEN)], **gateway_options}
    transport = transport if transport is not None else FakeTransport(seed=1)
    async with (
        open_runtime(loads_config(CONFIG), transport=transport) as rt,
        trio.open_nursery() as nursery,
    ):
        gateway = await start_gateway(rt, nursery, GatewayConfig(**options))
        try:
            yield gateway
        finally:
            nursery.cancel_scope.cancel()


def chat(prompt: str = "hi") -> ChatRequest:
    return ChatRequest(model="fake-model", messages=[Message(role="user", content=prompt)])


def gateway_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "switchboard.gateway"]


# --------------------------------------------------------------------------- max_connections


async def test_connections_beyond_max_connections_are_refused_and_the_others_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="switchboard.gateway")
    with trio.fail_after(LIMIT):
        async with (
            serving(max_connections=2) as gateway,
            Client.connect(gateway.url, token=TOKEN) as first,
            Client.connect(gateway.url, token=TOKEN) as second,
        ):
            for _ in range(2):
                with pytest.raises(GatewayError) as info:
                    async with Client.connect(gateway.url, token=TOKEN, connect_timeout=5):
                        pytest.fail("a third connection was served")  # pragma: no cover
                refusal = "refused the WebSocket upgrade with HTTP 503: too many connections"
                assert refusal in str(info.value)
            assert (await first.chat(chat())).text
            assert (await second.chat(chat())).text
            stats = gateway.statistics()
            assert (stats.connections, stats.refused_connections) == (2, 2)
            assert stats.sessions_total == 2  # the refused ones never reached a handshake
    [line] = [r for r in gateway_records(caplog) if "refusing connections" in r.getMessage()]
    assert "2 open, the [gateway] max_connections limit (1 refused so far)" in line.getMessage()
    assert line.exc_info is None


async def test_a_closed_connection_frees_its_place() -> None:
    with trio.fail_after(LIMIT):
        async with serving(max_connections=1) as gateway:
            async with Client.connect(gateway.url, token=TOKEN) as client:
                await client.chat(chat())
            while gateway.statistics().connections:  # noqa: ASYNC110 - the server's own count
                await trio.sleep(0.005)
            async with Client.connect(gateway.url, token=TOKEN) as client:
                assert (await client.chat(chat())).text
            assert gateway.statistics().refused_connections == 0


# --------------------------------------------------------------------------- accept errors


class _NoSocket:
    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 4242)


class _OutOfFiles(trio.abc.Listener[trio.SocketStream]):
    """A listener whose every accept fails as a process out of file descriptors does."""

    socket = _NoSocket()

    def __init__(self) -> None:
        self.accepts = 0

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        self.accepts += 1
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _NoBackend:
    pass


async def test_out_of_file_descriptors_logs_one_line_per_10s_and_no_traceback(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = _OutOfFiles()

    async def open_tcp_listeners(port: int, *, host: str) -> list[_OutOfFiles]:
        return [listener]

    monkeypatch.setattr(trio, "open_tcp_listeners", open_tcp_listeners)
    caplog.set_level(logging.DEBUG)
    gateway = Gateway(_NoBackend(), GatewayConfig(port=0))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await trio.sleep(5)
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1  # fifty failed accepts so far
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert listener.accepts > 200
    assert gateway.statistics().accept_errors == listener.accepts
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in lines] == ["switchboard.gateway"] * 3  # at 0 s, 10 s and 20 s
    assert all(r.exc_info is None for r in lines)
    first = lines[0].getMessage()
    assert first.startswith("cannot accept connections: EMFILE (Too many open files)")
    assert "raise the open-file limit (ulimit -n, now " in first
    assert "or lower [gateway] max_connections (now 1024)" in first
    assert "more failed accept(s) since the last report" not in first
    # The other accepts of each 10 s (one per 0.1 s) are counted in the next line.
    later = [re.search(r"\((\d+) more failed accept\(s\) since", r.getMessage()) for r in lines[1:]]
    assert all(m is not None and 98 <= int(m[1]) <= 100 for m in later), later
    assert "\n" not in first


# --------------------------------------------------------------------------- failure log


async def test_a_failed_request_logs_one_line_with_its_context_and_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="switchboard.gateway")
    transport = FakeTransport(plan=FaultPlan.always(Unauthorized()), seed=1)
    with trio.fail_after(LIMIT):
        async with serving(transport) as gateway, Client.connect(gateway.url, token=TOKEN) as c:
            request = ChatRequest(
                model="fake-model",
                messages=[Message(role="user", content=PROMPT)],
                request_id="req-42",
            )
            with pytest.raises(RequestFailed) as info:
                await c.chat(request)
            assert info.value.failure.kind.value == "auth"
            assert (await c.status()).status  # the socket is still fine
    lines = [r for r in gateway_records(caplog) if "listening on" not in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    [line] = lines
    text = line.getMessage()
    assert line.levelno == logging.WARNING
    assert line.exc_info is None
    assert text.startswith("request req-42 from 127.0.0.1:")
    assert "failed: auth (model fake-model, connection local): " in text
    assert "\n" not in text
    fields = {k: getattr(line, k) for k in ("request_id", "model", "error_kind", "connection")}
    assert fields == {
        "request_id": "req-42",
        "model": "fake-model",
        "error_kind": "auth",
        "connection": "local",
    }
    assert line.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    everything = text + repr(vars(line))
    for secret in (TOKEN, API_KEY, PROMPT):
        assert secret not in everything
    assert "5ecret" not in everything  # not even a masked fragment of either


async def test_a_request_refused_by_the_per_client_limit_is_logged_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="switchboard.gateway")
    slow = FakeTransport(plan=FaultPlan.always(Latency(seconds=0.3)), seed=1)
    with trio.fail_after(LIMIT):
        async with (
            serving(slow, max_concurrent_per_client=1) as gateway,
            Client.connect(gateway.url, token=TOKEN) as c,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(c.chat, chat())
            while not gateway.statistics().in_flight:  # noqa: ASYNC110 - the server's count
                await trio.sleep(0.005)
            with pytest.raises(RequestFailed) as info:
                await c.chat(chat(PROMPT))
            assert info.value.failure.kind.value == "queue_full"
    [line] = [r for r in gateway_records(caplog) if "listening on" not in r.getMessage()]
    assert "failed: queue_full (model fake-model, connection -): at most 1" in line.getMessage()
    assert PROMPT not in line.getMessage()
