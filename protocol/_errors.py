"""The error taxonomy: one table that routes every failure signal to the right mechanism.

Why a table: a 429, a 503, a dropped socket and a 400 all arrive as "the call failed", but each
must reach a different mechanism. A 429 parks the rate limiter and is retried after the reset;
a 503 counts against the circuit breaker and is retried with backoff; a 400 is the caller's
mistake and is never retried, never counted against the provider. Scattering those decisions
over the retry loop, the breaker and the limiter is how libraries end up retrying 400s or
opening breakers on 429s. So every decision about a kind of failure is one row of `POLICIES`,
and the machines ask the table instead of matching on status codes themselves.

Exceptions live here too, kept small:

    SwitchboardError            base of everything this project raises
      ├─ ProtocolError          bytes from a peer (provider, WebSocket client) that break the
      │                         protocol; carries the `Failure` that describes it
      ├─ ConfigError            a configuration that cannot be used; names file, key, expectation
      └─ RequestFailed          a request ended with a `Failure` (raised by `chat()`-style APIs)
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from ._messages import Failure


class ErrorKind(enum.StrEnum):
    """Every way a request can fail. The value is the stable wire name."""

    # Signals from the provider.
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    STREAM_INTERRUPTED = "stream_interrupted"
    PROTOCOL = "protocol"
    AUTH = "auth"
    PERMISSION = "permission"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    UNSUPPORTED = "unsupported"
    # Produced by the runtime itself.
    CIRCUIT_OPEN = "circuit_open"
    QUEUE_FULL = "queue_full"
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    CRASHED = "crashed"
    CONFIG = "config"


RetryRule = Literal["after_reset", "backoff", "if_nothing_emitted", "never"]
"""How the same connection may retry a kind:

- ``after_reset``: wait for the provider's Retry-After / rate-limit reset, then retry.
- ``backoff``: retry after the policy's backoff delay.
- ``if_nothing_emitted``: like ``backoff``, but only while no stream event reached the caller.
- ``never``: retrying the same request on the same connection cannot help.
"""


class KindPolicy(NamedTuple):
    """What one `ErrorKind` means for each mechanism."""

    retry: RetryRule
    """Whether and how the same connection retries it."""
    breaker_failure: bool
    """Counts as a failure in the connection's circuit breaker."""
    parks_limiter: bool
    """Parks the connection's rate limiter until the provider's reset."""
    failover: bool
    """Routed to the next target by default (after the connection's own retries).
    ``context_length`` is not: another target of the same route has the same context; it goes
    to the route's ``context_fallback`` instead."""
    from_provider: bool
    """Reported by the provider (or its transport), as opposed to produced by the runtime."""


_P = KindPolicy
K = ErrorKind

POLICIES: dict[ErrorKind, KindPolicy] = {
    #                        retry                breaker  limiter failover provider
    K.RATE_LIMITED:       _P("after_reset",         False, True,  True,  True),
    K.OVERLOADED:         _P("backoff",             True,  False, True,  True),
    K.SERVER_ERROR:       _P("backoff",             True,  False, True,  True),
    K.TIMEOUT:            _P("backoff",             True,  False, True,  True),
    K.CONNECTION:         _P("backoff",             True,  False, True,  True),
    K.STREAM_INTERRUPTED: _P("if_nothing_emitted",  True,  False, True,  True),
    K.PROTOCOL:           _P("if_nothing_emitted",  True,  False, True,  True),
    K.AUTH:               _P("never",               False, False, False, True),
    K.PERMISSION:         _P("never",               False, False, False, True),
    K.BAD_REQUEST:        _P("never",               False, False, False, True),
    K.NOT_FOUND:          _P("never",               False, False, True,  True),
    K.CONTEXT_LENGTH:     _P("never",               False, False, False, True),
    K.CONTENT_FILTER:     _P("never",               False, False, False, True),
    K.UNSUPPORTED:        _P("never",               False, False, True,  True),
    K.CIRCUIT_OPEN:       _P("never",               False, False, True,  False),
    K.QUEUE_FULL:         _P("never",               False, False, True,  False),
    K.DEADLINE:           _P("never",               False, False, False, False),
    K.CANCELLED:          _P("never",               False, False, False, False),
    K.CRASHED:            _P("never",               False, False, True,  False),
    K.CONFIG:             _P("never",               False, False, False, False),
}  # fmt: skip

del _P, K

DEFAULT_RETRY_ON: tuple[ErrorKind, ...] = tuple(
    kind for kind, row in POLICIES.items() if row.retry != "never"
)
"""The kinds a connection retries unless configured otherwise: those the table allows."""

DEFAULT_FAILOVER_ON: tuple[ErrorKind, ...] = tuple(
    kind for kind, row in POLICIES.items() if row.failover
)
"""The kinds a route fails over on unless configured otherwise: the table's failover column."""


def policy(kind: ErrorKind) -> KindPolicy:
    """The row of `POLICIES` for *kind*."""
    return POLICIES[kind]


def is_retryable(kind: ErrorKind) -> bool:
    """True when the same connection may try the request again (subject to the retry policy)."""
    return POLICIES[kind].retry != "never"


def counts_against_breaker(kind: ErrorKind) -> bool:
    """True when a failure of this kind is evidence that the provider is unhealthy."""
    return POLICIES[kind].breaker_failure


def parks_limiter(kind: ErrorKind) -> bool:
    """True when a failure of this kind means "stop sending until the provider's reset"."""
    return POLICIES[kind].parks_limiter


class SwitchboardError(Exception):
    """Base class of every exception trio-switchboard raises on purpose."""


class ProtocolError(SwitchboardError):
    """A peer sent bytes that break its protocol. ``failure`` describes it as data."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class ConfigError(SwitchboardError):
    """A configuration cannot be used.

    ``problems`` lists every problem found, each as ``(key_path, expectation)``; ``source`` names
    the file (or ``<string>``). ``str()`` gives one line per problem, naming file and key.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key or '(top level)'}: {what}" for key, what in problems]
        super().__init__("\n".join(lines))


class RequestFailed(SwitchboardError):
    """A request ended with a typed `Failure` (raised by the convenience APIs)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.kind.value}: {failure.message}")
        self.failure = failure
