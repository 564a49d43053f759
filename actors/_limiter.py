"""The rate limiter of one provider connection, as a pure machine: no clock, no I/O.

The problem: a provider enforces requests per minute, tokens per minute and (informally)
concurrency, and punishes excess with a 429 that costs a round trip and often a long
Retry-After. We want to *never* earn that 429 while the caller's deadline allows waiting, and to
serve waiting callers fairly. Three questions had to be settled.

**Which algorithm.** Fixed windows (count per wall-clock minute) allow twice the limit around a
window edge; sliding logs cost memory per request. OpenAI and Anthropic both document a
*token bucket*: the budget refills continuously and an idle client may burst up to the full
limit. We do what they do: each budget is a bucket with ``capacity`` = the per-minute limit and
refill ``rate`` = limit / 60 s. (GCRA is the same algorithm stored as one timestamp; a
level-and-stamp bucket makes refunds, debts and provider clamps easier to read.) So RPM 60
grants 60 requests at once, then exactly one per second.

**Reserve, then settle.** Token usage is only known after the response. A request reserves its
estimate (input estimate + max_tokens) up front; ``finish`` settles with the real usage:
a refund when it used less, a *debt* when it used more - the bucket goes below zero and later
requests wait it out, exactly as the provider would make them. An estimate larger than the
whole bucket is clamped to the capacity (it waits for a full bucket, then goes), so a huge
request is slow but never deadlocked; its real usage is settled as debt. A request that never
left this process is ``cancel``-led: everything it reserved comes back.

**Fairness.** Waiters are served strictly first-in, first-out: a big request at the head blocks
the small ones behind it. That can idle some capacity, but it is the only order in which a big
request cannot starve forever behind a stream of small ones.

Theory of operation
-------------------

State: the configured buckets (``requests``, ``tokens``; absent when unlimited), the
*provider's* buckets learned from response headers, the concurrency count, the set of
outstanding grants ("loans"), the FIFO queue of tickets and ``parked_until``.

A request of ``n`` estimated tokens is admissible at ``now`` when, all at once:

1. ``now >= parked_until`` (a 429 parks the limiter until the provider's reset);
2. fewer than ``concurrent_requests`` grants are outstanding;
3. every bucket holds its cost (1 for request buckets, ``min(n, capacity)`` for token
   buckets) at ``now``. A bucket's level at ``t`` is ``min(capacity, level + rate * (t -
   stamp))``; the time it reaches ``c`` is ``stamp + (c - level) / rate``, computed by one
   function (`_Bucket.ready_at`) that also decides admission, so a waiter woken at the time we
   predicted is admitted at that time, bit for bit - no epsilon, no busy loop.

Admission draws the costs from every bucket and records a loan. ``finish(grant, actual)``
draws ``actual - reserved`` more tokens (negative: a refund, capped at capacity) and frees the
concurrency slot; ``cancel`` refunds the request and the tokens and frees the slot. Finishing
or cancelling an unknown (or already finished) grant is a no-op that returns False, so cleanup
paths may be sloppy without corrupting the counts.

Provider feedback (``observe``): the provider's ``remaining`` is authoritative but we never
*raise* our own level on its word. So headers do not touch our bucket; they replace a second,
*learned* bucket per kind: level = remaining, full again after ``reset`` seconds (refill rate
``(limit - remaining) / reset``; when the limit is unknown, nothing refills until the reset),
forgotten after the reset (it is full by then). Every grant draws from both, so the
effective level is the lower of ours and the provider's. Refunds and debts go to a learned
bucket only if the grant drew from that same observation (a later observation already counts
the request). Responses arriving out of order, or requests in flight that the provider has not
counted yet, make the learned level slightly stale; the next response corrects it.
``observe`` ignores ``retry_after``: a 429 is an explicit ``park``.

Queue: ``enqueue`` appends a ticket; ``poll(now)`` grants from the head while the head is
admissible and returns the granted tickets with the next time worth polling again (``None``
when nothing but a finish, cancel or withdraw can help - e.g. all concurrency slots are taken
- or when the queue is empty). ``withdraw`` removes a ticket anywhere in the queue. ``reserve``
is the fast path for an empty queue; with a non-empty queue it refuses (``Wait(reason=
"queue")``) so nobody overtakes.

The `Limiter` is plain state: the actor keeps it across restarts (debt, learned buckets and
parks are durable knowledge). After a crash, ``abandon_in_flight`` frees the concurrency slots
of grants whose tasks died; their tokens stay spent.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Literal

import msgspec

from protocol._config import RateLimitConfig
from protocol._ratelimit import RateLimitInfo

WaitReason = Literal["parked", "concurrency", "requests", "tokens", "queue"]
"""Why a request is not admitted yet: the limiter is parked by a 429; every concurrency slot
is taken; the request or token budget is spent (ours or the provider's); or others queue
before it."""

_INF = math.inf


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """Permission to send one request: it holds one request, one concurrency slot and
    ``tokens`` (the estimate as asked) until ``finish``-ed or ``cancel``-led."""

    id: int
    tokens: int
    granted_at: float


class Wait(msgspec.Struct, frozen=True, kw_only=True):
    """Not now. ``until`` is the earliest time the request could be admitted (a lower bound:
    others may take the capacity first); ``None`` when only a finish, cancel or withdraw can
    help (concurrency, or the queue)."""

    until: float | None
    reason: WaitReason


class LimiterSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The limiter at one moment. ``available_*`` is the effective level (the lower of our
    bucket and the provider's learned one; ``None`` when neither exists, i.e. unlimited);
    ``debt`` is how far our token bucket is below zero."""

    available_requests: float | None
    available_tokens: float | None
    in_flight: int
    concurrency_limit: int | None
    queued: int
    queued_tokens: int
    oldest_queued_at: float | None
    parked_until: float | None
    debt: float


class _Bucket:
    """A token bucket: ``level`` at time ``stamp``, refilling at ``rate`` up to ``capacity``
    (``None``: unknown capacity). A learned bucket also has ``expires`` (after which it is
    dropped) and a generation number."""

    __slots__ = ("capacity", "expires", "generation", "level", "rate", "stamp")

    def __init__(
        self,
        *,
        capacity: float | None,
        rate: float,
        level: float,
        stamp: float,
        expires: float = _INF,
        generation: int = 0,
    ) -> None:
        self.capacity = capacity
        self.rate = rate
        self.level = level
        self.stamp = stamp
        self.expires = expires
        self.generation = generation

    def level_at(self, now: float) -> float:
        if now <= self.stamp:
            return self.level
        level = self.level + self.rate * (now - self.stamp)
        cap = self.capacity
        return level if cap is None or level < cap else cap

    def cost(self, amount: float) -> float:
        cap = self.capacity
        return amount if cap is None or amount <= cap else cap

    def ready_at(self, cost: float) -> float:
        """When the level reaches *cost* (``-inf`` when it already has, ``expires`` when it
        will not before then). The one formula that both predicts and decides."""
        if self.level >= cost:
            return -_INF
        if self.rate <= 0.0:
            return self.expires
        when = self.stamp + (cost - self.level) / self.rate
        return when if when < self.expires else self.expires

    def add(self, amount: float, now: float) -> None:
        """Move the level by *amount* at *now* (negative: a draw or a debt; positive: a
        refund, capped at capacity)."""
        level = self.level_at(now) + amount
        cap = self.capacity
        self.level = level if cap is None or level < cap else cap
        if now > self.stamp:
            self.stamp = now


_Loan = tuple[float, int, float, int]
"""What one outstanding grant drew, so settling it touches the right buckets: (tokens drawn
from ours, generation of the learned request bucket it drew from or -1, tokens drawn from the
learned token bucket, its generation or -1). A tuple: it is built on every request."""

_NO_LOAN: _Loan = (0.0, -1, 0.0, -1)


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ValueError(f"rate_limit.{name} must be at least 1 (or absent for no limit)")
    return value


class Limiter:
    """The rate limiter of one connection (see the module docstring).

    Every method that depends on time takes ``now``: monotonic seconds (the trio clock in the
    async shell). ``now`` must not go backwards between calls.
    """

    def __init__(self, config: RateLimitConfig) -> None:
        rpm = _positive("requests_per_minute", config.requests_per_minute)
        tpm = _positive("tokens_per_minute", config.tokens_per_minute)
        self.config = config
        self._concurrency = _positive("concurrent_requests", config.concurrent_requests)
        self._requests = (
            None if rpm is None else _Bucket(capacity=rpm, rate=rpm / 60.0, level=rpm, stamp=-_INF)
        )
        self._tokens = (
            None if tpm is None else _Bucket(capacity=tpm, rate=tpm / 60.0, level=tpm, stamp=-_INF)
        )
        self._learned_requests: _Bucket | None = None
        self._learned_tokens: _Bucket | None = None
        self._generation = 0
        # True when no bucket exists, so admission checks only the park and concurrency.
        self._no_buckets = self._requests is None and self._tokens is None
        self._parked_until = -_INF
        self._loans: dict[int, _Loan] = {}
        self._next_id = 0
        self._queue: dict[Hashable, tuple[int, float]] = {}  # insertion order is FIFO order

    # ------------------------------------------------------------------ reading

    @property
    def parked_until(self) -> float | None:
        """The time before which nothing is granted (``None`` if never parked). Stays readable
        after it has passed, so a router can tell how long ago a connection was parked."""
        return None if self._parked_until == -_INF else self._parked_until

    @property
    def in_flight(self) -> int:
        """Outstanding grants (each holds a concurrency slot)."""
        return len(self._loans)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def snapshot(self, now: float) -> LimiterSnapshot:
        """The state at *now* (levels depend on time, hence the argument)."""
        self._expire(now)
        return LimiterSnapshot(
            available_requests=_effective(self._requests, self._learned_requests, now),
            available_tokens=_effective(self._tokens, self._learned_tokens, now),
            in_flight=len(self._loans),
            concurrency_limit=self._concurrency,
            queued=len(self._queue),
            queued_tokens=sum(tokens for tokens, _ in self._queue.values()),
            oldest_queued_at=next(iter(self._queue.values()))[1] if self._queue else None,
            parked_until=self.parked_until,
            debt=max(0.0, -self._tokens.level_at(now)) if self._tokens is not None else 0.0,
        )

    def check(self, tokens_estimate: int, now: float) -> Wait | None:
        """Why a request of *tokens_estimate* could not be admitted at *now*, ignoring the
        queue (``None``: it could). Grants nothing; a lower bound for a queued request."""
        if self._learned_requests is not None or self._learned_tokens is not None:
            self._expire(now)
        return self._blocker(tokens_estimate, now)

    # ------------------------------------------------------------------ admission

    def reserve(self, tokens_estimate: int, now: float) -> Grant | Wait:
        """The fast path: a `Grant` now, or a `Wait`. Refuses with ``reason="queue"`` while
        anyone is queued (use `enqueue` then), so nobody overtakes a waiter."""
        if self._queue:
            return _QUEUED
        if tokens_estimate < 0:
            raise ValueError("tokens_estimate must be >= 0")
        if self._learned_requests is not None or self._learned_tokens is not None:
            self._expire(now)
        blocked = self._blocker(tokens_estimate, now)
        if blocked is not None:
            return blocked
        return self._grant(tokens_estimate, now)

    def enqueue(self, ticket: Hashable, tokens_estimate: int, now: float) -> None:
        """Queue *ticket* (any hashable, unique among queued tickets) at the tail. Nothing is
        granted here: call `poll`. Raises ``ValueError`` for a ticket already queued."""
        if ticket in self._queue:
            raise ValueError(f"ticket {ticket!r} is already queued")
        if tokens_estimate < 0:
            raise ValueError("tokens_estimate must be >= 0")
        self._queue[ticket] = (tokens_estimate, now)

    def withdraw(self, ticket: Hashable) -> bool:
        """Remove a queued ticket whose caller gave up. False if it was not queued. Removing
        the head may let others through: `poll` afterwards."""
        return self._queue.pop(ticket, None) is not None

    def poll(self, now: float) -> tuple[list[tuple[Hashable, Grant]], float | None]:
        """Grant queued tickets strictly in order while the head is admissible. Returns the
        granted ``(ticket, grant)`` pairs and when to poll next: the head's earliest admission
        time, or ``None`` when the queue is empty or only a finish/cancel/withdraw can help."""
        granted: list[tuple[Hashable, Grant]] = []
        queue = self._queue
        if not queue:
            return granted, None
        self._expire(now)
        while queue:
            ticket, (tokens, _) = next(iter(queue.items()))
            blocked = self._blocker(tokens, now)
            if blocked is not None:
                return granted, blocked.until
            del queue[ticket]
            granted.append((ticket, self._grant(tokens, now)))
        return granted, None

    # ------------------------------------------------------------------ settling

    def finish(self, grant: Grant, actual_tokens: int | None, now: float) -> bool:
        """The request reached the provider and is over: settle its tokens with the real usage
        (``None``: unknown, keep the reservation) and free its concurrency slot. Returns False
        (and changes nothing) if *grant* is not outstanding."""
        loan = self._loans.pop(grant.id, None)
        if loan is None:
            return False
        if actual_tokens is None:
            return True
        if actual_tokens < 0:
            actual_tokens = 0  # junk usage from a provider: treat as nothing used
        ours, _, theirs, theirs_generation = loan
        if self._tokens is not None:
            delta = ours - actual_tokens
            if delta:
                self._tokens.add(delta, now)
        learned = self._learned_tokens
        if learned is not None and learned.generation == theirs_generation:
            delta = theirs - actual_tokens
            if delta:
                learned.add(delta, now)
        return True

    def cancel(self, grant: Grant, now: float) -> bool:
        """The request never reached the provider: refund its request and tokens and free its
        slot. Returns False (and changes nothing) if *grant* is not outstanding."""
        loan = self._loans.pop(grant.id, None)
        if loan is None:
            return False
        ours, requests_generation, theirs, theirs_generation = loan
        if self._requests is not None:
            self._requests.add(1.0, now)
        if self._tokens is not None and ours:
            self._tokens.add(ours, now)
        learned = self._learned_requests
        if learned is not None and learned.generation == requests_generation:
            learned.add(1.0, now)
        learned = self._learned_tokens
        if learned is not None and learned.generation == theirs_generation:
            learned.add(theirs, now)
        return True

    def abandon_in_flight(self) -> int:
        """Forget every outstanding grant (their tasks died with a crashed actor): frees the
        concurrency slots, keeps the tokens spent. Returns how many were forgotten."""
        count = len(self._loans)
        self._loans.clear()
        return count

    # ------------------------------------------------------------------ provider feedback

    def observe(self, info: RateLimitInfo, now: float) -> None:
        """Take in what a response's headers said (see the module docstring): each kind with a
        ``remaining`` replaces that kind's learned bucket. ``retry_after`` is ignored here;
        a 429 calls `park`."""
        if info.remaining_requests is not None:
            self._learned_requests = self._learn(
                info.remaining_requests, info.limit_requests, info.reset_requests, now
            )
        if info.remaining_tokens is not None:
            self._learned_tokens = self._learn(
                info.remaining_tokens, info.limit_tokens, info.reset_tokens, now
            )

    def _learn(
        self, remaining: int, limit: int | None, reset: float | None, now: float
    ) -> _Bucket | None:
        if reset is not None and (reset <= 0.0 or not math.isfinite(reset)):
            return None  # full again now (or nonsense): nothing to hold us back
        if limit is not None and remaining >= limit:
            return None  # the provider's bucket is full: nothing to learn
        horizon = 60.0 if reset is None else reset
        self._generation += 1
        if limit is None:
            # A window: `remaining` until the reset, no refill before it.
            return _Bucket(
                capacity=None,
                rate=0.0,
                level=remaining,
                stamp=now,
                expires=now + horizon,
                generation=self._generation,
            )
        return _Bucket(
            capacity=limit,
            rate=(limit - remaining) / horizon,
            level=remaining,
            stamp=now,
            expires=now + horizon,
            generation=self._generation,
        )

    def park(self, until: float, now: float) -> None:
        """Grant nothing before *until* (a 429's reset). Parks only extend: an earlier
        *until* than the current park changes nothing."""
        del now  # part of the contract for symmetry; a park is absolute
        if until > self._parked_until:
            self._parked_until = until

    # ------------------------------------------------------------------ internals

    def _expire(self, now: float) -> None:
        learned = self._learned_requests
        if learned is not None and now >= learned.expires:
            self._learned_requests = None
        learned = self._learned_tokens
        if learned is not None and now >= learned.expires:
            self._learned_tokens = None

    def _blocker(self, tokens: int, now: float) -> Wait | None:
        if self._concurrency is not None and len(self._loans) >= self._concurrency:
            return Wait(until=None, reason="concurrency")
        until = self._parked_until
        reason: WaitReason = "parked"
        requests, theirs, tokens_bucket, learned = (
            self._requests,
            self._learned_requests,
            self._tokens,
            self._learned_tokens,
        )
        if requests is not None and (ready := requests.ready_at(1.0)) > until:
            until, reason = ready, "requests"
        if theirs is not None and (ready := theirs.ready_at(1.0)) > until:
            until, reason = ready, "requests"
        if tokens_bucket is not None and (
            (ready := tokens_bucket.ready_at(tokens_bucket.cost(tokens))) > until
        ):
            until, reason = ready, "tokens"
        if learned is not None and (ready := learned.ready_at(learned.cost(tokens))) > until:
            until, reason = ready, "tokens"
        if until > now:
            return Wait(until=until, reason=reason)
        return None

    def _grant(self, tokens: int, now: float) -> Grant:
        if self._no_buckets and self._learned_requests is None and self._learned_tokens is None:
            loan = _NO_LOAN
        else:
            ours = theirs = 0.0
            requests_generation = tokens_generation = -1
            if self._requests is not None:
                self._requests.add(-1.0, now)
            if self._tokens is not None:
                ours = self._tokens.cost(tokens)
                self._tokens.add(-ours, now)
            learned = self._learned_requests
            if learned is not None:
                learned.add(-1.0, now)
                requests_generation = learned.generation
            learned = self._learned_tokens
            if learned is not None:
                theirs = learned.cost(tokens)
                learned.add(-theirs, now)
                tokens_generation = learned.generation
            loan = (ours, requests_generation, theirs, tokens_generation)
        grant_id = self._next_id
        self._next_id = grant_id + 1
        self._loans[grant_id] = loan
        return Grant(id=grant_id, tokens=tokens, granted_at=now)


_QUEUED = Wait(until=None, reason="queue")


def _effective(ours: _Bucket | None, theirs: _Bucket | None, now: float) -> float | None:
    levels = [b.level_at(now) for b in (ours, theirs) if b is not None]
    return min(levels) if levels else None
