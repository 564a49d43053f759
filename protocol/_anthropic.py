"""The Anthropic Messages dialect (``POST {base_url}/messages``).

Problem: Anthropic's API differs from the OpenAI shape our messages resemble in ways that turn
into 400s when ignored. ``max_tokens`` is required. There is no system role (the system prompt
is a top-level field). Roles must be ``user`` and ``assistant`` only, so tool results travel
as ``tool_result`` blocks inside a *user* turn that directly follows the assistant turn that
asked for them, and two consecutive turns of the same role must be merged. The stream is a
typed event protocol (``message_start``, ``content_block_*``, ``message_delta``,
``message_stop``) rather than a sequence of deltas, usage comes twice (``message_delta`` is
cumulative), errors can arrive as an ``event: error`` inside an HTTP 200 stream, and a stream
that hits ``max_tokens`` inside a tool call skips that block's ``content_block_stop``.

Choices:

- **Conversation shape.** System messages are joined with blank lines into ``system``;
  ``role="tool"`` becomes ``user``; consecutive messages of the same resulting role are merged
  into one turn (their blocks concatenated), with ``tool_result`` blocks moved (stably) to the
  front of a user turn, because Anthropic rejects a turn where text precedes tool results. A
  trailing assistant message is a prefill and is sent unchanged (whether the model accepts one
  is the router's business: ``ConnectionConfig.supports_prefill``).
- **Structured output.** ``ResponseFormat(type="json_schema", schema=...)`` becomes
  ``output_config: {"format": {"type": "json_schema", "schema": ...}}`` (the GA shape; the beta
  ``output_format`` field and header are not used). Anthropic has no schemaless JSON mode, so
  ``json_object`` (and ``json_schema`` without a schema) sends nothing. An ``output_config``
  given in ``request.extra`` is merged with ours (its keys win).
- **Typed decoding on the hot path.** Every stream event is decoded by one module-level
  ``msgspec.json.Decoder`` into one flat private Struct naming only the fields we read; msgspec
  skips the rest (``caller``, ``stop_details``, ``signature``, ``citations``...). A tool
  call's ``input`` object is kept as ``msgspec.Raw``: its JSON text is the call's arguments,
  with no decode/re-encode round trip.
- **Never raise on peer input.** Undecodable data or broken SSE framing ends a stream with a
  ``protocol`` `Failure`; a body cut before the stop reason (``message_delta``) with
  ``stream_interrupted``; an error event is classified by its error type (``overloaded_error``
  → ``overloaded``) with status 200. Every stream `Failure` carries the usage seen so far, or
  ``None`` when none was.
- **A stop reason and a clean end of body are a complete answer**, ``message_stop`` or not:
  ``message_delta`` carries the stop reason and the final usage, and nothing after it carries
  content, so a stream that lost only its ``message_stop`` (a proxy, a cut last event) is not
  thrown away for the router to pay for again. The same rule as the OpenAI dialect's
  ``[DONE]``; the caller calls ``close()`` only for a clean end of body.
  An event of a type we do not know is ignored even when its shape is unexpected, as
  Anthropic's versioning policy asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ._classify import error_failure, loads, merge_extra, protocol_failure, str_or_none, text_of
from ._config import ConnectionConfig, ProviderName
from ._dialect import HttpRequest
from ._errors import ErrorKind, ProtocolError
from ._framing import FramingError, SSEEvent, SSEParser
from ._messages import (
    ChatRequest,
    Completion,
    ContentPart,
    DecodedItem,
    Embeddings,
    EmbedRequest,
    Failure,
    Finished,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    ResponseFormat,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolUsePart,
    Usage,
    UsageUpdate,
)

DEFAULT_BASE_URL: Final = "https://api.anthropic.com/v1"
DEFAULT_API_VERSION: Final = "2023-06-01"

_STOP_REASONS: Final[dict[str, FinishReason]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "refusal",
}

_ZERO_USAGE: Final = Usage()

_KNOWN_EVENTS: Final = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
    }
)

# --------------------------------------------------------------------------- wire structs
# Private, decode-only views of the wire format. ``gc=False``: decoded trees have no cycles.


class _W(msgspec.Struct, gc=False):
    """Base of the decode-only wire structs (unknown fields are ignored)."""


class _Usage(_W):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Block(_W):
    """A content block of any type: ``text``, ``thinking``, ``tool_use`` and the rest."""

    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = msgspec.Raw()


class _Message(_W):
    """A whole message (a non-streamed response, or ``message_start.message``)."""

    type: str | None = None
    id: str | None = None
    model: str | None = None
    content: list[_Block] | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None
    error: Any = None


class _Delta(_W):
    """``content_block_delta.delta`` (typed) or ``message_delta.delta`` (stop reason)."""

    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class _Event(_W):
    """Any stream event; which fields are set depends on ``type``."""

    type: str | None = None
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: Any = None


class _TypeOnly(_W):
    type: Any = None


_EVENT_DECODER: Final = msgspec.json.Decoder(_Event)
_TYPE_DECODER: Final = msgspec.json.Decoder(_TypeOnly)
_MESSAGE_DECODER: Final = msgspec.json.Decoder(_Message)
_ENCODER: Final = msgspec.json.Encoder()

# What msgspec may raise on hostile input: bad JSON or wrong types (DecodeError, which
# ValidationError subclasses), invalid UTF-8 inside a string we read (UnicodeDecodeError) and
# absurd nesting (RecursionError).
_DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


# --------------------------------------------------------------------------- helpers


def _finish(reason: str | None) -> FinishReason:
    if reason is None:
        return "other"
    return _STOP_REASONS.get(reason, "other")


def _usage(wire: _Usage) -> Usage:
    """Our `Usage` from Anthropic's. Anthropic's ``input_tokens`` excludes cache reads and
    writes; ours counts every input token (OpenAI's meaning), so they are added back."""
    read = wire.cache_read_input_tokens or 0
    write = wire.cache_creation_input_tokens or 0
    return Usage(
        input_tokens=(wire.input_tokens or 0) + read + write,
        output_tokens=wire.output_tokens or 0,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


def _merge_usage(prev: Usage | None, wire: _Usage) -> Usage:
    """``message_delta`` usage over what we had: its fields are cumulative totals, and a field
    it leaves out keeps the earlier (``message_start``) value."""
    if prev is None:
        return _usage(wire)
    read = (
        prev.cache_read_tokens
        if wire.cache_read_input_tokens is None
        else wire.cache_read_input_tokens
    )
    write = (
        prev.cache_write_tokens
        if wire.cache_creation_input_tokens is None
        else wire.cache_creation_input_tokens
    )
    raw_input = (
        prev.input_tokens - prev.cache_read_tokens - prev.cache_write_tokens
        if wire.input_tokens is None
        else wire.input_tokens
    )
    return Usage(
        input_tokens=raw_input + read + write,
        output_tokens=prev.output_tokens if wire.output_tokens is None else wire.output_tokens,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


def _safe_loads(body: bytes) -> Any:
    try:
        return loads(body)
    except RecursionError:  # absurd nesting; `loads` only catches decode errors
        return None


def _error_fields(obj: Any) -> tuple[str | None, str] | None:
    """``(type, message)`` of ``{"type": "error", "error": {"type", "message"}}``, of a bare
    ``{"error": {...}}`` or of ``{"error": "text"}``; ``None`` when *obj* has no error."""
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        return str_or_none(err.get("type")), str_or_none(err.get("message")) or ""
    if isinstance(err, str):
        return None, err
    if err is not None or obj.get("type") == "error":
        return None, text_of(_ENCODER.encode(obj))
    return None


def _error_payload_failure(error: Any, data: bytes, usage: Usage | None) -> Failure:
    """An error inside a 2xx body or stream (status 200)."""
    fields = _error_fields({"error": error}) if error is not None else None
    type_, message = fields if fields is not None else (None, text_of(data))
    failure = error_failure(200, {}, type_=type_, code=None, message=message)
    return msgspec.structs.replace(failure, usage=usage) if usage is not None else failure


# --------------------------------------------------------------------------- stream decoder


class AnthropicStreamDecoder:
    """Decodes one streamed ``/messages`` body into `DecodedItem`s.

    Theory of operation: bytes go through an `SSEParser`, which yields whole events however the
    body was split. Each event's data is one JSON object decoded into ``_Event`` in one msgspec
    call; its ``type`` (or, when the data has none, the SSE event name) selects the action. The
    decoder has two states, *streaming* and *done*:

    - ``message_start`` → remember model, id and usage → `UsageUpdate`;
    - ``content_block_start`` of a ``tool_use`` block → give the block the next tool ordinal
      (Anthropic's block index counts text and thinking blocks too; our `ToolCallDelta.index`
      counts tool calls only: 0, 1, ...) → `ToolCallDelta` with id and name; a text or
      thinking block that starts with text → `TextDelta` / `ReasoningDelta`;
    - ``content_block_delta``: ``text_delta`` → `TextDelta`, ``thinking_delta`` →
      `ReasoningDelta`, ``input_json_delta`` of a tool block → `ToolCallDelta` (arguments
      piece); empty pieces and other deltas (signatures, citations) emit nothing;
    - ``message_delta`` → remember the stop reason; usage merged (cumulative) → `UsageUpdate`;
    - ``message_stop`` → `Finished` → done;
    - ``error`` → the classified `Failure` (status 200) → done;
    - undecodable data of a known event type, or a framing error → ``protocol`` `Failure` →
      done; ``ping``, ``content_block_stop`` and unknown types → nothing;
    - ``close()`` while streaming, after a stop reason → `Finished`, as for ``message_stop``
      (a last, unterminated event cut inside its JSON is then the lost ``message_stop``);
    - ``close()`` while streaming, before a stop reason → ``stream_interrupted`` `Failure`
      (also when the last, unterminated event is cut inside its JSON: the body ended, the
      event is not malformed) → done;
    - done: ``feed`` and ``close`` return ``[]``.

    ``content_block_stop`` is not needed: a tool call's arguments are the concatenation of its
    pieces whether or not its block was closed (it is not when ``max_tokens`` cuts the input).
    """

    __slots__ = ("_done", "_model", "_response_id", "_sse", "_stop_reason", "_tools", "_usage")

    def __init__(self, *, max_buffer: int | None = None) -> None:
        self._sse = SSEParser() if max_buffer is None else SSEParser(max_buffer=max_buffer)
        self._done = False
        self._tools: dict[int, int] = {}
        self._stop_reason: str | None = None
        self._usage: Usage | None = None
        self._model = ""
        self._response_id = ""

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, chunk: bytes) -> list[DecodedItem]:
        if self._done or not chunk:
            return []
        try:
            events = self._sse.feed(chunk)
        except FramingError as exc:
            return self._framing_failure(exc)
        return self._events(events) if events else []

    def close(self) -> list[DecodedItem]:
        if self._done:
            return []
        try:
            events = self._sse.close()
        except FramingError as exc:  # the unterminated last line made an event too long
            return self._framing_failure(exc)
        out = self._events(events, final=True)
        if self.done:  # message_stop or an error came last (the property defeats narrowing)
            return out
        out.append(
            self._interrupted("the body ended") if self._stop_reason is None else self._finished()
        )
        self._done = True
        return out

    def _finished(self) -> Finished:
        return Finished(
            finish_reason=_finish(self._stop_reason),
            usage=self._usage or _ZERO_USAGE,
            model=self._model,
            response_id=self._response_id,
        )

    def _interrupted(self, what: str) -> Failure:
        return Failure.of(
            ErrorKind.STREAM_INTERRUPTED,
            f"stream ended with no stop reason and no message_stop: {what}",
            usage=self._usage,
        )

    def _framing_failure(self, exc: FramingError) -> list[DecodedItem]:
        # Deliver what was complete before the bad line: the items then do not depend on how
        # the body was split.
        out = self._events(exc.events)
        if not self.done:
            out.append(protocol_failure(f"malformed stream: {exc}", self._usage))
            self._done = True
        return out

    def _events(self, events: list[SSEEvent], *, final: bool = False) -> list[DecodedItem]:
        """Items for whole SSE *events*. ``final``: these were flushed by ``close()``, so an
        undecodable one is an event cut by the end of the body, not a malformed one."""
        out: list[DecodedItem] = []
        append = out.append
        for name, data in events:
            try:
                event = _EVENT_DECODER.decode(data)
            except _DECODE_ERRORS as exc:
                if not data.strip() or not self._known(name, data):
                    continue  # an empty keep-alive, or an unknown event of a new shape
                if final:
                    if self._stop_reason is not None:
                        return out  # message_stop, cut: close() finishes the answer
                    append(self._interrupted("the body ended inside an event"))
                else:
                    append(protocol_failure(f"malformed {name} event: {exc}", self._usage))
                self._done = True
                return out
            kind = event.type or name
            if kind == "content_block_delta":
                delta = event.delta
                if delta is None:
                    continue
                dtype = delta.type
                if dtype == "text_delta":
                    if delta.text:
                        append(TextDelta(text=delta.text))
                elif dtype == "input_json_delta":
                    ordinal = self._tools.get(event.index)
                    if ordinal is not None and delta.partial_json:
                        append(ToolCallDelta(index=ordinal, arguments=delta.partial_json))
                elif dtype == "thinking_delta" and delta.thinking:
                    append(ReasoningDelta(text=delta.thinking))
            elif kind == "content_block_start":
                block = event.content_block
                if block is None:
                    continue
                btype = block.type
                if btype == "tool_use":
                    ordinal = len(self._tools)
                    self._tools[event.index] = ordinal
                    append(
                        ToolCallDelta(index=ordinal, id=block.id or None, name=block.name or None)
                    )
                elif btype == "text":
                    if block.text:
                        append(TextDelta(text=block.text))
                elif btype == "thinking" and block.thinking:
                    append(ReasoningDelta(text=block.thinking))
            elif kind == "message_delta":
                if event.delta is not None and event.delta.stop_reason is not None:
                    self._stop_reason = event.delta.stop_reason
                if event.usage is not None:
                    self._usage = usage = _merge_usage(self._usage, event.usage)
                    append(UsageUpdate(usage=usage))
            elif kind == "message_start":
                msg = event.message
                if msg is None:
                    continue
                self._model = msg.model or self._model
                self._response_id = msg.id or self._response_id
                if msg.usage is not None:
                    self._usage = usage = _usage(msg.usage)
                    append(UsageUpdate(usage=usage))
            elif kind == "message_stop":
                append(self._finished())
                self._done = True
                return out
            elif kind == "error":
                append(_error_payload_failure(event.error, data, self._usage))
                self._done = True
                return out
        return out

    @staticmethod
    def _known(name: str, data: bytes) -> bool:
        """Whether an event whose data did not fit ``_Event`` is one we rely on (then it is a
        protocol error) rather than a new event type (then it is ignored)."""
        try:
            kind = _TYPE_DECODER.decode(data).type
        except _DECODE_ERRORS:
            return True  # not even a JSON object: broken, whatever its name
        if not isinstance(kind, str):
            kind = name
        return kind in _KNOWN_EVENTS


# --------------------------------------------------------------------------- request building


def _headers(conn: ConnectionConfig, *, accept: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if conn.api_key:
        headers["x-api-key"] = conn.api_key.reveal()
    headers["anthropic-version"] = conn.api_version or DEFAULT_API_VERSION
    headers["content-type"] = "application/json"
    headers["accept"] = accept
    if conn.headers:
        # The connection's headers win, whatever their case.
        lowered = {k.lower() for k in conn.headers}
        headers = {k: v for k, v in headers.items() if k not in lowered}
        headers.update(conn.headers)
    return headers


def _image_block(part: ImagePart) -> dict[str, Any]:
    url = part.url
    if url and url[:5].lower() == "data:":
        meta, sep, data = url[5:].partition(",")
        media_type, _, encoding = meta.partition(";")
        if sep and encoding.lower() == "base64":
            source = {"type": "base64", "media_type": media_type or part.media_type, "data": data}
            return {"type": "image", "source": source}
    if url:
        return {"type": "image", "source": {"type": "url", "url": url}}
    source = {"type": "base64", "media_type": part.media_type, "data": part.data or ""}
    return {"type": "image", "source": source}


def _block(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        return _image_block(part)
    if isinstance(part, ToolUsePart):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments}
    result: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": part.tool_use_id,
        "content": part.content,
    }
    if part.is_error:
        result["is_error"] = True
    return result


def _blocks(content: str | list[Any]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [_block(part) for part in content]


def _wire_messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """``(system, messages)`` in Anthropic's shape (see the module docstring)."""
    system: list[str] = []
    turns: list[tuple[str, list[Message]]] = []
    for msg in messages:
        if msg.role == "system":
            system.append(msg.text())
            continue
        role = "assistant" if msg.role == "assistant" else "user"
        if turns and turns[-1][0] == role:
            turns[-1][1].append(msg)
        else:
            turns.append((role, [msg]))
    out: list[dict[str, Any]] = []
    for role, group in turns:
        content: str | list[dict[str, Any]]
        if len(group) == 1 and isinstance(group[0].content, str) and group[0].role != "tool":
            content = group[0].content
        else:
            blocks = [b for msg in group for b in _blocks(msg.content)]
            if role == "user":
                # Tool results must open the user turn that answers the tool calls.
                blocks.sort(key=lambda b: b["type"] != "tool_result")
            content = blocks
        out.append({"role": role, "content": content})
    return "\n\n".join(system), out


def _tool(tool: Tool) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": tool.name}
    if tool.description:
        wire["description"] = tool.description
    wire["input_schema"] = tool.parameters or {"type": "object", "properties": {}}
    return wire


def _tool_choice(choice: str) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": choice}


def _output_format(fmt: ResponseFormat) -> dict[str, Any] | None:
    if fmt.type == "json_schema" and fmt.schema is not None:
        return {"type": "json_schema", "schema": fmt.schema}
    return None


def _message_completion(msg: _Message) -> Completion:
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for block in msg.content or ():
        btype = block.type
        if btype == "text":
            text.append(block.text or "")
        elif btype == "tool_use":
            raw = bytes(block.input).decode("utf-8", "replace")
            calls.append(ToolCall(id=block.id or "", name=block.name or "", arguments=raw or "{}"))
        elif btype == "thinking":
            reasoning.append(block.thinking or "")
    return Completion(
        text="".join(text),
        tool_calls=calls,
        finish_reason=_finish(msg.stop_reason),
        usage=_usage(msg.usage) if msg.usage is not None else _ZERO_USAGE,
        model=msg.model or "",
        response_id=msg.id or "",
        reasoning="".join(reasoning),
    )


class AnthropicDialect:
    """The ``anthropic`` dialect (see the module docstring). Stateless; use `DIALECT`."""

    name: ProviderName = "anthropic"
    supports_embeddings: bool = False

    def chat_request(
        self, request: ChatRequest, conn: ConnectionConfig, *, model: str, stream: bool
    ) -> HttpRequest:
        """``POST {base_url}/messages`` (``base_url`` defaults to ``DEFAULT_BASE_URL``).

        ``max_tokens`` is always sent (the API requires it): the request's, else the
        connection's ``default_max_tokens``. Unset optional fields are omitted.
        ``request.extra`` is merged last, at the top level (``thinking``, ``top_k``,
        ``metadata``, ``service_tier``...); an ``extra`` value of ``None`` removes that field.
        """
        system, messages = _wire_messages(request.messages)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens
            if request.max_tokens is not None
            else conn.default_max_tokens,
        }
        if system:
            body["system"] = system
        body["messages"] = messages
        if request.tools:
            body["tools"] = [_tool(tool) for tool in request.tools]
        if request.tool_choice:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.response_format is not None:
            fmt = _output_format(request.response_format)
            if fmt is not None:
                body["output_config"] = {"format": fmt}
        if stream:
            body["stream"] = True
        extra = request.extra
        ours = body.get("output_config")
        theirs = extra.get("output_config")
        if isinstance(ours, dict) and isinstance(theirs, dict):
            # An ``output_config`` in extra (e.g. ``effort``) joins ours (the schema).
            extra = {**extra, "output_config": {**ours, **theirs}}
        merge_extra(body, extra)
        base = conn.base_url.rstrip("/") if conn.base_url else DEFAULT_BASE_URL
        return HttpRequest(
            method="POST",
            url=f"{base}/messages",
            headers=_headers(conn, accept="text/event-stream" if stream else "application/json"),
            body=_ENCODER.encode(body),
        )

    def parse_chat(self, body: bytes) -> Completion | Failure:
        """A non-streamed message: text blocks joined into ``text``, ``thinking`` blocks into
        ``reasoning``, ``tool_use`` blocks into tool calls whose arguments are the JSON text of
        their ``input``. A ``{"type": "error"}`` body is classified (status 200); a body
        without ``content`` is a ``protocol`` failure."""
        try:
            msg = _MESSAGE_DECODER.decode(body)
        except _DECODE_ERRORS:
            return protocol_failure(f"malformed response body: {text_of(body)}")
        if msg.type == "error" or msg.error is not None:
            return _error_payload_failure(msg.error, body, None)
        if msg.content is None:
            return protocol_failure(f"response has no content: {text_of(body)}")
        return _message_completion(msg)

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()

    def embed_request(
        self, request: EmbedRequest, conn: ConnectionConfig, *, model: str
    ) -> HttpRequest:
        """Always raises `ProtocolError` (``unsupported``): Anthropic has no embeddings API."""
        raise ProtocolError(_NO_EMBEDDINGS)

    def parse_embed(self, body: bytes) -> Embeddings | Failure:
        """Always the ``unsupported`` `Failure`: Anthropic has no embeddings API."""
        return _NO_EMBEDDINGS

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float = 0.0
    ) -> Failure:
        """An error response as a `Failure`: the error ``type`` of
        ``{"type": "error", "error": {"type", "message"}, "request_id"}`` becomes the code,
        the message is kept; a body of another shape (a proxy's HTML page, an empty body) is
        classified by status alone, with an excerpt of it as the message."""
        fields = _error_fields(_safe_loads(body))
        type_, message = fields if fields is not None else (None, text_of(body))
        return error_failure(status, headers, type_=type_, code=None, message=message, now=now)


_NO_EMBEDDINGS: Final = Failure.of(
    ErrorKind.UNSUPPORTED,
    "Anthropic has no embeddings API; route embeddings to another provider",
)

DIALECT: Final = AnthropicDialect()
"""The ``anthropic`` dialect singleton."""
