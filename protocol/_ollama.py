"""The Ollama native dialect (``/api/chat``, ``/api/embed``).

Problem: Ollama speaks two APIs. Its OpenAI-compatible ``/v1`` is served by the ``openai``
dialect; this module speaks the native one, which is what most local setups use and the only
one that exposes ``thinking``, ``format`` schemas and ``options`` directly. The native stream is
newline-delimited JSON: one compact object per line, no ``data:`` prefix and no sentinel line;
the last object has ``"done": true`` with the token counts, and the final line often lacks its
``\\n``. Errors are ``{"error": "<string>"}`` - also as a line inside a 200 stream.

Options for the stream: line framing plus ``json.loads`` per line, or line framing plus a typed
msgspec decoder. As in the other dialects we take typed decoding (module-level decoders,
unknown fields ignored, ``null`` accepted where servers send it): the final line's metrics and
``/api/generate``'s ``context`` array are skipped without building Python objects.

Choices worth knowing:

- ``stream`` is always sent: the API defaults it to true, so leaving it out of a non-streamed
  request would get an NDJSON body back.
- A base URL ending in ``/v1`` is the OpenAI-compatible URL users copy from Ollama's docs; the
  native API lives at the root, so the suffix is stripped.
- Tool calls arrive whole with ``arguments`` as a JSON *object*; we re-encode it as JSON text
  (our `ToolCall` holds text). Older servers give no ``id``: we name the call ``call_<n>``.
  Ollama says ``done_reason: "stop"`` after a tool call; we report ``tool_calls``.
- Lines in the ``/api/generate`` shape (``response`` instead of ``message``) decode too, so the
  same decoder reads both endpoints.
- Images must be base64 on this API (the server fetches nothing). An image given by an http(s)
  URL cannot be sent: `chat_request` raises `ProtocolError` with an ``unsupported`` failure
  rather than drop it silently.
- ``tool_choice`` has no native equivalent: ``"none"`` leaves the tools out of the request;
  other values are ignored (the model decides).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ._accumulate import StreamAccumulator
from ._classify import error_failure, merge_extra, protocol_failure, str_or_none, text_of
from ._config import ConnectionConfig, ProviderName
from ._dialect import HttpRequest
from ._errors import ErrorKind, ProtocolError
from ._framing import FramingError, LineSplitter
from ._messages import (
    ChatRequest,
    Completion,
    DecodedItem,
    Embeddings,
    EmbedRequest,
    Failure,
    Finished,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
)

DEFAULT_BASE_URL = "http://localhost:11434"

# --------------------------------------------------------------------------- wire structs


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the response shapes we read: unknown fields ignored."""


class _Function(_Wire, frozen=True):
    name: str | None = None
    arguments: Any = None


class _ToolCall(_Wire, frozen=True):
    id: str | None = None
    function: _Function | None = None


class _Message(_Wire, frozen=True):
    content: str | None = None
    thinking: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Line(_Wire, frozen=True):
    model: str | None = None
    message: _Message | None = None
    response: str | None = None  # /api/generate
    thinking: str | None = None  # /api/generate
    done: bool | None = None
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: Any = None


class _EmbedResponse(_Wire, frozen=True):
    model: str | None = None
    embeddings: list[list[float]] | None = None
    prompt_eval_count: int | None = None


_LINE = msgspec.json.Decoder(_Line)
_EMBED = msgspec.json.Decoder(_EmbedResponse)
_ANY = msgspec.json.Decoder()
_ENCODE = msgspec.json.Encoder().encode

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


def _safe_decode(decoder: msgspec.json.Decoder[Any], data: bytes) -> Any:
    """Decode or raise `ValueError` with a short reason; never anything else."""
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None


def _error_failure(
    status: int, headers: Mapping[str, str], error: Any, fallback: str, *, now: float = 0.0
) -> Failure:
    """A Failure from Ollama's ``{"error": "<string>"}`` (or from anything else, classified
    by *status* with *fallback* as the message)."""
    if isinstance(error, dict):
        if "error" in error:
            error = error["error"]
        if isinstance(error, dict):  # an OpenAI-style object from a proxy in front of Ollama
            message = str_or_none(error.get("message")) or fallback
            type_ = str_or_none(error.get("type"))
            code = str_or_none(error.get("code"))
            return error_failure(status, headers, type_=type_, code=code, message=message, now=now)
    message = str_or_none(error) or fallback
    return error_failure(status, headers, type_=None, code=None, message=message, now=now)


# --------------------------------------------------------------------------- decoding


class OllamaStreamDecoder:
    """Decoder of an ``/api/chat`` (or ``/api/generate``) NDJSON body.

    Theory of operation: a `LineSplitter` cuts the body into lines; each line is one JSON
    object. State: the number of tool calls emitted (their ordinals are the `ToolCallDelta`
    indexes) and whether the stream is done. States:

    - *streaming*: each line's ``message.thinking`` / ``message.content`` (or ``thinking`` /
      ``response``) and ``tool_calls`` become deltas;
    - *done*: a ``done: true`` line (after its own content) gives `Finished` with the mapped
      ``done_reason`` and usage; an ``error`` line gives a classified `Failure`; an undecodable
      line or broken framing gives a ``protocol`` `Failure`; ``close()`` without a done line
      gives ``stream_interrupted`` - after processing a final line that lacked its ``\\n``,
      which Ollama often sends. Input after that is ignored.
    """

    __slots__ = ("_calls", "_done", "_lines")

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self._done = False
        self._calls = 0

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, chunk: bytes) -> list[DecodedItem]:
        if self._done:
            return []
        try:
            lines = self._lines.feed(chunk)
        except FramingError as exc:
            # Deliver the lines completed before the bad one: the items then do not depend
            # on how the body was split.
            out = self._process(exc.events)
            if not self._done:
                self._done = True
                out.append(protocol_failure(f"malformed stream: {exc}"))
            return out
        return self._process(lines)

    def close(self) -> list[DecodedItem]:
        if self._done:
            return []
        out = self._process(self._lines.close())
        if not self._done:
            self._done = True
            out.append(
                Failure.of(
                    ErrorKind.STREAM_INTERRUPTED,
                    'the Ollama stream ended before its "done": true line',
                )
            )
        return out

    def _process(self, lines: list[bytes]) -> list[DecodedItem]:
        out: list[DecodedItem] = []
        for raw in lines:
            try:
                line: _Line = _safe_decode(_LINE, raw)
            except ValueError as exc:
                self._done = True
                out.append(protocol_failure(f"malformed stream line: {exc}"))
                break
            self.add_line(line, raw, out)
            if self._done:
                break
        return out

    def add_line(self, line: _Line, raw: bytes, out: list[DecodedItem]) -> None:
        """Append the items of one decoded line (or a whole non-streamed body)."""
        if line.error is not None:
            self._done = True
            out.append(_error_failure(200, {}, line.error, text_of(raw)))
            return
        message = line.message
        thinking = message.thinking if message is not None else line.thinking
        content = message.content if message is not None else line.response
        if thinking:
            out.append(ReasoningDelta(text=thinking))
        if content:
            out.append(TextDelta(text=content))
        for call in (message.tool_calls if message is not None else None) or ():
            function = call.function or _Function()
            index = self._calls
            self._calls += 1
            args = function.arguments if function.arguments is not None else {}
            out.append(
                ToolCallDelta(
                    index=index,
                    id=call.id or f"call_{index}",
                    name=function.name or "",
                    arguments=args if isinstance(args, str) else _ENCODE(args).decode(),
                )
            )
        if line.done:
            self._done = True
            reason = _FINISH.get(line.done_reason or "stop", "other")
            if reason == "stop" and self._calls:
                reason = "tool_calls"
            out.append(
                Finished(
                    finish_reason=reason,
                    usage=Usage(
                        input_tokens=line.prompt_eval_count or 0,
                        output_tokens=line.eval_count or 0,
                    ),
                    model=line.model or "",
                )
            )


# --------------------------------------------------------------------------- requests


def _base_url(conn: ConnectionConfig) -> str:
    base = (conn.base_url or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3].rstrip("/")
    return base


def _headers(conn: ConnectionConfig, *, accept: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": accept}
    if conn.api_key:
        headers["authorization"] = f"Bearer {conn.api_key.reveal()}"
    headers.update(conn.headers)
    return headers


def _image_base64(part: ImagePart) -> str:
    if part.data is not None:
        return part.data
    url = part.url or ""
    if url.startswith("data:") and "," in url:
        return url.partition(",")[2]
    raise ProtocolError(
        Failure.of(
            ErrorKind.UNSUPPORTED,
            "Ollama's native API takes images as base64 data, not URLs; "
            "pass ImagePart(data=...) or a data: URL",
        )
    )


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
            continue
        text: list[str] = []
        images: list[str] = []
        calls: list[dict[str, Any]] = []
        results: list[ToolResultPart] = []
        for part in message.content:
            if isinstance(part, TextPart):
                text.append(part.text)
            elif isinstance(part, ImagePart):
                images.append(_image_base64(part))
            elif isinstance(part, ToolUsePart):
                names[part.id] = part.name
                calls.append({"function": {"name": part.name, "arguments": part.arguments}})
            else:
                results.append(part)
        if text or images or calls or not results:
            entry: dict[str, Any] = {"role": message.role, "content": "".join(text)}
            if images:
                entry["images"] = images
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
        for result in results:
            name = result.name or names.get(result.tool_use_id, "")
            tool: dict[str, Any] = {"role": "tool", "content": result.content}
            if name:
                tool["tool_name"] = name
            out.append(tool)
    return out


def _chat_body(request: ChatRequest, model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": _messages(request.messages),
        "stream": stream,
    }
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    if options:
        body["options"] = options
    if request.tools and request.tool_choice != "none":
        tools = []
        for tool in request.tools:
            function: dict[str, Any] = {"name": tool.name}
            if tool.description:
                function["description"] = tool.description
            if tool.parameters:
                function["parameters"] = tool.parameters
            tools.append({"type": "function", "function": function})
        body["tools"] = tools
    fmt = request.response_format
    if fmt is not None:
        if fmt.type == "json_schema" and fmt.schema is not None:
            body["format"] = fmt.schema
        elif fmt.type != "text":
            body["format"] = "json"
    merge_extra(body, request.extra)
    return body


# --------------------------------------------------------------------------- the dialect


class OllamaDialect:
    """The Ollama native codec (see the module docstring)."""

    name: ProviderName = "ollama"
    supports_embeddings: bool = True

    def chat_request(
        self, request: ChatRequest, conn: ConnectionConfig, *, model: str, stream: bool
    ) -> HttpRequest:
        """Raises `ProtocolError` (``unsupported``) for an image given by an http(s) URL."""
        return HttpRequest(
            method="POST",
            url=f"{_base_url(conn)}/api/chat",
            headers=_headers(conn, accept="application/x-ndjson" if stream else "application/json"),
            body=_ENCODE(_chat_body(request, model, stream)),
        )

    def parse_chat(self, body: bytes) -> Completion | Failure:
        try:
            line: _Line = _safe_decode(_LINE, body)
        except ValueError as exc:
            return protocol_failure(f"malformed Ollama response: {exc}; body: {text_of(body, 200)}")
        decoder = OllamaStreamDecoder()
        items: list[DecodedItem] = []
        decoder.add_line(line, body, items)
        acc = StreamAccumulator()
        for item in items:
            if isinstance(item, Failure):
                return item
            acc.add(item)
        if not acc.finished:
            return protocol_failure(f'Ollama response without "done": true: {text_of(body, 200)}')
        return acc.completion()

    def stream_decoder(self) -> OllamaStreamDecoder:
        return OllamaStreamDecoder()

    def embed_request(
        self, request: EmbedRequest, conn: ConnectionConfig, *, model: str
    ) -> HttpRequest:
        body: dict[str, Any] = {"model": model, "input": list(request.inputs)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        merge_extra(body, request.extra)
        return HttpRequest(
            method="POST",
            url=f"{_base_url(conn)}/api/embed",
            headers=_headers(conn, accept="application/json"),
            body=_ENCODE(body),
        )

    def parse_embed(self, body: bytes) -> Embeddings | Failure:
        try:
            response: _EmbedResponse = _safe_decode(_EMBED, body)
        except ValueError as exc:
            return protocol_failure(
                f"malformed Ollama embeddings: {exc}; body: {text_of(body, 200)}"
            )
        if response.embeddings is None:
            return protocol_failure(
                f"Ollama embeddings response without vectors: {text_of(body, 200)}"
            )
        return Embeddings(
            vectors=response.embeddings,
            usage=Usage(input_tokens=response.prompt_eval_count or 0),
            model=response.model or "",
        )

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float = 0.0
    ) -> Failure:
        try:
            error = _safe_decode(_ANY, body)
        except ValueError:
            error = None
        return _error_failure(status, headers, error, text_of(body), now=now)


DIALECT = OllamaDialect()
"""The Ollama native dialect singleton (``dialect_for("ollama")``)."""
