"""Shared vocabulary of the fake providers' wire rendering: parsed requests, answers, body
pieces, error specs, request routing, and the header formats several dialects share.

Why a "pieces" model: faults act on the *structure* of a response, not on bytes. "Cut after 3
tokens", "stall after 2 tokens", "drop the terminator" mean the same thing in four dialects
whose bytes differ completely. So each dialect module renders a response as a list of
`Piece`s, each labelled with its role (``prelude`` - role chunk, ``message_start``...;
``token`` - a chunk carrying output tokens; ``finale`` - finish and usage chunks;
``terminator`` - ``[DONE]``, ``message_stop``, Gemini's finish chunk, Ollama's ``done`` line;
``body`` - a whole non-streamed body) and the number of output tokens it carries. The core
applies faults to that list, dialect-blind, and turns it into a `Script`.

Each dialect module (``_render_openai.py`` ...) provides a `DialectRenderer`: it parses the
request body of its dialect (raising `BadRequest` with the provider's own wording) and renders
healthy answers, embeddings, errors, a malformed event and a mid-stream error event.
"""

from __future__ import annotations

import email.utils
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from protocol._config import ProviderName
from protocol._messages import Usage

from ._faults import Endpoint, RetryAfterForm
from ._textgen import count_words

PieceRole = Literal["prelude", "token", "finale", "terminator", "body"]
AnswerFinish = Literal["stop", "length", "tool_calls"]
Headers = list[tuple[str, str]]


class BadRequest(Exception):
    """The request body cannot be understood; ``message`` is the provider-style reason."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ForcedTool:
    """The tool the request forces (``tool_choice`` required / a named tool)."""

    name: str
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Parsed:
    """What the core needs from a request body, whatever its dialect."""

    dialect: ProviderName
    endpoint: Endpoint
    model: str
    stream: bool = False
    texts: tuple[str, ...] = ()
    prompt_key: str = ""
    max_tokens: int | None = None
    last_role: str | None = None
    tool: ForcedTool | None = None
    include_usage: bool = False
    inputs: tuple[str, ...] = ()
    dimensions: int | None = None
    encoding_format: str = "float"
    batch: bool = False
    sse: bool = True

    @property
    def input_tokens(self) -> int:
        return count_words(self.texts) if self.endpoint == "chat" else count_words(self.inputs)


@dataclass(frozen=True)
class ToolCallAnswer:
    id: str
    name: str
    arguments: dict[str, Any]

    def fragments(self) -> list[str]:
        """The arguments' JSON text split into one fragment per argument (one ``"{}"`` when
        there are none); joined they are ``json.dumps(arguments)``."""
        items = list(self.arguments.items())
        if not items:
            return ["{}"]
        out: list[str] = []
        for i, (key, value) in enumerate(items):
            piece = json.dumps({key: value})[1:-1]
            out.append(("{" if i == 0 else ", ") + piece + ("}" if i == len(items) - 1 else ""))
        return out


@dataclass(frozen=True)
class Answer:
    """The healthy answer to a chat request, dialect-neutral. ``tokens`` are the text tokens
    (empty for a tool call); ``usage`` is exact (see ``_textgen``)."""

    model: str
    tokens: list[str]
    finish: AnswerFinish
    tool: ToolCallAnswer | None
    usage: Usage
    response_id: str
    request_id: str
    wall: float

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True)
class Piece:
    """A piece of a body: bytes, role, and how many output tokens it carries; ``usage`` marks
    the piece carrying the final usage."""

    data: bytes
    role: PieceRole
    tokens: int = 0
    usage: bool = False


@dataclass
class Rendered:
    status: int
    headers: Headers
    pieces: list[Piece]
    streamed: bool


ErrorSpecKind = Literal[
    "rate_limited",
    "server_error",
    "unauthorized",
    "context_length",
    "content_filter",
    "prefill",
    "bad_request",
    "not_found",
]


class ErrorSpec(NamedTuple):
    """An error response to render. ``message`` overrides the dialect's default wording
    (used for ``bad_request`` and ``not_found``); ``input_tokens`` feeds context-length
    messages; ``retry_after`` feeds Gemini's ``RetryInfo``."""

    status: int
    kind: ErrorSpecKind
    model: str = ""
    message: str | None = None
    param: str | None = None
    input_tokens: int = 0
    retry_after: float | None = None
    request_id: str = ""
    wall: float = 0.0
    context_window: int = 0


def spec_window(spec: ErrorSpec) -> int:
    """The context window named in a context-length message: the configured one, else one
    token less than the prompt (so the message is always self-consistent)."""
    if spec.context_window:
        return spec.context_window
    return max(1, spec.input_tokens - 1)


class DialectRenderer(Protocol):
    name: ProviderName

    def parse(self, endpoint: Endpoint, path_model: str, query: str, body: bytes) -> Parsed:
        """The request, or `BadRequest`."""
        ...

    def chat(self, req: Parsed, answer: Answer) -> Rendered: ...

    def embed(
        self, req: Parsed, vectors: list[list[float]], *, request_id: str, wall: float
    ) -> Rendered: ...

    def error(self, spec: ErrorSpec) -> Rendered: ...

    def malformed(self, req: Parsed, answer: Answer) -> bytes:
        """A properly framed event (or a non-streamed body) whose JSON is truncated."""
        ...

    def stream_error(self, req: Parsed, answer: Answer) -> bytes:
        """The dialect's mid-stream error event, framed."""
        ...

    def rate_limit_headers(self, snapshot: BudgetSnapshot, wall: float) -> Headers: ...


class BudgetSnapshot(NamedTuple):
    """The budget after charging a request: ``None`` limits are unlimited and not reported;
    ``reset_in`` is seconds to the end of the current window."""

    limit_requests: int | None
    remaining_requests: int
    limit_tokens: int | None
    remaining_tokens: int
    reset_in: float


# --------------------------------------------------------------------------- routing


class Route(NamedTuple):
    """Where a request goes. ``streaming`` is set when the path itself asks for a stream
    (Gemini's ``:streamGenerateContent``)."""

    dialect: ProviderName
    endpoint: Endpoint
    path_model: str
    streaming: bool = False


_GEMINI_ACTIONS: dict[str, tuple[Endpoint, bool]] = {
    "generateContent": ("chat", False),
    "streamGenerateContent": ("chat", True),
    "embedContent": ("embed", False),
    "batchEmbedContents": ("embed", False),
}


def route(method: str, path: str) -> Route | None:
    """The dialect and endpoint of ``method path``; ``None`` for anything else."""
    if method.upper() != "POST":
        return None
    path = path.rstrip("/") or "/"
    if path == "/v1/chat/completions":
        return Route("openai", "chat", "")
    if path == "/v1/embeddings":
        return Route("openai", "embed", "")
    if path == "/v1/messages":
        return Route("anthropic", "chat", "")
    if path == "/api/chat":
        return Route("ollama", "chat", "")
    if path == "/api/embed":
        return Route("ollama", "embed", "")
    prefix = "/v1beta/models/"
    if path.startswith(prefix) and ":" in path:
        model, _, action = path[len(prefix) :].rpartition(":")
        if model and "/" not in model and action in _GEMINI_ACTIONS:
            endpoint, streaming = _GEMINI_ACTIONS[action]
            return Route("gemini", endpoint, model, streaming)
    return None


def guess_dialect(path: str, headers: dict[str, str]) -> ProviderName:
    """The dialect an unknown path most likely speaks (for the shape of its 404)."""
    if path.startswith(("/v1beta", "/v1alpha")) or "x-goog-api-key" in headers:
        return "gemini"
    if path.startswith("/api/"):
        return "ollama"
    if "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic"
    return "openai"


# --------------------------------------------------------------------------- formats


def compact(obj: Any) -> bytes:
    """Compact JSON (OpenAI chunks, Anthropic, Ollama), non-ASCII kept as UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def go_duration(seconds: float) -> str:
    """*seconds* as Go's ``time.Duration.String()`` (``0s``, ``120ms``, ``1.5s``, ``6m0s``)."""
    ns = max(0, round(seconds * 1e9))
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _trim(ns / 1_000) + "µs"
    if ns < 1_000_000_000:
        return _trim(ns / 1_000_000) + "ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1e9) + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def rfc3339(epoch: float) -> str:
    """Whole-second RFC 3339 UTC timestamp, rounded up (``2026-04-05T14:28:37Z``)."""
    return datetime.fromtimestamp(math.ceil(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_nano(epoch: float) -> str:
    """RFC 3339 with nanoseconds, like Ollama's ``created_at``."""
    whole = math.floor(epoch)
    nanos = round((epoch - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    base = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


def retry_headers(retry_after: float | None, form: RetryAfterForm, wall: float) -> Headers:
    """The retry hint of a 429 in the requested form (see `RateLimited`)."""
    if retry_after is None or form == "none":
        return []
    if form == "ms":
        return [("retry-after-ms", str(round(retry_after * 1000)))]
    if form == "date":
        return [("retry-after", http_date(math.ceil(wall + retry_after)))]
    return [("retry-after", str(math.ceil(retry_after)))]


def common_headers(content_type: str, wall: float) -> Headers:
    return [("content-type", content_type), ("date", http_date(wall))]


# --------------------------------------------------------------------------- parsing helpers


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or `BadRequest`."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest("the request body must be a JSON object")
    return obj


def require_str(obj: dict[str, Any], key: str, message: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(message, param=key)
    return value


def optional_int(obj: dict[str, Any], *keys: str) -> int | None:
    """The first of *keys* present, as a positive int (`BadRequest` for a bad value)."""
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"{key} must be a positive integer, got {value!r}", param=key)
        return value
    return None


def strings_in(value: Any) -> list[str]:
    """Every string inside a JSON value, depth first (tool results given as objects)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    return []


def params_of(schema: Any) -> tuple[tuple[str, str], ...]:
    """``(name, type)`` of each property of a JSON Schema object (in order)."""
    if not isinstance(schema, dict):
        return ()
    props = schema.get("properties")
    if not isinstance(props, dict):
        return ()
    out: list[tuple[str, str]] = []
    for name, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        out.append((str(name), kind.lower() if isinstance(kind, str) else "string"))
    return tuple(out)


def prompt_key(pairs: list[tuple[str, str]]) -> str:
    """A canonical text of the conversation (role and text of each turn): equal requests in
    any dialect with equal turns give equal keys, hence equal answers."""
    return json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
