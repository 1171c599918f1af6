"""What the fuzz suites share: how hard to fuzz, the SPEC error envelope as a predicate, the fuzzed
server's config, and its files directory.

`BATCHGATE_FUZZ_EXAMPLES` scales every suite: unset (CI, `make test`) runs the short form; e.g.
`BATCHGATE_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/fuzz` runs the long one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.e2e.helpers import API_ENGINE, gateway_config
from tests.harness import ServerProcess, upstream_model_config

EXAMPLES_ENV = "BATCHGATE_FUZZ_EXAMPLES"
ADMIN_KEY = "fuzz-admin-secret"


def examples(short: int) -> int:
    """Hypothesis examples for a property: `short` in CI, BATCHGATE_FUZZ_EXAMPLES when it is set."""
    raw = os.environ.get(EXAMPLES_ENV, "").strip()
    return max(short, int(raw)) if raw.isdigit() else short


def is_long_form() -> bool:
    return os.environ.get(EXAMPLES_ENV, "").strip().isdigit()


def envelope_problem(status: int, body: Any) -> str | None:
    """None when `body` is SPEC §2's error envelope `{"error": {message, type, param, code}}`, else what is wrong."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        return f"HTTP {status}: the body is not {{'error': {{...}}}}: {str(body)[:300]}"
    err = body["error"]
    if not isinstance(err, dict) or set(err) != {"message", "type", "param", "code"}:
        return f"HTTP {status}: error must have exactly message, type, param, code: {str(err)[:300]}"
    if not isinstance(err["message"], str) or not err["message"]:
        return f"HTTP {status}: error.message must be a non-empty string: {err!r:.300}"
    if not isinstance(err["type"], str) or not err["type"]:
        return f"HTTP {status}: error.type must be a non-empty string: {err!r:.300}"
    for name in ("param", "code"):
        if err[name] is not None and not isinstance(err[name], str):
            return f"HTTP {status}: error.{name} must be a string or null: {err!r:.300}"
    return None


def fuzz_config(upstream_url: str, **limits: int) -> dict[str, Any]:
    """`fake-model` on the fake upstream, the API suites' quick engine, and these limits."""
    return gateway_config(upstream_model_config(upstream_url), engine=API_ENGINE, **limits)


def files_dir(server: ServerProcess) -> Path:
    """The server's local files directory (the default storage under its working directory)."""
    return server.workdir / ".batchgate" / "files"


def stored_entries(server: ServerProcess) -> set[str]:
    """Every name in the files directory, temporary parts included."""
    root = files_dir(server)
    return {p.name for p in root.iterdir()} if root.exists() else set()


def paths_named(roots: list[Path], marker: str) -> list[Path]:
    """Every file or directory under `roots` whose name contains `marker` (where a traversal would land)."""
    return [p for root in roots if root.exists() for p in root.rglob(f"*{marker}*")]
