"""`open_runtime` starts the gateway when the config enables one, and stops it on exit."""

from __future__ import annotations

import pytest
import trio

from actors import Client, GatewayError
from actors.testing import FakeTransport
from protocol import ChatRequest, Message, RequestFailed, loads_config
from supervisors import open_runtime

CONFIG = """
[connections.local]
provider = "openai"
base_url = "http://fake/v1"
default_model = "m"

[gateway]
host = "127.0.0.1"
port = 0
tokens = ["t0ken"]
"""


async def test_configured_gateway_serves_and_stops_with_the_runtime() -> None:
    request = ChatRequest(model="m", messages=[Message(role="user", content="two words")])
    with trio.fail_after(30):
        async with open_runtime(loads_config(CONFIG), transport=FakeTransport(seed=3)) as rt:
            assert rt.gateway is not None
            url = rt.gateway.url
            assert url.startswith("ws://127.0.0.1:")
            async with Client.connect(url, token="t0ken") as client:
                completion = await client.chat(request)
            assert completion.connection == "local"
            assert completion.usage.input_tokens == 2
        with pytest.raises(GatewayError):
            async with Client.connect(url, token="t0ken", connect_timeout=2):
                pass


async def test_runtime_without_gateway_section_has_none() -> None:
    config = loads_config(CONFIG.split("[gateway]")[0])
    async with open_runtime(config, transport=FakeTransport()) as rt:
        assert rt.gateway is None


async def test_gateway_traffic_is_counted_in_runtime_metrics() -> None:
    request = ChatRequest(model="m", messages=[Message(role="user", content="hi")])
    with trio.fail_after(30):
        async with open_runtime(loads_config(CONFIG), transport=FakeTransport(seed=3)) as rt:
            assert rt.gateway is not None
            async with Client.connect(rt.gateway.url, token="t0ken") as client:
                await client.chat(request)
                async with client.stream(request) as stream:
                    async for _ in stream:
                        pass
                with pytest.raises(RequestFailed):
                    await client.chat(ChatRequest(model="nope", messages=request.messages))
            metrics = rt.metrics()
    assert metrics.requests == 3
    assert metrics.completions == 2
    assert metrics.failures == {"not_found": 1}
