"""`runbook sandbox up|status|down`: processes, state file, environment file, no orphans."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import psutil
import pytest

from runbook_lib.sandbox import cli as sandbox_cli
from runbook_lib.sandbox import manager
from runbook_lib.settings_load import load_settings


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _wait_gone(procs: list[psutil.Process], timeout: float = 15.0) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow  # starts a sandbox
def test_cli_up_status_down_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """up starts daemon + 2 revisions, writes a loadable secret-free env file; down kills all."""
    state_dir, env_file = tmp_path / "state", tmp_path / "env" / "local.toml"
    common = ["--state-dir", str(state_dir), "--env-file", str(env_file)]
    assert sandbox_cli.sandbox_main(["status", *common]) == 1
    try:
        assert sandbox_cli.sandbox_main(["up", *common]) == 0
        out = capsys.readouterr().out
        assert "ws-routes-missing" in out and "healthy" in out

        state_file = state_dir / "sandbox.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        state = json.loads(state_file.read_text())
        secret = state["jwt_secret"]
        assert len(secret) >= 32
        procs = _tree(state["pid"])
        assert len(procs) >= 3  # daemon + two revision processes

        text = env_file.read_text()
        assert secret not in text
        settings = load_settings(env_file, environ={})
        assert settings.sandbox and settings.auto_approve and settings.name == "local"
        assert settings.target.base_url == state["service_url"]
        assert settings.target.ws_paths == ("/websocket", "/ws/test")
        assert settings.auth.mode == "subprotocol"
        assert settings.auth.token_endpoint == f"{state['auth_url']}/auth/dev-token"
        assert settings.cloudrun.api_endpoint == state["emulator_url"]
        assert settings.cloudrun.deploy_image == "sandbox/backend:healthy"
        assert settings.logging.enabled
        assert settings.thresholds.monitor_window_s == 8 and settings.thresholds.hold_s == 4
        assert settings.warnings == ()

        assert sandbox_cli.sandbox_main(["up", *common]) == 0
        assert "already running" in capsys.readouterr().out
        assert json.loads(state_file.read_text())["pid"] == state["pid"]

        assert sandbox_cli.sandbox_main(["status", *common]) == 0
        out = capsys.readouterr().out
        assert "100%" in out and state["service_url"] in out and "LATEST=100%" in out
        info = manager.status(state_dir)
        assert info is not None and len(info.revisions) == 2
        assert [r.percent for r in info.revisions] == [100, 0]
        assert [r.profile for r in info.revisions] == ["ws-routes-missing", "healthy"]
        assert secret not in repr(info)
    finally:
        assert sandbox_cli.sandbox_main(["down", *common]) == 0
    assert _wait_gone(procs, timeout=1) == []
    assert not state_file.exists()
    assert not env_file.exists()  # a stopped sandbox's env file would name dead ports
    assert not manager.is_running(state_dir)
    assert sandbox_cli.sandbox_main(["status", *common]) == 1
    assert sandbox_cli.sandbox_main(["down", *common]) == 0
    assert "not running" in capsys.readouterr().out


@pytest.mark.slow  # starts a process
def test_daemon_killed_hard_leaves_no_orphans(tmp_path: Path) -> None:
    """SIGKILL of the daemon takes its revision processes with it; down then cleans up."""
    state_dir = tmp_path / "state"
    info = manager.up(serving="healthy", state_dir=state_dir, env_file=tmp_path / "local.toml")
    try:
        procs = _tree(info.pid)
        assert len(procs) >= 3
        os.kill(info.pid, signal.SIGKILL)
        assert _wait_gone(procs) == []
        assert not manager.is_running(state_dir)
    finally:
        manager.down(state_dir)
    assert not (state_dir / "sandbox.json").exists()


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sandbox_cli.sandbox_main(["sideways"]) == 2
    assert (
        sandbox_cli.sandbox_main(
            ["up", "--serving", "no-such-profile", "--state-dir", str(tmp_path)]
        )
        == 2
    )
    assert "unknown sandbox profile" in capsys.readouterr().err
    assert not manager.is_running(tmp_path)


@pytest.mark.slow  # starts a sandbox
def test_context_manager_starts_and_stops(tmp_path: Path) -> None:
    with manager.Sandbox(state_dir=tmp_path / "s", env_file=tmp_path / "e.toml") as info:
        assert manager.is_running(tmp_path / "s")
        pid = info.pid
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not manager.is_running(tmp_path / "s")
