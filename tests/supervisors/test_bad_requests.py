"""Bad requests through the runtime: refused at the door with a ``bad_request`` naming the
field, never crashing a provider actor, never counting toward restart intensity.

The regression: four ``max_tokens = -5`` requests each crashed connection ``local``
(``ValueError`` in the limiter); the supervisor gave up and the runtime stopped. Here any mix
of sound and unsound requests - chat, streamed chat, embeddings, straight to a connection or
routed - leaves every actor on its first incarnation and the runtime serving.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from actors.testing import FakeTransport
from protocol._config_load import loads_config
from protocol._errors import ErrorKind, RequestFailed
from protocol._messages import (
    ChatRequest,
    Completion,
    Embeddings,
    EmbedRequest,
    Failure,
    Message,
    TextPart,
    Tool,
)
from protocol._validate import request_problem
from supervisors._runtime import Runtime, open_runtime

CONFIG = """
[runtime]
restart_intensity = 1
restart_period_s = 3600

[connections.local]
provider = "openai"
base_url = "http://fake/v1"
default_model = "fake-model"
rate_limit = { tokens_per_minute = 100000 }

[connections.claude]
provider = "anthropic"
base_url = "http://fake/v1"
api_key = "k"
default_model = "fake-claude"

[routes.smart]
targets = [{ connection = "local" }, { connection = "claude" }]
"""

HI = [Message(role="user", content="hi")]


def incarnations(rt: Runtime) -> dict[str, int]:
    return {h.name: h.incarnation for h in rt.health().connections}


async def test_negative_max_tokens_is_refused_and_never_crashes_the_actor(
    autojump_clock: MockClock,
) -> None:
    async with open_runtime(loads_config(CONFIG), transport=FakeTransport(seed=1)) as rt:
        for _ in range(6):  # more than restart_intensity would ever allow
            try:
                await rt.chat(ChatRequest(model="fake-model", messages=HI, max_tokens=-5))
            except RequestFailed as exc:
                failure = exc.failure
            else:
                raise AssertionError("a negative max_tokens was accepted")
            assert failure.kind is ErrorKind.BAD_REQUEST
            assert "max_tokens must be >= 1" in failure.message
            assert failure.attempts == 0
        # Straight to the connection, streamed and not: the same refusal.
        conn = rt.connection("local")
        direct = await conn.chat(ChatRequest(model="fake-model", messages=HI, max_tokens=-5))
        assert isinstance(direct, Failure)
        assert direct.kind is ErrorKind.BAD_REQUEST
        async with conn.stream(ChatRequest(model="fake-model", messages=[], stream=True)) as s:
            assert [event async for event in s] == []
        assert isinstance(s.result, Failure)
        assert "messages must hold at least one message" in s.result.message
        done = await rt.chat(ChatRequest(model="fake-model", messages=HI, max_tokens=5))
        assert done.connection == "local"
        assert incarnations(rt) == {"local": 1, "claude": 1}
        assert rt.metrics().failures == {"bad_request": 6}


# ------------------------------------------------------------------- any request at all

WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(),
    st.text(max_size=4),
    st.lists(st.text(max_size=2), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
MODELS = st.sampled_from(["fake-model", "smart", "claude/fake-claude", "nope", ""]) | WEIRD
MESSAGES = st.sampled_from(
    [
        HI,
        [],
        [Message(role="user", content="")],
        [Message(role="user", content=[TextPart(text="x" * 2000)])],
        [Message(role="wizard", content="x")],
        [Message(role="user", content=None)],  # type: ignore[arg-type]
        "hello",
    ]
)


def fields(*, sound: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Each field either absent, a sound value, or anything at all."""
    return st.fixed_dictionaries(
        {}, optional={name: strategy | WEIRD for name, strategy in sound.items()}
    )


CHAT_FIELDS = fields(
    sound={
        "max_tokens": st.integers(min_value=1, max_value=1_000_000),
        "temperature": st.floats(min_value=0, max_value=2),
        "top_p": st.floats(min_value=0, max_value=1),
        "stop": st.lists(st.text(min_size=1, max_size=3), max_size=3),
        "tools": st.just([Tool(name="f")]),
        "tool_choice": st.sampled_from(["auto", "none", "f"]),
        "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        "request_id": st.text(min_size=1, max_size=8),
        "timeout": st.floats(min_value=0, max_value=30),
        "fallbacks": st.lists(st.sampled_from(["smart", "fake-model"]), max_size=2),
        "strategy": st.sampled_from(["priority", "weighted", "least_busy"]),
        "extra": st.dictionaries(st.sampled_from(["seed", "n", "user"]), st.integers(), max_size=2),
    }
)
EMBED_FIELDS = fields(
    sound={
        "inputs": st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3),
        "dimensions": st.integers(min_value=1, max_value=4096),
        "timeout": st.floats(min_value=0, max_value=30),
        "request_id": st.text(min_size=1, max_size=8),
    }
)
CALLS = st.lists(
    st.one_of(
        st.tuples(st.just("chat"), MODELS, MESSAGES, CHAT_FIELDS),
        st.tuples(st.just("stream"), MODELS, MESSAGES, CHAT_FIELDS),
        st.tuples(st.just("direct"), MODELS, MESSAGES, CHAT_FIELDS),
        st.tuples(st.just("embed"), MODELS, st.just(HI), EMBED_FIELDS),
    ),
    min_size=1,
    max_size=8,
)


async def one_call(rt: Runtime, how: str, model: Any, messages: Any, extra: dict[str, Any]) -> None:
    """Send one request and check it ended with exactly one sound terminal result."""
    result: Completion | Embeddings | Failure
    if how == "embed":
        request: ChatRequest | EmbedRequest = EmbedRequest(
            model=model, **{"inputs": ["a"], **extra}
        )
        result = await rt.embed_result(request)
    else:
        request = ChatRequest(model=model, messages=messages, **extra)
        if how == "chat":
            result = await rt.chat_result(request)
        elif how == "direct":
            result = await rt.connection("local").chat(request)
        else:
            async with rt.stream(request) as s:
                async for _ in s:
                    pass
            result = s.result
    assert isinstance(result, Completion | Embeddings | Failure)
    problem = request_problem(request, model_required=how != "direct")
    if problem is not None:
        assert isinstance(result, Failure)
        assert result.kind is ErrorKind.BAD_REQUEST, result
        assert problem in result.message
    if isinstance(result, Failure):
        # Whatever went wrong was the request's or the route's, never a crash.
        assert result.kind not in {ErrorKind.CRASHED, ErrorKind.CONFIG}, result
        assert isinstance(result.message, str)
        assert result.message


CACHED = CONFIG.replace(
    "restart_period_s = 3600\n",
    "restart_period_s = 3600\ncache = { ttl_s = 60, nondeterministic = true }\n",
)
assert CACHED != CONFIG


@pytest.mark.parametrize("config_text", [CONFIG, CACHED], ids=["plain", "cached"])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(CALLS)
def test_no_request_crashes_an_actor(
    config_text: str, calls: list[tuple[str, Any, Any, dict[str, Any]]]
) -> None:
    """Also through a runtime-wide response cache (every request keyed and coalesced)."""

    async def main() -> None:
        config = loads_config(config_text)
        async with open_runtime(
            config, transport=FakeTransport(seed=1), rng=random.Random(0)
        ) as rt:
            with trio.fail_after(3600):
                for how, model, messages, extra in calls:
                    await one_call(rt, how, model, messages, extra)
                # Still serving, on the first incarnation of every actor.
                done = await rt.chat(ChatRequest(model="smart", messages=HI, timeout=60))
                assert isinstance(done, Completion)
                assert incarnations(rt) == {"local": 1, "claude": 1}
                assert all(h.running for h in rt.health().connections)

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_sound_values_at_the_edges_are_served() -> None:
    """The door is not too strict: the extreme sound values get a completion."""

    async def main() -> None:
        async with open_runtime(loads_config(CONFIG), transport=FakeTransport(seed=1)) as rt:
            for fields_ in (
                {"max_tokens": 1, "temperature": 0.0, "top_p": 0.0},
                {"max_tokens": 1_000_000, "temperature": 2.0, "top_p": 1.0},
                {"timeout": 3600.0, "extra": {"n": 1}},
            ):
                done = await rt.chat(ChatRequest(model="fake-model", messages=HI, **fields_))
                assert done.connection == "local"

    trio.run(main, clock=MockClock(autojump_threshold=0))
