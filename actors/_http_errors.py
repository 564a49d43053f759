"""The one place where httpx exceptions become typed `Failure`s.

Like httpx's own ``map_httpcore_exceptions``: foreign exceptions are translated at a single
boundary, by an explicit table that names every exception class httpx exports (a test checks
that none is missing), so a new httpx release cannot slip an untranslated exception into the
runtime. The table is ordered most specific first; ``isinstance`` picks the first match.

Why the stream position matters: a reset before the response head is a ``connection`` failure
(nothing was received; the request may be retried), while the same reset in the middle of a
streamed body is ``stream_interrupted`` (retried only if nothing reached the caller yet).
"""

from __future__ import annotations

import httpx

from protocol._errors import ErrorKind
from protocol._messages import Failure

K = ErrorKind

# (exception class, kind before the body started, kind once the body was streaming, what)
EXCEPTION_TABLE: tuple[tuple[type[BaseException], ErrorKind, ErrorKind, str], ...] = (
    (httpx.ConnectTimeout, K.TIMEOUT, K.TIMEOUT, "connect timed out"),
    (httpx.ReadTimeout, K.TIMEOUT, K.TIMEOUT, "read timed out"),
    (httpx.WriteTimeout, K.TIMEOUT, K.TIMEOUT, "write timed out"),
    (httpx.PoolTimeout, K.TIMEOUT, K.TIMEOUT, "no connection available in time"),
    (httpx.TimeoutException, K.TIMEOUT, K.TIMEOUT, "timed out"),
    (httpx.ConnectError, K.CONNECTION, K.CONNECTION, "could not connect"),
    (httpx.ReadError, K.CONNECTION, K.STREAM_INTERRUPTED, "connection lost while reading"),
    (httpx.WriteError, K.CONNECTION, K.STREAM_INTERRUPTED, "connection lost while writing"),
    (httpx.CloseError, K.CONNECTION, K.STREAM_INTERRUPTED, "error closing the connection"),
    (httpx.NetworkError, K.CONNECTION, K.STREAM_INTERRUPTED, "network error"),
    (httpx.RemoteProtocolError, K.CONNECTION, K.STREAM_INTERRUPTED, "server broke HTTP"),
    # Our own request broke HTTP (e.g. a line break in a configured header): a config problem,
    # not a provider fault - never retried, never held against the provider's breaker.
    (httpx.LocalProtocolError, K.CONFIG, K.CONFIG, "invalid HTTP request (check headers)"),
    (httpx.ProtocolError, K.PROTOCOL, K.STREAM_INTERRUPTED, "HTTP protocol error"),
    (httpx.ProxyError, K.CONNECTION, K.CONNECTION, "proxy error"),
    (httpx.UnsupportedProtocol, K.CONFIG, K.CONFIG, "unsupported URL scheme"),
    (httpx.TransportError, K.CONNECTION, K.STREAM_INTERRUPTED, "transport error"),
    (httpx.DecodingError, K.PROTOCOL, K.STREAM_INTERRUPTED, "could not decode the body"),
    (httpx.TooManyRedirects, K.PROTOCOL, K.PROTOCOL, "too many redirects"),
    (httpx.RequestError, K.CONNECTION, K.STREAM_INTERRUPTED, "request error"),
    (httpx.HTTPStatusError, K.SERVER_ERROR, K.SERVER_ERROR, "HTTP status error"),
    (httpx.HTTPError, K.CONNECTION, K.STREAM_INTERRUPTED, "HTTP error"),
    (httpx.InvalidURL, K.CONFIG, K.CONFIG, "invalid URL"),
    (httpx.CookieConflict, K.PROTOCOL, K.PROTOCOL, "cookie conflict"),
    (httpx.StreamConsumed, K.CRASHED, K.CRASHED, "response stream consumed twice"),
    (httpx.StreamClosed, K.CRASHED, K.CRASHED, "response stream already closed"),
    (httpx.ResponseNotRead, K.CRASHED, K.CRASHED, "response not read"),
    (httpx.RequestNotRead, K.CRASHED, K.CRASHED, "request not read"),
    (httpx.StreamError, K.CRASHED, K.CRASHED, "stream misuse"),
)


def is_httpx_error(exc: BaseException) -> bool:
    """True for any exception class httpx raises (the ones `failure_from_exception` maps)."""
    return isinstance(exc, httpx.HTTPError | httpx.InvalidURL | httpx.CookieConflict |
                      httpx.StreamError)  # fmt: skip


def failure_from_exception(exc: BaseException, *, streaming: bool) -> Failure:
    """The `Failure` for an httpx exception; *streaming* tells whether the response body had
    started. The message names what happened, never a URL's credentials or headers."""
    for cls, before, during, what in EXCEPTION_TABLE:
        if isinstance(exc, cls):
            kind = during if streaming else before
            detail = str(exc).strip()
            message = f"{what}: {detail}" if detail and len(detail) < 300 else what
            return Failure.of(kind, message)
    raise TypeError(f"not an httpx exception: {type(exc).__name__}")
