"""The chaos suite's report: what the tests measured, printed after the run (with or without -s)."""

from __future__ import annotations

import pytest

from tests.chaos.helpers import REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("chaos report")
        for line in REPORT:
            terminalreporter.write_line(line)
