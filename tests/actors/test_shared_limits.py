"""The pure parts of shared state: the store model (what the Lua scripts do), a process's
allowance, and how breakers publish and adopt shared decisions. Exact times throughout."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors._breaker import BreakerState
from actors._shared_limits import (
    LEASE_FRACTION,
    LEASE_S,
    NOTHING,
    PROCESS_TTL_S,
    Allowance,
    BreakerPublish,
    BreakerView,
    Delta,
    ModelDelta,
    Need,
    Observation,
    StoreModel,
    SyncRequest,
    TakeReply,
    TakeRequest,
    observation,
    plan_adopt,
    plan_publish,
)
from protocol._ratelimit import RateLimitInfo

S = BreakerState


def take(store: StoreModel, now: float, pid: str = "a", **fields: int) -> TakeReply:
    return store.take("c", TakeRequest(pid=pid, **fields), now)


def sync(store: StoreModel, now: float, pid: str = "a", **fields: object) -> object:
    return store.sync("c", SyncRequest(pid=pid, **fields), now)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the store: buckets


def test_rpm_60_grants_sixty_at_once_then_one_a_second() -> None:
    store = StoreModel()
    for _ in range(60):
        assert take(store, 100.0, rpm=60, need_requests=1).ok
    refused = take(store, 100.0, rpm=60, need_requests=1)
    assert (refused.ok, refused.wait, refused.reason) == (False, 1.0, "requests")
    assert take(store, 100.5, rpm=60, need_requests=1).wait == 0.5
    assert take(store, 101.0, rpm=60, need_requests=1).ok
    assert take(store, 101.0, pid="b", rpm=60, need_requests=1).wait == 1.0


def test_extra_is_granted_only_as_far_as_available() -> None:
    store = StoreModel()
    assert take(store, 0.0, rpm=60, need_requests=1, extra_requests=54).requests == 55
    got = take(store, 0.0, rpm=60, need_requests=1, extra_requests=10)
    assert (got.ok, got.requests) == (True, 5)  # the need and the 4 left
    assert take(store, 0.0, rpm=60, need_requests=1).wait == 1.0
    # An extra alone never waits and never fails: it is what is there.
    assert take(store, 0.5, rpm=60, extra_requests=3) == TakeReply(ok=True)


def test_tokens_wait_exactly_for_the_refill() -> None:
    store = StoreModel()  # tpm 600: 10 tokens a second
    assert take(store, 0.0, tpm=600, need_tokens=550).ok
    refused = take(store, 0.0, tpm=600, need_tokens=100)
    assert (refused.wait, refused.reason) == (5.0, "tokens")
    assert take(store, 5.0, tpm=600, need_tokens=100).tokens == 100


def test_a_need_above_the_learned_capacity_is_clamped_to_it() -> None:
    store = StoreModel()
    seen = Observation(remaining_tokens=100, limit_tokens=100, reset_tokens=6.0)
    sync(store, 0.0, tpm=10_000, deltas=[Delta(seq=1, observed=seen)])
    # remaining == limit: the provider's bucket is full, nothing learned
    assert take(store, 0.0, tpm=10_000, need_tokens=5_000).ok
    seen = Observation(remaining_tokens=50, limit_tokens=100, reset_tokens=5.0)
    sync(store, 1.0, tpm=10_000, deltas=[Delta(seq=2, observed=seen)])
    refused = take(store, 1.0, tpm=10_000, need_tokens=5_000)  # costs the learned cap: 100
    assert (refused.wait, refused.reason) == (5.0, "tokens")  # 50 more at 10/s
    assert take(store, 6.0, tpm=10_000, need_tokens=5_000).ok  # learned bucket expired


def test_learned_requests_bound_every_process_until_the_reset() -> None:
    store = StoreModel()
    seen = Observation(remaining_requests=2, limit_requests=100, reset_requests=10.0)
    sync(store, 0.0, rpm=1_000, deltas=[Delta(seq=1, observed=seen)])
    assert take(store, 0.0, rpm=1_000, need_requests=1, extra_requests=5).requests == 2
    refused = take(store, 0.0, pid="b", rpm=1_000, need_requests=1)
    assert refused.reason == "requests"
    assert refused.wait == pytest.approx(1 / 9.8)  # (100 - 2) / 10 s refill
    # A process without a request limit is not held back by learned request buckets.
    assert take(store, 0.0, pid="b", tpm=1_000, need_tokens=1).ok


def test_a_park_holds_everyone_until_it_ends() -> None:
    store = StoreModel()
    reply = sync(store, 10.0, rpm=60, deltas=[Delta(seq=1, park=2.0)])
    assert reply.parked == 2.0  # type: ignore[attr-defined]
    refused = take(store, 11.0, pid="b", rpm=60, need_requests=1)
    assert (refused.wait, refused.reason) == (1.0, "parked")
    assert take(store, 12.0, pid="b", rpm=60, need_requests=1).ok
    # A park only extends.
    sync(store, 12.0, rpm=60, deltas=[Delta(seq=2, park=5.0), Delta(seq=3, park=1.0)])
    assert take(store, 13.0, rpm=60, need_requests=1).wait == 4.0


def test_returns_and_debts_move_our_bucket() -> None:
    store = StoreModel()
    assert take(store, 0.0, tpm=600, need_tokens=600).ok
    sync(store, 0.0, tpm=600, deltas=[Delta(seq=1, tokens=-300)])  # a debt of 300
    assert take(store, 0.0, tpm=600, need_tokens=100).wait == 40.0
    sync(store, 0.0, tpm=600, deltas=[Delta(seq=2, tokens=400)])  # a refund
    assert take(store, 0.0, tpm=600, need_tokens=100).ok
    sync(store, 0.0, tpm=600, deltas=[Delta(seq=3, tokens=10_000)])  # capped at capacity
    assert take(store, 0.0, tpm=600, need_tokens=600).ok
    assert not take(store, 0.0, tpm=600, need_tokens=1).ok


# ---------------------------------------------------------------------------- the store: slots


def test_concurrency_counts_every_process_and_resyncs_absolute_counts() -> None:
    store = StoreModel()
    assert take(store, 0.0, pid="a", concurrency=2, need_slots=1).slots == 1
    assert take(store, 0.0, pid="b", concurrency=2, need_slots=1).slots == 1
    refused = take(store, 0.0, pid="c", concurrency=2, need_slots=1)
    assert (refused.ok, refused.wait, refused.reason) == (False, None, "concurrency")
    sync(store, 1.0, pid="a", held=0)  # a's request ended
    assert take(store, 1.0, pid="c", concurrency=2, need_slots=1).ok
    # A process that says it holds 2 (say, it lost count earlier) holds 2, not more.
    take(store, 1.0, pid="b", concurrency=4, held=2, need_slots=1)
    assert store.connections["c"].slots == {"a": 0, "b": 3, "c": 1}


def test_extra_slots_are_granted_as_far_as_free() -> None:
    store = StoreModel()
    assert take(store, 0.0, pid="a", concurrency=4, need_slots=1, extra_slots=2).slots == 3
    got = take(store, 0.0, pid="b", concurrency=4, need_slots=1, extra_slots=5)
    assert got.slots == 1
    assert store.connections["c"].slots == {"a": 3, "b": 1}
    assert take(store, 0.0, pid="b", concurrency=4, held=1, extra_slots=1).slots == 0


def test_the_slots_of_a_process_that_went_away_are_freed_after_its_ttl() -> None:
    store = StoreModel()
    assert take(store, 0.0, pid="a", concurrency=1, need_slots=1).ok
    assert take(store, PROCESS_TTL_S - 1, pid="b", concurrency=1, need_slots=1).reason == (
        "concurrency"
    )
    assert take(store, PROCESS_TTL_S, pid="b", concurrency=1, need_slots=1).ok


def test_leaving_frees_slots_at_once() -> None:
    store = StoreModel()
    take(store, 0.0, pid="a", concurrency=1, need_slots=1)
    sync(store, 0.5, pid="a", held=-1)
    assert take(store, 0.5, pid="b", concurrency=1, need_slots=1).ok
    assert "a" not in store.connections["c"].procs


# ---------------------------------------------------------------------------- the store: syncs


def test_a_batch_is_applied_at_most_once() -> None:
    store = StoreModel()
    batch = Delta(seq=1, usage={"m": ModelDelta(input=10, output=5, cost=0.5)})
    first = sync(store, 0.0, deltas=[batch], totals=True)
    again = sync(store, 1.0, deltas=[batch, Delta(seq=2, usage={"m": ModelDelta(input=1)})],
                 totals=True)  # fmt: skip
    assert first.totals == {"m": [10, 5, 0, 0, 0.5]}  # type: ignore[attr-defined]
    assert again.totals == {"m": [11, 5, 0, 0, 0.5]}  # type: ignore[attr-defined]
    assert again.applied == 2  # type: ignore[attr-defined]
    # Another process's numbers are its own.
    other = sync(store, 1.0, pid="b", deltas=[batch], totals=True)
    assert other.totals == {"m": [21, 10, 0, 0, 1.0]}  # type: ignore[attr-defined]


def test_breaker_an_opening_wins_and_keeps_the_later_end() -> None:
    store = StoreModel()
    reply = sync(store, 0.0, breaker=BreakerPublish(state="open", remaining=5.0))
    assert (reply.breaker, reply.breaker_remaining, reply.version) == ("open", 5.0, 1)  # type: ignore[attr-defined]
    reply = sync(store, 1.0, pid="b", breaker=BreakerPublish(state="open", remaining=2.0))
    assert (reply.breaker_remaining, reply.version) == (4.0, 2)  # type: ignore[attr-defined]
    reply = sync(store, 6.0, pid="b")
    assert (reply.breaker, reply.breaker_remaining) == ("open", 0.0)  # type: ignore[attr-defined]


def test_breaker_a_close_on_stale_knowledge_is_ignored() -> None:
    store = StoreModel()
    sync(store, 0.0, breaker=BreakerPublish(state="open", remaining=5.0))  # version 1
    sync(store, 0.0, pid="b", breaker=BreakerPublish(state="open", remaining=9.0))  # 2
    reply = sync(store, 6.0, breaker=BreakerPublish(state="closed", base=1))
    assert (reply.breaker, reply.version) == ("open", 2)  # type: ignore[attr-defined]
    reply = sync(store, 10.0, breaker=BreakerPublish(state="closed", base=2))
    assert (reply.breaker, reply.version) == ("closed", 3)  # type: ignore[attr-defined]


def test_breaker_forced_open_is_only_left_by_a_close() -> None:
    store = StoreModel()
    sync(store, 0.0, breaker=BreakerPublish(state="forced_open"))
    reply = sync(store, 1.0, pid="b", breaker=BreakerPublish(state="open", remaining=5.0))
    assert (reply.breaker, reply.version) == ("forced_open", 1)  # type: ignore[attr-defined]
    reply = sync(store, 2.0, breaker=BreakerPublish(state="closed", base=1))
    assert (reply.breaker, reply.version) == ("closed", 2)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- exactness


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 3.0),  # time step
            st.sampled_from("abcd"),  # process
            st.integers(0, 1),  # need a request
            st.integers(0, 20),  # extra
            st.integers(0, 5),  # returned unused (sync)
        ),
        max_size=80,
    )
)
def test_all_processes_together_never_exceed_one_bucket(
    steps: list[tuple[float, str, int, int, int]],
) -> None:
    """Whatever processes draw, return and lease, the requests granted between any two
    moments never exceed rpm + rpm/60 x elapsed (the token bucket's bound)."""
    rpm = 12
    store = StoreModel()
    now = 0.0
    held: dict[str, int] = {}  # drawn, not yet used
    sent: list[float] = []  # when requests were "sent" (used from a lease)
    seqs: dict[str, int] = {}
    for step, pid, need, extra, back in steps:
        now += step
        if need and held.get(pid, 0) > 0:
            held[pid] -= 1
            sent.append(now)
            continue
        reply = take(store, now, pid=pid, rpm=rpm, need_requests=need, extra_requests=extra)
        if reply.ok:
            held[pid] = held.get(pid, 0) + reply.requests - need
            sent.extend([now] * need)
        back = min(back, held.get(pid, 0))
        if back:
            held[pid] -= back
            seqs[pid] = seqs.get(pid, 0) + 1
            sync(store, now, pid=pid, rpm=rpm, deltas=[Delta(seq=seqs[pid], requests=back)])
    for i in range(len(sent)):
        for j in range(i, len(sent)):
            assert j - i + 1 <= rpm + rpm / 60 * (sent[j] - sent[i]) + 1e-9


# ---------------------------------------------------------------------------- the allowance


def test_need_clamps_tokens_to_the_limit_and_counts_only_shared_kinds() -> None:
    assert Allowance.need(500, 60, 100, 0) == Need(1, 100, 0)
    assert Allowance.need(50, 0, 0, 4) == Need(0, 0, 1)
    assert Allowance.need(50, 0, 0, 0) == NOTHING


def test_shortfall_consume_and_held() -> None:
    a = Allowance()
    need = Need(1, 100, 1)
    assert a.shortfall(need) == need
    a.credit(TakeReply(ok=True, requests=3, tokens=150, slots=1))
    assert a.shortfall(need) == NOTHING
    a.consume(need, 0.0)
    assert (a.requests, a.tokens, a.idle_slots, a.in_use, a.held) == (2, 50, 0, 1, 1)
    assert a.shortfall(need) == Need(0, 50, 1)


def test_lease_follows_demand_and_stops_at_a_fraction_of_the_limit() -> None:
    a = Allowance()
    assert a.lease(60_000, 6_000_000) == (0, 0)  # no demand seen yet
    need = Need(1, 100, 0)
    a.credit(TakeReply(ok=True, requests=10, tokens=1000))
    for i in range(5):
        a.consume(need, i * 0.01)  # 100 requests a second
    requests, tokens = a.lease(60_000, 6_000_000)
    assert requests == round(100 * LEASE_S)
    assert tokens == round(100 * LEASE_S * 100)
    assert a.lease(60, 600) == (int(60 * LEASE_FRACTION), int(600 * LEASE_FRACTION))


def test_settle_refunds_into_the_allowance_and_flushes_what_it_cannot_cover() -> None:
    a = Allowance()
    need = Need(1, 100, 1)
    a.credit(TakeReply(ok=True, requests=2, tokens=230, slots=1))
    a.consume(need, 0.0)
    a.settle(need, 40)
    assert (a.tokens, a.debt, a.in_use, a.idle_slots) == (190, 0, 0, 1)
    a.consume(need, 1.0)
    a.settle(need, 250)  # 150 more than drawn: 90 from the allowance, 60 owed
    assert (a.tokens, a.debt) == (0, 60)
    assert a.surplus(10.0, 60, 600) == (0, -60, 1)
    assert (a.debt, a.idle_slots) == (0, 0)


def test_settle_unknown_usage_keeps_the_reservation_and_cancel_gives_all_back() -> None:
    a = Allowance()
    need = Need(1, 100, 1)
    a.credit(TakeReply(ok=True, requests=1, tokens=100, slots=1))
    a.consume(need, 0.0)
    a.settle(need, None)
    assert (a.requests, a.tokens, a.idle_slots) == (0, 0, 1)
    a.credit(TakeReply(ok=True, requests=1, tokens=100))
    a.consume(need, 0.0)
    a.cancel(need)
    assert (a.requests, a.tokens, a.idle_slots, a.in_use) == (1, 100, 1, 0)


def test_surplus_keeps_the_next_lease_while_busy_and_gives_all_back_when_idle() -> None:
    a = Allowance()
    need = Need(1, 0, 0)
    a.credit(TakeReply(ok=True, requests=100))
    for i in range(11):
        a.consume(need, i * 0.01)
    keep, _ = a.lease(60_000, 0)
    assert a.surplus(0.1, 60_000, 0) == (89 - keep, 0, 0)
    assert a.requests == keep
    assert a.surplus(0.1 + LEASE_S, 60_000, 0) == (keep, 0, 0)  # idle for LEASE_S
    a.credit(TakeReply(ok=True, requests=5))
    a.consume(need, 1.0)
    a.give_back_all()
    assert a.surplus(1.0, 60_000, 0) == (4, 0, 0)


def test_surplus_keeps_idle_slots_up_to_the_recent_peak_while_busy() -> None:
    a = Allowance()
    one = Need(0, 0, 1)
    a.credit(TakeReply(ok=True, slots=5))
    for _ in range(4):
        a.consume(one, 0.0)
    for _ in range(3):
        a.settle(one, None)  # peak 4, 1 in use, 4 idle
    assert a.surplus(0.05, 0, 0) == (0, 0, 1)  # keeps 3: the peak since the last sync
    assert (a.idle_slots, a.in_use) == (3, 1)
    assert a.surplus(0.06, 0, 0) == (0, 0, 3)  # peak now 1: nothing idle is needed
    a.settle(one, None)
    assert a.surplus(1.0, 0, 0) == (0, 0, 1)  # idle for LEASE_S: all back


def test_forget_in_use_after_a_crash() -> None:
    a = Allowance()
    a.credit(TakeReply(ok=True, slots=3))
    for _ in range(3):
        a.consume(Need(0, 0, 1), 0.0)
    a.forget_in_use(1)
    assert a.held == 1
    a.forget_in_use(2)
    assert a.held == 1


def test_observation_counts_resets_from_when_it_is_sent() -> None:
    info = RateLimitInfo(remaining_requests=5, limit_requests=10, reset_requests=2.0,
                         remaining_tokens=10, reset_tokens=0.5, retry_after=9.0)  # fmt: skip
    assert observation(info, 1.0) == Observation(
        remaining_requests=5, limit_requests=10, reset_requests=1.0, remaining_tokens=10,
        reset_tokens=0.0,
    )  # fmt: skip
    assert observation(RateLimitInfo(retry_after=3.0), 0.0) is None


# ---------------------------------------------------------------------------- the breaker


OPEN_AT_9 = BreakerView(S.OPEN, 9.0)


@pytest.mark.parametrize(
    ("seen", "current", "published"),
    [
        (BreakerView(S.CLOSED, None), OPEN_AT_9, BreakerPublish(state="open", remaining=4.0)),
        (BreakerView(S.HALF_OPEN, None), OPEN_AT_9, BreakerPublish(state="open", remaining=4.0)),
        (OPEN_AT_9, OPEN_AT_9, None),
        (BreakerView(S.OPEN, 7.0), OPEN_AT_9, BreakerPublish(state="open", remaining=4.0)),
        (OPEN_AT_9, BreakerView(S.HALF_OPEN, None), None),  # time passing is nobody's news
        (BreakerView(S.HALF_OPEN, None), BreakerView(S.CLOSED, None),
         BreakerPublish(state="closed", base=3)),
        (OPEN_AT_9, BreakerView(S.CLOSED, None), BreakerPublish(state="closed", base=3)),
        (BreakerView(S.FORCED_OPEN, None), BreakerView(S.CLOSED, None),
         BreakerPublish(state="closed", base=3)),
        (BreakerView(S.CLOSED, None), BreakerView(S.FORCED_OPEN, None),
         BreakerPublish(state="forced_open")),
        (BreakerView(S.CLOSED, None), BreakerView(S.DISABLED, None), None),
        (BreakerView(S.DISABLED, None), BreakerView(S.CLOSED, None), None),
        (BreakerView(S.CLOSED, None), BreakerView(S.CLOSED, None), None),
    ],
)
def test_plan_publish(
    seen: BreakerView, current: BreakerView, published: BreakerPublish | None
) -> None:
    assert plan_publish(seen, current, 3, 5.0) == published


@pytest.mark.parametrize(
    ("local", "shared", "remaining", "plan"),
    [
        (S.CLOSED, "open", 4.0, ("open", 14.0)),
        (S.HALF_OPEN, "open", 4.0, ("open", 14.0)),
        (S.OPEN, "open", 4.0, None),
        (S.CLOSED, "open", 0.0, None),  # over: each process probes on its own
        (S.DISABLED, "open", 4.0, None),
        (S.FORCED_OPEN, "open", 4.0, None),
        (S.CLOSED, "forced_open", 0.0, ("force_open", None)),
        (S.OPEN, "forced_open", 0.0, ("force_open", None)),
        (S.METRICS_ONLY, "forced_open", 0.0, None),
        (S.OPEN, "closed", 0.0, ("close", None)),
        (S.HALF_OPEN, "closed", 0.0, ("close", None)),
        (S.FORCED_OPEN, "closed", 0.0, ("force_close", None)),
        (S.CLOSED, "closed", 0.0, None),
        (S.DISABLED, "closed", 0.0, None),
    ],
)
def test_plan_adopt(
    local: BreakerState, shared: str, remaining: float, plan: tuple[str, float | None] | None
) -> None:
    assert plan_adopt(local, None, shared, remaining, 10.0) == plan  # type: ignore[arg-type]


def test_messages_leave_defaults_out_of_the_json() -> None:
    import msgspec

    encoded = msgspec.json.encode(TakeRequest(pid="p", rpm=60, need_requests=1))
    assert encoded == b'{"pid":"p","rpm":60,"need_requests":1}'
    assert not math.isnan(0.0)
