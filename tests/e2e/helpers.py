"""What the end-to-end suites share: configs, submitting batches, waiting for them, reading their results,
the OpenAI error envelope, and the module-scoped server fixture.

Process control (servers, the fake upstream, ``poll_until``) lives in ``tests/harness.py``; the
log-on-failure, ``client`` and ``make_client`` fixtures live in ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import openai
import pytest
from openai.types import Batch, FileObject

from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    poll_until,
    read_jsonl_bytes,
    running_server,
    upstream_model_config,
)

ANY = object()  # "any value" for assert_error's param and code
TERMINAL = ("completed", "failed", "expired", "cancelled")
CHAT = "/v1/chat/completions"

# Quick retries; a cap well above 1 s so an upstream's Retry-After of 1 s is not cut short.
ENGINE = {"backoff_base_s": 0.02, "backoff_max_s": 5.0, "poll_interval_s": 0.05}
# The API-surface suites (files, batches, validation, auth) run with this one.
API_ENGINE = {"backoff_base_s": 0.01, "poll_interval_s": 0.1}

Row = Mapping[str, Any]
ResultLines = dict[str, dict[str, Any]]
MakeClient = Callable[..., openai.OpenAI]  # the make_client fixture (conftest.py)


# ---------------------------------------------------------------------------- config
def gateway_config(*models: Row, engine: Row = ENGINE, **limits: int) -> dict[str, Any]:
    """A whole config: these ``models:`` entries, an ``engine:`` section and, when given, ``limits:``."""
    cfg: dict[str, Any] = {"models": [dict(m) for m in models], "engine": dict(engine)}
    if limits:
        cfg["limits"] = dict(limits)
    return cfg


def single_model_config(upstream_url: str, **deployment: Any) -> dict[str, Any]:
    """`fake-model` alone, on `upstream_url` with these deployment settings, and the quick ENGINE."""
    return gateway_config(upstream_model_config(upstream_url, **deployment))


# ---------------------------------------------------------------------------- the OpenAI error envelope
def assert_error(response: Any, status: int, param: Any = ANY, code: Any = ANY) -> dict[str, Any]:
    """The answer is `status` with exactly the OpenAI error envelope; returns the inner error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    if param is not ANY:
        assert err["param"] == param, err
    if code is not ANY:
        assert err["code"] == code, err
    return err


def sdk_error(call: Callable[[], Any], status: int, param: Any = ANY, code: Any = ANY) -> dict[str, Any]:
    """`call` makes the SDK raise for `status`, with the envelope `assert_error` checks; returns the inner error."""
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return assert_error(info.value.response, status, param, code)


# ---------------------------------------------------------------------------- input and submission
def jsonl(*rows: Any, sep: str = "\n", trailing: bool = True) -> bytes:
    """Rows as JSON Lines (compact JSON), `sep` between and, if `trailing`, after the last.

    A ``bytes`` row is written as is (a broken line); any other row is JSON-encoded, whatever its type.
    """
    lines = [row if isinstance(row, bytes) else json.dumps(row, separators=(",", ":")).encode() for row in rows]
    body = sep.encode().join(lines)
    return body + sep.encode() if trailing and lines else body


def upload(
    client: openai.OpenAI, content: bytes | Iterable[Any], *, purpose: str = "batch", filename: str = "input.jsonl"
) -> FileObject:
    """Upload `content`: bytes as they are, or rows written as JSON Lines."""
    data = content if isinstance(content, bytes) else jsonl(*content)
    return client.files.create(file=(filename, data), purpose=purpose)  # type: ignore[arg-type]


def submit(
    client: openai.OpenAI,
    content: bytes | Iterable[Any],
    endpoint: str = CHAT,
    *,
    completion_window: str = "24h",
    filename: str = "input.jsonl",
    **create: Any,
) -> Batch:
    """Upload `content` as a batch input file and create a batch on it (extra `create` fields pass through)."""
    file = upload(client, content, filename=filename)
    return client.batches.create(  # type: ignore[arg-type]
        input_file_id=file.id,
        endpoint=endpoint,
        completion_window=completion_window,
        **create,
    )


# ---------------------------------------------------------------------------- waiting
def wait_batch(
    client: openai.OpenAI,
    batch_id: str,
    condition: Callable[[Batch], bool],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "never met the condition",
) -> Batch:
    """Retrieve the batch until `condition` holds for it and return that batch; fail after `timeout` s."""
    last: list[Batch] = []

    def check() -> Batch | None:
        batch = client.batches.retrieve(batch_id)
        last[:] = [batch]
        return batch if condition(batch) else None

    return poll_until(check, timeout, interval, message=lambda: f"batch {batch_id} {what}: {last[0] if last else None}")


def wait_for_status(
    client: openai.OpenAI, batch_id: str, statuses: Iterable[str], timeout: float = 20.0, interval: float = 0.05
) -> Batch:
    """Poll the batch until its status is one of `statuses`; returns it."""
    wanted = tuple(statuses)
    return wait_batch(client, batch_id, lambda b: b.status in wanted, timeout, interval, f"never {'/'.join(wanted)}")


def wait_terminal(client: openai.OpenAI, batch_id: str, timeout: float = 20.0, interval: float = 0.05) -> Batch:
    """Poll the batch until it has ended (completed, failed, expired or cancelled); returns it."""
    return wait_for_status(client, batch_id, TERMINAL, timeout, interval)


def wait_upstream_idle(upstream: FakeUpstreamProcess, message: str = "upstream still has requests in flight") -> None:
    """Wait until no call is open at the upstream (abandoned hangs included): before measuring in-flight
    counts, or to see that the gateway hung up on the calls it gave up."""
    poll_until(lambda: upstream.stats()["in_flight"] == 0, 10, message=message)


# ---------------------------------------------------------------------------- results
def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The JSON lines of a file; none for a missing (None) file."""
    if file_id is None:
        return []
    return read_jsonl_bytes(client.files.content(file_id).content)


def result_files(client: openai.OpenAI, batch: Batch, rows: Iterable[Row]) -> tuple[ResultLines, ResultLines]:
    """Output and error lines by custom_id; asserts every input custom_id is in exactly one of them."""
    out = file_lines(client, batch.output_file_id)
    err = file_lines(client, batch.error_file_id)
    seen = Counter(line["custom_id"] for line in out + err)
    assert seen == Counter(r["custom_id"] for r in rows), "every custom_id exactly once across output+error"
    for line in out + err:
        assert line["id"].startswith("batch_req_")
    return {line["custom_id"]: line for line in out}, {line["custom_id"]: line for line in err}


def content_of(row: Row) -> str:
    """The (last) user message of a chat input line."""
    return row["body"]["messages"][-1]["content"]


def assert_echoed(line: dict[str, Any], row: Row) -> None:
    """A successful output line carries the fake upstream's answer to exactly this input line."""
    assert line["error"] is None
    assert line["response"]["status_code"] == 200
    assert line["response"]["request_id"].startswith("req_")
    message = line["response"]["body"]["choices"][0]["message"]
    assert message["content"] == "echo: " + content_of(row)


def assert_ended_with(line: dict[str, Any], code: str) -> None:
    """A request that got no answer: no response, and an error with this code and a message."""
    assert line["response"] is None
    assert line["error"]["code"] == code
    assert isinstance(line["error"]["message"], str) and line["error"]["message"]


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", re.MULTILINE)


def unexpected_tracebacks(log: str) -> list[str]:
    """The server log's records that carry a traceback (a client hanging up must not produce one either)."""
    return [r for r in _LOG_RECORD.split(log) if "Traceback" in r]


# ---------------------------------------------------------------------------- the module-scoped server
SERVER_FIXTURES: set[str] = set()  # names of module_server fixtures: conftest prints their logs on failure


def module_server(name: str, config: Callable[[str], Row], env: Mapping[str, str] | None = None) -> Any:
    """A module-scoped fixture called `name`: one real server on ``config(fake upstream url)`` for the module.

    Use it as ``server = module_server("server", config)``. Under a failing test that used it, its log
    tail is printed (tests/e2e/conftest.py).
    """
    SERVER_FIXTURES.add(name)

    @pytest.fixture(scope="module", name=name)
    def _server(
        fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ServerProcess]:
        with running_server(config(fake_upstream.url), workdir=tmp_path_factory.mktemp(name), env=env) as srv:
            yield srv

    return _server
