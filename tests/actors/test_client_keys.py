"""Per-client tokens (virtual keys), the pure core: authentication, admission with exact
virtual times (requests/tokens per minute, budgets per period, allow-lists), settling
(refunds, debts, spend), statistics, and a Hypothesis check that a refusal's ``retry_after``
is exactly when the same request is admitted."""

from __future__ import annotations

import hmac
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors._client_keys import (
    ANONYMOUS,
    ClientGrant,
    ClientKey,
    ClientKeys,
    _period,
)
from protocol._config import ClientConfig, GatewayConfig, Secret
from protocol._errors import ErrorKind
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Message,
    Usage,
)

TOKEN_A = "tok-team-a-0123456789"
TOKEN_B = "tok-team-b-9876543210"
LEGACY = "tok-legacy-unlimited"


def keys(
    *, tokens: Sequence[str] = (), epoch: float = 0.0, **clients: dict[str, Any]
) -> ClientKeys:
    """Keys with *clients* (name -> ClientConfig fields; ``token`` defaults per name)."""
    config = GatewayConfig(
        tokens=[Secret(t) for t in tokens],
        clients={
            name: ClientConfig(token=Secret(fields.pop("token", f"tok-{name}")), **fields)
            for name, fields in clients.items()
        },
    )
    return ClientKeys(config, epoch=epoch)


def chat(prompt: str = "abcdefghijkl", *, model: str = "fast", **fields: Any) -> ChatRequest:
    """A chat request; the default prompt (12 characters) is estimated at 4 tokens."""
    return ChatRequest(model=model, messages=[Message(role="user", content=prompt)], **fields)


def granted(result: ClientGrant | Failure) -> ClientGrant:
    assert isinstance(result, ClientGrant), result
    return result


def refused(result: ClientGrant | Failure) -> Failure:
    assert isinstance(result, Failure), result
    return result


def answer(input_tokens: int = 0, output_tokens: int = 0, cost: float | None = None) -> Completion:
    return Completion(
        text="ok",
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        cost=cost,
    )


def client(k: ClientKeys, name: str) -> ClientKey:
    found = [c for c in k.clients if c.name == name]
    assert found, name
    return found[0]


# --------------------------------------------------------------------------- authentication


def test_each_token_names_its_client_and_a_bad_token_none() -> None:
    k = keys(
        tokens=[LEGACY],
        a={"token": TOKEN_A, "requests_per_minute": 1},
        b={"token": TOKEN_B},
    )
    assert not k.open
    a, b = k.authenticate(TOKEN_A), k.authenticate(TOKEN_B)
    assert a is not None
    assert a.name == "a"
    assert a.requests_per_minute == 1
    assert a.limited
    assert b is not None
    assert b.name == "b"
    assert not b.limited
    legacy = k.authenticate(LEGACY)
    assert legacy is not None
    assert legacy.name == "tokens[0]"
    assert not legacy.limited
    for bad in (None, "", "tok", TOKEN_A + " ", TOKEN_A[:-1], TOKEN_A.upper(), "\ud800"):
        assert k.authenticate(bad) is None, bad
    assert [c.name for c in k.clients] == ["tokens[0]", "a", "b"]


def test_an_open_gateway_takes_anyone_as_anonymous() -> None:
    k = keys()
    assert k.open
    assert k.authenticate(None) is ANONYMOUS
    assert k.authenticate("anything") is ANONYMOUS
    assert granted(k.admit(ANONYMOUS, chat(), 0.0)).client == "anonymous"
    assert list(k.statistics()) == ["anonymous"]


def test_empty_legacy_tokens_authenticate_nobody() -> None:
    k = ClientKeys(GatewayConfig(tokens=[Secret(""), Secret(LEGACY)]))
    assert not k.open
    assert k.authenticate("") is None
    legacy = k.authenticate(LEGACY)
    assert legacy is not None
    assert legacy.name == "tokens[1]"


def test_authenticate_compares_with_every_token_whichever_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No early exit: the first token, the last one and a wrong one cost the same number of
    constant-time comparisons, all of equal-length digests."""
    k = keys(tokens=[LEGACY], a={"token": TOKEN_A}, b={"token": TOKEN_B}, c={"token": "x"})
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(x: bytes, y: bytes) -> bool:
        calls.append((len(x), len(y)))
        return bool(real(x, y))

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in (LEGACY, "x", "wrong", TOKEN_B):
        calls.clear()
        k.authenticate(presented)
        assert calls == [(32, 32)] * 4, presented


def test_two_clients_with_one_token_are_refused_without_showing_it() -> None:
    with pytest.raises(ValueError) as info:
        keys(a={"token": TOKEN_A}, b={"token": TOKEN_A})
    assert "'a' and 'b' have the same token" in str(info.value)
    assert TOKEN_A not in str(info.value)
    with pytest.raises(ValueError) as info:
        keys(tokens=[TOKEN_A], a={"token": TOKEN_A})
    assert TOKEN_A not in str(info.value)
    # The same unlimited token listed twice is harmless.
    k = keys(tokens=[LEGACY, LEGACY])
    legacy = k.authenticate(LEGACY)
    assert legacy is not None
    assert legacy.name == "tokens[0]"


# --------------------------------------------------------------------------- rate limits


def test_requests_per_minute_refuses_with_the_exact_retry_after() -> None:
    k = keys(a={"requests_per_minute": 2})
    a = client(k, "a")
    granted(k.admit(a, chat(), 0.0))
    granted(k.admit(a, chat(), 0.0))  # a full minute's worth may burst
    failure = refused(k.admit(a, chat(request_id="r3"), 0.0))
    assert failure.kind is ErrorKind.RATE_LIMITED
    assert failure.retryable
    assert failure.retry_after == 30.0  # one request every 30 s
    assert failure.code == "rate_limit_exceeded"
    assert failure.request_id == "r3"
    assert failure.message == (
        "client 'a' is over its limit of 2 requests per minute; retry in 30s"
    )
    assert refused(k.admit(a, chat(), 10.0)).retry_after == 20.0
    granted(k.admit(a, chat(), 30.0))
    assert refused(k.admit(a, chat(), 30.0)).retry_after == 30.0
    stats = k.statistics()["a"]
    assert stats.requests == 3
    assert stats.in_flight == 3
    assert stats.refused == {"requests_per_minute": 3}


def test_tokens_per_minute_reserves_prompt_plus_max_tokens_and_settles_refund_and_debt() -> None:
    k = keys(a={"tokens_per_minute": 600})  # 10 tokens a second
    a = client(k, "a")
    request = chat(max_tokens=96)  # 4 (prompt) + 96 = 100 tokens
    grants = [granted(k.admit(a, request, 0.0)) for _ in range(6)]
    assert {g.tokens for g in grants} == {100}
    failure = refused(k.admit(a, request, 0.0))
    assert failure.retry_after == 10.0  # 100 tokens at 10 a second
    assert "its limit of 600 tokens per minute" in failure.message
    assert "reserves about 100 tokens" in failure.message
    # A refund: the first request used 20 of its 100.
    assert k.settle(grants[0], answer(4, 16), 0.0)
    assert refused(k.admit(a, request, 0.0)).retry_after == 2.0  # 80 back, 20 to go
    # A debt: the second used 300 of its 100; the bucket is 120 below what is needed.
    assert k.settle(grants[1], answer(100, 200), 0.0)
    assert refused(k.admit(a, request, 0.0)).retry_after == 22.0
    granted(k.admit(a, request, 22.0))
    stats = k.statistics(22.0)["a"]
    assert (stats.input_tokens, stats.output_tokens) == (104, 216)
    assert stats.refused == {"tokens_per_minute": 3}
    assert stats.available_tokens == 0.0


def test_a_request_without_max_tokens_reserves_its_prompt_and_pays_its_answer_after() -> None:
    k = keys(a={"tokens_per_minute": 60})  # 1 token a second
    a = client(k, "a")
    g = granted(k.admit(a, chat("x" * 40), 0.0))  # 40 // 4 + 1 = 11 tokens
    assert g.tokens == 11
    k.settle(g, answer(11, 100), 0.0)  # 111 used: 60 - 111 = -51
    assert refused(k.admit(a, chat("x" * 40), 0.0)).retry_after == 62.0


def test_an_estimate_above_the_limit_waits_for_a_full_bucket() -> None:
    k = keys(a={"tokens_per_minute": 60})
    a = client(k, "a")
    g = granted(k.admit(a, chat(max_tokens=1000), 0.0))  # clamped to the 60 there are
    k.settle(g, answer(4, 16), 0.0)  # 20 used: 40 left
    assert refused(k.admit(a, chat(max_tokens=1000), 0.0)).retry_after == 20.0


def test_embeddings_reserve_their_inputs() -> None:
    k = keys(a={"tokens_per_minute": 60})
    a = client(k, "a")
    g = granted(k.admit(a, EmbedRequest(model="fast", inputs=["x" * 40, "y" * 40]), 0.0))
    assert g.tokens == 21
    assert k.settle(g, Embeddings(vectors=[[0.0], [1.0]], usage=Usage(input_tokens=20)), 0.0)
    assert k.statistics()["a"].input_tokens == 20


# --------------------------------------------------------------------------- settling


def test_settle_once_and_only_grants_these_keys_gave() -> None:
    k = keys(a={"requests_per_minute": 1})
    a = client(k, "a")
    g = granted(k.admit(a, chat(), 0.0))
    assert k.settle(g, answer(1, 1), 1.0)
    assert not k.settle(g, answer(1, 1), 1.0)
    assert not k.settle(ClientGrant(client="a", id=99, tokens=1, admitted_at=0.0), None, 1.0)
    assert not k.settle(ClientGrant(client="zz", id=0, tokens=1, admitted_at=0.0), None, 1.0)
    stats = k.statistics()["a"]
    assert (stats.completions, stats.failures, stats.in_flight) == (1, 0, 0)
    assert (stats.input_tokens, stats.output_tokens) == (1, 1)
    # The request is spent even though it ended: the next one waits out the minute.
    assert refused(k.admit(a, chat(), 1.0)).retry_after == 59.0


def test_a_failure_without_usage_refunds_one_with_usage_counts_and_none_keeps() -> None:
    k = keys(a={"tokens_per_minute": 60})
    a = client(k, "a")
    request = chat(max_tokens=56)  # 60 tokens
    g = granted(k.admit(a, request, 0.0))
    k.settle(g, Failure.of(ErrorKind.BAD_REQUEST, "no"), 0.0)  # nothing used: all back
    g = granted(k.admit(a, request, 0.0))
    k.settle(g, Failure.of(ErrorKind.SERVER_ERROR, "cut", usage=Usage(input_tokens=30)), 0.0)
    assert refused(k.admit(a, request, 0.0)).retry_after == 30.0
    g = granted(k.admit(a, request, 30.0))
    k.settle(g, None, 30.0)  # cancelled, usage unknown: the reservation stays spent
    assert refused(k.admit(a, request, 30.0)).retry_after == 60.0
    stats = k.statistics()["a"]
    assert (stats.completions, stats.failures, stats.input_tokens) == (0, 3, 30)


# --------------------------------------------------------------------------- budgets


def test_a_total_budget_is_refused_once_spent_and_in_flight_requests_finish() -> None:
    k = keys(a={"budget_usd": 1.0})
    a = client(k, "a")
    first = granted(k.admit(a, chat(), 0.0))
    second = granted(k.admit(a, chat(), 0.0))  # nothing is spent yet
    k.settle(first, answer(10, 10, cost=0.6), 1.0)
    third = granted(k.admit(a, chat(), 1.0))  # 0.6 < 1.0
    k.settle(second, answer(10, 10, cost=0.6), 2.0)  # 1.2: over, by what was in flight
    failure = refused(k.admit(a, chat(request_id="r9"), 2.0))
    assert failure.kind is ErrorKind.RATE_LIMITED
    assert failure.code == "budget_exceeded"
    assert not failure.retryable
    assert failure.retry_after is None
    assert failure.request_id == "r9"
    assert failure.message == (
        "client 'a' has spent its budget of 1 (1.2 spent) for the life of this server"
    )
    k.settle(third, answer(1, 1, cost=0.1), 3.0)  # still counted
    stats = k.statistics(3.0)["a"]
    assert stats.spend == pytest.approx(1.3)
    assert stats.cost == pytest.approx(1.3)
    assert stats.budget_remaining == 0.0
    assert stats.period_resets_in is None
    assert stats.refused == {"budget": 1}


def test_a_zero_budget_suspends_a_client() -> None:
    k = keys(a={"budget_usd": 0.0})
    assert refused(k.admit(client(k, "a"), chat(), 0.0)).code == "budget_exceeded"


def test_a_daily_budget_resets_at_utc_midnight_and_says_when() -> None:
    epoch = datetime(2025, 3, 9, 23, 0, tzinfo=UTC).timestamp()  # now = 0 is 23:00 UTC
    k = keys(a={"budget_usd": 0.5, "budget_period": "day"}, epoch=epoch)
    a = client(k, "a")
    k.settle(granted(k.admit(a, chat(), 0.0)), answer(1, 1, cost=0.5), 60.0)
    failure = refused(k.admit(a, chat(), 600.0))
    assert failure.retry_after == 3000.0  # 23:10 -> midnight
    assert failure.message == (
        "client 'a' has spent its budget of 0.5 (0.5 spent) this day "
        "(it resets at 2025-03-10 00:00 UTC)"
    )
    assert k.statistics(600.0)["a"].period_resets_in == 3000.0
    g = granted(k.admit(a, chat(), 3600.0))  # a new day
    stats = k.statistics(3600.0)["a"]
    assert (stats.spend, stats.budget_remaining, stats.cost) == (0.0, 0.5, 0.5)
    assert stats.period_resets_in == 86_400.0
    k.settle(g, answer(1, 1, cost=0.2), 3700.0)
    assert k.statistics()["a"].spend == pytest.approx(0.2)


def test_a_monthly_budget_resets_on_the_first_of_the_next_month() -> None:
    epoch = datetime(2024, 12, 31, 12, 0, tzinfo=UTC).timestamp()
    k = keys(a={"budget_usd": 1.0, "budget_period": "month"}, epoch=epoch)
    a = client(k, "a")
    k.settle(granted(k.admit(a, chat(), 0.0)), answer(cost=2.0), 0.0)
    failure = refused(k.admit(a, chat(), 0.0))
    assert failure.retry_after == 12 * 3600.0
    assert "this month (it resets at 2025-01-01 00:00 UTC)" in failure.message
    granted(k.admit(a, chat(), 12 * 3600.0))


def test_periods() -> None:
    def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
        return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()

    assert _period("total", at(2025, 5, 5)) == (0, math.inf)
    day, ends = _period("day", at(2025, 5, 5, 13, 30))
    assert ends == at(2025, 5, 6)
    assert _period("day", at(2025, 5, 6)) == (day + 1, at(2025, 5, 7))
    assert _period("month", at(2025, 2, 28, 23, 59))[1] == at(2025, 3, 1)
    assert _period("month", at(2025, 12, 1))[1] == at(2026, 1, 1)
    assert _period("month", at(2026, 1, 1))[0] == _period("month", at(2025, 12, 31))[0] + 1


def test_answers_without_a_price_are_counted_as_unpriced() -> None:
    k = keys(a={"budget_usd": 1.0})
    a = client(k, "a")
    k.settle(granted(k.admit(a, chat(), 0.0)), answer(5, 5), 0.0)
    stats = k.statistics()["a"]
    assert (stats.unpriced, stats.spend, stats.completions) == (1, 0.0, 1)


# --------------------------------------------------------------------------- allow-lists


def test_the_allow_list_covers_model_fallbacks_and_extra() -> None:
    k = keys(a={"models": ["fast", "gpt-4o*"], "requests_per_minute": 1})
    a = client(k, "a")
    for bad in (
        chat(model="smart"),
        chat(model="fast", fallbacks=["smart"]),
        chat(model="fast", extra={"model": "gpt-4-32k"}),
        EmbedRequest(model="embed-large", inputs=["x"]),
    ):
        failure = refused(k.admit(a, bad, 0.0))
        assert failure.kind is ErrorKind.PERMISSION
        assert not failure.retryable
        assert failure.code == "model_not_allowed"
    assert refused(k.admit(a, chat(model="smart"), 0.0)).message == (
        "client 'a' may not use model 'smart'; allowed: fast, gpt-4o*"
    )
    # Refusals reserved nothing: the one request a minute is still there.
    granted(k.admit(a, chat(model="gpt-4o-mini", fallbacks=["fast"]), 0.0))
    assert k.statistics()["a"].refused == {"model": 5}
    # Unrestricted clients may set anything.
    k2 = keys(b={})
    granted(k2.admit(client(k2, "b"), chat(model="x", extra={"model": "y"}), 0.0))


def test_admit_for_an_unknown_client_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="no gateway client named 'ghost'"):
        keys(a={}).admit(ClientKey(name="ghost"), chat(), 0.0)


# --------------------------------------------------------------------------- never the token


def test_the_token_appears_in_no_repr_statistic_or_failure() -> None:
    k = keys(
        tokens=[LEGACY],
        a={"token": TOKEN_A, "requests_per_minute": 1, "budget_usd": 0.0, "models": ["x"]},
    )
    a = k.authenticate(TOKEN_A)
    assert a is not None
    shown = [
        repr(k),
        repr(a),
        msgspec.json.encode(a).decode(),
        repr(k.statistics(0.0)),
        msgspec.json.encode(k.statistics(0.0)).decode(),
        repr(k.admit(a, chat(model="y"), 0.0)),
        repr(k.admit(a, chat(model="x"), 0.0)),
    ]
    k2 = keys(a={"token": TOKEN_A, "requests_per_minute": 1})
    a2 = client(k2, "a")
    shown.append(repr(k2.admit(a2, chat(), 0.0)))
    shown.append(repr(k2.admit(a2, chat(), 0.0)))
    for text in shown:
        assert TOKEN_A not in text, text
        assert LEGACY not in text, text


# --------------------------------------------------------------------------- properties


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[str, float, int, int]]:
    """Steps ``(op, dt, max_tokens, used)``: admit a request or settle the oldest grant."""
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["admit", "admit", "settle"]),
                st.sampled_from([0.0, 0.0, 0.5, 1.0, 7.25, 30.0]),
                st.integers(0, 200),
                st.integers(0, 400),
            ),
            max_size=40,
        )
    )


@settings(max_examples=150, deadline=None)
@given(
    rpm=st.one_of(st.none(), st.integers(1, 5)),
    tpm=st.one_of(st.none(), st.integers(50, 500)),
    steps=schedules(),
)
def test_a_refused_request_retried_after_retry_after_is_admitted(
    rpm: int | None, tpm: int | None, steps: list[tuple[str, float, int, int]]
) -> None:
    """Whatever came before, a request refused at ``t`` for the rate limits is admitted when
    tried again at ``t + retry_after`` (nothing else happening in between), never earlier
    than a tiny step before; and the counters match what happened."""
    k = keys(a={"requests_per_minute": rpm, "tokens_per_minute": tpm})
    a = client(k, "a")
    now = 0.0
    outstanding: list[ClientGrant] = []
    admitted = refusals = settled = 0
    for op, dt, max_tokens, used in steps:
        now += dt
        if op == "settle":
            if outstanding:
                assert k.settle(outstanding.pop(0), answer(used // 2, used - used // 2), now)
                settled += 1
            continue
        request = chat(max_tokens=max_tokens or None)
        result = k.admit(a, request, now)
        if isinstance(result, Failure):
            refusals += 1
            assert result.kind is ErrorKind.RATE_LIMITED
            assert result.retryable
            assert result.retry_after is not None
            assert result.retry_after > 0.0
            if result.retry_after > 1e-6:
                early = k.admit(a, request, now + result.retry_after * 0.999)
                assert isinstance(early, Failure)
                refusals += 1
            now += result.retry_after
            result = k.admit(a, request, now)
        outstanding.append(granted(result))
        admitted += 1
    stats = k.statistics(now)["a"]
    assert stats.requests == admitted
    assert stats.in_flight == len(outstanding)
    assert stats.completions == settled
    assert sum(stats.refused.values()) == refusals
