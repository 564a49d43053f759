"""The command line, in-process: argument handling, check, the embedded default, state file."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from supervisors import _cli
from supervisors._cli import (
    embedded_config,
    main,
    read_state,
    remove_state,
    state_path,
    write_state,
)


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def test_check_ok_and_notes_missing_keys(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "switchboard.toml"
    assert main(["check", str(example)]) == 0
    out = capsys.readouterr().out
    assert "ok (5 connection(s)" in out
    assert "has no api_key yet" in out


def test_check_lists_every_problem_with_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[connections.x]\nprovider = "nope"\ntimout = 3\n')
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "connections.x.provider" in err
    assert "connections.x.timout" in err
    assert "did you mean 'timeout'" in err


def test_chat_in_process_on_the_embedded_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "hello there"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines[0].split()) == 40  # the fake's deterministic 40-word answer
    assert lines[-1].startswith("[local · fake-model · 2 in / 40 out")


def test_chat_json_prints_events_then_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--json", "hi"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["type"] == "text_delta"
    assert records[-2]["type"] == "finished"
    assert records[-1]["connection"] == "local"
    assert records[-1]["usage"]["output_tokens"] == 40
    text = "".join(r["text"] for r in records if r.get("type") == "text_delta")
    assert text == records[-1]["text"]


def test_chat_unknown_model_fails_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--model", "nope", "hi"]) == 1
    assert "no connection serves model 'nope'" in capsys.readouterr().err


def test_chat_empty_prompt_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("   \n"))
    assert main(["chat"]) == 2
    assert "empty prompt" in capsys.readouterr().err


def test_chat_unreachable_gateway_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "--url", "ws://127.0.0.1:1", "hi"]) == 3
    assert "switchboard serve" in capsys.readouterr().err


def test_status_without_gateway_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 3
    assert "start one with `switchboard serve`" in capsys.readouterr().err


def test_state_file_is_private_and_removed(isolated_state: Path) -> None:
    path = write_state("ws://127.0.0.1:9", "secret-token")
    assert path == state_path()
    assert path.is_relative_to(isolated_state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_state() == {"url": "ws://127.0.0.1:9", "token": "secret-token", "pid": os.getpid()}
    remove_state()
    assert not path.exists()
    assert read_state() is None


def closed_port() -> int:
    """A loopback port nothing listens on (bound, noted, closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def stale_state(pid: int) -> tuple[Path, str]:
    """A state file naming a loopback port where nothing answers, as a `serve` that did not
    stop cleanly leaves behind."""
    url = f"ws://127.0.0.1:{closed_port()}"
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "token": "t0ken-in-state", "pid": pid}))
    return path, url


DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no such process


@pytest.mark.parametrize("pid", [DEAD_PID, os.getpid()], ids=["writer-dead", "pid-alive"])
def test_chat_with_a_stale_state_file_says_so_removes_it_and_answers_in_process(
    pid: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path, url = stale_state(pid)
    assert main(["chat", "hello there"]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"switchboard: the state file {path} names {url} but nothing answers there (a gateway "
        "that did not stop cleanly?); removed it; answering in-process on the embedded "
        "default\n"
    )
    assert not path.exists()
    assert out.strip().splitlines()[-1].startswith("[local · fake-model · 2 in / 40 out")


def test_status_with_a_stale_state_file_says_so_and_removes_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, url = stale_state(DEAD_PID)
    assert main(["status"]) == 3
    err = capsys.readouterr().err
    assert f"the state file {path} names {url} but nothing answers there" in err
    assert "removed it; no running gateway found: start one with `switchboard serve`" in err
    assert len(err.splitlines()) == 1
    assert not path.exists()


def test_a_state_file_whose_port_accepts_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    """Something listens there but is no gateway (a web server answering 404): not proof of
    a dead gateway, so the file stays, and the error names where the URL came from."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]

        def not_found() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=not_found, daemon=True)
        thread.start()
        path = write_state(f"ws://127.0.0.1:{port}", "t0ken")
        assert main(["status"]) == 3
        thread.join(timeout=5)
    err = capsys.readouterr().err
    assert "refused the WebSocket upgrade with HTTP 404" in err
    assert f"(the URL is from the state file {path})" in err
    assert "nothing answers there" not in err
    assert path.exists()


def test_an_explicit_url_never_touches_the_state_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, _ = stale_state(DEAD_PID)
    assert main(["chat", "--url", f"ws://127.0.0.1:{closed_port()}", "hi"]) == 3
    assert "nothing answers there" not in capsys.readouterr().err
    assert path.exists()


def test_only_local_addresses_can_prove_a_state_file_stale() -> None:
    for host in ["127.0.0.1", "127.1.2.3", "::1", "localhost", "0.0.0.0", "::"]:
        assert _cli._is_local(host), host
    for host in ["10.0.0.5", "192.0.2.1", "example.com", "2001:db8::1"]:
        assert not _cli._is_local(host), host


def test_check_names_file_key_and_expectation_for_max_connections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for value, expected in [
        ("0", "expected int >= 1, got 0"),
        ("-1", "expected int >= 1, got -1"),
        ('"x"', "expected int, got str"),
    ]:
        bad = tmp_path / "gateway.toml"
        bad.write_text(f"[gateway]\nmax_connections = {value}\n")
        assert main(["check", str(bad)]) == 1
        err = capsys.readouterr().err
        assert f"{bad}: 1 problem(s)" in err
        assert f"gateway.max_connections: {expected}" in err
    good = tmp_path / "good.toml"
    good.write_text("[gateway]\nmax_connections = 2\n")
    assert main(["check", str(good)]) == 0


def test_state_prefers_xdg_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert state_path() == runtime / "switchboard" / "gateway.json"


def test_embedded_default_adds_providers_from_the_environment() -> None:
    bare = embedded_config("http://127.0.0.1:1/v1", env={})
    assert list(bare.connections) == ["local"]
    assert bare.routes["default"].targets[0].connection == "local"
    full = embedded_config(
        "http://127.0.0.1:1/v1",
        env={
            "OPENAI_API_KEY": "sk-1",
            "ANTHROPIC_API_KEY": "sk-2",
            "GEMINI_API_KEY": "g-3",
            "OLLAMA_HOST": "127.0.0.1:11434",
        },
    )
    assert list(full.connections) == ["local", "openai", "anthropic", "gemini", "ollama"]
    assert full.connections["ollama"].base_url == "http://127.0.0.1:11434"
    key = full.connections["openai"].api_key
    assert key is not None
    assert key.reveal() == "sk-1"
    assert "sk-1" not in repr(full)


def test_fake_provider_rejects_a_bad_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"rules": [{"fault": {"kind": "no_such_fault"}}]}')
    assert main(["fake-provider", "--plan", str(plan)]) == 2
    assert "not a valid fault plan" in capsys.readouterr().err


def test_parser_requires_a_command() -> None:
    with pytest.raises(SystemExit) as info:
        _cli._parser().parse_args([])
    assert info.value.code == 2


def test_chat_says_when_a_stream_restarts_or_continues(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Printed text cannot be taken back: a `Restart` tells the reader to discard it."""
    from protocol._messages import Restart, Switched, TextDelta

    for event in (
        TextDelta(text="Half an ans"),
        Restart(reason="stream cut", connection="backup", model="claude"),
        TextDelta(text="A whole answer."),
        Switched(reason="stall", connection="third"),
        TextDelta(text=" More."),
    ):
        _cli._print_event(event, False)
    out, err = capsys.readouterr()
    assert out == "Half an ans\nA whole answer. More."
    assert err.splitlines() == [
        "[restarted on backup/claude (stream cut): discard the text above]",
        "[continued on third (stall)]",
    ]
