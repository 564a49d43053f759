"""The Redis store against a real redis-server: the Lua scripts answer exactly what the Python
model (`actors._shared_limits.StoreModel`) answers, call for call, with an exact ``now``; and
every failure talking to Redis becomes `StoreUnavailable`, bounded by the caller."""

from __future__ import annotations

import random

import pytest
import trio

from actors._redis_state import RedisStore, keys
from actors._shared_limits import (
    BreakerPublish,
    Delta,
    ModelDelta,
    Observation,
    StoreModel,
    SyncReply,
    SyncRequest,
    TakeReply,
    TakeRequest,
)
from actors._shared_state import StoreUnavailable
from protocol._state_url import parse_state

from .conftest import RedisServer


def store_for(server: RedisServer, timeout: float = 1.0) -> RedisStore:
    url = parse_state(server.url)
    assert url is not None
    return RedisStore(url, timeout=timeout)


def same_take(a: TakeReply, b: TakeReply) -> None:
    assert (a.ok, a.requests, a.tokens, a.slots, a.reason) == (
        b.ok,
        b.requests,
        b.tokens,
        b.slots,
        b.reason,
    )
    if a.wait is None or b.wait is None:
        assert a.wait is b.wait
    else:
        assert a.wait == pytest.approx(b.wait, rel=1e-9, abs=1e-9)


def same_sync(a: SyncReply, b: SyncReply) -> None:
    assert (a.breaker, a.version, a.applied) == (b.breaker, b.version, b.applied)
    assert a.breaker_remaining == pytest.approx(b.breaker_remaining, rel=1e-9, abs=1e-9)
    assert a.parked == pytest.approx(b.parked, rel=1e-9, abs=1e-9)
    if a.totals is None or b.totals is None:
        assert a.totals is b.totals
    else:
        assert a.totals.keys() == b.totals.keys()
        for model, row in a.totals.items():
            assert row == pytest.approx(b.totals[model], rel=1e-9, abs=1e-12)


class Script:
    """A seeded random stream of calls from a few processes on two connections."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 1_000.0
        self.seqs: dict[tuple[str, str], int] = {}
        self.limits = {
            "x": (60, 6000, 2),
            "y": (0, 600, 0),
        }

    def call(self) -> tuple[str, str, TakeRequest | SyncRequest]:
        rng = self.rng
        self.now += rng.choice([0.0, 0.0, rng.uniform(0, 0.2), rng.uniform(0, 3.0)])
        conn = rng.choice("xy")
        pid = rng.choice("abc")
        rpm, tpm, concurrency = self.limits[conn]
        if rng.random() < 0.1:  # a process with other limits (a config being rolled out)
            rpm, tpm = rng.choice([0, 30, 60]), rng.choice([0, 300, 6000])
        if rng.random() < 0.6:
            return "take", conn, TakeRequest(
                pid=pid,
                rpm=rpm,
                tpm=tpm,
                concurrency=concurrency,
                need_requests=rng.choice([0, 1, 1]) if rpm else 0,
                need_tokens=rng.choice([0, 50, 400, 5000]) if tpm else 0,
                need_slots=rng.choice([0, 1]) if concurrency else 0,
                extra_requests=rng.choice([0, 0, 3, 50]),
                extra_tokens=rng.choice([0, 0, 100, 10_000]),
                extra_slots=rng.choice([0, 0, 1, 3]),
                held=rng.choice([0, 0, 1, 2]),
                ttl=rng.choice([30.0, 2.0]),
                now=self.now,
            )
        deltas = []
        key = (conn, pid)
        for _ in range(rng.choice([0, 1, 1, 2])):
            if rng.random() < 0.2 and self.seqs.get(key):
                seq = self.seqs[key]  # sent again: must be applied once
            else:
                seq = self.seqs[key] = self.seqs.get(key, 0) + 1
            deltas.append(self.delta(seq))
        breaker = None
        if rng.random() < 0.3:
            state = rng.choice(["open", "open", "closed", "forced_open"])
            breaker = BreakerPublish(
                state=state,  # type: ignore[arg-type]
                remaining=rng.choice([0.5, 5.0, 10.0]),
                base=rng.randint(0, 6),
            )
        return "sync", conn, SyncRequest(
            pid=pid,
            rpm=rpm,
            tpm=tpm,
            held=rng.choice([0, 1, 2, -1]) if rng.random() < 0.9 else -1,
            deltas=deltas,
            breaker=breaker,
            totals=rng.random() < 0.5,
            now=self.now,
        )

    def delta(self, seq: int) -> Delta:
        rng = self.rng
        observed = None
        if rng.random() < 0.3:
            observed = Observation(
                remaining_requests=rng.choice([None, 0, 5, 59]),
                limit_requests=rng.choice([None, 60]),
                reset_requests=rng.choice([None, 0.0, 0.5, 4.0]),
                remaining_tokens=rng.choice([None, 10, 500]),
                limit_tokens=rng.choice([None, 600, 6000]),
                reset_tokens=rng.choice([None, 1.5, 60.0]),
            )
        usage = {}
        if rng.random() < 0.5:
            for model in rng.sample(["m1", "gpt-4o:mini", "a b"], rng.randint(1, 2)):
                usage[model] = ModelDelta(
                    input=rng.randint(0, 500),
                    output=rng.randint(0, 500),
                    wasted_input=rng.choice([0, 10]),
                    wasted_output=rng.choice([0, 7]),
                    cost=rng.choice([0.0, 0.000123, 1.5]),
                )
        return Delta(
            seq=seq,
            requests=rng.choice([0, 0, 1, 5]),
            tokens=rng.choice([0, 0, 120, -300]),
            park=rng.choice([None, None, None, 0.0, 2.5]),
            observed=observed,
            usage=usage,
        )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lua_scripts_answer_what_the_model_answers(
    redis_server: RedisServer, seed: int
) -> None:
    model = StoreModel()
    script = Script(seed)
    store = store_for(redis_server)
    async with store.open():
        for _ in range(600):
            kind, conn, request = script.call()
            if isinstance(request, TakeRequest):
                same_take(await store.take(conn, request), model.take(conn, request, 0.0))
            else:
                assert kind == "sync"
                same_sync(await store.sync(conn, request), model.sync(conn, request, 0.0))


async def test_keys_are_per_connection_and_hash_tagged() -> None:
    assert keys("openai") == [
        "switchboard:{openai}:state",
        "switchboard:{openai}:procs",
        "switchboard:{openai}:slots",
        "switchboard:{openai}:seq",
        "switchboard:{openai}:usage",
    ]
    assert keys("a:b}{c")[0] == "switchboard:{a%3Ab%7D%7Bc}:state"


async def test_redis_time_is_used_when_no_now_is_given(redis_server: RedisServer) -> None:
    store = store_for(redis_server)
    async with store.open():
        for _ in range(60):
            assert (await store.take("c", TakeRequest(pid="p", rpm=60, need_requests=1))).ok
        refused = await store.take("c", TakeRequest(pid="p", rpm=60, need_requests=1))
        assert refused.reason == "requests"
        assert refused.wait is not None
        assert 0.9 < refused.wait <= 1.0


async def test_failures_become_store_unavailable(redis_server: RedisServer) -> None:
    store = store_for(redis_server, timeout=0.2)
    request = TakeRequest(pid="p", rpm=60, need_requests=1)
    with pytest.raises(StoreUnavailable):
        await store.take("c", request)  # not open
    async with store.open():
        await store.ping()
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.take("c", request)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        redis_server.start()  # an empty server on the same port: scripts are loaded again
        assert (await store.take("c", request)).ok


async def test_a_paused_server_is_bounded_by_the_caller_and_answers_in_order_after(
    redis_server: RedisServer,
) -> None:
    store = store_for(redis_server, timeout=5.0)
    request = SyncRequest(pid="p", deltas=[Delta(seq=1, usage={"m": ModelDelta(input=7)})])
    async with store.open():
        await store.ping()  # connected: the next call is written and waits for its answer
        redis_server.pause()
        with trio.move_on_after(0.3) as scope:
            await store.sync("c", request)
        assert scope.cancelled_caught
        redis_server.resume()
        # The call that timed out ran after all; sent again, it is applied once.
        again = SyncRequest(pid="p", deltas=[Delta(seq=1, usage={"m": ModelDelta(input=7)})],
                            totals=True)  # fmt: skip
        reply = await store.sync("c", again)
        assert reply.totals == {"m": [7, 0, 0, 0, 0]}
        assert reply.applied == 1


def test_every_coredis_exception_is_translated() -> None:
    """The boundary catches every exception class coredis defines (they all derive from
    ``RedisError``, itself an `Exception`)."""
    import inspect

    import coredis.exceptions

    from actors._redis_state import _unavailable

    for name, cls in inspect.getmembers(coredis.exceptions, inspect.isclass):
        if issubclass(cls, BaseException) and cls.__module__.startswith("coredis"):
            assert issubclass(cls, Exception), name
            try:
                exc = cls("boom")
            except (TypeError, ValueError):  # needs other arguments (AskError: "slot host")
                exc = cls.__new__(cls)
            translated = _unavailable(exc)
            assert isinstance(translated, StoreUnavailable)
            assert cls.__name__ in str(translated)
