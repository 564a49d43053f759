"""The OpenAI Chat Completions dialect, spoken by OpenAI and by every OpenAI-compatible server.

Problem: one wire format, many servers. api.openai.com, Groq, OpenRouter, DeepSeek, vLLM,
HF TGI and Ollama's ``/v1`` all accept ``POST {base_url}/chat/completions`` and stream
``data: <json>`` Server-Sent Events ended by ``data: [DONE]``, but each bends the format a
little: reasoning text arrives as ``reasoning`` (Ollama) or ``reasoning_content`` (DeepSeek),
tool calls arrive in fragments (OpenAI) or whole (Ollama), a usage chunk with ``choices: []``
may or may not come, chunks may carry ``"usage": null`` and ``obfuscation`` padding, error
objects may use integer codes (OpenRouter) or a plain string (TGI). So the codec is written
once, tolerant of every variation we know, and strict only about what we need.

Choices:

- **Output-length field.** OpenAI deprecated ``max_tokens`` in favour of
  ``max_completion_tokens`` and reasoning models reject the old name with a 400. Most
  compatible servers only know ``max_tokens``. We send ``max_completion_tokens`` when the
  base URL's host is ``api.openai.com`` and ``max_tokens`` everywhere else; a user who needs
  the other one sets it in ``ChatRequest.extra`` (and removes ours with ``{"max_tokens":
  None}``: an ``extra`` key whose value is ``None`` deletes that field from the body).
- **Typed decoding on the hot path.** Every stream chunk is decoded by one module-level
  ``msgspec.json.Decoder`` into private Structs that name only the fields we read. msgspec
  skips the rest (``logprobs``, ``obfuscation``, ``system_fingerprint``...) without building
  Python objects for them, which is what makes a chunk cheaper than ``json.loads`` of it. The
  Structs default every field and accept ``null`` wherever a server might send it.
- **Never raise on peer input.** A chunk that is not the JSON we expect, or that breaks the SSE
  framing, ends the stream with a ``protocol`` `Failure`; a body cut before choice 0's
  ``finish_reason`` ends it with ``stream_interrupted``; an ``{"error": ...}`` payload (HTTP
  200) is classified like an error response. Every stream `Failure` carries the usage seen so
  far, when any was seen.
- **A finish reason and a clean end of body are a complete answer**, ``[DONE]`` or not. Some
  servers and proxies drop the terminator, and nothing that follows choice 0's finish reason
  carries any of its content (only the ``include_usage`` chunk and ``[DONE]`` can), so calling
  such a stream failed would throw a whole answer away and make the router pay for it again.
  Its usage is whatever arrived (zero when the usage chunk was lost, as for a server that sends
  none). The stream is complete only if the body ended cleanly: the caller calls ``close()``
  for a clean end and never for a broken connection, which is a transport error.
- **Choice 0 only.** With ``n > 1`` the chunks of several choices interleave; a `Completion`
  has one answer, so only index 0 is surfaced.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from ._classify import error_failure, loads, merge_extra, protocol_failure, str_or_none, text_of
from ._config import ConnectionConfig, ProviderName
from ._dialect import HttpRequest
from ._errors import ErrorKind
from ._framing import FramingError, SSEParser
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
    ToolCall,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
    UsageUpdate,
)

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

_FINISH: Final[dict[str, FinishReason]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}

_ZERO_USAGE: Final = Usage()

# --------------------------------------------------------------------------- wire structs
# Private, decode-only views of the wire format. ``gc=False``: decoded trees have no cycles,
# so the garbage collector need not track them (cheaper to allocate and free).


class _W(msgspec.Struct, gc=False):
    """Base of the decode-only wire structs (unknown fields are ignored)."""


class _PromptDetails(_W):
    cached_tokens: int | None = None


class _CompletionDetails(_W):
    reasoning_tokens: int | None = None


class _Usage(_W):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _Function(_W):
    name: str | None = None
    # A JSON string per the spec; a few servers send an object, which we re-encode.
    arguments: str | dict[str, Any] | None = None


class _ToolCallFragment(_W):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(_W):
    content: str | list[Any] | None = None
    refusal: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCallFragment] | None = None


class _StreamChoice(_W):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(_W):
    id: str | None = None
    model: str | None = None
    choices: list[_StreamChoice] | None = None
    usage: _Usage | None = None
    error: Any = None


class _ResponseMessage(_W):
    content: str | list[Any] | None = None
    refusal: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCallFragment] | None = None


class _Choice(_W):
    index: int = 0
    message: _ResponseMessage | None = None
    finish_reason: str | None = None


class _Response(_W):
    id: str | None = None
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None


class _EmbeddingItem(_W):
    index: int = 0
    embedding: list[float] | str = []


class _EmbedResponse(_W):
    data: list[_EmbeddingItem] | None = None
    model: str | None = None
    usage: _Usage | None = None
    error: Any = None


_CHUNK_DECODER: Final = msgspec.json.Decoder(_Chunk)
_RESPONSE_DECODER: Final = msgspec.json.Decoder(_Response)
_EMBED_DECODER: Final = msgspec.json.Decoder(_EmbedResponse)
_ENCODER: Final = msgspec.json.Encoder()

# What msgspec may raise on hostile input: bad JSON / wrong types (DecodeError, which
# ValidationError subclasses), absurd nesting (RecursionError) and, on some paths, invalid
# UTF-8 (UnicodeDecodeError).
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)


# --------------------------------------------------------------------------- helpers


def _usage(wire: _Usage) -> Usage:
    cached = wire.prompt_tokens_details
    details = wire.completion_tokens_details
    return Usage(
        input_tokens=wire.prompt_tokens or 0,
        output_tokens=wire.completion_tokens or 0,
        cache_read_tokens=(cached.cached_tokens or 0) if cached is not None else 0,
        reasoning_tokens=(details.reasoning_tokens or 0) if details is not None else 0,
    )


def _finish(reason: str | None) -> FinishReason:
    if reason is None:
        return "stop"
    return _FINISH.get(reason, "other")


def _parts_text(parts: list[Any]) -> str:
    """Text of a content given as a list of parts (Mistral and a few others do this)."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            text = part.get("text")
            if isinstance(text, str):
                out.append(text)
    return "".join(out)


def _arguments(value: str | dict[str, Any] | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _ENCODER.encode(value).decode()


def _error_fields(obj: Any) -> tuple[str | None, str | None, str] | None:
    """``(type, code, message)`` of an error payload in any shape we know, else ``None``.

    Shapes: ``{"error": {"message", "type", "code", ...}}`` (OpenAI, Groq, Ollama-compat,
    OpenRouter with integer codes), ``{"error": "text", "error_type": ...}`` (HF TGI) and a
    top-level ``{"object": "error", "message", "type", "code"}`` (vLLM).
    """
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if isinstance(err, dict):
        message = str_or_none(err.get("message")) or ""
        return str_or_none(err.get("type")), str_or_none(err.get("code")), message
    if isinstance(err, str):
        type_ = str_or_none(obj.get("error_type")) or str_or_none(obj.get("type"))
        return type_, str_or_none(obj.get("code")), err
    if err is not None:
        return None, None, text_of(_ENCODER.encode(err))
    if "message" in obj and (obj.get("object") == "error" or "type" in obj or "code" in obj):
        message = str_or_none(obj.get("message")) or ""
        return str_or_none(obj.get("type")), str_or_none(obj.get("code")), message
    return None


def _error_event_failure(data: bytes, usage: Usage | None) -> Failure:
    """The classified `Failure` for an error payload that came with HTTP 200 (a stream event or
    a whole body), carrying *usage* when known."""
    fields = _error_fields(loads(data))
    type_, code, message = fields if fields is not None else (None, None, text_of(data))
    failure = error_failure(200, {}, type_=type_, code=code, message=message)
    return msgspec.structs.replace(failure, usage=usage) if usage is not None else failure


# --------------------------------------------------------------------------- stream decoder


class OpenAIStreamDecoder:
    """Decodes one streamed ``/chat/completions`` body into `DecodedItem`s.

    Theory of operation: bytes go through an `SSEParser`, which yields whole events however the
    body was split. Each event's data is either the terminator (anything starting with
    ``[DONE]``) or one JSON chunk, decoded into ``_Chunk`` in one msgspec call. The decoder has
    two states, *streaming* and *done*:

    - streaming, text/reasoning/tool-call fragments of choice 0 → `TextDelta`,
      `ReasoningDelta`, `ToolCallDelta` (in that order within a chunk); a ``finish_reason``
      is remembered (not emitted); a non-null ``usage`` → `UsageUpdate` and remembered;
    - streaming, ``[DONE]`` → `Finished` with the remembered finish reason (``refusal`` if any
      refusal text came), usage (zero if none came), model and response id → done;
    - streaming, an ``error`` payload → the classified `Failure` (status 200) → done;
    - streaming, undecodable chunk or framing error → ``protocol`` `Failure` → done;
    - streaming, ``close()`` after choice 0's finish reason → `Finished`, as for ``[DONE]``
      (a last, unterminated event cut inside its JSON is then the lost usage chunk: dropped);
    - streaming, ``close()`` before a finish reason → ``stream_interrupted`` `Failure` → done
      (also when the last, unterminated event is cut inside its JSON: the body ended, the
      chunk is not malformed);
    - done: ``feed`` and ``close`` return ``[]``.

    Every `Failure` carries the last usage seen, or ``None`` when none was seen.
    """

    __slots__ = (
        "_done",
        "_finish",
        "_model",
        "_refused",
        "_response_id",
        "_sse",
        "_usage",
    )

    def __init__(self, *, max_buffer: int | None = None) -> None:
        self._sse = SSEParser() if max_buffer is None else SSEParser(max_buffer=max_buffer)
        self._done = False
        self._finish: str | None = None
        self._refused = False
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
        except FramingError as exc:
            return self._framing_failure(exc)
        out = self._events(events, final=True)
        if self.done:  # the final event was [DONE] or an error (the property defeats narrowing)
            return out
        out.append(
            self._interrupted("the body ended") if self._finish is None else self._finished()
        )
        self._done = True
        return out

    def _finished(self) -> Finished:
        return Finished(
            finish_reason="refusal" if self._refused else _finish(self._finish),
            usage=self._usage or _ZERO_USAGE,
            model=self._model,
            response_id=self._response_id,
        )

    def _interrupted(self, what: str) -> Failure:
        return Failure.of(
            ErrorKind.STREAM_INTERRUPTED,
            f"stream ended with no finish reason and no [DONE]: {what}",
            usage=self._usage,
        )

    def _framing_failure(self, exc: FramingError) -> list[DecodedItem]:
        # Deliver what was complete before the bad line: the items then do not depend on how
        # the body was split.
        out = self._events(exc.events)
        if not self.done:
            out.append(protocol_failure(f"malformed chunk: {exc}", self._usage))
            self._done = True
        return out

    def _events(self, events: list[tuple[str, bytes]], *, final: bool = False) -> list[DecodedItem]:
        """Items for whole SSE *events*. ``final``: these were flushed by ``close()``, so an
        undecodable one is a chunk cut by the end of the body, not a malformed one."""
        out: list[DecodedItem] = []
        append = out.append
        for name, data in events:
            if data[:6] == b"[DONE]":
                append(self._finished())
                self._done = True
                return out
            if name == "error":  # not OpenAI's way, but some compatible servers do this
                append(_error_event_failure(data, self._usage))
                self._done = True
                return out
            try:
                chunk = _CHUNK_DECODER.decode(data)
            except _DECODE_ERRORS as exc:
                if not data.strip():
                    continue  # an empty keep-alive event
                if final:
                    if self._finish is not None:
                        return out  # the usage chunk, cut: close() finishes the answer
                    append(self._interrupted("the body ended inside a chunk"))
                else:
                    append(protocol_failure(f"malformed chunk: {exc}", self._usage))
                self._done = True
                return out
            if chunk.error is not None:
                append(_error_event_failure(data, self._usage))
                self._done = True
                return out
            if not self._response_id:
                self._response_id = chunk.id or ""
                self._model = chunk.model or ""
            choices = chunk.choices
            if choices:
                for choice in choices:
                    if choice.index != 0:
                        continue
                    delta = choice.delta
                    if delta is not None:
                        content = delta.content
                        if content:
                            if isinstance(content, list):
                                content = _parts_text(content)
                                if content:
                                    append(TextDelta(text=content))
                            else:
                                append(TextDelta(text=content))
                        if delta.refusal:
                            self._refused = True
                            append(TextDelta(text=delta.refusal))
                        reasoning = delta.reasoning or delta.reasoning_content
                        if reasoning:
                            append(ReasoningDelta(text=reasoning))
                        if delta.tool_calls:
                            for frag in delta.tool_calls:
                                fn = frag.function
                                append(
                                    ToolCallDelta(
                                        index=frag.index,
                                        id=frag.id or None,
                                        name=(fn.name or None) if fn is not None else None,
                                        arguments=_arguments(fn.arguments)
                                        if fn is not None
                                        else "",
                                    )
                                )
                    if choice.finish_reason is not None:
                        self._finish = choice.finish_reason
            if chunk.usage is not None:
                usage = _usage(chunk.usage)
                self._usage = usage
                append(UsageUpdate(usage=usage))
        return out


# --------------------------------------------------------------------------- request building


def _base_url(conn: ConnectionConfig) -> str:
    return conn.base_url.rstrip("/") if conn.base_url else DEFAULT_BASE_URL


def _headers(conn: ConnectionConfig, *, accept: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if conn.api_key:
        headers["Authorization"] = f"Bearer {conn.api_key.reveal()}"
    if conn.organization:
        headers["OpenAI-Organization"] = conn.organization
    if conn.project:
        headers["OpenAI-Project"] = conn.project
    headers["content-type"] = "application/json"
    headers["accept"] = accept
    headers.update(conn.headers)
    return headers


def _image_url(part: ImagePart) -> str:
    if part.url:
        return part.url
    return f"data:{part.media_type};base64,{part.data or ''}"


def _user_content(parts: list[Any]) -> str | list[dict[str, Any]]:
    """All-text content becomes one string (which every compatible server accepts); content
    with images becomes the ``text`` / ``image_url`` parts array."""
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts)
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            out.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
    return out


def _wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in messages:
        content = msg.content
        if isinstance(content, str):
            out.append({"role": msg.role, "content": content})
            continue
        # Tool results become one ``tool`` message each, whatever role carried them.
        results = [p for p in content if isinstance(p, ToolResultPart)]
        for result in results:
            out.append(
                {"role": "tool", "tool_call_id": result.tool_use_id, "content": result.content}
            )
        rest = [p for p in content if not isinstance(p, ToolResultPart)]
        if results and not rest:
            continue
        if msg.role == "assistant":
            wire: dict[str, Any] = {"role": "assistant"}
            text = "".join(p.text for p in rest if isinstance(p, TextPart))
            calls = [
                {
                    "id": p.id,
                    "type": "function",
                    "function": {
                        "name": p.name,
                        "arguments": _ENCODER.encode(p.arguments).decode(),
                    },
                }
                for p in rest
                if isinstance(p, ToolUsePart)
            ]
            if text or not calls:
                wire["content"] = text
            if calls:
                wire["tool_calls"] = calls
            out.append(wire)
        elif msg.role in ("system", "tool"):
            out.append(
                {
                    "role": msg.role,
                    "content": "".join(p.text for p in rest if isinstance(p, TextPart)),
                }
            )
        else:
            out.append({"role": msg.role, "content": _user_content(rest)})
    return out


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


class OpenAIDialect:
    """The ``openai`` dialect (see the module docstring). Stateless; use `DIALECT`."""

    name: ProviderName = "openai"
    supports_embeddings: bool = True

    def chat_request(
        self, request: ChatRequest, conn: ConnectionConfig, *, model: str, stream: bool
    ) -> HttpRequest:
        """``POST {base_url}/chat/completions``.

        Unset fields (``None`` or empty) are omitted. ``max_tokens`` goes out as
        ``max_completion_tokens`` to api.openai.com and as ``max_tokens`` elsewhere (see the
        module docstring). ``request.extra`` is merged last, at the top level; an ``extra``
        value of ``None`` removes that field.
        """
        base = _base_url(conn)
        body: dict[str, Any] = {"model": model, "messages": _wire_messages(request.messages)}
        if request.max_tokens is not None:
            field = (
                "max_completion_tokens"
                if urlsplit(base).hostname == "api.openai.com"
                else "max_tokens"
            )
            body[field] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            tools = []
            for tool in request.tools:
                fn: dict[str, Any] = {"name": tool.name}
                if tool.description:
                    fn["description"] = tool.description
                if tool.parameters:
                    fn["parameters"] = tool.parameters
                tools.append({"type": "function", "function": fn})
            body["tools"] = tools
        if request.tool_choice:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        fmt = request.response_format
        if fmt is not None:
            if fmt.type == "json_schema":
                schema: dict[str, Any] = {"name": fmt.name, "strict": fmt.strict}
                if fmt.schema is not None:
                    schema["schema"] = fmt.schema
                body["response_format"] = {"type": "json_schema", "json_schema": schema}
            else:
                body["response_format"] = {"type": fmt.type}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        merge_extra(body, request.extra)
        return HttpRequest(
            method="POST",
            url=f"{base}/chat/completions",
            headers=_headers(conn, accept="text/event-stream" if stream else "application/json"),
            body=_ENCODER.encode(body),
        )

    def parse_chat(self, body: bytes) -> Completion | Failure:
        """Choice 0 of a non-streamed response. Refusal text is returned as ``text`` with
        finish reason ``refusal``; ``reasoning`` / ``reasoning_content`` fill ``reasoning``."""
        try:
            resp = _RESPONSE_DECODER.decode(body)
        except _DECODE_ERRORS:
            return protocol_failure(f"malformed response body: {text_of(body)}")
        if resp.error is not None:
            return _error_event_failure(body, None)
        choice = next((c for c in resp.choices or () if c.index == 0), None)
        if choice is None:
            return protocol_failure(f"response has no choice 0: {text_of(body)}")
        msg = choice.message or _ResponseMessage()
        content = msg.content
        text = _parts_text(content) if isinstance(content, list) else (content or "")
        finish = _finish(choice.finish_reason)
        if msg.refusal:
            text += msg.refusal
            finish = "refusal"
        calls = [
            ToolCall(
                id=frag.id or "",
                name=(frag.function.name or "") if frag.function is not None else "",
                arguments=(_arguments(frag.function.arguments) if frag.function else "") or "{}",
            )
            for frag in msg.tool_calls or ()
        ]
        return Completion(
            text=text,
            tool_calls=calls,
            finish_reason=finish,
            usage=_usage(resp.usage) if resp.usage is not None else _ZERO_USAGE,
            model=resp.model or "",
            response_id=resp.id or "",
            reasoning=msg.reasoning or msg.reasoning_content or "",
        )

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()

    def embed_request(
        self, request: EmbedRequest, conn: ConnectionConfig, *, model: str
    ) -> HttpRequest:
        """``POST {base_url}/embeddings`` with ``{model, input: [...], dimensions?}``."""
        body: dict[str, Any] = {"model": model, "input": list(request.inputs)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        merge_extra(body, request.extra)
        return HttpRequest(
            method="POST",
            url=f"{_base_url(conn)}/embeddings",
            headers=_headers(conn, accept="application/json"),
            body=_ENCODER.encode(body),
        )

    def parse_embed(self, body: bytes) -> Embeddings | Failure:
        """Vectors ordered by ``index``. Base64 vectors (``encoding_format: "base64"`` in
        ``extra``) are decoded as little-endian float32."""
        try:
            resp = _EMBED_DECODER.decode(body)
        except _DECODE_ERRORS:
            return protocol_failure(f"malformed embeddings body: {text_of(body)}")
        if resp.error is not None:
            return _error_event_failure(body, None)
        if resp.data is None:
            return protocol_failure(f"embeddings body has no data: {text_of(body)}")
        vectors: list[list[float]] = []
        for item in sorted(resp.data, key=lambda item: item.index):
            vector = _vector(item.embedding)
            if vector is None:
                return protocol_failure("an embedding is not valid base64 float32")
            vectors.append(vector)
        usage = resp.usage
        return Embeddings(
            vectors=vectors,
            usage=Usage(input_tokens=(usage.prompt_tokens or 0) if usage is not None else 0),
            model=resp.model or "",
        )

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float = 0.0
    ) -> Failure:
        """An error response as a `Failure`: the error object's ``type``/``code``/``message``
        when the body has one (any shape `_error_fields` knows), else an excerpt of the body
        (an HTML page from a proxy, an empty body) classified by status alone."""
        fields = _error_fields(loads(body))
        if fields is None:
            type_, code, message = None, None, text_of(body)
        else:
            type_, code, message = fields
        return error_failure(status, headers, type_=type_, code=code, message=message, now=now)


def _vector(value: list[float] | str) -> list[float] | None:
    if isinstance(value, list):
        return value
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) % 4:
        return None
    floats = array("f")
    floats.frombytes(raw)
    if sys.byteorder != "little":
        floats.byteswap()
    return floats.tolist()


DIALECT: Final = OpenAIDialect()
"""The ``openai`` dialect singleton (also used for every OpenAI-compatible server)."""
