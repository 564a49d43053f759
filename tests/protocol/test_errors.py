"""The error table and the exception types."""

from __future__ import annotations

import pytest

from protocol._config import RetryConfig, RouteConfig
from protocol._errors import (
    DEFAULT_FAILOVER_ON,
    DEFAULT_RETRY_ON,
    POLICIES,
    ConfigError,
    ErrorKind,
    KindPolicy,
    ProtocolError,
    RequestFailed,
    SwitchboardError,
    counts_against_breaker,
    is_retryable,
    parks_limiter,
    policy,
)
from protocol._messages import Failure

K = ErrorKind
RUNTIME_KINDS = {K.CIRCUIT_OPEN, K.QUEUE_FULL, K.DEADLINE, K.CANCELLED, K.CRASHED, K.CONFIG}


def test_table_covers_every_kind_exactly() -> None:
    assert set(POLICIES) == set(ErrorKind)
    assert all(isinstance(row, KindPolicy) for row in POLICIES.values())


def test_kind_values_are_stable_wire_names() -> None:
    for kind in ErrorKind:
        assert kind.value == kind.name.lower()
        assert ErrorKind(kind.value) is kind
    assert len({k.value for k in ErrorKind}) == len(ErrorKind)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_helpers_agree_with_the_table(kind: ErrorKind) -> None:
    row = POLICIES[kind]
    assert policy(kind) is row
    assert is_retryable(kind) is (row.retry != "never")
    assert counts_against_breaker(kind) is row.breaker_failure
    assert parks_limiter(kind) is row.parks_limiter


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_runtime_kinds_are_not_from_the_provider(kind: ErrorKind) -> None:
    row = POLICIES[kind]
    assert row.from_provider is (kind not in RUNTIME_KINDS)
    if kind in RUNTIME_KINDS:
        # Produced by the runtime itself: no retry on the same connection, no breaker, no limiter.
        assert (row.retry, row.breaker_failure, row.parks_limiter) == ("never", False, False)


def test_rate_limited_row() -> None:
    # 429: retry after Retry-After / reset; not a breaker failure; parks the limiter.
    row = policy(K.RATE_LIMITED)
    assert row.retry == "after_reset"
    assert not row.breaker_failure
    assert row.parks_limiter
    assert row.failover


@pytest.mark.parametrize("kind", [K.OVERLOADED, K.SERVER_ERROR, K.TIMEOUT, K.CONNECTION])
def test_backoff_rows(kind: ErrorKind) -> None:
    # 503/529, 500/502/504, timeouts, resets: backoff, counted by the breaker, limiter untouched.
    row = policy(kind)
    assert row.retry == "backoff"
    assert row.breaker_failure
    assert not row.parks_limiter


def test_stream_interrupted_only_retries_when_nothing_was_emitted() -> None:
    row = policy(K.STREAM_INTERRUPTED)
    assert row.retry == "if_nothing_emitted"
    assert row.breaker_failure


@pytest.mark.parametrize("kind", [K.AUTH, K.PERMISSION])
def test_auth_is_never_retried_and_never_opens_the_breaker(kind: ErrorKind) -> None:
    row = policy(kind)
    assert row.retry == "never"
    assert not row.breaker_failure
    assert not row.parks_limiter
    assert not is_retryable(kind)


@pytest.mark.parametrize(
    "kind", [K.BAD_REQUEST, K.NOT_FOUND, K.CONTEXT_LENGTH, K.CONTENT_FILTER, K.UNSUPPORTED]
)
def test_caller_mistakes_are_never_retried_nor_counted(kind: ErrorKind) -> None:
    row = policy(kind)
    assert row.retry == "never"
    assert not row.breaker_failure
    assert not row.parks_limiter


def test_context_length_goes_to_a_larger_model_not_the_next_target() -> None:
    # Another target of the same route has the same context window: context_length is not
    # failed over generically; routes send it to their `context_fallback` instead.
    assert not policy(K.CONTEXT_LENGTH).failover
    assert K.CONTEXT_LENGTH not in DEFAULT_FAILOVER_ON
    assert not policy(K.BAD_REQUEST).failover
    assert not policy(K.CONTENT_FILTER).failover


def test_config_defaults_are_derived_from_the_table() -> None:
    assert set(DEFAULT_RETRY_ON) == {k for k in K if is_retryable(k)}
    assert set(DEFAULT_FAILOVER_ON) == {k for k in K if policy(k).failover}
    assert RetryConfig().retry_on == DEFAULT_RETRY_ON
    assert RouteConfig(targets=[]).failover_on == DEFAULT_FAILOVER_ON


def test_only_rate_limited_parks_the_limiter() -> None:
    assert [k for k in ErrorKind if parks_limiter(k)] == [K.RATE_LIMITED]


def test_breaker_failures_are_exactly_the_provider_health_signals() -> None:
    assert {k for k in ErrorKind if counts_against_breaker(k)} == {
        K.OVERLOADED,
        K.SERVER_ERROR,
        K.TIMEOUT,
        K.CONNECTION,
        K.STREAM_INTERRUPTED,
        K.PROTOCOL,
    }


def test_deadline_and_cancelled_never_fail_over() -> None:
    for kind in (K.DEADLINE, K.CANCELLED, K.CONFIG):
        assert not policy(kind).failover


# --------------------------------------------------------------------------- exceptions


def test_exception_tree() -> None:
    for cls in (ProtocolError, ConfigError, RequestFailed):
        assert issubclass(cls, SwitchboardError)
    assert issubclass(SwitchboardError, Exception)


def test_config_error_format() -> None:
    error = ConfigError(
        "switchboard.toml",
        [("connections.openai.timeout", "expected float, got str"), ("", "file not found")],
    )
    assert error.source == "switchboard.toml"
    assert error.problems == [
        ("connections.openai.timeout", "expected float, got str"),
        ("", "file not found"),
    ]
    assert str(error) == (
        "switchboard.toml: connections.openai.timeout: expected float, got str\n"
        "switchboard.toml: (top level): file not found"
    )


def test_protocol_error_carries_its_failure() -> None:
    failure = Failure.of(K.PROTOCOL, "malformed chunk", status=200)
    error = ProtocolError(failure)
    assert error.failure is failure
    assert str(error) == "malformed chunk"
    with pytest.raises(SwitchboardError):
        raise error


def test_request_failed_names_the_kind() -> None:
    failure = Failure.of(K.CONTEXT_LENGTH, "prompt is too long")
    error = RequestFailed(failure)
    assert error.failure is failure
    assert str(error) == "context_length: prompt is too long"
