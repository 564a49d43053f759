"""Loading a `RuntimeConfig` from TOML: ``env()`` values, provider presets, and problems that
name the file, the key path and what was expected.

The problem: a config file is written by a person, read once, and wrong in more ways than one
at a time. A loader that stops at the first mistake (``msgspec.convert`` on the whole document
does) sends its user round the edit-run loop once per typo; one that reports a stack trace from
deep inside the runtime sends them to the source. So loading is a separate pass that collects
*every* problem as ``(key path, expectation)`` and raises one `ConfigError` holding them all,
which is also what ``switchboard check`` prints.

Options for validation: hand-written checks (drift from the schema), ``msgspec.convert`` on the
whole document (first error only), or walking the schema. We walk it: every table is checked
against its Struct's fields (unknown keys get a "did you mean"), and every leaf value is
converted by msgspec against the field's annotated type, so the ``msgspec.Meta`` constraints in
``_config`` are the single source of truth for ranges. Each connection and route is checked on
its own, so one bad connection does not hide the next one's problems; cross-checks (a route
naming a missing connection, a gateway open to the network without tokens) run on whatever
was valid.

``env()``: a string value that is exactly ``env("VAR")`` or ``env("VAR") ?? "default"`` (any
whitespace) is replaced by the variable's value, read from the mapping passed in (default
``os.environ``). A string that merely contains ``env(`` somewhere else is left alone; one that
starts like a call but is malformed is reported, since it is never what the user meant. A set
but empty variable is kept as the empty string; for ``api_key`` that means "no key".

Secrets: ``api_key`` and ``gateway.tokens`` become `Secret` values here; a plain string in the
file is accepted (``env()`` is recommended so the file can be committed). Empty gateway tokens
are dropped: an empty token must never authenticate anyone.

Providers: ``provider`` names a wire dialect or a preset. A preset fixes the dialect and the
default ``base_url`` (Groq, OpenRouter, DeepSeek, Together and Mistral are the ``openai``
dialect at their own URLs; ``openai-compatible``, ``vllm`` and ``tgi`` need a ``base_url``).
Without ``provider``, the connection's name is used when it is a known provider or preset
(``[connections.anthropic]``, ``[connections.google]``), else ``openai``. An ``ollama``
connection whose ``base_url`` ends in ``/v1`` is Ollama's OpenAI-compatible endpoint and so
uses the ``openai`` dialect at that URL.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from ._config import (
    ConnectionConfig,
    GatewayConfig,
    ProviderName,
    RouteConfig,
    RuntimeConfig,
    RuntimeSettings,
    Secret,
    secret_enc_hook,
)
from ._errors import ConfigError
from ._state_url import parse_state

__all__ = [
    "PRESETS",
    "Preset",
    "config_from_dict",
    "config_problems",
    "connection_from_dict",
    "default_base_url",
    "dumps_config",
    "load_config",
    "loads_config",
    "missing_keys",
]

Problem = tuple[str, str]

# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """What a ``provider`` value means: the wire ``dialect``, the default ``base_url`` (empty:
    the user must give one) and whether the service needs an API key."""

    dialect: ProviderName
    base_url: str
    needs_key: bool


PRESETS: Final[Mapping[str, Preset]] = {
    "openai": Preset("openai", "https://api.openai.com/v1", True),
    "anthropic": Preset("anthropic", "https://api.anthropic.com/v1", True),
    "gemini": Preset("gemini", "https://generativelanguage.googleapis.com/v1beta", True),
    "google": Preset("gemini", "https://generativelanguage.googleapis.com/v1beta", True),
    "ollama": Preset("ollama", "http://localhost:11434", False),
    "groq": Preset("openai", "https://api.groq.com/openai/v1", True),
    "openrouter": Preset("openai", "https://openrouter.ai/api/v1", True),
    "deepseek": Preset("openai", "https://api.deepseek.com/v1", True),
    "together": Preset("openai", "https://api.together.xyz/v1", True),
    "mistral": Preset("openai", "https://api.mistral.ai/v1", True),
    "openai-compatible": Preset("openai", "", False),
    "vllm": Preset("openai", "", False),
    "tgi": Preset("openai", "", False),
}
"""Every accepted ``provider`` value (``_`` and ``-`` are interchangeable, case is ignored)."""

_DEFAULT_ANTHROPIC_VERSION = "2023-06-01"

# Hosts of services that always need a key: an ``openai``-dialect connection pointed at one of
# them without a key is reported by `missing_keys`.
_KEYED_HOSTS = frozenset(
    urlsplit(p.base_url).hostname or "" for p in PRESETS.values() if p.needs_key and p.base_url
)
_KEY_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})


def default_base_url(provider: ProviderName) -> str:
    """The base URL a connection of dialect *provider* uses when it gives none."""
    return PRESETS[provider].base_url


def missing_keys(config: RuntimeConfig) -> list[str]:
    """Names of connections that have no API key but talk to a service that needs one.

    Such a config loads (the key may arrive later via ``override_connection``); a ``check``
    command or the runtime reports these. A connection counts as keyed when it has an
    ``api_key`` or sets an auth header (``Authorization``, ``x-api-key``, ...) itself.
    """
    missing = []
    for name, conn in config.connections.items():
        if conn.api_key or any(h.lower() in _KEY_HEADERS for h in conn.headers):
            continue
        if conn.provider in ("anthropic", "gemini"):
            missing.append(name)
        elif conn.provider == "openai":
            base = conn.base_url or default_base_url("openai")
            if (urlsplit(base).hostname or "") in _KEYED_HOSTS:
                missing.append(name)
    return missing


# --------------------------------------------------------------------------- entry points


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> RuntimeConfig:
    """Load a TOML config file.

    *env* supplies ``env("VAR")`` values (default: ``os.environ``). Raises `ConfigError`
    listing every problem found (each naming the key path and what was expected); a missing or
    unreadable file, non-UTF-8 text and TOML syntax errors (with line and column) are
    `ConfigError`\\ s too.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(source, [("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = _line_col(raw.decode("utf-8", "replace"), exc.start)
        raise ConfigError(source, [(where, "expected UTF-8 text, found invalid bytes")]) from None
    return loads_config(text, source=source, env=env)


def loads_config(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> RuntimeConfig:
    """Load a config from TOML *text*; *source* names it in problems. See `load_config`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [_toml_problem(exc)]) from None
    return config_from_dict(data, source=source, env=env)


def config_from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", env: Mapping[str, str] | None = None
) -> RuntimeConfig:
    """Build a config from the dict a TOML parser produced (or one written in Python), with
    the same ``env()`` expansion, presets and validation as `loads_config`."""
    loader = _Loader(os.environ if env is None else env)
    config = loader.runtime_config(data)
    if loader.problems or config is None:
        raise ConfigError(source, loader.problems)
    return config


def connection_from_dict(
    name: str,
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    env: Mapping[str, str] | None = None,
) -> ConnectionConfig:
    """One connection table (as in ``[connections.<name>]``), validated, with presets
    applied: for adding or overriding a connection at run time."""
    loader = _Loader(os.environ if env is None else env)
    conn = loader.connection(name, data, f"connections.{_key(name)}")
    if loader.problems or conn is None:
        raise ConfigError(source, loader.problems)
    return conn


def config_problems(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every problem of the config file at *path* as ``(key path, expectation)`` pairs; empty
    when it loads. For ``switchboard check``."""
    try:
        load_config(path, env=env)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def dumps_config(config: RuntimeConfig) -> bytes:
    """The config as JSON, every `Secret` written as ``"***"`` (safe to print or log)."""
    return msgspec.json.encode(config, enc_hook=secret_enc_hook)


def _wire_safe(value: str) -> bool:
    """True when *value* can go in an HTTP header as is: printable ASCII and spaces/tabs."""
    return value.isascii() and all(c == "\t" or " " <= c <= "~" for c in value)


# --------------------------------------------------------------------------- TOML errors

_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


def _toml_problem(exc: tomllib.TOMLDecodeError) -> Problem:
    message = str(exc)
    m = _AT_LINE.search(message)
    if m:
        where = f"line {m.group(1)}, column {m.group(2)}"
        message = message[: m.start()]
    elif _AT_END.search(message):
        where = "end of file"
        message = _AT_END.sub("", message)
    else:
        where = ""
    return where, f"invalid TOML: {message[:1].lower()}{message[1:]}"


def _line_col(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {column}"


# --------------------------------------------------------------------------- env()

_ENV = re.compile(
    r"""^\s*env\(\s*(?:"([^"]*)"|'([^']*)')\s*\)"""
    r"""(?:\s*\?\?\s*(?:"([^"]*)"|'([^']*)'))?\s*$"""
)
_ENV_LIKE = re.compile(r"^\s*env\s*\(")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MISSING: Final = object()


# --------------------------------------------------------------------------- key paths

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    """*name* as it would be written in a TOML dotted key."""
    return name if _BARE_KEY.match(name) else '"' + name.replace('"', '\\"') + '"'


def _join(path: str, name: str) -> str:
    return f"{path}.{_key(name)}" if path else _key(name)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------- msgspec errors

_EXPECTED_GOT = re.compile(r"^Expected `([^`]*)`, got `([^`]*)`$")
_CONSTRAINT = re.compile(r"^Expected `([^`]*)` (>=|<=|>|<) (\S+)$")
_ENUM = re.compile(r"^Invalid enum value (.*)$")
_MSGSPEC_PATH = re.compile(r"^(.*) - at `\$(.*)`$", re.DOTALL)
_TOML_TYPE_NAMES = {"object": "table", "array": "array", "null": "nothing"}


def _type_words(spec: str) -> str:
    parts = [p for p in spec.split(" | ") if p != "null"] or ["nothing"]
    return " or ".join(_TOML_TYPE_NAMES.get(p, p) for p in parts)


def _choices(tp: Any) -> list[str]:
    """The allowed string values of a Literal/Enum type, looking through containers."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _choices(typing.get_args(tp)[0])
    if origin is Literal:
        return [str(a) for a in typing.get_args(tp) if isinstance(a, str)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [str(m.value) for m in tp]
    out: list[str] = []
    for arg in typing.get_args(tp):
        if arg is not Ellipsis:
            out.extend(c for c in _choices(arg) if c not in out)
    return out


def _translate(exc: msgspec.ValidationError, path: str, value: Any, tp: Any) -> Problem:
    """A msgspec validation error about *value* (at *path*, of type *tp*) as a problem."""
    message = str(exc)
    m = _MSGSPEC_PATH.match(message)
    sub = ""
    if m:
        message, sub = m.group(1), m.group(2)
    where = path + sub if sub.startswith("[") else _join(path, sub[1:]) if sub else path
    if m := _EXPECTED_GOT.match(message):
        return where, f"expected {_type_words(m.group(1))}, got {_type_words(m.group(2))}"
    if m := _CONSTRAINT.match(message):
        what = f"expected {_type_words(m.group(1))} {m.group(2)} {m.group(3)}"
        if not sub and isinstance(value, int | float):
            what += f", got {value!r}"
        return where, what
    if m := _ENUM.match(message):
        choices = _choices(tp)
        bad = m.group(1)
        hint = _suggest(bad.strip("'\""), choices)
        return where, f"invalid value {bad}{hint}; expected one of: {', '.join(choices)}"
    return where, message[:1].lower() + message[1:]


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Secret:
        if isinstance(obj, Secret):
            return obj
        if isinstance(obj, str):
            return Secret(obj)
        raise ValueError(f"Expected `str`, got `{_toml_type(obj)}`")
    raise NotImplementedError(f"cannot convert to {tp!r}")


# --------------------------------------------------------------------------- the loader

_KIND_ALIASES = {
    "rate_limit": "rate_limited",
    "rate_limits": "rate_limited",
    "overload": "overloaded",
    "server": "server_error",
    "timeouts": "timeout",
    "connection_error": "connection",
}
"""Other spellings of error kinds in ``retry_on`` / ``failover_on`` (the seed documents write
``rate_limit``)."""

_INVALID: Final = object()
_TOP_LEVEL = ("connections", "routes", "gateway", "runtime")
_LOOPBACK = ("localhost", "::1", "[::1]")


class _Loader:
    """One load: the env mapping and the problems found so far."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[Problem] = []

    def problem(self, path: str, what: str) -> None:
        self.problems.append((path, what))

    # ----------------------------------------------------------------- env()

    def expand(self, value: Any, path: str) -> Any:
        """*value* with every ``env()`` string replaced; `_MISSING` when it cannot be."""
        if isinstance(value, str):
            return self.expand_string(value, path)
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                r = self.expand(v, _join(path, str(k)))
                if r is not _MISSING:
                    out[k] = r
            return out
        if isinstance(value, list):
            items = (self.expand(v, f"{path}[{i}]") for i, v in enumerate(value))
            return [r for r in items if r is not _MISSING]
        return value

    def expand_string(self, text: str, path: str) -> Any:
        m = _ENV.match(text)
        if m is None:
            if _ENV_LIKE.match(text):
                self.problem(
                    path,
                    'expected env("VAR") or env("VAR") ?? "default" (the variable name in quotes)',
                )
                return _MISSING
            return text
        var = m.group(1) if m.group(1) is not None else m.group(2)
        default = m.group(3) if m.group(3) is not None else m.group(4)
        if not _ENV_NAME.match(var):
            self.problem(path, f"env(): {var!r} is not a valid environment variable name")
            return _MISSING
        found = self.env.get(var)
        if found is not None:
            return found
        if default is not None:
            return default
        self.problem(
            path,
            f'environment variable {var} is not set; set it or write env("{var}") ?? "default"',
        )
        return _MISSING

    # ----------------------------------------------------------------- schema walk

    def validate(self, value: Any, tp: Any, path: str) -> Any:
        """*value* converted to *tp*, or `_INVALID` after recording its problems."""
        base = tp
        if typing.get_origin(base) is typing.Annotated:
            base = typing.get_args(base)[0]
        origin = typing.get_origin(base)
        if _is_struct(base):
            return self.struct(value, base, path)
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(base) if a is not type(None)]
            if len(members) == 1 and _is_struct(members[0]):
                return self.struct(value, members[0], path)
        if origin is dict:
            if not isinstance(value, dict):
                self.problem(path, f"expected a table, got {_toml_type(value)}")
                return _INVALID
            key_tp, value_tp = typing.get_args(base)
            out = {}
            for k, v in value.items():
                key = self.leaf(k, key_tp, _join(path, str(k)))
                item = self.validate(v, value_tp, _join(path, str(k)))
                if key is not _INVALID and item is not _INVALID:
                    out[key] = item
            return out if len(out) == len(value) else _INVALID
        if origin in (list, tuple) and self._holds_struct(base):
            if not isinstance(value, list):
                self.problem(path, f"expected an array, got {_toml_type(value)}")
                return _INVALID
            item_tp = typing.get_args(base)[0]
            items = [self.validate(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
            if any(i is _INVALID for i in items):
                return _INVALID
            return items if origin is list else tuple(items)
        return self.leaf(value, tp, path)

    @staticmethod
    def _holds_struct(tp: Any) -> bool:
        args = typing.get_args(tp)
        return bool(args) and _is_struct(args[0])

    def leaf(self, value: Any, tp: Any, path: str) -> Any:
        try:
            return msgspec.convert(value, tp, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            self.problems.append(_translate(exc, path, value, tp))
            return _INVALID

    def struct(
        self, value: Any, cls: type[msgspec.Struct], path: str, *, hidden: tuple[str, ...] = ()
    ) -> Any:
        """A table checked against *cls*: unknown keys, missing keys, then every field."""
        if not isinstance(value, dict):
            self.problem(path, f"expected a table, got {_toml_type(value)}")
            return _INVALID
        fields = {f.name: f for f in msgspec.structs.fields(cls)}
        ok = True
        for key in value:
            if key not in fields:
                names = [n for n in fields if n not in hidden]
                self.problem(
                    _join(path, str(key)),
                    f"unknown key '{key}'{_suggest(str(key), names)}; "
                    f"expected one of: {', '.join(names)}",
                )
                ok = False
        for name, field in fields.items():
            if field.required and name not in value:
                where = _join(path, name)
                if all(p != where for p, _ in self.problems):  # not said (an unset env())
                    self.problem(where, f"missing required key '{name}'")
                ok = False
        out = {}
        for key, item in value.items():
            if key in fields:
                converted = self.validate(item, fields[key].type, _join(path, key))
                if converted is _INVALID:
                    ok = False
                else:
                    out[key] = converted
        return cls(**out) if ok else _INVALID

    # ----------------------------------------------------------------- sections

    def runtime_config(self, data: Mapping[str, Any]) -> RuntimeConfig | None:
        """The whole document. Every section is checked even when an earlier one failed."""
        for key in data:
            if key not in _TOP_LEVEL:
                self.problem(
                    _key(str(key)),
                    f"unknown key '{key}'{_suggest(str(key), list(_TOP_LEVEL))}; "
                    f"expected one of: {', '.join(_TOP_LEVEL)}",
                )
        connections: dict[str, ConnectionConfig] = {}
        raw_connections = self.table(data, "connections")
        for name, table in raw_connections.items():
            conn = self.connection(str(name), table, f"connections.{_key(str(name))}")
            if conn is not None:
                connections[str(name)] = conn
        routes: dict[str, RouteConfig] = {}
        raw_routes: dict[str, Any] = {}
        for name, table in self.table(data, "routes").items():
            path = f"routes.{_key(str(name))}"
            raw_routes[str(name)] = raw = self.expand(table, path)
            route = self.route(raw, path)
            if route is not None:
                routes[str(name)] = route
        self.check_routes(raw_routes, connections, [str(n) for n in raw_connections])
        gateway: GatewayConfig | None = None
        if "gateway" in data:
            gateway = self.gateway(self.expand(data["gateway"], "gateway"), raw_connections)
        settings = RuntimeSettings()
        if "runtime" in data:
            value = self.struct(self.expand(data["runtime"], "runtime"), RuntimeSettings, "runtime")
            if value is not _INVALID:
                settings = value
                try:
                    parse_state(settings.state)
                except ValueError as exc:
                    self.problem("runtime.state", str(exc))
        if self.problems:
            return None
        return RuntimeConfig(
            connections=connections, routes=routes, gateway=gateway, runtime=settings
        )

    def table(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(
                key, f"expected a table of tables ([{key}.<name>]), got {_toml_type(value)}"
            )
            return {}
        return value

    def connection(self, name: str, table: Any, path: str) -> ConnectionConfig | None:
        if not isinstance(table, dict):
            self.problem(path, f"expected a table, got {_toml_type(table)}")
            return None
        before = len(self.problems)
        data = self.expand(dict(table), path)
        if "name" in data and data["name"] != name:
            self.problem(
                _join(path, "name"),
                f"the name comes from the table key ('{name}'); remove this key",
            )
        data["name"] = name
        self.apply_preset(name, data, path)
        retry = data.get("retry")
        if isinstance(retry, dict):
            data["retry"] = self.kind_aliases(retry, "retry_on")
        if data.get("api_key") == "":
            del data["api_key"]  # An empty (e.g. unset-with-default) key means no key.
        conn = self.struct(data, ConnectionConfig, path, hidden=("name",))
        if conn is _INVALID:
            return None
        assert isinstance(conn, ConnectionConfig)
        self.check_connection(conn, path)
        return conn if len(self.problems) == before else None

    def apply_preset(self, name: str, data: dict[str, Any], path: str) -> None:
        """Resolve ``provider`` (a dialect or preset, or inferred from *name*) into a dialect
        and fill the preset's ``base_url`` and ``api_version`` defaults, in *data*. On a
        problem, records it and leaves *data* valid enough for the rest to be checked."""
        raw = data.get("provider")
        if raw is None:
            preset_name = _preset_key(name)
            if preset_name not in PRESETS:
                preset_name = "openai"
        elif not isinstance(raw, str):
            return  # The schema walk reports the type.
        else:
            preset_name = _preset_key(raw)
            if preset_name not in PRESETS:
                self.problem(
                    _join(path, "provider"),
                    f"unknown provider '{raw}'{_suggest(preset_name, list(PRESETS))}; "
                    f"expected one of: {', '.join(PRESETS)}",
                )
                del data["provider"]
                return
        preset = PRESETS[preset_name]
        base_url = data.get("base_url") or ""
        if not isinstance(base_url, str):
            return  # The schema walk reports the type.
        dialect = preset.dialect
        if not base_url:
            if not preset.base_url:
                self.problem(
                    _join(path, "base_url"),
                    f"provider '{preset_name}' needs a base_url (the server's "
                    "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1)",
                )
                del data["provider"]
                return
            base_url = preset.base_url
        elif dialect == "ollama" and base_url.rstrip("/").endswith("/v1"):
            dialect = "openai"  # Ollama's OpenAI-compatible endpoint.
        data["provider"] = dialect
        data["base_url"] = base_url
        if dialect == "anthropic" and data.get("api_version") is None:
            data["api_version"] = _DEFAULT_ANTHROPIC_VERSION

    def kind_aliases(self, table: dict[str, Any], key: str) -> dict[str, Any]:
        kinds = table.get(key)
        if not isinstance(kinds, list):
            return table
        fixed = [_KIND_ALIASES.get(k, k) if isinstance(k, str) else k for k in kinds]
        return {**table, key: fixed}

    def check_connection(self, conn: ConnectionConfig, path: str) -> None:
        """Cross-field checks of one connection that the schema cannot express."""
        url = urlsplit(conn.base_url)
        if conn.base_url and (url.scheme not in ("http", "https") or not url.netloc):
            self.problem(
                _join(path, "base_url"),
                f"expected an http:// or https:// URL, got {conn.base_url!r}",
            )
        retry = conn.retry
        if retry.initial_delay_ms > retry.max_delay_ms:
            self.problem(
                f"{path}.retry.initial_delay_ms",
                f"expected at most max_delay_ms ({retry.max_delay_ms}), "
                f"got {retry.initial_delay_ms}",
            )
        breaker = conn.breaker
        if breaker.window == "count" and breaker.minimum_calls > breaker.window_size:
            self.problem(
                f"{path}.breaker.minimum_calls",
                f"expected at most window_size ({breaker.window_size}) with a count window, "
                f"got {breaker.minimum_calls}: the breaker could never open",
            )
        for header, value in conn.headers.items():
            if not _HEADER_NAME.match(header):
                self.problem(
                    _join(_join(path, "headers"), header),
                    "expected an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
                )
            elif not _wire_safe(value):
                self.problem(
                    _join(_join(path, "headers"), header),
                    "expected printable ASCII (no line breaks or non-ASCII characters)",
                )
        if conn.api_key is not None and not _wire_safe(conn.api_key.reveal()):
            # Never echo the value: it is a secret.
            self.problem(
                f"{path}.api_key",
                "expected printable ASCII (the key has a line break or a non-ASCII character; "
                "check for a stray newline or a copy-paste artefact)",
            )
        for alias, model in conn.models.items():
            if not model:
                self.problem(_join(_join(path, "models"), alias), "expected a model name")

    def route(self, data: Any, path: str) -> RouteConfig | None:
        """One ``[routes.<model>]`` table (``env()`` already expanded)."""
        if isinstance(data, dict):
            data = self.kind_aliases(data, "failover_on")
        route = self.struct(data, RouteConfig, path)
        if route is _INVALID:
            return None
        assert isinstance(route, RouteConfig)
        if not route.targets:
            self.problem(_join(path, "targets"), "expected at least one target")
            return None
        return route

    def check_routes(
        self,
        raw_routes: dict[str, Any],
        connections: dict[str, ConnectionConfig],
        connection_names: list[str],
    ) -> None:
        """Routes against connections and each other. Runs on the raw tables, so a route
        with a bad value elsewhere still gets its references checked."""
        known = ", ".join(sorted(connection_names)) or "none are configured"
        served = _served_models(connections, raw_routes)
        for route_name, raw in raw_routes.items():
            if not isinstance(raw, dict):
                continue
            path = f"routes.{_key(route_name)}"
            targets = raw.get("targets")
            for i, target in enumerate(targets if isinstance(targets, list) else []):
                name = target.get("connection") if isinstance(target, dict) else None
                if isinstance(name, str) and name not in connection_names:
                    self.problem(
                        f"{path}.targets[{i}].connection",
                        f"no connection named '{name}'"
                        f"{_suggest(name, connection_names)}; connections: {known}",
                    )
            fallback = raw.get("context_fallback")
            if not isinstance(fallback, str):
                continue
            if fallback == route_name:
                self.problem(f"{path}.context_fallback", "expected another route, not itself")
            elif fallback not in raw_routes and not _serves(served, fallback):
                self.problem(
                    f"{path}.context_fallback",
                    f"'{fallback}' is neither a route nor a model any connection serves"
                    f"{_suggest(fallback, [*raw_routes, *served])}",
                )

    def gateway(
        self, raw: Any, raw_connections: Mapping[str, Any] | None = None
    ) -> GatewayConfig | None:
        if isinstance(raw, dict) and isinstance(raw.get("tokens"), list):
            # An empty token (say, an unset env() with an empty default) must never match.
            raw = {**raw, "tokens": [t for t in raw["tokens"] if t != ""]}
        value = self.struct(raw, GatewayConfig, "gateway")
        before = len(self.problems)
        if isinstance(raw, dict):
            # Checked on the raw table, so it is reported even when another key is bad.
            default = GatewayConfig()
            host = raw.get("host", default.host)
            if (
                raw.get("enabled", True) is True
                and not raw.get("tokens")
                and not raw.get("clients")
                and isinstance(host, str)
                and not _is_loopback(host)
            ):
                self.problem(
                    "gateway.tokens",
                    f"expected at least one token (or a [gateway.clients.<name>]): a gateway "
                    f"on {host!r} (not loopback) must authenticate its clients",
                )
            self.check_clients(raw, raw_connections)
        if len(self.problems) > before:
            return None
        return value if isinstance(value, GatewayConfig) else None

    def check_clients(self, raw: dict[str, Any], raw_connections: Mapping[str, Any] | None) -> None:
        """Cross-checks of ``[gateway.clients.<name>]`` on the raw tables: a token is
        non-empty, fits an HTTP header and belongs to one client only (never echoed: it is a
        secret); an allow-list is not empty; a budget has prices to count spend with."""
        clients = raw.get("clients")
        if not isinstance(clients, dict):
            return
        holder: dict[str, str] = {}  # token -> key path of the first that has it
        tokens = raw.get("tokens")
        for i, token in enumerate(tokens if isinstance(tokens, list) else []):
            text = _token_text(token)
            if text is not None:
                holder.setdefault(text, f"gateway.tokens[{i}]")
        priced = raw_connections is None or any(
            isinstance(t, dict) and t.get("prices") for t in raw_connections.values()
        )
        for name, table in clients.items():
            if not isinstance(table, dict):
                continue  # The schema walk reports it.
            path = _join("gateway.clients", str(name))
            text = _token_text(table.get("token"))
            if text == "":
                self.problem(
                    f"{path}.token",
                    "expected a non-empty token (is its environment variable set but empty?)",
                )
            elif text is not None and not _wire_safe(text):
                self.problem(
                    f"{path}.token",
                    "expected printable ASCII (the token has a line break or a non-ASCII "
                    "character; check for a stray newline or a copy-paste artefact)",
                )
            elif text is not None and text in holder:
                self.problem(
                    f"{path}.token",
                    f"the same token as {holder[text]}: each client needs its own token",
                )
            elif text is not None:
                holder[text] = path
            if table.get("models") == []:
                self.problem(
                    f"{path}.models",
                    "expected at least one model name (leave models out to allow every model)",
                )
            budget = table.get("budget_usd")
            if isinstance(budget, int | float) and not isinstance(budget, bool) and not priced:
                self.problem(
                    f"{path}.budget_usd",
                    "expected prices to count spend with: no connection has a "
                    "[connections.<name>.prices] table, so the budget could never be reached",
                )


def _is_struct(tp: Any) -> typing.TypeGuard[type[msgspec.Struct]]:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _token_text(value: Any) -> str | None:
    """The text of a token as written (a string, or a `Secret` from Python), else ``None``."""
    if isinstance(value, Secret):
        return value.reveal()
    return value if isinstance(value, str) else None


def _preset_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK or host.startswith("127.")


def _served_models(
    connections: dict[str, ConnectionConfig], raw_routes: dict[str, Any]
) -> list[str]:
    """Model names and ``serves`` patterns some connection or route target answers for."""
    served: list[str] = []
    for conn in connections.values():
        if conn.default_model:
            served.append(conn.default_model)
        served.extend(conn.models)
        served.extend(conn.models.values())
        served.extend(conn.serves)
        served.extend(conn.prices)
    for raw in raw_routes.values():
        targets = raw.get("targets") if isinstance(raw, dict) else None
        for target in targets if isinstance(targets, list) else []:
            if isinstance(target, dict) and isinstance(target.get("model"), str):
                served.append(target["model"])
    return list(dict.fromkeys(served))


def _serves(served: list[str], model: str) -> bool:
    return any(model == pattern or fnmatchcase(model, pattern) for pattern in served)
