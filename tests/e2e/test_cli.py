"""End to end: the `batchgate` command line, as a user at a shell sees it (SPEC §6, README "Command line").

Every command runs as a real subprocess (`python -m batchgate ...`) in a temporary working
directory, with no ``BATCHGATE_*`` variable inherited from the calling shell. Assertions are on
what the user sees: exit codes, stdout / stderr text and the files written.

- `run`: an offline batch file against the fake upstream; results, the errors file, `--model`,
  invalid input, resume after SIGKILL / Ctrl-C, and a changed input starting over.
- client commands (`submit`, `status`, `list`, `cancel`, `download`) against a real server,
  with and without an admin key.
- `migrate`, and `serve` refusing an invalid config.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    _python_env,
    chat_line,
    free_port,
    openai_client,
    poll_until,
    read_jsonl_bytes,
    upstream_model_config,
    write_jsonl,
)

TERMINAL = ("completed", "failed", "expired", "cancelled")
CLI_TIMEOUT = 60.0  # a hung command fails its test instead of hanging the suite
# Quick polls and retries, so a short file does not wait for the engine's default 0.5 s poll.
ENGINE = {"backoff_base_s": 0.02, "backoff_max_s": 1.0, "poll_interval_s": 0.05}
OTHER_MODEL = "other-model"  # a second configured model...
OTHER_UPSTREAM_NAME = "other-upstream-name"  # ...whose deployment calls the upstream by this name


# ---------------------------------------------------------------------------- helpers
@dataclass
class Result:
    """One finished CLI invocation."""

    args: Sequence[str]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"batchgate {' '.join(self.args)} -> exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def cli_env(**extra: str) -> dict[str, str]:
    """The harness's child environment (src/ importable, no inherited BATCHGATE_*) plus ``extra``.

    A wide COLUMNS keeps rich from wrapping messages in the middle of what we assert on.
    """
    return _python_env({"COLUMNS": "250", "NO_COLOR": "1", **extra}, "BATCHGATE_")


def command(args: Sequence[Any]) -> list[str]:
    return [sys.executable, "-m", "batchgate", *(str(a) for a in args)]


def bg(*args: Any, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = CLI_TIMEOUT) -> Result:
    """Run ``batchgate ARGS`` to completion and capture what it printed."""
    try:
        proc = subprocess.run(
            command(args), cwd=cwd, env=dict(env) if env is not None else cli_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:  # killed by subprocess.run; show what it printed
        out, err = (s.decode(errors="replace") if isinstance(s, bytes) else s or "" for s in (exc.stdout, exc.stderr))
        raise AssertionError(
            f"batchgate {' '.join(map(str, args))} still running after {timeout:g}s\n"
            f"--- stdout\n{out}\n--- stderr\n{err}"
        ) from None
    return Result([str(a) for a in args], proc.returncode, proc.stdout, proc.stderr)


@contextlib.contextmanager
def bg_background(*args: Any, cwd: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``batchgate ARGS`` in the background in its own process group; yields (process, stderr file).

    Output goes to files (an unread pipe could fill up and block the child). Whatever is left
    running at exit is SIGKILLed.
    """
    err_path = cwd / f"bg-{len(list(cwd.glob('bg-*.err')))}.err"
    with open(cwd / (err_path.stem + ".out"), "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            command(args), cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc, err_path
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def run_config(upstream_url: str, **deployment: Any) -> dict[str, Any]:
    """`fake-model` (plus ``deployment`` overrides) and `other-model`, both on the fake upstream."""
    return {
        "models": [
            upstream_model_config(upstream_url, **deployment),
            upstream_model_config(upstream_url, name=OTHER_MODEL, model=OTHER_UPSTREAM_NAME),
        ],
        "engine": dict(ENGINE),
    }


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl_bytes(path.read_bytes())


def content_of(row: dict[str, Any]) -> str:
    return row["body"]["messages"][-1]["content"]


def ids_of(lines: list[dict[str, Any]]) -> Counter[str]:
    return Counter(line["custom_id"] for line in lines)


def assert_echoed(line: dict[str, Any], row: dict[str, Any]) -> None:
    """A successful output line carries the upstream's answer to exactly this input line."""
    assert line["custom_id"] == row["custom_id"]
    assert line["id"].startswith("batch_req_")
    assert line["error"] is None
    assert line["response"]["status_code"] == 200
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + content_of(row)


def assert_all_succeeded_once(out: Path, errors: Path, rows: list[dict[str, Any]]) -> None:
    out_lines, err_lines = read_jsonl(out), read_jsonl(errors)
    assert ids_of(out_lines + err_lines) == Counter(r["custom_id"] for r in rows), "every custom_id exactly once"
    assert err_lines == []
    by_id = {r["custom_id"]: r for r in rows}
    for line in out_lines:
        assert_echoed(line, by_id[line["custom_id"]])


def state_db(output: Path) -> Path:
    """`batchgate run` keeps its state in `.OUT.batchgate/` beside the output."""
    return output.parent / f".{output.name}.batchgate" / "state.db"


def results_count(db: Path) -> int:
    """Finished requests in a run's state database, read without disturbing the writer."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1.0)) as conn:
            return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return 0


def squash(text: str) -> str:
    """Whitespace collapsed, so a message can be matched whatever the line breaks."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------- help
COMMANDS = {
    "serve": ("Run the API server with its batch engine", ["--config", "--host", "--port"]),
    "worker": ("Run the batch engine without the API", ["--config"]),
    "run": ("Run one batch file in-process", ["--output", "--errors", "--model", "--config"]),
    "submit": (
        "Upload a file to a running server and start a batch",
        ["--endpoint", "--wait", "--download", "--base-url", "--api-key"],
    ),
    "status": ("Show one batch", ["--base-url", "--api-key"]),
    "list": ("List batches", ["--base-url", "--api-key"]),
    "cancel": ("Cancel a batch", ["--base-url", "--api-key"]),
    "download": ("Save a finished batch's output and error files", ["--output", "--base-url", "--api-key"]),
    "migrate": ("Create or upgrade the database schema", ["--config"]),
}


def test_top_level_help_lists_every_command(tmp_path: Path) -> None:
    result = bg("--help", cwd=tmp_path)
    assert result.code == 0, result
    assert "self-hosted LLM batch gateway" in result.out
    for name in COMMANDS:
        assert re.search(rf"\b{name}\b", result.out), f"{name} missing from --help\n{result}"
    assert "Traceback" not in result.err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_describes_the_command(tmp_path: Path, name: str) -> None:
    summary, options = COMMANDS[name]
    result = bg(name, "--help", cwd=tmp_path)
    assert result.code == 0, result
    assert summary in squash(result.out), result
    for option in options:
        assert option in result.out, f"{option} missing\n{result}"


# ---------------------------------------------------------------------------- run
def test_run_writes_results_and_errors_files(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    write_config(tmp_path / "batchgate.yaml", run_config(upstream.url))
    rows = [chat_line(f"ok-{i}", f"hello {i}") for i in range(6)]
    rows += [chat_line(f"bad-{i}", f"rejected {i} @status:400:*") for i in range(3)]
    write_jsonl(tmp_path / "in.jsonl", rows)

    result = bg("run", "in.jsonl", "-o", "results.jsonl", cwd=tmp_path)

    assert result.code == 0, result
    out, errors = tmp_path / "results.jsonl", tmp_path / "results.errors.jsonl"  # the default errors name
    out_lines, err_lines = read_jsonl(out), read_jsonl(errors)
    assert ids_of(out_lines + err_lines) == Counter(r["custom_id"] for r in rows), "every custom_id exactly once"
    assert sorted(ids_of(out_lines)) == [f"ok-{i}" for i in range(6)]
    assert sorted(ids_of(err_lines)) == [f"bad-{i}" for i in range(3)]
    by_id = {r["custom_id"]: r for r in rows}
    for line in out_lines:
        assert_echoed(line, by_id[line["custom_id"]])
    for line in err_lines:
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["message"] == "injected status 400 (attempt 1)"
    summary = squash(result.err)
    assert "6 succeeded" in summary and "3 failed" in summary, result
    assert "results.jsonl" in summary and "results.errors.jsonl" in summary, result
    assert upstream.stats()["requests_total"] == 9  # a 400 is not retried
    assert state_db(out).exists()  # the resumable state lives in the hidden dir beside the output


def test_run_with_model_override_and_explicit_paths(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    """`--config` elsewhere, `--errors` path, and `--model` sending every line to one model."""
    config = write_config(tmp_path / "conf" / "custom.yaml", run_config(upstream.url))
    work = tmp_path / "work"
    work.mkdir()  # no batchgate.yaml here: the --config file must be the one used
    rows = [chat_line("named-fake", "one", model="fake-model"),
            chat_line("named-unknown", "two", model="not-configured-anywhere"),
            chat_line("named-other", "three", model=OTHER_MODEL),
            chat_line("fails", "four @status:400:*", model="fake-model")]  # fmt: skip
    write_jsonl(work / "in.jsonl", rows)

    result = bg("run", "in.jsonl", "-o", "out/o.jsonl", "--errors", "failed.jsonl", "--model", OTHER_MODEL,
                "--config", config, cwd=work)  # fmt: skip

    assert result.code == 0, result
    out_lines, err_lines = read_jsonl(work / "out" / "o.jsonl"), read_jsonl(work / "failed.jsonl")
    assert not (work / "out" / "o.errors.jsonl").exists()  # --errors replaces the default name
    assert ids_of(out_lines + err_lines) == Counter(r["custom_id"] for r in rows)
    assert sorted(ids_of(err_lines)) == ["fails"]
    by_id = {r["custom_id"]: r for r in rows}
    for line in out_lines:
        assert_echoed(line, by_id[line["custom_id"]])
    # Every line ran on other-model, whose deployment names the upstream model differently.
    assert upstream.stats()["models_seen"] == {OTHER_UPSTREAM_NAME: 4}


def test_run_with_unknown_model_override_is_refused(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    write_config(tmp_path / "batchgate.yaml", run_config(upstream.url))
    write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    result = bg("run", "in.jsonl", "-o", "out.jsonl", "--model", "no-such-model", cwd=tmp_path)
    assert result.code != 0, result
    assert "no-such-model" in result.err and "not configured" in result.err, result
    assert "Traceback" not in result.err
    assert not (tmp_path / "out.jsonl").exists()
    assert upstream.stats()["requests_total"] == 0


def test_run_missing_input_file(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    write_config(tmp_path / "batchgate.yaml", run_config(upstream.url))
    result = bg("run", "missing.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert result.code != 0, result
    assert "missing.jsonl" in result.err and "Traceback" not in result.err, result
    assert not (tmp_path / "out.jsonl").exists()


def test_run_invalid_file_reports_line_and_code(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    write_config(tmp_path / "batchgate.yaml", run_config(upstream.url))
    lines = [
        json.dumps(chat_line("first", "a")),
        '{"custom_id": "broken", this is not json',
        json.dumps(chat_line("third", "c")),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")

    result = bg("run", "in.jsonl", "-o", "out.jsonl", cwd=tmp_path)

    assert result.code != 0, result
    err = squash(result.err)
    assert re.search(r"\bline 2\b", err), result
    assert "invalid_json_line" in err, result
    assert "Traceback" not in result.err
    assert not (tmp_path / "out.jsonl").exists()
    assert not (tmp_path / "out.errors.jsonl").exists()
    assert upstream.stats()["requests_total"] == 0  # nothing ran


def _interrupt_then_resume(upstream: FakeUpstreamProcess, tmp_path: Path, n_lines: int, sig: int) -> None:
    """Start a slow run, stop it with ``sig`` once some results are stored, re-run, check it all."""
    write_config(tmp_path / "batchgate.yaml", run_config(upstream.url, max_concurrency=4))
    rows = [chat_line(f"req-{i:04d}", f"line {i} @latency:50") for i in range(n_lines)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    db = state_db(out)
    args = ("run", "in.jsonl", "-o", "out.jsonl")

    with bg_background(*args, cwd=tmp_path) as (proc, err_path):
        poll_until(lambda: proc.poll() is not None or results_count(db) >= 12, 30, 0.02,
                   message=lambda: f"no progress; stderr:\n{err_path.read_text()}")  # fmt: skip
        assert proc.poll() is None, f"the run finished before it could be interrupted:\n{err_path.read_text()}"
        os.killpg(proc.pid, sig)
        code = proc.wait(20)
        first_err = err_path.read_text()

    stored = results_count(db)
    assert 0 < stored < n_lines, f"{stored} results stored"
    if sig == signal.SIGINT:
        assert code == 130, f"exit {code}\n{first_err}"
        assert "run the same command again to resume" in squash(first_err), first_err
    else:
        assert code == -signal.SIGKILL
    assert not out.exists(), "results are exported only when the run ends"

    upstream.reset()
    result = bg(*args, cwd=tmp_path)

    assert result.code == 0, result
    assert "resuming" in result.err, result
    assert_all_succeeded_once(out, errors, rows)
    assert f"{n_lines} succeeded" in squash(result.err), result
    # The second run called the upstream exactly for the requests that had no stored result.
    assert upstream.stats()["requests_total"] == n_lines - stored


def test_run_resumes_after_sigkill(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    _interrupt_then_resume(upstream, tmp_path, 400, signal.SIGKILL)


def test_run_resumes_after_ctrl_c(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    _interrupt_then_resume(upstream, tmp_path, 200, signal.SIGINT)


def test_run_again_after_completion_and_changed_input(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    write_config(tmp_path / "batchgate.yaml", run_config(upstream.url))
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    first = [chat_line(f"a-{i}", f"first {i}") for i in range(3)]
    write_jsonl(tmp_path / "in.jsonl", first)
    result = bg("run", "in.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert result.code == 0, result
    assert_all_succeeded_once(out, errors, first)

    # The same command again: the finished run is picked up, nothing is sent twice.
    upstream.reset()
    again = bg("run", "in.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert again.code == 0, again
    assert "resuming" in again.err, again
    assert_all_succeeded_once(out, errors, first)
    assert upstream.stats()["requests_total"] == 0

    # A different input file: a notice, a fresh run, and output for the new file only.
    upstream.reset()
    second = [chat_line(f"b-{i}", f"second {i}") for i in range(4)] + [chat_line("b-bad", "no @status:400:*")]
    write_jsonl(tmp_path / "in.jsonl", second)
    changed = bg("run", "in.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert changed.code == 0, changed
    assert "starting over" in squash(changed.err), changed
    assert "resuming" not in changed.err, changed
    out_lines, err_lines = read_jsonl(out), read_jsonl(errors)
    assert ids_of(out_lines + err_lines) == Counter(r["custom_id"] for r in second)
    assert sorted(ids_of(err_lines)) == ["b-bad"]
    assert upstream.stats()["requests_total"] == 5


# ---------------------------------------------------------------------------- client commands
@pytest.fixture(scope="module")
def shared_server(
    fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One open-mode server for the client tests that do not care about auth."""
    config = {"models": [upstream_model_config(fake_upstream.url)], "engine": dict(ENGINE)}
    server = ServerProcess(config, workdir=tmp_path_factory.mktemp("cli-server")).start().wait_ready()
    try:
        yield server
    finally:
        server.stop()


def wait_status(server: ServerProcess, batch_id: str, statuses: Sequence[str], timeout: float = 30.0) -> Any:
    client = openai_client(server)
    return poll_until(lambda: (b := client.batches.retrieve(batch_id)).status in statuses and b, timeout,
                      message=lambda: f"{batch_id}: {client.batches.retrieve(batch_id)}")  # fmt: skip


def submit_quiet(server: ServerProcess, tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    """`batchgate submit` without --wait: the batch id is the one line on stdout."""
    write_jsonl(tmp_path / "slow.jsonl", rows)
    result = bg("submit", "slow.jsonl", "--base-url", server.base_url, cwd=tmp_path)
    assert result.code == 0, result
    batch_id = result.out.strip()
    assert re.fullmatch(r"batch_\w+", batch_id), result
    return batch_id


def test_submit_wait_download_then_status_list_download(
    upstream: FakeUpstreamProcess, shared_server: ServerProcess, tmp_path: Path
) -> None:
    rows = [chat_line(f"s-{i}", f"submitted {i}") for i in range(5)] + [chat_line("s-bad", "x @status:400:*")]
    write_jsonl(tmp_path / "in.jsonl", rows)
    url = shared_server.base_url

    result = bg("submit", "in.jsonl", "--wait", "--download", "results", "--base-url", url, cwd=tmp_path)

    assert result.code == 0, result
    batch_id = result.out.splitlines()[0].strip()
    assert re.fullmatch(r"batch_\w+", batch_id), result
    assert f"{batch_id}: completed" in result.err and "5/6 succeeded, 1 failed" in squash(result.err), result
    out_file = tmp_path / "results" / f"{batch_id}_output.jsonl"
    err_file = tmp_path / "results" / f"{batch_id}_errors.jsonl"
    assert str(out_file.relative_to(tmp_path)) in result.out, result  # the saved paths are printed
    out_lines, err_lines = read_jsonl(out_file), read_jsonl(err_file)
    assert ids_of(out_lines + err_lines) == Counter(r["custom_id"] for r in rows)
    assert sorted(ids_of(err_lines)) == ["s-bad"]
    by_id = {r["custom_id"]: r for r in rows}
    for line in out_lines:
        assert_echoed(line, by_id[line["custom_id"]])

    # status: reads BATCHGATE_BASE_URL when --base-url is not given.
    status = bg("status", batch_id, cwd=tmp_path, env=cli_env(BATCHGATE_BASE_URL=url))
    assert status.code == 0, status
    assert batch_id in status.out
    assert re.search(r"\bstatus\W+completed\b", status.out), status
    assert "5 completed, 1 failed, 6 total" in status.out, status

    listing = bg("list", "--base-url", url, cwd=tmp_path)
    assert listing.code == 0, listing
    assert re.search(rf"{batch_id}\W+completed\b", listing.out), listing

    # download -o DIR of a finished batch: the same bytes the server holds.
    again = bg("download", batch_id, "-o", "again", "--base-url", url, cwd=tmp_path)
    assert again.code == 0, again
    for name in (f"{batch_id}_output.jsonl", f"{batch_id}_errors.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "results" / name).read_bytes()
        assert name in again.out, again


def test_status_of_unknown_batch_is_a_404(shared_server: ServerProcess, tmp_path: Path) -> None:
    result = bg("status", "batch_unknown", "--base-url", shared_server.base_url, cwd=tmp_path)
    assert result.code != 0, result
    assert "404" in result.err and "batch_unknown" in result.err, result
    assert "Traceback" not in result.err


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = bg("list", "--base-url", url, cwd=tmp_path)
    assert result.code != 0, result
    assert "cannot reach" in result.err, result
    assert "Traceback" not in result.err


def test_cancel_a_running_batch(upstream: FakeUpstreamProcess, shared_server: ServerProcess, tmp_path: Path) -> None:
    rows = [chat_line(f"c-{i}", f"slow {i} @latency:1000") for i in range(60)]
    batch_id = submit_quiet(shared_server, tmp_path, rows)
    wait_status(shared_server, batch_id, ("in_progress",))

    result = bg("cancel", batch_id, "--base-url", shared_server.base_url, cwd=tmp_path)

    assert result.code == 0, result
    assert re.fullmatch(rf"{batch_id}: (cancelling|cancelled)", result.out.strip()), result
    batch = wait_status(shared_server, batch_id, TERMINAL)
    assert batch.status == "cancelled"
    assert batch.request_counts.completed < len(rows)
    status = bg("status", batch_id, "--base-url", shared_server.base_url, cwd=tmp_path)
    assert status.code == 0, status
    assert re.search(r"\bstatus\W+cancelled\b", status.out), status


def test_cancel_a_completed_batch_is_refused(
    upstream: FakeUpstreamProcess, shared_server: ServerProcess, tmp_path: Path
) -> None:
    batch_id = submit_quiet(shared_server, tmp_path, [chat_line("only", "quick")])
    wait_status(shared_server, batch_id, TERMINAL)

    result = bg("cancel", batch_id, "--base-url", shared_server.base_url, cwd=tmp_path)

    assert result.code != 0, result
    err = squash(result.err)
    assert "409" in err and "can no longer be cancelled" in err and batch_id in err, result
    assert "Traceback" not in result.err
    assert wait_status(shared_server, batch_id, TERMINAL).status == "completed"


def test_download_of_a_running_batch_is_refused(
    upstream: FakeUpstreamProcess, shared_server: ServerProcess, tmp_path: Path
) -> None:
    rows = [chat_line(f"d-{i}", f"slow {i} @latency:1000") for i in range(60)]
    batch_id = submit_quiet(shared_server, tmp_path, rows)
    try:
        result = bg("download", batch_id, "-o", "dl", "--base-url", shared_server.base_url, cwd=tmp_path)
        assert result.code != 0, result
        err = squash(result.err)
        assert batch_id in err and "results are ready once it ends" in err, result
        assert re.search(r"\bis (validating|in_progress)\b", err), result
        assert not (tmp_path / "dl" / f"{batch_id}_output.jsonl").exists()
    finally:
        with contextlib.suppress(Exception):
            openai_client(shared_server).batches.cancel(batch_id)
    wait_status(shared_server, batch_id, TERMINAL)


def test_client_commands_with_an_admin_key(upstream: FakeUpstreamProcess, make_server: Any, tmp_path: Path) -> None:
    server = make_server({"models": [upstream_model_config(upstream.url)], "engine": dict(ENGINE)},
                         env={"BATCHGATE_ADMIN_KEY": "secret"})  # fmt: skip
    url = server.base_url
    write_jsonl(tmp_path / "in.jsonl", [chat_line("k-1", "one"), chat_line("k-2", "two")])

    for args in (("list",), ("status", "batch_whatever"), ("submit", "in.jsonl")):
        refused = bg(*args, "--base-url", url, cwd=tmp_path)
        assert refused.code != 0, refused
        assert "401" in refused.err and "Traceback" not in refused.err, refused
    wrong = bg("list", "--base-url", url, "--api-key", "not-the-key", cwd=tmp_path)
    assert wrong.code != 0 and "401" in wrong.err, wrong
    assert openai_client(server, api_key="secret").batches.list().data == []  # nothing was submitted

    submitted = bg("submit", "in.jsonl", "--wait", "--download", "res", "--base-url", url, "--api-key", "secret",
                   cwd=tmp_path)  # fmt: skip
    assert submitted.code == 0, submitted
    batch_id = submitted.out.splitlines()[0].strip()
    assert ids_of(read_jsonl(tmp_path / "res" / f"{batch_id}_output.jsonl")) == Counter(["k-1", "k-2"])

    with_flag = bg("list", "--base-url", url, "--api-key", "secret", cwd=tmp_path)
    assert with_flag.code == 0 and batch_id in with_flag.out, with_flag
    env = cli_env(BATCHGATE_BASE_URL=url, BATCHGATE_API_KEY="secret")
    with_env = bg("status", batch_id, cwd=tmp_path, env=env)
    assert with_env.code == 0, with_env
    assert re.search(r"\bstatus\W+completed\b", with_env.out), with_env


# ---------------------------------------------------------------------------- migrate
def test_migrate_creates_the_database_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "data" / "bg.db"
    db.parent.mkdir()
    config = write_config(tmp_path / "conf.yaml", {"storage": {"database": f"sqlite:///{db}"}})

    first = bg("migrate", "--config", config, cwd=tmp_path)
    assert first.code == 0, first
    assert "up to date" in first.out, first
    assert db.exists()
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"files", "batches", "requests", "results"} <= tables, tables

    second = bg("migrate", "--config", config, cwd=tmp_path)
    assert second.code == 0, second
    assert "up to date" in second.out, second


# ---------------------------------------------------------------------------- invalid config
BAD_CONFIGS = {
    "bad-yaml": ("models: [unclosed\n  - name: x\n", ["not valid YAML"]),
    "unknown-key": (yaml.safe_dump({"engine": {"poll_intervl_s": 1}}), ["poll_intervl_s"]),
    "openai-without-base-url": (
        yaml.safe_dump({"models": [{"name": "m", "deployments": [{"provider": "openai"}]}]}),
        ["provider 'openai' needs base_url"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_serve_refuses_an_invalid_config(tmp_path: Path, case: str) -> None:
    text, expected = BAD_CONFIGS[case]
    config = tmp_path / "broken.yaml"
    config.write_text(text)

    # A config wrongly accepted would start serving: the timeout turns that into a failure.
    result = bg("serve", "--config", config, "--port", free_port(), cwd=tmp_path, timeout=30)

    assert result.code == 2, result
    assert "Traceback" not in result.err, result
    err = squash(result.err)
    assert "broken.yaml" in err, result
    for text_part in expected:
        assert text_part in err, result


def test_serve_refuses_a_missing_config_file(tmp_path: Path) -> None:
    result = bg("serve", "--config", "nowhere.yaml", "--port", free_port(), cwd=tmp_path, timeout=30)
    assert result.code == 2, result
    assert "nowhere.yaml" in result.err and "does not exist" in result.err, result
    assert "Traceback" not in result.err


def test_run_refuses_an_invalid_config_in_cwd(tmp_path: Path) -> None:
    (tmp_path / "batchgate.yaml").write_text(BAD_CONFIGS["unknown-key"][0])
    write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    result = bg("run", "in.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert result.code == 2, result
    assert "poll_intervl_s" in result.err and "Traceback" not in result.err, result
    assert not (tmp_path / "out.jsonl").exists()
