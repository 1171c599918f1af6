"""The group-commit writer against a flapping database: answers are kept, never turned into errors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from batchgate.engine.writer import ResultWriter
from batchgate.store.outage import OutageLog, is_data_error, is_transient
from batchgate.store.records import FinishedRequest


def answer(line_no: int, body: str = '{"ok":true}') -> FinishedRequest:
    return FinishedRequest(
        batch_id="batch_1",
        line_no=line_no,
        custom_id=f"r{line_no}",
        ok=True,
        status_code=200,
        upstream_request_id="req",
        body=body,
        error_code=None,
        error_message=None,
        finished_at=0.0,
        input_tokens=3,
        output_tokens=4,
    )


class FlakyStore:
    """store_results fails as `fail(call_no, results)` says (an exception to raise, or None: store them)."""

    def __init__(self, fail: Callable[[int, Sequence[FinishedRequest]], Exception | None]) -> None:
        self.fail = fail
        self.calls = 0
        self.stored: dict[int, FinishedRequest] = {}
        self.transactions: list[list[int]] = []

    async def store_results(self, finished: Sequence[FinishedRequest]) -> int:
        self.calls += 1
        error = self.fail(self.calls, finished)
        if error is not None:
            raise error
        self.transactions.append([f.line_no for f in finished])
        for f in finished:
            self.stored.setdefault(f.line_no, f)
        return len(finished)


def refused() -> Exception:
    return sa_exc.OperationalError("INSERT", {}, ConnectionRefusedError(111, "Connection refused"))


def writer_for(store: FlakyStore, **kwargs: object) -> ResultWriter:
    return ResultWriter(store, interval_s=0.001, max_results=500, **kwargs)  # type: ignore[arg-type]


async def flush_until_empty(writer: ResultWriter, store: FlakyStore, tries: int = 50) -> None:
    for _ in range(tries):
        await writer.flush()
        if not writer.buffered:
            return
    raise AssertionError(f"still {writer.buffered} results buffered after {tries} flushes")


async def test_an_answer_survives_the_database_coming_back_between_two_tries() -> None:
    # The old writer: group commit fails, the result alone fails, then the database is back and the
    # next try stored `result_unstorable` instead of the answer.
    store = FlakyStore(lambda call, _: refused() if call <= 2 else None)
    writer = writer_for(store)
    writer.add(answer(1))
    await flush_until_empty(writer, store)
    stored = store.stored[1]
    assert (stored.ok, stored.error_code, stored.body, stored.output_tokens) == (True, None, '{"ok":true}', 4)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached, connection timed out"),
        sa_exc.OperationalError("SELECT", {}, Exception("database is locked")),
    ],
)
async def test_every_outage_keeps_the_answers_until_the_database_answers(error: Exception) -> None:
    store = FlakyStore(lambda call, _: error if call <= 7 else None)
    writer = writer_for(store)
    for line in range(1, 11):
        writer.add(answer(line))
    await flush_until_empty(writer, store)
    assert sorted(store.stored) == list(range(1, 11))
    assert all(f.ok and f.error_code is None for f in store.stored.values())


async def test_a_value_the_database_refuses_becomes_an_error_line_and_the_rest_are_stored() -> None:
    too_big = sa_exc.DataError("INSERT", {}, asyncpg.exceptions.ProgramLimitExceededError("index row too big"))

    def fail(_: int, results: Sequence[FinishedRequest]) -> Exception | None:
        return too_big if any(f.line_no == 2 and f.ok for f in results) else None

    store = FlakyStore(fail)
    writer = writer_for(store)
    for line in (1, 2, 3):
        writer.add(answer(line))
    await flush_until_empty(writer, store)
    assert [store.stored[n].ok for n in (1, 2, 3)] == [True, False, True]
    assert store.stored[2].error_code == "result_unstorable"


async def test_an_outage_is_logged_when_it_starts_and_when_it_ends_not_per_try(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore(lambda call, _: refused() if call <= 40 else None)
    writer = writer_for(store, outage=OutageLog(logging.getLogger("test.outage"), report_every_s=3600))
    for line in range(1, 101):
        writer.add(answer(line))
    with caplog.at_level(logging.INFO):
        await flush_until_empty(writer, store, tries=100)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("database unreachable (ConnectionRefusedError")
    assert messages[1].startswith("database reachable again after") and "(40 failed attempts)" in messages[1]
    assert not any(r.exc_info for r in caplog.records)
    assert len(store.stored) == 100


async def test_large_answers_are_committed_in_transactions_bounded_by_bytes() -> None:
    store = FlakyStore(lambda _call, _results: None)
    writer = writer_for(store, max_bytes=1000)
    for line in range(1, 7):
        writer.add(answer(line, body='"' + "x" * 400 + '"'))
    await writer.flush()
    assert store.transactions == [[1, 2], [3, 4], [5, 6]]


def test_transient_and_data_errors_are_told_apart() -> None:
    assert is_transient(refused())
    assert is_transient(sa_exc.InterfaceError("SELECT", {}, Exception("connection is closed")))
    assert not is_transient(sa_exc.DataError("INSERT", {}, Exception("value too long")))
    assert is_data_error(sa_exc.DataError("INSERT", {}, Exception("value too long")))
    assert is_data_error(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert not is_transient(sa_exc.ProgrammingError("SELECT", {}, Exception("syntax error")))
