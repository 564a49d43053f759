"""Per-client tokens (virtual keys): who is calling, and may they start this request now.

The problem: one gateway serves several teams or services. Each needs its own token (so one
can be revoked, or traced, without the others), and its own limits, so that one client's
burst or runaway loop cannot spend the whole provider quota or the whole budget. The limits
must hold at every face of the gateway (WebSocket, HTTP) alike, so they live here, in one
pure machine that every face asks in the same three steps:

1. ``authenticate(token)`` once per connection (or per HTTP request): the `ClientKey`, or
   ``None`` for a bad token;
2. ``admit(client, request, now)`` before running a request: a `ClientGrant`, or the
   `Failure` to answer with (nothing was reserved then);
3. ``settle(grant, result, now)`` exactly once after it, with the terminal result (for a
   stream, the final result), or ``None`` when there is none (cancelled).

Choices:

- **Tokens are compared in constant time, with all of them.** The presented token and every
  configured one are hashed (SHA-256) and the digests compared with `hmac.compare_digest`,
  against every configured token with no early exit: neither which token matched, nor how
  long the tokens are, nor how much of a prefix was right shows in the timing. Only the
  digests are kept; no `ClientKey`, grant, statistic, log line or failure holds a token.
- **Rate limits reuse the connection's limiter** (`actors._limiter.Limiter`: token buckets of
  capacity = the per-minute limit, refilled continuously, reserve then settle). A client
  asks with its prompt estimate (four characters a token) plus its ``max_tokens`` (nothing
  when it sets none: the real output is settled as debt afterwards, which later requests wait
  out). Unlike a connection, a face does not queue a client that is over its limit: it
  answers at once with ``rate_limited`` and ``retry_after`` = the time the bucket will hold
  the request (the limiter's own prediction, so retrying then is admitted, bit for bit, if
  nothing else took the capacity). Refusing early is what a client of an API expects (an
  HTTP 429 with Retry-After), and it keeps a client that is over its limit from holding
  server resources while it waits.
- **Allow-lists** (``models``) are checked against the model and every fallback the request
  names (``fnmatch`` patterns), and a restricted client may not set ``model`` through
  ``extra`` (which is merged into the provider's body); a refusal is ``permission`` (HTTP
  403), code ``model_not_allowed``: retrying cannot help.
- **Budgets** count the estimated spend of answers (``Completion.cost``/``Embeddings.cost``
  from the connections' prices), per period: ``total`` (the life of this process) or the UTC
  calendar ``day``/``month`` (wall time = ``epoch + now``; the shell sets ``epoch``). Spend is
  known only when a request ends, so admission checks the spend so far: requests in flight
  when the budget runs out still finish (the overshoot is bounded by what was in flight).
  A request is refused once ``spend >= budget`` with ``rate_limited``, code
  ``budget_exceeded``, **not retryable**, and ``retry_after`` = the time to the next period
  (``None`` for ``total``). Why not ``permission``: the key is valid and the refusal ends with
  the period; it is a quota, and a quota is what OpenAI answers with 429
  (``insufficient_quota``) too. ``retryable`` is False so that no SDK retries it in a loop.
  The cost of failed attempts is not known here (a `Failure` carries usage, not cost): their
  tokens count against ``tokens_per_minute`` but not against the budget.

Theory of operation
-------------------

State per client: its `ClientKey`, a `Limiter` when it has a per-minute limit, the grants
outstanding (by id), the current budget period and its spend, and counters. ``admit`` checks,
in this order and reserving nothing until the last: the allow-list, the budget, the limiter
(``reserve``). A grant records the limiter's grant. ``settle`` forgets the grant (a second
settle, or a grant it never gave, changes nothing and returns False), finishes the limiter's
grant with the real token count (a `Failure` without usage used none: a refund; ``None``
keeps the reservation, since we cannot know what a cancelled request used), and adds the
cost to the period's spend. A period rolls over when ``now`` first falls in a later one.

`ClientKeys` is plain state with no clock: every method that depends on time takes ``now``
(monotonic seconds, the trio clock in the shell), which must not go backwards.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Literal

import msgspec

from protocol._config import BudgetPeriod, GatewayConfig, RateLimitConfig
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Usage,
)

from ._limiter import Grant, Limiter

__all__ = [
    "ANONYMOUS",
    "ClientGrant",
    "ClientKey",
    "ClientKeys",
    "ClientStatistics",
    "RefusalReason",
]

RefusalReason = Literal["model", "budget", "requests_per_minute", "tokens_per_minute"]
"""Why `ClientKeys.admit` refused: ``model`` (not on the allow-list), ``budget``,
``requests_per_minute`` or ``tokens_per_minute``."""

_SECONDS_PER_DAY = 86_400.0


class ClientKey(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated client: its name and limits, never its token. ``None`` means no
    limit of that kind; ``models`` ``None`` allows every model. Clients of ``[gateway]
    tokens`` are unlimited and named ``tokens[<index>]``; an open gateway (no tokens, no
    clients) has the one unlimited client `ANONYMOUS`."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget: float | None = None
    budget_period: BudgetPeriod = "total"
    models: tuple[str, ...] | None = None

    @property
    def limited(self) -> bool:
        """True when any limit or allow-list applies."""
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.budget is not None
            or self.models is not None
        )

    def allows(self, model: str) -> bool:
        """Whether *model* (a model, alias or route name) is on the allow-list."""
        patterns = self.models
        return patterns is None or any(model == p or fnmatchcase(model, p) for p in patterns)


ANONYMOUS = ClientKey(name="anonymous")
"""The client of a gateway with no tokens and no clients configured (loopback only)."""


class ClientGrant(msgspec.Struct, frozen=True, kw_only=True):
    """Permission for one request of client ``client``: give it back exactly once with
    `ClientKeys.settle`. ``tokens`` is what the request reserved (its estimate; 0 for a
    client without rate limits)."""

    client: str
    id: int
    tokens: int
    admitted_at: float
    limit: Grant | None = None


class ClientStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One client's counters (never its token).

    ``requests`` were admitted; ``refused`` counts refusals by reason (see `RefusalReason`);
    ``completions``/``failures`` count settled requests by outcome (a request settled without
    a result, e.g. cancelled, is a failure). ``input_tokens``/``output_tokens`` and ``cost``
    are totals over the process's life (``cost`` from priced answers only; ``unpriced`` counts
    answers without a price). ``spend`` is the current budget period's, ``budget_remaining``
    what is left of it (``None`` without a budget); ``period_resets_in`` is seconds to the next
    period (``None`` for ``total``). ``available_requests``/``available_tokens`` are the rate
    limits' current levels (``None``: no such limit)."""

    name: str
    requests: int = 0
    in_flight: int = 0
    completions: int = 0
    failures: int = 0
    refused: dict[str, int] = {}
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0
    budget: float | None = None
    budget_period: BudgetPeriod = "total"
    spend: float = 0.0
    budget_remaining: float | None = None
    period_resets_in: float | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    available_requests: float | None = None
    available_tokens: float | None = None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _estimate(request: ChatRequest | EmbedRequest) -> int:
    """Tokens a request reserves: its input at four characters a token (the connection's
    rule, ``actors._provider._estimate_input``) plus its ``max_tokens`` when it sets one."""
    if isinstance(request, EmbedRequest):
        return sum(len(t) for t in request.inputs) // 4 + 1
    estimate = sum(len(m.text()) for m in request.messages) // 4 + 1
    max_tokens = request.max_tokens
    if isinstance(max_tokens, int) and max_tokens > 0:
        estimate += max_tokens
    return estimate


def _period(period: BudgetPeriod, wall: float) -> tuple[int, float]:
    """The budget period holding wall-clock time *wall* (Unix seconds): its index (only
    compared, never shown) and when the next one starts (``inf`` for ``total``)."""
    if period == "day":
        day = math.floor(wall / _SECONDS_PER_DAY)
        return day, (day + 1) * _SECONDS_PER_DAY
    if period == "month":
        when = datetime.fromtimestamp(wall, UTC)
        index = when.year * 12 + when.month - 1
        year, month = divmod(index + 1, 12)
        return index, datetime(year, month + 1, 1, tzinfo=UTC).timestamp()
    return 0, math.inf


class _Client:
    """The state of one client (see the module docstring)."""

    __slots__ = (
        "completions",
        "cost",
        "failures",
        "input_tokens",
        "key",
        "limiter",
        "output_tokens",
        "outstanding",
        "period",
        "period_ends",
        "refused",
        "requests",
        "spend",
        "unpriced",
    )

    def __init__(self, key: ClientKey) -> None:
        self.key = key
        rpm, tpm = key.requests_per_minute, key.tokens_per_minute
        self.limiter = (
            None
            if rpm is None and tpm is None
            else Limiter(RateLimitConfig(requests_per_minute=rpm, tokens_per_minute=tpm))
        )
        self.outstanding: dict[int, ClientGrant] = {}
        self.period = -math.inf
        self.period_ends = math.inf
        self.spend = 0.0
        self.requests = 0
        self.completions = 0
        self.failures = 0
        self.refused: Counter[str] = Counter()
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = 0.0
        self.unpriced = 0

    def roll(self, wall: float) -> None:
        """Start a new budget period when *wall* is in a later one than the current."""
        index, ends = _period(self.key.budget_period, wall)
        if index > self.period:
            self.period, self.period_ends, self.spend = index, ends, 0.0


class ClientKeys:
    """The clients of one gateway, shared by all its faces (see the module docstring).

    Built from a `GatewayConfig`: ``tokens`` become unlimited clients ``tokens[<i>]``,
    ``clients`` named clients with their limits; with neither, the gateway is open and every
    caller is `ANONYMOUS`. *epoch* is the wall-clock time (Unix seconds) at which ``now`` was
    0, for calendar budget periods (the shell passes ``time.time() - trio.current_time()``).
    Raises ``ValueError`` when two clients share a token (the config loader reports it first).
    """

    def __init__(self, config: GatewayConfig, *, epoch: float = 0.0) -> None:
        self.epoch = epoch
        digests: list[bytes] = []
        keys: list[ClientKey] = []
        holders: dict[bytes, str] = {}

        def add(token: str, key: ClientKey, legacy: bool) -> None:
            digest = _digest(token)
            held = holders.get(digest)
            if held is not None:
                if legacy and held.startswith("tokens["):
                    return  # the same unlimited token listed twice: harmless
                raise ValueError(
                    f"gateway clients {held!r} and {key.name!r} have the same token; "
                    "each client needs its own"
                )
            holders[digest] = key.name
            digests.append(digest)
            keys.append(key)

        for index, secret in enumerate(config.tokens):
            if secret.reveal():  # an empty token must never authenticate anyone
                add(secret.reveal(), ClientKey(name=f"tokens[{index}]"), True)
        for name, client in config.clients.items():
            if not client.token.reveal():
                raise ValueError(f"gateway client {name!r} has an empty token")
            key = ClientKey(
                name=name,
                requests_per_minute=client.requests_per_minute,
                tokens_per_minute=client.tokens_per_minute,
                budget=client.budget_usd,
                budget_period=client.budget_period,
                models=None if client.models is None else tuple(client.models),
            )
            if key.name in {k.name for k in keys}:
                raise ValueError(f"two gateway clients are named {key.name!r}")
            add(client.token.reveal(), key, False)
        self._digests = digests
        self._keys = keys
        self.open = not keys
        """No tokens and no clients: every caller is `ANONYMOUS` (loopback gateways only)."""
        self._clients = {k.name: _Client(k) for k in (keys or [ANONYMOUS])}
        self._next_id = 0

    def __repr__(self) -> str:
        return f"ClientKeys(clients={list(self._clients)!r}, open={self.open})"

    @property
    def clients(self) -> list[ClientKey]:
        """Every client, in configuration order (tokens first)."""
        return [state.key for state in self._clients.values()]

    # ------------------------------------------------------------------ authentication

    def authenticate(self, token: str | None) -> ClientKey | None:
        """The client whose token is *token*, or ``None``. Compares (in constant time) with
        every configured token, whatever matches. An open gateway returns `ANONYMOUS` for any
        token or none."""
        if self.open:
            return ANONYMOUS
        if token is None:
            return None
        presented = _digest(token)
        found = -1
        for index, digest in enumerate(self._digests):  # every one: no early exit
            match = hmac.compare_digest(digest, presented)
            found = index if match else found
        return self._keys[found] if found >= 0 else None

    # ------------------------------------------------------------------ admission

    def admit(
        self, client: ClientKey, request: ChatRequest | EmbedRequest, now: float
    ) -> ClientGrant | Failure:
        """Admit one request of *client* at *now*: a `ClientGrant` to `settle` later, or the
        `Failure` to answer with (then nothing was reserved; see the module docstring for the
        kinds). Raises ``KeyError`` for a client these keys do not know."""
        state = self._state(client.name)
        key = state.key
        if key.models is not None:
            refusal = self._model_refusal(key, request)
            if refusal is not None:
                state.refused["model"] += 1
                return refusal
        if key.budget is not None:
            state.roll(self.epoch + now)
            if state.spend >= key.budget:
                state.refused["budget"] += 1
                return self._budget_refusal(state, request, now)
        estimate = 0  # what is reserved: nothing without a rate limit
        limit: Grant | None = None
        if state.limiter is not None:
            estimate = _estimate(request)
            got = state.limiter.reserve(estimate, now)
            if not isinstance(got, Grant):
                reason: RefusalReason = (
                    "requests_per_minute" if got.reason == "requests" else "tokens_per_minute"
                )
                state.refused[reason] += 1
                retry_after = None if got.until is None else max(0.0, got.until - now)
                return self._rate_refusal(key, reason, estimate, retry_after, request)
            limit = got
        grant = ClientGrant(
            client=key.name, id=self._next_id, tokens=estimate, admitted_at=now, limit=limit
        )
        self._next_id += 1
        state.outstanding[grant.id] = grant
        state.requests += 1
        return grant

    def settle(
        self,
        grant: ClientGrant,
        result: Completion | Embeddings | Failure | None,
        now: float,
    ) -> bool:
        """The request of *grant* is over with *result* (``None``: no result, e.g. cancelled).
        Settles its tokens with the real usage and adds its cost to the spend. Returns False
        (and changes nothing) for a grant already settled or not given by these keys."""
        state = self._clients.get(grant.client)
        if state is None or state.outstanding.pop(grant.id, None) is None:
            return False
        usage: Usage | None
        actual: int | None
        if result is None:
            state.failures += 1
            usage, actual, cost = None, None, None
        elif isinstance(result, Failure):
            state.failures += 1
            usage, cost = result.usage, None
            actual = 0 if usage is None else usage.total_tokens  # no usage: nothing was used
        else:
            state.completions += 1
            usage, cost = result.usage, result.cost
            actual = usage.total_tokens
            if cost is None:
                state.unpriced += 1
        if usage is not None:
            state.input_tokens += max(0, usage.input_tokens)
            state.output_tokens += max(0, usage.output_tokens)
        if state.limiter is not None and grant.limit is not None:
            state.limiter.finish(grant.limit, actual, now)
        if cost is not None and math.isfinite(cost) and cost > 0.0:
            state.cost += cost
            if state.key.budget is not None:
                state.roll(self.epoch + now)
            state.spend += cost
        return True

    # ------------------------------------------------------------------ observation

    def statistics(self, now: float | None = None) -> dict[str, ClientStatistics]:
        """Every client's counters by name. With *now*, budget periods that ended are rolled
        over first and the rate limits' current levels are included."""
        out: dict[str, ClientStatistics] = {}
        for name, state in self._clients.items():
            key = state.key
            available_requests = available_tokens = None
            resets_in: float | None = None
            if now is not None:
                if key.budget is not None:
                    state.roll(self.epoch + now)
                if state.limiter is not None:
                    snap = state.limiter.snapshot(now)
                    available_requests = snap.available_requests
                    available_tokens = snap.available_tokens
            if key.budget is not None and math.isfinite(state.period_ends):
                resets_in = (
                    None if now is None else max(0.0, state.period_ends - (self.epoch + now))
                )
            out[name] = ClientStatistics(
                name=name,
                requests=state.requests,
                in_flight=len(state.outstanding),
                completions=state.completions,
                failures=state.failures,
                refused=dict(state.refused),
                input_tokens=state.input_tokens,
                output_tokens=state.output_tokens,
                cost=state.cost,
                unpriced=state.unpriced,
                budget=key.budget,
                budget_period=key.budget_period,
                spend=state.spend,
                budget_remaining=(
                    None if key.budget is None else max(0.0, key.budget - state.spend)
                ),
                period_resets_in=resets_in,
                requests_per_minute=key.requests_per_minute,
                tokens_per_minute=key.tokens_per_minute,
                available_requests=available_requests,
                available_tokens=available_tokens,
            )
        return out

    # ------------------------------------------------------------------ internals

    def _state(self, name: str) -> _Client:
        try:
            return self._clients[name]
        except KeyError:
            raise KeyError(f"no gateway client named {name!r}") from None

    @staticmethod
    def _model_refusal(key: ClientKey, request: ChatRequest | EmbedRequest) -> Failure | None:
        allowed = ", ".join(key.models or ())
        for model in (request.model, *request.fallbacks):
            if not isinstance(model, str) or not key.allows(model):
                return Failure.of(
                    ErrorKind.PERMISSION,
                    f"client {key.name!r} may not use model {model!r}; allowed: {allowed}",
                    code="model_not_allowed",
                    model=model if isinstance(model, str) else "",
                    request_id=request.request_id,
                )
        if "model" in request.extra:
            return Failure.of(
                ErrorKind.PERMISSION,
                f"client {key.name!r} may not set the model through extra; "
                f"name it in model (allowed: {allowed})",
                code="model_not_allowed",
                model=request.model,
                request_id=request.request_id,
            )
        return None

    def _budget_refusal(
        self, state: _Client, request: ChatRequest | EmbedRequest, now: float
    ) -> Failure:
        key = state.key
        assert key.budget is not None
        if math.isfinite(state.period_ends):
            retry_after: float | None = max(0.0, state.period_ends - (self.epoch + now))
            resets = datetime.fromtimestamp(state.period_ends, UTC).strftime("%Y-%m-%d %H:%M")
            when = f"this {key.budget_period} (it resets at {resets} UTC)"
        else:
            retry_after = None
            when = "for the life of this server"
        return Failure(
            kind=ErrorKind.RATE_LIMITED,
            message=(
                f"client {key.name!r} has spent its budget of {key.budget:g} "
                f"({state.spend:.6g} spent) {when}"
            ),
            retryable=False,
            retry_after=retry_after,
            code="budget_exceeded",
            model=request.model,
            request_id=request.request_id,
        )

    @staticmethod
    def _rate_refusal(
        key: ClientKey,
        reason: RefusalReason,
        estimate: int,
        retry_after: float | None,
        request: ChatRequest | EmbedRequest,
    ) -> Failure:
        if reason == "requests_per_minute":
            what = f"its limit of {key.requests_per_minute} requests per minute"
        else:
            what = (
                f"its limit of {key.tokens_per_minute} tokens per minute (this request "
                f"reserves about {estimate} tokens: its prompt plus max_tokens)"
            )
        later = "" if retry_after is None else f"; retry in {retry_after:.3g}s"
        return Failure.of(
            ErrorKind.RATE_LIMITED,
            f"client {key.name!r} is over {what}{later}",
            retry_after=retry_after,
            code="rate_limit_exceeded",
            model=request.model,
            request_id=request.request_id,
        )
