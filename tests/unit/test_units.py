"""Pure unit tests of batchgate modules: no server, no network, no database."""

from __future__ import annotations

import random
import re
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchgate.api.openai.files import safe_filename
from batchgate.blobs import LocalBlobStore, iter_lines
from batchgate.config import ConfigError, Settings, expand_env, load_settings
from batchgate.domain import ids
from batchgate.domain.errors import InvalidRequest
from batchgate.domain.params import window_seconds
from batchgate.engine.finalize import request_id, result_line
from batchgate.engine.retry import backoff_s, is_retryable
from batchgate.engine.usage import extract_usage
from batchgate.upstreams.base import UpstreamReply

# ----------------------------------------------------------------------------- engine/retry.py


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20, 60])
@pytest.mark.parametrize(("base", "cap"), [(0.5, 60.0), (0.01, 0.05), (1.0, 1.0)])
def test_backoff_is_jittered_within_half_to_full_exponential_ceiling(attempt: int, base: float, cap: float) -> None:
    ceiling = min(cap, base * 2 ** (attempt - 1))
    for _ in range(200):
        delay = backoff_s(attempt, base, cap)
        assert ceiling / 2 <= delay <= ceiling
        assert delay <= cap


def test_backoff_grows_with_attempts_until_the_cap() -> None:
    # Lower bound of attempt n+1 equals the upper bound of attempt n while under the cap.
    for attempt in range(1, 6):
        low_next = min(60.0, 0.1 * 2**attempt) / 2
        assert all(backoff_s(attempt, 0.1, 60.0) <= low_next + 1e-12 for _ in range(50))
    assert all(30.0 <= backoff_s(40, 0.1, 60.0) <= 60.0 for _ in range(50))


def test_backoff_attempt_zero_or_negative_is_treated_as_the_first() -> None:
    for attempt in (0, -3):
        assert all(0.25 <= backoff_s(attempt, 0.5, 60.0) <= 0.5 for _ in range(50))


@pytest.mark.parametrize("retry_after", [0.0, 0.3, 1.0, 7.5, 59.0])
def test_retry_after_is_a_floor_on_the_delay(retry_after: float) -> None:
    for attempt in (1, 3):
        for _ in range(100):
            delay = backoff_s(attempt, 0.01, 60.0, retry_after)
            assert delay >= retry_after
            assert delay >= min(60.0, 0.01 * 2 ** (attempt - 1)) / 2  # never shorter than the backoff
            assert delay <= max(retry_after, 0.01 * 2 ** (attempt - 1))


def test_retry_after_longer_than_the_cap_waits_the_cap() -> None:
    # An upstream asking for an hour does not park a request (and its slot) for an hour.
    assert all(backoff_s(1, 0.01, 5.0, 3600.0) == 5.0 for _ in range(20))


RETRYABLE_STATUSES = (429, 408, 409, 425, 500, 502, 503, 504, 529, 599)
FINAL_STATUSES = (400, 401, 403, 404, 413, 422)


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [
        *[(UpstreamReply(status), True) for status in RETRYABLE_STATUSES],
        (UpstreamReply(None, error_code="request_timeout", error_message="slow"), True),
        (UpstreamReply(None, error_code="upstream_unreachable", error_message="reset"), True),
        *[(UpstreamReply(status), False) for status in FINAL_STATUSES],
    ],
    ids=lambda v: str(v.status_code or v.error_code) if isinstance(v, UpstreamReply) else str(v),
)
def test_is_retryable_table(reply: UpstreamReply, retryable: bool) -> None:
    assert is_retryable(reply) is retryable


# ----------------------------------------------------------------------------- engine/usage.py


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {
                "object": "chat.completion",
                "usage": {
                    "prompt_tokens": 120,
                    "completion_tokens": 30,
                    "total_tokens": 150,
                    "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 12},
                },
            },
            (120, 64, 30, 12),
            id="chat_completion",
        ),
        pytest.param(
            {"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
            (5, 0, 7, 0),
            id="chat_completion_without_details",
        ),
        pytest.param(
            {
                "object": "response",
                "usage": {
                    "input_tokens": 40,
                    "input_tokens_details": {"cached_tokens": 8},
                    "output_tokens": 22,
                    "output_tokens_details": {"reasoning_tokens": 3},
                    "total_tokens": 62,
                },
            },
            (40, 8, 22, 3),
            id="responses_api_answer",
        ),
        pytest.param(
            {"object": "list", "data": [], "usage": {"prompt_tokens": 9, "total_tokens": 9}},
            (9, 0, 0, 0),
            id="embeddings_answer",
        ),
    ],
)
def test_usage_of_each_answer_shape(body: dict[str, Any], expected: tuple[int, int, int, int]) -> None:
    """(input, cached input, output, reasoning) tokens, from the chat, responses and embeddings usage shapes."""
    assert extract_usage(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        None,
        "a string body",
        ["a", "list"],
        {},
        {"usage": None},
        {"usage": "lots"},
        {"results": [{"flagged": False}]},  # moderations carry no usage
    ],
)
def test_usage_absent_or_malformed_counts_zero(body: Any) -> None:
    assert extract_usage(body) == (0, 0, 0, 0)


def test_usage_ignores_negative_non_integer_and_null_values() -> None:
    body = {
        "usage": {
            "prompt_tokens": -5,
            "completion_tokens": "12",
            "prompt_tokens_details": None,
            "completion_tokens_details": {"reasoning_tokens": 2.5},
        }
    }
    assert extract_usage(body) == (0, 0, 0, 0)
    assert extract_usage({"usage": {"prompt_tokens": None, "completion_tokens": 4}}) == (0, 0, 4, 0)
    details_not_dict = {"usage": {"input_tokens": 3, "input_tokens_details": [1], "output_tokens_details": "x"}}
    assert extract_usage(details_not_dict) == (3, 0, 0, 0)


# ----------------------------------------------------------------------------- blobs.iter_lines


async def _put(store: LocalBlobStore, key: str, data: bytes) -> None:
    writer = await store.writer(key)
    # Write in odd pieces: the blob must not depend on how the upload arrived.
    for start in range(0, len(data), 4099):
        await writer.write(data[start : start + 4099])
    await writer.commit()


class _SmallChunks:
    """A LocalBlobStore seen through tiny read chunks, to put chunk boundaries everywhere."""

    def __init__(self, store: LocalBlobStore, chunk_size: int) -> None:
        self._store = store
        self._chunk_size = chunk_size

    def iter_chunks(self, key: str, chunk_size: int = 0) -> AsyncIterator[bytes]:
        return self._store.iter_chunks(key, self._chunk_size)


def _reference_lines(data: bytes, max_line: int) -> list[tuple[int, int, bytes | None]]:
    """What iter_lines must yield: split on LF, newline excluded, no phantom line after a final LF."""
    out = []
    offset = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:
            end = len(data)
        line = data[offset:end]
        out.append((offset, len(line), None if len(line) > max_line else line))
        offset = end + 1
    return out


async def _lines(store: Any, key: str, max_line: int) -> list[tuple[int, int, bytes | None]]:
    return [item async for item in iter_lines(store, key, max_line)]


@pytest.fixture
def blob_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


async def test_iter_lines_offsets_and_lengths_address_each_line(blob_store: LocalBlobStore) -> None:
    data = b'{"a":1}\n{"bb":22}\n\n{"ccc":333}\n'
    await _put(blob_store, "k1", data)
    got = await _lines(blob_store, "k1", 1000)
    assert got == [(0, 7, b'{"a":1}'), (8, 9, b'{"bb":22}'), (18, 0, b""), (19, 11, b'{"ccc":333}')]
    # The offsets and lengths are what the dispatcher reads back by range.
    ranges = await blob_store.read_ranges("k1", [(o, n) for o, n, _ in got])
    assert ranges == [line for _, _, line in got]


async def test_iter_lines_last_line_without_trailing_newline(blob_store: LocalBlobStore) -> None:
    await _put(blob_store, "k", b"first\nsecond")
    assert await _lines(blob_store, "k", 100) == [(0, 5, b"first"), (6, 6, b"second")]


async def test_iter_lines_empty_blob_and_single_newline(blob_store: LocalBlobStore) -> None:
    await _put(blob_store, "empty", b"")
    assert await _lines(blob_store, "empty", 100) == []
    await _put(blob_store, "nl", b"\n")
    assert await _lines(blob_store, "nl", 100) == [(0, 0, b"")]


async def test_iter_lines_crlf_keeps_offsets_exact_and_json_parses(blob_store: LocalBlobStore) -> None:
    rows = [{"custom_id": f"c{i}", "n": i} for i in range(3)]
    data = b"\r\n".join(orjson.dumps(r) for r in rows)  # CRLF and no final newline
    await _put(blob_store, "crlf", data)
    got = await _lines(blob_store, "crlf", 1000)
    assert len(got) == 3
    for (offset, length, line), row in zip(got, rows, strict=True):
        assert line is not None
        assert data[offset : offset + length] == line
        assert line.rstrip(b"\r") == orjson.dumps(row)
        assert orjson.loads(line) == row  # a trailing CR is JSON whitespace


async def test_iter_lines_oversized_lines_are_none_with_exact_offsets(blob_store: LocalBlobStore) -> None:
    big = b"x" * 50
    data = b"ok\n" + big + b"\nfine\n" + big + b"y"  # oversized in the middle and at the end (no LF)
    await _put(blob_store, "big", data)
    for chunk in (1, 3, 7, 16, 49, 50, 51, 64, 1 << 20):
        got = await _lines(_SmallChunks(blob_store, chunk), "big", 10)
        assert got == [(0, 2, b"ok"), (3, 50, None), (54, 4, b"fine"), (59, 51, None)], chunk


async def test_iter_lines_line_of_exactly_max_line_is_kept(blob_store: LocalBlobStore) -> None:
    data = b"a" * 10 + b"\n" + b"b" * 11 + b"\n" + b"c" * 10
    await _put(blob_store, "edge", data)
    for chunk in (1, 2, 5, 10, 11, 12, 100):
        got = await _lines(_SmallChunks(blob_store, chunk), "edge", 10)
        assert got == [(0, 10, b"a" * 10), (11, 11, None), (23, 10, b"c" * 10)], chunk


async def test_iter_lines_matches_a_reference_at_every_chunk_size(blob_store: LocalBlobStore) -> None:
    rng = random.Random(1234)
    for case in range(40):
        pieces = []
        for _ in range(rng.randint(0, 12)):
            length = rng.choice([0, 0, 1, 2, 5, 9, 10, 11, 17, 40])
            pieces.append(bytes(rng.choice(b'ab{}\r" ') for _ in range(length)))
        data = b"\n".join(pieces) + (b"\n" if rng.random() < 0.5 else b"")
        key = f"case{case}"
        await _put(blob_store, key, data)
        expected = _reference_lines(data, 10)
        for chunk in (1, 2, 3, 5, 8, 11, 13, 64):
            assert await _lines(_SmallChunks(blob_store, chunk), key, 10) == expected, (data, chunk)


async def test_iter_lines_across_real_megabyte_chunks(blob_store: LocalBlobStore) -> None:
    # Lines of 1000 bytes over ~3 MB: many lines straddle the store's real 1 MiB read chunks.
    lines = [orjson.dumps({"custom_id": f"r{i}", "pad": "z" * (970 - len(str(i)))}) for i in range(3000)]
    data = b"\n".join(lines) + b"\n"
    await _put(blob_store, "mb", data)
    got = await _lines(blob_store, "mb", 1 << 20)
    assert [line for _, _, line in got] == lines
    offset = 0
    for (o, n, _), line in zip(got, lines, strict=True):
        assert (o, n) == (offset, len(line))
        offset += len(line) + 1


# ----------------------------------------------------------------------------- ids


def _decode_ms(ulid: str) -> int:
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    value = 0
    for char in ulid[:10]:
        value = value * 32 + alphabet.index(char)
    return value


def test_ids_have_openai_prefixes_and_shape() -> None:
    for make, prefix in ((ids.file_id, "file-"), (ids.batch_id, "batch_"), (ids.batch_request_id, "batch_req_")):
        value = make()
        assert value.startswith(prefix)
        body = value[len(prefix) :]
        assert len(body) == 26
        assert set(body) <= set("0123456789abcdefghjkmnpqrstvwxyz")


def test_ids_are_unique_and_sort_in_creation_order() -> None:
    made = [ids.batch_id() for _ in range(20_000)]  # many share a millisecond
    assert len(set(made)) == len(made)
    assert sorted(made) == made


def test_ids_stay_monotonic_within_one_millisecond_and_when_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1_800_000_000.123]
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time=lambda: now[0]))
    made = [ids.new_ulid() for _ in range(1000)]  # a frozen clock
    now[0] -= 5.0  # NTP steps the clock back
    made += [ids.new_ulid() for _ in range(10)]
    assert len(set(made)) == len(made)
    assert sorted(made) == made


def test_ids_encode_their_creation_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [2_000_000_000.0]
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time=lambda: now[0]))
    first = ids.new_ulid()
    assert _decode_ms(first) == 2_000_000_000_000
    now[0] += 0.001
    second = ids.new_ulid()
    assert _decode_ms(second) == 2_000_000_000_001
    assert first < second
    now[0] += 86_400 * 365  # a year later still sorts after
    assert ids.new_ulid() > second


# ----------------------------------------------------------------------------- config.load_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("BATCHGATE_CONFIG", "BATCHGATE_DATABASE_URL", "BATCHGATE_FILES_URL", "BATCHGATE_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./batchgate.yaml
    return monkeypatch


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_expands_env_vars_with_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("BG_TEST_UPSTREAM_KEY", "sk-from-env")
    clean_env.setenv("BG_TEST_HOST", "10.1.2.3")
    clean_env.delenv("BG_TEST_UNSET", raising=False)
    clean_env.delenv("BG_TEST_PORT", raising=False)
    config = _write(
        tmp_path / "bg.yaml",
        """
server: {host: "${BG_TEST_HOST:-127.0.0.1}", port: 9000}
auth: {admin_key: "${BG_TEST_UNSET}"}
models:
  - name: m1
    deployments:
      - provider: openai
        base_url: "http://${BG_TEST_HOST}:${BG_TEST_PORT:-8000}/v1"
        api_key: ${BG_TEST_UPSTREAM_KEY}
        model: "${BG_TEST_UNSET:-upstream-m1}"
""",
    )
    settings = load_settings(config)
    assert settings.server.host == "10.1.2.3"
    assert settings.auth.admin_key is None  # unset expands to empty, which means no key
    deployment = settings.models[0].deployments[0]
    assert deployment.base_url == "http://10.1.2.3:8000/v1"
    assert deployment.api_key == "sk-from-env"
    assert deployment.model == "upstream-m1"
    assert deployment.name == "m1/0"


def test_expand_env_walks_nested_values_and_leaves_other_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_TEST_A", "alpha")
    monkeypatch.delenv("BG_TEST_B", raising=False)
    tree = {"x": ["${BG_TEST_A}-${BG_TEST_B:-beta}", 3, None, True], "y": {"z": "$BG_TEST_A ${BG_TEST_B:-}"}}
    assert expand_env(tree) == {"x": ["alpha-beta", 3, None, True], "y": {"z": "$BG_TEST_A "}}


def test_expand_env_default_applies_to_an_empty_variable_as_in_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    # POSIX shells and docker compose: `${VAR:-default}` uses the default when VAR is unset *or empty*.
    monkeypatch.setenv("BG_TEST_EMPTY", "")
    assert expand_env("${BG_TEST_EMPTY:-fallback}") == "fallback"


def test_config_env_overrides_win_over_the_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write(
        tmp_path / "bg.yaml",
        """
storage: {database: "sqlite:///from-file.db", files: from-file-dir}
auth: {admin_key: file-key}
""",
    )
    clean_env.setenv("BATCHGATE_DATABASE_URL", "postgresql://bg:bg@127.0.0.1/bg")
    clean_env.setenv("BATCHGATE_FILES_URL", "/srv/blobs")
    clean_env.setenv("BATCHGATE_ADMIN_KEY", "env-key")
    settings = load_settings(config)
    assert settings.storage.database == "postgresql://bg:bg@127.0.0.1/bg"
    assert settings.storage.files == "/srv/blobs"
    assert settings.auth.admin_key == "env-key"


def test_config_env_overrides_apply_without_a_file_and_with_empty_sections(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("BATCHGATE_ADMIN_KEY", "env-key")
    assert load_settings().auth.admin_key == "env-key"
    config = _write(tmp_path / "sections.yaml", "auth:\nstorage:\n")
    clean_env.setenv("BATCHGATE_FILES_URL", "/x")
    settings = load_settings(config)
    assert settings.auth.admin_key == "env-key"
    assert settings.storage.files == "/x"


def test_config_file_from_batchgate_config_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write(tmp_path / "elsewhere.yaml", "server: {port: 7777}\nengine: {poll_interval_s: 0.2}\n")
    clean_env.setenv("BATCHGATE_CONFIG", str(config))
    settings = load_settings()
    assert settings.server.port == 7777
    assert settings.engine.poll_interval_s == 0.2


def test_config_defaults_without_any_file(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert [m.name for m in settings.models] == ["smollm2"]
    assert settings.models[0].deployments[0].provider == "local"
    assert settings.storage.database == "sqlite:///.batchgate/batchgate.db"
    assert settings.storage.files == ".batchgate/files"
    assert settings.auth.admin_key is None
    assert settings.limits.max_requests_per_batch == 50_000
    assert settings.limits.max_file_bytes == 209_715_200


def test_config_deployment_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write(
        tmp_path / "bg.yaml",
        "models:\n  - name: gpt-x\n    deployments:\n      - {provider: openai, base_url: 'http://h/v1'}\n",
    )
    deployment = load_settings(config).models[0].deployments[0]
    assert deployment.model == "gpt-x"
    assert deployment.max_concurrency == 16
    assert deployment.max_attempts == 5
    assert deployment.timeout_s == 600


@pytest.mark.parametrize(
    "text",
    [
        "models: [\n",  # not YAML
        "- a list\n",  # not a mapping
        "server: {prot: 1}\n",  # unknown key
        "models:\n  - name: m\n    deployments: []\n",
        "models:\n  - name: m\n    deployments:\n      - {provider: openai}\n",  # no base_url
    ],
)
def test_config_errors_are_config_errors(clean_env: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(_write(tmp_path / "bad.yaml", text))


def test_config_explicit_missing_file_is_an_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- batch_params.window_seconds


@pytest.mark.parametrize(
    ("window", "seconds"),
    [("24h", 86_400), ("1s", 1), ("3s", 3), ("90m", 5_400), ("2d", 172_800), ("366d", 366 * 86_400)],
)
def test_window_seconds_accepts_n_and_unit(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize(
    "window", ["0s", "24", "h", "24H", "24 h", " 24h", "24h ", "-1h", "1.5h", "24hours", "1w", "367d", "", 24]
)
def test_window_seconds_rejects_the_rest(window: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        window_seconds(window)
    assert info.value.param == "completion_window"
    assert info.value.status_code == 400


def test_window_seconds_missing_is_a_missing_parameter() -> None:
    with pytest.raises(InvalidRequest) as info:
        window_seconds(None)
    assert info.value.code == "missing_required_parameter"
    assert info.value.param == "completion_window"


# ----------------------------------------------------------------------------- api/files.safe_filename


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("batch.jsonl", "batch.jsonl"),
        ("../../etc/passwd", "passwd"),
        ("/abs/path/in.jsonl", "in.jsonl"),
        ("C:\\Users\\me\\in.jsonl", "in.jsonl"),
        ("dir/", "upload"),
        ("..", "upload"),
        (".", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("  spaced name.jsonl  ", "spaced name.jsonl"),
        ("evil\x00name\r\n.jsonl", "evilname.jsonl"),
        ("tab\there\x7f.jsonl", "tabhere.jsonl"),
        ("données.jsonl", "données.jsonl"),
    ],
)
def test_safe_filename(raw: str | None, safe: str) -> None:
    assert safe_filename(raw) == safe


def test_safe_filename_is_at_most_255_characters() -> None:
    assert safe_filename("a" * 1000 + ".jsonl") == "a" * 255


# ----------------------------------------------------------------------------- engine/finalize.result_line


def _row(**values: Any) -> dict[str, Any]:
    row = {
        "line_no": 7,
        "custom_id": "req-7",
        "ok": True,
        "status_code": None,
        "upstream_request_id": None,
        "body": None,
        "error_code": None,
        "error_message": None,
    }
    row.update(values)
    return row


def test_result_line_success_embeds_the_upstream_body_verbatim() -> None:
    body = '{"id":"chatcmpl-1","choices":[{"message":{"content":"hi \\u00e9"}}],"n":1.50}'
    line = result_line("batch_abc", _row(status_code=200, upstream_request_id="req_9", body=body))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert body.encode() in line  # verbatim, not re-serialised
    assert orjson.loads(line) == {
        "id": request_id("batch_abc", 7),
        "custom_id": "req-7",
        "response": {"status_code": 200, "request_id": "req_9", "body": orjson.loads(body)},
        "error": None,
    }


def test_result_line_http_error_keeps_response_and_body() -> None:
    body = '{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}'
    parsed = orjson.loads(result_line("b", _row(ok=False, status_code=400, body=body)))
    assert parsed["response"] == {"status_code": 400, "request_id": "", "body": orjson.loads(body)}
    assert parsed["error"] is None


def test_result_line_answer_without_body_has_null_body() -> None:
    parsed = orjson.loads(result_line("b", _row(ok=False, status_code=502, body=None)))
    assert parsed["response"]["body"] is None
    assert parsed["response"]["status_code"] == 502


def test_result_line_never_answered_has_null_response_and_an_error() -> None:
    row = _row(ok=False, error_code="request_timeout", error_message="no answer within 0.5 s")
    parsed = orjson.loads(result_line("b", row))
    assert parsed["response"] is None
    assert parsed["error"] == {"code": "request_timeout", "message": "no answer within 0.5 s"}
    assert parsed["custom_id"] == "req-7"


def test_result_line_error_without_code_says_internal_error() -> None:
    parsed = orjson.loads(result_line("b", _row(ok=False)))
    assert parsed["response"] is None
    assert parsed["error"] == {"code": "internal_error", "message": ""}


def test_result_line_escapes_custom_ids() -> None:
    custom_id = 'quote " backslash \\ newline \n unicode ✓'
    line = result_line("b", _row(custom_id=custom_id, status_code=200, body="{}"))
    assert line.count(b"\n") == 1
    assert orjson.loads(line)["custom_id"] == custom_id


def test_request_ids_are_stable_and_distinct() -> None:
    assert request_id("batch_1", 1) == request_id("batch_1", 1)
    assert request_id("batch_1", 1).startswith("batch_req_")
    assert len({request_id("batch_1", n) for n in range(1, 1001)} | {request_id("batch_2", 1)}) == 1001


def test_config_refuses_a_deployment_name_used_by_two_models() -> None:
    deployment = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "name": "vllm-1"}
    with pytest.raises(ValueError, match=r"deployment names must be unique across models: \['vllm-1'\]"):
        Settings.model_validate(
            {"models": [{"name": "a", "deployments": [deployment]}, {"name": "b", "deployments": [deployment]}]}
        )
    # Unnamed deployments get "<model>/<index>", unique by construction.
    unnamed = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
    Settings.model_validate(
        {"models": [{"name": "a", "deployments": [unnamed, unnamed]}, {"name": "b", "deployments": [unnamed]}]}
    )


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        (
            "http://user:secret@127.0.0.1:9/v1",
            "must not carry user:password@; put the upstream's credential in api_key",
        ),
        ("http://token@127.0.0.1:9/v1", "must not carry user:password@"),
        ("127.0.0.1:9/v1", "must be an http:// or https:// URL with a host"),
        ("ftp://127.0.0.1/v1", "must be an http:// or https:// URL with a host"),
    ],
)
def test_config_refuses_a_base_url_that_would_fail_every_call(base_url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.model_validate(
            {"models": [{"name": "a", "deployments": [{"provider": "openai", "base_url": base_url}]}]}
        )
