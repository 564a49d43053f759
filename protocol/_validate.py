"""Request validation: one check at the door, so bad data never reaches an actor.

The problem: msgspec validates types when a request is *decoded* (the gateway, a config
file), but a `ChatRequest` built in process is never checked - ``ChatRequest(max_tokens=-5)``
is a perfectly constructible struct. Such a value used to travel to the provider actor, where
the limiter refused a negative token estimate with a ``ValueError``; the actor crashed, the
supervisor restarted it, and four such requests stopped the whole runtime. Values that decode
fine can still be nonsense too: ``temperature = NaN``, an empty ``messages`` list, a
``max_tokens`` of 10^12 that no rate limit can ever admit.

The choice: every request is checked once, by the pure functions here, where it enters the
runtime (`Router` before routing, `Connection` before its mailbox), and refused with a
``bad_request`` `Failure` naming the field, the value and what is expected. A refusal costs no
tokens, spends no attempt, and never touches an actor, so it cannot count toward restart
intensity. The checks are plain ``isinstance`` and range tests - no re-encoding of the request
- because they run on every request's hot path; JSON-ness of free-form dictionaries
(``extra``, tool schemas) is checked only when they are non-empty.

`request_problem` returns the first problem as a sentence, or ``None`` for a sound request;
`refusal` wraps it in the ``bad_request`` `Failure` the caller gets.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ._errors import ErrorKind
from ._messages import (
    ChatRequest,
    EmbedRequest,
    Failure,
    ImagePart,
    Message,
    ResponseFormat,
    TextPart,
    Tool,
    ToolResultPart,
    ToolUsePart,
)

MAX_TOKENS_LIMIT = 1_000_000
"""The largest ``max_tokens`` accepted (no provider generates more in one answer)."""

MAX_MESSAGES = 100_000
MAX_STOP_SEQUENCES = 64
MAX_EMBED_INPUTS = 100_000
MAX_DIMENSIONS = 1_000_000
MAX_ID_LENGTH = 256
MAX_NAME_LENGTH = 512

_ROLES = frozenset({"system", "user", "assistant", "tool"})
_FORMATS = frozenset({"text", "json_object", "json_schema"})
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_CACHE_MODES = frozenset({"default", "refresh", "off"})


def request_problem(request: object, *, model_required: bool = True) -> str | None:
    """The first thing wrong with *request* (a `ChatRequest` or `EmbedRequest`), as a sentence
    naming the field and what was expected; ``None`` when it may be sent. With
    *model_required* false an empty ``model`` is sound (a `Connection` called directly reads
    it as its ``default_model``); the router needs a name to route by."""
    if isinstance(request, ChatRequest):
        return _chat_problem(request, model_required)
    if isinstance(request, EmbedRequest):
        return _embed_problem(request, model_required)
    return f"expected a ChatRequest or EmbedRequest, got {type(request).__name__}"


def refusal(
    request: ChatRequest | EmbedRequest, *, model_required: bool = True
) -> Failure | None:
    """The ``bad_request`` `Failure` for an unsound *request* (see `request_problem`), else
    ``None``. Its ``model`` and ``request_id`` are the request's own only where those are
    sound strings."""
    problem = request_problem(request, model_required=model_required)
    if problem is None:
        return None
    model = getattr(request, "model", "")
    request_id = getattr(request, "request_id", "")
    return Failure.of(
        ErrorKind.BAD_REQUEST,
        f"bad request: {problem}",
        model=model if isinstance(model, str) and len(model) <= MAX_NAME_LENGTH else "",
        request_id=(
            request_id if isinstance(request_id, str) and len(request_id) <= MAX_ID_LENGTH else ""
        ),
    )


# --------------------------------------------------------------------------- helpers


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(field: str, value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"{field} must be a non-empty string, got {_show(value)}"
    if len(value) > MAX_NAME_LENGTH:
        return f"{field} must be at most {MAX_NAME_LENGTH} characters, got {len(value)}"
    return None


def _int(field: str, value: object, low: int, high: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{field} must be an integer, got {_show(value)}"
    if value < low:
        return f"{field} must be >= {low}, got {value}"
    if value > high:
        return f"{field} must be <= {high:,}, got {value:,}"
    return None


def _number(field: str, value: object, low: float, high: float) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{field} must be a number, got {_show(value)}"
    if not (math.isfinite(value) and low <= value <= high):
        return f"{field} must be a number from {low:g} to {high:g}, got {value!r}"
    return None


def _strings(field: str, value: object, *, most: int, empty_ok: bool) -> str | None:
    if not isinstance(value, list):
        return f"{field} must be a list of strings, got {_show(value)}"
    if len(value) > most:
        return f"{field} may hold at most {most:,} entries, got {len(value):,}"
    for i, item in enumerate(value):
        if not isinstance(item, str) or (not empty_ok and not item):
            kind = "a string" if empty_ok else "a non-empty string"
            return f"{field}[{i}] must be {kind}, got {_show(item)}"
    return None


def _json(field: str, value: object) -> str | None:
    if not isinstance(value, dict):
        return f"{field} must be an object (a dict), got {_show(value)}"
    if not value:
        return None
    if not all(isinstance(key, str) for key in value):
        return f"{field} keys must be strings"
    try:
        msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        return f"{field} must be JSON-encodable: {exc}"
    return None


def _model(value: object, required: bool) -> str | None:
    if not required and value == "":
        return None
    return _name("model", value)


def _common(request: ChatRequest | EmbedRequest, model_required: bool) -> str | None:
    return (
        _model(request.model, model_required)
        or _cache_mode(request.cache)
        or _request_id(request.request_id)
        or _timeout(request.timeout)
        or _strings("fallbacks", request.fallbacks, most=MAX_STOP_SEQUENCES, empty_ok=False)
        or _metadata(request.metadata)
        or _json("extra", request.extra)
    )


def _cache_mode(value: object) -> str | None:
    if not isinstance(value, str) or value not in _CACHE_MODES:
        return f"cache must be one of default, refresh, off, got {_show(value)}"
    return None


def _request_id(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return f"request_id must be a non-empty string, got {_show(value)}"
    if len(value) > MAX_ID_LENGTH:
        return f"request_id must be at most {MAX_ID_LENGTH} characters, got {len(value)}"
    return None


def _timeout(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"timeout must be a number of seconds, got {_show(value)}"
    if not (math.isfinite(value) and value >= 0):
        return f"timeout must be a finite number of seconds >= 0, got {value!r}"
    return None


def _metadata(value: object) -> str | None:
    if not isinstance(value, dict):
        return f"metadata must be a dict of strings, got {_show(value)}"
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            return f"metadata must map strings to strings, got {_show(key)}: {_show(item)}"
    return None


# --------------------------------------------------------------------------- chat


def _chat_problem(request: ChatRequest, model_required: bool) -> str | None:
    return (
        _common(request, model_required)
        or _messages(request.messages)
        or _int("max_tokens", request.max_tokens, 1, MAX_TOKENS_LIMIT)
        or _number("temperature", request.temperature, 0.0, 2.0)
        or _number("top_p", request.top_p, 0.0, 1.0)
        or _strings("stop", request.stop, most=MAX_STOP_SEQUENCES, empty_ok=False)
        or _tools(request.tools, request.tool_choice)
        or _response_format(request.response_format)
        or _flag("stream", request.stream)
        or _optional_name("strategy", request.strategy)
        or _choices(request.extra)
    )


def _flag(field: str, value: object) -> str | None:
    if not isinstance(value, bool):
        return f"{field} must be true or false, got {_show(value)}"
    return None


def _optional_name(field: str, value: object) -> str | None:
    return None if value is None else _name(field, value)


def _choices(extra: dict[str, Any]) -> str | None:
    if not isinstance(extra, dict) or "n" not in extra:
        return None
    n = extra["n"]
    if n != 1 or isinstance(n, bool):
        return f"extra.n must be 1 (switchboard returns one choice per request), got {_show(n)}"
    return None


def _messages(messages: object) -> str | None:
    if not isinstance(messages, list):
        return f"messages must be a list of Message, got {_show(messages)}"
    if not messages:
        return "messages must hold at least one message"
    if len(messages) > MAX_MESSAGES:
        return f"messages may hold at most {MAX_MESSAGES:,} messages, got {len(messages):,}"
    for i, message in enumerate(messages):
        problem = _message(message)
        if problem is not None:
            return f"messages[{i}].{problem}"
    return None


def _message(message: object) -> str | None:
    if not isinstance(message, Message):
        return f"(the message) must be a Message, got {_show(message)}"
    if not isinstance(message.role, str) or message.role not in _ROLES:
        return f"role must be one of {', '.join(sorted(_ROLES))}, got {_show(message.role)}"
    content: object = message.content  # typed, but built in process without checks
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"content must be a string or a list of parts, got {_show(content)}"
    for j, part in enumerate(content):
        problem = _part(part)
        if problem is not None:
            return f"content[{j}]{problem}"
    return None


def _part(part: object) -> str | None:
    # Attributes are read as `object`: typed, but built in process without checks.
    if isinstance(part, TextPart):
        text: object = part.text
        return None if isinstance(text, str) else f".text must be a string, got {_show(text)}"
    if isinstance(part, ImagePart):
        url: object = part.url
        data: object = part.data
        if not isinstance(url, str | None) or not isinstance(data, str | None):
            return ".url and .data must be strings"
        if url is None and data is None:
            return " (an image) needs a url or base64 data"
        return None
    if isinstance(part, ToolUsePart):
        problem = _name(".id", part.id) or _name(".name", part.name)
        return problem or _json(".arguments", part.arguments)
    if isinstance(part, ToolResultPart):
        result: object = part.content
        if not isinstance(result, str):
            return f".content must be a string, got {_show(result)}"
        return _name(".tool_use_id", part.tool_use_id)
    return f" must be a text, image, tool_use or tool_result part, got {_show(part)}"


def _tools(tools: object, choice: object) -> str | None:
    if not isinstance(tools, list):
        return f"tools must be a list of Tool, got {_show(tools)}"
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, Tool):
            return f"tools[{i}] must be a Tool, got {_show(tool)}"
        problem = _name(f"tools[{i}].name", tool.name) or _json(
            f"tools[{i}].parameters", tool.parameters
        )
        if problem is not None:
            return problem
        names.add(tool.name)
    if choice is None:
        return None
    if not isinstance(choice, str) or not choice:
        return f"tool_choice must be auto, none, required or a tool's name, got {_show(choice)}"
    if choice in _TOOL_CHOICES:
        if choice == "required" and not names:
            return "tool_choice is 'required' but no tools are given"
        return None
    if choice not in names:
        return f"tool_choice names tool {choice!r}, but no such tool is given in tools"
    return None


def _response_format(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, ResponseFormat):
        return f"response_format must be a ResponseFormat, got {_show(value)}"
    if not isinstance(value.type, str) or value.type not in _FORMATS:
        expected = ", ".join(sorted(_FORMATS))
        return f"response_format.type must be one of {expected}, got {_show(value.type)}"
    if value.type == "json_schema":
        if not value.schema:
            return "response_format.schema is required when type is 'json_schema'"
        return _name("response_format.name", value.name) or _json(
            "response_format.schema", value.schema
        )
    return None


# --------------------------------------------------------------------------- embeddings


def _embed_problem(request: EmbedRequest, model_required: bool) -> str | None:
    problem = _common(request, model_required) or _strings(
        "inputs", request.inputs, most=MAX_EMBED_INPUTS, empty_ok=False
    )
    if problem is not None:
        return problem
    if not request.inputs:
        return "inputs must hold at least one text"
    return _int("dimensions", request.dimensions, 1, MAX_DIMENSIONS)
