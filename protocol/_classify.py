"""Turning a provider's error signal (status, error type/code, message) into an `ErrorKind`.

Every dialect extracts ``(status, type, code, message)`` from its own error body shape and
calls `classify`, so the mapping from HTTP semantics to our taxonomy is written once. Order of
evidence: the provider's explicit error type/code wins (Anthropic ``overloaded_error`` on a
200 stream, OpenAI ``context_length_exceeded`` on a 400), then well-known message phrases
(providers disagree on codes but agree on words), then the status code.

**Redaction.** Providers and proxies echo what they were sent: a 401 body reads "Incorrect API
key provided: sk-...", a proxy repeats the ``Authorization`` header, an httpx error quotes a
URL with its ``?key=``. Such text becomes a `Failure` message that reaches callers, gateway
clients, logs and `RequestFailed`. So every connection builds one `Redactor` from its config
(`secrets_of`: the API key, the values of credential headers - also the token of a
``Bearer <token>`` value - and credential query parameters of ``base_url``), and every
`Failure` leaving the connection passes through it. It replaces each secret wherever it
appears (inside longer strings too) and also any run of `MIN_ECHO` or more characters shared
with a secret (a truncated or partly masked echo). What it leaves shows at most a recognisable
scheme prefix such as ``sk-``: ``sk-…[redacted]``. Values shorter than `MIN_SECRET` are not
looked for: they would garble every message and protect nothing.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from ._config import ConnectionConfig
from ._dialect import _REDACTED_HEADERS
from ._errors import ErrorKind
from ._messages import Failure, Usage
from ._ratelimit import parse_retry_after

K = ErrorKind

_BY_TYPE: dict[str, ErrorKind] = {
    # OpenAI codes
    "context_length_exceeded": K.CONTEXT_LENGTH,
    "string_above_max_length": K.CONTEXT_LENGTH,
    "content_filter": K.CONTENT_FILTER,
    "content_policy_violation": K.CONTENT_FILTER,
    "unsupported_parameter": K.UNSUPPORTED,
    "unsupported_value": K.UNSUPPORTED,
    "model_not_found": K.NOT_FOUND,
    "invalid_api_key": K.AUTH,
    "insufficient_quota": K.PERMISSION,
    "rate_limit_exceeded": K.RATE_LIMITED,
    "server_error": K.SERVER_ERROR,
    # Anthropic types
    "overloaded_error": K.OVERLOADED,
    "api_error": K.SERVER_ERROR,
    "rate_limit_error": K.RATE_LIMITED,
    "authentication_error": K.AUTH,
    "permission_error": K.PERMISSION,
    "billing_error": K.PERMISSION,
    "not_found_error": K.NOT_FOUND,
    "request_too_large": K.CONTEXT_LENGTH,
    "timeout_error": K.TIMEOUT,
    # Google RPC statuses
    "UNAUTHENTICATED": K.AUTH,
    "PERMISSION_DENIED": K.PERMISSION,
    "NOT_FOUND": K.NOT_FOUND,
    "RESOURCE_EXHAUSTED": K.RATE_LIMITED,
    "UNAVAILABLE": K.OVERLOADED,
    "INTERNAL": K.SERVER_ERROR,
    "DEADLINE_EXCEEDED": K.TIMEOUT,
}

_CONTEXT = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|input is too long"
    r"|too many (input )?tokens|exceeds? the (maximum|max) (number of )?tokens"
    r"|input token count.*exceeds",
    re.IGNORECASE,
)
_FILTER = re.compile(
    r"content[ _-]?(filter|policy|management)|safety (system|filter)|flagged", re.IGNORECASE
)
_UNSUPPORTED = re.compile(r"does not support|not supported|unsupported", re.IGNORECASE)

MAX_MESSAGE = 500


def classify(status: int, *, type_: str | None, code: str | None, message: str) -> ErrorKind:
    """The kind of an error with HTTP *status*, the provider's error *type_* / *code*, and its
    human *message* (any of which may be empty)."""
    for key in (code, type_):
        if key and key in _BY_TYPE:
            kind = _BY_TYPE[key]
            # Gemini uses RESOURCE_EXHAUSTED both for rate limits (429) and exhausted prepaid
            # credit (402); the status tells them apart.
            if kind is K.RATE_LIMITED and status == 402:
                return K.PERMISSION
            # A generic "server error" type on a 503/529 is the overloaded signal.
            if kind is K.SERVER_ERROR and status in (503, 529):
                return K.OVERLOADED
            return kind
    if status in (400, 404, 413, 422) or 200 <= status < 300:
        if _CONTEXT.search(message):
            return K.CONTEXT_LENGTH
        if _FILTER.search(message):
            return K.CONTENT_FILTER
        if status in (400, 422) and _UNSUPPORTED.search(message):
            return K.UNSUPPORTED
    return _by_status(status)


def _by_status(status: int) -> ErrorKind:
    if status == 429:
        return K.RATE_LIMITED
    if status == 401:
        return K.AUTH
    if status in (402, 403):
        return K.PERMISSION
    if status == 404:
        return K.NOT_FOUND
    if status == 408:
        return K.TIMEOUT
    if status == 413:
        return K.CONTEXT_LENGTH
    if status in (503, 529):
        return K.OVERLOADED
    if status >= 500 or status == 409:
        return K.SERVER_ERROR
    if 200 <= status < 300:
        # An error object inside a successful response: the provider failed mid-way.
        return K.SERVER_ERROR
    return K.BAD_REQUEST


def merge_extra(body: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Merge ``ChatRequest.extra`` into a request *body* at the top level; a ``None`` value
    deletes the key (so a caller can remove a field a dialect sets). The rule for every
    dialect."""
    for key, value in extra.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value


def protocol_failure(message: str, usage: Usage | None = None) -> Failure:
    """A `Failure` for bytes that break the provider's protocol (a malformed body or chunk),
    carrying the usage seen so far."""
    return Failure.of(K.PROTOCOL, message, usage=usage)


def loads(body: bytes | str) -> Any:
    """JSON from a peer, or ``None`` when it is not JSON. Never raises."""
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def text_of(body: bytes, limit: int = MAX_MESSAGE) -> str:
    """A short, printable excerpt of a body that was not the JSON we expected."""
    text = body[: limit * 4].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text or "(empty body)"


def clip(message: str, limit: int = MAX_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | bool):
        return str(value)
    return None


def error_failure(
    status: int,
    headers: Mapping[str, str],
    *,
    type_: str | None,
    code: str | None,
    message: str,
    retry_after: float | None = None,
    now: float = 0.0,
) -> Failure:
    """A `Failure` for a provider error. ``retry_after`` from the body (Gemini's RetryInfo)
    is used when the headers give none. *now* (epoch seconds) resolves HTTP-date
    ``retry-after`` values; callers without a clock pass 0 and such dates are then ignored."""
    kind = classify(status, type_=type_, code=code, message=message)
    header_delay = parse_retry_after(headers, now=now) if now else _numeric_retry_after(headers)
    prefix = f"HTTP {status}" if not 200 <= status < 300 else "error event"
    return Failure.of(
        kind,
        clip(f"{prefix}: {message}" if message else prefix),
        status=status,
        code=code or type_,
        retry_after=header_delay if header_delay is not None else retry_after,
    )


def _numeric_retry_after(headers: Mapping[str, str]) -> float | None:
    delay = parse_retry_after(headers, now=0.0)
    # With now=0 an HTTP-date resolves to "seconds since 1970": not a useful delay.
    if delay is not None and delay > 10 * 365 * 86400:
        return None
    return delay


# --------------------------------------------------------------------------- redaction

REDACTED = "[redacted]"
MIN_SECRET = 4
"""Secrets shorter than this are not looked for (see the module header)."""
MIN_ECHO = 8
"""A run of this many characters (or more) shared with a secret counts as an echo of it."""

_CREDENTIAL_NAME = re.compile(
    r"auth|key|token|secret|passw|signature|\bsig\b|cookie|credential", re.IGNORECASE
)
_SCHEME_VALUE = re.compile(r"\s*(?:bearer|basic|token|apikey|api-key|key)\s+(\S+)\s*", re.I)
_SHOWN_PREFIX = re.compile(r"[A-Za-z]{2}-")


def secrets_of(conn: ConnectionConfig) -> tuple[str, ...]:
    """The secret values a connection sends: its API key, the values of its credential
    headers (``Authorization``, ``x-api-key``, ``api-key``, ``x-goog-api-key``,
    ``proxy-authorization`` and any header whose name says key, token, secret, auth...; of a
    ``Bearer <token>`` value the token, so the scheme word stays readable), and the
    credential query parameters and password of its ``base_url``."""
    found: list[str] = []
    if conn.api_key:
        found.append(conn.api_key.reveal())
    for name, value in conn.headers.items():
        if name.lower() in _REDACTED_HEADERS or _CREDENTIAL_NAME.search(name):
            scheme = _SCHEME_VALUE.fullmatch(value)
            found.append(scheme.group(1) if scheme else value)
    parts = urllib.parse.urlsplit(conn.base_url)
    for name, value in urllib.parse.parse_qsl(parts.query):
        if _CREDENTIAL_NAME.search(name):
            found.append(value)
    if parts.password:
        found.append(parts.password)
    return tuple(found)


class Redactor:
    """Removes a fixed set of secrets from text (see the module header). Immutable; cheap to
    call when the text holds none of them."""

    __slots__ = ("_secrets", "_seeds")

    def __init__(self, secrets: Iterable[str]) -> None:
        unique = {s for s in secrets if len(s) >= MIN_SECRET}
        # Longest first: a secret that contains another (a header value "Bearer <key>") is
        # replaced whole.
        self._secrets = tuple(sorted(unique, key=lambda s: (-len(s), s)))
        self._seeds = frozenset(
            s[i : i + MIN_ECHO] for s in self._secrets for i in range(len(s) - MIN_ECHO + 1)
        )

    @classmethod
    def for_connection(cls, conn: ConnectionConfig) -> Redactor:
        return cls(secrets_of(conn))

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor(<{len(self._secrets)} secrets>)"

    def text(self, text: str) -> str:
        """*text* with every secret, and every echo of part of one, replaced."""
        if not self._secrets or not text:
            return text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _mask(secret))
        return self._partial(text) if self._seeds else text

    def _partial(self, text: str) -> str:
        seeds = self._seeds
        out: list[str] = []
        start = i = 0
        end = len(text) - MIN_ECHO
        while i <= end:
            if text[i : i + MIN_ECHO] not in seeds:
                i += 1
                continue
            j = i + MIN_ECHO
            while j < len(text) and any(text[i : j + 1] in s for s in self._secrets):
                j += 1
            out.append(text[start:i])
            out.append(REDACTED)
            start = i = j
        if not out:
            return text
        out.append(text[start:])
        return "".join(out)

    def failure(self, failure: Failure) -> Failure:
        """*failure* with its message and code redacted (the same object when clean)."""
        if not self._secrets:
            return failure
        message = self.text(failure.message)
        code = self.text(failure.code) if failure.code else failure.code
        if message == failure.message and code == failure.code:
            return failure
        return msgspec.structs.replace(failure, message=message, code=code)


def _mask(secret: str) -> str:
    prefix = _SHOWN_PREFIX.match(secret)
    return f"{prefix.group(0)}…{REDACTED}" if prefix and len(secret) >= 16 else REDACTED
