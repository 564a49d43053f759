"""FaultPlan as data: round trips through JSON and TOML, validation, and deterministic
selection (sequence, first matching rule, per-model arrivals, time windows, seeded mixes)."""

from __future__ import annotations

import msgspec
import pytest

from actors.testing._faults import (
    FAULT_TYPES,
    HEALTHY,
    Budget,
    ContentFiltered,
    ContextLengthExceeded,
    Fault,
    FaultPlan,
    Healthy,
    Latency,
    MalformedChunk,
    MidStreamError,
    MissingTerminator,
    NoResponse,
    PrefillRejected,
    RateLimited,
    RequestFacts,
    ResetBeforeHeaders,
    Rule,
    ServerError,
    SlowFirstToken,
    Stall,
    StreamCut,
    Unauthorized,
)

EVERY_FAULT: tuple[Fault, ...] = (
    Healthy(),
    Latency(seconds=0.5, up_to=2.0),
    RateLimited(retry_after=3, header="date"),
    ServerError(status=529),
    Unauthorized(),
    ContextLengthExceeded(),
    ContentFiltered(),
    PrefillRejected(),
    ResetBeforeHeaders(),
    NoResponse(),
    SlowFirstToken(seconds=4),
    StreamCut(after_tokens=3, how="eof"),
    Stall(after_tokens=2, seconds=7, then="hang"),
    MalformedChunk(after_tokens=1),
    MissingTerminator(),
    MidStreamError(after_tokens=5),
)


def facts(
    arrival: int = 1,
    *,
    model: str = "m",
    model_arrival: int | None = None,
    now: float = 0.0,
    stream: bool = False,
    last_role: str | None = "user",
    endpoint: str = "chat",
) -> RequestFacts:
    return RequestFacts(
        arrival=arrival,
        model_arrival=model_arrival if model_arrival is not None else arrival,
        now=now,
        model=model,
        dialect="openai",
        endpoint=endpoint,  # type: ignore[arg-type]
        stream=stream,
        last_role=last_role,
    )


def test_every_fault_type_is_listed_once() -> None:
    assert {type(f) for f in EVERY_FAULT} == set(FAULT_TYPES)
    assert len({f.name for f in EVERY_FAULT}) == len(FAULT_TYPES)


def test_plans_round_trip_through_json_and_dicts() -> None:
    plan = FaultPlan(
        rules=tuple(Rule(fault=f, models=("a",), probability=0.5) for f in EVERY_FAULT),
        sequence=EVERY_FAULT,
        seed=42,
    )
    assert FaultPlan.from_json(plan.to_json()) == plan
    assert FaultPlan.from_dict(plan.to_dict()) == plan
    raw = msgspec.json.decode(plan.to_json())
    assert raw["sequence"][2] == {"kind": "rate_limited", "retry_after": 3, "header": "date"}


def test_plans_load_from_toml() -> None:
    text = """
seed = 7
sequence = [{kind = "server_error", status = 503}, {kind = "healthy"}]

[[rules]]
models = ["gpt-4o"]
stream = true
fault = {kind = "stream_cut", after_tokens = 2, how = "eof"}

[[rules]]
probability = 0.25
fault = {kind = "rate_limited", retry_after = 2.5, header = "ms"}
"""
    plan = FaultPlan.from_toml(text)
    assert plan == FaultPlan(
        seed=7,
        sequence=(ServerError(status=503), Healthy()),
        rules=(
            Rule(models=("gpt-4o",), stream=True, fault=StreamCut(after_tokens=2, how="eof")),
            Rule(probability=0.25, fault=RateLimited(retry_after=2.5, header="ms")),
        ),
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rules": [{"fault": {"kind": "boom"}}]}, "Invalid value 'boom'"),
        ({"rules": [{"fault": {"kind": "healthy"}, "probability": 2}]}, "probability"),
        ({"rules": [{"fault": {"kind": "healthy"}, "arrivals": [0]}]}, "arrival numbers"),
        ({"rules": [{"fault": {"kind": "server_error", "status": 404}}]}, "status must be"),
        ({"rules": [{"fault": {"kind": "stall", "seconds": -1}}]}, "seconds must be >= 0"),
        ({"rules": [{"fault": {"kind": "healthy"}, "model": "x"}]}, "unknown field `model`"),
        ({"sequence": [{"kind": "latency"}]}, "missing required field `seconds`"),
    ],
)
def test_bad_plans_are_rejected_with_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        FaultPlan.from_dict(data)


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ValueError, match="probability"):
        Rule(fault=HEALTHY, probability=-0.1)
    with pytest.raises(ValueError, match="up_to"):
        Latency(seconds=3, up_to=1)
    with pytest.raises(ValueError, match=">= 1"):
        Budget(requests_per_minute=0)


def test_sequence_then_rules_then_healthy() -> None:
    plan = FaultPlan(
        sequence=(ServerError(), HEALTHY, MissingTerminator()),
        rules=(Rule(fault=Unauthorized(), arrivals=(3, 4)),),
    )
    chosen = [plan.select(facts(n))[0] for n in range(1, 6)]
    # Arrival 3 is not streamed: the sequence's stream-only fault does not apply, a rule does.
    assert chosen == [ServerError(), HEALTHY, Unauthorized(), Unauthorized(), HEALTHY]
    assert plan.select(facts(3, stream=True)) == (MissingTerminator(), None)
    assert plan.select(facts(4)) == (Unauthorized(), 0)


def test_first_matching_rule_wins_and_inapplicable_faults_skip() -> None:
    plan = FaultPlan(
        rules=(
            Rule(fault=HEALTHY, models=("vip",)),
            Rule(fault=PrefillRejected()),
            Rule(fault=MidStreamError(), stream=True),
            Rule(fault=ContentFiltered(), endpoints=("chat",)),
        )
    )
    assert plan.select(facts(model="vip", last_role="assistant")) == (HEALTHY, 0)
    assert plan.select(facts(last_role="assistant")) == (PrefillRejected(), 1)
    assert plan.select(facts(stream=True)) == (MidStreamError(), 2)
    assert plan.select(facts()) == (ContentFiltered(), 3)
    assert plan.select(facts(endpoint="embed", last_role=None)) == (HEALTHY, None)


def test_arrival_ranges_per_model_and_time_windows() -> None:
    rule = Rule(fault=ServerError(), arrival_from=2, arrival_to=3, per_model=True)
    hits = [rule.matches(facts(10, model_arrival=n), seed=0, index=0) for n in range(1, 5)]
    assert hits == [False, True, True, False]
    window = Rule(fault=ServerError(), after_s=5, until_s=10)
    assert [window.matches(facts(now=t), seed=0, index=0) for t in (4.99, 5, 9.99, 10)] == [
        False,
        True,
        True,
        False,
    ]


def test_conveniences() -> None:
    once = FaultPlan.server_error_once()
    assert [once.select(facts(n))[0] for n in (1, 2)] == [ServerError(status=500), HEALTHY]
    flapping = FaultPlan.flapping(30)
    assert flapping.select(facts(9, now=29.9))[0] == ServerError(status=503)
    assert flapping.select(facts(10, now=30.0))[0] == HEALTHY
    always = FaultPlan.always(ServerError(status=529), models=("a",))
    assert always.select(facts(model="a"))[0] == ServerError(status=529)
    assert always.select(facts(model="b"))[0] == HEALTHY
    first = FaultPlan.first(2, ResetBeforeHeaders())
    assert [first.select(facts(n))[0].name for n in (1, 2, 3)] == [
        "reset_before_headers",
        "reset_before_headers",
        "healthy",
    ]
    assert FaultPlan.healthy(seed=3) == FaultPlan(seed=3)


def selections(plan: FaultPlan, count: int = 400) -> list[str]:
    return [plan.select(facts(n))[0].name for n in range(1, count + 1)]


def test_seeded_probability_is_reproducible_and_seed_dependent() -> None:
    plan = FaultPlan(rules=(Rule(fault=ServerError(), probability=0.3),), seed=11)
    first = selections(plan)
    assert selections(FaultPlan.from_json(plan.to_json())) == first
    hits = first.count("server_error")
    assert 80 <= hits <= 160  # 30 % of 400, loosely: the exact count is fixed by the seed
    other = selections(FaultPlan(rules=plan.rules, seed=12))
    assert other != first
    # Each arrival's draw is independent of the others: selecting in any order agrees.
    backwards = [plan.select(facts(n))[0].name for n in range(400, 0, -1)]
    assert backwards[::-1] == first


def test_mix_gives_each_fault_its_share() -> None:
    plan = FaultPlan.mix((ServerError(), 0.25), (RateLimited(), 0.25), seed=5)
    chosen = selections(plan, 2000)
    for name in ("server_error", "rate_limited", "healthy"):
        share = chosen.count(name) / len(chosen)
        expected = 0.5 if name == "healthy" else 0.25
        assert abs(share - expected) < 0.05, (name, share)
    with pytest.raises(ValueError, match="at most 1"):
        FaultPlan.mix((ServerError(), 0.7), (RateLimited(), 0.7))
