"""The fake provider's Gemini dialect: parse ``/v1beta/models/{model}:{action}`` bodies
(generateContent, streamGenerateContent, embedContent, batchEmbedContents) and render
answers and errors shaped like generativelanguage.googleapis.com (WIRE_FORMATS.md §3).

Streams with ``alt=sse`` are ``data: <json>`` segments separated by ``\\r\\n\\r\\n``, each a
whole GenerateContentResponse in the recorded ``"key": value`` style (no space after commas),
carrying that chunk's text and the cumulative ``usageMetadata``; the last chunk holds an empty
text part and the ``finishReason`` (a function call arrives whole, in one chunk that also ends
the stream, as recorded). Without ``alt=sse`` the same chunks are sent as one incrementally
delivered JSON array of pretty-printed objects. Non-streamed bodies and errors are
pretty-printed with 2 spaces; a 429 carries the retry delay in the body as ``RetryInfo``.

Both camelCase and snake_case request fields are accepted, as the REST API does.
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
    PieceRole,
    Rendered,
    common_headers,
    json_object,
    params_of,
    prompt_key,
    spec_window,
    strings_in,
)

_SSE: Final = "text/event-stream"
_JSON: Final = "application/json; charset=UTF-8"
_FINISH: Final = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _parts_text(content: Any) -> str:
    if not isinstance(content, dict):
        return ""
    out: list[str] = []
    for part in content.get("parts") or ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str) and not part.get("thought"):
            out.append(part["text"])
        response = _get(part, "functionResponse", "function_response")
        if isinstance(response, dict):
            out.extend(strings_in(response.get("response")))
    return " ".join(t for t in out if t)


def _forced_tool(body: dict[str, Any]) -> ForcedTool | None:
    decls: list[dict[str, Any]] = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            found = _get(tool, "functionDeclarations", "function_declarations") or ()
            decls += [d for d in found if isinstance(d, dict)]
    config = _get(body, "toolConfig", "tool_config")
    fcc = _get(config, "functionCallingConfig", "function_calling_config") if config else None
    if not decls or not isinstance(fcc, dict) or str(fcc.get("mode", "")).upper() != "ANY":
        return None
    allowed = _get(fcc, "allowedFunctionNames", "allowed_function_names") or ()
    decl = next((d for d in decls if d.get("name") in allowed), decls[0])
    schema = decl.get("parameters") or _get(decl, "parametersJsonSchema", "parameters_json_schema")
    return ForcedTool(name=str(decl.get("name", "")), params=params_of(schema))


def _sse_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ": "), ensure_ascii=False).encode()


def _pretty(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False).encode()


class GeminiRenderer:
    name: ProviderName = "gemini"

    def parse(self, endpoint: Endpoint, path_model: str, query: str, body: bytes) -> Parsed:
        obj = json_object(body)
        if endpoint == "embed":
            requests = obj.get("requests")
            batch = requests is not None
            if batch:
                if not isinstance(requests, list) or not requests:
                    raise BadRequest("* BatchEmbedContentsRequest.requests: requests is empty")
                items = [r for r in requests if isinstance(r, dict)]
            else:
                items = [obj]
            inputs = tuple(_parts_text(item.get("content")) for item in items)
            if not items or not all(isinstance(item.get("content"), dict) for item in items):
                raise BadRequest("* EmbedContentRequest.content: contents is not specified")
            dims = _get(items[0], "outputDimensionality", "output_dimensionality")
            return Parsed(
                dialect="gemini",
                endpoint="embed",
                model=path_model,
                inputs=inputs,
                dimensions=dims if isinstance(dims, int) and dims > 0 else None,
                batch=batch,
            )
        contents = obj.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
        pairs: list[tuple[str, str]] = []
        system = _parts_text(_get(obj, "systemInstruction", "system_instruction"))
        if system:
            pairs.append(("system", system))
        for content in contents:
            if not isinstance(content, dict):
                raise BadRequest("* GenerateContentRequest.contents: invalid content")
            role = content.get("role", "user")
            pairs.append(("assistant" if role == "model" else str(role), _parts_text(content)))
        gen = _get(obj, "generationConfig", "generation_config")
        max_tokens = _get(gen, "maxOutputTokens", "max_output_tokens") if gen else None
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise BadRequest(
                "* GenerateContentRequest.generation_config.max_output_tokens: invalid"
            )
        return Parsed(
            dialect="gemini",
            endpoint="chat",
            model=path_model,
            texts=tuple(text for _, text in pairs),
            prompt_key=prompt_key(pairs),
            max_tokens=max_tokens,
            last_role=pairs[-1][0],
            tool=_forced_tool(obj),
            sse="alt=sse" in query.split("&"),
        )

    def _headers(self, content_type: str, wall: float) -> Headers:
        return [
            *common_headers(content_type, wall),
            ("vary", "Origin"),
            ("vary", "X-Origin"),
            ("vary", "Referer"),
            ("server", "scaffolding on HTTPServer2"),
            ("server-timing", "gfet4t7; dur=42"),
        ]

    def chat(self, req: Parsed, answer: Answer) -> Rendered:
        usage = answer.usage
        rid = answer.response_id

        def usage_meta(out_tokens: int) -> dict[str, Any]:
            meta: dict[str, Any] = {
                "promptTokenCount": usage.input_tokens,
                "candidatesTokenCount": out_tokens,
                "totalTokenCount": usage.input_tokens + out_tokens,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": usage.input_tokens}],
            }
            return meta

        def response(parts: list[Any], out_tokens: int, finish: str | None) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
            if finish is not None:
                candidate["finishReason"] = finish
                candidate["index"] = 0
            return {
                "candidates": [candidate],
                "usageMetadata": usage_meta(out_tokens),
                "modelVersion": answer.model,
                "responseId": rid,
            }

        finish = _FINISH[answer.finish]
        call = answer.tool
        call_part = {"functionCall": {"name": call.name, "args": call.arguments}} if call else None
        if not req.stream:
            parts = [call_part] if call_part else [{"text": answer.text}]
            body = response(parts, usage.output_tokens, finish)
            return Rendered(
                status=200,
                headers=self._headers(_JSON, answer.wall),
                pieces=[Piece(_pretty(body), "body", tokens=usage.output_tokens, usage=True)],
                streamed=False,
            )
        objects: list[tuple[dict[str, Any], PieceRole, int, bool]] = []
        if call_part is not None:
            objects.append(
                (
                    response([call_part], usage.output_tokens, finish),
                    "terminator",
                    usage.output_tokens,
                    True,
                )
            )
        else:
            for i, tok in enumerate(answer.tokens):
                objects.append((response([{"text": tok}], i + 1, None), "token", 1, False))
            final = response([{"text": ""}], usage.output_tokens, finish)
            objects.append((final, "terminator", 0, True))
        pieces: list[Piece] = []
        if req.sse:
            for obj, role, tokens, carries in objects:
                data = b"data: " + _sse_json(obj) + b"\r\n\r\n"
                pieces.append(Piece(data, role, tokens=tokens, usage=carries))
            content_type = _SSE
        else:
            for i, (obj, role, tokens, carries) in enumerate(objects):
                data = (b"[" if i == 0 else b"\n,\r\n") + _pretty(obj)
                if i == len(objects) - 1:
                    data += b"\n]"
                pieces.append(Piece(data, role, tokens=tokens, usage=carries))
            content_type = _JSON
        return Rendered(
            status=200,
            headers=self._headers(content_type, answer.wall),
            pieces=pieces,
            streamed=True,
        )

    def embed(
        self, req: Parsed, vectors: list[list[float]], *, request_id: str, wall: float
    ) -> Rendered:
        if req.batch:
            body: dict[str, Any] = {"embeddings": [{"values": v} for v in vectors]}
        else:
            body = {"embedding": {"values": vectors[0]}}
        return Rendered(
            status=200,
            headers=self._headers(_JSON, wall),
            # Gemini's embedding responses carry no usage, so none is reported here.
            pieces=[Piece(_pretty(body), "body")],
            streamed=False,
        )

    def error(self, spec: ErrorSpec) -> Rendered:
        kind = spec.kind
        status = spec.status
        details: list[dict[str, Any]] = []
        if kind == "rate_limited":
            message = (
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, head to: "
                "https://ai.google.dev/gemini-api/docs/rate-limits."
            )
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                            "quotaDimensions": {"location": "global", "model": spec.model},
                        }
                    ],
                }
            )
            if spec.retry_after is not None:
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{spec.retry_after:g}s",
                    }
                )
        elif kind == "server_error":
            if _STATUS.get(status) == "UNAVAILABLE":
                message = "The model is overloaded. Please try again later."
            elif status == 504:
                message = "The request timed out. Please try again."
            else:
                message = (
                    "An internal error has occurred. Please retry or report in "
                    "https://developers.generativeai.google/guide/troubleshooting"
                )
        elif kind == "unauthorized":
            message = "API key not valid. Please pass a valid API key."
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            )
        elif kind == "context_length":
            message = (
                f"The input token count ({spec.input_tokens}) exceeds the maximum number of "
                f"tokens allowed ({spec_window(spec)})."
            )
        elif kind == "content_filter":
            message = "The request was blocked by the safety filter: the prompt violates policy."
        elif kind == "prefill":
            message = (
                "This model does not support assistant prefill: the last content must have "
                "role user."
            )
        elif kind == "not_found" and spec.param != "path":
            message = (
                f"models/{spec.model} is not found for API version v1beta, or is not "
                "supported for generateContent. Call ModelService.ListModels to see the list "
                "of available models and their supported methods."
            )
        else:
            message = spec.message or "Invalid request."
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": _STATUS.get(status, "UNKNOWN"),
        }
        if details:
            error["details"] = details
        return Rendered(
            status=status,
            headers=self._headers(_JSON, spec.wall),
            pieces=[Piece(_pretty({"error": error}) + b"\n", "body")],
            streamed=False,
        )

    def malformed(self, req: Parsed, answer: Answer) -> bytes:
        if not req.sse:
            return b'\n,\r\n{\n  "candidates": [\n    {\n      "content": {\n        "parts": ['
        return b'data: {"candidates": [{"content": {"parts": [{"text": "\r\n\r\n'

    def stream_error(self, req: Parsed, answer: Answer) -> bytes:
        error = {
            "error": {
                "code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE",
            }
        }
        if not req.sse:
            return b"\n,\r\n" + _pretty(error) + b"\n]"
        return b"data: " + _sse_json(error) + b"\r\n\r\n"

    def rate_limit_headers(self, snapshot: BudgetSnapshot, wall: float) -> Headers:
        return []


RENDERER: Final = GeminiRenderer()
