"""Fixtures of the fuzz suites (the session-wide ones, such as the fake upstream, are in tests/conftest.py)."""

from __future__ import annotations

from tests.e2e.conftest import _log_on_failure  # noqa: F401 - a failing test prints its servers' log tails
