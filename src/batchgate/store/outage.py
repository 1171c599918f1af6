"""Telling a database outage from a refused value, and logging an outage once instead of per statement.

A result the database could not store because it was down, restarting or out of connections must be
kept and retried; only a value it refuses as data (too big, bad encoding) may become an error line.
While it is down, every loop of the engine fails every few milliseconds: the log says so when it
starts, gives a count while it lasts and says when it ends, instead of a traceback per try.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import exc as sa_exc

# SQLSTATE classes and codes that mean "try again later", not "this value is wrong":
# 08 connection exception, 53 insufficient resources, 57P0x shutdown/starting, 40001/40P01 retry.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P")
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
# 22 data exception (encoding, value too long, …), 54 program limit exceeded (row or index too big).
_DATA_SQLSTATE_PREFIXES = ("22", "54")
_TRANSIENT_MESSAGES = (
    "database is locked",
    "connection is closed",
    "connection was closed",
    "the database system is",
    "terminating connection",
    "server closed the connection",
    "connection refused",
    "disk i/o error",
    "unable to open database file",
)
REPORT_EVERY_S = 30.0


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (`orig`) and what caused it, without loops."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [getattr(item, "orig", None), item.__cause__, item.__context__]
    return seen


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state if isinstance(state, str) else None


def is_data_error(exc: BaseException) -> bool:
    """The database refused the value itself: storing it again will fail again."""
    for item in _chain(exc):
        if isinstance(item, sa_exc.DataError | UnicodeError):
            return True
        if type(item).__name__ in ("DataError", "ProgramLimitExceededError"):  # sqlite3 / asyncpg
            return True
        state = _sqlstate(item)
        if state and state.startswith(_DATA_SQLSTATE_PREFIXES):
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """The database could not be reached or asked to be tried later; the statement itself was fine."""
    if is_data_error(exc):
        return False
    for item in _chain(exc):
        if isinstance(item, OSError | TimeoutError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
            return True
        if isinstance(item, sa_exc.DBAPIError) and item.connection_invalidated:
            return True
        if type(item).__name__ in (
            "InterfaceError",
            "ConnectionDoesNotExistError",
            "CannotConnectNowError",
            "ConnectionFailureError",
            "TooManyConnectionsError",
            "AdminShutdownError",
        ):
            return True
        state = _sqlstate(item)
        if state and (state.startswith(_TRANSIENT_SQLSTATE_PREFIXES) or state in _TRANSIENT_SQLSTATES):
            return True
        if any(text in str(item).lower() for text in _TRANSIENT_MESSAGES):
            return True
    return False


def describe(exc: BaseException) -> str:
    """One short line for a log: the innermost cause, cut to a readable length."""
    inner = _chain(exc)[-1]
    text = f"{type(inner).__name__}: {inner}".replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


class OutageLog:
    """One warning when the database stops answering, a count every 30 s while it stays down, one
    when it answers again. Shared by every loop of a process (they fail together)."""

    def __init__(self, logger: logging.Logger | None = None, report_every_s: float = REPORT_EVERY_S) -> None:
        self._log = logger or logging.getLogger("batchgate.store")
        self._report_every_s = report_every_s
        self.down_since: float | None = None
        self.failures = 0
        self._reported_at = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException, what: str) -> None:
        now = time.monotonic()
        self.failures += 1
        if self.down_since is None:
            self.down_since = self._reported_at = now
            self._log.warning(
                "database unreachable (%s, while %s); work is kept and retried until it answers", describe(exc), what
            )
        elif now - self._reported_at >= self._report_every_s:
            self._reported_at = now
            self._log.warning(
                "database still unreachable after %.0f s (%d failed attempts; last: %s)",
                now - self.down_since,
                self.failures,
                describe(exc),
            )

    def report(self, exc: BaseException, what: str, logger: logging.Logger) -> None:
        """A loop's step failed: an outage goes to the outage log, anything else with its traceback."""
        if is_transient(exc):
            self.failed(exc, what)
        else:
            logger.error("%s failed; retrying", what, exc_info=exc)

    def recovered(self) -> None:
        if self.down_since is None:
            return
        self._log.warning(
            "database reachable again after %.1f s (%d failed attempts)",
            time.monotonic() - self.down_since,
            self.failures,
        )
        self.down_since, self.failures = None, 0
