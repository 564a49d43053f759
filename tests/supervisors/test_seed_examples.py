"""The examples of the seed documents, written against this API and run against fake
providers (in memory, autojump clock):

- 001 (Concerto ``connect``): several providers in one TOML config with ``env()`` keys,
  retry and rate-limit policies, model aliases, a runtime override pointing a connection at a
  mock server, streaming, and token/cost tracking (``tokens_by_connection``,
  ``tokens_by_model``, ``estimated_cost``);
- 000 (Khive ``Endpoint``): a call with circuit-breaker and retry configuration, and the
  "breaker open" error handled by the caller;
- 003 (``BaseApiBackend``): ``testEndpoint`` (probe), ``isCompatibleModel``
  (``connections_for``), ``createEndpoint`` with its own key and concurrency
  (``add_connection``) and per-endpoint ``getStats``.
"""

from __future__ import annotations

import random

import pytest
import trio
from trio.testing import MockClock

from actors.testing._faults import FaultPlan
from actors.testing._transport import FakeTransport
from protocol._config_load import connection_from_dict, loads_config
from protocol._errors import ErrorKind, RequestFailed
from protocol._messages import ChatRequest, Completion, Message, TextDelta
from supervisors._runtime import open_runtime

# Seed 001's examples ("Full Example", "Model Aliasing", "Multiple Providers"), as TOML.
CONNECT = """
[connections.openai]
api_key = 'env("OPENAI_API_KEY")'
base_url = "https://api.openai.com/v1"
default_model = "gpt-4o"
timeout = 60
retry = { max_attempts = 3, backoff = "exponential", initial_delay_ms = 1000 }
rate_limit = { requests_per_minute = 60, tokens_per_minute = 150000 }
models = { fast = "gpt-4o-mini", smart = "gpt-4o", reasoning = "o1" }

[connections.openai.prices]
"gpt-4o" = { input = 2.5, output = 10.0 }
"gpt-4o-mini" = { input = 0.15, output = 0.6 }

[connections.anthropic]
api_key = 'env("ANTHROPIC_API_KEY")'
default_model = "claude-sonnet-4-20250514"
timeout = 60
prices = { "claude-sonnet-4-20250514" = { input = 3.0, output = 15.0 } }

[connections.google]
api_key = 'env("GOOGLE_API_KEY") ?? "no-key"'
default_model = "gemini-2.0-flash"

[connections.local_ollama]
provider = "ollama"
base_url = "http://localhost:11434/v1"
default_model = "llama3.1"
"""

ENV = {"OPENAI_API_KEY": "sk-live-openai", "ANTHROPIC_API_KEY": "sk-live-anthropic"}
MOCK_URLS = {
    "openai": "http://fake/v1",
    "anthropic": "http://fake/v1",
    "google": "http://fake/v1beta",
    "local_ollama": "http://fake/v1",
}


def user(text: str, model: str, **fields: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message(role="user", content=text)], **fields)  # type: ignore[arg-type]


async def test_connect_blocks_several_providers_aliases_override_and_token_tracking(
    autojump_clock: MockClock,
) -> None:
    config = loads_config(CONNECT, env=ENV)
    assert config.connections["google"].api_key == "no-key"
    assert config.connections["local_ollama"].provider == "openai"  # Ollama's /v1 endpoint
    transports = {name: FakeTransport(seed=i) for i, name in enumerate(config.connections)}
    async with open_runtime(config, transports=transports, rng=random.Random(1)) as rt:
        # "Runtime Override": point every connection at a mock server, with a test key.
        for name, url in MOCK_URLS.items():
            rt.override_connection(name, base_url=url, api_key="sk-test-key")

        # Model aliasing: "fast" resolves to gpt-4o-mini on the openai connection.
        classifier = await rt.chat(user("Classify this.", "fast", temperature=0.1))
        assert (classifier.connection, classifier.model) == ("openai", "gpt-4o-mini")
        # Several providers in one program: a model pinned to a connection ("provider:
        # anthropic, base: ...") and each connection's default model.
        analysis = await rt.chat(user("Analyse this.", "anthropic/claude-sonnet-4-20250514"))
        assert (analysis.connection, analysis.model) == ("anthropic", "claude-sonnet-4-20250514")
        flash = await rt.chat(user("Hi", "gemini-2.0-flash"))
        assert (flash.connection, flash.model) == ("google", "gemini-2.0-flash")
        local = await rt.chat(user("Hi", "llama3.1"))
        assert (local.connection, local.model) == ("local_ollama", "llama3.1")

        # Streaming: concatenate the chunks.
        full_text = ""
        async with rt.stream(user("Write a long essay about AI.", "smart", stream=True)) as s:
            async for chunk in s:
                if isinstance(chunk, TextDelta):
                    full_text += chunk.text
        essay = s.result
        assert isinstance(essay, Completion)
        assert full_text == essay.text
        assert (essay.connection, essay.model) == ("openai", "gpt-4o")

        # The key sent is the override's; the mock saw each dialect's own path.
        assert transports["openai"].attempts[0].headers["authorization"] == "Bearer sk-test-key"
        assert transports["anthropic"].attempts[0].headers["x-api-key"] == "sk-test-key"
        assert transports["google"].attempts[0].path.startswith("/v1beta/models/gemini-2.0")

        # Token tracking per connection and per model, and the estimated cost.
        metrics = rt.metrics()
    openai_in = classifier.usage.input_tokens + essay.usage.input_tokens
    openai_out = classifier.usage.output_tokens + essay.usage.output_tokens
    assert metrics.tokens_by_connection("openai") == (openai_in, openai_out)
    assert metrics.tokens_by_model("gpt-4o-mini") == (
        classifier.usage.input_tokens,
        classifier.usage.output_tokens,
    )
    assert metrics.tokens_by_model("claude-sonnet-4-20250514") == (
        analysis.usage.input_tokens,
        analysis.usage.output_tokens,
    )
    expected = (
        classifier.usage.input_tokens * 0.15
        + classifier.usage.output_tokens * 0.6
        + essay.usage.input_tokens * 2.5
        + essay.usage.output_tokens * 10.0
    ) / 1e6
    assert metrics.estimated_cost("openai") == pytest.approx(expected)
    assert analysis.cost == pytest.approx(
        (analysis.usage.input_tokens * 3.0 + analysis.usage.output_tokens * 15.0) / 1e6
    )
    assert metrics.estimated_cost("google") is None  # no price configured: no cost
    assert "sk-live" not in repr(config) + metrics.prometheus()


# Seed 000: ``CircuitBreaker(failure_threshold=5, recovery_time=30.0)`` and
# ``RetryConfig(max_retries=3, base_delay=1.0)`` on an Endpoint.
ENDPOINT = """
[connections.openai-chat]
provider = "openai"
base_url = "http://fake/v1"
api_key = 'env("OPENAI_API_KEY")'
default_model = "gpt-4"
retry = { max_attempts = 4, initial_delay_ms = 1000, jitter = 0.0 }
breaker = { window_size = 5, minimum_calls = 5, failure_rate = 100, open_s = 30 }
"""


async def test_endpoint_call_with_breaker_and_retry_config(autojump_clock: MockClock) -> None:
    provider = FakeTransport(plan=FaultPlan.flapping(30.0, status=503))
    config = loads_config(ENDPOINT, env=ENV)
    request = user("Hello, world!", "gpt-4")
    async with open_runtime(config, transports={"openai-chat": provider}) as endpoint:
        # Four attempts (retries after 1, 2 and 4 s), then the failure.
        with pytest.raises(RequestFailed) as first:
            await endpoint.chat(request)
        assert (first.value.failure.kind, first.value.failure.attempts) == (
            ErrorKind.OVERLOADED,
            4,
        )
        assert trio.current_time() == 7.0
        # The fifth failure opens the breaker: the call gives up at once with the real cause
        # (no retry into an open breaker) and says when the breaker will let a call through.
        with pytest.raises(RequestFailed) as second:
            await endpoint.chat(request)
        assert second.value.failure.kind is ErrorKind.OVERLOADED
        assert second.value.failure.attempts == 1
        assert second.value.failure.retry_after == 30.0
        assert trio.current_time() == 7.0

        # "except CircuitBreakerOpenError: response = get_cached_response()"
        refusal = None
        try:
            response = (await endpoint.chat(request)).text
        except RequestFailed as exc:
            refusal = exc.failure
            response = "cached"
        assert response == "cached"
        assert refusal is not None
        assert refusal.kind is ErrorKind.CIRCUIT_OPEN
        assert refusal.retry_after == 30.0  # opened at t=7 for 30 s; asked at t=7
        assert len(provider.attempts) == 5

        await trio.sleep_until(37.0)  # recovery_time later the provider is back
        recovered = await endpoint.chat(request)
        assert recovered.connection == "openai-chat"
        assert endpoint.health().connections[0].breaker == "closed"


async def test_base_api_backend_test_endpoint_compatibility_endpoints_and_stats(
    autojump_clock: MockClock,
) -> None:
    config = loads_config(CONNECT, env=ENV)
    transports = {name: FakeTransport(seed=i) for i, name in enumerate(config.connections)}
    async with open_runtime(config, transports=transports) as backend:
        for name, url in MOCK_URLS.items():
            backend.override_connection(name, base_url=url)
        # testEndpoint()
        assert (await backend.probe("openai")).ok
        # isCompatibleModel(model)
        assert backend.connections_for("gpt-4o") == ["openai"]
        assert backend.connections_for("reasoning") == ["openai"]
        assert backend.connections_for("text-davinci-001") == []
        # createEndpoint({apiKey, model, maxConcurrentRequests}) + makeRequestWithEndpoint
        alt = connection_from_dict(
            "openai-alt",
            {
                "provider": "openai",
                "base_url": "http://fake/v1",
                "api_key": "alternative-api-key",
                "default_model": "specific-model",
                "rate_limit": {"concurrent_requests": 10},
            },
        )
        alt_transport = FakeTransport()
        await backend.add_connection(alt, transport=alt_transport)
        for _ in range(3):
            done = await backend.chat(user("Hello", "specific-model"))
            assert done.connection == "openai-alt"
        assert alt_transport.attempts[0].headers["authorization"] == "Bearer alternative-api-key"
        # getStats(endpointId): requests, successes, errors.
        stats = backend.statistics()["openai-alt"]
        assert (stats.metrics.requests, stats.metrics.completions, stats.metrics.failures) == (
            3,
            3,
            {},
        )
        assert stats.mailbox.accepted == 3
        assert stats.breaker.state.value == "closed"
