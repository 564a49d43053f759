"""The fake provider's OpenAI dialect: parse ``/v1/chat/completions`` and ``/v1/embeddings``
bodies and render answers and errors byte-shaped like api.openai.com.

Shapes follow the recordings (see WIRE_FORMATS.md §1): stream chunks are compact
``data: {...}\\n\\n`` events whose first delta is ``{"role":"assistant","content":"",
"refusal":null}``, the finish reason comes on its own chunk with ``delta: {}``, a
``choices: []`` usage chunk follows when ``stream_options.include_usage`` is set (and every
other chunk then carries ``"usage": null``, as in the 2025 recordings), and ``data: [DONE]``
ends the stream. Non-streamed bodies are pretty-printed with 2 spaces (as the live API does);
error bodies with 4 spaces and a trailing newline (the verbatim 404 recording).

One deliberate choice: a 503/529 error carries ``type: "service_unavailable_error"`` rather
than ``server_error``, so a classifier that trusts the error type (ours does) sees an
overloaded provider, which is what the status says.
"""

from __future__ import annotations

import base64
import json
import struct
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
    go_duration,
    json_object,
    optional_int,
    params_of,
    prompt_key,
    require_str,
    spec_window,
)

_FINGERPRINT: Final = "fp_fake0000001"
_SSE: Final = "text/event-stream; charset=utf-8"
_JSON: Final = "application/json"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _forced_tool(body: dict[str, Any]) -> ForcedTool | None:
    tools = [
        t["function"]
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if not tools or choice in (None, "auto", "none"):
        return None
    wanted: str | None = None
    if isinstance(choice, dict):
        fn = choice.get("function")
        wanted = fn.get("name") if isinstance(fn, dict) else None
    elif choice != "required":
        return None
    tool = next((t for t in tools if t.get("name") == wanted), tools[0])
    return ForcedTool(name=str(tool.get("name", "")), params=params_of(tool.get("parameters")))


def _frame(obj: Any) -> bytes:
    return b"data: " + compact(obj) + b"\n\n"


class OpenAIRenderer:
    name: ProviderName = "openai"

    def parse(self, endpoint: Endpoint, path_model: str, query: str, body: bytes) -> Parsed:
        obj = json_object(body)
        model = require_str(obj, "model", "you must provide a model parameter")
        if endpoint == "embed":
            raw = obj.get("input")
            if isinstance(raw, str):
                inputs: tuple[str, ...] = (raw,)
            elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
                inputs = tuple(raw)
            elif isinstance(raw, list) and raw:
                inputs = tuple(
                    " ".join(str(t) for t in x) if isinstance(x, list) else str(x) for x in raw
                )
            else:
                raise BadRequest("'input' must be a string or a non-empty array", param="input")
            fmt = obj.get("encoding_format", "float")
            return Parsed(
                dialect="openai",
                endpoint="embed",
                model=model,
                inputs=inputs,
                dimensions=optional_int(obj, "dimensions"),
                encoding_format=fmt if fmt in ("float", "base64") else "float",
            )
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("Missing required parameter: 'messages'.", param="messages")
        pairs: list[tuple[str, str]] = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest("Invalid value for 'messages'.", param="messages")
            pairs.append((message["role"], _content_text(message.get("content"))))
        options = obj.get("stream_options")
        return Parsed(
            dialect="openai",
            endpoint="chat",
            model=model,
            stream=obj.get("stream") is True,
            texts=tuple(text for _, text in pairs),
            prompt_key=prompt_key(pairs),
            max_tokens=optional_int(obj, "max_completion_tokens", "max_tokens"),
            last_role=pairs[-1][0],
            tool=_forced_tool(obj),
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        )

    # -- healthy answers -------------------------------------------------------------------

    def _headers(self, content_type: str, request_id: str, wall: float) -> Headers:
        return [
            *common_headers(content_type, wall),
            ("x-request-id", f"req_{request_id}"),
            ("openai-version", "2020-10-01"),
            ("openai-processing-ms", "42"),
        ]

    def chat(self, req: Parsed, answer: Answer) -> Rendered:
        created = int(answer.wall)
        rid = f"chatcmpl-{answer.response_id}"
        usage = {
            "prompt_tokens": answer.usage.input_tokens,
            "completion_tokens": answer.usage.output_tokens,
            "total_tokens": answer.usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        call = answer.tool
        if not req.stream:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if call else answer.text,
                "refusal": None,
                "annotations": [],
            }
            if call is not None:
                message["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    }
                ]
            body = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": answer.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": answer.finish,
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": _FINGERPRINT,
            }
            data = json.dumps(body, indent=2, ensure_ascii=False).encode()
            return Rendered(
                status=200,
                headers=self._headers(_JSON, answer.request_id, answer.wall),
                pieces=[Piece(data, "body", tokens=answer.usage.output_tokens, usage=True)],
                streamed=False,
            )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": answer.model,
                "system_fingerprint": _FINGERPRINT,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if req.include_usage:
                obj["usage"] = None
            return _frame(obj)

        pieces: list[Piece] = []
        if call is None:
            pieces.append(
                Piece(chunk({"role": "assistant", "content": "", "refusal": None}), "prelude")
            )
            pieces += [Piece(chunk({"content": tok}), "token", tokens=1) for tok in answer.tokens]
        else:
            first = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ],
                "refusal": None,
            }
            pieces.append(Piece(chunk(first), "token", tokens=1))
            pieces += [
                Piece(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
                    "token",
                    tokens=1,
                )
                for frag in call.fragments()
            ]
        pieces.append(Piece(chunk({}, answer.finish), "finale"))
        if req.include_usage:
            final = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": answer.model,
                "system_fingerprint": _FINGERPRINT,
                "choices": [],
                "usage": usage,
            }
            pieces.append(Piece(_frame(final), "finale", usage=True))
        pieces.append(Piece(b"data: [DONE]\n\n", "terminator"))
        return Rendered(
            status=200,
            headers=self._headers(_SSE, answer.request_id, answer.wall),
            pieces=pieces,
            streamed=True,
        )

    def embed(
        self, req: Parsed, vectors: list[list[float]], *, request_id: str, wall: float
    ) -> Rendered:
        data: list[dict[str, Any]] = []
        for i, vector in enumerate(vectors):
            embedding: list[float] | str = vector
            if req.encoding_format == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = req.input_tokens
        body = {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        raw = json.dumps(body, indent=2).encode()
        return Rendered(
            status=200,
            headers=self._headers(_JSON, request_id, wall),
            pieces=[Piece(raw, "body", usage=True)],
            streamed=False,
        )

    # -- errors ----------------------------------------------------------------------------

    def error(self, spec: ErrorSpec) -> Rendered:
        type_: str | None = "invalid_request_error"
        param, code = spec.param, None
        kind = spec.kind
        if kind == "rate_limited":
            wait = f" Please try again in {spec.retry_after:g}s." if spec.retry_after else ""
            message = (
                f"Rate limit reached for {spec.model or 'this model'} in organization "
                f"org-fakeprovider on requests per min (RPM).{wait} Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
            type_, code = "requests", "rate_limit_exceeded"
        elif kind == "server_error":
            if spec.status in (503, 529):
                message = "The engine is currently overloaded, please try again later."
                type_ = "service_unavailable_error"
            else:
                message = "The server had an error while processing your request. Sorry about that!"
                type_ = "server_error"
        elif kind == "unauthorized":
            message = (
                "Incorrect API key provided: sk-fake***. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            code = "invalid_api_key"
        elif kind == "context_length":
            message = (
                f"This model's maximum context length is {spec_window(spec)} tokens. However, "
                f"your messages resulted in {spec.input_tokens} tokens. Please reduce the "
                "length of the messages."
            )
            param, code = "messages", "context_length_exceeded"
        elif kind == "content_filter":
            message = (
                "The response was filtered due to the prompt triggering the content "
                "management policy. Please modify your prompt and retry."
            )
            param, code = "prompt", "content_filter"
        elif kind == "prefill":
            message = (
                "This model does not support assistant message prefill. The conversation "
                "must end with a user message."
            )
            param, code = "messages", "unsupported_value"
        else:
            message = spec.message or "Invalid request."
            if kind == "not_found" and spec.model and spec.param != "path":
                code = "model_not_found"
            if spec.param == "path":
                param = None
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        data = (json.dumps(body, indent=4, ensure_ascii=False) + "\n").encode()
        return Rendered(
            status=spec.status,
            headers=self._headers(_JSON, spec.request_id, spec.wall),
            pieces=[Piece(data, "body")],
            streamed=False,
        )

    def malformed(self, req: Parsed, answer: Answer) -> bytes:
        head = (
            f'data: {{"id":"chatcmpl-{answer.response_id}","object":"chat.completion.chunk",'
            f'"created":{int(answer.wall)},"model":{json.dumps(answer.model)},'
            '"choices":[{"index":0,"delta":{"content":"'
        )
        return head.encode() + b"\n\n"

    def stream_error(self, req: Parsed, answer: Answer) -> bytes:
        error = {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        return _frame({"error": error})

    def rate_limit_headers(self, snapshot: BudgetSnapshot, wall: float) -> Headers:
        out: Headers = []
        reset = go_duration(snapshot.reset_in)
        if snapshot.limit_requests is not None:
            out += [
                ("x-ratelimit-limit-requests", str(snapshot.limit_requests)),
                ("x-ratelimit-remaining-requests", str(snapshot.remaining_requests)),
                ("x-ratelimit-reset-requests", reset),
            ]
        if snapshot.limit_tokens is not None:
            out += [
                ("x-ratelimit-limit-tokens", str(snapshot.limit_tokens)),
                ("x-ratelimit-remaining-tokens", str(snapshot.remaining_tokens)),
                ("x-ratelimit-reset-tokens", reset),
            ]
        return out


RENDERER: Final = OpenAIRenderer()
