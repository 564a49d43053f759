"""Rate-limit and retry hints from response headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol._ratelimit import (
    RateLimitInfo,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2ms", 0.002),
        ("1.5s", 1.5),
        ("17.5s", 17.5),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("10ns", 1e-8),
        (".5s", 0.5),
        ("  20ms ", 0.02),
        ("7", 7.0),  # plain seconds
        ("0.25", 0.25),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        " ",
        "abc",
        "5x",
        "-1s",
        "-1",
        "1s2",
        "s",
        "ms",
        "1h 2m",
        "1.2.3s",
        "nan",
        "inf",
        "9" * 400 + "h",
    ],
)
def test_parse_duration_junk(junk: str) -> None:
    assert parse_duration(junk) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_parse_duration_never_raises(text: str) -> None:
    result = parse_duration(text)
    assert result is None or result >= 0.0


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=99),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59_999),
)
def test_parse_duration_of_composed_go_durations(h: int, m: int, ms: int) -> None:
    text = f"{h}h{m}m{ms / 1000}s"
    assert parse_duration(text) == pytest.approx(h * 3600 + m * 60 + ms / 1000)


# --------------------------------------------------------------------------- retry-after


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": " 30 "}, 30.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "1500.5"}, 1.5005),
        ({"retry-after": "Wed, 01 May 2024 12:00:10 GMT"}, 10.0),
        ({"retry-after": "Wed, 01 May 2024 11:59:00 GMT"}, 0.0),  # in the past: now
        ({"retry-after": "Wed, 01 May 2024 14:00:10 +0200"}, 10.0),
    ],
)
def test_retry_after(headers: dict[str, str], seconds: float) -> None:
    assert parse_retry_after(headers, now=NOW) == pytest.approx(seconds)


def test_retry_after_ms_takes_precedence() -> None:
    headers = {"retry-after": "20", "retry-after-ms": "1500"}
    assert parse_retry_after(headers, now=NOW) == 1.5


def test_junk_retry_after_ms_falls_back_to_retry_after() -> None:
    headers = {"retry-after": "20", "retry-after-ms": "soon"}
    assert parse_retry_after(headers, now=NOW) == 20.0


@pytest.mark.parametrize(
    "value",
    ["", "soon", "-5", "nan", "inf", "Wed, 01 May 2024 12:00:10", "Mon, 1 Jan 99999 00:00:00 GMT"],
)
def test_junk_retry_after(value: str) -> None:
    assert parse_retry_after({"retry-after": value}, now=NOW) is None


def test_no_retry_after() -> None:
    assert parse_retry_after({}, now=NOW) is None
    assert parse_rate_limit_headers({}, now=NOW) == RateLimitInfo()
    assert parse_rate_limit_headers({"content-type": "x"}, now=NOW).empty


def test_retry_after_alone() -> None:
    info = parse_rate_limit_headers({"retry-after": "3"}, now=NOW)
    assert info == RateLimitInfo(retry_after=3.0)
    assert not info.empty


# --------------------------------------------------------------------------- OpenAI


OPENAI = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-limit-tokens": "150000",
    "x-ratelimit-remaining-tokens": "149984",
    "x-ratelimit-reset-tokens": "6m0s",
}


def test_openai_headers() -> None:
    info = parse_rate_limit_headers(OPENAI, now=NOW)
    assert info == RateLimitInfo(
        limit_requests=60,
        remaining_requests=59,
        reset_requests=1.0,
        limit_tokens=150000,
        remaining_tokens=149984,
        reset_tokens=360.0,
    )


def test_openai_headers_with_retry_after() -> None:
    headers = {**OPENAI, "x-ratelimit-remaining-requests": "0", "retry-after-ms": "900"}
    info = parse_rate_limit_headers(headers, now=NOW)
    assert info.remaining_requests == 0
    assert info.retry_after == 0.9


def test_openai_tokens_only() -> None:
    headers = {"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "120ms"}
    info = parse_rate_limit_headers(headers, now=NOW)
    assert info == RateLimitInfo(remaining_tokens=10, reset_tokens=0.12)


def test_openai_junk_values_are_ignored() -> None:
    headers = {
        "x-ratelimit-limit-requests": "lots",
        "x-ratelimit-remaining-requests": "-3",
        "x-ratelimit-reset-requests": "whenever",
        "x-ratelimit-limit-tokens": "1.5",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "6m0sx",
    }
    info = parse_rate_limit_headers(headers, now=NOW)
    assert info == RateLimitInfo(remaining_tokens=100)


# --------------------------------------------------------------------------- Anthropic


ANTHROPIC = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2024-05-01T12:00:30Z",
    "anthropic-ratelimit-tokens-limit": "80000",
    "anthropic-ratelimit-tokens-remaining": "79000",
    "anthropic-ratelimit-tokens-reset": "2024-05-01T12:01:00Z",
    "anthropic-ratelimit-input-tokens-limit": "40000",
    "anthropic-ratelimit-input-tokens-remaining": "39000",
    "anthropic-ratelimit-input-tokens-reset": "2024-05-01T12:00:05Z",
}


def test_anthropic_headers() -> None:
    info = parse_rate_limit_headers(ANTHROPIC, now=NOW)
    assert info == RateLimitInfo(
        limit_requests=50,
        remaining_requests=49,
        reset_requests=30.0,
        limit_tokens=80000,
        remaining_tokens=79000,
        reset_tokens=60.0,
    )


def test_anthropic_input_tokens_when_no_combined_budget() -> None:
    headers = {k: v for k, v in ANTHROPIC.items() if "-tokens-" not in k or "input" in k}
    info = parse_rate_limit_headers(headers, now=NOW)
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens) == (40000, 39000, 5.0)


def test_anthropic_reset_with_offset_and_in_the_past() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2024-05-01T14:00:02+02:00",
        "anthropic-ratelimit-tokens-remaining": "5",
        "anthropic-ratelimit-tokens-reset": "2024-05-01T11:00:00Z",
        "retry-after": "2",
    }
    info = parse_rate_limit_headers(headers, now=NOW)
    assert info.reset_requests == 2.0
    assert info.reset_tokens == 0.0
    assert info.retry_after == 2.0


@pytest.mark.parametrize("reset", ["tomorrow", "2024-05-01T12:00:30", "", "2024-13-01T00:00:00Z"])
def test_anthropic_junk_reset_is_ignored(reset: str) -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": reset,
    }
    info = parse_rate_limit_headers(headers, now=NOW)
    assert info == RateLimitInfo(remaining_requests=3)


# --------------------------------------------------------------------------- robustness

HEADER_NAMES = [
    "retry-after",
    "retry-after-ms",
    *OPENAI,
    *ANTHROPIC,
    "anthropic-ratelimit-output-tokens-remaining",
]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(max_size=40), max_size=8),
    st.floats(min_value=0, max_value=4e9),
)
def test_arbitrary_header_values_never_raise(headers: dict[str, str], now: float) -> None:
    check_sane(parse_rate_limit_headers(headers, now=now))


def check_sane(info: RateLimitInfo) -> None:
    for value in (info.reset_requests, info.reset_tokens, info.retry_after):
        assert value is None or value >= 0.0
    counts = (info.limit_requests, info.remaining_requests)
    for count in (*counts, info.limit_tokens, info.remaining_tokens):
        assert count is None or count >= 0


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(HEADER_NAMES),
        st.one_of(
            st.from_regex(r"\A-?[0-9]{1,5}(\.[0-9]{0,3})?\Z"),
            st.from_regex(r"\A([0-9]{1,3}h)?([0-9]{1,3}m)?([0-9]{1,3}(\.[0-9])?(s|ms))?\Z"),
            st.datetimes().map(lambda d: d.isoformat() + "Z"),
        ),
        max_size=8,
    ),
)
def test_plausible_header_values_never_raise(headers: dict[str, str]) -> None:
    check_sane(parse_rate_limit_headers(headers, now=NOW))
