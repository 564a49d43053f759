"""Rate-limit and retry hints from response headers, in every provider's dialect, as one type.

Providers tell us how much budget is left in four different ways:

- ``retry-after``: integer or fractional seconds, or an HTTP-date (RFC 9110);
- ``retry-after-ms``: milliseconds (OpenAI and Anthropic, via their shared SDK generator);
- OpenAI ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as Go durations
  (``6m0s``, ``120ms``, ``1h2m3.5s``);
- Anthropic ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*``, resets as
  RFC 3339 timestamps.

All of them become one `RateLimitInfo` with resets as *seconds from now*, so the limiter never
sees a wall-clock date. Absolute dates need the current wall-clock time, which is an argument
(``now``, seconds since the epoch): this module reads no clock. Junk values are ignored, never
fatal: a header we cannot read is as good as a header that was not sent.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from datetime import datetime

import msgspec


class RateLimitInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider said about its limits. ``None`` means "not said". Resets and
    ``retry_after`` are seconds from the moment the response was received."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None

    @property
    def empty(self) -> bool:
        return self == _EMPTY


_EMPTY = RateLimitInfo()

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """A Go-style duration (``6m0s``, ``120ms``, ``1.5s``, ``0s``) or plain seconds, in
    seconds; ``None`` for anything else."""
    text = text.strip()
    if not text:
        return None
    plain = _number(text)
    if plain is not None:
        return plain
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0 or not math.isfinite(total):
        return None
    return total


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def _rfc3339_delta(text: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (preferred) or ``retry-after`` (seconds or
    HTTP-date); ``None`` when absent or unreadable. *now* is epoch seconds."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        value = _number(ms)
        if value is not None:
            return value / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    value = _number(raw)
    if value is not None:
        return value
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: float) -> RateLimitInfo:
    """Every rate-limit hint in *headers* (a case-insensitive mapping, or a dict with
    lower-case names). *now* is epoch seconds, used only for absolute reset times."""
    get = headers.get
    retry_after = parse_retry_after(headers, now=now)
    if get("x-ratelimit-limit-requests") is not None or get("x-ratelimit-remaining-requests"):
        return _openai(headers, retry_after)
    if any(get(f"anthropic-ratelimit-{k}-remaining") is not None for k in _ANTHROPIC_KINDS):
        return _anthropic(headers, retry_after, now)
    if get("x-ratelimit-remaining-tokens") is not None:
        return _openai(headers, retry_after)
    return RateLimitInfo(retry_after=retry_after) if retry_after is not None else _EMPTY


def _openai(headers: Mapping[str, str], retry_after: float | None) -> RateLimitInfo:
    get = headers.get

    def reset(name: str) -> float | None:
        raw = get(name)
        return None if raw is None else parse_duration(raw)

    return RateLimitInfo(
        limit_requests=_int(get("x-ratelimit-limit-requests")),
        remaining_requests=_int(get("x-ratelimit-remaining-requests")),
        reset_requests=reset("x-ratelimit-reset-requests"),
        limit_tokens=_int(get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(get("x-ratelimit-remaining-tokens")),
        reset_tokens=reset("x-ratelimit-reset-tokens"),
        retry_after=retry_after,
    )


_ANTHROPIC_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")


def _anthropic(headers: Mapping[str, str], retry_after: float | None, now: float) -> RateLimitInfo:
    get = headers.get

    def field(kind: str, what: str) -> str | None:
        return get(f"anthropic-ratelimit-{kind}-{what}")

    def reset(kind: str) -> float | None:
        raw = field(kind, "reset")
        return None if raw is None else _rfc3339_delta(raw, now)

    # "tokens" is the combined budget; older accounts only report input/output separately,
    # of which input tokens are the binding one for a limiter that reserves before sending.
    token_kind = "tokens" if field("tokens", "remaining") is not None else "input-tokens"
    return RateLimitInfo(
        limit_requests=_int(field("requests", "limit")),
        remaining_requests=_int(field("requests", "remaining")),
        reset_requests=reset("requests"),
        limit_tokens=_int(field(token_kind, "limit")),
        remaining_tokens=_int(field(token_kind, "remaining")),
        reset_tokens=reset(token_kind),
        retry_after=retry_after,
    )
