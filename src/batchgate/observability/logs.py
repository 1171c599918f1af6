"""Log output: plain text for people, or one JSON object a line (`--log-format json`) for collectors.

Engine log calls pass ids as `extra={"batch_id": …, "custom_id": …}`; the JSON form carries them
as fields, so a collector can follow one batch or one request across processes.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Literal

import orjson

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = (
    "batch_id",
    "custom_id",
    "line_no",
    "deployment",
    "model",
    "status",
    "attempts",
    "method",
    "path",
    "duration_ms",
    "worker",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(log_format: LogFormat = "text") -> None:
    """Root logging for the CLI's long-running commands; the level from $BATCHGATE_LOG_LEVEL (INFO)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("BATCHGATE_LOG_LEVEL", "INFO").upper())
