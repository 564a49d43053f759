"""``[gateway.clients.<name>]``: per-client tokens (virtual keys) in the config, and the
problems a config of them can have, each naming the file, the key and what was expected,
never the token."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol._config import ClientConfig, GatewayConfig, Secret
from protocol._config_load import dumps_config, load_config, loads_config
from protocol._errors import ConfigError

PRICED = """
[connections.local]
base_url = "http://127.0.0.1:9/v1"
default_model = "m"
prices = { m = { input = 1.0, output = 2.0 } }
"""

README_EXAMPLE = (
    PRICED
    + """
[gateway]
host = "0.0.0.0"
tokens = ['env("ADMIN_TOKEN")']

[gateway.clients.team-a]
token = 'env("TEAM_A_TOKEN")'
requests_per_minute = 60
tokens_per_minute = 100000
budget_usd = 25.0
budget_period = "month"
models = ["fast", "smart"]

[gateway.clients.batch]
token = 'env("BATCH_TOKEN")'
"""
)

ENV = {
    "ADMIN_TOKEN": "tok-admin-000",
    "TEAM_A_TOKEN": "tok-team-a-111",
    "BATCH_TOKEN": "tok-batch-222",
}


def problems_of(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        loads_config(text, source="test.toml", env=ENV if env is None else env)
    for token in ENV.values():
        assert token not in str(info.value)
    return info.value.problems


def only_problem(text: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    found = problems_of(text, env)
    assert len(found) == 1, found
    return found[0]


def client_table(body: str, name: str = "team-a") -> str:
    return PRICED + f"\n[gateway.clients.{name}]\n" + body


def test_clients_load_with_their_limits_beside_the_plain_tokens() -> None:
    config = loads_config(README_EXAMPLE, env=ENV)
    gateway = config.gateway
    assert gateway is not None
    assert [t.reveal() for t in gateway.tokens] == ["tok-admin-000"]
    team = gateway.clients["team-a"]
    assert team == ClientConfig(
        token=Secret("tok-team-a-111"),
        requests_per_minute=60,
        tokens_per_minute=100_000,
        budget_usd=25.0,
        budget_period="month",
        models=["fast", "smart"],
    )
    batch = gateway.clients["batch"]
    assert batch.token.reveal() == "tok-batch-222"
    assert (batch.requests_per_minute, batch.tokens_per_minute, batch.budget_usd) == (
        None,
        None,
        None,
    )
    assert batch.budget_period == "total"
    assert batch.models is None
    shown = repr(config) + dumps_config(config).decode()
    for token in ENV.values():
        assert token not in shown


def test_plain_tokens_alone_still_work_and_clients_default_to_none() -> None:
    config = loads_config('[gateway]\ntokens = ["t1", "t2"]', env={})
    assert config.gateway is not None
    assert config.gateway.clients == {}
    assert GatewayConfig().clients == {}


def test_clients_alone_authenticate_a_gateway_off_loopback() -> None:
    text = PRICED + '[gateway]\nhost = "0.0.0.0"\n[gateway.clients.a]\ntoken = "tok-a"\n'
    config = loads_config(text, env={})
    assert config.gateway is not None
    assert list(config.gateway.clients) == ["a"]
    key, what = only_problem(PRICED + '[gateway]\nhost = "0.0.0.0"\n')
    assert key == "gateway.tokens"
    assert "[gateway.clients.<name>]" in what


def test_two_clients_with_one_token_is_an_error_naming_both_never_the_token() -> None:
    text = README_EXAMPLE.replace('env("BATCH_TOKEN")', 'env("TEAM_A_TOKEN")')
    assert only_problem(text) == (
        "gateway.clients.batch.token",
        "the same token as gateway.clients.team-a: each client needs its own token",
    )


def test_a_client_with_a_plain_token_is_an_error() -> None:
    text = README_EXAMPLE.replace('env("BATCH_TOKEN")', 'env("ADMIN_TOKEN")')
    assert only_problem(text) == (
        "gateway.clients.batch.token",
        "the same token as gateway.tokens[0]: each client needs its own token",
    )


def test_the_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "switchboard.toml"
    path.write_text(README_EXAMPLE.replace('budget_period = "month"', "budget_period = 'week'"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert str(info.value) == (
        f"{path}: gateway.clients.team-a.budget_period: invalid value 'week'; "
        "expected one of: total, day, month"
    )


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        (
            "requests_per_minute = 60\n",
            "gateway.clients.team-a.token",
            "missing required key 'token'",
        ),
        (
            'token = "t"\nrequests_per_minte = 60\n',
            "gateway.clients.team-a.requests_per_minte",
            "unknown key 'requests_per_minte' (did you mean 'requests_per_minute'?); "
            "expected one of: token, requests_per_minute, tokens_per_minute, budget_usd, "
            "budget_period, models",
        ),
        (
            'token = "t"\nrequests_per_minute = 0\n',
            "gateway.clients.team-a.requests_per_minute",
            "expected int >= 1, got 0",
        ),
        (
            'token = "t"\ntokens_per_minute = "lots"\n',
            "gateway.clients.team-a.tokens_per_minute",
            "expected int, got str",
        ),
        (
            'token = "t"\nbudget_usd = -1.0\n',
            "gateway.clients.team-a.budget_usd",
            "expected float >= 0.0, got -1.0",
        ),
        (
            'token = "t"\nmodels = []\n',
            "gateway.clients.team-a.models",
            "expected at least one model name (leave models out to allow every model)",
        ),
        (
            'token = "t"\nmodels = "fast"\n',
            "gateway.clients.team-a.models",
            "expected array, got str",
        ),
        (
            "token = 42\n",
            "gateway.clients.team-a.token",
            "expected str, got int",
        ),
        (
            'token = \'env("UNSET_TOKEN") ?? ""\'\n',
            "gateway.clients.team-a.token",
            "expected a non-empty token (is its environment variable set but empty?)",
        ),
        (
            "token = 'env(\"UNSET_TOKEN\")'\n",
            "gateway.clients.team-a.token",
            "environment variable UNSET_TOKEN is not set; set it or write "
            'env("UNSET_TOKEN") ?? "default"',
        ),
        (
            'token = "tok\\u00e9"\n',
            "gateway.clients.team-a.token",
            "expected printable ASCII (the token has a line break or a non-ASCII character; "
            "check for a stray newline or a copy-paste artefact)",
        ),
    ],
)
def test_client_problems(body: str, key: str, expected: str) -> None:
    assert only_problem(client_table(body), env={}) == (key, expected)


def test_a_budget_needs_prices() -> None:
    text = '[connections.local]\nbase_url = "http://h/v1"\n'
    text += '[gateway.clients.a]\ntoken = "t"\nbudget_usd = 5\n'
    assert only_problem(text, env={}) == (
        "gateway.clients.a.budget_usd",
        "expected prices to count spend with: no connection has a "
        "[connections.<name>.prices] table, so the budget could never be reached",
    )


def test_a_bad_client_does_not_hide_another_clients_duplicate_token() -> None:
    text = client_table('token = "same"\nbudget_period = "year"\n', "a")
    text += '[gateway.clients.b]\ntoken = "same"\n'
    keys = [k for k, _ in problems_of(text, env={})]
    assert keys == ["gateway.clients.a.budget_period", "gateway.clients.b.token"]


def test_a_client_name_that_needs_quotes_is_quoted_in_the_key_path() -> None:
    text = PRICED + '[gateway.clients."team a"]\ntoken = "t"\nmodels = []\n'
    key, _ = only_problem(text, env={})
    assert key == 'gateway.clients."team a".models'
