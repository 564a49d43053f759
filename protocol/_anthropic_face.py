"""The Anthropic Messages face, server side: ``POST /v1/messages`` for the ``anthropic`` SDK.

The mirror image of ``protocol._anthropic`` (the client side of the same wire format), for the
HTTP face; pure like the rest of ``protocol``. It shares the error table, the decoding helpers
and the pass-through rule with ``protocol._openai_face`` (see its docstring); only the shapes
differ:

- **Request.** ``system`` (a string or text blocks) becomes a system message; ``tool_result``
  blocks of a user turn become ``role="tool"`` messages placed before the turn's other content
  (our neutral form; each dialect moves them where its API wants them), named after the
  ``tool_use`` they answer; ``tool_use`` blocks become `ToolUsePart`s; thinking blocks of past
  turns are dropped (they belong to the model that wrote them). ``tool_choice`` ``any`` is our
  ``required``; ``stop_sequences`` is ``stop``; ``metadata.user_id`` goes to
  ``ChatRequest.metadata["user"]``; other unknown top-level fields (``top_k``, ``thinking``,
  ``service_tier``...) pass through in ``extra``.
- **Answer.** A ``message`` object with a ``thinking`` block (when the model reasoned; its
  ``signature`` is empty: there is none to give), a ``text`` block and ``tool_use`` blocks;
  our finish reasons in Anthropic's words (the inverse of the client dialect's table).
- **Stream** (`MessageEvents`): ``message_start``, then per block ``content_block_start`` /
  ``content_block_delta`` (``text_delta``, ``thinking_delta``, ``input_json_delta``) /
  ``content_block_stop``, then ``message_delta`` with the stop reason and the final usage
  (input tokens included: they are only known at the end) and ``message_stop``. A failure
  after the start is an ``event: error``, as Anthropic sends ``overloaded_error`` mid-stream.
"""

from __future__ import annotations

from typing import Any, Final, Literal, NamedTuple

import msgspec

from ._anthropic import _STOP_REASONS
from ._messages import (
    ChatRequest,
    Completion,
    ContentPart,
    Failure,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
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
from ._openai_face import (
    Extension,
    WireError,
    _convert,
    _extra,
    _fields_of,
    _In,
    _metadata,
    bad_request,
    encode,
    image_part,
    json_object,
    restart_failure,
    sse,
)

# --------------------------------------------------------------------------- request


class _TextBlock(_In, frozen=True, kw_only=True, tag="text", tag_field="type"):
    text: str


class _ImageSource(_In, frozen=True, kw_only=True):
    type: Literal["base64", "url"]
    media_type: str = "image/png"
    data: str | None = None
    url: str | None = None


class _ImageBlock(_In, frozen=True, kw_only=True, tag="image", tag_field="type"):
    source: _ImageSource


class _ToolUseBlock(_In, frozen=True, kw_only=True, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class _ToolResultBlock(_In, frozen=True, kw_only=True, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[_TextBlock | _ImageBlock] = ""
    is_error: bool = False


class _ThinkingBlock(_In, frozen=True, kw_only=True, tag="thinking", tag_field="type"):
    thinking: str = ""


class _RedactedThinkingBlock(
    _In, frozen=True, kw_only=True, tag="redacted_thinking", tag_field="type"
):
    data: str = ""


_Block = (
    _TextBlock
    | _ImageBlock
    | _ToolUseBlock
    | _ToolResultBlock
    | _ThinkingBlock
    | _RedactedThinkingBlock
)


class _MessageIn(_In, frozen=True, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _ToolIn(_In, frozen=True, kw_only=True):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class _ToolChoiceIn(_In, frozen=True, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None


class _MetadataIn(_In, frozen=True, kw_only=True):
    user_id: str | None = None


class _MessagesIn(_In, frozen=True, kw_only=True):
    model: str
    messages: list[_MessageIn]
    max_tokens: int | None = None
    system: str | list[_TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[_ToolIn] | None = None
    tool_choice: _ToolChoiceIn | None = None
    stream: bool | None = None
    metadata: _MetadataIn | None = None
    switchboard: Extension | None = None


_MESSAGES_FIELDS: Final = _fields_of(_MessagesIn)


class MessagesCall(NamedTuple):
    """A decoded Messages request and whether to stream it."""

    request: ChatRequest
    stream: bool


def _image(block: _ImageBlock) -> ImagePart:
    source = block.source
    if source.type == "url":
        return image_part(source.url or "")
    return ImagePart(data=source.data or "", media_type=source.media_type)


def _result_text(content: str | list[_TextBlock | _ImageBlock]) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.text for b in content if isinstance(b, _TextBlock))


def _messages(
    system: str | list[_TextBlock] | None, turns: list[_MessageIn]
) -> list[Message] | WireError:
    out: list[Message] = []
    if system:
        text = system if isinstance(system, str) else "\n\n".join(b.text for b in system)
        out.append(Message(role="system", content=text))
    tool_names: dict[str, str] = {}
    for i, turn in enumerate(turns):
        if isinstance(turn.content, str):
            out.append(Message(role=turn.role, content=turn.content))
            continue
        results: list[ContentPart] = []
        parts: list[ContentPart] = []
        for j, block in enumerate(turn.content):
            if isinstance(block, _TextBlock):
                parts.append(TextPart(text=block.text))
            elif isinstance(block, _ImageBlock):
                parts.append(_image(block))
            elif isinstance(block, _ToolUseBlock):
                if turn.role != "assistant":
                    where = f"messages[{i}].content[{j}]"
                    return bad_request(f"{where}: tool_use blocks belong to assistant turns", where)
                tool_names[block.id] = block.name
                parts.append(ToolUsePart(id=block.id, name=block.name, arguments=block.input))
            elif isinstance(block, _ToolResultBlock):
                results.append(
                    ToolResultPart(
                        tool_use_id=block.tool_use_id,
                        content=_result_text(block.content),
                        name=tool_names.get(block.tool_use_id, ""),
                        is_error=block.is_error,
                    )
                )
            # thinking and redacted_thinking blocks of past turns are dropped
        if results:
            out.append(Message(role="tool", content=results))
        if parts or not results:
            out.append(Message(role=turn.role, content=parts))
    return out


def _tools(tools: list[_ToolIn] | None) -> list[Tool] | WireError:
    out = []
    for i, tool in enumerate(tools or ()):
        if tool.type not in (None, "custom"):
            where = f"tools[{i}].type"
            return bad_request(
                f"{where}: server tools ({tool.type!r}) are not supported; "
                "only client tools with an input_schema",
                where,
            )
        out.append(
            Tool(
                name=tool.name,
                description=tool.description or "",
                parameters=tool.input_schema or {},
            )
        )
    return out


def _tool_choice(choice: _ToolChoiceIn | None) -> str | WireError | None:
    if choice is None:
        return None
    if choice.type == "any":
        return "required"
    if choice.type == "tool":
        if not choice.name:
            return bad_request("tool_choice.name: required when type is 'tool'", "tool_choice.name")
        return choice.name
    return choice.type


def decode_messages(body: bytes, *, request_id: str) -> MessagesCall | WireError:
    """An Anthropic ``POST /v1/messages`` body as a `MessagesCall`, or the 400 naming the
    field that is wrong."""
    raw = json_object(body)
    if isinstance(raw, WireError):
        return raw
    wire = _convert(raw, _MessagesIn)
    if isinstance(wire, WireError):
        return wire
    assert isinstance(wire, _MessagesIn)
    messages = _messages(wire.system, wire.messages)
    if isinstance(messages, WireError):
        return messages
    tools = _tools(wire.tools)
    if isinstance(tools, WireError):
        return tools
    choice = _tool_choice(wire.tool_choice)
    if isinstance(choice, WireError):
        return choice
    ext = wire.switchboard or Extension()
    user = wire.metadata.user_id if wire.metadata is not None else None
    request = ChatRequest(
        model=wire.model,
        messages=messages,
        max_tokens=wire.max_tokens,
        temperature=wire.temperature,
        top_p=wire.top_p,
        stop=list(wire.stop_sequences or ()),
        tools=tools,
        tool_choice=choice,
        stream=bool(wire.stream),
        metadata=_metadata(None, user),
        request_id=request_id,
        timeout=ext.timeout,
        fallbacks=list(ext.fallbacks),
        strategy=ext.strategy,
        extra=_extra(raw, _MESSAGES_FIELDS),
    )
    return MessagesCall(request=request, stream=bool(wire.stream))


# --------------------------------------------------------------------------- answers

_STOP_OUT: Final[dict[str, str]] = {
    **{ours: wire for wire, ours in reversed(list(_STOP_REASONS.items()))},
    "content_filter": "refusal",
    "other": "end_turn",
}
"""Our finish reasons in Anthropic's words (the inverse of the client dialect's table, whose
first wire name for each of ours wins)."""


def stop_reason(reason: FinishReason) -> str:
    return _STOP_OUT.get(reason, "end_turn")


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Our `Usage` in Anthropic's shape: its ``input_tokens`` leaves out the cache reads and
    writes that ours includes (the inverse of the client dialect's ``_usage``)."""
    cached = usage.cache_read_tokens + usage.cache_write_tokens
    return {
        "input_tokens": max(0, usage.input_tokens - cached),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def message_id(request_id: str) -> str:
    return f"msg_{request_id}"


def _input(arguments: str) -> Any:
    try:
        value = msgspec.json.decode(arguments or "{}")
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def message_body(completion: Completion, *, model: str) -> bytes:
    """A `Completion` as Anthropic's ``message`` object."""
    content: list[dict[str, Any]] = []
    if completion.reasoning:
        content.append({"type": "thinking", "thinking": completion.reasoning, "signature": ""})
    if completion.text or not completion.tool_calls:
        content.append({"type": "text", "text": completion.text})
    content.extend(
        {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
        for call in completion.tool_calls
    )
    body = {
        "id": message_id(completion.request_id),
        "type": "message",
        "role": "assistant",
        "model": completion.model or model,
        "content": content,
        "stop_reason": stop_reason(completion.finish_reason),
        "stop_sequence": None,
        "usage": anthropic_usage(completion.usage),
    }
    return encode(body)


class MessageEvents:
    """Renders one streamed answer as Anthropic's Messages event stream.

    Blocks are opened as the events need them (text, thinking, one per tool call) and each is
    stopped when the next one opens; `event` returns ``b""`` for events that say nothing
    (usage updates, ``Finished``: `finish` sums them up) and a `Failure` for a `Restart` after
    output was sent. ``sent`` tells whether anything went out yet.
    """

    def __init__(self, *, request_id: str, model: str) -> None:
        self.request_id = request_id
        self.model = model
        self.sent = False
        self._blocks = 0
        self._open: tuple[str, int] | None = None  # (kind or "tool:<our index>", block index)
        self._tool_blocks: dict[int, int] = {}

    def _start(self) -> bytes:
        if self.sent:
            return b""
        self.sent = True
        message: dict[str, Any] = {
            "id": message_id(self.request_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage(Usage()),
        }
        return sse(encode({"type": "message_start", "message": message}), "message_start")

    def _close_open(self) -> bytes:
        if self._open is None:
            return b""
        index = self._open[1]
        self._open = None
        return sse(encode({"type": "content_block_stop", "index": index}), "content_block_stop")

    def _block(self, key: str, block: dict[str, Any]) -> tuple[bytes, int]:
        """Open block *key* unless it is the open one: the bytes to send and its index."""
        out = self._start()
        if self._open is not None and self._open[0] == key:
            return out, self._open[1]
        out += self._close_open()
        index = self._blocks
        self._blocks += 1
        self._open = (key, index)
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return out + sse(encode(start), "content_block_start"), index

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": index, "delta": delta}
        return sse(encode(event), "content_block_delta")

    def event(self, event: StreamEvent) -> bytes | Failure:
        if isinstance(event, TextDelta):
            if not event.text:
                return b""
            out, index = self._block("text", {"type": "text", "text": ""})
            return out + self._delta(index, {"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            if not event.text:
                return b""
            out, index = self._block(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""}
            )
            return out + self._delta(index, {"type": "thinking_delta", "thinking": event.text})
        if isinstance(event, ToolCallDelta):
            known = self._tool_blocks.get(event.index)
            if known is None:
                block = {
                    "type": "tool_use",
                    "id": event.id or f"toolu_{self.request_id}_{event.index}",
                    "name": event.name or "",
                    "input": {},
                }
                out, known = self._block(f"tool:{event.index}", block)
                self._tool_blocks[event.index] = known
            else:
                out = b""
            if not event.arguments:
                return out
            return out + self._delta(
                known, {"type": "input_json_delta", "partial_json": event.arguments}
            )
        if isinstance(event, Restart) and self.sent:
            return restart_failure(event, self.request_id)
        return b""

    def finish(self, completion: Completion) -> bytes:
        """The end of a complete answer: the open block's stop, ``message_delta`` with the
        stop reason and the final usage, ``message_stop``."""
        out = self._start()
        if not self._blocks and not completion.tool_calls:
            out += self._block("text", {"type": "text", "text": ""})[0]
        out += self._close_open()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(completion.finish_reason), "stop_sequence": None},
            "usage": anthropic_usage(completion.usage),
        }
        out += sse(encode(delta), "message_delta")
        return out + sse(encode({"type": "message_stop"}), "message_stop")

    def error(self, error: WireError) -> bytes:
        """A failure after the stream started, as an ``error`` event."""
        return sse(error.anthropic_body(), "error")
