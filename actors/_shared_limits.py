"""Limits, breakers and usage shared by several processes: the pure parts (no clock, no I/O).

The problem: several processes (gateways, services embedding the runtime) use the same
provider keys. Each enforcing the limits on its own spends N times the provider's budget, and a
breaker tripped in one is invisible to the others. A shared store (Redis) must hold one budget
per connection; this module holds what is decided about it, in two halves that speak through
plain messages:

* the **store model** (`StoreModel`): what the store does with a `TakeRequest` or a
  `SyncRequest`. `actors._redis_state` runs the same logic as Lua scripts inside Redis (atomic
  per call); this Python copy is the in-process store (`actors._shared_state.MemoryStore`) and
  the reference the Lua scripts are tested against, call by call, with an exact ``now``;
* the **process side** (`Allowance`, `plan_publish`, `plan_adopt`): what one process holds of
  the shared budget and how it follows the shared breaker.

Theory of operation
-------------------

**Buckets.** The semantics are `actors._limiter`'s: per connection a request bucket and a token
bucket, capacity = the per-minute limit, refilling continuously at limit / 60 s; a 429 parks the
budget until the provider's reset; the provider's ``remaining``/``reset`` headers replace a
*learned* bucket per kind that every draw also takes from (our level never rises on the
provider's word). The store keeps these buckets for all processes and reads time from its own
clock (Redis ``TIME``): processes never compare their clocks, every time that crosses the wire
is a duration ("wait 0.8 s", "open for 5 s").

**Leases, so the shared budget costs no round trip per request.** A round trip to Redis costs
~0.3 ms of CPU with coredis, more than the whole pipeline's own cost. So a process draws
capacity in *leases*: when its `Allowance` cannot cover a request it asks the store for the
shortfall (`need_*`, all or nothing: admitted now, or told how long to wait and why) plus an
*extra* that the store grants only as far as it is available right now (never waited for).
Requests are then served from the allowance without a round trip. The extra is sized to the
process's recent demand over `LEASE_S` and capped at `LEASE_FRACTION` of the limit, and every
sync returns what is left beyond the next `LEASE_S` of demand (all of it after `LEASE_S`
without a request). Exactness does not depend on lease sizes: every request a process sends
was drawn from the shared buckets first, so all processes together never exceed what one
bucket admits (capacity + rate x time). Leases only decide who may use capacity first; a
process that dies holding a lease loses it for the time the bucket needs to refill it.

**Reserve, then settle.** A request draws ``min(estimate, tpm)`` tokens from the allowance. Its
real usage settles the difference: a refund goes back into the allowance (returned by the next
sync when not used), a debt is taken from the allowance and what the allowance cannot cover is
flushed to the store as an unconditional draw (the shared bucket goes below zero and everyone
waits it out, as the local limiter does). A request that never left the process gives back
everything it drew.

**Concurrency.** The store keeps how many slots each process holds (in use + idle); a process
reports that number, absolute, with every call (so a lost release can never leak a slot), and
each process is registered with an expiry refreshed by every call: the slots of a process
that died are freed when its registration expires (`PROCESS_TTL_S`). A finished request's slot
stays with the process until the next sync, so back-to-back requests reuse it without a round
trip; a sync gives back the idle slots beyond the most the process had in use since the
previous sync (all of them once it has been idle for `LEASE_S`), and a process whose callers
queue asks for their slots too (as far as free: an extra, like a lease's).

**Idempotent syncs.** What a sync carries that adds up (returned capacity, debts, usage) travels
in `Delta` batches numbered per process and connection; the store applies a batch only if its
number is above the last it applied. A sync that timed out may or may not have been applied,
so its batches are sent again with the next sync and applied at most once.

**Breaker.** Each process keeps its own breaker and window (`actors._breaker`); what is shared
is the *decision*. A process whose breaker opened publishes "open for R seconds" (an opening
always wins; the later end is kept); one whose breaker closed from open, half-open or forced
open publishes "closed", which the store accepts only if nobody published since the version the
process last saw (a close based on stale knowledge never clears a newer opening); a forced open
is published as such. Others adopt what they read: an open breaker refuses until the shared end
(then each process probes on its own: the first probe to fail re-opens it everywhere, the first
to pass closes it everywhere).

Usage and cost are added up in the store per connection and model and read back as totals,
which outlive every process.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import msgspec

from protocol._ratelimit import RateLimitInfo

from ._breaker import BreakerState

LEASE_S = 0.1
"""How far ahead a lease covers a process's recent demand (seconds)."""
LEASE_FRACTION = 1 / 16
"""The most a lease takes beyond its need, as a fraction of the limit."""
PROCESS_TTL_S = 30.0
"""A process that has not called the store for this long is gone: its slots are freed."""

SLACK = 1e-9
"""A level within this of a cost covers it. Waits cross the wire as durations, and a level
that float arithmetic leaves a hair below the cost (0.9999999999999999 of 1) would otherwise
ask for a wait too short to move any clock."""

StoreReason = Literal["parked", "concurrency", "requests", "tokens"]
SharedBreakerState = Literal["closed", "open", "forced_open"]

_INF = math.inf


# --------------------------------------------------------------------------- messages


class _Msg(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Messages are JSON on the way to Redis: defaults are left out, so a Lua script sees an
    absent field as ``nil``."""


class TakeRequest(_Msg, frozen=True, kw_only=True):
    """Draw capacity for one connection. Limits are the caller's (0: not shared). ``need_*``
    is granted entirely or not at all; ``extra_*`` as far as available now. ``held`` is how
    many concurrency slots the process holds before this call. ``now`` (tests only) replaces
    the store's clock."""

    pid: str
    rpm: int = 0
    tpm: int = 0
    concurrency: int = 0
    need_requests: int = 0
    need_tokens: int = 0
    need_slots: int = 0
    extra_requests: int = 0
    extra_tokens: int = 0
    extra_slots: int = 0
    held: int = 0
    ttl: float = PROCESS_TTL_S
    now: float | None = None


class TakeReply(_Msg, frozen=True, kw_only=True):
    """Granted (``ok``: the need plus the extra granted, per kind), or how long until the
    need could be met (``wait`` seconds, a lower bound; ``None`` when only a release can help)
    and what holds it back."""

    ok: bool = False
    requests: int = 0
    tokens: int = 0
    slots: int = 0
    wait: float | None = None
    reason: StoreReason | None = None


class Observation(_Msg, frozen=True, kw_only=True):
    """The provider's rate-limit headers (`RateLimitInfo` without ``retry_after``), with the
    resets counted from when the sync carrying it is sent."""

    remaining_requests: int | None = None
    limit_requests: int | None = None
    reset_requests: float | None = None
    remaining_tokens: int | None = None
    limit_tokens: int | None = None
    reset_tokens: float | None = None


class ModelDelta(_Msg, frozen=True, kw_only=True):
    """Usage to add for one model: tokens in and out, of which wasted, and cost."""

    input: int = 0
    output: int = 0
    wasted_input: int = 0
    wasted_output: int = 0
    cost: float = 0.0


class Delta(_Msg, frozen=True, kw_only=True):
    """One numbered batch of what adds up: requests and tokens returned to the shared buckets
    (tokens may be negative: a debt), a park for ``park`` seconds, the latest observation and
    usage by model. Applied at most once (see the module header)."""

    seq: int
    requests: int = 0
    tokens: int = 0
    park: float | None = None
    observed: Observation | None = None
    usage: dict[str, ModelDelta] = {}


class BreakerPublish(_Msg, frozen=True, kw_only=True):
    """What a process's breaker decided: ``open`` for ``remaining`` seconds, ``forced_open``,
    or ``closed`` (accepted only if the shared version is still ``base``)."""

    state: SharedBreakerState
    remaining: float = 0.0
    base: int = 0


class SyncRequest(_Msg, frozen=True, kw_only=True):
    """The periodic call of one process for one connection: heartbeat and slot count (``held``
    < 0: the process leaves and frees its slots), batches, a breaker decision, and whether to
    read the usage totals back."""

    pid: str
    rpm: int = 0
    tpm: int = 0
    held: int = 0
    ttl: float = PROCESS_TTL_S
    deltas: list[Delta] = []
    breaker: BreakerPublish | None = None
    totals: bool = False
    now: float | None = None


class SyncReply(_Msg, frozen=True, kw_only=True):
    """The shared breaker (state, seconds it stays open, version), how long the budget stays
    parked, the last batch number applied for this process, and the usage totals by model
    (``[input, output, wasted_input, wasted_output, cost]``) when asked for."""

    breaker: SharedBreakerState = "closed"
    breaker_remaining: float = 0.0
    version: int = 0
    parked: float = 0.0
    applied: int = 0
    totals: dict[str, list[float]] | None = None


# --------------------------------------------------------------------------- the store


class _Bucket:
    """A bucket as the store keeps it (see `actors._limiter._Bucket`): ``cap`` ``None`` for
    a learned bucket of unknown capacity; ``expires`` only for learned buckets."""

    __slots__ = ("cap", "expires", "level", "rate", "stamp")

    def __init__(
        self, level: float, stamp: float, rate: float, cap: float | None, expires: float = _INF
    ) -> None:
        self.level = level
        self.stamp = stamp
        self.rate = rate
        self.cap = cap
        self.expires = expires

    def refill(self, now: float) -> None:
        """Bring the level to *now* (the store always works at the current time)."""
        if now > self.stamp:
            level = self.level + self.rate * (now - self.stamp)
            self.level = level if self.cap is None or level < self.cap else self.cap
            self.stamp = now

    def cost(self, amount: float) -> float:
        return amount if self.cap is None or amount <= self.cap else self.cap

    def wait(self, cost: float, now: float) -> float:
        """Seconds from *now* until the level reaches *cost* (0 when it has, within
        `SLACK`; up to the expiry of a bucket that does not refill)."""
        if self.level >= cost - SLACK:
            return 0.0
        if self.rate <= 0.0:
            return self.expires - now
        wait = (cost - self.level) / self.rate
        return wait if now + wait < self.expires else self.expires - now

    def add(self, amount: float) -> None:
        level = self.level + amount
        self.level = level if self.cap is None or level < self.cap else self.cap


def _learn(remaining: int, limit: int | None, reset: float | None, now: float) -> _Bucket | None:
    """The learned bucket for one kind of header (as `Limiter._learn`), or ``None``."""
    if reset is not None and (reset <= 0.0 or not math.isfinite(reset)):
        return None
    if limit is not None and remaining >= limit:
        return None
    horizon = 60.0 if reset is None else reset
    if limit is None:
        return _Bucket(remaining, now, 0.0, None, now + horizon)
    return _Bucket(remaining, now, (limit - remaining) / horizon, limit, now + horizon)


class StoreConnection:
    """What the store keeps for one connection (the Redis hashes of `actors._redis_state`)."""

    def __init__(self) -> None:
        self.requests: _Bucket | None = None
        self.tokens: _Bucket | None = None
        self.learned_requests: _Bucket | None = None
        self.learned_tokens: _Bucket | None = None
        self.parked_until = -_INF
        self.procs: dict[str, float] = {}  # pid -> expiry
        self.slots: dict[str, int] = {}  # pid -> slots held
        self.applied: dict[str, int] = {}  # pid -> last batch applied
        self.usage: dict[str, list[float]] = {}
        self.breaker: SharedBreakerState = "closed"
        self.breaker_until = 0.0
        self.version = 0

    # -- the parts both calls share

    def _ours(self, now: float, rpm: int, tpm: int) -> tuple[_Bucket | None, _Bucket | None]:
        """Our buckets at *now*, created full, with the caller's capacities."""
        if rpm > 0:
            if self.requests is None:
                self.requests = _Bucket(rpm, now, rpm / 60.0, rpm)
            bucket = self.requests
            bucket.rate, bucket.cap = rpm / 60.0, rpm
            bucket.level = min(bucket.level, rpm)
            bucket.refill(now)
        if tpm > 0:
            if self.tokens is None:
                self.tokens = _Bucket(tpm, now, tpm / 60.0, tpm)
            bucket = self.tokens
            bucket.rate, bucket.cap = tpm / 60.0, tpm
            bucket.level = min(bucket.level, tpm)
            bucket.refill(now)
        return (self.requests if rpm > 0 else None), (self.tokens if tpm > 0 else None)

    def _learned(self, now: float) -> tuple[_Bucket | None, _Bucket | None]:
        for name in ("learned_requests", "learned_tokens"):
            bucket: _Bucket | None = getattr(self, name)
            if bucket is not None:
                if now >= bucket.expires:
                    setattr(self, name, None)
                else:
                    bucket.refill(now)
        return self.learned_requests, self.learned_tokens

    def _prune(self, now: float) -> None:
        """Forget processes whose registration expired, and their slots."""
        for pid, expiry in list(self.procs.items()):
            if expiry <= now:
                del self.procs[pid]
                self.slots.pop(pid, None)

    # -- take

    def take(self, req: TakeRequest, now: float) -> TakeReply:
        self._prune(now)
        self.procs[req.pid] = now + req.ttl
        if req.concurrency > 0:
            self.slots[req.pid] = req.held
            if req.need_slots and sum(self.slots.values()) + req.need_slots > req.concurrency:
                return TakeReply(reason="concurrency")
        ours_r, ours_t = self._ours(now, req.rpm, req.tpm)
        learned_r, learned_t = self._learned(now)
        if req.rpm <= 0:
            learned_r = None
        if req.tpm <= 0:
            learned_t = None
        wait, reason = 0.0, "parked"
        if self.parked_until > now:
            wait = self.parked_until - now
        need_r, need_t = req.need_requests, req.need_tokens
        for bucket, cost, why in (
            (ours_r, need_r, "requests"),
            (learned_r, need_r, "requests"),
            (ours_t, need_t, "tokens"),
            (learned_t, need_t, "tokens"),
        ):
            if bucket is not None and cost > 0:
                w = bucket.wait(bucket.cost(cost), now)
                if w > wait:
                    wait, reason = w, why
        if wait > 0.0:
            return TakeReply(wait=wait, reason=reason)  # type: ignore[arg-type]
        extra_r = _extra(req.extra_requests, need_r, (ours_r, learned_r))
        extra_t = _extra(req.extra_tokens, need_t, (ours_t, learned_t))
        for bucket, amount in (
            (ours_r, need_r + extra_r),
            (learned_r, need_r + extra_r),
            (ours_t, need_t + extra_t),
            (learned_t, need_t + extra_t),
        ):
            if bucket is not None and amount > 0:
                bucket.add(-bucket.cost(amount))
        slots = 0
        if req.concurrency > 0:
            spare = req.concurrency - sum(self.slots.values()) - req.need_slots
            slots = req.need_slots + max(0, min(req.extra_slots, spare))
            self.slots[req.pid] = req.held + slots
        return TakeReply(ok=True, requests=need_r + extra_r, tokens=need_t + extra_t, slots=slots)

    # -- sync

    def sync(self, req: SyncRequest, now: float) -> SyncReply:
        self._prune(now)
        if req.held < 0:
            self.procs.pop(req.pid, None)
            self.slots.pop(req.pid, None)
        else:
            self.procs[req.pid] = now + req.ttl
            self.slots[req.pid] = req.held
        ours_r, ours_t = self._ours(now, req.rpm, req.tpm)
        applied = self.applied.get(req.pid, 0)
        for delta in req.deltas:
            if delta.seq <= applied:
                continue
            applied = delta.seq
            if ours_r is not None and delta.requests:
                ours_r.add(delta.requests)
            if ours_t is not None and delta.tokens:
                ours_t.add(delta.tokens)
            if delta.park is not None and now + delta.park > self.parked_until:
                self.parked_until = now + delta.park
            seen = delta.observed
            if seen is not None:
                if seen.remaining_requests is not None:
                    self.learned_requests = _learn(
                        seen.remaining_requests, seen.limit_requests, seen.reset_requests, now
                    )
                if seen.remaining_tokens is not None:
                    self.learned_tokens = _learn(
                        seen.remaining_tokens, seen.limit_tokens, seen.reset_tokens, now
                    )
            for model, d in delta.usage.items():
                row = self.usage.setdefault(model, [0, 0, 0, 0, 0.0])
                row[0] += d.input
                row[1] += d.output
                row[2] += d.wasted_input
                row[3] += d.wasted_output
                row[4] += d.cost
        if req.held < 0:
            self.applied.pop(req.pid, None)
        else:
            self.applied[req.pid] = applied
        self._publish(req.breaker, now)
        remaining = self.breaker_until - now if self.breaker == "open" else 0.0
        return SyncReply(
            breaker=self.breaker,
            breaker_remaining=remaining if remaining > 0.0 else 0.0,
            version=self.version,
            parked=self.parked_until - now if self.parked_until > now else 0.0,
            applied=applied,
            totals={m: list(row) for m, row in self.usage.items()} if req.totals else None,
        )

    def _publish(self, publish: BreakerPublish | None, now: float) -> None:
        if publish is None:
            return
        if publish.state == "open":
            if self.breaker == "forced_open":
                return  # an operator's decision stands
            until = now + publish.remaining
            if self.breaker == "open" and self.breaker_until > until:
                until = self.breaker_until
            self.breaker, self.breaker_until = "open", until
        elif publish.state == "forced_open":
            if self.breaker == "forced_open":
                return
            self.breaker = "forced_open"
        else:
            if self.breaker == "closed" or self.version != publish.base:
                return
            self.breaker = "closed"
        self.version += 1


def _extra(wanted: int, need: int, buckets: tuple[_Bucket | None, _Bucket | None]) -> int:
    """How much of *wanted* every bucket can give beyond *need* right now."""
    if wanted <= 0:
        return 0
    levels = [b.level - need for b in buckets if b is not None]
    if not levels:
        return 0  # nothing is limited: there is nothing to lease
    spare = math.floor(min(levels))
    return max(0, min(wanted, spare))


class StoreModel:
    """The whole store: one `StoreConnection` per connection name."""

    def __init__(self) -> None:
        self.connections: dict[str, StoreConnection] = {}

    def _conn(self, name: str) -> StoreConnection:
        conn = self.connections.get(name)
        if conn is None:
            conn = self.connections[name] = StoreConnection()
        return conn

    def take(self, name: str, req: TakeRequest, now: float) -> TakeReply:
        return self._conn(name).take(req, req.now if req.now is not None else now)

    def sync(self, name: str, req: SyncRequest, now: float) -> SyncReply:
        return self._conn(name).sync(req, req.now if req.now is not None else now)


# --------------------------------------------------------------------------- the process side


class Need(NamedTuple):
    """What one request draws: a request (when requests are limited), its token estimate
    clamped to the limit (when tokens are), a concurrency slot (when concurrency is)."""

    requests: int
    tokens: int
    slots: int


NOTHING = Need(0, 0, 0)


class Allowance:
    """What one process holds of one connection's shared budget (see the module header).

    ``requests`` and ``tokens`` are drawn and not yet used; ``idle_slots`` are held slots no
    request uses; ``in_use`` slots are held by running requests; ``debt`` tokens used beyond
    what was drawn, to flush. Every method that depends on time takes ``now`` (seconds,
    monotonic, the process's own clock).
    """

    def __init__(self) -> None:
        self.requests = 0
        self.tokens = 0
        self.idle_slots = 0
        self.in_use = 0
        self.debt = 0
        self._gap: float | None = None  # moving average of the time between requests
        self._mean_tokens = 0.0
        self._last: float | None = None
        self._peak = 0  # the most slots in use since the last sync
        self._give_back_all = False

    @property
    def held(self) -> int:
        """Concurrency slots this process holds (what the store is told)."""
        return self.in_use + self.idle_slots

    @staticmethod
    def need(estimate: int, rpm: int, tpm: int, concurrency: int) -> Need:
        """What a request of *estimate* tokens draws under these limits (0: not shared)."""
        return Need(
            1 if rpm > 0 else 0,
            min(max(estimate, 0), tpm) if tpm > 0 else 0,
            1 if concurrency > 0 else 0,
        )

    def shortfall(self, need: Need) -> Need:
        """What the allowance lacks to cover *need* (`NOTHING`: it covers it)."""
        r = need.requests - self.requests
        t = need.tokens - self.tokens
        s = need.slots - self.idle_slots
        if r <= 0 and t <= 0 and s <= 0:
            return NOTHING
        return Need(max(r, 0), max(t, 0), max(s, 0))

    def consume(self, need: Need, now: float) -> None:
        """Draw *need* from the allowance (the caller checked `shortfall`) and count the
        request in the demand estimate."""
        self.requests -= need.requests
        self.tokens -= need.tokens
        self.idle_slots -= need.slots
        self.in_use += need.slots
        if self.in_use > self._peak:
            self._peak = self.in_use
        last, self._last = self._last, now
        if last is not None:
            gap = now - last
            self._gap = gap if self._gap is None else 0.8 * self._gap + 0.2 * gap
        self._mean_tokens = (
            need.tokens if last is None else 0.8 * self._mean_tokens + 0.2 * need.tokens
        )

    def lease(self, rpm: int, tpm: int) -> tuple[int, int]:
        """Extra requests and tokens worth asking for beyond a need: the demand of the next
        `LEASE_S`, at most `LEASE_FRACTION` of each limit."""
        gap = self._gap
        if gap is None:
            return 0, 0
        per_lease = LEASE_S / gap if gap > 0 else _INF
        requests = tokens = 0
        if rpm > 0:
            requests = int(min(per_lease, rpm * LEASE_FRACTION))
        if tpm > 0:
            tokens = int(min(per_lease * self._mean_tokens, tpm * LEASE_FRACTION))
        return requests, tokens

    def credit(self, reply: TakeReply) -> None:
        """Add what the store granted."""
        self.requests += reply.requests
        self.tokens += reply.tokens
        self.idle_slots += reply.slots

    def settle(self, need: Need, actual_tokens: int | None) -> None:
        """A request that drew *need* is over: settle its tokens with the real usage
        (``None``: unknown, or tokens are not shared: keep the reservation) and make its
        slot idle."""
        self.in_use -= need.slots
        self.idle_slots += need.slots
        if actual_tokens is None:
            return
        delta = need.tokens - max(actual_tokens, 0)
        if delta >= 0:
            self.tokens += delta
            return
        covered = min(-delta, max(self.tokens, 0))
        self.tokens -= covered
        self.debt += -delta - covered

    def cancel(self, need: Need) -> None:
        """A request that drew *need* never left the process: everything comes back."""
        self.requests += need.requests
        self.tokens += need.tokens
        self.in_use -= need.slots
        self.idle_slots += need.slots

    def give_back_all(self) -> None:
        """Return everything at the next sync (the budget was parked by a 429)."""
        self._give_back_all = True

    def surplus(self, now: float, rpm: int, tpm: int) -> tuple[int, int, int]:
        """Take out what to give back at a sync: ``(requests, tokens, slots)``, tokens net of
        the debt (negative: a debt to flush). Keeps the next `LEASE_S` of demand, and idle
        slots up to the most in use since the last sync, unless the process has been idle
        that long."""
        keep_r = keep_t = keep_s = 0
        if not self._give_back_all and self._last is not None and now - self._last < LEASE_S:
            keep_r, keep_t = self.lease(rpm, tpm)
            keep_s = max(0, self._peak - self.in_use)
        self._give_back_all = False
        self._peak = self.in_use
        requests = max(0, self.requests - keep_r)
        tokens = max(0, self.tokens - keep_t)
        slots = max(0, self.idle_slots - keep_s)
        self.requests -= requests
        self.tokens -= tokens
        self.idle_slots -= slots
        tokens -= self.debt
        self.debt = 0
        return requests, tokens, slots

    def forget_in_use(self, outstanding: int) -> None:
        """Only *outstanding* requests are still running (an actor crashed with the others):
        forget the slots of the rest."""
        if self.in_use > outstanding:
            self.in_use = max(outstanding, 0)


def observation(info: RateLimitInfo, age: float) -> Observation | None:
    """*info* as an `Observation` sent *age* seconds after it was received (its resets count
    from then), or ``None`` when it says nothing about remaining capacity."""
    if info.remaining_requests is None and info.remaining_tokens is None:
        return None

    def aged(reset: float | None) -> float | None:
        return None if reset is None else reset - age if reset - age > 0 else 0.0

    return Observation(
        remaining_requests=info.remaining_requests,
        limit_requests=info.limit_requests,
        reset_requests=aged(info.reset_requests),
        remaining_tokens=info.remaining_tokens,
        limit_tokens=info.limit_tokens,
        reset_tokens=aged(info.reset_tokens),
    )


# --------------------------------------------------------------------------- the breaker


class BreakerView(NamedTuple):
    """A breaker as a process last synced it: its state and, while OPEN, its end (the
    process's clock)."""

    state: BreakerState
    open_until: float | None


_FOLLOWS = frozenset({BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN})
"""States in which a breaker follows the shared decision (an operator's DISABLED and
METRICS_ONLY are local choices; FORCED_OPEN is left only by a shared close)."""


def plan_publish(
    seen: BreakerView, current: BreakerView, version: int, now: float
) -> BreakerPublish | None:
    """What to publish about a breaker that was *seen* at the last sync and is *current* now
    (``None``: nothing). Time passing (OPEN -> HALF_OPEN) is nobody's news."""
    state = current.state
    if state is BreakerState.OPEN and current.open_until is not None:
        if seen.state is not BreakerState.OPEN or seen.open_until != current.open_until:
            return BreakerPublish(state="open", remaining=max(current.open_until - now, 0.0))
        return None
    if state is BreakerState.FORCED_OPEN and seen.state is not BreakerState.FORCED_OPEN:
        return BreakerPublish(state="forced_open")
    if state is BreakerState.CLOSED and seen.state in (
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.FORCED_OPEN,
    ):
        return BreakerPublish(state="closed", base=version)
    return None


Adoption = Literal["open", "force_open", "close", "force_close"]


def plan_adopt(
    local: BreakerState,
    local_until: float | None,
    shared: SharedBreakerState,
    remaining: float,
    now: float,
) -> tuple[Adoption, float | None] | None:
    """How a breaker in state *local* follows a shared decision it has not seen yet: open
    until ``now + remaining``, forced open, or closed (``None``: nothing to do)."""
    if shared == "open":
        if remaining <= 0.0:
            return None  # over: each process probes on its own
        until = now + remaining
        if local in (BreakerState.CLOSED, BreakerState.HALF_OPEN):
            return "open", until
        return None
    if shared == "forced_open":
        if local in _FOLLOWS:
            return "force_open", None
        return None
    if local in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        return "close", None
    if local is BreakerState.FORCED_OPEN:
        return "force_close", None
    return None
