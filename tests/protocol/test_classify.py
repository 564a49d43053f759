"""Classifying a provider's error signal into an `ErrorKind` and a `Failure`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._classify import (
    MAX_MESSAGE,
    classify,
    clip,
    error_failure,
    loads,
    str_or_none,
    text_of,
)
from protocol._errors import ErrorKind, is_retryable

K = ErrorKind
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, K.BAD_REQUEST),
        (401, K.AUTH),
        (402, K.PERMISSION),
        (403, K.PERMISSION),
        (404, K.NOT_FOUND),
        (405, K.BAD_REQUEST),
        (408, K.TIMEOUT),
        (409, K.SERVER_ERROR),
        (413, K.CONTEXT_LENGTH),
        (422, K.BAD_REQUEST),
        (429, K.RATE_LIMITED),
        (500, K.SERVER_ERROR),
        (502, K.SERVER_ERROR),
        (503, K.OVERLOADED),
        (504, K.SERVER_ERROR),
        (529, K.OVERLOADED),
        (599, K.SERVER_ERROR),
        (200, K.SERVER_ERROR),  # an error object inside a successful response
    ],
)
def test_status_mapping(status: int, kind: ErrorKind) -> None:
    assert classify(status, type_=None, code=None, message="") is kind


@pytest.mark.parametrize(
    ("status", "type_", "code", "kind"),
    [
        # OpenAI codes
        (400, "invalid_request_error", "context_length_exceeded", K.CONTEXT_LENGTH),
        (400, "invalid_request_error", "string_above_max_length", K.CONTEXT_LENGTH),
        (400, "invalid_request_error", "content_filter", K.CONTENT_FILTER),
        (400, "invalid_request_error", "content_policy_violation", K.CONTENT_FILTER),
        (400, "invalid_request_error", "unsupported_parameter", K.UNSUPPORTED),
        (400, "invalid_request_error", "unsupported_value", K.UNSUPPORTED),
        (404, "invalid_request_error", "model_not_found", K.NOT_FOUND),
        (401, "invalid_request_error", "invalid_api_key", K.AUTH),
        (429, "insufficient_quota", "insufficient_quota", K.PERMISSION),
        (429, "requests", "rate_limit_exceeded", K.RATE_LIMITED),
        (500, "server_error", None, K.SERVER_ERROR),
        (503, "server_error", None, K.OVERLOADED),
        # Anthropic types
        (529, "overloaded_error", None, K.OVERLOADED),
        (200, "overloaded_error", None, K.OVERLOADED),  # the mid-stream error event
        (500, "api_error", None, K.SERVER_ERROR),
        (429, "rate_limit_error", None, K.RATE_LIMITED),
        (401, "authentication_error", None, K.AUTH),
        (403, "permission_error", None, K.PERMISSION),
        (400, "billing_error", None, K.PERMISSION),
        (404, "not_found_error", None, K.NOT_FOUND),
        (413, "request_too_large", None, K.CONTEXT_LENGTH),
        (504, "timeout_error", None, K.TIMEOUT),
        # Google RPC statuses
        (401, "UNAUTHENTICATED", None, K.AUTH),
        (403, "PERMISSION_DENIED", None, K.PERMISSION),
        (404, "NOT_FOUND", None, K.NOT_FOUND),
        (429, "RESOURCE_EXHAUSTED", None, K.RATE_LIMITED),
        (402, "RESOURCE_EXHAUSTED", None, K.PERMISSION),
        (503, "UNAVAILABLE", None, K.OVERLOADED),
        (500, "INTERNAL", None, K.SERVER_ERROR),
        (504, "DEADLINE_EXCEEDED", None, K.TIMEOUT),
        # Unknown types fall back to the status.
        (400, "invalid_request_error", None, K.BAD_REQUEST),
        (502, "weird_error", "weird_code", K.SERVER_ERROR),
    ],
)
def test_type_and_code_mapping(status: int, type_: str, code: str | None, kind: ErrorKind) -> None:
    assert classify(status, type_=type_, code=code, message="") is kind


def test_code_wins_over_type_and_type_over_status() -> None:
    assert classify(400, type_="api_error", code="context_length_exceeded", message="") is (
        K.CONTEXT_LENGTH
    )
    assert classify(400, type_="overloaded_error", code=None, message="") is K.OVERLOADED


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 8192 tokens. However, you requested 9000.",
        "prompt is too long: 210000 tokens > 200000 maximum",
        "Input is too long for requested model.",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        "too many tokens in the request",
        "context window exceeded",
    ],
)
def test_context_length_phrases(message: str) -> None:
    assert classify(400, type_="invalid_request_error", code=None, message=message) is (
        K.CONTEXT_LENGTH
    )
    assert classify(200, type_=None, code=None, message=message) is K.CONTEXT_LENGTH


@pytest.mark.parametrize(
    "message",
    [
        "Your request was rejected as a result of our safety system.",
        "The response was filtered due to the prompt triggering content management policy.",
        "Output blocked by content filtering policy",
        "The prompt was flagged",
    ],
)
def test_content_filter_phrases(message: str) -> None:
    assert classify(400, type_=None, code=None, message=message) is K.CONTENT_FILTER


@pytest.mark.parametrize(
    "message",
    [
        "This model does not support assistant message prefill.",
        "Prefill is not supported with extended thinking",
        "Unsupported parameter: 'temperature' is not supported with this model.",
    ],
)
def test_unsupported_phrases(message: str) -> None:
    assert classify(400, type_=None, code=None, message=message) is K.UNSUPPORTED
    assert classify(422, type_=None, code=None, message=message) is K.UNSUPPORTED
    # The words mean nothing on a server error: that is still the provider's fault.
    assert classify(500, type_=None, code=None, message=message) is K.SERVER_ERROR


def test_phrases_do_not_override_rate_limits_or_auth() -> None:
    assert classify(429, type_=None, code=None, message="too many tokens per minute") is (
        K.RATE_LIMITED
    )
    assert classify(401, type_=None, code=None, message="context length") is K.AUTH


# --------------------------------------------------------------------------- junk bodies


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"message": "x"}}', {"error": {"message": "x"}}),
        ('{"a": 1}', {"a": 1}),
        (b"[1, 2]", [1, 2]),
        (b"", None),
        (b"<html>502 Bad Gateway</html>", None),
        (b'{"error": ', None),
        (b"\xff\xfe\x00", None),
        (b"[" * 100_000, None),
    ],
)
def test_loads(body: bytes | str, expected: object) -> None:
    assert loads(body) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_loads_and_text_of_never_raise(body: bytes) -> None:
    loads(body)
    text = text_of(body)
    assert text
    assert len(text) <= MAX_MESSAGE
    assert "\n" not in text


def test_text_of() -> None:
    assert text_of(b"") == "(empty body)"
    assert text_of(b"   \n\t ") == "(empty body)"
    assert (
        text_of(b"<html>\n  <b>Bad   Gateway</b>\n</html>") == "<html> <b>Bad Gateway</b> </html>"
    )
    assert text_of(b"caf\xc3\xa9 \xff") == "café \ufffd"
    long = text_of(b"x" * 2000)
    assert len(long) == MAX_MESSAGE
    assert long.endswith("…")
    assert text_of(b"abcdef", limit=4) == "abc…"


def test_clip_and_str_or_none() -> None:
    assert clip("short") == "short"
    assert clip("x" * 600) == "x" * (MAX_MESSAGE - 1) + "…"
    assert str_or_none(None) is None
    assert str_or_none("a") == "a"
    assert str_or_none(429) == "429"
    assert str_or_none({"nested": 1}) is None
    assert str_or_none([1]) is None


# --------------------------------------------------------------------------- failures


def test_error_failure_basics() -> None:
    failure = error_failure(
        400, {}, type_="invalid_request_error", code="context_length_exceeded", message="too long"
    )
    assert failure.kind is K.CONTEXT_LENGTH
    assert failure.status == 400
    assert failure.code == "context_length_exceeded"
    assert failure.message == "HTTP 400: too long"
    assert failure.retryable is False


def test_error_failure_code_falls_back_to_type() -> None:
    failure = error_failure(529, {}, type_="overloaded_error", code=None, message="Overloaded")
    assert failure.code == "overloaded_error"
    assert failure.kind is K.OVERLOADED
    assert failure.retryable is is_retryable(K.OVERLOADED)


def test_error_failure_in_a_stream_is_an_error_event() -> None:
    failure = error_failure(200, {}, type_="overloaded_error", code=None, message="Overloaded")
    assert failure.message == "error event: Overloaded"
    assert error_failure(500, {}, type_=None, code=None, message="").message == "HTTP 500"


def test_error_failure_retry_after_from_headers() -> None:
    assert (
        error_failure(429, {"retry-after": "7"}, type_=None, code=None, message="").retry_after
        == 7.0
    )
    headers = {"retry-after": "7", "retry-after-ms": "1500"}
    assert error_failure(429, headers, type_=None, code=None, message="").retry_after == 1.5


def test_error_failure_http_date_needs_now() -> None:
    headers = {"retry-after": "Wed, 01 May 2024 12:00:10 GMT"}
    with_now = error_failure(503, headers, type_=None, code=None, message="", now=NOW)
    assert with_now.retry_after == 10.0
    without = error_failure(503, headers, type_=None, code=None, message="")
    assert without.retry_after is None


def test_error_failure_body_retry_after_only_when_headers_have_none() -> None:
    body_hint = error_failure(
        429, {}, type_="RESOURCE_EXHAUSTED", code=None, message="quota", retry_after=12.0
    )
    assert body_hint.retry_after == 12.0
    both = error_failure(
        429, {"retry-after": "3"}, type_=None, code=None, message="", retry_after=12.0
    )
    assert both.retry_after == 3.0
    junk = error_failure(
        429, {"retry-after": "later"}, type_=None, code=None, message="", retry_after=12.0
    )
    assert junk.retry_after == 12.0


def test_error_failure_clips_long_messages() -> None:
    failure = error_failure(500, {}, type_=None, code=None, message="x" * 5000)
    assert len(failure.message) == MAX_MESSAGE


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=100, max_value=999),
    st.none() | st.text(max_size=20),
    st.none() | st.text(max_size=20),
    st.text(max_size=100),
    st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms"]), st.text(max_size=30)),
)
def test_error_failure_never_raises(
    status: int, type_: str | None, code: str | None, message: str, headers: dict[str, str]
) -> None:
    failure = error_failure(status, headers, type_=type_, code=code, message=message, now=NOW)
    assert failure.status == status
    assert failure.retry_after is None or failure.retry_after >= 0
    assert failure.retryable is is_retryable(failure.kind)
