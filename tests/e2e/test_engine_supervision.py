"""End to end: a process whose engine loop dies stops with a non-zero exit (so systemd or Kubernetes
restarts it) instead of answering the API while nothing runs; and a stop never hangs on the engine.

The fault is injected by starting the real CLI through a small wrapper that replaces one engine
method first (the loops catch whatever one round raises, so only a bug can end one).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.helpers import API_ENGINE, gateway_config
from tests.harness import FakeUpstreamProcess, free_port, poll_until, python_env, upstream_model_config

# Replaces one method with a coroutine function that raises (or hangs), then runs `batchgate ARGS…`.
WRAPPER = """
import asyncio, sys
import importlib
module, cls, attr, fault = sys.argv[1:5]
async def broken(self, *args, **kwargs):
    if fault == "hang":
        await asyncio.Event().wait()
    if fault == "cancel":
        raise asyncio.CancelledError()
    raise RuntimeError("injected fault: " + cls + "." + attr)
setattr(getattr(importlib.import_module(module), cls), attr, broken)
from batchgate.cli.main import main
sys.argv = ["batchgate", *sys.argv[5:]]
main()
"""

EXIT_DEADLINE_S = 30.0


def start(
    tmp_path: Path,
    upstream: FakeUpstreamProcess,
    target: tuple[str, str, str],
    fault: str,
    *args: str,
    engine: dict[str, Any] | None = None,
) -> tuple[subprocess.Popen[str], int]:
    config = gateway_config(upstream_model_config(upstream.url), engine={**API_ENGINE, **(engine or {})})
    (tmp_path / "batchgate.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [sys.executable, "-c", WRAPPER, *target, fault, *args]
    if args[0] == "serve":
        command += ["--port", str(port)]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, port


def finished(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=EXIT_DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"the process did not exit within {EXIT_DEADLINE_S:g}s:\n{output[-3000:]}") from None
    return proc.returncode, output


@pytest.mark.parametrize(
    ("target", "loop"),
    [
        (("batchgate.engine.lifecycle", "Lifecycle", "run"), "lifecycle"),
        (("batchgate.engine.dispatcher", "Dispatcher", "run"), "dispatcher"),
        (("batchgate.engine.writer", "ResultWriter", "_run"), "result-writer"),
    ],
)
def test_serve_exits_non_zero_when_an_engine_loop_dies(
    tmp_path: Path, upstream: FakeUpstreamProcess, target: tuple[str, str, str], loop: str
) -> None:
    proc, _ = start(tmp_path, upstream, target, "raise", "serve")
    code, output = finished(proc)
    assert code == 1, output
    assert f"engine loop '{loop}' stopped (RuntimeError: injected fault: {target[1]}.{target[2]})" in output, output
    assert "Traceback" in output, output  # the log says where it broke


def test_worker_exits_non_zero_when_an_engine_loop_dies(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    proc, _ = start(tmp_path, upstream, ("batchgate.engine.lifecycle", "Lifecycle", "run"), "raise", "worker")
    code, output = finished(proc)
    assert code == 1, output
    assert "engine loop 'lifecycle' stopped (RuntimeError: injected fault: Lifecycle.run)" in output, output


def test_a_healthy_server_keeps_running_and_answers(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    """The wrapper itself changes nothing else: with a harmless target the server serves and stops with 0."""
    proc, port = start(tmp_path, upstream, ("batchgate.engine.core", "Engine", "publish_activity"), "raise", "serve")
    try:
        poll_until(lambda: _health(port), 20, message="the server never answered /health")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
    code, output = finished(proc)
    assert code == 0, output
    assert "stopped (" not in output, output


def test_a_stop_that_hangs_is_cut_off_after_stop_timeout(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    proc, port = start(
        tmp_path,
        upstream,
        ("batchgate.engine.writer", "ResultWriter", "stop"),
        "hang",
        "serve",
        engine={"stop_timeout_s": 1},
    )
    try:
        poll_until(lambda: _health(port), 20, message="the server never answered /health")
    finally:
        proc.send_signal(signal.SIGTERM)
    code, output = finished(proc)
    assert code == 0, output
    assert "the engine did not stop within 1s (engine.stop_timeout_s)" in output, output


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_a_loop_cancelled_outside_a_stop_is_a_failure_too(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    proc, _ = start(tmp_path, upstream, ("batchgate.engine.lifecycle", "Lifecycle", "run"), "cancel", "serve")
    code, output = finished(proc)
    assert code == 1, output
    assert "engine loop 'lifecycle' stopped (it was cancelled)" in output, output
