"""``[runtime] state``: "local" or a Redis URL; problems name file, key and expectation and
never repeat a password."""

from __future__ import annotations

import pytest

from protocol._config import Secret
from protocol._config_load import loads_config
from protocol._errors import ConfigError
from protocol._state_url import StateUrl, parse_state


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("local", None),
        ("redis://127.0.0.1:6380/2", StateUrl(host="127.0.0.1", port=6380, db=2)),
        ("redis://cache.internal", StateUrl(host="cache.internal")),
        ("redis://cache.internal/", StateUrl(host="cache.internal")),
        ("rediss://r.example:6390/1", StateUrl(host="r.example", port=6390, db=1, tls=True)),
        ("redis://gw@10.0.0.5/3", StateUrl(host="10.0.0.5", db=3, username="gw")),
        ("redis://[::1]:7000/0", StateUrl(host="::1", port=7000)),
    ],
)
def test_parses(text: str, expected: StateUrl | None) -> None:
    assert parse_state(text) == expected


def test_display_is_the_normalised_url() -> None:
    assert StateUrl(host="::1", port=7000).display == "redis://[::1]:7000/0"
    assert StateUrl(host="h", username="u", tls=True, db=4).display == "rediss://u@h:6379/4"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("memcached://h:11211", "expected \"local\" or a Redis URL"),
        ("redis://", "the host is missing"),
        ("redis://h:99999/0", "the port is not a number"),
        ("redis://h/zero", "the database must be a number"),
        ("redis://h/0?timeout=1", "no ?query"),
        ("loca", "expected \"local\""),
    ],
)
def test_refuses_with_what_was_expected(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_state(text)
    assert says in str(info.value)


def test_config_names_file_key_and_expectation() -> None:
    with pytest.raises(ConfigError) as info:
        loads_config('[runtime]\nstate = "redis://h/x"\n', source="gw.toml")
    assert info.value.source == "gw.toml"
    [(key, what)] = info.value.problems
    assert key == "runtime.state"
    assert "the database must be a number" in what
    assert "gw.toml" in str(info.value)


def test_a_password_in_the_url_is_refused_without_repeating_it() -> None:
    with pytest.raises(ConfigError) as info:
        loads_config('[runtime]\nstate = "redis://:hunter2-secret@h:6379/0"\n')
    [(key, what)] = info.value.problems
    assert key == "runtime.state"
    assert "state_password" in what
    assert "hunter2" not in str(info.value)


def test_state_settings_load_and_default_to_local() -> None:
    assert loads_config("").runtime.state == "local"
    config = loads_config(
        "[runtime]\nstate = 'env(\"SB_STATE\")'\nstate_password = 'env(\"SB_REDIS_PASSWORD\")'\n"
        "state_timeout_s = 0.1\n",
        env={"SB_STATE": "redis://127.0.0.1:6379/5", "SB_REDIS_PASSWORD": "pw-123"},
    )
    settings = config.runtime
    assert settings.state == "redis://127.0.0.1:6379/5"
    assert settings.state_password == Secret("pw-123")
    assert "pw-123" not in repr(config)
    assert settings.state_timeout_s == 0.1


def test_a_non_positive_timeout_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        loads_config("[runtime]\nstate_timeout_s = 0\n")
    [(key, _)] = info.value.problems
    assert key == "runtime.state_timeout_s"
