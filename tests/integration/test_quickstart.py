"""The README quickstart, as a new user runs it: ``switchboard serve`` in one process,
``switchboard chat "hello"`` and ``switchboard status`` in others, over real loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SWITCHBOARD = [sys.executable, "-m", "supervisors._cli"]


def run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        SWITCHBOARD + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("OLLAMA_HOST", None)
    env.pop("SWITCHBOARD_TOKEN", None)
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    return env


def test_serve_then_chat_then_status(env: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "switchboard" / "gateway.json"
    server = subprocess.Popen(
        [*SWITCHBOARD, "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not state.exists():
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "serve did not announce itself in 30 s"
            time.sleep(0.1)
        announced = json.loads(state.read_text())
        assert announced["url"].startswith("ws://127.0.0.1:")
        assert announced["token"]

        chat = run(["chat", "hello"], env)
        assert chat.returncode == 0, chat.stderr
        answer, summary = chat.stdout.strip().splitlines()
        assert len(answer.split()) == 40
        assert summary.startswith("[local · fake-model · 1 in / 40 out")

        status = run(["status"], env)
        assert status.returncode == 0, status.stderr
        assert ": ok" in status.stdout
        row = next(line for line in status.stdout.splitlines() if line.startswith("local"))
        assert row.split()[:6] == ["local", "openai", "closed", "0", "0", "1"]

        wrong = run(["chat", "--token", "wrong", "hi"], env)
        assert wrong.returncode == 3
        assert "4401" in wrong.stderr
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out
    assert "stopped" in out
    assert not state.exists(), "serve must remove its state file on exit"


def test_serve_on_a_busy_port_says_what_to_do(env: dict[str, str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run(["serve", "--port", str(port)], env, timeout=60)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port 0" in done.stderr
