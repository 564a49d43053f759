"""Metrics: usage accounting, cost, histograms, Prometheus text."""

from __future__ import annotations

import pytest

from actors._metrics import ConnectionMetrics, Histogram, cost_of, price_for, prometheus_text
from protocol._config import ConnectionConfig, Price
from protocol._errors import ErrorKind
from protocol._messages import Usage


def test_cost_uses_per_million_prices_and_cache_price() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cache_read_tokens=200_000)
    assert cost_of(usage, Price(input=2.0, output=8.0)) == pytest.approx(2.0 + 4.0)
    cached = Price(input=2.0, output=8.0, cache_read=0.5)
    assert cost_of(usage, cached) == pytest.approx(0.8 * 2.0 + 0.2 * 0.5 + 4.0)
    assert cost_of(usage, None) is None


def test_price_lookup_exact_then_wildcard() -> None:
    conn = ConnectionConfig(prices={"gpt-4o": Price(input=1), "*": Price(input=9)})
    assert price_for(conn, "gpt-4o") == Price(input=1)
    assert price_for(conn, "other") == Price(input=9)
    assert price_for(ConnectionConfig(), "x") is None


def test_usage_attributed_per_model_and_wasted_separately() -> None:
    m = ConnectionMetrics()
    m.record_usage("a", Usage(input_tokens=10, output_tokens=5), cost=0.5)
    m.record_usage("a", Usage(input_tokens=10, output_tokens=2), cost=0.25, wasted=True)
    m.record_usage("b", Usage(input_tokens=1, output_tokens=1), cost=None)
    snap = m.snapshot()
    assert snap.models["a"].input_tokens == 20
    assert snap.models["a"].output_tokens == 7
    assert (snap.models["a"].wasted_input_tokens, snap.models["a"].wasted_output_tokens) == (10, 2)
    assert snap.models["a"].cost == pytest.approx(0.75)
    assert snap.models["b"].cost is None
    assert (snap.input_tokens, snap.output_tokens) == (21, 8)
    assert snap.cost == pytest.approx(0.75)


def test_outcomes_and_transitions() -> None:
    m = ConnectionMetrics()
    m.record_outcome(None)
    m.record_outcome(ErrorKind.OVERLOADED)
    m.record_outcome(ErrorKind.OVERLOADED)
    m.record_transition("closed", "open")
    snap = m.snapshot()
    assert snap.completions == 1
    assert snap.failures == {"overloaded": 2}
    assert snap.breaker_transitions == {"closed->open": 1}


def test_histogram_is_cumulative_and_quantiles() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 3.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == (2, 3, 4)
    assert snap.count == 4
    assert snap.total == pytest.approx(6.0)
    assert snap.quantile(0.5) == 1.0
    assert snap.quantile(0.75) == 2.0
    assert Histogram().snapshot().quantile(0.5) is None


def test_prometheus_text_format() -> None:
    m = ConnectionMetrics()
    m.requests = 3
    m.record_outcome(ErrorKind.RATE_LIMITED)
    m.record_usage('we"ird', Usage(input_tokens=4, output_tokens=6), cost=0.1)
    m.latency.observe(0.2)
    text = prometheus_text({"openai": m.snapshot()})
    assert 'switchboard_requests_total{connection="openai"} 3' in text
    assert 'switchboard_failures_total{connection="openai",kind="rate_limited"} 1' in text
    assert 'model="we\\"ird",direction="out"} 6' in text
    assert 'switchboard_latency_seconds_bucket{connection="openai",le="0.25"} 1' in text
    assert 'switchboard_latency_seconds_bucket{connection="openai",le="+Inf"} 1' in text
    assert "# TYPE switchboard_latency_seconds histogram" in text
    assert text.endswith("\n")
