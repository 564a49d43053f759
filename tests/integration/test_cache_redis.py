"""The response cache in a real Redis: with ``[runtime] state = "redis://..."`` the runtime
keeps its answers there (`SharedCacheStore`, through the shared state's client). Two runtimes
- two processes as far as Redis can tell, each with its own client and process id - share
one cache, Redis expires the entries itself, and a Redis that goes away or stops answering
makes the cache miss while every request is still answered.

A real ``redis-server`` (Debian's package) on a free loopback port (the ``redis_server``
fixture of ``tests/integration/conftest.py``); no fake Redis.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from actors._cache import SharedCacheStore, request_key
from actors._shared_state import SharedState
from actors.testing._transport import FakeTransport
from protocol._config_load import loads_config
from protocol._messages import ChatRequest, Message
from supervisors._runtime import Runtime, open_runtime

from .conftest import RedisServer

CONFIG = """
[runtime]
state = "redis://127.0.0.1:{port}/0"
state_timeout_s = 0.5

[connections.openai]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-test"
default_model = "gpt-4o"
retry = {{ max_attempts = 1 }}

[routes.smart]
targets = [{{ connection = "openai" }}]
cache = {{ ttl_s = 300 }}
"""


@asynccontextmanager
async def process(port: int) -> AsyncIterator[tuple[Runtime, SharedState, FakeTransport]]:
    """One "process": its own runtime, its own Redis client, its own process id."""
    fake = FakeTransport()
    async with open_runtime(loads_config(CONFIG.format(port=port)), transport=fake) as rt:
        shared = rt.shared
        assert shared is not None
        assert shared.up
        assert isinstance(rt.responses.store, SharedCacheStore)
        yield rt, shared, fake


def ask(text: str = "hello") -> ChatRequest:
    return ChatRequest(
        model="smart", messages=[Message(role="user", content=text)], temperature=0.0
    )


async def test_two_processes_share_one_cache_in_redis(redis_server: RedisServer) -> None:
    port = redis_server.port
    with trio.fail_after(20):
        async with process(port) as (a, shared, fake_a), process(port) as (b, _, fake_b):
            first = await a.chat(ask())
            assert first.served_from == "upstream"
            hit = await b.chat(ask())  # the other process: its provider is never asked
            assert hit.served_from == "cache"
            assert (hit.text, hit.response_id) == (first.text, first.response_id)
            assert (len(fake_a.attempts), len(fake_b.attempts)) == (1, 0)
            assert (a.metrics().cache.stores, b.metrics().cache.hits) == (1, 1)
            # Redis keeps the answer for the route's TTL, and expires it itself.
            client = shared.store.client  # type: ignore[attr-defined]
            ttl_ms = await client.pttl(SharedCacheStore.PREFIX + request_key(ask()))
            assert 0 < ttl_ms <= 300_000
            assert await client.get(SharedCacheStore.PREFIX + request_key(ask("other"))) is None


@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <function MemoryObject(Send|Receive)Stream.__del__"
    r":pytest.PytestUnraisableExceptionWarning"
)
async def test_when_redis_goes_away_the_cache_misses_and_requests_are_answered(
    redis_server: RedisServer,
) -> None:
    """(coredis leaves anyio memory streams of a connection whose server died unclosed;
    they are collected here, where their ResourceWarning is expected, not in a later test.)"""
    with trio.fail_after(20):
        async with process(redis_server.port) as (rt, shared, fake):
            await rt.chat(ask())
            assert (await rt.chat(ask())).served_from == "cache"
            redis_server.stop()
            again = await rt.chat(ask())
            assert again.served_from == "upstream"  # answered, from the provider
            assert not shared.up  # the shared state knows Redis is gone
            assert (await rt.chat(ask())).served_from == "upstream"
            assert len(fake.attempts) == 3
            cache = rt.metrics().cache
            assert cache.hits == 1
            assert cache.errors >= 2  # the lookups (and stores) that could not reach Redis
    gc.collect()


async def test_a_redis_that_stops_answering_is_a_miss_within_the_state_timeout(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(20):
        async with process(redis_server.port) as (rt, shared, fake):
            await rt.chat(ask())
            assert (await rt.chat(ask())).served_from == "cache"  # stored in Redis
            redis_server.pause()  # connections stay open, nothing answers
            try:
                again = await rt.chat(ask())  # the lookup gives up after state_timeout_s
                assert again.served_from == "upstream"
                assert not shared.up
                assert len(fake.attempts) == 2
                assert rt.metrics().cache.errors >= 1
            finally:
                redis_server.resume()
