"""The fake provider's Anthropic dialect: parse ``/v1/messages`` bodies and render answers and
errors shaped like api.anthropic.com (WIRE_FORMATS.md §2).

Streams follow the recorded event order: ``message_start`` (usage with the input tokens and
``output_tokens: 1``, as the live API reports), ``content_block_start``, a ``ping`` (data
``{"type": "ping"}`` with its space), one ``content_block_delta`` per token,
``content_block_stop``, ``message_delta`` with the cumulative usage, ``message_stop``. Every
event has its ``event:`` line. Bodies are compact JSON; errors are
``{"type":"error","error":{...},"request_id":...}`` with ``x-should-retry``. Rate-limit
headers are ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` with RFC 3339
resets computed from the wall clock.

Anthropic has no embeddings API: the core answers ``/v1/embeddings``-style requests for this
dialect with a 404 before they get here.
"""

from __future__ import annotations

import json
from typing import Any, Final

from protocol._config import ProviderName

from ._faults import Endpoint
from ._render import (
    Answer,
    BadRequest,
    BudgetSnapshot,
    ErrorSpec,
    ForcedTool,
    Headers,
    Parsed,
    Piece,
    Rendered,
    common_headers,
    compact,
    json_object,
    optional_int,
    params_of,
    prompt_key,
    require_str,
    rfc3339,
    spec_window,
)

_SSE: Final = "text/event-stream; charset=utf-8"
_JSON: Final = "application/json"
_STOP: Final = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    out: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            out.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            out.append(_block_text(block.get("content")))
    return " ".join(t for t in out if t)


def _forced_tool(body: dict[str, Any]) -> ForcedTool | None:
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if not tools or not isinstance(choice, dict) or choice.get("type") not in ("any", "tool"):
        return None
    wanted = choice.get("name") if choice.get("type") == "tool" else None
    tool = next((t for t in tools if t.get("name") == wanted), tools[0])
    return ForcedTool(name=str(tool.get("name", "")), params=params_of(tool.get("input_schema")))


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + compact(obj) + b"\n\n"


class AnthropicRenderer:
    name: ProviderName = "anthropic"

    def parse(self, endpoint: Endpoint, path_model: str, query: str, body: bytes) -> Parsed:
        obj = json_object(body)
        model = require_str(obj, "model", "model: Field required")
        if obj.get("max_tokens") is None:
            raise BadRequest("max_tokens: Field required", param="max_tokens")
        max_tokens = optional_int(obj, "max_tokens")
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: Field required", param="messages")
        pairs: list[tuple[str, str]] = []
        system = _block_text(obj.get("system"))
        if system:
            pairs.append(("system", system))
        for message in messages:
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                raise BadRequest(
                    "messages: Input tag found using 'role' does not match any of the expected "
                    "tags: 'assistant', 'user'",
                    param="messages",
                )
            assert isinstance(message, dict)
            pairs.append((role, _block_text(message.get("content"))))
        return Parsed(
            dialect="anthropic",
            endpoint="chat",
            model=model,
            stream=obj.get("stream") is True,
            texts=tuple(text for _, text in pairs),
            prompt_key=prompt_key(pairs),
            max_tokens=max_tokens,
            last_role=pairs[-1][0],
            tool=_forced_tool(obj),
        )

    def _headers(self, content_type: str, request_id: str, wall: float) -> Headers:
        return [
            *common_headers(content_type, wall),
            ("request-id", f"req_{request_id}"),
            ("anthropic-organization-id", "00000000-0000-4000-8000-000000000000"),
        ]

    def chat(self, req: Parsed, answer: Answer) -> Rendered:
        usage = answer.usage
        stop = _STOP[answer.finish]
        call = answer.tool
        if not req.stream:
            content: list[dict[str, Any]]
            if call is None:
                content = [{"type": "text", "text": answer.text}]
            else:
                content = [
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": call.arguments,
                        "caller": {"type": "direct"},
                    }
                ]
            body = {
                "model": answer.model,
                "id": f"msg_{answer.response_id}",
                "type": "message",
                "role": "assistant",
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": usage.output_tokens,
                    "service_tier": "standard",
                },
            }
            return Rendered(
                status=200,
                headers=self._headers(_JSON, answer.request_id, answer.wall),
                pieces=[Piece(compact(body), "body", tokens=usage.output_tokens, usage=True)],
                streamed=False,
            )
        start = {
            "type": "message_start",
            "message": {
                "model": answer.model,
                "id": f"msg_{answer.response_id}",
                "type": "message",
                "role": "assistant",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": min(1, usage.output_tokens),
                    "service_tier": "standard",
                },
            },
        }
        pieces = [Piece(_event("message_start", start), "prelude")]
        if call is None:
            block = {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
            pieces.append(Piece(_event("content_block_start", block), "prelude"))
            pieces.append(Piece(b'event: ping\ndata: {"type": "ping"}\n\n', "prelude"))
            for tok in answer.tokens:
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": tok},
                }
                pieces.append(Piece(_event("content_block_delta", delta), "token", tokens=1))
        else:
            block = {
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "caller": {"type": "direct"},
                    "input": {},
                },
            }
            pieces.append(Piece(_event("content_block_start", block), "token", tokens=1))
            for frag in call.fragments():
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": frag},
                }
                pieces.append(Piece(_event("content_block_delta", delta), "token", tokens=1))
        stop_block = {"type": "content_block_stop", "index": 0}
        pieces.append(Piece(_event("content_block_stop", stop_block), "finale"))
        delta_msg = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {
                "input_tokens": usage.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": usage.output_tokens,
            },
        }
        pieces.append(Piece(_event("message_delta", delta_msg), "finale", usage=True))
        pieces.append(Piece(_event("message_stop", {"type": "message_stop"}), "terminator"))
        return Rendered(
            status=200,
            headers=self._headers(_SSE, answer.request_id, answer.wall),
            pieces=pieces,
            streamed=True,
        )

    def embed(
        self, req: Parsed, vectors: list[list[float]], *, request_id: str, wall: float
    ) -> Rendered:
        raise NotImplementedError("Anthropic has no embeddings API")

    def error(self, spec: ErrorSpec) -> Rendered:
        kind = spec.kind
        type_ = "invalid_request_error"
        if kind == "rate_limited":
            type_ = "rate_limit_error"
            message = (
                "This request would exceed your organization's rate limit of requests per "
                f"minute (model: {spec.model}). For details, refer to: "
                "https://docs.claude.com/en/api/rate-limits. You can see the response headers "
                "for current usage. Please reduce the prompt length or the maximum tokens "
                "requested, or try again later."
            )
        elif kind == "server_error":
            if spec.status in (503, 529):
                type_, message = "overloaded_error", "Overloaded"
            elif spec.status == 504:
                type_, message = "timeout_error", "Request timeout"
            else:
                type_, message = "api_error", "Internal server error"
        elif kind == "unauthorized":
            type_, message = "authentication_error", "invalid x-api-key"
        elif kind == "context_length":
            message = (
                f"prompt is too long: {spec.input_tokens} tokens > {spec_window(spec)} maximum"
            )
        elif kind == "content_filter":
            message = "Output blocked by content filtering policy"
        elif kind == "prefill":
            message = (
                "This model does not support assistant message prefill. The conversation must "
                "end with a user message."
            )
        elif kind == "not_found":
            type_, message = "not_found_error", spec.message or "Not Found"
        else:
            message = spec.message or "Invalid request"
        body = {
            "type": "error",
            "error": {"type": type_, "message": message},
            "request_id": f"req_{spec.request_id}",
        }
        retry = spec.status == 429 or spec.status >= 500
        return Rendered(
            status=spec.status,
            headers=[
                *self._headers(_JSON, spec.request_id, spec.wall),
                ("x-should-retry", "true" if retry else "false"),
            ],
            pieces=[Piece(compact(body), "body")],
            streamed=False,
        )

    def malformed(self, req: Parsed, answer: Answer) -> bytes:
        return (
            b"event: content_block_delta\n"
            b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
            b"\n\n"
        )

    def stream_error(self, req: Parsed, answer: Answer) -> bytes:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"

    def rate_limit_headers(self, snapshot: BudgetSnapshot, wall: float) -> Headers:
        out: Headers = []
        reset = rfc3339(wall + snapshot.reset_in)
        if snapshot.limit_requests is not None:
            out += [
                ("anthropic-ratelimit-requests-limit", str(snapshot.limit_requests)),
                ("anthropic-ratelimit-requests-remaining", str(snapshot.remaining_requests)),
                ("anthropic-ratelimit-requests-reset", reset),
            ]
        if snapshot.limit_tokens is not None:
            out += [
                ("anthropic-ratelimit-tokens-limit", str(snapshot.limit_tokens)),
                ("anthropic-ratelimit-tokens-remaining", str(snapshot.remaining_tokens)),
                ("anthropic-ratelimit-tokens-reset", reset),
            ]
        return out


RENDERER: Final = AnthropicRenderer()
