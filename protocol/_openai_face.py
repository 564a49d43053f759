"""The OpenAI-compatible face, server side: OpenAI's request JSON in, our messages out, and back.

Problem: users coming from LiteLLM proxy or Portkey point the official SDKs at a base URL and
expect the whole OpenAI surface they use - chat completions (streamed or not), embeddings, the
model list and OpenAI's error shape with the right status codes - to behave as api.openai.com
does. ``protocol._openai`` is the *client* side of that wire format (our requests out, the
provider's answers in); this module is the mirror image, for the HTTP face the gateway serves
(``actors._http_face``). It is pure (msgspec + stdlib) like the rest of ``protocol``: the face
does the I/O and calls these functions.

Choices:

- **Typed decoding with the field in every error.** A body is decoded once as JSON, then
  converted into private Structs that name the fields we map. msgspec's validation message
  carries the JSON path (``Expected `int`, got `str` - at `$.max_tokens```), which becomes the
  error's ``param`` and the first words of its message (`decode_problem`). Checks of values
  (ranges, empty lists, a ``tool_choice`` naming no tool...) are not repeated here: the
  runtime refuses an unsound request with ``bad_request`` naming the field
  (``protocol._validate``), and `failure_error` turns that into the same 400 with ``param``
  in OpenAI's names (`_PARAM_NAMES`).
- **Unknown fields pass through.** A top-level field we do not map (``seed``, ``logprobs``,
  ``parallel_tool_calls``, ``reasoning_effort``...) goes into ``ChatRequest.extra``, which
  the provider dialect merges into its body as is: an OpenAI target gets exactly what the
  client sent, and a target that does not know the field says so with its own 400. ``user``
  and ``metadata`` go to ``ChatRequest.metadata`` (never sent upstream); ``n`` must be 1.
  Switchboard's own options (``timeout``, ``fallbacks``, ``strategy``) ride in an optional
  ``switchboard`` object (``extra_body={"switchboard": {...}}`` in the SDK).
- **One error table** (`HTTP_ERRORS`): every `ErrorKind` has one row - HTTP status, OpenAI
  error type, Anthropic error type and the error ``code`` - so the mapping is reviewed in one
  place and a test checks that no kind is missing. Provider failures that the client cannot
  fix by changing its request are 502 (the provider failed or rejected *our* credentials),
  503 (overloaded, every breaker open, shutting down) or 504 (timeouts and deadlines); the
  client's own mistakes are 400/404; rate limits and full queues are 429. A ``Retry-After``
  (and ``retry-after-ms``) header is sent whenever the failure carries one, and always on 429.
- **Streams in OpenAI's chunk format** (`ChatChunks`): every chunk of one answer carries the
  same id, creation time and model; the first carries ``role: assistant``; the finish reason
  comes on its own chunk with an empty delta; with ``stream_options.include_usage`` every
  chunk has ``"usage": null`` and a last ``choices: []`` chunk carries the usage; ``data:
  [DONE]`` ends a complete answer. A failure after the first chunk becomes ``data: {"error":
  {...}}`` (which the SDKs raise as an API error) and the body ends without ``[DONE]``.
- **What OpenAI's format cannot say.** A `Restart` (the router restarts the answer on another
  target: discard what came so far) cannot be expressed to a client that already holds part
  of an answer, so once text was sent it ends the stream with a ``stream_interrupted`` error
  (nothing is silently duplicated); before any text it is invisible. `Switched` (a
  continuation that keeps the text) needs nothing. Reasoning text goes out as
  ``reasoning_content`` (DeepSeek's name, which compatible clients read). A refusal
  (finish reason ``refusal``) is OpenAI's ``finish_reason: "stop"`` with the text in
  ``message.refusal`` as well as ``content``.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, NamedTuple

import msgspec

from ._config import ConnectionConfig
from ._errors import ErrorKind
from ._messages import (
    ChatRequest,
    Completion,
    ContentPart,
    Embeddings,
    EmbedRequest,
    Failure,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    ResponseFormat,
    Restart,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from ._openai import _FINISH

# --------------------------------------------------------------------------- errors


class ErrorRow(NamedTuple):
    """How one `ErrorKind` is answered over HTTP."""

    status: int
    openai_type: str
    anthropic_type: str
    code: str


_R = ErrorRow
K = ErrorKind
INVALID, SERVER, UNAVAILABLE = "invalid_request_error", "server_error", "service_unavailable_error"
RATE, TIMEOUT, API, OVERLOADED = (
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
)

HTTP_ERRORS: Final[dict[ErrorKind, ErrorRow]] = {
    #                     status  OpenAI type  Anthropic type  code
    K.RATE_LIMITED:       _R(429, RATE,        RATE,           "rate_limit_exceeded"),
    K.OVERLOADED:         _R(503, UNAVAILABLE, OVERLOADED,     "overloaded"),
    K.SERVER_ERROR:       _R(502, SERVER,      API,            "server_error"),
    K.TIMEOUT:            _R(504, TIMEOUT,     API,            "timeout"),
    K.CONNECTION:         _R(502, SERVER,      API,            "connection"),
    K.STREAM_INTERRUPTED: _R(502, SERVER,      API,            "stream_interrupted"),
    K.PROTOCOL:           _R(502, SERVER,      API,            "protocol"),
    K.AUTH:               _R(502, SERVER,      API,            "upstream_auth"),
    K.PERMISSION:         _R(502, SERVER,      API,            "upstream_permission"),
    K.BAD_REQUEST:        _R(400, INVALID,     INVALID,        "bad_request"),
    K.NOT_FOUND:          _R(404, INVALID,     "not_found_error", "model_not_found"),
    K.CONTEXT_LENGTH:     _R(400, INVALID,     INVALID,        "context_length_exceeded"),
    K.CONTENT_FILTER:     _R(400, INVALID,     INVALID,        "content_filter"),
    K.UNSUPPORTED:        _R(400, INVALID,     INVALID,        "unsupported"),
    K.CIRCUIT_OPEN:       _R(503, UNAVAILABLE, OVERLOADED,     "circuit_open"),
    K.QUEUE_FULL:         _R(429, RATE,        RATE,           "queue_full"),
    K.DEADLINE:           _R(504, TIMEOUT,     API,            "deadline"),
    K.CANCELLED:          _R(503, UNAVAILABLE, API,            "cancelled"),
    K.CRASHED:            _R(500, SERVER,      API,            "crashed"),
    K.CONFIG:             _R(500, SERVER,      API,            "config"),
}  # fmt: skip
"""Every `ErrorKind` as an HTTP answer. ``auth``/``permission`` are the *provider's* verdict on
switchboard's own key (a misconfigured connection), so the client gets a 502, never a 401 or
403 that would blame its token."""

del _R, K, INVALID, SERVER, UNAVAILABLE, RATE, TIMEOUT, API, OVERLOADED

_ANTHROPIC_BY_STATUS: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
"""Anthropic error types of the face's own errors (the ones not made from a `Failure`)."""


class WireError(msgspec.Struct, frozen=True, kw_only=True):
    """An error answer: HTTP ``status``, OpenAI's ``type``/``code``/``param`` and the message;
    ``anthropic_type`` for the Anthropic shape; ``retry_after`` seconds (a header) if any."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    anthropic_type: str = ""
    retry_after: float | None = None

    def openai_body(self) -> bytes:
        """``{"error": {"message", "type", "param", "code"}}``."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return _ENCODER.encode({"error": {**error, "code": self.code}})

    def anthropic_body(self) -> bytes:
        """``{"type": "error", "error": {"type", "message"}}``."""
        kind = self.anthropic_type or _ANTHROPIC_BY_STATUS.get(self.status, "api_error")
        return _ENCODER.encode({"type": "error", "error": {"type": kind, "message": self.message}})

    def headers(self) -> list[tuple[str, str]]:
        """``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms``, when known."""
        wait = self.retry_after
        if wait is None or not math.isfinite(wait):
            return []
        wait = max(wait, 0.0)
        return [
            ("retry-after", str(max(1, math.ceil(wait)))),
            ("retry-after-ms", str(round(wait * 1000))),
        ]


def bad_request(message: str, param: str | None = None, *, status: int = 400) -> WireError:
    """A 400 (or *status*) made by the face itself, before the runtime saw the request."""
    return WireError(status=status, message=message, param=param, code=None)


_BAD_REQUEST_FIELD: Final = re.compile(r"^bad request: ([A-Za-z_][\w.\[\]]*)")

_PARAM_NAMES: Final = (
    # (our name's prefix, OpenAI's), longest first where prefixes overlap
    ("response_format.schema", "response_format.json_schema.schema"),
    ("response_format.name", "response_format.json_schema.name"),
    ("inputs", "input"),
    ("extra.n", "n"),
    ("timeout", "switchboard.timeout"),
    ("fallbacks", "switchboard.fallbacks"),
    ("strategy", "switchboard.strategy"),
)
_TOOL_FIELD: Final = re.compile(r"^tools\[(\d+)\]\.(name|parameters)")


def _param_name(field: str) -> str:
    """Our field path (``protocol._validate``'s names) in OpenAI's request names."""
    tool = _TOOL_FIELD.match(field)
    if tool is not None:
        return f"tools[{tool.group(1)}].function.{tool.group(2)}" + field[tool.end() :]
    for ours, theirs in _PARAM_NAMES:
        if field == ours or field.startswith((ours + ".", ours + "[")):
            return theirs + field[len(ours) :]
    return field


def failure_error(failure: Failure) -> WireError:
    """The HTTP answer to a request that ended with *failure* (see `HTTP_ERRORS`)."""
    row = HTTP_ERRORS[failure.kind]
    param: str | None = None
    if failure.kind is ErrorKind.BAD_REQUEST:
        found = _BAD_REQUEST_FIELD.match(failure.message)
        if found is not None:
            param = _param_name(found.group(1))
    elif failure.kind is ErrorKind.NOT_FOUND:
        param = "model"
    retry_after = failure.retry_after
    if retry_after is None and row.status == 429 and _transient(failure):
        retry_after = 1.0  # a 429 says when to retry, unless retrying cannot help
    return WireError(
        status=row.status,
        message=failure.message,
        type=row.openai_type,
        code=row.code,
        param=param,
        anthropic_type=row.anthropic_type,
        retry_after=retry_after,
    )


def _transient(failure: Failure) -> bool:
    return failure.retryable or failure.kind is ErrorKind.QUEUE_FULL


def admission_error(failure: Failure) -> WireError:
    """The HTTP answer to a request its client's limits refused (``actors._client_keys``):
    ``permission`` (a model not on the client's allow-list) is the client's own 403, not a
    provider's verdict; ``rate_limited`` a 429 keeping the refusal's code
    (``budget_exceeded``...) and its ``retry_after``."""
    if failure.kind is ErrorKind.PERMISSION:
        return WireError(
            status=403,
            message=failure.message,
            type="permission_error",
            code=failure.code or "permission",
            anthropic_type="permission_error",
        )
    error = failure_error(failure)
    return msgspec.structs.replace(error, code=failure.code or error.code)


# --------------------------------------------------------------------------- decoding helpers

_ENCODER: Final = msgspec.json.Encoder()
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)
_PATH: Final = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING: Final = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def _path_param(path: str) -> str:
    return path[1:] if path.startswith(".") else path


def decode_problem(exc: msgspec.ValidationError) -> WireError:
    """A 400 naming the field of a msgspec validation error: ``param`` is the field's path
    (``messages[0].role``), the message starts with it."""
    text = str(exc)
    path = ""
    found = _PATH.search(text)
    if found is not None:
        path = _path_param(found.group("path"))
        text = text[: found.start()]
    missing = _MISSING.match(text)
    if missing is not None:
        field = missing.group("field")
        param = f"{path}.{field}" if path else field
        return bad_request(f"{param}: this field is required", param)
    detail = text[:1].lower() + text[1:]
    if not path:
        return bad_request(f"invalid request: {detail}")
    return bad_request(f"{path}: {detail}", path)


def json_object(body: bytes) -> dict[str, Any] | WireError:
    """*body* decoded as a JSON object, or the 400 that says why it is not one."""
    if not body.strip():
        return bad_request("the request body is empty: expected a JSON object")
    try:
        value = msgspec.json.decode(body)
    except msgspec.ValidationError as exc:  # a number out of range
        return bad_request(f"the request body is not valid JSON: {exc}")
    except _DECODE_ERRORS as exc:
        return bad_request(f"the request body is not valid JSON: {_clip(str(exc))}")
    if not isinstance(value, dict):
        return bad_request(f"the request body must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _convert(raw: dict[str, Any], type_: type[Any]) -> Any:
    """*raw* as *type_*, or the `WireError` naming the field that does not fit."""
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        return decode_problem(exc)
    except RecursionError:
        return bad_request("the request body is nested too deeply")


def _extra(raw: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The top-level fields we do not map, for ``extra`` (``null`` ones are dropped)."""
    skip = set(known)
    return {k: v for k, v in raw.items() if k not in skip and v is not None}


class _In(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the decode-only request structs (unknown fields are ignored)."""


class Extension(_In, frozen=True, kw_only=True):
    """Switchboard's own request options, in a ``switchboard`` object of the body."""

    timeout: float | None = None
    fallbacks: list[str] = []
    strategy: str | None = None


def _fields_of(type_: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(f.encode_name for f in msgspec.structs.fields(type_))


# --------------------------------------------------------------------------- chat requests


class _TextIn(_In, frozen=True, kw_only=True, tag="text", tag_field="type"):
    text: str


class _ImageURL(_In, frozen=True, kw_only=True):
    url: str


class _ImageIn(_In, frozen=True, kw_only=True, tag="image_url", tag_field="type"):
    image_url: _ImageURL


class _RefusalIn(_In, frozen=True, kw_only=True, tag="refusal", tag_field="type"):
    refusal: str


class _FunctionCallIn(_In, frozen=True, kw_only=True):
    name: str
    arguments: str = ""


class _ToolCallIn(_In, frozen=True, kw_only=True):
    id: str
    function: _FunctionCallIn
    type: str = "function"


class _MessageIn(_In, frozen=True, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextIn | _ImageIn | _RefusalIn] | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _FunctionDefIn(_In, frozen=True, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _ToolIn(_In, frozen=True, kw_only=True):
    function: _FunctionDefIn
    type: Literal["function"] = "function"


class _NamedFunction(_In, frozen=True, kw_only=True):
    name: str


class _NamedChoice(_In, frozen=True, kw_only=True):
    function: _NamedFunction
    type: str = "function"


class _JsonSchemaIn(_In, frozen=True, kw_only=True):
    name: str = "response"
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class _ResponseFormatIn(_In, frozen=True, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchemaIn | None = None


class _StreamOptions(_In, frozen=True, kw_only=True):
    include_usage: bool | None = None


class _ChatIn(_In, frozen=True, kw_only=True):
    model: str
    messages: list[_MessageIn]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    tools: list[_ToolIn] | None = None
    tool_choice: str | _NamedChoice | None = None
    response_format: _ResponseFormatIn | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    n: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    switchboard: Extension | None = None


_CHAT_FIELDS: Final = _fields_of(_ChatIn)


class ChatCall(NamedTuple):
    """A decoded chat request: the `ChatRequest`, whether to stream, whether a streamed answer
    ends with a usage chunk (``stream_options.include_usage``)."""

    request: ChatRequest
    stream: bool
    include_usage: bool


_DATA_URL: Final = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def image_part(url: str) -> ImagePart:
    """An image given by URL; a ``data:`` URL becomes inline base64 data."""
    found = _DATA_URL.match(url)
    if found is None:
        return ImagePart(url=url)
    return ImagePart(data=found.group("data"), media_type=found.group("type"))


def _text(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for part in content:
        if isinstance(part, _TextIn):
            out.append(part.text)
        elif isinstance(part, _RefusalIn):
            out.append(part.refusal)
    return "".join(out)


def _arguments(text: str, where: str) -> dict[str, Any] | WireError:
    try:
        value = msgspec.json.decode(text or "{}")
    except (*_DECODE_ERRORS, msgspec.ValidationError):
        return bad_request(f"{where}: must be a JSON object encoded as a string", where)
    if not isinstance(value, dict):
        return bad_request(f"{where}: must be a JSON object encoded as a string", where)
    return value


def _chat_messages(messages: list[_MessageIn]) -> list[Message] | WireError:
    out: list[Message] = []
    tool_names: dict[str, str] = {}  # tool call id -> name, for tool results (Gemini, Ollama)
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if msg.role in ("system", "developer"):
            out.append(Message(role="system", content=_text(msg.content)))
        elif msg.role == "user":
            if isinstance(msg.content, list):
                parts: list[ContentPart] = []
                for part in msg.content:
                    if isinstance(part, _ImageIn):
                        parts.append(image_part(part.image_url.url))
                    else:
                        parts.append(TextPart(text=_text([part])))
                out.append(Message(role="user", content=parts))
            else:
                out.append(Message(role="user", content=msg.content or ""))
        elif msg.role == "assistant":
            calls = msg.tool_calls or []
            if not calls:
                out.append(Message(role="assistant", content=_text(msg.content)))
                continue
            assistant: list[ContentPart] = []
            text = _text(msg.content)
            if text:
                assistant.append(TextPart(text=text))
            for j, call in enumerate(calls):
                args = _arguments(
                    call.function.arguments, f"{where}.tool_calls[{j}].function.arguments"
                )
                if isinstance(args, WireError):
                    return args
                tool_names[call.id] = call.function.name
                assistant.append(ToolUsePart(id=call.id, name=call.function.name, arguments=args))
            out.append(Message(role="assistant", content=assistant))
        else:  # tool
            if not msg.tool_call_id:
                return bad_request(
                    f"{where}.tool_call_id: a tool message needs the id of the call it answers",
                    f"{where}.tool_call_id",
                )
            result = ToolResultPart(
                tool_use_id=msg.tool_call_id,
                content=_text(msg.content),
                name=tool_names.get(msg.tool_call_id, msg.name or ""),
            )
            out.append(Message(role="tool", content=[result]))
    return out


def _response_format(fmt: _ResponseFormatIn | None) -> ResponseFormat | None:
    if fmt is None:
        return None
    if fmt.type != "json_schema":
        return ResponseFormat(type=fmt.type)
    schema = fmt.json_schema or _JsonSchemaIn()
    return ResponseFormat(
        type="json_schema", name=schema.name, schema=schema.schema, strict=schema.strict is True
    )


def _metadata(metadata: dict[str, str] | None, user: str | None) -> dict[str, str]:
    out = dict(metadata or {})
    if user is not None:
        out["user"] = user
    return out


def decode_chat(body: bytes, *, request_id: str) -> ChatCall | WireError:
    """An OpenAI ``POST /v1/chat/completions`` body as a `ChatCall`, or the 400 naming the
    field that is wrong (see the module docstring for what maps where)."""
    raw = json_object(body)
    if isinstance(raw, WireError):
        return raw
    wire = _convert(raw, _ChatIn)
    if isinstance(wire, WireError):
        return wire
    assert isinstance(wire, _ChatIn)
    if wire.n is not None and wire.n != 1:
        return bad_request(f"n: switchboard returns one choice per request, got {wire.n}", "n")
    messages = _chat_messages(wire.messages)
    if isinstance(messages, WireError):
        return messages
    choice = wire.tool_choice
    ext = wire.switchboard or Extension()
    request = ChatRequest(
        model=wire.model,
        messages=messages,
        max_tokens=wire.max_completion_tokens
        if wire.max_completion_tokens is not None
        else wire.max_tokens,
        temperature=wire.temperature,
        top_p=wire.top_p,
        stop=[wire.stop] if isinstance(wire.stop, str) else list(wire.stop or ()),
        tools=[
            Tool(
                name=t.function.name,
                description=t.function.description or "",
                parameters=t.function.parameters or {},
            )
            for t in wire.tools or ()
        ],
        tool_choice=choice.function.name if isinstance(choice, _NamedChoice) else choice,
        response_format=_response_format(wire.response_format),
        stream=bool(wire.stream),
        metadata=_metadata(wire.metadata, wire.user),
        request_id=request_id,
        timeout=ext.timeout,
        fallbacks=list(ext.fallbacks),
        strategy=ext.strategy,
        extra=_extra(raw, _CHAT_FIELDS),
    )
    options = wire.stream_options
    include_usage = bool(options is not None and options.include_usage)
    return ChatCall(request=request, stream=bool(wire.stream), include_usage=include_usage)


# --------------------------------------------------------------------------- chat answers

_FINISH_OUT: Final[dict[str, str]] = {
    **{ours: wire for wire, ours in reversed(list(_FINISH.items()))},
    "refusal": "stop",
    "other": "stop",
}
"""Our finish reasons in OpenAI's words (the inverse of the client dialect's table, whose
first wire name for each of ours wins; ``refusal``/``other`` have no OpenAI reason)."""


def finish_reason(reason: FinishReason) -> str:
    return _FINISH_OUT.get(reason, "stop")


def openai_usage(usage: Usage) -> dict[str, Any]:
    """Our `Usage` in OpenAI's shape."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def completion_body(completion: Completion, *, model: str, created: int) -> bytes:
    """A `Completion` as OpenAI's ``chat.completion`` object. *model* is the name the client
    asked for when the completion names none."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": completion.text if completion.text or not completion.tool_calls else None,
        "refusal": completion.text if completion.finish_reason == "refusal" else None,
    }
    if completion.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in completion.tool_calls
        ]
    if completion.reasoning:
        message["reasoning_content"] = completion.reasoning
    body = {
        "id": completion_id(completion.request_id),
        "object": "chat.completion",
        "created": created,
        "model": completion.model or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(completion.finish_reason),
            }
        ],
        "usage": openai_usage(completion.usage),
    }
    return _ENCODER.encode(body)


def sse(data: bytes, event: str | None = None) -> bytes:
    """One Server-Sent Event carrying *data* (one line of JSON)."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + data + b"\n\n"


RESTARTED: Final = (
    "the answer was restarted on another target after part of it was sent; "
    "the partial answer is void: send the request again"
)


def restart_failure(event: Restart, request_id: str) -> Failure:
    """The failure a client that already received text gets for a `Restart`."""
    return Failure.of(
        ErrorKind.STREAM_INTERRUPTED,
        f"{RESTARTED} (reason: {event.reason})",
        request_id=request_id,
    )


class ChatChunks:
    """Renders one streamed answer as OpenAI ``chat.completion.chunk`` Server-Sent Events.

    `event` turns each `StreamEvent` into bytes to send (``b""`` for events that say nothing
    to the client: usage updates and ``Finished`` are summed up by `finish`); `finish` renders
    the finish chunk, the usage chunk when asked for, and ``[DONE]``; `error` renders a
    failure as an error event. ``sent`` tells whether any chunk went out (so a `Restart` can
    still be absorbed, and a failure can still be an HTTP error status).
    """

    def __init__(self, *, request_id: str, model: str, created: int, include_usage: bool) -> None:
        self.id = completion_id(request_id)
        self.request_id = request_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.sent = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self.sent:
            delta = {"role": "assistant", **delta}
            self.sent = True
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse(_ENCODER.encode(chunk))

    def event(self, event: StreamEvent) -> bytes | Failure:
        """The bytes for *event*, or the `Failure` that must end the stream instead (a
        `Restart` after text was sent)."""
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text}) if event.text else b""
        if isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {"index": event.index}
            if event.id is not None:
                call["id"] = event.id
                call["type"] = "function"
            function: dict[str, Any] = {"arguments": event.arguments}
            if event.name is not None:
                function["name"] = event.name
            call["function"] = function
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, ReasoningDelta):
            return self._chunk({"reasoning_content": event.text}) if event.text else b""
        if isinstance(event, Restart) and self.sent:
            return restart_failure(event, self.request_id)
        return b""

    def finish(self, completion: Completion) -> bytes:
        """The end of a complete answer: finish chunk, usage chunk (if asked), ``[DONE]``."""
        out = self._chunk({}, finish_reason(completion.finish_reason))
        if self.include_usage:
            usage = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": openai_usage(completion.usage),
            }
            out += sse(_ENCODER.encode(usage))
        return out + b"data: [DONE]\n\n"

    def error(self, error: WireError) -> bytes:
        """A failure after the stream started, as an error event (no ``[DONE]`` follows)."""
        return sse(error.openai_body())


# --------------------------------------------------------------------------- embeddings


class _EmbedIn(_In, frozen=True, kw_only=True):
    model: str
    input: str | list[Any]
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None
    switchboard: Extension | None = None


_EMBED_FIELDS: Final = _fields_of(_EmbedIn)


class EmbedCall(NamedTuple):
    """A decoded embeddings request and the encoding its vectors go back in."""

    request: EmbedRequest
    base64: bool


def decode_embed(body: bytes, *, request_id: str) -> EmbedCall | WireError:
    """An OpenAI ``POST /v1/embeddings`` body as an `EmbedCall`, or the 400 naming the field.
    Inputs must be text (a string or a list of strings): token arrays are refused."""
    raw = json_object(body)
    if isinstance(raw, WireError):
        return raw
    wire = _convert(raw, _EmbedIn)
    if isinstance(wire, WireError):
        return wire
    assert isinstance(wire, _EmbedIn)
    inputs = [wire.input] if isinstance(wire.input, str) else wire.input
    for i, item in enumerate(inputs):
        if not isinstance(item, str):
            what = "token arrays are not supported, send text" if item is not None else "null"
            return bad_request(f"input[{i}]: expected a string ({what})", f"input[{i}]")
    ext = wire.switchboard or Extension()
    request = EmbedRequest(
        model=wire.model,
        inputs=list(inputs),
        dimensions=wire.dimensions,
        metadata=_metadata(None, wire.user),
        request_id=request_id,
        timeout=ext.timeout,
        fallbacks=list(ext.fallbacks),
        extra=_extra(raw, _EMBED_FIELDS),
    )
    return EmbedCall(request=request, base64=wire.encoding_format == "base64")


def _b64_vector(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embeddings_body(result: Embeddings, *, model: str, base64: bool) -> bytes:
    """`Embeddings` as OpenAI's list of ``embedding`` objects (vectors as little-endian
    float32 base64 when the client asked for ``encoding_format: "base64"``)."""
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _b64_vector(vector) if base64 else vector,
        }
        for i, vector in enumerate(result.vectors)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": result.model or model,
        "usage": {
            "prompt_tokens": result.usage.input_tokens,
            "total_tokens": result.usage.input_tokens,
        },
    }
    return _ENCODER.encode(body)


# --------------------------------------------------------------------------- models

_GLOB: Final = re.compile(r"[*?\[]")


def model_candidates(
    routes: Iterable[str], connections: Mapping[str, ConnectionConfig]
) -> list[tuple[str, str]]:
    """Every model name the config makes routable, as ``(id, owned_by)``, first owner wins:
    route names (owned by ``switchboard``), then per connection its aliases, its default
    model and the plain names in ``serves`` (globs cannot be listed). The caller keeps the
    names the router actually resolves (a route whose connections are all gone is not)."""
    out: dict[str, str] = {}
    for name in routes:
        out.setdefault(name, "switchboard")
    for conn_name, cfg in connections.items():
        names = [*cfg.models, *([cfg.default_model] if cfg.default_model else [])]
        names += [s for s in cfg.serves if not _GLOB.search(s)]
        for model in names:
            out.setdefault(model, conn_name)
    return list(out.items())


def model_object(model: str, owner: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": owner}


def models_body(models: Iterable[tuple[str, str]]) -> bytes:
    """``GET /v1/models``: ``{"object": "list", "data": [model objects]}``."""
    data = [model_object(model, owner) for model, owner in models]
    return _ENCODER.encode({"object": "list", "data": data})


def encode(value: Any) -> bytes:
    """JSON bytes of *value* (the face's one encoder)."""
    return _ENCODER.encode(value)
