"""Helpers for end-to-end tests that drive the real batchgate server as a subprocess.

Synchronisation is always "poll a condition until a deadline", never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import httpx
import openai
import yaml

__all__ = [
    "FakeUpstreamProcess",
    "ServerProcess",
    "WorkerProcess",
    "base_config",
    "chat_line",
    "free_port",
    "openai_client",
    "poll_until",
    "python_env",
    "read_jsonl_bytes",
    "running_server",
    "upstream_model_config",
    "write_jsonl",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "fake_upstream.py"
UPSTREAM_API_KEY = "upstream-secret"

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it; a tiny reuse race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def poll_until(
    fn: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``fn`` until it returns a truthy value, and return that value.

    Raises AssertionError with ``message`` (a string, or a callable evaluated at the time of
    failure so it can show the latest state) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g}s; last value {value!r})")
        time.sleep(interval)


def _python_env(overrides: Mapping[str, str] | None, strip_prefix: str | None) -> dict[str, str]:
    """The child's environment: ours, with src/ importable and the overrides applied."""
    env = {k: v for k, v in os.environ.items() if strip_prefix is None or not k.startswith(strip_prefix)}
    # Works whether or not batchgate is pip-installed (editable installs win anyway).
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(overrides or {})
    return env


def python_env(overrides: Mapping[str, str] | None = None, inherit_batchgate_env: bool = False) -> dict[str, str]:
    """The environment for a batchgate child process: ours, src/ importable, no ``BATCHGATE_*`` unless asked."""
    return _python_env(overrides, None if inherit_batchgate_env else "BATCHGATE_")


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signal the child's whole process group (it has its own session), ignoring the dead."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class ServerProcess:
    """The real ``batchgate serve`` in a subprocess, isolated in its own working directory.

    The config dict is written to ``<workdir>/batchgate.yaml``; ``config=None`` writes no file
    and passes no ``--config`` (the zero set-up mode). Storage defaults to ``.batchgate/`` under
    the working directory, so every workdir is its own world; two servers given the same
    workdir share storage. ``BATCHGATE_*`` variables of the calling shell are not inherited
    (a developer's admin key would change test outcomes) unless ``inherit_batchgate_env``.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None,
        env: Mapping[str, str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        extra_args: Iterable[str] = (),
        inherit_batchgate_env: bool = False,
    ) -> None:
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="bg-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.workdir / "batchgate.yaml"
            self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.env = python_env(env, inherit_batchgate_env)
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "batchgate", "serve"]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        return [*cmd, "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServerProcess:
        """Spawn the server (does not wait for it; see ``wait_ready``)."""
        if self.is_running():
            raise RuntimeError(f"server already running (pid {self.pid})")
        self._close_log()
        # Append, so the log of a restarted server keeps what happened before the crash.
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close_log
        self._log_file.write(f"\n=== start {' '.join(self.command)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own group: kill() takes any worker children with it
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> ServerProcess:
        """Poll ``GET /health`` until it answers 200; fail fast if the process dies."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    code = None if self.proc is None else self.proc.returncode
                    raise AssertionError(f"batchgate exited (code {code}) before ready; log:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() >= deadline:
                    raise AssertionError(f"batchgate not ready after {timeout:g}s; log:\n{self.log_tail()}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        if self.proc is not None:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait for a graceful exit; SIGKILL after ``timeout``. Returns the code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait()
        _signal_group(self.proc, signal.SIGKILL)  # leftover children, if any
        self._close_log()
        return self.proc.returncode

    def restart(self, timeout: float = 30.0) -> ServerProcess:
        """Stop (if still running) and start again on the same port and working directory."""
        self.stop()
        return self.start().wait_ready(timeout)

    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ServerProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerProcess(url={self.url!r}, pid={self.pid}, workdir={str(self.workdir)!r})"


class WorkerProcess(ServerProcess):
    """The real ``batchgate worker`` (the engine alone, no HTTP): ready once it says it runs."""

    @property
    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "batchgate", "worker"]
        return cmd + (["--config", str(self.config_path)] if self.config_path is not None else []) + self.extra_args

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        def running() -> bool:
            if not self.is_running():
                raise AssertionError(f"batchgate worker exited before ready; log:\n{self.log_tail()}")
            return "worker running" in self.log_text().rsplit("=== start", 1)[-1]

        poll_until(running, timeout=timeout, message=lambda: f"worker not ready; log:\n{self.log_tail()}")
        return self

    def __repr__(self) -> str:
        return f"WorkerProcess(pid={self.pid}, workdir={str(self.workdir)!r})"


@contextlib.contextmanager
def running_server(
    config: Mapping[str, Any] | None, workdir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Iterator[ServerProcess]:
    """A started, ready ``ServerProcess`` (``kwargs`` as for it), stopped on exit even if it never got ready."""
    server = ServerProcess(config, workdir=workdir, **kwargs)
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


class FakeUpstreamProcess:
    """``tests/fake_upstream.py`` in a subprocess, with its control API wrapped."""

    def __init__(
        self,
        latency_ms: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        rpm: int | None = None,
        rpm_window_s: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self.rpm = rpm  # answer 429 above this many calls a minute (fake_upstream.py --rpm)
        self.rpm_window_s = rpm_window_s  # None: the fake's default sliding window, 60 s
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._stderr_final = ""
        self._client: httpx.Client | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self, timeout: float = 15.0) -> FakeUpstreamProcess:
        cmd = [
            sys.executable, str(FAKE_UPSTREAM_SCRIPT),
            "--host", self.host, "--port", str(self.port), "--latency-ms", str(self.latency_ms),
        ]  # fmt: skip
        if self.rpm is not None:
            cmd += ["--rpm", str(self.rpm)]
        if self.rpm_window_s is not None:
            cmd += ["--rpm-window-s", str(self.rpm_window_s)]
        # A file, not a pipe: an unread pipe could fill up and block the child.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
            env=_python_env(None, None),
        )  # fmt: skip
        line = self._read_line(timeout)
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake upstream did not start: {line!r}\n{self.stderr_text()}")
        self.port = int(line.split()[1])
        self._client = httpx.Client(base_url=self.root_url, timeout=10.0)
        return self

    def _read_line(self, timeout: float) -> str:
        """One stdout line, waiting at most ``timeout`` seconds (a plain readline could hang)."""
        assert self.proc is not None and self.proc.stdout is not None
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    break
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:  # EOF: the process died
                    break
                buf += chunk
        return buf.decode(errors="replace").strip()

    def stats(self) -> dict[str, Any]:
        return self._http().get("/_stats").raise_for_status().json()

    def control(self, **settings: Any) -> dict[str, Any]:
        """Global controls: latency_ms, fail_status, fail_rate, retry_after, rpm, rpm_window_s."""
        return self._http().post("/_control", json=settings).raise_for_status().json()

    def reset(self) -> None:
        """Clear stats and attempt counters and restore the start-up controls."""
        self._http().post("/_reset").raise_for_status()

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._stderr is not None:  # keep the text for post-mortems, release the file
            self._stderr_final = self._read_stderr()
            self._stderr.close()
            self._stderr = None

    def stderr_text(self) -> str:
        return self._stderr_final if self._stderr is None else self._read_stderr()

    def _read_stderr(self) -> str:
        assert self._stderr is not None
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _http(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("fake upstream not started")
        return self._client

    def __enter__(self) -> FakeUpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _HasBaseUrl(Protocol):
    @property
    def base_url(self) -> str: ...


def openai_client(server: _HasBaseUrl | str, api_key: str = "test", **kwargs: Any) -> openai.OpenAI:
    """The official SDK pointed at a server; no SDK retries, so tests see every answer."""
    base_url = server if isinstance(server, str) else server.base_url
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=base_url, api_key=api_key, **kwargs)


def upstream_model_config(
    upstream_url: str,
    name: str = "fake-model",
    *,
    price: Mapping[str, float] | None = None,
    fallbacks: list[str] | None = None,
    **deployment_overrides: Any,
) -> dict[str, Any]:
    """One ``models:`` entry (SPEC §5) served by an OpenAI-compatible upstream."""
    deployment: dict[str, Any] = {
        "provider": "openai",
        "base_url": upstream_url,
        "api_key": UPSTREAM_API_KEY,
        **deployment_overrides,
    }
    model: dict[str, Any] = {"name": name}
    if price is not None:
        model["price"] = dict(price)
    if fallbacks is not None:
        model["fallbacks"] = list(fallbacks)
    model["deployments"] = [deployment]
    return model


def base_config(upstream_url: str, **deployment_overrides: Any) -> dict[str, Any]:
    """A whole config with one model, ``fake-model``, on the given upstream."""
    return {"models": [upstream_model_config(upstream_url, **deployment_overrides)]}


def chat_line(custom_id: str, content: str, model: str = "fake-model", **body: Any) -> dict[str, Any]:
    """One batch input line for /v1/chat/completions with a single user message."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSON Lines (compact, newline-terminated) and return the path."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path


def read_jsonl_bytes(data: bytes | str) -> list[dict[str, Any]]:
    """Parse JSON Lines, ignoring blank lines (a trailing newline is normal)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return [json.loads(line) for line in text.splitlines() if line.strip()]
