"""The response cache and request coalescing through the runtime facade, against in-memory
fake providers under the autojump clock. The fake's attempt log says how many upstream calls
really happened; every time asserted is exact virtual time.

What it shows: a stored answer is served until its TTL and not after; the key's sensitivity
end to end; non-deterministic requests and routes without a cache never touch it; the
per-request modes; streams replay a stored answer and store theirs; N identical chats or
streams share one upstream call (late joiners get the events so far); callers that leave
(followers, the first caller, all of them); each caller's own deadline; a failure is shared
but never stored; embeddings; a broken or slow store is a miss, never a failure; exact
metrics (a hit costs nothing anywhere) and their Prometheus lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from actors._cache import STORE_TIMEOUT_S
from actors.testing._faults import FaultPlan, Latency, Rule, ServerError
from actors.testing._transport import FakeTransport
from protocol._config_load import loads_config
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    EmbedRequest,
    Failure,
    Finished,
    Message,
    Restart,
    StreamEvent,
    TextDelta,
    Usage,
)
from supervisors._runtime import Runtime, open_runtime

CONFIG = """
[connections.openai]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-test"
default_model = "gpt-4o"
serves = ["text-embedding-*"]
retry = { max_attempts = 1 }
prices = { "gpt-4o" = { input = 2.5, output = 10.0 }, "*" = { input = 1.0 } }

[routes.smart]
targets = [{ connection = "openai" }]
cache = { ttl_s = 300 }

[routes.plain]
targets = [{ connection = "openai" }]

[routes.sampled]
targets = [{ connection = "openai" }]
cache = { ttl_s = 300, nondeterministic = true }

[routes.shared-only]
targets = [{ connection = "openai" }]
cache = { ttl_s = 0 }

[routes.stored-only]
targets = [{ connection = "openai" }]
cache = { ttl_s = 300, coalesce = false }

[routes.embed]
targets = [{ connection = "openai", model = "text-embedding-3-small" }]
cache = { ttl_s = 60 }
"""


def ask(model: str = "smart", text: str = "hello", **fields: Any) -> ChatRequest:
    fields.setdefault("temperature", 0.0)
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)


def slow(seconds: float) -> FaultPlan:
    """Every answer takes *seconds* before its status line."""
    return FaultPlan(rules=(Rule(fault=Latency(seconds=seconds)),))


@asynccontextmanager
async def runtime(
    transport: FakeTransport, config: str = CONFIG
) -> AsyncIterator[tuple[Runtime, FakeTransport]]:
    async with open_runtime(loads_config(config), transport=transport) as rt:
        yield rt, transport


async def read(rt: Runtime, request: ChatRequest) -> tuple[list[StreamEvent], Completion | Failure]:
    async with rt.stream(request) as handle:
        events = [event async for event in handle]
    return events, handle.result


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# --------------------------------------------------------------------------- the cache


async def test_a_stored_answer_is_served_until_its_ttl_and_costs_nothing(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport(plan=slow(1.0))) as (rt, fake):
        first = await rt.chat(ask(request_id="r1"))
        assert (first.served_from, first.attempts, first.latency) == ("upstream", 1, 1.0)
        assert first.usage.output_tokens > 0
        assert first.cost is not None
        assert first.cost > 0
        stored_at = trio.current_time()
        assert stored_at == 1.0

        await trio.sleep(299.0)  # 1 s before the TTL ends
        hit = await rt.chat(ask(request_id="r2"))
        assert len(fake.attempts) == 1
        assert hit.served_from == "cache"
        assert (hit.text, hit.connection, hit.model) == (first.text, "openai", "gpt-4o")
        assert (hit.response_id, hit.finish_reason) == (first.response_id, first.finish_reason)
        assert (hit.request_id, hit.usage, hit.cost, hit.attempts) == ("r2", Usage(), 0.0, 0)
        assert (hit.latency, hit.produced_by) == (0.0, [])

        await trio.sleep(1.0)  # stored at 1 s for 300 s: gone at 301 s
        assert trio.current_time() == stored_at + 300.0
        again = await rt.chat(ask())
        assert again.served_from == "upstream"
        assert len(fake.attempts) == 2

        metrics = rt.metrics()
        assert (metrics.cache.hits, metrics.cache.misses, metrics.cache.stores) == (1, 2, 2)
        assert (metrics.requests, metrics.completions) == (3, 3)
        # The connection saw two attempts and their tokens: the hit added none.
        snap = metrics.connections["openai"]
        assert snap.output_tokens == first.usage.output_tokens + again.usage.output_tokens
        assert metrics.estimated_cost() == pytest.approx((first.cost or 0) + (again.cost or 0))


@pytest.mark.parametrize(
    "change",
    [
        {"text": "hello!"},
        {"max_tokens": 7},
        {"temperature": 0.0, "top_p": 0.5},
        {"stop": ["."]},
        {"extra": {"seed": 3}},
        {"model": "smart", "tool_choice": "none"},
    ],
    ids=["messages", "max_tokens", "top_p", "stop", "extra", "tool_choice"],
)
async def test_a_parameter_that_changes_the_answer_is_a_miss(
    autojump_clock: MockClock, change: dict[str, Any]
) -> None:
    async with runtime(FakeTransport()) as (rt, fake):
        await rt.chat(ask())
        other = await rt.chat(ask(**change))
        assert other.served_from == "upstream"
        assert len(fake.attempts) == 2


async def test_request_id_timeout_metadata_fallbacks_and_stream_flag_still_hit(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport()) as (rt, fake):
        await rt.chat(ask())
        for fields in (
            {"request_id": "other"},
            {"timeout": 5.0},
            {"metadata": {"user": "bob"}},
            {"fallbacks": ["plain"]},
            {"stream": True},
        ):
            assert (await rt.chat(ask(**fields))).served_from == "cache"
        assert len(fake.attempts) == 1


async def test_non_deterministic_requests_are_never_cached_unless_the_route_asks(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport()) as (rt, fake):
        for _ in range(2):
            assert (await rt.chat(ask(temperature=None))).served_from == "upstream"
            assert (await rt.chat(ask(temperature=0.7))).served_from == "upstream"
        assert len(fake.attempts) == 4
        assert rt.metrics().cache.misses == 0  # not even looked up

        seeded = [await rt.chat(ask(temperature=0.7, extra={"seed": 1})) for _ in range(2)]
        assert [c.served_from for c in seeded] == ["upstream", "cache"]

        sampled = [await rt.chat(ask("sampled", temperature=0.9)) for _ in range(2)]
        assert [c.served_from for c in sampled] == ["upstream", "cache"]
        assert len(fake.attempts) == 6


async def test_only_routes_that_opt_in_are_cached(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport()) as (rt, fake):
        for model in ("plain", "gpt-4o", "openai/gpt-4o"):
            for _ in range(2):
                assert (await rt.chat(ask(model))).served_from == "upstream"
        assert len(fake.attempts) == 6
        assert rt.metrics().cache == type(rt.metrics().cache)()  # all zero


async def test_a_runtime_wide_default_applies_where_a_route_sets_none(
    autojump_clock: MockClock,
) -> None:
    config = """
[runtime]
cache = { ttl_s = 60 }

[connections.openai]
provider = "openai"
base_url = "http://fake/v1"
api_key = "sk-test"
default_model = "gpt-4o"

[routes.smart]
targets = [{ connection = "openai" }]

[routes.fresh]
targets = [{ connection = "openai" }]
cache = { enabled = false }
"""
    async with runtime(FakeTransport(), config) as (rt, fake):
        assert [(await rt.chat(ask("smart"))).served_from for _ in range(2)] == [
            "upstream",
            "cache",
        ]
        assert [(await rt.chat(ask("gpt-4o"))).served_from for _ in range(2)] == [
            "upstream",
            "cache",
        ]
        assert [(await rt.chat(ask("fresh"))).served_from for _ in range(2)] == [
            "upstream",
            "upstream",
        ]
        assert len(fake.attempts) == 4


async def test_per_request_off_and_refresh(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport()) as (rt, fake):
        await rt.chat(ask())
        off = await rt.chat(ask(cache="off"))
        assert off.served_from == "upstream"  # neither read ...
        assert len(fake.attempts) == 2
        refreshed = await rt.chat(ask(cache="refresh"))
        assert refreshed.served_from == "upstream"  # ... refresh does not read either ...
        assert len(fake.attempts) == 3
        hit = await rt.chat(ask())
        assert hit.served_from == "cache"
        assert hit.response_id == refreshed.response_id  # ... but stores its answer
        assert rt.metrics().cache.stores == 2  # the first answer and the refreshed one


async def test_a_coalesce_only_route_stores_nothing(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport()) as (rt, fake):
        for _ in range(2):
            assert (await rt.chat(ask("shared-only"))).served_from == "upstream"
        assert len(fake.attempts) == 2
        cache = rt.metrics().cache
        assert (cache.hits, cache.misses, cache.stores) == (0, 0, 0)


# --------------------------------------------------------------------------- streams and the cache


async def test_a_stream_replays_a_stored_answer(autojump_clock: MockClock) -> None:
    fake = FakeTransport(answer_tokens=4, token_interval=0.5)
    async with runtime(fake) as (rt, _):
        done = await rt.chat(ask())
        start = trio.current_time()
        events, result = await read(rt, ask(request_id="s1"))
        assert trio.current_time() == start  # no provider time at all
        assert events == [
            TextDelta(text=done.text),
            Finished(
                finish_reason=done.finish_reason,
                usage=Usage(),
                model=done.model,
                response_id=done.response_id,
            ),
        ]
        assert isinstance(result, Completion)
        assert (result.served_from, result.text, result.usage, result.cost) == (
            "cache",
            done.text,
            Usage(),
            0.0,
        )
        assert (result.request_id, result.time_to_first_token) == ("s1", 0.0)
        assert len(fake.attempts) == 1


async def test_a_streamed_answer_is_stored_only_when_the_stream_completes(
    autojump_clock: MockClock,
) -> None:
    fake = FakeTransport(answer_tokens=4, token_interval=0.5)
    async with runtime(fake) as (rt, _):
        async with rt.stream(ask()) as handle:  # left after the first event
            async for _ in handle:
                break
        await trio.testing.wait_all_tasks_blocked()  # the shared call is cancelled at once
        assert trio.current_time() == 0.0
        assert len(fake.attempts) == 1
        assert fake.attempts[0].outcome == "client_closed"
        assert rt.metrics().cache.stores == 0  # a partial stream is never stored

        events, result = await read(rt, ask())
        assert isinstance(result, Completion)
        assert result.served_from == "upstream"
        assert text_of(events) == result.text
        hit = await rt.chat(ask())  # a stream's answer serves a chat too
        assert (hit.served_from, hit.text) == ("cache", result.text)
        assert len(fake.attempts) == 2


# --------------------------------------------------------------------------- coalescing


async def test_identical_concurrent_chats_share_one_upstream_call(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport(plan=slow(2.0))) as (rt, fake):
        results: dict[int, Completion] = {}

        async def one(i: int) -> None:
            await trio.sleep(i * 0.25)  # arrive while the first is in flight
            results[i] = await rt.chat(ask(request_id=f"r{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(one, i)
        assert trio.current_time() == 2.0  # everyone had the answer when the call ended
        assert len(fake.attempts) == 1
        assert {r.text for r in results.values()} == {results[0].text}
        assert [results[i].request_id for i in range(5)] == [f"r{i}" for i in range(5)]
        billed = [r for r in results.values() if r.served_from == "upstream"]
        shared = [r for r in results.values() if r.served_from == "coalesced"]
        assert len(billed) == 1
        assert len(shared) == 4
        assert billed[0].usage.total_tokens > 0
        assert all((r.usage, r.cost, r.attempts) == (Usage(), 0.0, 0) for r in shared)
        # The first caller is billed; each other one waited from its own arrival.
        assert results[0] is billed[0]
        assert [results[i].latency for i in range(5)] == [2.0, 1.75, 1.5, 1.25, 1.0]
        metrics = rt.metrics()
        assert (metrics.cache.coalesced, metrics.cache.flights) == (4, 0)
        assert (metrics.requests, metrics.completions) == (5, 5)
        assert metrics.tokens_by_connection("openai") == (
            billed[0].usage.input_tokens,
            billed[0].usage.output_tokens,
        )
        # Stored once the callers had it: the next identical request is a hit.
        assert (await rt.chat(ask())).served_from == "cache"


async def test_different_requests_are_not_coalesced(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport(plan=slow(2.0))) as (rt, fake):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rt.chat, ask(text="a"))
            nursery.start_soon(rt.chat, ask(text="b"))
            nursery.start_soon(rt.chat, ask(text="a", fallbacks=["plain"]))  # routed otherwise
            nursery.start_soon(rt.chat, ask(text="a", temperature=0.5))  # not deterministic
            nursery.start_soon(rt.chat, ask("plain", text="a"))  # no cache on the route
        assert len(fake.attempts) == 5
        assert rt.metrics().cache.coalesced == 0


async def test_coalescing_without_storing(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport(plan=slow(2.0))) as (rt, fake):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(rt.chat, ask("shared-only"))
        assert len(fake.attempts) == 1
        assert rt.metrics().cache.coalesced == 2
        await rt.chat(ask("shared-only"))
        assert len(fake.attempts) == 2  # nothing was stored


async def test_a_route_without_coalescing_still_stores(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport(plan=slow(2.0))) as (rt, fake):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(rt.chat, ask("stored-only"))
        assert len(fake.attempts) == 3
        assert (await rt.chat(ask("stored-only"))).served_from == "cache"


async def test_identical_concurrent_streams_share_one_upstream_stream(
    autojump_clock: MockClock,
) -> None:
    fake = FakeTransport(answer_tokens=4, token_interval=1.0)
    async with runtime(fake) as (rt, _):
        seen: dict[int, list[tuple[float, StreamEvent]]] = {}
        results: dict[int, Completion | Failure] = {}

        async def one(i: int, arrive: float) -> None:
            await trio.sleep(arrive)
            async with rt.stream(ask(request_id=f"s{i}")) as handle:
                seen[i] = [(trio.current_time(), event) async for event in handle]
            results[i] = handle.result

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0, 0.0)
            nursery.start_soon(one, 1, 0.0)
            nursery.start_soon(one, 2, 2.5)  # joins after two tokens went out
        assert len(fake.attempts) == 1
        events = [e for _, e in seen[0]]
        assert [e for _, e in seen[1]] == events
        assert [e for _, e in seen[2]] == events  # the late joiner missed nothing
        # The late joiner got the tokens sent so far at once when it joined, then live.
        assert [t for t, e in seen[0] if isinstance(e, TextDelta)] == [0.0, 1.0, 2.0, 3.0]
        assert [t for t, e in seen[2] if isinstance(e, TextDelta)] == [2.5, 2.5, 2.5, 3.0]
        # 0 and 1 arrived together (either joined first and is billed); 2 came later.
        assert sorted([results[0].served_from, results[1].served_from]) == [
            "coalesced",
            "upstream",
        ]
        assert results[2].served_from == "coalesced"
        shared = [r for r in results.values() if r.served_from == "coalesced"]
        assert all(isinstance(r, Completion) and r.text == text_of(events) for r in shared)
        assert rt.metrics().cache.coalesced == 2
        # The stream's answer was stored: a fourth stream replays it.
        replayed, result = await read(rt, ask())
        assert text_of(replayed) == text_of(events)
        assert result.served_from == "cache"  # type: ignore[union-attr]
        assert len(fake.attempts) == 1


async def test_a_follower_that_leaves_does_not_disturb_the_others(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport(plan=slow(4.0))) as (rt, fake):
        results: dict[str, Completion] = {}

        async def keep(name: str) -> None:
            results[name] = await rt.chat(ask())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep, "leader")
            await trio.sleep(0.5)
            with trio.move_on_after(1.0):  # a follower whose caller gives up
                await rt.chat(ask())
            nursery.start_soon(keep, "late")
        assert trio.current_time() == 4.0
        assert len(fake.attempts) == 1
        assert fake.attempts[0].outcome == "completed"
        assert results["leader"].text == results["late"].text
        assert rt.metrics().failures == {"cancelled": 1}


async def test_the_first_caller_leaving_does_not_stop_the_shared_call(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport(plan=slow(4.0))) as (rt, fake):
        results: list[Completion] = []

        async def follower() -> None:
            await trio.sleep(1.0)
            results.append(await rt.chat(ask()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower)
            with trio.move_on_after(2.0):  # the caller that started it leaves at 2 s
                await rt.chat(ask())
        assert trio.current_time() == 4.0
        assert len(fake.attempts) == 1
        assert fake.attempts[0].outcome == "completed"
        # The follower is the first to take the answer: it is billed for it.
        assert results[0].served_from == "upstream"
        assert results[0].usage.total_tokens > 0
        assert (await rt.chat(ask())).served_from == "cache"


async def test_when_every_caller_leaves_the_upstream_call_is_cancelled(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport(plan=slow(10.0))) as (rt, fake):
        async with trio.open_nursery() as nursery:
            for leave_at in (1.0, 3.0):

                async def caller(leave_at: float = leave_at) -> None:
                    with trio.move_on_after(leave_at):
                        await rt.chat(ask())

                nursery.start_soon(caller)
        assert trio.current_time() == 3.0
        await trio.sleep(0.1)
        assert len(fake.attempts) == 1
        assert fake.attempts[0].outcome == "client_closed"
        assert fake.attempts[0].ended_at == 3.0
        assert rt.metrics().cache == type(rt.metrics().cache)(misses=2, coalesced=1)


async def test_a_stream_follower_that_leaves_early_leaves_alone(
    autojump_clock: MockClock,
) -> None:
    fake = FakeTransport(answer_tokens=4, token_interval=1.0)
    async with runtime(fake) as (rt, _):
        full: list[StreamEvent] = []

        async def reader() -> None:
            async with rt.stream(ask()) as handle:
                full.extend([event async for event in handle])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            async with rt.stream(ask()) as handle:
                async for _ in handle:
                    break  # leaves after the first event
            assert handle.result.kind is ErrorKind.CANCELLED  # type: ignore[union-attr]
        assert len(fake.attempts) == 1
        assert fake.attempts[0].outcome == "completed"
        assert text_of(full)


async def test_each_caller_keeps_its_own_deadline(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport(plan=slow(10.0))) as (rt, fake):
        results: dict[str, Completion | Failure] = {}
        ended: dict[str, float] = {}

        async def call(name: str, **fields: Any) -> None:
            results[name] = await rt.chat_result(ask(**fields))
            ended[name] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(call, "patient", timeout=30.0))
            await trio.sleep(1.0)
            nursery.start_soon(partial(call, "hasty", timeout=2.0))
        assert ended == {"hasty": 3.0, "patient": 10.0}  # the hasty one's own deadline: 1 + 2
        assert isinstance(results["hasty"], Failure)
        assert results["hasty"].kind is ErrorKind.DEADLINE
        assert "identical request in flight" in results["hasty"].message
        assert isinstance(results["patient"], Completion)
        assert results["patient"].served_from == "upstream"
        assert len(fake.attempts) == 1


async def test_a_caller_with_more_time_than_the_shared_call_starts_again(
    autojump_clock: MockClock,
) -> None:
    # The first answer takes 10 s; the one after that is quick.
    plan = FaultPlan(rules=(Rule(fault=Latency(seconds=10.0), arrivals=(1,)),))
    async with runtime(FakeTransport(plan=plan)) as (rt, fake):
        results: dict[str, Completion | Failure] = {}

        async def call(name: str, **fields: Any) -> None:
            results[name] = await rt.chat_result(ask(**fields))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(call, "short", timeout=5.0))
            await trio.sleep(1.0)
            nursery.start_soon(partial(call, "long", timeout=60.0))
        short, long = results["short"], results["long"]
        assert isinstance(short, Failure)
        assert short.kind is ErrorKind.DEADLINE  # the router's own, with its cause
        assert isinstance(long, Completion)
        assert long.served_from == "upstream"
        assert len(fake.attempts) == 2
        assert fake.attempts[1].arrived_at == 5.0  # started again when the first ran out


async def test_a_stream_with_more_time_restarts_after_the_shared_stream_ran_out(
    autojump_clock: MockClock,
) -> None:
    # The first stream sends a token, then stalls; the second is healthy.
    fake = FakeTransport(answer_tokens=4, token_interval=1.0)
    async with runtime(fake) as (rt, _):
        seen: dict[str, list[StreamEvent]] = {}
        results: dict[str, Completion | Failure] = {}

        async def one(name: str, timeout: float) -> None:
            async with rt.stream(ask(timeout=timeout)) as handle:
                seen[name] = [event async for event in handle]
            results[name] = handle.result

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "short", 1.5)
            await trio.sleep(0.5)
            nursery.start_soon(one, "long", 60.0)
        assert isinstance(results["short"], Failure)
        assert results["short"].kind is ErrorKind.DEADLINE
        long = results["long"]
        assert isinstance(long, Completion)
        restarts = [i for i, e in enumerate(seen["long"]) if isinstance(e, Restart)]
        assert len(restarts) == 1  # discard what the first stream sent, then the new one
        assert text_of(seen["long"][restarts[0] + 1 :]) == long.text
        assert len(fake.attempts) == 2


async def test_a_failure_is_shared_but_never_stored(autojump_clock: MockClock) -> None:
    # The first call fails with a 500 (no retry on this connection); later ones succeed.
    plan = FaultPlan(rules=(Rule(fault=ServerError(status=500), arrivals=(1,)),))
    async with runtime(FakeTransport(plan=plan)) as (rt, fake):
        results: list[Completion | Failure] = []

        async def one() -> None:
            results.append(await rt.chat_result(ask()))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        assert len(fake.attempts) == 1
        assert [getattr(r, "kind", None) for r in results] == [ErrorKind.SERVER_ERROR] * 3
        assert rt.metrics().cache.coalesced == 2
        assert rt.metrics().cache.stores == 0
        assert rt.metrics().failures == {"server_error": 3}
        after = await rt.chat(ask())  # not stored: asked again, and answered
        assert after.served_from == "upstream"
        assert len(fake.attempts) == 2


async def test_embeddings_are_cached_and_coalesced(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport(plan=slow(1.0))) as (rt, fake):
        request = EmbedRequest(model="embed", inputs=["a", "b"])
        results = []

        async def one() -> None:
            results.append(await rt.embed(request))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(one)
        assert len(fake.attempts) == 1
        assert sorted(r.served_from for r in results) == ["coalesced", "coalesced", "upstream"]
        hit = await rt.embed(EmbedRequest(model="embed", inputs=["a", "b"], request_id="e9"))
        assert (hit.served_from, hit.vectors, hit.request_id) == ("cache", results[0].vectors, "e9")
        assert (hit.usage, hit.cost) == (Usage(), 0.0)
        await trio.sleep(60.0)  # a 60 s TTL on this route
        assert (await rt.embed(request)).served_from == "upstream"
        assert len(fake.attempts) == 2


# --------------------------------------------------------------------------- a store that fails


class BrokenStore:
    """A store that raises (a shared store that went away)."""

    def __init__(self) -> None:
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        raise ConnectionError("store down")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.calls += 1
        raise ConnectionError("store down")


class HangingStore:
    """A store that never answers."""

    async def get(self, key: str) -> bytes | None:
        await trio.sleep_forever()
        raise AssertionError

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await trio.sleep_forever()


class JunkStore:
    """A store that returns bytes that are not an answer."""

    async def get(self, key: str) -> bytes | None:
        return b"\xc1 not msgpack"

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        return None


async def test_a_broken_store_is_a_miss_never_a_failure(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport()) as (rt, _):
        store = BrokenStore()
        rt.responses.store = store
        for _ in range(2):
            assert (await rt.chat(ask())).served_from == "upstream"
        events, result = await read(rt, ask())
        assert result.served_from == "upstream"  # type: ignore[union-attr]
        assert text_of(events)
        assert store.calls == 6
        cache = rt.metrics().cache
        assert (cache.hits, cache.misses, cache.stores, cache.errors) == (0, 3, 0, 6)
        assert "switchboard_cache_errors_total 6" in rt.metrics().prometheus()


async def test_a_slow_store_is_given_up_on(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport()) as (rt, _):
        rt.responses.store = HangingStore()
        done = await rt.chat(ask())
        assert done.served_from == "upstream"
        assert done.latency == 0.0  # the answer came as soon as the provider gave it ...
        assert trio.current_time() == STORE_TIMEOUT_S  # ... after the lookup gave up
        await trio.sleep(STORE_TIMEOUT_S)  # the store after it gives up too, at 2 s
        await trio.testing.wait_all_tasks_blocked()
        assert rt.metrics().cache.errors == 2


async def test_a_stored_value_that_does_not_decode_is_a_miss(autojump_clock: MockClock) -> None:
    async with runtime(FakeTransport()) as (rt, _):
        rt.responses.store = JunkStore()
        assert (await rt.chat(ask())).served_from == "upstream"
        cache = rt.metrics().cache
        assert (cache.hits, cache.misses, cache.errors) == (0, 1, 1)


# --------------------------------------------------------------------------- metrics


async def test_prometheus_shows_hits_misses_stores_and_coalesced(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport(plan=slow(1.0))) as (rt, _):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(rt.chat, ask())
        await rt.chat(ask())
        text = rt.metrics().prometheus()
        for line in (
            "# TYPE switchboard_cache_hits_total counter",
            "switchboard_cache_hits_total 1",
            "switchboard_cache_misses_total 3",
            "switchboard_cache_stores_total 1",
            "switchboard_cache_errors_total 0",
            "switchboard_coalesced_requests_total 2",
            "switchboard_coalesce_flights 0",
            "switchboard_routed_completions_total 4",
        ):
            assert line in text.splitlines()


async def test_the_runtime_shut_down_refuses_instead_of_serving(
    autojump_clock: MockClock,
) -> None:
    async with runtime(FakeTransport()) as (rt, _):
        await rt.chat(ask())
    failure = await rt.chat_result(ask())
    assert isinstance(failure, Failure)
    assert failure.kind is ErrorKind.CANCELLED
