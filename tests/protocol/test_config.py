"""Config loading: TOML, env(), presets, Secret handling, and problems that name file, key and
expectation."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest

from protocol._config import (
    ConnectionConfig,
    GatewayConfig,
    RetryConfig,
    RuntimeConfig,
    Secret,
    secret_enc_hook,
)
from protocol._config_load import (
    PRESETS,
    config_from_dict,
    config_problems,
    connection_from_dict,
    default_base_url,
    dumps_config,
    load_config,
    loads_config,
    missing_keys,
)
from protocol._errors import ConfigError, ErrorKind

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "switchboard.toml"
KEY = "sk-very-secret-value-1234"


def problems_of(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        loads_config(text, source="test.toml", env=env or {})
    return info.value.problems


def only_problem(text: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    found = problems_of(text, env)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- basics


def test_empty_document_is_an_empty_config() -> None:
    config = loads_config("", env={})
    assert config == RuntimeConfig()
    assert config.gateway is None


def test_connection_name_comes_from_the_table_key() -> None:
    config = loads_config('[connections.primary]\nbase_url = "http://127.0.0.1:9/v1"', env={})
    assert config.connections["primary"].name == "primary"


def test_name_key_that_disagrees_with_the_table_key_is_a_problem() -> None:
    key, what = only_problem('[connections.a]\nname = "b"')
    assert key == "connections.a.name"
    assert "table key" in what


def test_name_key_equal_to_the_table_key_is_accepted() -> None:
    config = loads_config('[connections.openai]\nname = "openai"', env={})
    assert config.connections["openai"].name == "openai"


def test_all_sub_tables_load() -> None:
    text = """
[connections.openai]
api_key = "sk-plain"
default_model = "gpt-4o"
timeout = 30
models = { fast = "gpt-4o-mini" }
serves = ["gpt-4*"]
headers = { "X-Trace" = "1" }
organization = "org-1"
project = "proj-1"
supports_prefill = true
priority = 2
weight = 0.5
default_max_tokens = 1000
retry.max_attempts = 5
retry.backoff = "linear"
retry.initial_delay_ms = 100
retry.max_delay_ms = 200
retry.jitter = 0.0
retry.retry_on = ["timeout"]
rate_limit = { requests_per_minute = 60, tokens_per_minute = 1000, concurrent_requests = 2 }
breaker = { window = "time", window_size = 30, minimum_calls = 5, failure_rate = 25 }
timeouts = { connect = 2, first_token = 5, stall = 3 }
mailbox = { capacity = 4, when_full = "reject" }
prices."gpt-4o" = { input = 2.5, output = 10 }

[routes.chat]
targets = [{ connection = "openai", model = "fast", priority = 1, weight = 2 }]
strategy = "weighted"
failover_on = ["timeout"]
mid_stream = "restart"
hedge_after_s = "auto"

[gateway]
port = 0
tokens = ["t1", "t2"]

[runtime]
shutdown_timeout_s = 1
restart_intensity = 5
"""
    config = loads_config(text, env={})
    conn = config.connections["openai"]
    assert conn.api_key == "sk-plain"
    assert conn.timeout == 30.0
    assert conn.resolve_model("fast") == "gpt-4o-mini"
    assert conn.resolve_model(None) == "gpt-4o"
    assert conn.serves == ["gpt-4*"]
    assert conn.headers == {"X-Trace": "1"}
    assert (conn.organization, conn.project) == ("org-1", "proj-1")
    assert conn.supports_prefill
    assert conn.priority == 2
    assert conn.weight == 0.5
    assert conn.retry.max_attempts == 5
    assert conn.retry.backoff == "linear"
    assert conn.retry.retry_on == (ErrorKind.TIMEOUT,)
    assert conn.rate_limit.concurrent_requests == 2
    assert conn.breaker.window == "time"
    assert conn.breaker.failure_rate == 25.0
    assert conn.timeouts.first_token == 5.0
    assert conn.mailbox.when_full == "reject"
    assert conn.prices["gpt-4o"].output == 10.0
    route = config.routes["chat"]
    assert route.targets[0].connection == "openai"
    assert route.targets[0].weight == 2.0
    assert route.strategy == "weighted"
    assert route.mid_stream == "restart"
    assert route.hedge_after_s == "auto"
    assert route.failover_on == (ErrorKind.TIMEOUT,)
    assert config.gateway is not None
    assert config.gateway.port == 0
    assert config.gateway.tokens == [Secret("t1"), Secret("t2")]
    assert config.runtime.restart_intensity == 5


def test_defaults_match_the_schema() -> None:
    conn = loads_config("[connections.openai]", env={}).connections["openai"]
    assert conn.retry == RetryConfig()
    assert conn.api_key is None


# --------------------------------------------------------------------------- providers


@pytest.mark.parametrize(
    ("name", "dialect", "base_url"),
    [
        ("openai", "openai", "https://api.openai.com/v1"),
        ("anthropic", "anthropic", "https://api.anthropic.com/v1"),
        ("google", "gemini", "https://generativelanguage.googleapis.com/v1beta"),
        ("gemini", "gemini", "https://generativelanguage.googleapis.com/v1beta"),
        ("ollama", "ollama", "http://localhost:11434"),
        ("groq", "openai", "https://api.groq.com/openai/v1"),
        ("openrouter", "openai", "https://openrouter.ai/api/v1"),
        ("deepseek", "openai", "https://api.deepseek.com/v1"),
        ("together", "openai", "https://api.together.xyz/v1"),
        ("mistral", "openai", "https://api.mistral.ai/v1"),
        ("primary", "openai", "https://api.openai.com/v1"),
    ],
)
def test_provider_inferred_from_the_connection_name(name: str, dialect: str, base_url: str) -> None:
    conn = loads_config(f"[connections.{name}]", env={}).connections[name]
    assert conn.provider == dialect
    assert conn.base_url == base_url


@pytest.mark.parametrize(
    ("provider", "dialect"),
    [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("gemini", "gemini"),
        ("google", "gemini"),
        ("ollama", "ollama"),
        ("groq", "openai"),
        ("OpenRouter", "openai"),
        ("deepseek", "openai"),
        ("together", "openai"),
        ("mistral", "openai"),
    ],
)
def test_provider_presets(provider: str, dialect: str) -> None:
    conn = loads_config(f'[connections.x]\nprovider = "{provider}"', env={}).connections["x"]
    assert conn.provider == dialect
    assert conn.base_url == PRESETS[provider.lower()].base_url


def test_explicit_provider_wins_over_the_name() -> None:
    text = '[connections.openai]\nprovider = "anthropic"'
    assert loads_config(text, env={}).connections["openai"].provider == "anthropic"


@pytest.mark.parametrize("provider", ["openai-compatible", "openai_compatible", "vllm", "tgi"])
def test_self_hosted_presets_need_a_base_url(provider: str) -> None:
    key, what = only_problem(f'[connections.local]\nprovider = "{provider}"')
    assert key == "connections.local.base_url"
    assert "needs a base_url" in what
    text = f'[connections.local]\nprovider = "{provider}"\nbase_url = "http://127.0.0.1:8000/v1"'
    conn = loads_config(text, env={}).connections["local"]
    assert (conn.provider, conn.base_url) == ("openai", "http://127.0.0.1:8000/v1")


def test_explicit_base_url_is_kept() -> None:
    text = '[connections.openai]\nbase_url = "http://127.0.0.1:8080/mock-api"'
    assert loads_config(text, env={}).connections["openai"].base_url == (
        "http://127.0.0.1:8080/mock-api"
    )


def test_ollama_v1_endpoint_uses_the_openai_dialect() -> None:
    text = '[connections.ollama]\nbase_url = "http://localhost:11434/v1/"'
    conn = loads_config(text, env={}).connections["ollama"]
    assert conn.provider == "openai"
    assert conn.base_url == "http://localhost:11434/v1/"
    native = loads_config('[connections.ollama]\nbase_url = "http://h:11434"', env={})
    assert native.connections["ollama"].provider == "ollama"


def test_anthropic_api_version_default_and_override() -> None:
    conn = loads_config("[connections.anthropic]", env={}).connections["anthropic"]
    assert conn.api_version == "2023-06-01"
    text = '[connections.anthropic]\napi_version = "2024-01-01"'
    assert loads_config(text, env={}).connections["anthropic"].api_version == "2024-01-01"
    assert loads_config("[connections.openai]", env={}).connections["openai"].api_version is None


def test_unknown_provider_suggests_the_closest() -> None:
    key, what = only_problem('[connections.x]\nprovider = "antropic"')
    assert key == "connections.x.provider"
    assert "unknown provider 'antropic'" in what
    assert "did you mean 'anthropic'" in what


def test_default_base_url() -> None:
    assert default_base_url("openai") == "https://api.openai.com/v1"
    assert default_base_url("ollama") == "http://localhost:11434"


def test_missing_keys() -> None:
    text = """
[connections.openai]
[connections.anthropic]
api_key = "k"
[connections.google]
[connections.ollama]
[connections.groq]
[connections.vllm]
provider = "vllm"
base_url = "http://127.0.0.1:8000/v1"
[connections.proxy]
headers = { Authorization = "Bearer x" }
"""
    config = loads_config(text, env={})
    assert missing_keys(config) == ["openai", "google", "groq"]


def test_seed_examples_translated_to_toml_load() -> None:
    text = """
[connections.openai]
api_key = 'env("OPENAI_API_KEY")'
base_url = "https://api.openai.com/v1"
default_model = "gpt-4o"
timeout = 60
retry = { max_attempts = 3, backoff = "exponential", initial_delay_ms = 1000 }
rate_limit = { requests_per_minute = 60, tokens_per_minute = 150000 }
models = { "fast" = "gpt-4o-mini", "smart" = "gpt-4o", "reasoning" = "o1" }

[connections.anthropic]
api_key = 'env("ANTHROPIC_API_KEY")'
default_model = "claude-sonnet-4-20250514"
timeout = 60

[connections.local_ollama]
base_url = "http://localhost:11434/v1"
default_model = "llama3.1"

[connections.google]
api_key = 'env("GOOGLE_API_KEY")'
default_model = "gemini-2.0-flash"

[connections.ollama]
base_url = "http://localhost:11434/v1"
default_model = "llama3.1"

[connections.custom_provider]
api_key = 'env("CUSTOM_API_KEY")'
base_url = "https://my-api.example.com/v1"
default_model = "my-model"

[connections.retrying.retry]
max_attempts = 3
backoff = "exponential"
initial_delay_ms = 1000
max_delay_ms = 30000
retry_on = ["rate_limit", "server_error", "timeout"]

[connections.retrying.rate_limit]
requests_per_minute = 60
tokens_per_minute = 150000
concurrent_requests = 10
"""
    env = {
        "OPENAI_API_KEY": "sk-o",
        "ANTHROPIC_API_KEY": "sk-a",
        "GOOGLE_API_KEY": "g",
        "CUSTOM_API_KEY": "c",
    }
    config = loads_config(text, env=env)
    c = config.connections
    assert c["openai"].resolve_model("reasoning") == "o1"
    assert c["openai"].retry.initial_delay_ms == 1000
    assert c["anthropic"].provider == "anthropic"
    assert c["local_ollama"].provider == "openai"
    assert c["local_ollama"].api_key is None
    assert c["google"].provider == "gemini"
    assert c["google"].api_key == "g"
    assert c["ollama"].provider == "openai"  # Ollama's /v1 endpoint
    assert c["custom_provider"].base_url == "https://my-api.example.com/v1"
    assert c["retrying"].retry.retry_on == (
        ErrorKind.RATE_LIMITED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.TIMEOUT,
    )
    assert c["retrying"].rate_limit.concurrent_requests == 10
    assert missing_keys(config) == ["retrying"]


# --------------------------------------------------------------------------- env()


@pytest.mark.parametrize(
    "form",
    [
        'env("K")',
        ' env( "K" ) ',
        "env('K')",
        'env("K") ?? "fallback"',
        'env("K")??"fallback"',
        "  env(\"K\")   ??   'fallback'  ",
    ],
)
def test_env_forms_read_the_variable(form: str) -> None:
    text = f"[connections.openai]\ndefault_model = '''{form}'''"
    conn = loads_config(text, env={"K": "from-env"}).connections["openai"]
    assert conn.default_model == "from-env"


@pytest.mark.parametrize("form", ['env("K") ?? "fallback"', "env( 'K' )??  'fallback'"])
def test_env_default_used_when_unset(form: str) -> None:
    text = f"[connections.openai]\ndefault_model = '''{form}'''"
    assert loads_config(text, env={}).connections["openai"].default_model == "fallback"


def test_env_empty_default() -> None:
    text = '[connections.openai]\ndefault_model = \'env("K") ?? ""\''
    assert loads_config(text, env={}).connections["openai"].default_model == ""


def test_env_set_but_empty_is_kept() -> None:
    text = '[connections.openai]\ndefault_model = \'env("K") ?? "fallback"\''
    assert loads_config(text, env={"K": ""}).connections["openai"].default_model == ""


def test_env_empty_api_key_means_no_key() -> None:
    text = "[connections.openai]\napi_key = 'env(\"K\")'"
    conn = loads_config(text, env={"K": ""}).connections["openai"]
    assert conn.api_key is None
    assert missing_keys(loads_config(text, env={"K": ""})) == ["openai"]


def test_env_missing_without_default_names_key_and_variable() -> None:
    key, what = only_problem("[connections.openai]\napi_key = 'env(\"OPENAI_API_KEY\")'")
    assert key == "connections.openai.api_key"
    assert what == (
        "environment variable OPENAI_API_KEY is not set; set it or write "
        'env("OPENAI_API_KEY") ?? "default"'
    )


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_TEST_MODEL", "m-from-environ")
    text = "[connections.openai]\ndefault_model = 'env(\"SWITCHBOARD_TEST_MODEL\")'"
    assert loads_config(text).connections["openai"].default_model == "m-from-environ"


def test_env_only_on_exact_match() -> None:
    text = "[connections.openai]\nheaders = { X = 'prefix env(\"K\")', Y = 'an env(\"K\")' }"
    conn = loads_config(text, env={"K": "v"}).connections["openai"]
    assert conn.headers == {"X": 'prefix env("K")', "Y": 'an env("K")'}


@pytest.mark.parametrize(
    "form", ["env(K)", 'env("K" ?? "x")', 'env("1BAD")', 'env("")', 'env("K") tail', "env('K') ??"]
)
def test_malformed_env_is_a_problem(form: str) -> None:
    key, what = only_problem(f"[connections.openai]\ndefault_model = '''{form}'''")
    assert key == "connections.openai.default_model"
    assert "env" in what


def test_env_in_lists_routes_and_gateway() -> None:
    text = """
[connections.openai]
serves = ['env("PATTERN")']
[routes.chat]
targets = [{ connection = 'env("CONN")' }]
[gateway]
tokens = ['env("TOKEN")', 'env("NONE") ?? ""']
"""
    config = loads_config(text, env={"PATTERN": "gpt-*", "CONN": "openai", "TOKEN": "tok"})
    assert config.connections["openai"].serves == ["gpt-*"]
    assert config.routes["chat"].targets[0].connection == "openai"
    assert config.gateway is not None
    assert config.gateway.tokens == [Secret("tok")]  # the empty token is dropped


def test_env_problem_in_a_list_names_the_index() -> None:
    found = problems_of("[gateway]\ntokens = ['a', 'env(\"T\")']")
    assert found[0][0] == "gateway.tokens[1]"


# --------------------------------------------------------------------------- problems


def test_wrong_type_is_translated() -> None:
    key, what = only_problem('[connections.openai]\ntimeout = "x"')
    assert (key, what) == ("connections.openai.timeout", "expected float, got str")


def test_wrong_type_for_int_and_table() -> None:
    found = problems_of('[connections.openai]\nretry = 3\nmailbox = { capacity = "a" }')
    assert ("connections.openai.retry", "expected a table, got int") in found
    assert ("connections.openai.mailbox.capacity", "expected int, got str") in found


def test_unknown_key_suggests_the_closest() -> None:
    key, what = only_problem("[connections.openai]\ntimout = 3")
    assert key == "connections.openai.timout"
    assert what.startswith("unknown key 'timout' (did you mean 'timeout'?); expected one of: ")
    assert "retry" in what
    assert "name" not in what.split("expected one of: ")[1].split(", ")


def test_unknown_nested_and_top_level_keys() -> None:
    found = problems_of("rotes = 1\n[connections.openai.retry]\nmax_atempts = 2")
    assert found[0][0] == "rotes"
    assert "did you mean 'routes'" in found[0][1]
    assert found[1][0] == "connections.openai.retry.max_atempts"
    assert "did you mean 'max_attempts'" in found[1][1]


def test_invalid_literal_and_enum_values() -> None:
    found = problems_of(
        '[connections.openai]\nretry = { backoff = "exponental", retry_on = ["timeout", "x"] }'
    )
    assert found[0][0] == "connections.openai.retry.backoff"
    assert "did you mean 'exponential'" in found[0][1]
    assert "none, linear, exponential" in found[0][1]
    assert found[1][0] == "connections.openai.retry.retry_on[1]"
    assert "rate_limited" in found[1][1]


def test_missing_required_key() -> None:
    found = problems_of('[routes.chat]\nstrategy = "priority"')
    assert found == [("routes.chat.targets", "missing required key 'targets'")]


def test_quoted_key_paths() -> None:
    key, _ = only_problem('[connections.openai.prices."gpt-4.1"]\ninput = "cheap"')
    assert key == 'connections.openai.prices."gpt-4.1".input'


@pytest.mark.parametrize(
    ("line", "key", "expect"),
    [
        ("retry = { max_attempts = 0 }", "retry.max_attempts", "expected int >= 1, got 0"),
        ("retry = { initial_delay_ms = -1 }", "retry.initial_delay_ms", ">= 0"),
        ("retry = { jitter = 1.5 }", "retry.jitter", "<= 1.0"),
        ("retry = { jitter = -0.1 }", "retry.jitter", ">= 0.0"),
        ("rate_limit = { requests_per_minute = 0 }", "rate_limit.requests_per_minute", ">= 1"),
        ("rate_limit = { tokens_per_minute = -5 }", "rate_limit.tokens_per_minute", ">= 1"),
        ("rate_limit = { concurrent_requests = 0 }", "rate_limit.concurrent_requests", ">= 1"),
        ("breaker = { failure_rate = 0 }", "breaker.failure_rate", "> 0.0"),
        ("breaker = { slow_call_rate = 101 }", "breaker.slow_call_rate", "<= 100.0"),
        ("breaker = { window_size = 0 }", "breaker.window_size", ">= 1"),
        ("breaker = { open_s = 0 }", "breaker.open_s", "> 0.0"),
        ("mailbox = { capacity = 0 }", "mailbox.capacity", ">= 1"),
        ("timeout = 0", "timeout", "expected float > 0.0, got 0"),
        ("timeouts = { connect = -1 }", "timeouts.connect", "> 0.0"),
        ("weight = -1", "weight", ">= 0.0"),
        ("prices.m = { input = -1 }", "prices.m.input", ">= 0.0"),
    ],
)
def test_constraints(line: str, key: str, expect: str) -> None:
    found_key, what = only_problem(f"[connections.openai]\n{line}")
    assert found_key == f"connections.openai.{key}"
    assert expect in what


@pytest.mark.parametrize(("port", "ok"), [(0, True), (65535, True), (-1, False), (65536, False)])
def test_gateway_port_range(port: int, ok: bool) -> None:
    text = f"[gateway]\nport = {port}"
    if ok:
        gateway = loads_config(text, env={}).gateway
        assert gateway is not None
        assert gateway.port == port
    else:
        assert only_problem(text)[0] == "gateway.port"


def test_target_weight_must_not_be_negative() -> None:
    text = '[connections.a]\n[routes.r]\ntargets = [{ connection = "a", weight = -1 }]'
    assert only_problem(text)[0] == "routes.r.targets[0].weight"


def test_cross_field_checks() -> None:
    found = problems_of(
        """
[connections.openai]
base_url = "ftp://example.com"
retry = { initial_delay_ms = 9000, max_delay_ms = 100 }
breaker = { window_size = 5, minimum_calls = 10, open_s = 500, max_open_s = 100 }  # no growth
headers = { "Bad Header" = "x" }
models = { empty = "" }
"""
    )
    keys = [k for k, _ in found]
    assert keys == [
        "connections.openai.base_url",
        "connections.openai.retry.initial_delay_ms",
        "connections.openai.breaker.minimum_calls",
        'connections.openai.headers."Bad Header"',
        "connections.openai.models.empty",
    ]


def test_route_target_must_name_a_connection() -> None:
    text = '[connections.anthropic]\n[routes.chat]\ntargets = [{ connection = "antropic" }]'
    key, what = only_problem(text)
    assert key == "routes.chat.targets[0].connection"
    assert "no connection named 'antropic'" in what
    assert "did you mean 'anthropic'" in what


def test_route_needs_targets() -> None:
    assert only_problem("[routes.chat]\ntargets = []") == (
        "routes.chat.targets",
        "expected at least one target",
    )


def test_context_fallback_checks() -> None:
    base = """
[connections.openai]
default_model = "gpt-4o"
models = { big = "gpt-4.1" }
serves = ["o3*"]
[routes.long]
targets = [{ connection = "openai", model = "gpt-4.1-long" }]
[routes.chat]
targets = [{ connection = "openai" }]
"""
    for fallback in ("long", "gpt-4o", "big", "gpt-4.1", "o3-mini", "gpt-4.1-long"):
        config = loads_config(base + f'context_fallback = "{fallback}"', env={})
        assert config.routes["chat"].context_fallback == fallback
    key, what = only_problem(base + 'context_fallback = "nowhere"')
    assert key == "routes.chat.context_fallback"
    assert "neither a route nor a model" in what
    key, what = only_problem(base + 'context_fallback = "chat"')
    assert "not itself" in what


def test_gateway_off_loopback_needs_tokens() -> None:
    key, what = only_problem('[gateway]\nhost = "0.0.0.0"')
    assert key == "gateway.tokens"
    assert "0.0.0.0" in what
    assert loads_config('[gateway]\nhost = "0.0.0.0"\ntokens = ["t"]', env={}).gateway
    assert loads_config('[gateway]\nhost = "localhost"', env={}).gateway
    assert loads_config('[gateway]\nhost = "0.0.0.0"\nenabled = false', env={}).gateway
    key, _ = only_problem('[gateway]\nhost = "0.0.0.0"\ntokens = [\'env("T") ?? ""\']')
    assert key == "gateway.tokens"


def test_multiple_problems_are_collected_across_connections_and_sections() -> None:
    text = """
[connections.a]
timeout = "slow"
retry = { max_attempts = 0 }

[connections.b]
timout = 1

[connections.c]
api_key = 'env("C_KEY")'

[routes.chat]
targets = [{ connection = "missing" }]
hedge_after_s = -1

[gateway]
port = "high"

[runtime]
restart_intensity = -1
"""
    found = problems_of(text)
    keys = {k for k, _ in found}
    assert keys == {
        "connections.a.timeout",
        "connections.a.retry.max_attempts",
        "connections.b.timout",
        "connections.c.api_key",
        "routes.chat.targets[0].connection",
        "routes.chat.hedge_after_s",
        "gateway.port",
        "runtime.restart_intensity",
    }


def test_config_error_message_names_file_key_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[connections.openai]\ntimeout = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.source == str(path)
    assert str(info.value) == f"{path}: connections.openai.timeout: expected float, got str"


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "syntax.toml"
    path.write_text("[connections.openai]\ntimeout = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    [(key, what)] = info.value.problems
    assert key.startswith("line 2, column ")
    assert what.startswith("invalid TOML: ")
    assert str(info.value).startswith(f"{path}: line 2, column ")


def test_file_not_found() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/switchboard.toml", env={})
    assert "/nonexistent/switchboard.toml" in str(info.value)
    assert "file not found" in str(info.value)


def test_directory_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path, env={})
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[connections.openai]\ndefault_model = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems[0][0] == "line 2, column 21"
    assert "UTF-8" in info.value.problems[0][1]


def test_config_problems(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[connections.openai]\ntimeout = 0\nretry = { jitter = 2 }\n")
    assert [k for k, _ in config_problems(path, env={})] == [
        "connections.openai.timeout",
        "connections.openai.retry.jitter",
    ]
    path.write_text("[connections.openai]\n")
    assert config_problems(path, env={}) == []
    assert config_problems(tmp_path / "missing.toml") == [("", "file not found")]


def test_config_from_dict_and_connection_from_dict() -> None:
    config = config_from_dict({"connections": {"groq": {"api_key": "k"}}}, env={})
    assert config.connections["groq"].base_url == "https://api.groq.com/openai/v1"
    conn = connection_from_dict("anthropic", {"api_key": 'env("A")'}, env={"A": "x"})
    assert conn.provider == "anthropic"
    assert conn.api_key == "x"
    with pytest.raises(ConfigError) as info:
        connection_from_dict("openai", {"timeout": -1}, source="override", env={})
    assert str(info.value).startswith("override: connections.openai.timeout: ")


# --------------------------------------------------------------------------- secrets


def _keyed_config() -> RuntimeConfig:
    text = """
[connections.openai]
api_key = 'env("OPENAI_API_KEY")'
[connections.plain]
api_key = "%s"
[gateway]
tokens = ['env("GW_TOKEN")']
""" % (KEY + "-plain")
    return loads_config(text, env={"OPENAI_API_KEY": KEY, "GW_TOKEN": KEY + "-gw"})


def test_api_key_and_tokens_are_secrets() -> None:
    config = _keyed_config()
    conn = config.connections["openai"]
    assert isinstance(conn.api_key, Secret)
    assert conn.api_key.reveal() == KEY
    assert config.connections["plain"].api_key == KEY + "-plain"
    assert config.gateway is not None
    assert all(isinstance(t, Secret) for t in config.gateway.tokens)


def test_secret_never_shows_in_repr_str_or_format() -> None:
    config = _keyed_config()
    conn = config.connections["openai"]
    shown = [
        repr(config),
        str(config),
        f"{config}",
        f"{conn.api_key}",
        f"{conn.api_key!r}",
        f"{conn.api_key:>40}",
        "%s %r" % (conn, conn.api_key),  # noqa: UP031 (the %-formatting logging uses)
        repr(config.gateway),
        str([conn.api_key]),
    ]
    for text in shown:
        assert KEY not in text
    assert "Secret('***')" in repr(conn)


def test_secret_never_shows_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    config = _keyed_config()
    logger = logging.getLogger("switchboard.test")
    with caplog.at_level(logging.DEBUG, logger="switchboard.test"):
        logger.info("config %s", config)
        logger.info("key %r", config.connections["openai"].api_key)
        logger.info("connection: %s", config.connections["openai"])
        try:
            raise RuntimeError(config.connections["openai"])
        except RuntimeError:
            logger.exception("failed with %s", config.gateway)
    assert caplog.records
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage()


def test_secret_never_shows_in_exceptions() -> None:
    config = _keyed_config()
    conn = config.connections["openai"]
    error = ValueError(conn, conn.api_key)
    assert KEY not in str(error)
    assert KEY not in repr(error)
    # A bad value next to a secret: the problem names the key, not the secret.
    text = f'[connections.openai]\napi_key = "{KEY}"\ntimeout = "x"'
    with pytest.raises(ConfigError) as info:
        loads_config(text, env={})
    assert KEY not in str(info.value)


def test_api_key_of_the_wrong_type_does_not_echo_it() -> None:
    key, what = only_problem("[connections.openai]\napi_key = 123456789")
    assert (key, what) == ("connections.openai.api_key", "expected str, got int")
    key, what = only_problem('[gateway]\ntokens = ["ok", 42]')
    assert (key, what) == ("gateway.tokens[1]", "expected str, got int")


def test_secret_encoding_with_the_enc_hook() -> None:
    config = _keyed_config()
    for data in (
        msgspec.json.encode(config, enc_hook=secret_enc_hook),
        msgspec.msgpack.encode(config, enc_hook=secret_enc_hook),
        dumps_config(config),
    ):
        assert KEY.encode() not in data
        assert b"***" in data
    decoded = msgspec.json.decode(dumps_config(config))
    assert decoded["connections"]["openai"]["api_key"] == "***"
    assert decoded["gateway"]["tokens"] == ["***"]
    assert msgspec.to_builtins(config, enc_hook=secret_enc_hook)["gateway"]["tokens"] == ["***"]
    with pytest.raises(NotImplementedError):
        secret_enc_hook(object())


def test_secret_cannot_be_pickled() -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret(KEY))


# --------------------------------------------------------------------------- example file


EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-openai-test",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "GOOGLE_API_KEY": "g-test",
    "GROQ_API_KEY": "gsk-test",
    "SWITCHBOARD_TOKEN": "tok-test",
}


def test_example_loads_without_any_keys() -> None:
    config = load_config(EXAMPLE, env={})
    assert set(config.connections) == {"openai", "anthropic", "google", "ollama", "groq"}
    assert missing_keys(config) == ["openai", "anthropic", "google", "groq"]
    assert config.gateway is not None
    assert config.gateway.tokens == []


def test_example_values() -> None:
    config = load_config(EXAMPLE, env=EXAMPLE_ENV)
    assert missing_keys(config) == []
    c = config.connections
    openai = c["openai"]
    assert openai.provider == "openai"
    assert openai.base_url == "https://api.openai.com/v1"
    assert openai.api_key == "sk-openai-test"
    assert openai.default_model == "gpt-4o-mini"
    assert openai.resolve_model("smart") == "gpt-4o"
    assert openai.retry.max_attempts == 3
    assert openai.retry.max_delay_ms == 8000
    assert openai.rate_limit.requests_per_minute == 500
    assert openai.rate_limit.concurrent_requests == 32
    assert openai.breaker.window_size == 20
    assert openai.breaker.failure_rate == 50.0
    assert openai.prices["gpt-4o"].cache_read == 1.25
    anthropic = c["anthropic"]
    assert anthropic.provider == "anthropic"
    assert anthropic.api_version == "2023-06-01"
    assert anthropic.supports_prefill
    assert anthropic.retry.max_attempts == 4
    assert anthropic.timeouts.first_token == 30.0
    assert anthropic.resolve_model("fast") == "claude-haiku-4-5-20251001"
    assert c["google"].provider == "gemini"
    assert c["google"].api_key == "g-test"
    assert c["ollama"].provider == "ollama"
    assert c["ollama"].api_key is None
    assert c["ollama"].mailbox.when_full == "reject"
    assert not c["ollama"].breaker.enabled
    groq = c["groq"]
    assert groq.provider == "openai"
    assert groq.base_url == "https://api.groq.com/openai/v1"
    assert groq.headers == {"X-Client": "switchboard-example"}
    chat = config.routes["chat"]
    assert [t.connection for t in chat.targets] == ["openai", "anthropic", "google"]
    assert chat.mid_stream == "restart"
    assert chat.context_fallback == "long-context"
    assert ErrorKind.CIRCUIT_OPEN in chat.failover_on
    assert config.routes["open"].strategy == "weighted"
    assert [t.weight for t in config.routes["open"].targets] == [3.0, 1.0]
    assert config.gateway == GatewayConfig(
        host="127.0.0.1", port=8765, tokens=[Secret("tok-test")], max_concurrent_per_client=32
    )
    assert config.runtime.shutdown_timeout_s == 15.0
    assert KEY not in repr(config)
    assert "sk-openai-test" not in repr(config)


def test_example_connection_is_a_connection_config() -> None:
    conn = load_config(EXAMPLE, env={}).connections["openai"]
    assert isinstance(conn, ConnectionConfig)


def test_keys_and_headers_must_be_wire_safe_and_the_key_is_not_echoed() -> None:
    text = (
        "[connections.c]\nprovider = 'openai'\napi_key = 'sk-caf\u00e9-secret'\n"
        "headers = { 'X-Note' = \"a\\nb\", 'X-Ok' = 'fine value' }\n"
    )
    with pytest.raises(ConfigError) as info:
        loads_config(text)
    keys = {key for key, _ in info.value.problems}
    assert keys == {"connections.c.api_key", "connections.c.headers.X-Note"}
    assert "secret" not in str(info.value)
