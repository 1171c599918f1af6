"""Input validation: stream the JSONL file once, write request rows in chunks, or say what is wrong.

Never holds the file in memory: one line at a time (a line over the limit is skipped unread),
plus the set of custom_ids seen, which uniqueness needs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchgate.blobs import BlobStore, iter_lines
from batchgate.config import LimitsConfig

MAX_REPORTED_ERRORS = 100
NUL_MESSAGE = "'{name}' must not contain NUL characters (\\u0000)"
MAX_DEPTH = 254  # the most nesting orjson writes back; the dispatcher re-serialises every body
ROW_CHUNK = 2000


@dataclass
class ValidationReport:
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    total: int = 0
    model: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})

    def as_errors_object(self) -> dict[str, Any]:
        """OpenAI's `errors` list; `total` (an extension) counts errors beyond the first 100 too."""
        return {"object": "list", "data": self.errors, "total": self.error_count}


class LineChecker:
    """The rules for one request line; stateful across lines (model, custom_ids)."""

    def __init__(
        self, endpoint: str, known_models: Collection[str], model_override: str | None, max_custom_id_chars: int = 512
    ) -> None:
        self.endpoint = endpoint
        self.max_custom_id_chars = max_custom_id_chars
        self.known_models = known_models
        self.model_override = model_override
        self.model: str | None = model_override
        self.seen_ids: set[str] = set()
        self._reported_unknown_model = False

    def check(self, raw: bytes, line: int, report: ValidationReport) -> str | None:
        """The line's custom_id if it is a valid request, else None after adding its errors."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            report.add("invalid_json_line", f"line {line} is not valid JSON: {exc}", line)
            return None
        if not isinstance(data, dict):
            report.add("invalid_json_line", f"line {line} must be a JSON object, got {type(data).__name__}", line)
            return None
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and not _serialisable(data):  # counting is cheap
            report.add(
                "invalid_json_line",
                f"line {line} nests JSON more than {MAX_DEPTH} levels deep, more than the gateway can forward",
                line,
            )
            return None
        before = report.error_count
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            report.add(
                "missing_required_parameter",
                _missing_or_typed("custom_id", custom_id, "a non-empty string"),
                line,
                "custom_id",
            )
            custom_id = None
        elif "\x00" in custom_id:  # PostgreSQL cannot store it: the batch would fail at its first write
            report.add("missing_required_parameter", NUL_MESSAGE.format(name="custom_id"), line, "custom_id")
            custom_id = None
        elif len(custom_id) > self.max_custom_id_chars:  # every listing and output line repeats it
            report.add(
                "invalid_custom_id",
                f"custom_id has {len(custom_id)} characters; at most "
                f"{self.max_custom_id_chars} are allowed (limits.max_custom_id_chars)",
                line,
                "custom_id",
            )
            custom_id = None
        elif custom_id in self.seen_ids:
            report.add(
                "duplicate_custom_id", f"custom_id {_short(custom_id)} appears more than once", line, "custom_id"
            )
        method = data.get("method")
        if method is None:
            report.add("missing_required_parameter", "missing required parameter 'method'", line, "method")
        elif method != "POST":
            report.add("invalid_method", f"method must be 'POST', got {_short(method)}", line, "method")
        url = data.get("url")
        if url is None:
            report.add("missing_required_parameter", "missing required parameter 'url'", line, "url")
        elif url != self.endpoint:
            report.add(
                "invalid_url", f"url {_short(url)} does not match the batch's endpoint {self.endpoint}", line, "url"
            )
        body = data.get("body")
        if not isinstance(body, dict):
            report.add("missing_required_parameter", _missing_or_typed("body", body, "a JSON object"), line, "body")
        else:
            self._check_body(body, line, report)
        if custom_id is not None:
            self.seen_ids.add(custom_id)
        return custom_id if report.error_count == before else None

    def _check_body(self, body: dict[str, Any], line: int, report: ValidationReport) -> None:
        if body.get("stream") is True:
            report.add("streaming_unsupported", "body.stream must not be true in a batch", line, "body.stream")
        if self.model_override is not None:
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            report.add(
                "missing_required_parameter",
                _missing_or_typed("body.model", model, "a non-empty string"),
                line,
                "body.model",
            )
            return
        if "\x00" in model:
            report.add("missing_required_parameter", NUL_MESSAGE.format(name="body.model"), line, "body.model")
            return
        if self.model is None:
            self.model = model
        if model != self.model:
            report.add(
                "mismatched_model",
                f"body.model {_short(model)} differs from {_short(self.model)}: one model per batch",
                line,
                "body.model",
            )
        elif model not in self.known_models and not self._reported_unknown_model:
            self._reported_unknown_model = True
            report.add(
                "model_not_found",
                f"model {_short(model)} is not served by this gateway "
                f"(configured: {', '.join(sorted(self.known_models))})",
                line,
                "body.model",
            )


async def validate_input(
    blobs: BlobStore,
    file_key: str,
    file_bytes: int,
    endpoint: str,
    limits: LimitsConfig,
    known_models: Collection[str],
    model_override: str | None,
    write_rows: Callable[[list[dict[str, Any]]], Any],
    should_stop: Callable[[], Any],
) -> ValidationReport | None:
    """Validate and emit request rows (through `write_rows`) chunk by chunk.

    Returns the report, or None when `should_stop` says the batch was cancelled meanwhile.
    Rows are written only while the file is still valid; the caller discards them on failure.
    """
    report = ValidationReport()
    if file_bytes > limits.max_file_bytes:
        report.add(
            "file_too_large",
            f"the input file has {file_bytes} bytes; the limit is {limits.max_file_bytes} bytes",
            None,
            "input_file_id",
        )
        return report
    checker = LineChecker(endpoint, known_models, model_override, limits.max_custom_id_chars)
    rows: list[dict[str, Any]] = []
    line = 0
    async for offset, length, raw in iter_lines(blobs, file_key, limits.max_line_bytes):
        line += 1
        if raw is not None and not raw.strip():
            continue  # blank lines (a trailing newline, say) are not requests
        report.total += 1
        if report.total > limits.max_requests_per_batch:
            report.add(
                "too_many_requests",
                f"the file has more than {limits.max_requests_per_batch} requests, the limit per batch",
                line,
            )
            break
        if raw is None:
            report.add("invalid_json_line", f"line {line} is longer than {limits.max_line_bytes} bytes", line)
            continue
        custom_id = checker.check(raw, line, report)
        if custom_id is not None and report.ok:
            rows.append({"line_no": line, "custom_id": custom_id, "offset": offset, "length": length})
            if len(rows) >= ROW_CHUNK:
                await write_rows(rows)
                rows = []
                if await should_stop():
                    return None
        elif not report.ok:
            rows = []
    if report.total == 0:
        report.add("empty_file", "the input file has no requests", None, "input_file_id")
    if report.ok:
        await write_rows(rows)
    report.model = checker.model
    return report


def _serialisable(data: Any) -> bool:
    try:
        orjson.dumps(data)
    except orjson.JSONEncodeError:
        return False
    return True


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _missing_or_typed(name: str, value: Any, expected: str) -> str:
    if value is None:
        return f"missing required parameter '{name}'"
    return f"'{name}' must be {expected}, got {type(value).__name__}"
