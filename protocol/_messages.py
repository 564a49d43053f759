"""The typed messages every part of switchboard speaks.

One vocabulary, provider-neutral: a `ChatRequest` goes in; a `Completion`, a stream of
`StreamEvent`s, or a `Failure` comes out. Dialects translate these to and from each provider's
wire format; the gateway sends them over WebSocket unchanged. All are `msgspec.Struct`s,
frozen and keyword-only, so they are cheap to build, safe to share between tasks, and
round-trip through JSON and MessagePack. Schema evolution rule: a new field always has a
default, so an old peer's message still decodes.

Tagged unions use the field ``type`` (content parts and stream events), the convention of
every provider API we speak.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

from ._errors import ErrorKind, is_retryable

Role = Literal["system", "user", "assistant", "tool"]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "refusal", "other"]
"""Why generation stopped, normalised across providers:

- ``stop``: natural end or a stop sequence (OpenAI ``stop``, Anthropic ``end_turn`` /
  ``stop_sequence``, Gemini ``STOP``, Ollama ``stop``);
- ``length``: the output token limit (``length``, ``max_tokens``, ``MAX_TOKENS``);
- ``tool_calls``: the model asked for tools (``tool_calls``, ``tool_use``);
- ``content_filter``: the provider's safety filter (``content_filter``, ``SAFETY``, ...);
- ``refusal``: the model refused (Anthropic ``refusal``);
- ``other``: anything else the provider reported.
"""


CacheMode = Literal["default", "refresh", "off"]
"""How one request uses the response cache of its route (``ChatRequest.cache``):
``default`` as the route says; ``refresh`` never takes a stored answer nor joins an identical
request in flight, but stores its own answer; ``off`` bypasses the cache and coalescing."""

ServedFrom = Literal["upstream", "cache", "coalesced"]
"""Where an answer came from: a call to a provider (``upstream``, billed), the response cache
(``cache``), or an identical request's call that this one shared (``coalesced``); the last two
carry zero usage and cost, since the answer cost nothing more."""


def _new_id() -> str:
    return uuid.uuid4().hex


class _Frozen(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base for all messages: immutable, keyword-only, tolerant of unknown fields.

    msgspec applies ``kw_only`` only to the fields a class defines itself, so every subclass
    repeats ``kw_only=True`` (and ``frozen=True``, for mypy)."""


# --------------------------------------------------------------------------- content parts


class TextPart(_Frozen, frozen=True, kw_only=True, tag="text", tag_field="type"):
    """Plain text."""

    text: str


class ImagePart(_Frozen, frozen=True, kw_only=True, tag="image", tag_field="type"):
    """An image given either by URL or inline as base64 ``data`` with its ``media_type``."""

    url: str | None = None
    data: str | None = None
    media_type: str = "image/png"


class ToolUsePart(_Frozen, frozen=True, kw_only=True, tag="tool_use", tag_field="type"):
    """The assistant asked to call a tool (a past turn replayed in the conversation)."""

    id: str
    name: str
    arguments: dict[str, Any] = {}


class ToolResultPart(_Frozen, frozen=True, kw_only=True, tag="tool_result", tag_field="type"):
    """The result of a tool call. ``name`` is the tool's name (Gemini and Ollama need it)."""

    tool_use_id: str
    content: str
    name: str = ""
    is_error: bool = False


ContentPart = TextPart | ImagePart | ToolUsePart | ToolResultPart


class Message(_Frozen, frozen=True, kw_only=True):
    """One turn of a conversation.

    ``content`` is a plain string or a list of parts. Tool results are sent as ``role="tool"``
    messages holding `ToolResultPart`s; dialects move them where each API wants them.
    """

    role: Role
    content: str | list[ContentPart]

    def text(self) -> str:
        """The concatenated text of this message (tool parts and images are skipped)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class Tool(_Frozen, frozen=True, kw_only=True):
    """A function the model may call. ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = {}


class ResponseFormat(_Frozen, frozen=True, kw_only=True):
    """Structured output: ``text``, any ``json_object``, or a ``json_schema`` named ``name``."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = "response"
    schema: dict[str, Any] | None = None
    strict: bool = True


# --------------------------------------------------------------------------- requests


class ChatRequest(_Frozen, frozen=True, kw_only=True):
    """A chat completion request, provider-neutral.

    ``model`` is a model name, an alias, or a route name; the router resolves it. ``timeout`` is
    the end-to-end budget in seconds (queueing, admission, retries, fallbacks and streaming);
    ``None`` uses the connection's configured timeout. ``fallbacks`` lists further model names
    or routes to try after ``model``'s own targets. ``tool_choice`` is ``"auto"``, ``"none"``,
    ``"required"`` or a tool name. ``extra`` is merged into the provider's request body as is.
    ``cache`` is how this request uses its route's response cache (`CacheMode`).
    """

    model: str
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = []
    tools: list[Tool] = []
    tool_choice: str | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    metadata: dict[str, str] = {}
    request_id: str = msgspec.field(default_factory=_new_id)
    timeout: float | None = None
    fallbacks: list[str] = []
    strategy: str | None = None
    extra: dict[str, Any] = {}
    cache: CacheMode = "default"


class EmbedRequest(_Frozen, frozen=True, kw_only=True):
    """An embeddings request for one or more input texts."""

    model: str
    inputs: list[str]
    dimensions: int | None = None
    metadata: dict[str, str] = {}
    request_id: str = msgspec.field(default_factory=_new_id)
    timeout: float | None = None
    fallbacks: list[str] = []
    extra: dict[str, Any] = {}
    cache: CacheMode = "default"


# --------------------------------------------------------------------------- results


class Usage(_Frozen, frozen=True, kw_only=True):
    """Token counts of one attempt (or the sum of several)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


class ToolCall(_Frozen, frozen=True, kw_only=True):
    """A tool call the model made. ``arguments`` is the JSON text exactly as produced
    (it may be invalid JSON when the output was cut at ``max_tokens``)."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments decoded from JSON (empty text means ``{}``).

        Raises `msgspec.DecodeError` when the model produced invalid JSON.
        """
        return msgspec.json.decode(self.arguments or "{}")


class Producer(_Frozen, frozen=True, kw_only=True):
    """One attempt whose text is part of an answer: the connection and model that produced
    it, the usage it consumed and its estimated cost (``None`` without a configured price)."""

    connection: str
    model: str = ""
    usage: Usage = Usage()
    cost: float | None = None


class Completion(_Frozen, frozen=True, kw_only=True):
    """The final answer to a `ChatRequest`.

    ``connection`` and ``model`` name who actually answered (after routing and failover: for
    a continued stream, the target that finished it); ``attempts`` counts every attempt across
    connections; ``latency`` and ``time_to_first_token`` are in seconds; ``cost`` is the
    estimated cost in the configured currency unit from the connections' prices, or ``None``
    when no price is configured.

    ``produced_by`` lists, in order, the attempts whose text the answer is made of: one for
    an ordinary answer, several when a stream was continued on other targets (see `Switched`).
    ``usage`` and ``cost`` are the sums over them. The router fills it in; it is empty when
    a connection was asked directly (then ``connection``/``model`` produced everything).

    ``served_from`` is ``cache`` for an answer from the response cache and ``coalesced`` for
    one shared with an identical request in flight: then ``usage`` and ``cost`` are zero,
    ``attempts`` is 0 and ``produced_by`` empty (the answer cost nothing more), while
    ``connection``/``model``/``response_id`` still name who produced it.
    """

    text: str = ""
    tool_calls: list[ToolCall] = []
    finish_reason: FinishReason = "stop"
    usage: Usage = Usage()
    model: str = ""
    connection: str = ""
    request_id: str = ""
    response_id: str = ""
    reasoning: str = ""
    attempts: int = 1
    latency: float | None = None
    time_to_first_token: float | None = None
    cost: float | None = None
    produced_by: list[Producer] = []
    served_from: ServedFrom = "upstream"


class Embeddings(_Frozen, frozen=True, kw_only=True):
    """The answer to an `EmbedRequest`: one vector per input, in order."""

    vectors: list[list[float]]
    usage: Usage = Usage()
    model: str = ""
    connection: str = ""
    request_id: str = ""
    attempts: int = 1
    latency: float | None = None
    cost: float | None = None
    served_from: ServedFrom = "upstream"


class Failure(_Frozen, frozen=True, kw_only=True):
    """A typed terminal failure. Every request ends with a `Completion` or exactly one of these.

    ``status`` is the provider's HTTP status when there was one; ``retry_after`` is seconds the
    provider (or the runtime) asks to wait; ``code`` is the provider's own error code
    (``context_length_exceeded``, ``overloaded_error``, ...); ``usage`` is what the failed
    attempts consumed (partial streams included).
    """

    kind: ErrorKind
    message: str
    status: int | None = None
    retryable: bool = False
    retry_after: float | None = None
    code: str | None = None
    connection: str = ""
    model: str = ""
    request_id: str = ""
    attempts: int = 0
    usage: Usage | None = None

    @classmethod
    def of(cls, kind: ErrorKind, message: str, **fields: Any) -> Failure:
        """A `Failure` whose ``retryable`` flag comes from the error table."""
        fields.setdefault("retryable", is_retryable(kind))
        return cls(kind=kind, message=message, **fields)


# --------------------------------------------------------------------------- stream events


class TextDelta(_Frozen, frozen=True, kw_only=True, tag="text_delta", tag_field="type"):
    """A piece of the answer's text."""

    text: str


class ReasoningDelta(_Frozen, frozen=True, kw_only=True, tag="reasoning_delta", tag_field="type"):
    """A piece of the model's visible reasoning ("thinking"), when the provider streams it."""

    text: str


class ToolCallDelta(_Frozen, frozen=True, kw_only=True, tag="tool_call_delta", tag_field="type"):
    """A fragment of tool call number ``index``: the first carries ``id`` and ``name``;
    ``arguments`` pieces concatenate, in order, into the call's JSON arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class UsageUpdate(_Frozen, frozen=True, kw_only=True, tag="usage", tag_field="type"):
    """Usage so far (cumulative for the attempt, not an increment)."""

    usage: Usage


class Finished(_Frozen, frozen=True, kw_only=True, tag="finished", tag_field="type"):
    """The stream ended normally. ``usage`` is the attempt's final usage."""

    finish_reason: FinishReason = "stop"
    usage: Usage = Usage()
    model: str = ""
    response_id: str = ""


class Restart(_Frozen, frozen=True, kw_only=True, tag="restart", tag_field="type"):
    """The stream restarts on another target: discard all text and tool calls received so far."""

    reason: str
    connection: str = ""
    model: str = ""


class Switched(_Frozen, frozen=True, kw_only=True, tag="switched", tag_field="type"):
    """The stream continues on another target (an assistant-prefill continuation): **keep**
    everything received so far; what follows continues it. ``reason`` is why the previous
    target stopped; ``connection`` and ``model`` name the target that continues."""

    reason: str
    connection: str = ""
    model: str = ""


StreamEvent = (
    TextDelta | ReasoningDelta | ToolCallDelta | UsageUpdate | Finished | Restart | Switched
)
"""What a stream yields. A stream ends with `Finished`, or with a `Failure` (not an event)."""

DecodedItem = TextDelta | ReasoningDelta | ToolCallDelta | UsageUpdate | Finished | Failure
"""What a dialect's stream decoder produces: events, ended by `Finished` or a `Failure`."""
