"""`ProviderCore`: the sans-IO brain shared by both fake-provider shells.

Problem: the loopback HTTP server (`FakeProvider`) and the in-memory httpx transport
(`FakeTransport`) must misbehave identically, or a test passing against one proves nothing
about the other. So all decisions live here, in plain synchronous code with no clock and no
sockets: `respond` turns one request (method, path, headers, body, ``now``, ``wall``) into a
`Script` of steps; the shell executes it and reports how it ended through `finish`.

Theory of operation, per request:

1. **Route** the path to a dialect and endpoint (a single core serves every dialect; an unknown
   path is a 404 shaped like the dialect the path most resembles).
2. **Parse** the body in that dialect (a body it cannot read is that dialect's 400).
3. **Count** the arrival (1-based, every request) and the arrival for its model.
4. **Select** the fault from the `FaultPlan` (`FaultPlan.select`; see ``_faults``). A
   ``context_window`` on the core turns an over-long healthy request into the context-length
   fault by itself.
5. **Charge the budget** - only for requests that would get a 200 (healthy answers, latency
   and every body fault): error statuses, resets and hangs are not charged. An exhausted
   budget answers 429 with ``retry-after`` = whole seconds to the window's end, and the
   dialect's rate-limit headers (OpenAI, Anthropic) are on every charged answer and on that
   429, so a client limiter can resync from them.
6. **Render** the healthy answer into dialect `Piece`s (``_render_*``) and **apply** the fault
   to their structure (cut after N tokens, stall, inject a malformed event, drop the
   terminator, ...), producing the steps.
7. **Log** an `AttemptRecord` (in flight: ``outcome is None``). `finish` completes it with the
   outcome, end time, bytes delivered and, from those bytes, the tokens and usage the client
   actually received.

Usage is exact (see ``_textgen`` for the counting rules): the answer has ``answer_tokens``
words, fewer when the request's max-tokens field is smaller (finish reason "length").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from protocol._config import ProviderName
from protocol._messages import Usage

from ._faults import (
    Budget,
    ContentFiltered,
    ContextLengthExceeded,
    Fault,
    FaultPlan,
    Healthy,
    Latency,
    MalformedChunk,
    MidStreamError,
    MissingTerminator,
    NoResponse,
    PrefillRejected,
    RateLimited,
    RequestFacts,
    ResetBeforeHeaders,
    ServerError,
    SlowFirstToken,
    Stall,
    StreamCut,
    Unauthorized,
)
from ._render import (
    Answer,
    AnswerFinish,
    BadRequest,
    BudgetSnapshot,
    DialectRenderer,
    ErrorSpec,
    Headers,
    Parsed,
    Piece,
    Rendered,
    ToolCallAnswer,
    guess_dialect,
    retry_headers,
    route,
)
from ._render_anthropic import RENDERER as _ANTHROPIC
from ._render_gemini import RENDERER as _GEMINI
from ._render_ollama import RENDERER as _OLLAMA
from ._render_openai import RENDERER as _OPENAI
from ._script import Chunk, Hang, Head, Outcome, Pause, Reset, Script, Step
from ._textgen import alnum_id, answer_tokens, embedding, hex_id, rng_for, tool_arguments

RENDERERS: Final[dict[ProviderName, DialectRenderer]] = {
    "openai": _OPENAI,
    "anthropic": _ANTHROPIC,
    "gemini": _GEMINI,
    "ollama": _OLLAMA,
}

CREDENTIAL_HEADERS: Final = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key"})

WINDOW_S: Final = 60.0


@dataclass(frozen=True, repr=False)
class AttemptRecord:
    """What the fake provider experienced for one request.

    ``index`` is the position in the log (0-based; ``arrival == index + 1``). ``headers`` has
    lower-case names and the raw values (credentials included, so tests can check a key was
    sent); ``repr()`` masks credential headers. ``fault`` is the applied fault's name
    (``"healthy"``, ``"rate_limited"``, ..., ``"budget_exhausted"``, ``"bad_request"``,
    ``"not_found"``). ``status`` is the status line sent, ``None`` when none was (reset,
    hang, or the client left first). ``planned_usage`` is the usage the full response
    reports; ``usage_reported`` is that usage if the bytes carrying it were delivered.
    ``outcome``/``ended_at`` are ``None`` while the attempt is in flight. Times are seconds
    since the provider started.
    """

    index: int
    arrived_at: float
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    dialect: ProviderName | None
    endpoint: str | None
    model: str
    stream: bool
    fault: str
    status: int | None
    tokens_planned: int = 0
    planned_usage: Usage | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    tokens_emitted: int = 0
    usage_reported: Usage | None = None
    bytes_sent: int = 0

    @property
    def arrival(self) -> int:
        return self.index + 1

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.arrived_at

    def __repr__(self) -> str:
        shown = {
            k: ("***" if k.lower() in CREDENTIAL_HEADERS else v) for k, v in self.headers.items()
        }
        return (
            f"AttemptRecord(index={self.index}, arrived_at={self.arrived_at!r}, "
            f"method={self.method!r}, path={self.path!r}, dialect={self.dialect!r}, "
            f"model={self.model!r}, stream={self.stream!r}, fault={self.fault!r}, "
            f"status={self.status!r}, outcome={self.outcome!r}, ended_at={self.ended_at!r}, "
            f"tokens_emitted={self.tokens_emitted}, usage_reported={self.usage_reported!r}, "
            f"bytes_sent={self.bytes_sent}, headers={shown!r}, body=<{len(self.body)} bytes>)"
        )

    __str__ = __repr__


@dataclass
class _Plan:
    """Bookkeeping for one attempt's script, used by `finish`."""

    token_ends: list[tuple[int, int]] = field(default_factory=list)  # (end offset, tokens)
    usage_end: int | None = None
    head_at: float | None = None  # seconds after arrival the head goes out (None: never)


class _BudgetState:
    """Fixed 60 s windows of the core's clock: window *k* covers ``[60k, 60(k+1))``."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.window = -1
        self.requests = 0
        self.tokens = 0

    def _roll(self, now: float) -> None:
        window = math.floor(now / WINDOW_S)
        if window != self.window:
            self.window, self.requests, self.tokens = window, 0, 0

    def charge(self, tokens: int, now: float) -> tuple[bool, BudgetSnapshot]:
        """Charge one request of *tokens* if the window allows it. Returns whether it was
        admitted and the state afterwards."""
        self._roll(now)
        rpm, tpm = self.budget.requests_per_minute, self.budget.tokens_per_minute
        admitted = (rpm is None or self.requests + 1 <= rpm) and (
            tpm is None or self.tokens + tokens <= tpm
        )
        if admitted:
            self.requests += 1
            self.tokens += tokens
        snapshot = BudgetSnapshot(
            limit_requests=rpm,
            remaining_requests=max(0, rpm - self.requests) if rpm is not None else 0,
            limit_tokens=tpm,
            remaining_tokens=max(0, tpm - self.tokens) if tpm is not None else 0,
            reset_in=(self.window + 1) * WINDOW_S - now,
        )
        return admitted, snapshot


class ProviderCore:
    """The fake provider's decisions and its attempt log (implements ``ScriptSource``).

    Arguments (keyword-only):

    - ``plan``: the `FaultPlan` (default: always healthy); ``seed`` replaces ``plan.seed``.
    - ``budget``: an optional provider-side `Budget` (see step 5 in the module docstring).
    - ``answer_tokens``: words in a full answer (default 12).
    - ``embedding_dimensions``: vector size when the request names none (default 8).
    - ``context_window``: if set, a request with more input tokens gets the context-length
      400 even when the plan says healthy.
    - ``models``: if set, the only model names served; others get the dialect's 404.
    - ``token_interval``: seconds between streamed tokens (default 0: all at once).
    """

    def __init__(
        self,
        plan: FaultPlan | None = None,
        *,
        seed: int | None = None,
        budget: Budget | None = None,
        answer_tokens: int = 12,
        embedding_dimensions: int = 8,
        context_window: int | None = None,
        models: Collection[str] | None = None,
        token_interval: float = 0.0,
    ) -> None:
        if answer_tokens < 1:
            raise ValueError("answer_tokens must be >= 1")
        if embedding_dimensions < 1:
            raise ValueError("embedding_dimensions must be >= 1")
        if not token_interval >= 0:
            raise ValueError("token_interval must be >= 0")
        plan = plan if plan is not None else FaultPlan()
        if seed is not None:
            plan = FaultPlan(rules=plan.rules, sequence=plan.sequence, seed=seed)
        self.plan = plan
        self.budget = budget
        self.answer_tokens = answer_tokens
        self.embedding_dimensions = embedding_dimensions
        self.context_window = context_window
        self.models = frozenset(models) if models is not None else None
        self.token_interval = token_interval
        self._budget = _BudgetState(budget) if budget is not None else None
        self._records: list[AttemptRecord] = []
        self._plans: list[_Plan] = []
        self._model_arrivals: dict[str, int] = {}

    # -- the attempt log --------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return self.plan.seed

    @property
    def attempts(self) -> list[AttemptRecord]:
        """Every attempt so far, in arrival order (a copy)."""
        return list(self._records)

    def attempts_for(self, model: str) -> list[AttemptRecord]:
        """The attempts for *model*, in arrival order."""
        return [r for r in self._records if r.model == model]

    def in_flight(self) -> list[AttemptRecord]:
        """Attempts whose shell has not reported an end yet."""
        return [r for r in self._records if r.outcome is None]

    # -- ScriptSource -----------------------------------------------------------------------

    def respond(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
        wall: float,
    ) -> Script:
        """The script for one request (see the module docstring). Never raises on any input."""
        index = len(self._records)
        arrival = index + 1
        lowered = {k.lower(): v for k, v in headers.items()}
        request_id = hex_id(self.seed, "request", arrival)
        base: dict[str, object] = {
            "index": index,
            "arrived_at": now,
            "method": method,
            "path": path,
            "query": query,
            "headers": lowered,
            "body": bytes(body),
        }
        found = route(method, path)
        if found is None:
            dialect = guess_dialect(path, lowered)
            spec = ErrorSpec(
                404,
                "not_found",
                message=f"Invalid URL ({method.upper()} {path})",
                param="path",
                request_id=request_id,
                wall=wall,
            )
            rendered = RENDERERS[dialect].error(spec)
            return self._log(base, dialect, None, "", False, "not_found", rendered, [])
        renderer = RENDERERS[found.dialect]
        try:
            parsed = renderer.parse(found.endpoint, found.path_model, query, body)
        except BadRequest as exc:
            spec = ErrorSpec(
                400,
                "bad_request",
                message=exc.message,
                param=exc.param,
                model=found.path_model,
                request_id=request_id,
                wall=wall,
            )
            rendered = renderer.error(spec)
            return self._log(
                base, found.dialect, found.endpoint, found.path_model, False, "bad_request",
                rendered, [],
            )  # fmt: skip
        if found.streaming:
            parsed = dataclasses.replace(parsed, stream=True)
        self._model_arrivals[parsed.model] = self._model_arrivals.get(parsed.model, 0) + 1
        facts = RequestFacts(
            arrival=arrival,
            model_arrival=self._model_arrivals[parsed.model],
            now=now,
            model=parsed.model,
            dialect=parsed.dialect,
            endpoint=parsed.endpoint,
            stream=parsed.stream,
            last_role=parsed.last_role,
        )
        spec = ErrorSpec(
            0,
            "bad_request",
            model=parsed.model,
            input_tokens=parsed.input_tokens,
            request_id=request_id,
            wall=wall,
            context_window=self.context_window or 0,
        )
        if self.models is not None and parsed.model not in self.models:
            rendered = renderer.error(spec._replace(status=404, kind="not_found"))
            return self._log(
                base, parsed.dialect, parsed.endpoint, parsed.model, parsed.stream,
                "not_found", rendered, [],
            )  # fmt: skip
        fault, _ = self.plan.select(facts)
        if (
            isinstance(fault, Healthy)
            and self.context_window is not None
            and parsed.input_tokens > self.context_window
        ):
            fault = ContextLengthExceeded()
        return self._apply(base, renderer, parsed, fault, spec, arrival, wall, now)

    def finish(self, attempt: int, *, outcome: Outcome, now: float, bytes_sent: int) -> None:
        """Complete record *attempt* with how it ended. *bytes_sent* counts the body bytes
        (``Chunk`` data) the shell delivered. A second report for the same attempt is
        ignored."""
        if not 0 <= attempt < len(self._records):
            raise IndexError(f"no attempt {attempt}")
        record = self._records[attempt]
        if record.outcome is not None:
            return
        plan = self._plans[attempt]
        tokens = sum(n for end, n in plan.token_ends if end <= bytes_sent)
        usage = (
            record.planned_usage
            if plan.usage_end is not None and plan.usage_end <= bytes_sent
            else None
        )
        status = record.status
        if (
            status is not None
            and bytes_sent == 0
            and outcome == "client_closed"
            and (plan.head_at is None or now < record.arrived_at + plan.head_at)
        ):
            status = None
        self._records[attempt] = dataclasses.replace(
            record,
            ended_at=now,
            outcome=outcome,
            tokens_emitted=tokens,
            usage_reported=usage,
            bytes_sent=bytes_sent,
            status=status,
        )

    # -- internals --------------------------------------------------------------------------

    def _log(
        self,
        base: dict[str, object],
        dialect: ProviderName | None,
        endpoint: str | None,
        model: str,
        stream: bool,
        fault: str,
        rendered: Rendered | None,
        prefix: list[Step],
        *,
        pieces: list[Piece | Step] | None = None,
        planned_usage: Usage | None = None,
    ) -> Script:
        """Assemble the steps (``prefix``, the head, then ``pieces`` or the rendered
        pieces), record the attempt and return its script."""
        steps: list[Step] = list(prefix)
        plan = _Plan()
        offset = 0
        tokens_planned = 0
        status: int | None = None
        if rendered is not None:
            plan.head_at = sum(s.seconds for s in steps if isinstance(s, Pause))
            status = rendered.status
            steps.append(Head(rendered.status, list(rendered.headers)))
            items: list[Piece | Step] = pieces if pieces is not None else list(rendered.pieces)
            for item in items:
                if isinstance(item, Piece):
                    if not item.data:
                        continue
                    steps.append(Chunk(item.data))
                    offset += len(item.data)
                    if item.tokens:
                        plan.token_ends.append((offset, item.tokens))
                        tokens_planned += item.tokens
                    if item.usage:
                        plan.usage_end = offset
                else:
                    steps.append(item)
        else:
            status = None
        record = AttemptRecord(
            **base,  # type: ignore[arg-type]
            dialect=dialect,
            endpoint=endpoint,
            model=model,
            stream=stream,
            fault=fault,
            status=status,
            tokens_planned=tokens_planned,
            planned_usage=planned_usage if plan.usage_end is not None else None,
        )
        self._records.append(record)
        self._plans.append(plan)
        return Script(steps=steps, attempt=record.index, fault=fault)

    def _answer(self, parsed: Parsed, arrival: int, request_id: str, wall: float) -> Answer:
        seed = self.seed
        response_id = alnum_id(seed, "response", arrival)
        if parsed.tool is not None:
            args = tool_arguments(seed, parsed.model, parsed.prompt_key, parsed.tool.params)
            call = ToolCallAnswer(
                id=_tool_call_id(parsed.dialect, seed, arrival),
                name=parsed.tool.name,
                arguments=args,
            )
            # Output tokens of a tool call: its name plus one per argument fragment (a call
            # without arguments has one fragment, "{}").
            output = 1 + len(call.fragments())
            return Answer(
                model=parsed.model,
                tokens=[],
                finish="tool_calls",
                tool=call,
                usage=Usage(input_tokens=parsed.input_tokens, output_tokens=output),
                response_id=response_id,
                request_id=request_id,
                wall=wall,
            )
        tokens = answer_tokens(seed, parsed.model, parsed.prompt_key, self.answer_tokens)
        finish: AnswerFinish = "stop"
        if parsed.max_tokens is not None and parsed.max_tokens < len(tokens):
            tokens = tokens[: parsed.max_tokens]
            finish = "length"
        return Answer(
            model=parsed.model,
            tokens=tokens,
            finish=finish,
            tool=None,
            usage=Usage(input_tokens=parsed.input_tokens, output_tokens=len(tokens)),
            response_id=response_id,
            request_id=request_id,
            wall=wall,
        )

    def _apply(
        self,
        base: dict[str, object],
        renderer: DialectRenderer,
        parsed: Parsed,
        fault: Fault,
        spec: ErrorSpec,
        arrival: int,
        wall: float,
        now: float,
    ) -> Script:
        def log(
            name: str,
            rendered: Rendered | None,
            prefix: list[Step] | None = None,
            pieces: list[Piece | Step] | None = None,
            usage: Usage | None = None,
        ) -> Script:
            return self._log(
                base,
                parsed.dialect,
                parsed.endpoint,
                parsed.model,
                parsed.stream,
                name,
                rendered,
                prefix or [],
                pieces=pieces,
                planned_usage=usage,
            )

        name = fault.name
        # -- faults that never reach a 200: not charged to the budget
        if isinstance(fault, ResetBeforeHeaders):
            return log(name, None, [Pause(fault.after_s), Reset()] if fault.after_s else [Reset()])
        if isinstance(fault, NoResponse):
            return log(name, None, [Hang()])
        if isinstance(fault, RateLimited):
            rendered = renderer.error(
                spec._replace(
                    status=429,
                    kind="rate_limited",
                    retry_after=fault.retry_after if fault.header != "none" else None,
                )
            )
            rendered.headers += retry_headers(fault.retry_after, fault.header, wall)
            return log(name, rendered)
        if isinstance(fault, ServerError):
            return log(
                name, renderer.error(spec._replace(status=fault.status, kind="server_error"))
            )
        if isinstance(fault, Unauthorized):
            return log(name, renderer.error(spec._replace(status=401, kind="unauthorized")))
        if isinstance(fault, ContextLengthExceeded):
            return log(name, renderer.error(spec._replace(status=400, kind="context_length")))
        if isinstance(fault, ContentFiltered):
            return log(name, renderer.error(spec._replace(status=400, kind="content_filter")))
        if isinstance(fault, PrefillRejected):
            return log(name, renderer.error(spec._replace(status=400, kind="prefill")))

        # -- everything else answers 200: build the answer and charge the budget
        request_id = spec.request_id
        answer: Answer | None = None
        if parsed.endpoint == "chat":
            answer = self._answer(parsed, arrival, request_id, wall)
            usage = answer.usage
        else:
            usage = Usage(input_tokens=parsed.input_tokens)
        rate_headers: Headers = []
        if self._budget is not None:
            admitted, snapshot = self._budget.charge(usage.total_tokens, now)
            rate_headers = renderer.rate_limit_headers(snapshot, wall)
            if not admitted:
                delay = float(math.ceil(snapshot.reset_in))
                rendered = renderer.error(
                    spec._replace(status=429, kind="rate_limited", retry_after=delay)
                )
                rendered.headers += rate_headers + retry_headers(delay, "seconds", wall)
                return log("budget_exhausted", rendered)
        if answer is not None:
            rendered = renderer.chat(parsed, answer)
        else:
            dims = parsed.dimensions or self.embedding_dimensions
            vectors = [embedding(self.seed, parsed.model, text, dims) for text in parsed.inputs]
            rendered = renderer.embed(parsed, vectors, request_id=request_id, wall=wall)
        rendered.headers += rate_headers
        pieces: list[Piece | Step] = (
            self._pace(rendered.pieces) if rendered.streamed else [*rendered.pieces]
        )

        prefix: list[Step] = []
        if isinstance(fault, Latency):
            delay = fault.seconds
            if fault.up_to is not None:
                delay = rng_for("latency", self.seed, arrival).uniform(fault.seconds, fault.up_to)
            prefix = [Pause(delay)]
        elif isinstance(fault, SlowFirstToken):
            pieces = [Pause(fault.seconds), *pieces]
        elif isinstance(fault, StreamCut | Stall | MalformedChunk | MidStreamError):
            if rendered.streamed:
                cut = _cut_index(pieces, fault.after_tokens)
            else:
                pieces, cut = _halve(pieces)
            before, after = pieces[:cut], pieces[cut:]
            if isinstance(fault, StreamCut):
                pieces = before + ([Reset()] if fault.how == "reset" else [])
            elif isinstance(fault, Stall):
                pieces = before + (
                    [Pause(fault.seconds), *after] if fault.then == "continue" else [Hang()]
                )
            elif isinstance(fault, MalformedChunk):
                if rendered.streamed:
                    assert answer is not None
                    junk = Piece(renderer.malformed(parsed, answer), "finale")
                    pieces = [*before, junk, *after]
                else:
                    pieces = before
            else:
                assert answer is not None
                pieces = [*before, Piece(renderer.stream_error(parsed, answer), "finale")]
        elif isinstance(fault, MissingTerminator):
            pieces = [p for p in pieces if not (isinstance(p, Piece) and p.role == "terminator")]
        return log(name, rendered, prefix, pieces, usage)

    def _pace(self, pieces: list[Piece]) -> list[Piece | Step]:
        """Insert ``token_interval`` pauses between streamed token pieces."""
        out: list[Piece | Step] = []
        seen_token = False
        for piece in pieces:
            if piece.tokens and self.token_interval > 0:
                if seen_token:
                    out.append(Pause(self.token_interval))
                seen_token = True
            out.append(piece)
        return out


def _cut_index(items: list[Piece | Step], after_tokens: int) -> int:
    """The position right after the piece that completes *after_tokens* output tokens (for
    0: right before the first token piece; past the end: right after the last token piece)."""
    count = 0
    last_token_end: int | None = None
    first_token: int | None = None
    for i, item in enumerate(items):
        if isinstance(item, Piece) and item.role == "token" and item.tokens:
            if first_token is None:
                first_token = i
            if after_tokens == 0:
                return i
            count += item.tokens
            last_token_end = i + 1
            if count >= after_tokens:
                return i + 1
    if last_token_end is not None:
        return last_token_end
    # No token pieces: cut after the prelude.
    for i, item in enumerate(items):
        if not (isinstance(item, Piece) and item.role == "prelude"):
            return i
    return len(items)


def _halve(items: list[Piece | Step]) -> tuple[list[Piece | Step], int]:
    """A non-streamed body split into two pieces at half its bytes (position 1 is the cut)."""
    body = next(item for item in items if isinstance(item, Piece))
    half = len(body.data) // 2
    first = Piece(body.data[:half], "body")
    second = Piece(body.data[half:], "body", tokens=body.tokens, usage=body.usage)
    return [first, second], 1


def _tool_call_id(dialect: ProviderName, seed: int, arrival: int) -> str:
    if dialect == "anthropic":
        return "toolu_" + alnum_id(seed, "tool", arrival)
    return "call_" + alnum_id(seed, "tool", arrival)
