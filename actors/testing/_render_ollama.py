"""The fake provider's native Ollama dialect: parse ``/api/chat`` and ``/api/embed`` bodies and
render answers and errors shaped like an Ollama server (WIRE_FORMATS.md §4).

Streams are NDJSON (``application/x-ndjson``): one compact object per ``\\n``-terminated line,
``done: false`` chunks with one token each, then a final ``done: true`` line with
``done_reason``, ``prompt_eval_count`` / ``eval_count`` (input / output tokens) and durations
in nanoseconds (deterministic: 1 ms per prompt token, 10 ms per output token, 1 ms load).
``stream`` defaults to true, as in Ollama. Errors are ``{"error":"<string>"}``; an unknown path
gets Go's plain-text ``404 page not found``.

Ollama has no ``tool_choice``: the fake answers with a tool call whenever the request offers
tools and its last message is from the user (the first tool is called).
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
    rfc3339_nano,
)

_NDJSON: Final = "application/x-ndjson"
_JSON: Final = "application/json; charset=utf-8"


class OllamaRenderer:
    name: ProviderName = "ollama"

    def parse(self, endpoint: Endpoint, path_model: str, query: str, body: bytes) -> Parsed:
        obj = json_object(body)
        model = require_str(obj, "model", "model is required")
        if endpoint == "embed":
            raw = obj.get("input")
            if isinstance(raw, str):
                inputs: tuple[str, ...] = (raw,)
            elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
                inputs = tuple(raw)
            else:
                raise BadRequest("invalid input type")
            return Parsed(
                dialect="ollama",
                endpoint="embed",
                model=model,
                inputs=inputs,
                dimensions=optional_int(obj, "dimensions"),
            )
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages are required")
        pairs: list[tuple[str, str]] = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest("invalid message format")
            content = message.get("content", "")
            pairs.append((message["role"], content if isinstance(content, str) else ""))
        options = obj.get("options")
        max_tokens = optional_int(options, "num_predict") if isinstance(options, dict) else None
        tools = [
            t["function"]
            for t in obj.get("tools") or ()
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        tool = None
        if tools and pairs[-1][0] == "user":
            tool = ForcedTool(
                name=str(tools[0].get("name", "")), params=params_of(tools[0].get("parameters"))
            )
        return Parsed(
            dialect="ollama",
            endpoint="chat",
            model=model,
            stream=obj.get("stream", True) is not False,
            texts=tuple(text for _, text in pairs),
            prompt_key=prompt_key(pairs),
            max_tokens=max_tokens,
            last_role=pairs[-1][0],
            tool=tool,
        )

    def chat(self, req: Parsed, answer: Answer) -> Rendered:
        usage = answer.usage
        created = rfc3339_nano(answer.wall)
        prompt_ns = usage.input_tokens * 1_000_000
        eval_ns = usage.output_tokens * 10_000_000
        load_ns = 1_000_000

        def line(message: dict[str, Any], done: bool) -> dict[str, Any]:
            return {"model": answer.model, "created_at": created, "message": message, "done": done}

        final = line({"role": "assistant", "content": ""}, True)
        final.update(
            done_reason="length" if answer.finish == "length" else "stop",
            total_duration=prompt_ns + eval_ns + load_ns,
            load_duration=load_ns,
            prompt_eval_count=usage.input_tokens,
            prompt_eval_duration=prompt_ns,
            eval_count=usage.output_tokens,
            eval_duration=eval_ns,
        )
        call = answer.tool
        call_message: dict[str, Any] | None = None
        if call is not None:
            call_message = {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": call.name, "arguments": call.arguments}}],
            }
        if not req.stream:
            final["message"] = call_message or {"role": "assistant", "content": answer.text}
            return Rendered(
                status=200,
                headers=common_headers(_JSON, answer.wall),
                pieces=[Piece(compact(final), "body", tokens=usage.output_tokens, usage=True)],
                streamed=False,
            )
        pieces: list[Piece] = []
        if call_message is not None:
            data = compact(line(call_message, False)) + b"\n"
            pieces.append(Piece(data, "token", tokens=usage.output_tokens))
        else:
            for tok in answer.tokens:
                data = compact(line({"role": "assistant", "content": tok}, False)) + b"\n"
                pieces.append(Piece(data, "token", tokens=1))
        pieces.append(Piece(compact(final) + b"\n", "terminator", usage=True))
        return Rendered(
            status=200,
            headers=common_headers(_NDJSON, answer.wall),
            pieces=pieces,
            streamed=True,
        )

    def embed(
        self, req: Parsed, vectors: list[list[float]], *, request_id: str, wall: float
    ) -> Rendered:
        tokens = req.input_tokens
        body = {
            "model": req.model,
            "embeddings": vectors,
            "total_duration": 2_000_000 + tokens * 1_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": tokens,
        }
        return Rendered(
            status=200,
            headers=common_headers(_JSON, wall),
            pieces=[Piece(compact(body), "body", usage=True)],
            streamed=False,
        )

    def error(self, spec: ErrorSpec) -> Rendered:
        kind = spec.kind
        if kind == "not_found" and spec.param == "path":
            return Rendered(
                status=404,
                headers=common_headers("text/plain", spec.wall),
                pieces=[Piece(b"404 page not found", "body")],
                streamed=False,
            )
        if kind == "rate_limited":
            message = "too many requests, please try again later"
        elif kind == "server_error":
            if spec.status in (503, 529):
                message = "server busy, please try again.  maximum pending requests exceeded"
            else:
                message = "llama runner process has terminated: exit status 2"
        elif kind == "unauthorized":
            message = "unauthorized"
        elif kind == "context_length":
            message = "the input length exceeds the context length"
        elif kind == "content_filter":
            message = "the request was blocked by the content filter"
        elif kind == "prefill":
            message = (
                "this model does not support assistant prefill: "
                "the last message must be from the user"
            )
        elif kind == "not_found":
            message = spec.message or f"model '{spec.model}' not found"
        else:
            message = spec.message or "invalid request"
        return Rendered(
            status=spec.status,
            headers=common_headers(_JSON, spec.wall),
            pieces=[Piece(compact({"error": message}), "body")],
            streamed=False,
        )

    def malformed(self, req: Parsed, answer: Answer) -> bytes:
        created = rfc3339_nano(answer.wall)
        head = (
            f'{{"model":{json.dumps(answer.model)},"created_at":"{created}",'
            '"message":{"role":"assistant","content":"'
        )
        return head.encode() + b"\n"

    def stream_error(self, req: Parsed, answer: Answer) -> bytes:
        return compact({"error": "an error was encountered while running the model"}) + b"\n"

    def rate_limit_headers(self, snapshot: BudgetSnapshot, wall: float) -> Headers:
        return []


RENDERER: Final = OllamaRenderer()
