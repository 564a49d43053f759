"""Per-connection metrics: counters, histograms, tokens and cost, and their Prometheus text.

Why our own and not prometheus_client: the runtime must report typed snapshots to trio code
(``rt.metrics()``) and over the gateway, must never see an API key, and must cost a few
dictionary increments per request on the hot path. A dependency for that would be heavier
than the code. The text exposition format is simple and stable, so we render it ourselves.

Accounting rules (the seed documents' token tracking, made precise):

- usage is recorded once per *attempt*, attributed to the connection and the model that
  produced it; failed attempts' usage is counted as ``wasted`` as well as in the totals, so
  it is never billed as the completion's but is never lost either;
- cost is estimated from the connection's configured per-million-token prices for the model
  (looked up by provider model name, then alias); no price, no cost (``None``, not 0).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter

import msgspec

from protocol._config import ConnectionConfig, Price
from protocol._errors import ErrorKind
from protocol._messages import Usage

LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def price_for(conn: ConnectionConfig, model: str) -> Price | None:
    """The configured price of *model* on *conn* (exact name, then ``"*"``), or ``None``."""
    prices = conn.prices
    if not prices:
        return None
    return prices.get(model) or prices.get("*")


def cost_of(usage: Usage, price: Price | None) -> float | None:
    """Estimated cost of *usage* at *price* (per million tokens); ``None`` without a price."""
    if price is None:
        return None
    cached = usage.cache_read_tokens if price.cache_read is not None else 0
    cached_price = price.cache_read or 0.0
    return (
        (usage.input_tokens - cached) * price.input
        + cached * cached_price
        + usage.output_tokens * price.output
    ) / 1_000_000


class HistogramSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative bucket counts (upper bounds in ``bounds``; the last count is ``+Inf``)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int

    def quantile(self, q: float) -> float | None:
        """An estimate of the *q* quantile (the bucket's upper bound); ``None`` when empty."""
        if not self.count:
            return None
        rank = q * self.count
        for bound, cumulative in zip((*self.bounds, math.inf), self.counts, strict=True):
            if cumulative >= rank:
                return bound
        return math.inf


class Histogram:
    """A fixed-bucket histogram."""

    __slots__ = ("_bounds", "_buckets", "_count", "_total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = bounds
        self._buckets = [0] * (len(bounds) + 1)
        self._total = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        self._buckets[bisect.bisect_left(self._bounds, value)] += 1
        self._total += value
        self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        cumulative: list[int] = []
        running = 0
        for n in self._buckets:
            running += n
            cumulative.append(running)
        return HistogramSnapshot(
            bounds=self._bounds, counts=tuple(cumulative), total=self._total, count=self._count
        )


class ModelUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and cost for one model on one connection."""

    input_tokens: int = 0
    output_tokens: int = 0
    wasted_input_tokens: int = 0
    wasted_output_tokens: int = 0
    cost: float | None = None


class ConnectionMetricsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen view of one connection's metrics."""

    requests: int
    completions: int
    failures: dict[str, int]
    attempts: int
    retries: int
    breaker_transitions: dict[str, int]
    models: dict[str, ModelUsage]
    latency: HistogramSnapshot
    time_to_first_token: HistogramSnapshot

    @property
    def input_tokens(self) -> int:
        return sum(m.input_tokens for m in self.models.values())

    @property
    def output_tokens(self) -> int:
        return sum(m.output_tokens for m in self.models.values())

    @property
    def cost(self) -> float | None:
        costs = [m.cost for m in self.models.values() if m.cost is not None]
        return sum(costs) if costs else None


class ConnectionMetrics:
    """Mutable counters of one connection. Lives in the connection's durable state, so a
    restart of the actor does not reset them."""

    def __init__(self) -> None:
        self.requests = 0
        self.completions = 0
        self.failures: Counter[str] = Counter()
        self.attempts = 0
        self.retries = 0
        self.breaker_transitions: Counter[str] = Counter()
        self._usage: dict[str, list[int]] = {}
        self._cost: dict[str, float] = {}
        self.latency = Histogram()
        self.ttft = Histogram()

    def record_usage(
        self, model: str, usage: Usage, *, cost: float | None, wasted: bool = False
    ) -> None:
        """Record one attempt's usage (exactly once per attempt)."""
        row = self._usage.get(model)
        if row is None:
            row = self._usage[model] = [0, 0, 0, 0]
        row[0] += usage.input_tokens
        row[1] += usage.output_tokens
        if wasted:
            row[2] += usage.input_tokens
            row[3] += usage.output_tokens
        if cost is not None:
            self._cost[model] = self._cost.get(model, 0.0) + cost

    def record_kept(self, model: str, usage: Usage) -> None:
        """Count *usage*, recorded as wasted when its attempt failed, as used after all: the
        router kept that attempt's text in an answer (the prefix of a continued stream)."""
        row = self._usage.get(model)
        if row is not None:
            row[2] -= min(row[2], usage.input_tokens)
            row[3] -= min(row[3], usage.output_tokens)

    def record_outcome(self, kind: ErrorKind | None) -> None:
        """Record how a request ended: ``None`` for a completion."""
        if kind is None:
            self.completions += 1
        else:
            self.failures[kind.value] += 1

    def record_transition(self, from_state: str, to_state: str) -> None:
        self.breaker_transitions[f"{from_state}->{to_state}"] += 1

    def snapshot(self) -> ConnectionMetricsSnapshot:
        models = {
            model: ModelUsage(
                input_tokens=row[0],
                output_tokens=row[1],
                wasted_input_tokens=row[2],
                wasted_output_tokens=row[3],
                cost=self._cost.get(model),
            )
            for model, row in self._usage.items()
        }
        return ConnectionMetricsSnapshot(
            requests=self.requests,
            completions=self.completions,
            failures=dict(self.failures),
            attempts=self.attempts,
            retries=self.retries,
            breaker_transitions=dict(self.breaker_transitions),
            models=models,
            latency=self.latency.snapshot(),
            time_to_first_token=self.ttft.snapshot(),
        )


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(connections: dict[str, ConnectionMetricsSnapshot]) -> str:
    """Render snapshots in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP switchboard_{name} {help_text}")
        lines.append(f"# TYPE switchboard_{name} {kind}")

    def sample(name: str, labels: dict[str, str], value: float) -> None:
        inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"switchboard_{name}{{{inner}}} {value:g}")

    family("requests_total", "counter", "Requests accepted by a connection.")
    for conn, s in connections.items():
        sample("requests_total", {"connection": conn}, s.requests)
    family("completions_total", "counter", "Requests that ended with a completion.")
    for conn, s in connections.items():
        sample("completions_total", {"connection": conn}, s.completions)
    family("failures_total", "counter", "Requests that ended with a failure, by kind.")
    for conn, s in connections.items():
        for kind, n in sorted(s.failures.items()):
            sample("failures_total", {"connection": conn, "kind": kind}, n)
    family("attempts_total", "counter", "HTTP attempts made to providers.")
    for conn, s in connections.items():
        sample("attempts_total", {"connection": conn}, s.attempts)
    family("retries_total", "counter", "Attempts that were retries.")
    for conn, s in connections.items():
        sample("retries_total", {"connection": conn}, s.retries)
    family("breaker_transitions_total", "counter", "Circuit breaker state transitions.")
    for conn, s in connections.items():
        for transition, n in sorted(s.breaker_transitions.items()):
            sample("breaker_transitions_total", {"connection": conn, "transition": transition}, n)
    family("tokens_total", "counter", "Tokens by connection, model and direction.")
    for conn, s in connections.items():
        for model, u in sorted(s.models.items()):
            sample("tokens_total", {"connection": conn, "model": model, "direction": "in"},
                   u.input_tokens)  # fmt: skip
            sample("tokens_total", {"connection": conn, "model": model, "direction": "out"},
                   u.output_tokens)  # fmt: skip
    family("cost_total", "counter", "Estimated cost from configured prices.")
    for conn, s in connections.items():
        for model, u in sorted(s.models.items()):
            if u.cost is not None:
                sample("cost_total", {"connection": conn, "model": model}, u.cost)
    for name, attr, help_text in (
        ("latency_seconds", "latency", "End-to-end request latency."),
        ("time_to_first_token_seconds", "time_to_first_token", "Time to first token."),
    ):
        family(name, "histogram", help_text)
        for conn, s in connections.items():
            h: HistogramSnapshot = getattr(s, attr)
            for bound, cumulative in zip((*h.bounds, math.inf), h.counts, strict=True):
                le = "+Inf" if bound == math.inf else f"{bound:g}"
                sample(f"{name}_bucket", {"connection": conn, "le": le}, cumulative)
            sample(f"{name}_sum", {"connection": conn}, h.total)
            sample(f"{name}_count", {"connection": conn}, h.count)
    return "\n".join(lines) + "\n"
