"""The JSONL validator (engine/validate.py) under hypothesis, in-process on an in-memory blob whose
chunk boundaries hypothesis also picks: any bytes, lines or JSON values never raise; errors carry
SPEC codes and 1-based line numbers; valid files validate to exact counts and exact request rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgate.config import LimitsConfig
from batchgate.engine import validate
from batchgate.engine.validate import ValidationReport, validate_input
from tests.fuzz.helpers import examples

CHAT = "/v1/chat/completions"
MODEL = "fake-model"
SPEC_CODES = {
    "invalid_json_line",
    "missing_required_parameter",
    "invalid_url",
    "invalid_method",
    "duplicate_custom_id",
    "mismatched_model",
    "model_not_found",
    "streaming_unsupported",
    "too_many_requests",
    "file_too_large",
    "empty_file",
}
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class ChunkedBlob:
    """One blob in memory, read back in chunks of the sizes given (cycled): the line reader must not care."""

    def __init__(self, data: bytes, chunk_sizes: list[int]) -> None:
        self.data = data
        self.chunk_sizes = chunk_sizes or [1 << 20]

    async def iter_chunks(self, key: str, chunk_size: int = 0) -> AsyncIterator[bytes]:
        offset, i = 0, 0
        while offset < len(self.data):
            size = self.chunk_sizes[i % len(self.chunk_sizes)]
            yield self.data[offset : offset + size]
            offset, i = offset + size, i + 1


def run(
    data: bytes, chunk_sizes: list[int] = (), *, max_line: int = 1 << 20, max_requests: int = 50_000, row_chunk: int = 3
) -> tuple[ValidationReport, list[dict[str, Any]]]:
    """Validate `data` as a chat-completions batch; the report and every request row written."""
    written: list[dict[str, Any]] = []

    async def write_rows(rows: list[dict[str, Any]]) -> None:
        written.extend(rows)

    async def should_stop() -> bool:
        return False

    limits = LimitsConfig(max_line_bytes=max_line, max_requests_per_batch=max_requests)
    with mock.patch.object(validate, "ROW_CHUNK", row_chunk):  # several chunks of rows even for small files
        report = asyncio.run(
            validate_input(
                ChunkedBlob(data, list(chunk_sizes)),
                "file-x",
                len(data),
                CHAT,
                limits,
                [MODEL],
                None,
                write_rows,
                should_stop,
            )
        )
    assert report is not None
    return report, written


def line_count(data: bytes) -> int:
    """Lines as the validator numbers them: newline-terminated ones, plus a last one without a newline."""
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def assert_well_formed(report: ValidationReport, data: bytes) -> None:
    """What any report must look like, whatever the input."""
    assert report.error_count >= len(report.errors) and len(report.errors) <= validate.MAX_REPORTED_ERRORS
    assert report.ok == (report.error_count == 0)
    lines = line_count(data)
    for error in report.errors:
        assert set(error) == {"code", "message", "param", "line"}, error
        assert error["code"] in SPEC_CODES, error
        assert isinstance(error["message"], str) and error["message"], error
        assert error["line"] is None or 1 <= error["line"] <= lines, (error, lines)
    lines_numbered = [e["line"] for e in report.errors if e["line"] is not None]
    assert lines_numbered == sorted(lines_numbered), "errors are reported in line order"
    orjson.dumps(report.as_errors_object())  # it is stored and served as JSON


chunks = st.lists(st.integers(min_value=1, max_value=64), max_size=6)


def request_line(custom_id: str, content: str = "hi", **overrides: Any) -> dict[str, Any]:
    row = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODEL, "messages": [{"role": "user", "content": content}]},
    }
    row.update(overrides)
    return row


def encode(row: Any) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode()


# ---------------------------------------------------------------------------- anything at all
@settings(PROPERTY, max_examples=examples(150))
@given(data=st.binary(max_size=600), chunk_sizes=chunks, max_line=st.sampled_from([8, 64, 1 << 20]))
def test_arbitrary_bytes_never_raise(data: bytes, chunk_sizes: list[int], max_line: int) -> None:
    report, _ = run(data, chunk_sizes, max_line=max_line)
    assert_well_formed(report, data)
    assert report.total == sum(1 for raw in data.split(b"\n") if raw.strip() or len(raw) > max_line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
near_requests = st.fixed_dictionaries(
    {},
    optional={  # shaped like a request, with any value in any field
        "custom_id": json_values | st.text(max_size=6),
        "method": json_values | st.just("POST"),
        "url": json_values | st.just(CHAT),
        "body": json_values
        | st.fixed_dictionaries({}, optional={"model": json_values | st.just(MODEL), "stream": json_values}),
    },
)


@settings(PROPERTY, max_examples=examples(150))
@given(rows=st.lists(json_values | near_requests, max_size=8), chunk_sizes=chunks)
def test_arbitrary_json_lines_never_raise(rows: list[Any], chunk_sizes: list[int]) -> None:
    data = b"".join(encode(row) + b"\n" for row in rows)
    report, _ = run(data, chunk_sizes)
    assert_well_formed(report, data)
    for error in report.errors:
        if error["code"] not in ("empty_file", "too_many_requests"):
            assert error["line"] is not None, error
    if not rows:
        assert [e["code"] for e in report.errors] == ["empty_file"]


# ---------------------------------------------------------------------------- valid files, exact counts
blank = st.sampled_from([b"", b" ", b"\t", b"\r"])


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, str]]]:
    """A valid file with blank lines here and there; and the (line number, custom_id) of each request."""
    ids = draw(
        st.lists(
            st.text(min_size=1, max_size=8).filter(lambda s: "\x00" not in s), min_size=1, max_size=12, unique=True
        )
    )
    lines: list[bytes] = []
    expected: list[tuple[int, str]] = []
    for custom_id in ids:
        lines += draw(st.lists(blank, max_size=2))
        content = draw(st.text(max_size=20))
        lines.append(encode(request_line(custom_id, content)) + draw(st.sampled_from([b"", b"\r", b" "])))
        expected.append((len(lines), custom_id))
    data = b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"]))
    return data, expected


@settings(PROPERTY, max_examples=examples(120))
@given(file=valid_files(), chunk_sizes=chunks)
def test_valid_files_validate_to_exact_rows(file: tuple[bytes, list[tuple[int, str]]], chunk_sizes: list[int]) -> None:
    data, expected = file
    report, rows = run(data, chunk_sizes)
    assert report.ok, report.errors
    assert report.total == len(expected) and report.model == MODEL
    assert [(r["line_no"], r["custom_id"]) for r in rows] == expected
    for row in rows:  # each row points at exactly its line's bytes
        assert orjson.loads(data[row["offset"] : row["offset"] + row["length"]])["custom_id"] == row["custom_id"]


# ---------------------------------------------------------------------------- one bad line among good ones
def nested(depth: int) -> Any:
    """`depth` nested lists."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_LINES = {  # what the bad line is → the code it must be reported with
    "broken JSON": (b'{"custom_id": "x", "method": ', "invalid_json_line"),
    "not an object": (b"[1, 2, 3]", "invalid_json_line"),
    "invalid UTF-8": (b'{"custom_id": "\xff\xfe", "method": "POST"}', "invalid_json_line"),
    "lone surrogate": (b'{"custom_id": "\\ud800"}', "invalid_json_line"),
    "deep nesting": (b"[" * 100_000, "invalid_json_line"),
    "no custom_id": (
        encode({k: v for k, v in request_line("x").items() if k != "custom_id"}),
        "missing_required_parameter",
    ),
    "numeric custom_id": (encode(request_line(7)), "missing_required_parameter"),  # type: ignore[arg-type]
    "NUL in custom_id": (encode(request_line("a\x00b")), "missing_required_parameter"),
    "GET": (encode(request_line("x", method="GET")), "invalid_method"),
    "other url": (encode(request_line("x", url="/v1/embeddings")), "invalid_url"),
    "body not an object": (encode(request_line("x", body="hi")), "missing_required_parameter"),
    "streaming": (encode(request_line("x", body={"model": MODEL, "stream": True})), "streaming_unsupported"),
    "other model": (encode(request_line("x", body={"model": "other"})), "mismatched_model"),
    "NUL in model": (encode(request_line("x", body={"model": "fake\x00model"})), "missing_required_parameter"),
    "duplicate id": (encode(request_line("good-0")), "duplicate_custom_id"),
    "too deep to forward": (
        encode(request_line("x", body={"model": MODEL, "extra": nested(300)})),
        "invalid_json_line",
    ),
}


@settings(PROPERTY, max_examples=examples(60))
@given(
    kind=st.sampled_from(sorted(BAD_LINES)),
    before=st.integers(min_value=1, max_value=5),
    after=st.integers(min_value=0, max_value=5),
    chunk_sizes=chunks,
)
def test_one_bad_line_is_reported_at_its_line(kind: str, before: int, after: int, chunk_sizes: list[int]) -> None:
    raw, code = BAD_LINES[kind]
    good = [encode(request_line(f"good-{i}")) for i in range(before + after)]
    data = b"\n".join([*good[:before], raw, *good[before:]]) + b"\n"
    report, _ = run(data, chunk_sizes, row_chunk=2000)
    assert_well_formed(report, data)
    assert [(e["code"], e["line"]) for e in report.errors] == [(code, before + 1)], (kind, report.errors)
    assert report.total == before + after + 1


@settings(PROPERTY, max_examples=examples(40))
@given(
    long_at=st.sets(st.integers(min_value=1, max_value=8), min_size=1),
    total=st.integers(min_value=8, max_value=10),
    chunk_sizes=chunks,
)
def test_lines_over_the_limit_are_reported_each_at_its_line(
    long_at: set[int], total: int, chunk_sizes: list[int]
) -> None:
    limit = 200
    lines = [encode(request_line(f"id-{n}", "x" * (limit if n in long_at else 1))) for n in range(1, total + 1)]
    data = b"\n".join(lines)
    report, _ = run(data, chunk_sizes, max_line=limit)
    assert [(e["code"], e["line"]) for e in report.errors] == [("invalid_json_line", n) for n in sorted(long_at)]
    assert all(f"longer than {limit} bytes" in e["message"] for e in report.errors)


def test_nesting_up_to_what_the_gateway_forwards_is_valid() -> None:
    line = request_line("x", body={"model": MODEL, "extra": nested(validate.MAX_DEPTH - 2)})  # line, body, lists
    report, rows = run(encode(line) + b"\n")
    assert report.ok and len(rows) == 1, report.errors


def test_too_many_requests_stops_at_the_limit() -> None:
    data = b"".join(encode(request_line(f"id-{n}")) + b"\n" for n in range(12))
    report, _ = run(data, max_requests=10)
    assert [(e["code"], e["line"]) for e in report.errors] == [("too_many_requests", 11)]


def test_more_than_a_hundred_errors_are_counted_past_the_list() -> None:
    data = b"nope\n" * 250
    report, _ = run(data)
    assert len(report.errors) == validate.MAX_REPORTED_ERRORS and report.error_count == 250
    assert report.as_errors_object()["total"] == 250
