"""The pure rate limiter: exact virtual-time schedules, then a Hypothesis state machine that
checks it against naive models (window sums, a list of outstanding grants, a FIFO list)."""

from __future__ import annotations

import math
from collections.abc import Hashable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from actors._limiter import Grant, Limiter, LimiterSnapshot, Wait
from protocol._config import RateLimitConfig
from protocol._ratelimit import RateLimitInfo


def limiter(
    rpm: int | None = None, tpm: int | None = None, concurrency: int | None = None
) -> Limiter:
    return Limiter(
        RateLimitConfig(
            requests_per_minute=rpm, tokens_per_minute=tpm, concurrent_requests=concurrency
        )
    )


def grant(result: Grant | Wait) -> Grant:
    assert isinstance(result, Grant), result
    return result


def wait(result: Grant | Wait) -> Wait:
    assert isinstance(result, Wait), result
    return result


def drain(lim: Limiter, now: float, tokens: int = 0) -> list[Grant]:
    """Reserve until refused, finishing each grant at once with its estimate."""
    out: list[Grant] = []
    while isinstance(got := lim.reserve(tokens, now), Grant):
        out.append(got)
        lim.finish(got, tokens, now)
    return out


# ---------------------------------------------------------------------------- schedules


def test_unlimited_always_grants_with_fresh_ids() -> None:
    lim = limiter()
    grants = [grant(lim.reserve(10**9, 0.0)) for _ in range(1000)]
    assert len({g.id for g in grants}) == 1000
    assert lim.in_flight == 1000
    assert lim.snapshot(0.0) == LimiterSnapshot(
        available_requests=None,
        available_tokens=None,
        in_flight=1000,
        concurrency_limit=None,
        queued=0,
        queued_tokens=0,
        oldest_queued_at=None,
        parked_until=None,
        debt=0.0,
    )


def test_rpm_60_burst_then_one_per_second_exactly() -> None:
    lim = limiter(rpm=60)
    assert len(drain(lim, 0.0)) == 60
    refused = wait(lim.reserve(0, 0.0))
    assert refused == Wait(until=1.0, reason="requests")
    assert isinstance(lim.reserve(0, 0.999), Wait)
    now = 1.0
    times = []
    for _ in range(5):
        g = grant(lim.reserve(0, now))
        times.append(g.granted_at)
        lim.finish(g, 0, now)
        nxt = wait(lim.reserve(0, now))
        assert nxt.until is not None
        now = nxt.until
    assert times == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_idle_bucket_refills_to_capacity_only() -> None:
    lim = limiter(rpm=60)
    drain(lim, 0.0)
    # An hour idle refills to 60, not 3600.
    assert len(drain(lim, 3600.0)) == 60


def test_tpm_reservation_refund_and_debt() -> None:
    lim = limiter(tpm=600)  # 10 tokens per second
    a = grant(lim.reserve(400, 0.0))
    b = grant(lim.reserve(200, 0.0))
    assert wait(lim.reserve(1, 0.0)) == Wait(until=0.1, reason="tokens")
    # a used only 100: 300 come back at once.
    assert lim.finish(a, 100, 0.0)
    assert lim.snapshot(0.0).available_tokens == 300
    # b used 700 instead of 200: 500 of debt, the level goes to -200.
    assert lim.finish(b, 700, 0.0)
    snap = lim.snapshot(0.0)
    assert snap.available_tokens == -200
    assert snap.debt == 200
    # A request of 100 must wait until the level is back to 100: 30 s.
    assert wait(lim.reserve(100, 0.0)) == Wait(until=30.0, reason="tokens")
    assert isinstance(lim.reserve(100, 30.0), Grant)


def test_unknown_usage_keeps_the_reservation() -> None:
    lim = limiter(tpm=600)
    g = grant(lim.reserve(600, 0.0))
    assert lim.finish(g, None, 0.0)
    assert lim.snapshot(0.0).available_tokens == 0
    assert lim.in_flight == 0


def test_estimate_above_capacity_waits_for_a_full_bucket_then_goes() -> None:
    lim = limiter(tpm=600)
    small = grant(lim.reserve(60, 0.0))
    lim.finish(small, 60, 0.0)
    # 10_000 > 600: clamped to 600, admissible once the bucket is full again (6 s later).
    assert wait(lim.reserve(10_000, 0.0)) == Wait(until=6.0, reason="tokens")
    big = grant(lim.reserve(10_000, 6.0))
    assert big.tokens == 10_000
    # It really used 10_000: 9_400 of debt beyond the 600 drawn.
    lim.finish(big, 10_000, 6.0)
    assert lim.snapshot(6.0).debt == 9_400
    assert wait(lim.reserve(0, 6.0)) == Wait(until=6.0 + 940.0, reason="tokens")


def test_concurrency_slots_and_cancel_refunds_everything() -> None:
    lim = limiter(rpm=60, tpm=6000, concurrency=2)
    a = grant(lim.reserve(1000, 0.0))
    b = grant(lim.reserve(1000, 0.0))
    assert wait(lim.reserve(1, 0.0)) == Wait(until=None, reason="concurrency")
    assert lim.cancel(a, 0.0)
    snap = lim.snapshot(0.0)
    assert (snap.available_requests, snap.available_tokens, snap.in_flight) == (59, 5000, 1)
    # Finishing or cancelling twice is a harmless no-op.
    assert not lim.cancel(a, 0.0)
    assert not lim.finish(a, 5, 0.0)
    assert lim.finish(b, 1000, 0.0)
    assert not lim.finish(b, 1000, 0.0)
    assert lim.in_flight == 0


def test_abandon_in_flight_frees_slots_keeps_tokens() -> None:
    lim = limiter(tpm=600, concurrency=1)
    g = grant(lim.reserve(300, 0.0))
    assert lim.abandon_in_flight() == 1
    assert lim.in_flight == 0
    assert lim.snapshot(0.0).available_tokens == 300
    assert not lim.finish(g, 0, 0.0)  # a late finish from the dead task changes nothing
    assert lim.snapshot(0.0).available_tokens == 300


def test_park_blocks_everything_until_the_reset_and_stays_readable() -> None:
    lim = limiter()
    lim.park(30.0, 0.0)
    assert wait(lim.reserve(0, 0.0)) == Wait(until=30.0, reason="parked")
    assert wait(lim.reserve(0, 29.999)) == Wait(until=30.0, reason="parked")
    lim.park(10.0, 1.0)  # an earlier reset does not shorten the park
    assert lim.parked_until == 30.0
    assert isinstance(lim.reserve(0, 30.0), Grant)
    assert lim.parked_until == 30.0


def test_park_and_bucket_the_later_one_wins() -> None:
    lim = limiter(rpm=1)
    drain(lim, 0.0)
    lim.park(5.0, 0.0)
    assert wait(lim.reserve(0, 0.0)) == Wait(until=60.0, reason="requests")


def test_observe_clamps_to_remaining_and_refills_by_the_reset() -> None:
    lim = limiter(rpm=600)  # ours: 10 per second, 600 available
    # The provider says: 2 of 60 left, full again in 58 s (its rate: 1 per second).
    lim.observe(RateLimitInfo(limit_requests=60, remaining_requests=2, reset_requests=58.0), 0.0)
    assert lim.snapshot(0.0).available_requests == 2
    assert len(drain(lim, 0.0)) == 2
    assert wait(lim.reserve(0, 0.0)) == Wait(until=1.0, reason="requests")
    assert len(drain(lim, 1.0)) == 1
    # After the reset the learned bucket is forgotten: our own budget governs again.
    assert len(drain(lim, 58.0)) == 600


def test_observe_never_raises_our_level() -> None:
    lim = limiter(rpm=60)
    drain(lim, 0.0)
    lim.observe(RateLimitInfo(limit_requests=1000, remaining_requests=999, reset_requests=1), 0)
    assert lim.snapshot(0.0).available_requests == 0
    assert wait(lim.reserve(0, 0.0)) == Wait(until=1.0, reason="requests")


def test_observe_without_limit_is_a_window_until_the_reset() -> None:
    lim = limiter()  # nothing configured: the provider's word is all we have
    lim.observe(RateLimitInfo(remaining_tokens=1000, reset_tokens=20.0), 0.0)
    a = grant(lim.reserve(800, 0.0))
    assert wait(lim.reserve(300, 0.0)) == Wait(until=20.0, reason="tokens")
    # A refund to the same observation comes back.
    lim.finish(a, 500, 1.0)
    assert isinstance(lim.reserve(300, 1.0), Grant)
    assert wait(lim.reserve(300, 1.0)) == Wait(until=20.0, reason="tokens")
    assert isinstance(lim.reserve(300, 20.0), Grant)


def test_observe_full_or_zero_reset_forgets_the_learned_bucket() -> None:
    lim = limiter()
    lim.observe(RateLimitInfo(remaining_requests=0, reset_requests=5.0), 0.0)
    assert wait(lim.reserve(0, 0.0)) == Wait(until=5.0, reason="requests")
    lim.observe(RateLimitInfo(limit_requests=10, remaining_requests=10), 1.0)
    assert isinstance(lim.reserve(0, 1.0), Grant)
    lim.observe(RateLimitInfo(remaining_requests=0, reset_requests=5.0), 2.0)
    lim.observe(RateLimitInfo(remaining_requests=0, reset_requests=0.0), 2.0)
    assert isinstance(lim.reserve(0, 2.0), Grant)


def test_settling_after_a_newer_observation_leaves_the_provider_view_alone() -> None:
    lim = limiter()
    lim.observe(RateLimitInfo(limit_tokens=1000, remaining_tokens=1000 - 1, reset_tokens=60), 0)
    g = grant(lim.reserve(900, 0.0))
    # The response's own headers already count this request.
    lim.observe(RateLimitInfo(limit_tokens=1000, remaining_tokens=50, reset_tokens=60.0), 0.0)
    lim.finish(g, 10, 0.0)  # a refund of 890 that the provider already knows about
    assert lim.snapshot(0.0).available_tokens == 50


def test_fifo_big_request_at_the_head_blocks_smaller_ones() -> None:
    lim = limiter(tpm=600)
    first = grant(lim.reserve(600, 0.0))
    lim.finish(first, 600, 0.0)
    lim.enqueue("big", 500, 0.0)
    lim.enqueue("small", 10, 0.0)
    assert wait(lim.reserve(1, 0.0)) == Wait(until=None, reason="queue")
    granted, wake = lim.poll(0.0)
    assert (granted, wake) == ([], 50.0)
    # At 1 s there are 10 tokens: enough for "small", but "big" is first.
    assert lim.poll(1.0) == ([], 50.0)
    granted, wake = lim.poll(50.0)
    assert [t for t, _ in granted] == ["big"]
    assert wake == 51.0
    granted, wake = lim.poll(51.0)
    assert [t for t, _ in granted] == ["small"]
    assert wake is None
    assert lim.queued == 0


def test_poll_grants_several_in_order_and_withdraw_unblocks() -> None:
    lim = limiter(concurrency=2)
    held = grant(lim.reserve(0, 0.0))
    for ticket in "abc":
        lim.enqueue(ticket, 0, 0.0)
    granted, wake = lim.poll(0.0)
    assert [t for t, _ in granted] == ["a"]
    assert wake is None  # only a release can help now
    assert lim.withdraw("b")
    assert not lim.withdraw("b")
    lim.finish(held, 0, 2.0)
    granted, wake = lim.poll(2.0)
    assert [(t, g.granted_at) for t, g in granted] == [("c", 2.0)]
    assert (wake, lim.queued) == (None, 0)


def test_snapshot_reports_queue() -> None:
    lim = limiter(rpm=1)
    drain(lim, 0.0)
    lim.enqueue(1, 5, 3.0)
    lim.enqueue(2, 7, 4.0)
    snap = lim.snapshot(4.0)
    assert (snap.queued, snap.queued_tokens, snap.oldest_queued_at) == (2, 12, 3.0)
    with pytest.raises(ValueError, match="already queued"):
        lim.enqueue(1, 5, 4.0)


def test_check_predicts_without_granting() -> None:
    lim = limiter(rpm=60)
    drain(lim, 0.0)
    assert lim.check(0, 0.0) == Wait(until=1.0, reason="requests")
    assert lim.check(0, 1.0) is None
    assert lim.in_flight == 0


@pytest.mark.parametrize(
    "field", ["requests_per_minute", "tokens_per_minute", "concurrent_requests"]
)
def test_non_positive_limits_are_rejected_early(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Limiter(RateLimitConfig(**{field: 0}))


def test_negative_estimates_are_rejected_and_negative_usage_counts_as_none() -> None:
    lim = limiter(tpm=600)
    with pytest.raises(ValueError, match="tokens_estimate"):
        lim.reserve(-1, 0.0)
    with pytest.raises(ValueError, match="tokens_estimate"):
        lim.enqueue("t", -1, 0.0)
    g = grant(lim.reserve(100, 0.0))
    assert lim.finish(g, -50, 0.0)
    assert lim.snapshot(0.0).available_tokens == 600


def test_odd_rates_wake_exactly_when_predicted() -> None:
    # 7 per minute: times like 60/7 are not exact in binary. Polling at the predicted time
    # must admit, never bounce (a bounce would be a busy loop in the async shell).
    lim = limiter(rpm=7, tpm=1000)
    now = 12345.678
    for i in range(200):
        lim.enqueue(i, 37 + i % 5, now)
    granted_total = 0
    while lim.queued:
        granted, wake = lim.poll(now)
        for _, g in granted:
            lim.finish(g, g.tokens + 3, now)
        if not granted:
            assert wake is not None
            assert wake > now
            now = wake
            granted, _ = lim.poll(now)
            assert granted, f"bounced at {now}"
            for _, g in granted:
                lim.finish(g, g.tokens + 3, now)
        granted_total += len(granted)
    assert granted_total == 200


# ---------------------------------------------------------------------------- model


EPS = 1e-6


class LimiterMachine(RuleBasedStateMachine):
    """Drives the limiter with random operations and keeps a naive record of what happened:
    every draw, refund and debt with its time, the outstanding grants, the FIFO queue."""

    @initialize(
        rpm=st.none() | st.integers(1, 30),
        tpm=st.none() | st.integers(50, 2000),
        concurrency=st.none() | st.integers(1, 4),
    )
    def setup(self, rpm: int | None, tpm: int | None, concurrency: int | None) -> None:
        self.lim = limiter(rpm, tpm, concurrency)
        self.rpm, self.tpm, self.concurrency = rpm, tpm, concurrency
        self.now = 0.0
        # (time, signed amount, is_grant) per budget: draws positive, refunds negative.
        self.request_events: list[tuple[float, float, bool]] = []
        self.token_events: list[tuple[float, float, bool]] = []
        self.outstanding: dict[int, tuple[Grant, float]] = {}  # id -> (grant, tokens drawn)
        self.queue: list[tuple[Hashable, int]] = []
        self.next_ticket = 0
        self.parked_until = -math.inf

    # -- bookkeeping

    def record_grant(self, g: Grant, tokens: int) -> None:
        assert self.now >= self.parked_until, "granted while parked"
        drawn = float(tokens) if self.tpm is None else float(min(tokens, self.tpm))
        self.outstanding[g.id] = (g, drawn)
        self.request_events.append((self.now, 1.0, True))
        self.token_events.append((self.now, drawn, True))

    # -- rules

    @rule(dt=st.sampled_from([0.0, 0.0, 0.01, 0.5, 1.0, 3.3, 10.0, 61.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(tokens=st.integers(0, 2500))
    def reserve(self, tokens: int) -> None:
        got = self.lim.reserve(tokens, self.now)
        if isinstance(got, Grant):
            assert not self.queue, "reserve overtook the queue"
            self.record_grant(got, tokens)
        elif self.queue:
            assert got.reason == "queue"
        else:
            assert got.until is None or got.until > self.now

    @rule(tokens=st.integers(0, 2500))
    def enqueue(self, tokens: int) -> None:
        ticket = self.next_ticket
        self.next_ticket += 1
        self.lim.enqueue(ticket, tokens, self.now)
        self.queue.append((ticket, tokens))

    @rule()
    def poll(self) -> None:
        granted, wake = self.lim.poll(self.now)
        expected = self.queue[: len(granted)]
        assert [t for t, _ in granted] == [t for t, _ in expected], "not FIFO"
        for (_, g), (_, tokens) in zip(granted, expected, strict=True):
            assert g.tokens == tokens
            self.record_grant(g, tokens)
        del self.queue[: len(granted)]
        if self.queue and wake is not None:
            assert wake > self.now
            # Liveness: polling at the predicted time admits the head (nothing else changed).
            self.now = wake
            granted, _ = self.lim.poll(self.now)
            assert granted, "woke for nothing"
            for ticket, g in granted:
                assert ticket == self.queue[0][0]
                self.record_grant(g, self.queue.pop(0)[1])
        elif self.queue:
            # Only a release can help: every slot is taken.
            assert self.concurrency is not None
            assert len(self.outstanding) >= self.concurrency

    @precondition(lambda self: self.queue)
    @rule(index=st.integers(0, 100))
    def withdraw(self, index: int) -> None:
        ticket, _ = self.queue.pop(index % len(self.queue))
        assert self.lim.withdraw(ticket)

    @precondition(lambda self: self.outstanding)
    @rule(index=st.integers(0, 100), actual=st.integers(0, 3000))
    def finish(self, index: int, actual: int) -> None:
        gid = sorted(self.outstanding)[index % len(self.outstanding)]
        g, drawn = self.outstanding.pop(gid)
        assert self.lim.finish(g, actual, self.now)
        self.token_events.append((self.now, actual - drawn, False))

    @precondition(lambda self: self.outstanding)
    @rule(index=st.integers(0, 100))
    def cancel(self, index: int) -> None:
        gid = sorted(self.outstanding)[index % len(self.outstanding)]
        g, drawn = self.outstanding.pop(gid)
        assert self.lim.cancel(g, self.now)
        self.request_events.append((self.now, -1.0, False))
        self.token_events.append((self.now, -drawn, False))

    @rule(dt=st.sampled_from([0.5, 5.0, 30.0]))
    def park(self, dt: float) -> None:
        self.lim.park(self.now + dt, self.now)
        self.parked_until = max(self.parked_until, self.now + dt)

    @rule(
        remaining=st.integers(0, 50),
        limit=st.none() | st.integers(1, 60),
        reset=st.none() | st.sampled_from([0.0, 1.0, 7.5, 60.0]),
    )
    def observe(self, remaining: int, limit: int | None, reset: float | None) -> None:
        # The provider's word only ever tightens: the window invariants below still hold.
        self.lim.observe(
            RateLimitInfo(
                limit_requests=limit,
                remaining_requests=remaining,
                reset_requests=reset,
                limit_tokens=None if limit is None else limit * 40,
                remaining_tokens=remaining * 40,
                reset_tokens=reset,
            ),
            self.now,
        )

    # -- invariants

    @invariant()
    def concurrency_respected(self) -> None:
        assert self.lim.in_flight == len(self.outstanding)
        if self.concurrency is not None:
            assert len(self.outstanding) <= self.concurrency

    @invariant()
    def queue_matches(self) -> None:
        assert self.lim.queued == len(self.queue)

    @invariant()
    def budgets_respected_in_every_window(self) -> None:
        for per_minute, events in ((self.rpm, self.request_events), (self.tpm, self.token_events)):
            if per_minute is None:
                continue
            check_windows(events, capacity=per_minute, rate=per_minute / 60.0)


def check_windows(events: list[tuple[float, float, bool]], *, capacity: float, rate: float) -> None:
    """Token-bucket law, stated without simulating a bucket: over the events from any event
    *i* up to a grant *j*, draws minus refunds plus debts never exceed a full bucket plus what
    refilled in between (a grant leaves the level >= 0; refunds are counted at their nominal
    value, which is at least what the capped bucket really got back)."""
    for j, (t_j, _, is_grant) in enumerate(events):
        if not is_grant:
            continue
        total = 0.0
        for i in range(j, -1, -1):
            t_i, amount, _ = events[i]
            total += amount
            assert total <= capacity + rate * (t_j - t_i) + EPS * max(1.0, capacity), (
                f"{total} drawn in [{t_i}, {t_j}] with capacity {capacity}, rate {rate}"
            )


TestLimiterMachine = LimiterMachine.TestCase
TestLimiterMachine.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
