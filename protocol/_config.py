"""The configuration schema: connections (the seed documents' ``connect`` block), routes and
the gateway, as typed msgspec Structs.

These are plain data, validated by msgspec when loaded (see ``_config_load``): a bad value is
reported with the file, the key path and what was expected, never as a crash deep inside the
runtime. Defaults match the official SDKs where a provider has an opinion (3 attempts, 0.5 s
doubling to 8 s) and are otherwise conservative.

API keys are `Secret` values. A `Secret` never shows its value through ``repr``, ``str``,
f-strings, logging or msgspec encoding; the only way to the value is ``reveal()``, called by
the dialect that builds the HTTP request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ._errors import DEFAULT_FAILOVER_ON, DEFAULT_RETRY_ON, ErrorKind

ProviderName = Literal["openai", "anthropic", "gemini", "ollama"]
"""The wire dialects. Every OpenAI-compatible server (Groq, OpenRouter, DeepSeek, vLLM, TGI,
Ollama's ``/v1``) is ``openai`` with its own ``base_url``."""


class Secret:
    """A secret string (an API key, a gateway token) that never shows itself.

    ``repr()``/``str()`` give ``Secret('***')``; msgspec encodes it as ``"***"``. Equality
    compares values in constant time, so a `Secret` can be checked against a presented token.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value. Call only where it must go on the wire."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        import hmac

        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __reduce__(self) -> Any:
        raise TypeError("Secret values cannot be pickled")


def secret_enc_hook(obj: Any) -> Any:
    """A msgspec ``enc_hook`` that writes every `Secret` as ``"***"``.

    ``msgspec.json.encode(config, enc_hook=secret_enc_hook)`` (or ``msgspec.to_builtins``)
    gives a config dump that is safe to log or show: the secret values never appear. Raises
    `NotImplementedError` for any other unsupported type, as msgspec expects.
    """
    if isinstance(obj, Secret):
        return "***"
    raise NotImplementedError(f"cannot encode objects of type {type(obj).__name__}")


# Constrained numbers. msgspec checks these when a config is loaded (``_config_load``) or
# decoded; constructing a Struct directly in Python does not check them.
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0.0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0.0)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Percent = Annotated[float, msgspec.Meta(gt=0.0, le=100.0)]


class _Conf(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of config structs: immutable, keyword-only, and strict about unknown keys (a typo
    in a config file is an error, not a silently ignored setting). msgspec applies ``kw_only``
    only to the fields a class defines itself, so every subclass repeats it."""


Backoff = Literal["none", "linear", "exponential"]


class RetryConfig(_Conf, frozen=True, kw_only=True):
    """How one connection retries a failed attempt.

    ``max_attempts`` counts the first attempt. Delay before retry *n* (1-based) is
    ``initial_delay_ms`` (none: 0; linear: × n; exponential: × 2**(n-1)), capped at
    ``max_delay_ms``, with full jitter down to ``(1 - jitter)`` of it. A provider's
    Retry-After is honoured up to ``max_retry_after_s``; a longer one ends the attempts.
    ``budget_ratio`` caps retries at that fraction of first attempts over ``budget_window_s``,
    so retries cannot multiply the load on a provider that is down.
    """

    max_attempts: PositiveInt = 3
    backoff: Backoff = "exponential"
    initial_delay_ms: NonNegativeInt = 500
    max_delay_ms: NonNegativeInt = 8000
    jitter: Fraction = 0.25
    retry_on: tuple[ErrorKind, ...] = DEFAULT_RETRY_ON
    max_retry_after_s: NonNegativeFloat = 60.0
    budget_ratio: NonNegativeFloat = 0.2
    budget_window_s: PositiveFloat = 10.0
    budget_min_retries: NonNegativeInt = 10


class RateLimitConfig(_Conf, frozen=True, kw_only=True):
    """Client-side limits for one connection; ``None`` means no limit of that kind."""

    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    concurrent_requests: PositiveInt | None = None


BreakerWindow = Literal["count", "time"]


class BreakerConfig(_Conf, frozen=True, kw_only=True):
    """The connection's circuit breaker (resilience4j's semantics and window defaults).

    The window holds the last ``window_size`` calls (``count``) or the calls of the last
    ``window_size`` seconds (``time``). Once it holds ``minimum_calls``, the breaker opens when
    the failure rate or the slow-call rate (calls over ``slow_call_s``) reaches its threshold
    (percent). It stays open ``open_s``, growing by ``open_backoff`` after each failed probe up
    to ``max_open_s`` (or ``open_s`` when that is larger: then it does not grow); then lets
    ``half_open_probes`` calls through. A half-open state whose oldest probe has given no
    verdict for ``half_open_timeout_s`` re-opens.

    The open-time defaults are chosen for a router with a fallback, where the cost of a
    closed-too-long breaker is traffic kept off a primary that has recovered, and the cost of a
    probe is one request (which fails over like any other). ``open_s = 5`` and
    ``open_backoff = 1.5`` up to ``max_open_s = 10`` probe a down provider after 5, 7.5, then
    every 10 s: at most six probe calls a minute, no real load on a provider that is
    struggling; and a primary that recovers is probed, and back in use, within 10 s of
    recovering plus the wait for the next request and that request's own time. (The old 30 s
    doubling to 300 s kept a primary that was down for a minute away for over a minute more.)
    ``half_open_timeout_s`` equals the default request budget (``ConnectionConfig.timeout``),
    so a healthy but long probe (a long streamed answer) is never taken for a stuck one; a
    failing probe re-opens the breaker as soon as it fails, whatever this setting.
    """

    enabled: bool = True
    window: BreakerWindow = "count"
    window_size: PositiveInt = 20
    minimum_calls: PositiveInt = 10
    failure_rate: Percent = 50.0
    slow_call_rate: Percent = 100.0
    slow_call_s: PositiveFloat = 60.0
    open_s: PositiveFloat = 5.0
    open_backoff: Annotated[float, msgspec.Meta(ge=1.0)] = 1.5
    max_open_s: PositiveFloat = 10.0
    half_open_probes: PositiveInt = 1
    half_open_timeout_s: PositiveFloat = 60.0


class MailboxConfig(_Conf, frozen=True, kw_only=True):
    """The connection's bounded mailbox. ``when_full``: ``wait`` (backpressure, bounded by the
    caller's deadline) or ``reject`` (an immediate ``queue_full`` failure)."""

    capacity: PositiveInt = 64
    when_full: Literal["wait", "reject"] = "wait"


class Price(_Conf, frozen=True, kw_only=True):
    """Price of a model, per million tokens."""

    input: NonNegativeFloat = 0.0
    output: NonNegativeFloat = 0.0
    cache_read: NonNegativeFloat | None = None


class TimeoutConfig(_Conf, frozen=True, kw_only=True):
    """Time limits of one attempt, in seconds (``None``: no limit of that kind).

    ``connect``: to open the TCP (and TLS) connection. ``first_token``: from the attempt's
    start to its first output event when streamed (text, reasoning or a tool call), to its
    whole body when not (a non-streamed answer gives no earlier sign of life). ``stall``: the
    longest silence between two body chunks, once the body has started.

    Defaults: with no limit, a provider that accepts the request and then says nothing holds
    it until the request's deadline and no fallback is ever tried. ``first_token = 30`` and
    ``stall = 30`` fit twice into the default request budget (``ConnectionConfig.timeout``,
    60 s): a silent target is given up at 30 s and the fallback has the other 30 s. Thirty
    seconds is far beyond a healthy time to first token (about a second for chat models;
    models that stream their reasoning show it as they think) and beyond any healthy pause
    inside a stream. Raise ``first_token`` (or set ``None``) for models that think silently
    for longer, and for non-streamed answers that take longer than 30 s to generate - and
    raise the request budget with it.
    """

    connect: PositiveFloat | None = 10.0
    first_token: PositiveFloat | None = 30.0
    stall: PositiveFloat | None = 30.0


class ConnectionConfig(_Conf, frozen=True, kw_only=True):
    """One provider connection (a ``connect`` block).

    ``models`` maps aliases to provider model names; ``serves`` lists extra model names or
    glob patterns (``gpt-4o*``) this connection can serve. ``timeout`` is the default
    end-to-end budget of a request in seconds; ``timeouts`` holds the per-attempt limits.
    ``base_url`` and ``api_version`` default per provider. ``supports_prefill`` declares that
    the model accepts a trailing assistant message to continue from.
    """

    name: str = ""
    provider: ProviderName = "openai"
    api_key: Secret | None = None
    base_url: str = ""
    default_model: str | None = None
    models: dict[str, str] = {}
    serves: list[str] = []
    timeout: PositiveFloat = 60.0
    timeouts: TimeoutConfig = TimeoutConfig()
    retry: RetryConfig = RetryConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    breaker: BreakerConfig = BreakerConfig()
    mailbox: MailboxConfig = MailboxConfig()
    headers: dict[str, str] = {}
    organization: str | None = None
    project: str | None = None
    api_version: str | None = None
    default_max_tokens: PositiveInt = 4096
    supports_prefill: bool = False
    priority: int = 0
    weight: NonNegativeFloat = 1.0
    prices: dict[str, Price] = {}

    def resolve_model(self, model: str | None) -> str:
        """The provider model name for *model* (an alias, a name, or ``None`` for the default)."""
        if not model:
            return self.default_model or ""
        return self.models.get(model, model)


RouteStrategy = Literal["priority", "weighted", "least_busy", "lowest_latency"]
MidStreamPolicy = Literal["fail", "restart", "continue"]


class Target(_Conf, frozen=True, kw_only=True):
    """One place a route can send a request: a connection and a model (or alias) on it."""

    connection: str
    model: str | None = None
    priority: int | None = None
    weight: NonNegativeFloat | None = None


class RouteConfig(_Conf, frozen=True, kw_only=True):
    """A model name clients use, mapped to targets.

    ``failover_on`` lists the kinds that move a request to the next target after the
    connection's own retries; ``context_fallback`` names a route (or model) with a larger
    context for ``context_length`` failures; ``hedge_after_s`` starts the next target when no
    first token came within that time (``"auto"`` learns it from observed latencies).
    """

    targets: list[Target]
    strategy: RouteStrategy = "priority"
    failover_on: tuple[ErrorKind, ...] = DEFAULT_FAILOVER_ON
    context_fallback: str | None = None
    mid_stream: MidStreamPolicy = "fail"
    hedge_after_s: PositiveFloat | Literal["auto"] | None = None
    cache: CacheConfig | None = None
    """The response cache and request coalescing for this route (``None``: the runtime's
    ``[runtime] cache`` default, off unless set)."""


class CacheConfig(_Conf, frozen=True, kw_only=True):
    """The response cache and request coalescing of a route (``[routes.<name>] cache = {
    ttl_s = 300 }``) or, as ``[runtime] cache``, of every route and model that sets none
    (``actors._cache``).

    A completion is stored for ``ttl_s`` seconds under an exact-match key over the model name
    asked for, the messages and every parameter that changes the answer; an identical request
    within that time gets it back at no cost (``Completion.served_from == "cache"``).
    ``ttl_s = 0`` stores nothing. With ``coalesce``, identical requests in flight at the same
    time share one upstream call (streams too). Only deterministic requests (``temperature =
    0``, or a ``seed`` in ``extra``) are cached or coalesced, unless ``nondeterministic``;
    embeddings always are. ``enabled = false`` turns a runtime-wide default off for a route.
    """

    enabled: bool = True
    ttl_s: NonNegativeFloat = 300.0
    coalesce: bool = True
    nondeterministic: bool = False


BudgetPeriod = Literal["total", "day", "month"]


class ClientConfig(_Conf, frozen=True, kw_only=True):
    """One client of the gateway (a virtual key, ``[gateway.clients.<name>]``): its own
    bearer token and limits, enforced at every face of the gateway (``actors._client_keys``).

    ``requests_per_minute`` and ``tokens_per_minute`` are token buckets like a connection's
    (a full minute's worth may burst); a request reserves its prompt estimate plus its
    ``max_tokens`` and settles with the real usage. ``budget_usd`` caps the estimated spend
    (the answers' ``cost`` from the connections' ``prices``) per ``budget_period``: ``total``
    (the life of the process), or the UTC calendar ``day`` or ``month``. Spend is kept in
    memory: a restart starts it again from zero. ``models`` allows only these model or route
    names (``fnmatch`` patterns such as ``gpt-4o*``; absent: every model). ``None`` means no
    limit of that kind."""

    token: Secret
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    budget_usd: NonNegativeFloat | None = None
    budget_period: BudgetPeriod = "total"
    models: list[str] | None = None


class GatewayConfig(_Conf, frozen=True, kw_only=True):
    """The WebSocket gateway. ``tokens`` are the accepted bearer tokens of unlimited clients;
    ``clients`` are named clients with their own token and limits (no tokens and no clients:
    no auth, only allowed on loopback hosts). ``max_connections`` bounds the open TCP
    connections of the whole server: a further one gets HTTP 503 at once, before the
    WebSocket upgrade. ``http`` also serves the OpenAI-compatible HTTP API (``/v1``),
    ``/metrics``, ``/healthz`` and ``/readyz`` on the same port (``actors._http_face``)."""

    enabled: bool = True
    http: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765
    tokens: list[Secret] = []
    clients: dict[str, ClientConfig] = {}
    max_connections: PositiveInt = 1024
    max_frame_bytes: PositiveInt = 1_048_576
    max_concurrent_per_client: PositiveInt = 64
    handshake_timeout_s: PositiveFloat = 10.0
    slow_client_timeout_s: PositiveFloat = 30.0
    ping_interval_s: PositiveFloat = 20.0


class RuntimeSettings(_Conf, frozen=True, kw_only=True):
    """Runtime-wide settings."""

    shutdown_timeout_s: NonNegativeFloat = 10.0
    log_prompts: bool = False
    restart_intensity: NonNegativeInt = 3
    restart_period_s: PositiveFloat = 5.0
    state: str = "local"
    """Where limits, breakers and usage totals live: ``local`` (this process), or a Redis
    URL (``redis://host:port/db``) shared by every process using it (see
    ``protocol._state_url``)."""
    state_password: Secret | None = None
    """The Redis password (never in the URL)."""
    state_timeout_s: PositiveFloat = 0.25
    """The longest any call to the shared state may take; a slower or failed call means the
    runtime serves on local state until Redis answers again."""
    cache: CacheConfig | None = None
    """The response cache of every route and model that sets none (default: off)."""
    cache_max_entries: PositiveInt = 10_000
    """At most this many answers in the in-process cache (least recently used go first)."""


class RuntimeConfig(_Conf, frozen=True, kw_only=True):
    """Everything ``open_runtime`` needs: connections by name, routes by model name, and the
    optional gateway."""

    connections: dict[str, ConnectionConfig] = {}
    routes: dict[str, RouteConfig] = {}
    gateway: GatewayConfig | None = None
    runtime: RuntimeSettings = RuntimeSettings()
