"""The response cache's pure parts and the coalescing machinery, without a runtime: the
exact-match key (every parameter that changes the answer changes it; nothing else does),
what counts as deterministic, the in-process store's TTL and bound at exact times, the
replay of a stored answer as stream events, and `Flights` (join, leave, cancel, errors,
deadlines) under the autojump clock.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
from trio.testing import MockClock

from actors._cache import MemoryCacheStore, deterministic, replay, request_key
from actors._coalesce import Flight, Flights, Outcome, shared_copy, wait_for
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Finished,
    Message,
    Producer,
    ReasoningDelta,
    ResponseFormat,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)


def chat(**fields: Any) -> ChatRequest:
    base: dict[str, Any] = {
        "model": "smart",
        "messages": [Message(role="user", content="hello")],
        "temperature": 0.0,
    }
    base.update(fields)
    return ChatRequest(**base)


# --------------------------------------------------------------------------- the key

# Each of these changes the answer, so each must change the key.
ANSWER_CHANGES: dict[str, dict[str, Any]] = {
    "model": {"model": "fast"},
    "messages": {"messages": [Message(role="user", content="hello!")]},
    "role": {"messages": [Message(role="system", content="hello")]},
    "more messages": {
        "messages": [Message(role="user", content="hello"), Message(role="user", content="hi")]
    },
    "max_tokens": {"max_tokens": 10},
    "temperature": {"temperature": 0.5},
    "top_p": {"top_p": 0.9},
    "stop": {"stop": ["\n"]},
    "tools": {"tools": [Tool(name="lookup")]},
    "tool_choice": {"tool_choice": "auto"},
    "response_format": {"response_format": ResponseFormat(type="json_object")},
    "extra": {"extra": {"seed": 1}},
}

# None of these changes the answer (who answers, how it is delivered, bookkeeping).
SAME_ANSWER: dict[str, dict[str, Any]] = {
    "request_id": {"request_id": "other"},
    "timeout": {"timeout": 5.0},
    "metadata": {"metadata": {"user": "alice"}},
    "fallbacks": {"fallbacks": ["backup"]},
    "strategy": {"strategy": "weighted"},
    "stream": {"stream": True},
    "cache": {"cache": "refresh"},
}


@pytest.mark.parametrize("change", sorted(ANSWER_CHANGES))
def test_every_parameter_that_changes_the_answer_changes_the_key(change: str) -> None:
    assert request_key(chat(**ANSWER_CHANGES[change])) != request_key(chat())


@pytest.mark.parametrize("change", sorted(SAME_ANSWER))
def test_fields_that_do_not_change_the_answer_keep_the_key(change: str) -> None:
    assert request_key(chat(**SAME_ANSWER[change])) == request_key(chat())


def test_key_is_canonical() -> None:
    # Dict order, an int where a float is expected, a decoded copy: one key.
    a = chat(extra={"seed": 1, "user": "x"}, temperature=0)
    b = chat(extra={"user": "x", "seed": 1}, temperature=0.0)
    c = msgspec.json.decode(msgspec.json.encode(a), type=ChatRequest)
    assert request_key(a) == request_key(b) == request_key(c)
    assert len(request_key(a)) == 64  # a SHA-256 hex digest: never the prompt itself
    assert "hello" not in request_key(a)


def test_embed_key_covers_inputs_dimensions_and_extra() -> None:
    base = EmbedRequest(model="embed", inputs=["a", "b"])
    assert request_key(base) == request_key(EmbedRequest(model="embed", inputs=["a", "b"]))
    for other in (
        EmbedRequest(model="embed", inputs=["b", "a"]),
        EmbedRequest(model="embed", inputs=["a", "b"], dimensions=4),
        EmbedRequest(model="embed", inputs=["a", "b"], extra={"user": "x"}),
        EmbedRequest(model="other", inputs=["a", "b"]),
    ):
        assert request_key(other) != request_key(base)
    same = EmbedRequest(model="embed", inputs=["a", "b"], timeout=3.0, metadata={"k": "v"})
    assert request_key(same) == request_key(base)


def test_a_chat_and_an_embedding_never_share_a_key() -> None:
    assert request_key(EmbedRequest(model="m", inputs=["hello"])) != request_key(chat(model="m"))


def test_unencodable_extra_raises() -> None:
    with pytest.raises(TypeError):
        request_key(chat(extra={"x": object()}))


def test_deterministic_means_temperature_zero_or_a_seed() -> None:
    assert deterministic(chat(temperature=0.0))
    assert deterministic(chat(temperature=0))
    assert deterministic(chat(temperature=0.7, extra={"seed": 42}))
    assert not deterministic(chat(temperature=None))
    assert not deterministic(chat(temperature=0.7))
    assert not deterministic(chat(temperature=None, extra={"seed": None}))


# --------------------------------------------------------------------------- the store


def test_memory_store_serves_until_the_ttl_exactly() -> None:
    store = MemoryCacheStore()
    store.set_at("k", b"v", 300.0, now=10.0)
    assert store.get_at("k", 10.0) == b"v"
    assert store.get_at("k", 309.999) == b"v"
    assert store.get_at("k", 310.0) is None  # stored at 10 for 300 s: gone at 310
    assert len(store) == 0  # an expired entry is dropped when found


def test_memory_store_set_replaces_and_zero_ttl_stores_nothing() -> None:
    store = MemoryCacheStore()
    store.set_at("k", b"old", 10.0, now=0.0)
    store.set_at("k", b"new", 10.0, now=5.0)
    assert store.get_at("k", 14.0) == b"new"  # the new TTL counts from 5
    store.set_at("k", b"gone", 0.0, now=6.0)
    assert store.get_at("k", 6.0) is None


def test_memory_store_evicts_the_least_recently_used() -> None:
    store = MemoryCacheStore(max_entries=2)
    store.set_at("a", b"1", 100.0, now=0.0)
    store.set_at("b", b"2", 100.0, now=0.0)
    assert store.get_at("a", 1.0) == b"1"  # "a" is now the most recently used
    store.set_at("c", b"3", 100.0, now=2.0)
    assert (store.get_at("a", 3.0), store.get_at("b", 3.0), store.get_at("c", 3.0)) == (
        b"1",
        None,
        b"3",
    )
    with pytest.raises(ValueError, match="max_entries"):
        MemoryCacheStore(max_entries=0)


async def test_memory_store_async_face_reads_the_trio_clock(autojump_clock: MockClock) -> None:
    store = MemoryCacheStore()
    await store.set("k", b"v", 5.0)
    await trio.sleep(4.5)
    assert await store.get("k") == b"v"
    await trio.sleep(0.5)
    assert await store.get("k") is None


# --------------------------------------------------------------------------- replay and copies


def test_replay_sends_the_whole_answer_then_finished() -> None:
    done = Completion(
        text="Hello there.",
        reasoning="think",
        tool_calls=[ToolCall(id="c1", name="lookup", arguments='{"q": 1}')],
        finish_reason="tool_calls",
        usage=Usage(),
        model="gpt-4o",
        response_id="r1",
    )
    assert replay(done) == [
        ReasoningDelta(text="think"),
        TextDelta(text="Hello there."),
        ToolCallDelta(index=0, id="c1", name="lookup", arguments='{"q": 1}'),
        Finished(finish_reason="tool_calls", usage=Usage(), model="gpt-4o", response_id="r1"),
    ]
    assert replay(Completion()) == [Finished()]


def test_shared_copy_costs_nothing_and_keeps_who_produced_it() -> None:
    done = Completion(
        text="hi",
        usage=Usage(input_tokens=3, output_tokens=5),
        cost=0.25,
        attempts=2,
        connection="openai",
        model="gpt-4o",
        request_id="first",
        produced_by=[Producer(connection="openai", model="gpt-4o", usage=Usage(input_tokens=3))],
        time_to_first_token=0.5,
    )
    copy = shared_copy(done, request_id="mine", latency=1.5, served_from="cache")
    assert (copy.usage, copy.cost, copy.attempts, copy.produced_by) == (Usage(), 0.0, 0, [])
    assert (copy.request_id, copy.latency, copy.served_from) == ("mine", 1.5, "cache")
    assert (copy.text, copy.connection, copy.model) == ("hi", "openai", "gpt-4o")
    unpriced = shared_copy(
        msgspec.structs.replace(done, cost=None),
        request_id="x",
        latency=0.0,
        served_from="coalesced",
    )
    assert unpriced.cost is None  # no price configured stays "no price", not a free answer
    vectors = Embeddings(vectors=[[1.0]], usage=Usage(input_tokens=2), cost=0.1)
    shared = shared_copy(vectors, request_id="y", latency=0.0, served_from="coalesced")
    assert (shared.usage, shared.cost, shared.served_from) == (Usage(), 0.0, "coalesced")


# --------------------------------------------------------------------------- flights


def answer(text: str) -> Completion:
    return Completion(text=text, usage=Usage(output_tokens=1))


def cancelled() -> Failure:
    return Failure.of(ErrorKind.CANCELLED, "flight cancelled")


class Upstream:
    """A fake upstream call: takes *seconds*, counts its calls and how they ended."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self.calls = 0
        self.ended: list[str] = []

    async def __call__(self, flight: Flight) -> Outcome:
        self.calls += 1
        number = self.calls
        try:
            await trio.sleep(self.seconds)
        except trio.Cancelled:
            self.ended.append(f"cancelled at {trio.current_time():g}")
            raise
        self.ended.append(f"done at {trio.current_time():g}")
        return answer(f"call {number}")


async def test_identical_waiters_share_one_call(autojump_clock: MockClock) -> None:
    flights = Flights()
    upstream = Upstream()
    got: list[Outcome | None] = []

    async def waiter(delay: float) -> None:
        await trio.sleep(delay)
        seat = flights.join(b"k", 10.0, upstream, cancelled)
        try:
            got.append(await wait_for(seat.flight, 100.0))
        finally:
            flights.leave(seat)

    async with trio.open_nursery() as outer:
        await outer.start(flights.run)
        async with trio.open_nursery() as nursery:
            for delay in (0.0, 1.0, 9.0):
                nursery.start_soon(waiter, delay)
        assert trio.current_time() == 10.0
        assert upstream.calls == 1
        assert got == [answer("call 1")] * 3
        assert flights.joined == 2
        assert flights.in_flight() == 0  # forgotten once done: the next one starts anew
        seat = flights.join(b"k", 30.0, upstream, cancelled)
        assert not seat.joined
        assert await wait_for(seat.flight, 30.0) == answer("call 2")
        flights.leave(seat)
        outer.cancel_scope.cancel()


async def test_the_call_goes_on_while_a_waiter_remains_and_stops_with_the_last(
    autojump_clock: MockClock,
) -> None:
    flights = Flights()
    upstream = Upstream()
    async with trio.open_nursery() as outer:
        await outer.start(flights.run)
        first = flights.join(b"k", 10.0, upstream, cancelled)
        second = flights.join(b"k", 10.0, upstream, cancelled)
        assert (first.joined, second.joined) == (False, True)
        flight = first.flight
        assert second.flight is flight
        await trio.sleep(3.0)
        flights.leave(first)  # the caller that started it leaves: nothing stops
        assert not flight.scope.cancel_called
        assert await wait_for(flight, 100.0) == answer("call 1")
        flights.leave(second)
        assert upstream.ended == ["done at 10"]

        third = flights.join(b"k", 20.0, upstream, cancelled)
        await trio.sleep(4.0)
        flights.leave(third)  # the last waiter leaves: the call is cancelled
        await third.flight.done.wait()
        assert trio.current_time() == 14.0
        assert upstream.ended == ["done at 10", "cancelled at 14"]
        assert third.flight.result == cancelled()
        assert flights.in_flight() == 0
        outer.cancel_scope.cancel()


async def test_a_waiter_with_an_earlier_deadline_stops_waiting_at_it(
    autojump_clock: MockClock,
) -> None:
    flights = Flights()
    async with trio.open_nursery() as outer:
        await outer.start(flights.run)
        flight = flights.join(b"k", 10.0, Upstream(), cancelled).flight
        flights.join(b"k", 10.0, Upstream(), cancelled)
        assert await wait_for(flight, 4.0) is None
        assert trio.current_time() == 4.0
        assert await wait_for(flight, 10.0) == answer("call 1")
        outer.cancel_scope.cancel()


async def test_an_exception_reaches_every_waiter_and_nothing_hangs(
    autojump_clock: MockClock,
) -> None:
    flights = Flights()
    stored: list[Outcome] = []

    async def broken(flight: Flight) -> Outcome:
        await trio.sleep(1.0)
        raise KeyError("bug")

    async def after(outcome: Outcome) -> None:
        stored.append(outcome)

    async with trio.open_nursery() as outer:
        await outer.start(flights.run)
        a = flights.join(b"k", 10.0, broken, cancelled, after)
        b = flights.join(b"k", 10.0, broken, cancelled, after)
        for seat in (a, b):
            with pytest.raises(KeyError, match="bug"):
                await wait_for(seat.flight, 10.0)
        assert stored == []  # nothing to store after an exception
        outer.cancel_scope.cancel()


async def test_stopping_the_flights_gives_every_waiter_cancelled(
    autojump_clock: MockClock,
) -> None:
    flights = Flights()
    async with trio.open_nursery() as outer:
        await outer.start(flights.run)
        seat = flights.join(b"k", 10.0, Upstream(), cancelled)
        await trio.sleep(1.0)
        outer.cancel_scope.cancel()
    assert await wait_for(seat.flight, 10.0) == cancelled()
    assert not flights.running
    with pytest.raises(RuntimeError, match="not running"):
        flights.join(b"k", 10.0, Upstream(), cancelled)


async def test_private_flights_are_never_joined(autojump_clock: MockClock) -> None:
    flights = Flights()
    upstream = Upstream()
    async with trio.open_nursery() as outer:
        await outer.start(flights.run)
        a = flights.join(None, 10.0, upstream, cancelled)
        b = flights.join(None, 10.0, upstream, cancelled)
        assert a.flight is not b.flight
        assert not b.joined
        texts = {getattr(await wait_for(s.flight, 10.0), "text", None) for s in (a, b)}
        assert texts == {"call 1", "call 2"}  # two calls, whichever started first
        assert upstream.calls == 2
        assert flights.joined == 0
        outer.cancel_scope.cancel()


async def test_the_earliest_waiter_still_there_is_billed(autojump_clock: MockClock) -> None:
    flights = Flights()
    async with trio.open_nursery() as outer:
        await outer.start(flights.run)
        first, second, third = (flights.join(b"k", 10.0, Upstream(), cancelled) for _ in "abc")
        flight = first.flight
        flights.leave(first)  # gave up before the end
        await flight.done.wait()
        assert not flight.claim(third)  # third takes it first, but second joined before it
        flights.leave(third)
        assert flight.claim(second)
        assert not flight.claim(second)  # billed once
        flights.leave(second)
        outer.cancel_scope.cancel()
