"""The Google Gemini dialect (``generativelanguage.googleapis.com``, API version v1beta).

Problem: Gemini's REST API shares little with the OpenAI shape. Roles are ``user``/``model``;
the system prompt is a separate ``systemInstruction``; tool results are ``functionResponse``
parts that must name the function (not an id); sampling settings sit in ``generationConfig``;
errors are Google RPC statuses. Its stream (``streamGenerateContent?alt=sse``) has no
terminator: every SSE event is a whole ``GenerateContentResponse`` carrying that chunk's new
parts and a repeated ``usageMetadata``, the last one carries ``finishReason``, and then the
body simply ends.

Options: decode each chunk into a dict and walk it, or declare the few fields we read as
msgspec Structs. We take Structs (module-level decoders, unknown fields ignored): they skip the
bulky parts we never read (safety ratings, token details, thought signatures) without building
Python objects for them, and a wrong type anywhere becomes one ``ValidationError`` that we
report as a protocol failure.

Choices worth knowing:

- ``usageMetadata`` is taken from the *last* chunk that has one, never summed: Gemini repeats
  the running totals and ``promptTokenCount`` can even shrink (15 -> 13) in the final chunk.
  Thinking tokens are output tokens (they are billed as such and ``totalTokenCount`` includes
  them), and are also reported as ``reasoning_tokens``.
- Gemini ends a function call with ``STOP``; we report ``tool_calls`` when a call was seen, as
  the other dialects do.
- A ``functionCall`` arrives whole. Gemini gives it an ``id`` only on some surfaces; otherwise
  we name it ``call_<n>`` (its ordinal in the response) so that retries and replays see the
  same ids for the same bytes.
- Tool results need the function's name: taken from the `ToolResultPart`, else looked up by
  ``tool_use_id`` among the assistant's earlier `ToolUsePart`s.
- Non-streamed responses go through the same chunk logic and are folded with
  `StreamAccumulator`, so both paths agree by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ._accumulate import StreamAccumulator
from ._classify import error_failure, merge_extra, protocol_failure, str_or_none, text_of
from ._config import ConnectionConfig, ProviderName
from ._dialect import HttpRequest
from ._errors import ErrorKind
from ._framing import FramingError, SSEParser
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
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
    UsageUpdate,
)
from ._ratelimit import parse_duration

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"

# --------------------------------------------------------------------------- wire structs


class _Wire(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of the response shapes we read: camelCase on the wire, unknown fields ignored."""


class _FunctionCall(_Wire, frozen=True):
    name: str = ""
    args: Any = None
    id: str | None = None


class _Part(_Wire, frozen=True):
    text: str | None = None
    thought: bool | None = None
    function_call: _FunctionCall | None = None


class _Content(_Wire, frozen=True):
    parts: list[_Part] | None = None


class _Candidate(_Wire, frozen=True):
    content: _Content | None = None
    finish_reason: str | None = None


class _UsageMetadata(_Wire, frozen=True):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    cached_content_token_count: int = 0


class _PromptFeedback(_Wire, frozen=True):
    block_reason: str | None = None


class _Response(_Wire, frozen=True):
    candidates: list[_Candidate] | None = None
    usage_metadata: _UsageMetadata | None = None
    prompt_feedback: _PromptFeedback | None = None
    model_version: str | None = None
    response_id: str | None = None
    error: Any = None


class _Values(_Wire, frozen=True):
    values: list[float]


class _EmbedResponse(_Wire, frozen=True):
    embedding: _Values | None = None
    embeddings: list[_Values] | None = None


_RESPONSE = msgspec.json.Decoder(_Response)
_EMBED = msgspec.json.Decoder(_EmbedResponse)
_ANY = msgspec.json.Decoder()
_ENCODE = msgspec.json.Encoder().encode

_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

# ErrorInfo reasons that mean "the key is wrong" although Google sends them as a 400
# INVALID_ARGUMENT.
_AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})


def _finish_reason(raw: str, saw_tool_call: bool) -> FinishReason:
    reason = _FINISH.get(raw, "other")
    if reason == "stop" and saw_tool_call:
        return "tool_calls"
    return reason


def _usage(meta: _UsageMetadata) -> Usage:
    return Usage(
        input_tokens=meta.prompt_token_count,
        output_tokens=meta.candidates_token_count + meta.thoughts_token_count,
        reasoning_tokens=meta.thoughts_token_count,
        cache_read_tokens=meta.cached_content_token_count,
    )


# --------------------------------------------------------------------------- errors


def _error_failure(
    status: int,
    headers: Mapping[str, str],
    error: Any,
    fallback: str,
    *,
    now: float = 0.0,
) -> Failure:
    """A Failure from a Google error object ``{code, message, status, details}`` (or anything
    else, classified by *status* with *fallback* as the message)."""
    if isinstance(error, list) and len(error) == 1:  # some endpoints wrap the body in a list
        error = error[0]
    if isinstance(error, dict) and "error" in error:
        error = error["error"]
    if not isinstance(error, dict):
        message = str_or_none(error) or fallback
        return error_failure(status, headers, type_=None, code=None, message=message, now=now)
    rpc_status = str_or_none(error.get("status"))
    message = str_or_none(error.get("message")) or fallback
    reason: str | None = None
    retry_after: float | None = None
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind = str_or_none(detail.get("@type")) or ""
        if kind.endswith("google.rpc.RetryInfo"):
            delay = str_or_none(detail.get("retryDelay"))
            if delay is not None:
                retry_after = parse_duration(delay)
        elif kind.endswith("google.rpc.ErrorInfo") and reason is None:
            reason = str_or_none(detail.get("reason"))
    type_ = "UNAUTHENTICATED" if reason in _AUTH_REASONS else rpc_status
    # ``code`` (the ErrorInfo reason, e.g. API_KEY_INVALID) is reported when present, else
    # the RPC status; classification tries the reason first, then the status.
    return error_failure(
        status,
        headers,
        type_=type_,
        code=reason,
        message=message,
        retry_after=retry_after,
        now=now,
    )


# --------------------------------------------------------------------------- decoding


def _safe_decode(decoder: msgspec.json.Decoder[Any], data: bytes) -> Any:
    """Decode or raise `ValueError` with a short reason; never anything else."""
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None


class GeminiStreamDecoder:
    """Decoder of a ``streamGenerateContent?alt=sse`` body.

    Theory of operation: an `SSEParser` cuts the body into events; each event's data is one
    ``GenerateContentResponse``. The state is small: how many function calls were emitted
    (their ordinals are the `ToolCallDelta` indexes), the last usage seen, the finish reason
    once a chunk carried one, and the model and response id. States:

    - *streaming*: chunks turn into text / reasoning / tool call deltas and usage updates; a
      ``finishReason`` is remembered (Gemini may still send chunks after it).
    - *done*: reached by an ``error`` segment or undecodable bytes (a `Failure`), or by
      ``close()`` - which emits `Finished` if a finish reason arrived and a
      ``stream_interrupted`` `Failure` otherwise, because the body has no terminator of its
      own. A last, unterminated event that does not decode was cut by the end of the body,
      not malformed: it is dropped, and the same rule decides. Input after that is ignored.
    """

    __slots__ = ("_calls", "_done", "_finish", "_model", "_response_id", "_sse", "_usage")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._done = False
        self._calls = 0
        self._usage: Usage | None = None
        self._finish: FinishReason | None = None
        self._model = ""
        self._response_id = ""

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, chunk: bytes) -> list[DecodedItem]:
        if self._done:
            return []
        try:
            events = self._sse.feed(chunk)
        except FramingError as exc:
            return self._framing_failure(exc)
        out: list[DecodedItem] = []
        for _, data in events:
            if self._chunk(data, out):
                break
        return out

    def close(self) -> list[DecodedItem]:
        if self._done:
            return []
        try:
            events = self._sse.close()
        except FramingError as exc:  # the unterminated last line made an event too long
            return self._framing_failure(exc)
        out: list[DecodedItem] = []
        for _, data in events:
            if self._chunk(data, out, final=True):
                return out
        self._done = True
        if self._finish is None:
            out.append(
                Failure.of(
                    ErrorKind.STREAM_INTERRUPTED,
                    "the Gemini stream ended before a finishReason",
                    usage=self._usage,
                )
            )
        else:
            out.append(
                Finished(
                    finish_reason=self._finish,
                    usage=self._usage or Usage(),
                    model=self._model,
                    response_id=self._response_id,
                )
            )
        return out

    def _fail(self, failure: Failure) -> list[DecodedItem]:
        self._done = True
        return [failure]

    def _framing_failure(self, exc: FramingError) -> list[DecodedItem]:
        """What was complete before the bad line (so the items do not depend on how the
        body was split), then a ``protocol`` `Failure`."""
        out: list[DecodedItem] = []
        for _, data in exc.events:
            if self._chunk(data, out):
                return out
        out.extend(self._fail(protocol_failure(f"malformed stream: {exc}", self._usage)))
        return out

    def _chunk(self, data: bytes, out: list[DecodedItem], *, final: bool = False) -> bool:
        """Append the items of one SSE event's data; True when it ended the stream.
        ``final``: the event was flushed by ``close()``, so data that does not decode is a
        chunk cut by the end of the body: dropped (``close()`` then decides by the finish
        reason, as the other dialects do for a missing terminator), not a protocol error."""
        try:
            response: _Response = _safe_decode(_RESPONSE, data)
        except ValueError as exc:
            if final:
                return False
            out.extend(self._fail(protocol_failure(f"malformed stream chunk: {exc}", self._usage)))
            return True
        if response.error is not None:
            failure = _error_failure(200, {}, response.error, text_of(data))
            if self._usage is not None:
                failure = msgspec.structs.replace(failure, usage=self._usage)
            out.extend(self._fail(failure))
            return True
        self.add_response(response, out)
        return False

    def add_response(self, response: _Response, out: list[DecodedItem]) -> None:
        """Append the items of one decoded response (a stream chunk or a whole body)."""
        if response.model_version:
            self._model = response.model_version
        if response.response_id:
            self._response_id = response.response_id
        candidates = response.candidates
        if candidates:
            candidate = candidates[0]
            parts = candidate.content.parts if candidate.content is not None else None
            for part in parts or ():
                call = part.function_call
                if call is not None:
                    index = self._calls
                    self._calls += 1
                    out.append(
                        ToolCallDelta(
                            index=index,
                            id=call.id or f"call_{index}",
                            name=call.name,
                            arguments=_ENCODE(call.args if call.args is not None else {}).decode(),
                        )
                    )
                elif part.text:
                    if part.thought:
                        out.append(ReasoningDelta(text=part.text))
                    else:
                        out.append(TextDelta(text=part.text))
        if response.usage_metadata is not None:
            usage = _usage(response.usage_metadata)
            if usage != self._usage:
                self._usage = usage
                out.append(UsageUpdate(usage=usage))
        if candidates:
            raw = candidates[0].finish_reason
            if raw:
                self._finish = _finish_reason(raw, self._calls > 0)
        elif response.prompt_feedback is not None and response.prompt_feedback.block_reason:
            self._finish = "content_filter"

    def finish_reason(self) -> FinishReason | None:
        return self._finish


# --------------------------------------------------------------------------- requests


def _base_url(conn: ConnectionConfig) -> str:
    return (conn.base_url or DEFAULT_BASE_URL).rstrip("/")


def _model_path(model: str) -> str:
    """``models/<name>`` for a bare name; a full resource name (``tunedModels/x``) as is."""
    return model if "/" in model else f"models/{model}"


def _headers(conn: ConnectionConfig, *, accept: str = "application/json") -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": accept}
    if conn.api_key:
        headers["x-goog-api-key"] = conn.api_key.reveal()
    headers.update(conn.headers)
    return headers


def _image(part: ImagePart) -> dict[str, Any]:
    url = part.url
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    if url and url.startswith("data:") and "," in url:
        meta, _, data = url[5:].partition(",")
        mime = meta.split(";", 1)[0] or part.media_type
        return {"inlineData": {"mimeType": mime, "data": data}}
    return {"fileData": {"fileUri": url or ""}}


def _function_response(part: ToolResultPart, names: Mapping[str, str]) -> dict[str, Any]:
    name = part.name or names.get(part.tool_use_id) or part.tool_use_id
    try:
        parsed = msgspec.json.decode(part.content)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict):
        response: dict[str, Any] = parsed
    else:
        response = {"error" if part.is_error else "result": part.content}
    return {"functionResponse": {"name": name, "response": response}}


def _parts(content: str | list[ContentPart], names: dict[str, str]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_image(part))
        elif isinstance(part, ToolUsePart):
            names[part.id] = part.name
            parts.append({"functionCall": {"name": part.name, "args": part.arguments}})
        else:
            parts.append(_function_response(part, names))
    return parts


def _contents(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(contents, system_parts)``. Adjacent turns of the same role are merged, so parallel
    tool results form one ``user`` turn as Gemini expects."""
    names: dict[str, str] = {}
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            text = message.text()
            if text:
                system.append({"text": text})
            continue
        parts = _parts(message.content, names)
        if not parts:
            continue
        role = "model" if message.role == "assistant" else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents, system


_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def _chat_body(request: ChatRequest) -> dict[str, Any]:
    contents, system = _contents(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.stop:
        config["stopSequences"] = list(request.stop)
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema is not None:
            config["responseJsonSchema"] = fmt.schema
    if config:
        body["generationConfig"] = config
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description:
                declaration["description"] = tool.description
            if tool.parameters:
                declaration["parameters"] = tool.parameters
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
    if request.tool_choice is not None:
        mode = _MODES.get(request.tool_choice)
        calling: dict[str, Any] = {"mode": mode or "ANY"}
        if mode is None:
            calling["allowedFunctionNames"] = [request.tool_choice]
        body["toolConfig"] = {"functionCallingConfig": calling}
    merge_extra(body, request.extra)
    return body


# --------------------------------------------------------------------------- the dialect


class GeminiDialect:
    """The Gemini codec (see the module docstring)."""

    name: ProviderName = "gemini"
    supports_embeddings: bool = True

    def chat_request(
        self, request: ChatRequest, conn: ConnectionConfig, *, model: str, stream: bool
    ) -> HttpRequest:
        base = f"{_base_url(conn)}/{_model_path(model)}"
        url = f"{base}:streamGenerateContent?alt=sse" if stream else f"{base}:generateContent"
        headers = _headers(conn, accept="text/event-stream" if stream else "application/json")
        return HttpRequest(
            method="POST", url=url, headers=headers, body=_ENCODE(_chat_body(request))
        )

    def parse_chat(self, body: bytes) -> Completion | Failure:
        try:
            response: _Response = _safe_decode(_RESPONSE, body)
        except ValueError as exc:
            return protocol_failure(f"malformed Gemini response: {exc}; body: {text_of(body, 200)}")
        if response.error is not None:
            return _error_failure(200, {}, response.error, text_of(body))
        blocked = response.prompt_feedback is not None and response.prompt_feedback.block_reason
        if not response.candidates and not blocked:
            return protocol_failure(f"Gemini response without candidates: {text_of(body, 200)}")
        decoder = GeminiStreamDecoder()
        items: list[DecodedItem] = []
        decoder.add_response(response, items)
        acc = StreamAccumulator()
        for item in items:
            acc.add(item)
        # A whole body is complete by definition: a missing finishReason counts as STOP.
        finish = decoder.finish_reason() or _finish_reason("STOP", bool(acc.tool_calls()))
        acc.add(
            Finished(
                finish_reason=finish,
                usage=acc.usage,
                model=response.model_version or "",
                response_id=response.response_id or "",
            )
        )
        return acc.completion()

    def stream_decoder(self) -> GeminiStreamDecoder:
        return GeminiStreamDecoder()

    def embed_request(
        self, request: EmbedRequest, conn: ConnectionConfig, *, model: str
    ) -> HttpRequest:
        path = _model_path(model)
        body: dict[str, Any]
        if len(request.inputs) == 1:
            url = f"{_base_url(conn)}/{path}:embedContent"
            body = {"content": {"parts": [{"text": request.inputs[0]}]}}
            if request.dimensions is not None:
                body["outputDimensionality"] = request.dimensions
        else:
            url = f"{_base_url(conn)}/{path}:batchEmbedContents"
            requests = []
            for text in request.inputs:
                one: dict[str, Any] = {"model": path, "content": {"parts": [{"text": text}]}}
                if request.dimensions is not None:
                    one["outputDimensionality"] = request.dimensions
                requests.append(one)
            body = {"requests": requests}
        merge_extra(body, request.extra)
        return HttpRequest(method="POST", url=url, headers=_headers(conn), body=_ENCODE(body))

    def parse_embed(self, body: bytes) -> Embeddings | Failure:
        try:
            response: _EmbedResponse = _safe_decode(_EMBED, body)
        except ValueError as exc:
            return protocol_failure(
                f"malformed Gemini embeddings: {exc}; body: {text_of(body, 200)}"
            )
        if response.embeddings is not None:
            return Embeddings(vectors=[e.values for e in response.embeddings])
        if response.embedding is not None:
            return Embeddings(vectors=[response.embedding.values])
        return protocol_failure(f"Gemini embeddings response without vectors: {text_of(body, 200)}")

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float = 0.0
    ) -> Failure:
        try:
            error = _safe_decode(_ANY, body)
        except ValueError:
            error = None
        return _error_failure(status, headers, error, text_of(body), now=now)


DIALECT = GeminiDialect()
"""The Gemini dialect singleton (``dialect_for("gemini")``)."""
