"""The ``switchboard`` command line: how a newcomer first meets the project.

    switchboard serve [--config FILE] [--host H] [--port P]
    switchboard chat [PROMPT] [--url URL] [--token T] [--model M] [--json]
    switchboard check FILE
    switchboard fake-provider [--host H] [--port P] [--plan FILE] [--seed N]
    switchboard status [--url URL] [--token T] [--json]

Design choices:

- **Works on a fresh machine.** With no ``--config``, ``serve`` runs an *embedded default*: a
  `FakeProvider` on loopback as the ``local`` connection (no keys needed), plus a connection
  for each real provider whose standard variable is set (``OPENAI_API_KEY``,
  ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``; ``OLLAMA_HOST`` for Ollama).
- **``serve`` and ``chat`` find each other.** ``serve`` writes its URL and token to a state
  file only the user can read (``$XDG_RUNTIME_DIR/switchboard/gateway.json``, else
  ``~/.config/switchboard/gateway.json``) and removes it on exit; ``chat`` and ``status`` use
  it when no ``--url`` is given. With neither, ``chat`` runs in-process on the default.
- **A stale state file is said, not silently skipped.** A ``serve`` that did not stop cleanly
  leaves its file behind. Only a refused connection to a local address proves nothing serves
  there any more (a timeout or a refused token proves nothing): then ``chat`` and ``status``
  say so on stderr, remove the file, and go on as if there had been none.
- **Messages for humans** say what to do; exit codes: 0 success, 1 the request or check
  failed, 2 bad usage or config, 3 the gateway could not be reached.

Heavy imports (the fake provider, trio-websocket client) happen inside the commands, so
``import supervisors`` stays light.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import signal
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from protocol._config import (
    ConnectionConfig,
    GatewayConfig,
    RouteConfig,
    RuntimeConfig,
    Secret,
    Target,
)
from protocol._config_load import load_config
from protocol._errors import ConfigError, RequestFailed
from protocol._messages import (
    ChatRequest,
    Completion,
    Failure,
    Message,
    Restart,
    Switched,
    TextDelta,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_PORT = 8765
DEFAULT_MODEL = "local"


def _err(message: str) -> None:
    print(f"switchboard: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- state file


def state_path() -> Path:
    """Where ``serve`` announces its gateway: the user's runtime dir, else config dir."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and Path(runtime_dir).is_dir():
        return Path(runtime_dir) / "switchboard" / "gateway.json"
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "switchboard" / "gateway.json"


def write_state(url: str, token: str | None) -> Path:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, f)
    os.replace(tmp, path)
    return path


def read_state() -> dict[str, Any] | None:
    """The state file's contents (``url``, ``token``, ``pid``), or ``None`` when there is no
    readable one. Whether a gateway still answers there is `_stale`'s question: the pid
    alone cannot say (another pid namespace, a reused pid)."""
    path = state_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    return data


def remove_state() -> None:
    try:
        data = json.loads(state_path().read_text())
        if data.get("pid") == os.getpid():
            state_path().unlink()
    except (OSError, ValueError):
        pass


def _is_local(host: str) -> bool:
    """True for addresses of this machine whose refusal proves nothing listens: loopback,
    ``localhost``, and the unspecified address a ``serve --host 0.0.0.0`` announces."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


async def _nothing_listens(url: str) -> bool:
    """True when *url* is on this machine and a TCP connection to it is refused. Not for a
    timeout, another error, or a remote host: those prove nothing about the gateway."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return False
    if not parts.hostname or not port or not _is_local(parts.hostname):
        return False
    try:
        with trio.fail_after(2.0):
            stream = await trio.open_tcp_stream(parts.hostname, port)
    except trio.TooSlowError:
        return False
    except OSError as exc:  # trio groups the errors of every address it tried
        cause = exc.__cause__
        errors = list(cause.exceptions) if isinstance(cause, BaseExceptionGroup) else [exc]
        return bool(errors) and all(isinstance(e, ConnectionRefusedError) for e in errors)
    await stream.aclose()
    return False


async def _stale(state: dict[str, Any], then: str) -> bool:
    """When nothing answers at the state file's URL (`_nothing_listens`), say so on stderr
    (ending with *then*, what happens instead), remove the file, and return True."""
    url = state["url"]
    if not await _nothing_listens(url):
        return False
    path = state_path()
    try:
        if json.loads(path.read_text()) == state:  # not a fresh one a new serve just wrote
            path.unlink()
    except (OSError, ValueError):
        pass
    _err(
        f"the state file {path} names {url} but nothing answers there (a gateway that did "
        f"not stop cleanly?); removed it; {then}"
    )
    return True


# --------------------------------------------------------------------------- embedded default


def embedded_config(
    local_base_url: str | None, *, env: dict[str, str] | None = None, port: int = DEFAULT_PORT
) -> RuntimeConfig:
    """The config ``serve`` uses without ``--config``: the ``local`` fake provider (when
    *local_base_url* is given) and each real provider whose key is in the environment."""
    env = dict(os.environ) if env is None else env
    connections: dict[str, ConnectionConfig] = {}
    if local_base_url is not None:
        connections["local"] = ConnectionConfig(
            name="local",
            provider="openai",
            base_url=local_base_url,
            default_model="fake-model",
            models={"local": "fake-model"},
        )
    if env.get("OPENAI_API_KEY"):
        connections["openai"] = ConnectionConfig(
            name="openai",
            provider="openai",
            api_key=Secret(env["OPENAI_API_KEY"]),
            base_url="https://api.openai.com/v1",
            default_model="gpt-4o-mini",
            serves=["gpt-*", "o1*", "o3*", "o4*"],
        )
    if env.get("ANTHROPIC_API_KEY"):
        connections["anthropic"] = ConnectionConfig(
            name="anthropic",
            provider="anthropic",
            api_key=Secret(env["ANTHROPIC_API_KEY"]),
            base_url="https://api.anthropic.com/v1",
            api_version="2023-06-01",
            default_model="claude-sonnet-4-20250514",
            serves=["claude-*"],
        )
    if env.get("GEMINI_API_KEY"):
        connections["gemini"] = ConnectionConfig(
            name="gemini",
            provider="gemini",
            api_key=Secret(env["GEMINI_API_KEY"]),
            base_url="https://generativelanguage.googleapis.com/v1beta",
            default_model="gemini-2.0-flash",
            serves=["gemini-*"],
        )
    if env.get("OLLAMA_HOST"):
        host = env["OLLAMA_HOST"]
        if not host.startswith(("http://", "https://")):
            host = f"http://{host}"
        connections["ollama"] = ConnectionConfig(
            name="ollama",
            provider="ollama",
            base_url=host.rstrip("/"),
            default_model="llama3.1",
        )
    routes: dict[str, RouteConfig] = {}
    if "local" in connections:
        routes["default"] = RouteConfig(targets=[Target(connection="local")])
    return RuntimeConfig(
        connections=connections,
        routes=routes,
        gateway=GatewayConfig(host="127.0.0.1", port=port),
    )


# --------------------------------------------------------------------------- serve


async def _serve(args: argparse.Namespace) -> int:
    from actors.testing._server import FakeProvider

    from ._runtime import open_runtime

    listen_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        if args.config:
            config = load_config(args.config)
        else:
            fake = FakeProvider(seed=0, answer_tokens=40, token_interval=0.03)
            await nursery.start(fake.serve)
            config = embedded_config(fake.base_url("openai"), port=DEFAULT_PORT)
            print(f"local fake provider on {fake.url} (connection 'local', no key needed)")
        gateway_cfg = config.gateway or GatewayConfig()
        gateway_cfg = msgspec.structs.replace(gateway_cfg, enabled=True)
        if args.host:
            gateway_cfg = msgspec.structs.replace(gateway_cfg, host=args.host)
        if args.port is not None:
            gateway_cfg = msgspec.structs.replace(gateway_cfg, port=args.port)
        if gateway_cfg.tokens:
            token, shown = gateway_cfg.tokens[0].reveal(), "(from the config)"
        else:
            token = shown = secrets.token_urlsafe(24)
            gateway_cfg = msgspec.structs.replace(gateway_cfg, tokens=[Secret(token)])
        config = msgspec.structs.replace(config, gateway=gateway_cfg)
        print(f"connections: {', '.join(config.connections) or '(none)'}")
        try:
            async with open_runtime(config) as rt:
                assert rt.gateway is not None
                path = write_state(rt.gateway.url, token)
                print(f"gateway listening on {rt.gateway.url}")
                if rt.gateway.http is not None:
                    http_url = "http" + rt.gateway.url.removeprefix("ws")
                    print(f"OpenAI-compatible API on {http_url}/v1 (api_key: the token)")
                    fragment = f"#token={token}" if shown == token else ""  # never a config token
                    print(f"status page: {http_url}/{fragment}")
                print(f"token: {shown}")
                print(f"state file: {path} (used by `switchboard chat` and `switchboard status`)")
                print('try: switchboard chat "hello"   (Ctrl-C stops the server)', flush=True)
                try:
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for _ in signals:
                            print("shutting down: draining in-flight requests...", flush=True)
                            break
                finally:
                    remove_state()
        except* OSError as group:
            listen_error = group.exceptions[0]
        finally:
            nursery.cancel_scope.cancel()
    if listen_error is not None:
        reason = getattr(listen_error, "strerror", None) or listen_error
        _err(
            f"cannot listen on {gateway_cfg.host}:{gateway_cfg.port} ({reason}); "
            "is another `switchboard serve` running? Pass --port 0 for a free port."
        )
        return EXIT_USAGE
    print("stopped")
    return EXIT_OK


# --------------------------------------------------------------------------- chat


def _summary(result: Completion | Failure) -> str:
    if isinstance(result, Failure):
        hint = f" (retry after {result.retry_after:.1f}s)" if result.retry_after else ""
        return f"failed: {result.kind.value}: {result.message}{hint}"
    u = result.usage
    cost = f"${result.cost:.6f}" if result.cost is not None else "n/a"
    ttft = (
        f"{result.time_to_first_token * 1000:.0f} ms"
        if result.time_to_first_token is not None
        else "n/a"
    )
    return (
        f"[{result.connection} · {result.model} · {u.input_tokens} in / {u.output_tokens} out "
        f"· cost {cost} · first token {ttft} · {result.attempts} attempt(s)]"
    )


def _print_event(event: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(event).decode() + "\n")
    elif isinstance(event, TextDelta):
        sys.stdout.write(event.text)
    elif isinstance(event, Restart | Switched):
        # The terminal cannot take back printed text: say what the client must make of it.
        target = "/".join(part for part in (event.connection, event.model) if part)
        where = f" on {target}" if target else ""
        if isinstance(event, Restart):
            sys.stdout.write("\n")
            note = f"[restarted{where} ({event.reason}): discard the text above]"
        else:
            note = f"[continued{where} ({event.reason})]"
        sys.stdout.flush()
        print(note, file=sys.stderr, flush=True)
    sys.stdout.flush()


def _print_result(result: Completion | Failure, as_json: bool) -> int:
    if as_json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        if isinstance(result, Completion) and not result.text.endswith("\n"):
            sys.stdout.write("\n")
        print(_summary(result), file=sys.stderr if isinstance(result, Failure) else sys.stdout)
    sys.stdout.flush()
    return EXIT_OK if isinstance(result, Completion) else EXIT_FAILED


async def _chat(args: argparse.Namespace, prompt: str) -> int:
    request = ChatRequest(
        model=args.model,
        messages=[Message(role="user", content=prompt)],
        max_tokens=args.max_tokens,
        stream=True,
    )
    url = args.url
    token = args.token or os.environ.get("SWITCHBOARD_TOKEN")
    state = None
    if url is None:
        state = read_state()
        if state is not None:
            url = state["url"]
            token = token or state.get("token")
    if url is None:
        return await _chat_in_process(request, args.json)
    from actors._client import Client, GatewayError

    connected = False
    try:
        async with Client.connect(url, token=token) as client:
            connected = True
            async with client.stream(request) as stream:
                async for event in stream:
                    _print_event(event, args.json)
            return _print_result(stream.result, args.json)
    except GatewayError as exc:
        if state is None or connected:
            _err(str(exc))
            return EXIT_UNREACHABLE
        if await _stale(state, "answering in-process on the embedded default"):
            return await _chat_in_process(request, args.json)
        _err(f"{exc} (the URL is from the state file {state_path()})")
        return EXIT_UNREACHABLE


async def _chat_in_process(request: ChatRequest, as_json: bool) -> int:
    from actors.testing._transport import FakeTransport

    from ._runtime import open_runtime

    config = embedded_config("http://local.fake/v1")
    config = msgspec.structs.replace(config, gateway=None)
    transports = {"local": FakeTransport(seed=0, answer_tokens=40)}
    async with open_runtime(config, transports=transports) as rt:
        async with rt.stream(request) as stream:
            async for event in stream:
                _print_event(event, as_json)
        return _print_result(stream.result, as_json)


# --------------------------------------------------------------------------- status


async def _status(args: argparse.Namespace) -> int:
    from actors._client import Client, GatewayError

    no_gateway = "no running gateway found: start one with `switchboard serve`, or pass --url"
    url = args.url
    token = args.token or os.environ.get("SWITCHBOARD_TOKEN")
    state = None
    if url is None:
        state = read_state()
        if state is None:
            _err(no_gateway)
            return EXIT_UNREACHABLE
        url, token = state["url"], token or state.get("token")
    connected = False
    try:
        async with Client.connect(url, token=token) as client:
            connected = True
            reply = await client.status()
    except GatewayError as exc:
        if state is None or connected:
            _err(str(exc))
        elif await _stale(state, no_gateway):
            pass
        else:
            _err(f"{exc} (the URL is from the state file {state_path()})")
        return EXIT_UNREACHABLE
    if args.json:
        print(msgspec.json.encode(reply).decode())
        return EXIT_OK
    headers = "connection provider breaker queued in-flight requests failures tokens-in "
    headers += "tokens-out cost"
    rows = [
        [
            c.name,
            c.provider,
            c.breaker if c.running else "stopped",
            str(c.queued),
            str(c.in_flight),
            str(c.requests),
            str(c.failures),
            str(c.input_tokens),
            str(c.output_tokens),
            f"{c.cost:.4f}" if c.cost is not None else "-",
        ]
        for c in reply.connections
    ]
    print(f"gateway {url}: {reply.status}")
    print(_table(headers.split(), rows))
    return EXIT_OK


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------- check


def _check(args: argparse.Namespace) -> int:
    from protocol._config_load import missing_keys

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for key, what in exc.problems:
            print(f"  {key or '(top level)'}: {what}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{args.file}: ok ({len(config.connections)} connection(s), "
        f"{len(config.routes)} route(s), gateway {'on' if config.gateway else 'off'})"
    )
    for name in missing_keys(config):
        print(f"  note: connection {name!r} has no api_key yet (set its environment variable)")
    return EXIT_OK


# --------------------------------------------------------------------------- fake-provider


def _load_plan(path: str | None) -> Any:
    from actors.testing._faults import FaultPlan

    if not path:
        return None
    text = Path(path).read_text()
    try:
        if path.endswith(".toml"):
            return FaultPlan.from_toml(text)
        return FaultPlan.from_json(text)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        raise ConfigError(path, [("", f"not a valid fault plan: {exc}")]) from None


async def _fake_provider(args: argparse.Namespace, plan: Any) -> int:
    from actors.testing._server import run_fake_provider

    def ready(url: str) -> None:
        print(f"fake provider on {url}")
        print(f"  openai:    {url}/v1   anthropic: {url}/v1")
        print(f"  gemini:    {url}/v1beta   ollama: {url}")
        print("Ctrl-C stops it.", flush=True)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            options = {"host": args.host, "port": args.port, "plan": plan, "seed": args.seed}
            nursery.start_soon(lambda: run_fake_provider(ready=ready, **options))
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return EXIT_OK


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="A trio-native runtime for LLM provider connections.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the runtime with its WebSocket gateway")
    p.add_argument("--config", help="TOML config (default: the embedded local fake provider)")
    p.add_argument("--host", help="listen address (default from config, 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"listen port (default {DEFAULT_PORT}; 0: any)")

    p = sub.add_parser("chat", help="stream a prompt's answer to the terminal")
    p.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    p.add_argument("--url", help="gateway URL (default: the one `serve` announced)")
    p.add_argument("--token", help="gateway token (default: $SWITCHBOARD_TOKEN or state file)")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model or route (default {DEFAULT_MODEL})"
    )
    p.add_argument("--max-tokens", type=int, default=None, dest="max_tokens")
    p.add_argument("--json", action="store_true", help="print events and result as JSON lines")

    p = sub.add_parser("check", help="validate a config file")
    p.add_argument("file")

    p = sub.add_parser("fake-provider", help="run the fault-injection fake provider")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--plan", help="fault plan file (.json or .toml)")
    p.add_argument("--seed", type=int, default=None)
    dialects = ["openai", "anthropic", "gemini", "ollama", "all"]
    p.add_argument(
        "--dialect",
        choices=dialects,
        default="all",
        help="informational: every dialect is always served",
    )

    p = sub.add_parser("status", help="connections, breakers, queues, tokens and cost")
    p.add_argument("--url")
    p.add_argument("--token")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``switchboard`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return trio.run(_serve, args)
        if args.command == "chat":
            prompt = args.prompt
            if prompt is None:
                if sys.stdin.isatty():
                    print("type a prompt, then Ctrl-D:", file=sys.stderr)
                prompt = sys.stdin.read()
            if not prompt.strip():
                _err("empty prompt: pass one as an argument or on stdin")
                return EXIT_USAGE
            return trio.run(_chat, args, prompt)
        if args.command == "check":
            return _check(args)
        if args.command == "fake-provider":
            return trio.run(_fake_provider, args, _load_plan(args.plan))
        if args.command == "status":
            return trio.run(_status, args)
    except ConfigError as exc:
        _err(f"invalid configuration:\n{exc}")
        return EXIT_USAGE
    except RequestFailed as exc:
        _err(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    _err(f"unknown command {args.command!r}")
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
