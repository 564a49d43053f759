"""The contract every provider dialect fulfils: a pure codec between our messages and one
provider's HTTP API.

A dialect does no I/O. It builds an `HttpRequest` (method, URL, headers, body bytes) that the
actor hands to httpx; it parses a body into a `Completion`; it makes a sans-IO stream decoder
that turns body chunks into stream events; it classifies an error response into a `Failure`.
Nothing a peer sends can make a dialect raise: junk becomes a `Failure` of kind ``protocol``
(a non-streamed body) or ``stream_interrupted`` (a stream), so the I/O shell has exactly one
way to learn that something went wrong.

Dialects are stateless singletons (``dialect_for("openai")``); per-stream state lives in the
decoder object.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Protocol

import msgspec

from ._config import ConnectionConfig, ProviderName
from ._messages import (
    ChatRequest,
    Completion,
    DecodedItem,
    Embeddings,
    EmbedRequest,
    Failure,
)

_REDACTED_HEADERS = frozenset(
    {"authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization"}
)


class HttpRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP request ready to send. Its repr hides credential headers."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:
        shown = {
            k: ("***" if k.lower() in _REDACTED_HEADERS else v) for k, v in self.headers.items()
        }
        return (
            f"HttpRequest(method={self.method!r}, url={self.url!r}, headers={shown!r}, "
            f"body=<{len(self.body)} bytes>)"
        )

    __str__ = __repr__


class StreamDecoder(Protocol):
    """Incremental, sans-IO decoder of one streamed response body.

    ``feed(chunk)`` returns the items completed by *chunk*; ``close()`` is called at end of
    body and returns the rest. The last item of a stream is `Finished` or a `Failure`
    (a provider error event, a malformed chunk, or - from ``close()`` - a stream cut before its
    terminator). After that, ``done`` is true and further input is ignored. Any split of the
    same bytes yields the same items.
    """

    @property
    def done(self) -> bool: ...

    def feed(self, chunk: bytes) -> list[DecodedItem]: ...

    def close(self) -> list[DecodedItem]: ...


class Dialect(Protocol):
    """One provider's wire format. All methods are pure."""

    name: ProviderName
    supports_embeddings: bool
    """False for providers without an embeddings API (Anthropic); ``embed_request`` then
    raises `ProtocolError` with an ``unsupported`` failure."""

    def chat_request(
        self, request: ChatRequest, conn: ConnectionConfig, *, model: str, stream: bool
    ) -> HttpRequest:
        """The HTTP request for *request* sent to *model* on *conn*."""
        ...

    def parse_chat(self, body: bytes) -> Completion | Failure:
        """A non-streamed response body (status 2xx) as a `Completion`.

        Only ``text``, ``tool_calls``, ``finish_reason``, ``usage``, ``model``,
        ``response_id`` and ``reasoning`` are filled; the actor adds the rest.
        """
        ...

    def stream_decoder(self) -> StreamDecoder:
        """A fresh decoder for one streamed response body (status 2xx)."""
        ...

    def embed_request(
        self, request: EmbedRequest, conn: ConnectionConfig, *, model: str
    ) -> HttpRequest:
        """The HTTP request for an embeddings call."""
        ...

    def parse_embed(self, body: bytes) -> Embeddings | Failure:
        """A non-streamed embeddings response body (status 2xx)."""
        ...

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float = 0.0
    ) -> Failure:
        """A non-2xx response as a `Failure` (kind, message, status, code, retry_after).

        ``headers`` is a case-insensitive mapping (httpx's ``Headers``) or a dict with
        lower-case names. *now* is the wall-clock time (epoch seconds) used to read an
        HTTP-date ``retry-after``; with the default 0 such dates are ignored.
        """
        ...


_MODULES: dict[str, str] = {
    "openai": "protocol._openai",
    "anthropic": "protocol._anthropic",
    "gemini": "protocol._gemini",
    "ollama": "protocol._ollama",
}

_CACHE: dict[str, Dialect] = {}


def dialect_for(provider: ProviderName) -> Dialect:
    """The dialect singleton for *provider*. Raises `KeyError` for an unknown provider."""
    try:
        return _CACHE[provider]
    except KeyError:
        pass
    module = importlib.import_module(_MODULES[provider])
    dialect: Dialect = module.DIALECT
    _CACHE[provider] = dialect
    return dialect
