"""The response cache behind the WebSocket gateway, on real loopback sockets: a cached
route's answers reach remote clients marked ``served_from``, a stream from the cache is
replayed to them, identical streams of several clients share one upstream call, and the
per-request ``cache`` field travels over the wire.
"""

from __future__ import annotations

import trio

from actors import Client
from actors.testing import FakeTransport
from protocol import ChatRequest, Completion, Message, TextDelta, loads_config
from supervisors import open_runtime

CONFIG = """
[connections.local]
provider = "openai"
base_url = "http://fake/v1"
default_model = "m"

[routes.smart]
targets = [{ connection = "local" }]
cache = { ttl_s = 300 }

[gateway]
host = "127.0.0.1"
port = 0
tokens = ["t0ken"]
"""


def ask(**fields: object) -> ChatRequest:
    return ChatRequest(
        model="smart",
        messages=[Message(role="user", content="two words")],
        temperature=0.0,
        **fields,  # type: ignore[arg-type]
    )


async def test_remote_clients_get_cached_and_shared_answers() -> None:
    fake = FakeTransport(seed=3, answer_tokens=4, token_interval=0.2)
    with trio.fail_after(30):
        async with open_runtime(loads_config(CONFIG), transport=fake) as rt:
            assert rt.gateway is not None
            url = rt.gateway.url
            results: list[Completion] = []

            async def streamer() -> None:
                async with (
                    Client.connect(url, token="t0ken") as client,
                    client.stream(ask()) as stream,
                ):
                    text = "".join([e.text async for e in stream if isinstance(e, TextDelta)])
                result = stream.result
                assert isinstance(result, Completion)
                assert result.text == text
                results.append(result)

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(streamer)
            assert len(fake.attempts) == 1  # three clients, one upstream stream
            # (a client slower to connect than the stream to end gets it from the cache)
            served = sorted(r.served_from for r in results)
            assert served[-1] == "upstream"
            assert set(served[:2]) <= {"cache", "coalesced"}

            async with Client.connect(url, token="t0ken") as client:
                hit = await client.chat(ask())
                assert (hit.served_from, hit.text) == ("cache", results[0].text)
                async with client.stream(ask()) as stream:
                    events = [event async for event in stream]
                assert events[0] == TextDelta(text=results[0].text)
                assert stream.result.served_from == "cache"  # type: ignore[union-attr]
                fresh = await client.chat(ask(cache="off"))  # the field travels over the wire
                assert fresh.served_from == "upstream"
            assert len(fake.attempts) == 2
            assert rt.metrics().cache.hits >= 2
