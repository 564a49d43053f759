"""ProviderCore, driven directly (sans-IO): routing, parsing, healthy answers per dialect,
exact usage, budget windows and headers, the attempt log and its bookkeeping on `finish`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actors.testing._core import ProviderCore
from actors.testing._faults import (
    Budget,
    FaultPlan,
    Latency,
    NoResponse,
    ResetBeforeHeaders,
    Rule,
    ServerError,
    StreamCut,
)
from actors.testing._render import go_duration, route
from actors.testing._script import Chunk, Hang, Head, Pause, Reset, Script
from actors.testing._textgen import VOCABULARY, count_words
from protocol._ratelimit import parse_duration, parse_rate_limit_headers

WALL = 1_700_000_000.0
USER = [{"role": "user", "content": "say something nice"}]


def ask(
    core: ProviderCore,
    path: str,
    body: Any,
    *,
    query: str = "",
    now: float = 0.0,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Script:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return core.respond(
        method=method,
        path=path,
        query=query,
        headers=headers or {"content-type": "application/json"},
        body=raw,
        now=now,
        wall=WALL + now,
    )


def head(script: Script) -> Head:
    found = [s for s in script.steps if isinstance(s, Head)]
    assert len(found) == 1, script.steps
    return found[0]


def body(script: Script) -> bytes:
    return b"".join(s.data for s in script.steps if isinstance(s, Chunk))


def header(script: Script, name: str) -> str | None:
    values = [v for k, v in head(script).headers if k == name]
    return values[0] if values else None


# Request bodies in each dialect, for the same conversation.
def openai_chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": USER, **extra}


def anthropic_chat(**extra: Any) -> dict[str, Any]:
    return {"model": "claude", "max_tokens": 100, "messages": USER, **extra}


def gemini_chat(**extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "say something nice"}]}], **extra}


def ollama_chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3", "messages": USER, **extra}


GEMINI = "/v1beta/models/gemini-2.0-flash:generateContent"
GEMINI_STREAM = "/v1beta/models/gemini-2.0-flash:streamGenerateContent"


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/chat/completions", ("openai", "chat", "", False)),
        ("POST", "/v1/embeddings", ("openai", "embed", "", False)),
        ("POST", "/v1/messages", ("anthropic", "chat", "", False)),
        ("POST", GEMINI, ("gemini", "chat", "gemini-2.0-flash", False)),
        ("POST", GEMINI_STREAM, ("gemini", "chat", "gemini-2.0-flash", True)),
        ("POST", "/v1beta/models/e:embedContent", ("gemini", "embed", "e", False)),
        ("POST", "/v1beta/models/e:batchEmbedContents", ("gemini", "embed", "e", False)),
        ("POST", "/api/chat", ("ollama", "chat", "", False)),
        ("POST", "/api/embed", ("ollama", "embed", "", False)),
        ("GET", "/v1/chat/completions", None),
        ("POST", "/v1/completions", None),
        ("POST", "/v1beta/models/x:countTokens", None),
    ],
)
def test_route(method: str, path: str, expected: tuple[str, str, str, bool] | None) -> None:
    found = route(method, path)
    assert (tuple(found) if found else None) == expected


@pytest.mark.parametrize(
    ("path", "headers", "status", "shape"),
    [
        ("/v1/nope", {}, 404, "openai"),
        ("/v1/nope", {"anthropic-version": "2023-06-01"}, 404, "anthropic"),
        ("/v1beta/models", {}, 404, "gemini"),
        ("/api/generate", {}, 404, "ollama"),
    ],
)
def test_unknown_path_is_a_404_in_the_dialect_it_resembles(
    path: str, headers: dict[str, str], status: int, shape: str
) -> None:
    core = ProviderCore()
    script = ask(core, path, {}, headers=headers)
    assert head(script).status == status
    raw = body(script)
    if shape == "openai":
        assert json.loads(raw) == {
            "error": {
                "message": f"Invalid URL (POST {path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        assert raw.startswith(b'{\n    "error": {\n        "message"')
        assert raw.endswith(b"}\n")
    elif shape == "anthropic":
        obj = json.loads(raw)
        assert obj["type"] == "error"
        assert obj["error"]["type"] == "not_found_error"
        assert obj["request_id"].startswith("req_")
    elif shape == "gemini":
        assert json.loads(raw)["error"]["status"] == "NOT_FOUND"
    else:
        assert raw == b"404 page not found"
    assert core.attempts[0].fault == "not_found"
    assert core.attempts[0].status == 404


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("/v1/chat/completions", b"{not json", "not valid JSON"),
        ("/v1/chat/completions", b'{"messages": []}', "you must provide a model parameter"),
        ("/v1/chat/completions", b'{"model": "m"}', "Missing required parameter: 'messages'."),
        ("/v1/messages", b'{"model": "c", "messages": []}', "max_tokens: Field required"),
        (GEMINI, b"[]", "must be a JSON object"),
        (GEMINI, b"{}", "contents is not specified"),
        ("/api/chat", b'{"messages": []}', "model is required"),
        ("/v1/embeddings", b'{"model": "e", "input": 3}', "'input' must be"),
    ],
)
def test_unparseable_body_is_a_400_in_the_dialects_shape(
    path: str, raw: bytes, message: str
) -> None:
    core = ProviderCore()
    script = ask(core, path, raw)
    assert head(script).status == 400
    obj = json.loads(body(script))
    error = obj["error"]
    text = error if isinstance(error, str) else error["message"]
    assert message in text
    assert core.attempts[0].fault == "bad_request"


# --------------------------------------------------------------------------- healthy answers


def test_same_request_same_answer_and_seed_changes_it() -> None:
    a, b, c = ProviderCore(seed=1), ProviderCore(seed=1), ProviderCore(seed=2)
    texts = [json.loads(body(ask(x, "/v1/chat/completions", openai_chat()))) for x in (a, b, c)]
    first = texts[0]["choices"][0]["message"]["content"]
    assert first == texts[1]["choices"][0]["message"]["content"]
    assert first != texts[2]["choices"][0]["message"]["content"]
    # A retry on the same core gets the same text too.
    again = json.loads(body(ask(a, "/v1/chat/completions", openai_chat())))
    assert again["choices"][0]["message"]["content"] == first
    # The plan's seed is the default seed.
    d = ProviderCore(FaultPlan(seed=1))
    other = json.loads(body(ask(d, "/v1/chat/completions", openai_chat())))
    assert other["choices"][0]["message"]["content"] == first


def test_answer_is_answer_tokens_vocabulary_words() -> None:
    core = ProviderCore(answer_tokens=5)
    obj = json.loads(body(ask(core, "/v1/chat/completions", openai_chat())))
    words = obj["choices"][0]["message"]["content"].rstrip(".").lower().split()
    assert len(words) == 5
    assert all(w in VOCABULARY for w in words)
    assert obj["usage"]["completion_tokens"] == 5


def test_input_tokens_count_words_of_every_text() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}],
        },
        {"role": "assistant", "content": "ok  then"},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny 20C"},
    ]  # fmt: skip
    core = ProviderCore()
    obj = json.loads(body(ask(core, "/v1/chat/completions", openai_chat(messages=messages))))
    assert obj["usage"]["prompt_tokens"] == 2 + 3 + 2 + 2
    assert count_words(["be brief", "one two three"]) == 5
    # Anthropic: the top-level system counts too, and tool_result contents.
    anthropic = {
        "model": "c",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {"role": "user", "content": "one two three"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "sunny 20C"}],
            },
        ],
    }  # fmt: skip
    obj = json.loads(body(ask(core, "/v1/messages", anthropic)))
    assert obj["usage"]["input_tokens"] == 2 + 3 + 2


@pytest.mark.parametrize("limit", [1, 3])
def test_max_tokens_truncates_with_the_dialects_length_reason(limit: int) -> None:
    core = ProviderCore(answer_tokens=6)
    full = json.loads(body(ask(core, "/v1/chat/completions", openai_chat())))
    full_text = full["choices"][0]["message"]["content"]

    oa = json.loads(
        body(ask(core, "/v1/chat/completions", openai_chat(max_completion_tokens=limit)))
    )
    assert oa["choices"][0]["finish_reason"] == "length"
    assert oa["usage"]["completion_tokens"] == limit
    assert full_text.startswith(oa["choices"][0]["message"]["content"])

    an = json.loads(body(ask(core, "/v1/messages", anthropic_chat(max_tokens=limit))))
    assert an["stop_reason"] == "max_tokens"
    assert an["usage"]["output_tokens"] == limit

    ge = json.loads(
        body(ask(core, GEMINI, gemini_chat(generationConfig={"maxOutputTokens": limit})))
    )
    assert ge["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert ge["usageMetadata"]["candidatesTokenCount"] == limit

    ol = json.loads(
        body(ask(core, "/api/chat", ollama_chat(stream=False, options={"num_predict": limit})))
    )
    assert ol["done_reason"] == "length"
    assert ol["eval_count"] == limit
    # Not truncated: the natural reasons.
    assert full["choices"][0]["finish_reason"] == "stop"


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
}


def test_forced_tool_call_in_every_dialect() -> None:
    core = ProviderCore()
    oa_tools = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}]
    oa = json.loads(
        body(
            ask(
                core,
                "/v1/chat/completions",
                openai_chat(model="m", tools=oa_tools, tool_choice="required"),
            )
        )
    )
    choice = oa["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    args = json.loads(call["function"]["arguments"])
    assert call["function"]["name"] == "weather"
    assert call["id"].startswith("call_")
    assert isinstance(args["city"], str)
    assert isinstance(args["days"], int)
    assert oa["usage"]["completion_tokens"] == 1 + 2  # the name + one per argument

    auto = json.loads(body(ask(core, "/v1/chat/completions", openai_chat(tools=oa_tools))))
    assert auto["choices"][0]["finish_reason"] == "stop"

    an_tools = [{"name": "weather", "input_schema": WEATHER}]
    an = json.loads(
        body(
            ask(
                core,
                "/v1/messages",
                anthropic_chat(model="m", tools=an_tools, tool_choice={"type": "any"}),
            )
        )
    )
    assert an["stop_reason"] == "tool_use"
    assert an["content"][0]["type"] == "tool_use"
    assert an["content"][0]["input"] == args

    ge_tools = [{"functionDeclarations": [{"name": "weather", "parameters": WEATHER}]}]
    config = {"functionCallingConfig": {"mode": "ANY"}}
    gemini_m = "/v1beta/models/m:generateContent"
    ge = json.loads(body(ask(core, gemini_m, gemini_chat(tools=ge_tools, toolConfig=config))))
    part = ge["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "weather", "args": args}}
    assert ge["candidates"][0]["finishReason"] == "STOP"

    ol = json.loads(
        body(ask(core, "/api/chat", ollama_chat(model="m", stream=False, tools=oa_tools)))
    )
    assert ol["message"]["tool_calls"] == [{"function": {"name": "weather", "arguments": args}}]
    assert ol["eval_count"] == 3


def test_embeddings_are_deterministic_with_usage() -> None:
    core = ProviderCore(embedding_dimensions=4)
    oa = json.loads(body(ask(core, "/v1/embeddings", {"model": "e", "input": ["a b", "c"]})))
    assert [len(d["embedding"]) for d in oa["data"]] == [4, 4]
    assert oa["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    again = json.loads(body(ask(core, "/api/embed", {"model": "e", "input": ["a b", "c"]})))
    assert again["embeddings"] == [d["embedding"] for d in oa["data"]]
    assert again["prompt_eval_count"] == 3
    one = {"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 3}
    sized = json.loads(body(ask(core, "/v1beta/models/e:embedContent", one)))
    assert len(sized["embedding"]["values"]) == 3
    batch = {
        "requests": [
            {"model": "models/e", "content": {"parts": [{"text": "a b"}]}},
            {"model": "models/e", "content": {"parts": [{"text": "c"}]}},
        ]
    }
    out = json.loads(body(ask(core, "/v1beta/models/e:batchEmbedContents", batch)))
    assert [e["values"] for e in out["embeddings"]] == again["embeddings"]


def test_gemini_without_alt_sse_streams_a_json_array() -> None:
    core = ProviderCore(answer_tokens=3)
    script = ask(core, GEMINI_STREAM, gemini_chat())
    items = json.loads(body(script))
    assert [i["candidates"][0]["content"]["parts"][0]["text"] for i in items][-1] == ""
    assert items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert header(script, "content-type") == "application/json; charset=UTF-8"


def test_ollama_streams_by_default() -> None:
    core = ProviderCore(answer_tokens=2)
    raw = body(ask(core, "/api/chat", ollama_chat()))
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [line["done"] for line in lines] == [False, False, True]
    assert core.attempts[0].stream is True


# --------------------------------------------------------------------------- recorded shapes


def first_json(path: Path, prefix: bytes) -> dict[str, Any]:
    for line in path.read_bytes().splitlines():
        if line.startswith(prefix):
            obj = json.loads(line[len(prefix) :])
            assert isinstance(obj, dict)
            return obj
    raise AssertionError(path)


def test_openai_chunks_have_the_recorded_keys(recordings: Path) -> None:
    core = ProviderCore()
    script = ask(core, "/v1/chat/completions", openai_chat(stream=True))
    ours = json.loads(body(script).split(b"\n\n")[0][len(b"data: ") :])
    theirs = first_json(recordings / "openai" / "chat_stream_basic.sse", b"data: ")
    assert list(ours) == list(theirs)
    assert ours["choices"][0]["delta"] == theirs["choices"][0]["delta"]
    assert list(ours["choices"][0]) == list(theirs["choices"][0])


def test_anthropic_events_follow_the_recorded_order(recordings: Path) -> None:
    core = ProviderCore(answer_tokens=1)
    ours = [
        line for line in body(ask(core, "/v1/messages", anthropic_chat(stream=True))).splitlines()
        if line.startswith(b"event: ")
    ]  # fmt: skip
    raw = (recordings / "anthropic" / "messages_stream_text.sse").read_bytes()
    theirs = [line for line in raw.splitlines() if line.startswith(b"event: ")]
    assert ours == theirs
    assert b'data: {"type": "ping"}\n' in body(
        ask(core, "/v1/messages", anthropic_chat(stream=True))
    )


def test_gemini_sse_uses_crlf_separators_like_the_recording(recordings: Path) -> None:
    core = ProviderCore(answer_tokens=2)
    ours = body(ask(core, GEMINI_STREAM, gemini_chat(), query="alt=sse"))
    theirs = (recordings / "gemini" / "stream.sse").read_bytes()
    assert ours.count(b"\r\n\r\n") == 3
    assert ours.endswith(b"}\r\n\r\n")
    assert theirs.endswith(b"}\r\n\r\n")
    ours_first = json.loads(ours.split(b"\r\n\r\n")[0][len(b"data: ") :])
    theirs_first = json.loads(theirs.split(b"\r\n\r\n")[0][len(b"data: ") :])
    assert set(ours_first) == set(theirs_first)
    assert b'"candidates": [{"content": {"parts": [{"text": ' in ours  # the recorded style


def test_ollama_final_line_has_the_recorded_fields(recordings: Path) -> None:
    core = ProviderCore(answer_tokens=2)
    ours = json.loads(body(ask(core, "/api/chat", ollama_chat())).splitlines()[-1])
    theirs = json.loads(
        (recordings / "ollama" / "chat_stream.ndjson").read_bytes().splitlines()[-1]
    )
    assert set(ours) == set(theirs)


# --------------------------------------------------------------------------- budget


def test_budget_depletes_answers_429_and_resets_on_the_window() -> None:
    core = ProviderCore(budget=Budget(requests_per_minute=2, tokens_per_minute=1000))
    first = ask(core, "/v1/chat/completions", openai_chat(), now=10.0)
    assert header(first, "x-ratelimit-limit-requests") == "2"
    assert header(first, "x-ratelimit-remaining-requests") == "1"
    assert header(first, "x-ratelimit-reset-requests") == "50s"
    tokens = 3 + 12
    assert header(first, "x-ratelimit-remaining-tokens") == str(1000 - tokens)
    info = parse_rate_limit_headers(dict(head(first).headers), now=WALL + 10)
    assert info.remaining_requests == 1
    assert info.reset_requests == 50.0
    assert info.limit_tokens == 1000
    assert info.remaining_tokens == 1000 - tokens

    second = ask(core, "/v1/chat/completions", openai_chat(), now=30.25)
    assert head(second).status == 200
    assert header(second, "x-ratelimit-reset-requests") == "29.75s"

    third = ask(core, "/v1/chat/completions", openai_chat(), now=59.5)
    assert head(third).status == 429
    assert header(third, "retry-after") == "1"
    assert header(third, "x-ratelimit-remaining-requests") == "0"
    assert json.loads(body(third))["error"]["code"] == "rate_limit_exceeded"
    assert core.attempts[2].fault == "budget_exhausted"

    fourth = ask(core, "/v1/chat/completions", openai_chat(), now=60.0)
    assert head(fourth).status == 200
    assert header(fourth, "x-ratelimit-remaining-requests") == "1"
    assert header(fourth, "x-ratelimit-reset-requests") == "1m0s"


def test_budget_tokens_and_anthropic_headers() -> None:
    core = ProviderCore(budget=Budget(tokens_per_minute=20), answer_tokens=10)
    ok = ask(core, "/v1/messages", anthropic_chat(), now=5.0)
    assert head(ok).status == 200
    assert header(ok, "anthropic-ratelimit-tokens-remaining") == str(20 - 13)
    assert header(ok, "anthropic-ratelimit-tokens-reset") == "2023-11-14T22:14:20Z"
    assert header(ok, "anthropic-ratelimit-requests-limit") is None  # unlimited: not reported
    info = parse_rate_limit_headers(dict(head(ok).headers), now=WALL + 5)
    assert info.remaining_tokens == 7
    assert info.reset_tokens == 55.0

    denied = ask(core, "/v1/messages", anthropic_chat(), now=20.0)
    assert head(denied).status == 429
    assert header(denied, "retry-after") == "40"
    assert json.loads(body(denied))["error"]["type"] == "rate_limit_error"
    later = ask(core, "/v1/messages", anthropic_chat(), now=61.0)
    assert head(later).status == 200
    assert header(later, "anthropic-ratelimit-tokens-remaining") == "7"


def test_budget_is_not_charged_by_error_faults() -> None:
    plan = FaultPlan.first(2, StreamCut(after_tokens=1))
    core = ProviderCore(plan, budget=Budget(requests_per_minute=3))
    errors = ProviderCore(FaultPlan.first(2, ServerError()), budget=Budget(requests_per_minute=1))
    assert head(ask(errors, "/v1/chat/completions", openai_chat())).status == 500
    assert head(ask(errors, "/v1/chat/completions", openai_chat())).status == 500
    assert head(ask(errors, "/v1/chat/completions", openai_chat())).status == 200
    # Body faults answer 200, so they are charged.
    for remaining in ("2", "1", "0"):
        script = ask(core, "/v1/chat/completions", openai_chat(stream=True))
        assert header(script, "x-ratelimit-remaining-requests") == remaining
    assert head(ask(core, "/v1/chat/completions", openai_chat())).status == 429


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.002, "2ms"),
        (0.12, "120ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (29.75, "29.75s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3723, "1h2m3s"),
    ],
)
def test_go_durations_round_trip(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


# --------------------------------------------------------------------------- the attempt log


def test_record_fields_and_redacted_repr() -> None:
    core = ProviderCore(answer_tokens=4)
    secret = "sk-live-very-secret"
    script = ask(
        core,
        "/v1/chat/completions",
        openai_chat(stream=True, stream_options={"include_usage": True}),
        now=2.5,
        headers={
            "Authorization": f"Bearer {secret}",
            "X-Api-Key": secret,
            "x-goog-api-key": secret,
        },
    )
    record = core.attempts[0]
    assert (record.index, record.arrival, record.arrived_at) == (0, 1, 2.5)
    assert (record.dialect, record.endpoint, record.model, record.stream) == (
        "openai", "chat", "gpt-4o", True,
    )  # fmt: skip
    assert record.fault == "healthy"
    assert record.status == 200
    assert record.outcome is None
    assert record.headers["authorization"] == f"Bearer {secret}"
    assert secret not in repr(record)
    assert secret not in str(record)
    assert "'authorization': '***'" in repr(record)
    assert record.tokens_planned == 4
    assert record.planned_usage is not None
    assert record.planned_usage.output_tokens == 4
    assert core.in_flight() == [record]

    total = len(body(script))
    core.finish(script.attempt, outcome="completed", now=3.0, bytes_sent=total)
    done = core.attempts[0]
    assert (done.outcome, done.ended_at, done.duration, done.bytes_sent) == (
        "completed", 3.0, 0.5, total,
    )  # fmt: skip
    assert done.tokens_emitted == 4
    assert done.usage_reported == record.planned_usage
    # A second report is ignored.
    core.finish(script.attempt, outcome="reset", now=9.0, bytes_sent=0)
    assert core.attempts[0] == done
    with pytest.raises(IndexError):
        core.finish(5, outcome="completed", now=0.0, bytes_sent=0)


def test_finish_counts_only_delivered_tokens() -> None:
    core = ProviderCore(answer_tokens=5)
    script = ask(core, "/api/chat", ollama_chat())
    chunks = [s.data for s in script.steps if isinstance(s, Chunk)]
    delivered = sum(len(c) for c in chunks[:3])  # three token lines
    core.finish(script.attempt, outcome="client_closed", now=1.0, bytes_sent=delivered)
    record = core.attempts[0]
    assert record.tokens_emitted == 3
    assert record.usage_reported is None  # the done line never went out
    assert record.status == 200


def test_status_is_none_when_the_client_left_before_the_head() -> None:
    core = ProviderCore(
        FaultPlan(sequence=(Latency(seconds=5), ResetBeforeHeaders(), NoResponse()))
    )
    slow = ask(core, "/v1/chat/completions", openai_chat(), now=1.0)
    assert slow.steps[0] == Pause(5)
    core.finish(slow.attempt, outcome="client_closed", now=3.0, bytes_sent=0)
    assert core.attempts[0].status is None

    reset = ask(core, "/v1/chat/completions", openai_chat())
    assert reset.steps == [Reset()]
    assert reset.fault == "reset_before_headers"
    hang = ask(core, "/v1/chat/completions", openai_chat())
    assert hang.steps == [Hang()]
    assert core.attempts[1].status is None
    assert core.attempts[2].status is None


def test_attempts_for_and_per_model_arrivals() -> None:
    plan = FaultPlan(rules=(Rule(fault=ServerError(), arrivals=(2,), per_model=True),))
    core = ProviderCore(plan)
    statuses = [
        head(ask(core, "/v1/chat/completions", openai_chat(model=m))).status
        for m in ("a", "b", "a", "b", "a")
    ]
    assert statuses == [200, 200, 500, 500, 200]
    assert [r.arrival for r in core.attempts_for("a")] == [1, 3, 5]


def test_context_window_and_served_models() -> None:
    core = ProviderCore(context_window=2, models={"gpt-4o"})
    long = ask(core, "/v1/chat/completions", openai_chat())
    assert head(long).status == 400
    error = json.loads(body(long))["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 2 tokens" in error["message"]
    assert "resulted in 3 tokens" in error["message"]
    short = ask(
        core, "/v1/chat/completions", openai_chat(messages=[{"role": "user", "content": "hi"}])
    )
    assert head(short).status == 200
    missing = ask(core, "/v1/chat/completions", openai_chat(model="gpt-5"))
    assert head(missing).status == 404
    assert json.loads(body(missing))["error"]["code"] == "model_not_found"


def test_token_interval_paces_streamed_tokens() -> None:
    core = ProviderCore(answer_tokens=3, token_interval=0.5)
    script = ask(core, "/v1/chat/completions", openai_chat(stream=True))
    pauses = [s for s in script.steps if isinstance(s, Pause)]
    assert pauses == [Pause(0.5), Pause(0.5)]


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="answer_tokens"):
        ProviderCore(answer_tokens=0)
    with pytest.raises(ValueError, match="token_interval"):
        ProviderCore(token_interval=-1)
