"""The router's accounting across targets, waiting for capacity, and its failure causes
(issue 10, items 4, 5 and 8a), over real `Connection`s and `FakeTransport`s under the
autojump clock: every time asserted is exact virtual time.

- A continued stream bills the usage and cost of every attempt whose text the answer kept,
  names them in order (``produced_by``), announces the switch with a `Switched` event, and
  its kept prefix is not counted as wasted in the connection's metrics. `Restart` names the
  target that actually takes over.
- When every target is briefly unavailable (parked by a 429, breaker open), the router waits
  for the earliest one within the request's deadline (chat, stream and embed), and fails at
  once, with the earliest retry-after, only when none can be tried before the deadline.
- A deadline that ends a request after attempts failed reports what the attempts hit.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
from trio.testing import MockClock

from actors.testing._faults import (
    FaultPlan,
    Latency,
    NoResponse,
    RateLimited,
    SlowFirstToken,
    StreamCut,
)
from protocol._accumulate import StreamAccumulator
from protocol._errors import ErrorKind
from protocol._frames import Done, EventFrame, decode_server_frame, encode_frame
from protocol._messages import (
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Producer,
    Restart,
    StreamEvent,
    Switched,
    TextDelta,
    Usage,
)

from .test_router import CUT, SMART, TWO, Rig, always, ask, chat, collect, conn_table, rig, texts

PRICES = {"prices": {"*": {"input": 1_000_000.0, "output": 2_000_000.0}}}
"""One unit per input token, two per output token: costs are easy to check by hand."""


def three(policy: str, *, prefill: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Anthropic connections a, b, c (those named in *prefill* accept a prefill), one route."""
    conns = {
        name: conn_table(
            "anthropic", default_model=f"m-{name}", supports_prefill=name in prefill, **PRICES
        )
        for name in "abc"
    }
    routes = {"smart": {"targets": [{"connection": n} for n in "abc"], "mid_stream": policy}}
    return conns, routes


def used(r: Rig, name: str) -> tuple[int, int, int, int, float | None]:
    """Connection *name*'s recorded (input, output, wasted input, wasted output, cost)."""
    m = r.conn(name).metrics.snapshot().models[f"m-{name}"]
    return m.input_tokens, m.output_tokens, m.wasted_input_tokens, m.wasted_output_tokens, m.cost


def switches(events: list[StreamEvent]) -> list[Switched | Restart]:
    return [e for e in events if isinstance(e, Switched | Restart)]


# --------------------------------------------------------------------------- item 4


async def test_a_continued_stream_bills_every_attempt_whose_text_it_kept(
    autojump_clock: MockClock,
) -> None:
    conns, routes = three("continue", prefill="b")
    # a delivers its whole 60-word answer, then the body ends without the finish events.
    plans = {"a": always(StreamCut(after_tokens=60, how="eof"))}
    core = {"a": {"answer_tokens": 60}, "b": {"answer_tokens": 20}}
    async with rig(conns, routes, plans, core) as r:
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion), result
        a_in, a_out, a_wasted_in, a_wasted_out, a_cost = used(r, "a")
        b_in, b_out, b_wasted_in, b_wasted_out, b_cost = used(r, "b")
        assert (a_out, b_out) == (60, 20)
        assert result.usage == Usage(input_tokens=a_in + b_in, output_tokens=80)
        assert a_cost is not None
        assert b_cost is not None
        assert result.cost == a_cost + b_cost == a_in + b_in + 2 * 80
        assert (result.connection, result.model, result.attempts) == ("b", "m-b", 2)
        assert [(p.connection, p.model, p.usage.output_tokens) for p in result.produced_by] == [
            ("a", "m-a", 60),
            ("b", "m-b", 20),
        ]
        assert [p.cost for p in result.produced_by] == [a_cost, b_cost]
        # The switch is announced once, before b's first token; nothing is discarded.
        [switch] = switches(events)
        assert isinstance(switch, Switched)
        assert (switch.connection, switch.model) == ("b", "m-b")
        assert switch.reason.startswith("stream_interrupted")
        at = events.index(switch)
        assert len(texts(events[:at]).split()) == 60
        assert isinstance(events[at + 1], TextDelta)
        assert texts(events) == result.text
        # a's delivered answer is part of the result: billed, not wasted.
        assert (a_wasted_in, a_wasted_out, b_wasted_in, b_wasted_out) == (0, 0, 0, 0)


async def test_a_chain_of_continuations_names_every_producer_in_order(
    autojump_clock: MockClock,
) -> None:
    conns, routes = three("continue", prefill="bc")
    plans = {"a": always(StreamCut(after_tokens=3)), "b": always(StreamCut(after_tokens=4))}
    async with rig(conns, routes, plans) as r:
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion), result
        assert [p.connection for p in result.produced_by] == ["a", "b", "c"]
        assert [(s.connection, type(s)) for s in switches(events)] == [
            ("b", Switched),
            ("c", Switched),
        ]
        rows = [used(r, name) for name in "abc"]
        assert result.usage == Usage(
            input_tokens=sum(row[0] for row in rows), output_tokens=sum(row[1] for row in rows)
        )
        assert [p.usage for p in result.produced_by] == [
            Usage(input_tokens=row[0], output_tokens=row[1]) for row in rows
        ]
        assert all(row[2:4] == (0, 0) for row in rows)
        # b continued a's three tokens, c continued all seven.
        before_c = events[: events.index(switches(events)[1])]
        assert sum(isinstance(e, TextDelta) for e in before_c) == 7
        assert texts(before_c).encode() in r.transports["c"].attempts[0].body
        assert texts(events) == result.text


async def test_restart_names_the_target_that_takes_over_and_bills_only_it(
    autojump_clock: MockClock,
) -> None:
    conns, routes = three("restart")
    async with rig(conns, routes, {"a": CUT}) as r:
        r.conn("b").force_open()  # b is skipped: c takes over
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion), result
        [switch] = switches(events)
        assert isinstance(switch, Restart)
        assert (switch.connection, switch.model) == ("c", "m-c")
        assert texts(events[events.index(switch) :]) == result.text
        assert [(p.connection, p.model) for p in result.produced_by] == [("c", "m-c")]
        c_in, c_out, *_ = used(r, "c")
        assert result.usage == Usage(input_tokens=c_in, output_tokens=c_out)
        # a's discarded text stays wasted.
        a_in, a_out, a_wasted_in, a_wasted_out, _ = used(r, "a")
        assert (a_wasted_in, a_wasted_out) == (a_in, a_out) != (0, 0)


async def test_continue_never_sends_a_prefill_to_a_target_that_does_not_declare_it(
    autojump_clock: MockClock,
) -> None:
    conns, routes = three("continue", prefill="b")
    async with rig(conns, routes, {"a": CUT}) as r:
        r.conn("b").force_open()  # the only prefill target is unavailable
        events, result = await collect(r.router, ask(stream=True))
        assert isinstance(result, Completion), result
        assert result.connection == "c"
        assert b'"role":"assistant"' not in r.transports["c"].attempts[0].body
        [switch] = switches(events)
        assert isinstance(switch, Restart)
        assert switch.connection == "c"
        assert texts(events[events.index(switch) :]) == result.text
        assert [p.connection for p in result.produced_by] == ["c"]


async def test_chat_and_hedged_streams_name_their_one_producer(autojump_clock: MockClock) -> None:
    conns = {
        "a": conn_table("anthropic", default_model="m-a"),
        "b": conn_table(default_model="m-b"),
    }
    routes = {
        "smart": {"targets": [{"connection": "a"}, {"connection": "b"}], "hedge_after_s": 2.0}
    }
    async with rig(conns, routes, {"a": always(Latency(seconds=10.0))}) as r:
        events, streamed = await collect(r.router, ask(stream=True))
        assert isinstance(streamed, Completion), streamed
        assert [(p.connection, p.model) for p in streamed.produced_by] == [("b", "m-b")]
        assert streamed.produced_by[0].usage == streamed.usage
        assert switches(events) == []
        done = await chat(r.router, ask())
        assert [(p.connection, p.usage) for p in done.produced_by] == [("a", done.usage)]


# --------------------------------------------------------------------------- item 5


async def park_both(r: Rig) -> None:
    """Both targets answer one 429 (a: retry after 2 s, b: 1 s) and are parked by it."""
    first = await r.router.chat(ask())
    assert isinstance(first, Failure)
    assert first.kind is ErrorKind.RATE_LIMITED
    assert trio.current_time() == 0.0
    assert r.conn("a").unavailable_for(0.0) == 2.0
    assert r.conn("b").unavailable_for(0.0) == 1.0


PARK = {
    "a": FaultPlan.first(1, RateLimited(retry_after=2.0)),
    "b": FaultPlan.first(1, RateLimited(retry_after=1.0)),
}


async def test_chat_waits_for_the_earliest_target_to_become_available(
    autojump_clock: MockClock,
) -> None:
    async with rig(TWO, SMART, PARK) as r:
        await park_both(r)
        done = await chat(r.router, ask(timeout=30.0))
        assert (done.connection, trio.current_time()) == ("b", 1.0)
        assert done.attempts == 1
        assert len(r.faults("a")) == 1  # a was still parked: not tried


async def test_stream_waits_for_the_earliest_target_to_become_available(
    autojump_clock: MockClock,
) -> None:
    async with rig(TWO, SMART, PARK) as r:
        await park_both(r)
        events, result = await collect(r.router, ask(stream=True, timeout=30.0))
        assert isinstance(result, Completion), result
        assert (result.connection, trio.current_time()) == ("b", 1.0)
        assert texts(events) == result.text


async def test_embed_waits_for_the_earliest_target_to_become_available(
    autojump_clock: MockClock,
) -> None:
    async with rig(TWO, SMART, PARK) as r:
        await park_both(r)
        result = await r.router.embed(EmbedRequest(model="smart", inputs=["x"], timeout=30.0))
        assert isinstance(result, Embeddings), result
        assert (result.connection, trio.current_time()) == ("b", 1.0)


async def test_an_open_breaker_is_not_waited_for(autojump_clock: MockClock) -> None:
    breaker = {"breaker": {"minimum_calls": 1, "window_size": 1, "open_s": 3.0}}
    conns = {"a": conn_table(default_model="m-a", **breaker), "b": conn_table(default_model="m-b")}
    plans = {"a": FaultPlan.server_error_once(), "b": FaultPlan.first(1, RateLimited(5.0))}
    async with rig(conns, SMART, plans) as r:
        failed = await r.router.chat(ask())  # opens a's breaker for 3 s, parks b for 5 s
        assert isinstance(failed, Failure)
        assert r.conn("a").unavailable_for(0.0) == 3.0
        # The caller's fallback runs at once: no waiting through an open breaker, even when
        # the parked target could be waited for.
        refused = await r.router.chat(ask("a/m-a", timeout=10.0))
        assert isinstance(refused, Failure)
        assert (refused.kind, refused.retry_after) == (ErrorKind.CIRCUIT_OPEN, 3.0)
        assert trio.current_time() == 0.0
        # With a parked target too, the router waits, and wakes when the first target is
        # available again: a's breaker lets a probe through at 3 s.
        done = await chat(r.router, ask(timeout=10.0))
        assert (done.connection, trio.current_time()) == ("a", 3.0)


async def test_no_wait_when_no_target_can_be_tried_before_the_deadline(
    autojump_clock: MockClock,
) -> None:
    async with rig(TWO, SMART, PARK) as r:
        await park_both(r)
        # b becomes available exactly at the deadline: too late to try it.
        for request in (ask(timeout=1.0), ask(timeout=1.0, stream=True)):
            if request.stream:
                events, result = await collect(r.router, request)
                assert events == []
            else:
                result = await r.router.chat(request)
            assert isinstance(result, Failure)
            assert (result.kind, result.retry_after, result.attempts) == (
                ErrorKind.CIRCUIT_OPEN,
                1.0,
                0,
            )
            assert trio.current_time() == 0.0


async def test_a_caller_leaving_while_the_router_waits_stops_it(autojump_clock: MockClock) -> None:
    async with rig(TWO, SMART, PARK) as r:
        await park_both(r)
        with trio.move_on_after(0.5):
            await r.router.chat(ask(timeout=30.0))
        assert trio.current_time() == 0.5
        await trio.sleep(5.0)
        assert len(r.faults("a")) == len(r.faults("b")) == 1


async def test_a_mid_stream_restart_waits_for_the_parked_fallback(
    autojump_clock: MockClock,
) -> None:
    conns, routes = three("restart")
    plans = {"a": CUT, "b": FaultPlan.first(1, RateLimited(retry_after=2.0))}
    async with rig(conns, routes, plans) as r:
        r.conn("c").force_open()
        parked = await r.router.chat(ask("b/m-b"))
        assert isinstance(parked, Failure)
        events, result = await collect(r.router, ask(stream=True, timeout=30.0))
        assert isinstance(result, Completion), result
        assert (result.connection, trio.current_time()) == ("b", 2.0)
        [switch] = switches(events)
        assert isinstance(switch, Restart)
        assert switch.connection == "b"


# --------------------------------------------------------------------------- item 8a


async def test_a_deadline_after_failed_attempts_reports_what_they_hit(
    autojump_clock: MockClock,
) -> None:
    conns = {
        "a": conn_table(default_model="m-a", timeouts={"first_token": 3.0}),
        "b": conn_table(default_model="m-b"),
    }
    plans = {"a": always(NoResponse()), "b": always(SlowFirstToken(seconds=60.0))}
    async with rig(conns, SMART, plans) as r:
        for request in (ask(timeout=10.0), ask(timeout=10.0, stream=True)):
            start = trio.current_time()
            if request.stream:
                _, result = await collect(r.router, request)
            else:
                result = await r.router.chat(request)
            assert isinstance(result, Failure)
            assert trio.current_time() - start == 10.0
            assert result.kind is ErrorKind.DEADLINE
            assert not result.retryable
            assert result.attempts == 2
            assert result.message.startswith("deadline passed after 2 attempts on 2 targets")
            # a's own cause, whatever b was doing when time ran out.
            assert "; last cause: timeout: " in result.message
            assert "within 3s" in result.message
            assert "on 'a'" in result.message


# --------------------------------------------------------------------------- on the wire


def test_switched_and_producers_cross_the_wire_and_old_peers_still_decode() -> None:
    done = Completion(
        text="ab",
        connection="b",
        produced_by=[Producer(connection="a", model="m-a"), Producer(connection="b", cost=1.5)],
    )
    for encoding in ("json", "msgpack"):
        for frame in (EventFrame(id="r", event=Switched(reason="x", connection="b")),
                      Done(id="r", result=done)):  # fmt: skip
            assert decode_server_frame(encode_frame(frame, encoding)) == frame
    # A completion from an older server has no producers; a client folding events keeps
    # the text across a switch (and a client that does not know the event may skip it).
    old = msgspec.json.encode({"type": "done", "id": "r", "result": {"text": "x"}}).decode()
    decoded = decode_server_frame(old)
    assert isinstance(decoded, Done)
    assert decoded.result.produced_by == []
    acc = StreamAccumulator()
    for event in (TextDelta(text="a"), Switched(reason="cut"), TextDelta(text="b")):
        acc.add(event)
    assert acc.text == "ab"
