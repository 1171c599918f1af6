"""PostgreSQL flaps under a running batch: the cluster is stopped and started several times while
results are being stored, and not one answer may be lost.

The bug: after a failed group commit the result writer retried each result alone once and, when
that failed too, stored a `result_unstorable` error line instead. Whenever the database came back
between the two tries, a 200 answer became an error line (2 of 30,000 in 8 short outages). And every
buffered result logged a full traceback on every try (95 MB of log for one 30 s outage).

What must hold: every custom_id ends exactly once, every one in the output file with the echo of its
own input, no error line at all (the fake upstream answers everything 200), request_counts exact; and
the server log says when the outage starts and when it ends, with a handful of tracebacks at most
instead of one per buffered result per try.

Size: BATCHGATE_CHAOS_SCALE=short (default, CI: 4,000 requests, 4 outages of 1-3 s) or full
(`make chaos`: 30,000 requests, 8 outages of 1-4 s).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import openai
from openai.types import Batch

from tests.chaos.helpers import REPORT, scale
from tests.e2e.helpers import ENGINE, TERMINAL, assert_echoed, file_lines, submit
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    openai_client,
    poll_until,
    upstream_model_config,
)
from tests.postgres import PostgresCluster

SEED = 15  # every random choice below comes from it
UPSTREAM_LATENCY_MS = 50
CONCURRENCY = 16  # with the latency: at most ~320 answers a second, so the outages fall mid-batch
MODES = ("fast", "immediate")  # outages alternate a clean shutdown and a crash (recovery at the next start)
TRACEBACKS_PER_OUTAGE = 3  # a few at most: the old writer logged one per buffered result per try


@dataclass(frozen=True)
class FlapScale:
    name: str
    requests: int
    outages: int
    down_s: tuple[float, float]  # how long each outage keeps the database down: uniform in this range
    deadline_s: float  # for the whole batch, outages included


FLAP_SCALES = {
    "short": FlapScale("short", requests=4000, outages=4, down_s=(1.0, 3.0), deadline_s=75.0),
    "full": FlapScale("full", requests=30000, outages=8, down_s=(1.0, 4.0), deadline_s=600.0),
}


@dataclass
class Outage:
    mode: str
    at_completed: int  # request_counts.completed the API showed just before the stop
    in_flight: int  # calls open at the upstream just before the stop
    stop_s: float  # pg_ctlcluster stop, issued to done
    down_s: float  # stop issued to start issued
    start_s: float  # start issued to PostgreSQL accepting connections again


def retrieve(client: openai.OpenAI, batch_id: str) -> Batch | None:
    """The batch, or None while the API cannot answer (503/500 or a dropped connection during an outage)."""
    try:
        return client.batches.retrieve(batch_id)
    except (openai.APIStatusError, openai.APIConnectionError):
        return None


def wait_batch_tolerant(client: openai.OpenAI, batch_id: str, condition: Any, timeout: float, what: str) -> Batch:
    """Poll the batch until `condition` holds, riding out the API's errors while the database is away."""
    last: list[Batch] = []

    def check() -> Batch | None:
        batch = retrieve(client, batch_id)
        if batch is None:
            return None
        last[:] = [batch]
        return batch if condition(batch) else None

    return poll_until(check, timeout, 0.02, message=lambda: f"batch {batch_id} {what}: {last[0] if last else None}")


def thresholds(plan: FlapScale, rng: random.Random) -> list[int]:
    """One progress point in each of `outages` equal bands of 10 %-90 % of the batch, so results flow
    (and get stored) between any two outages and the batch is still running at the last one."""
    width = 0.8 / plan.outages
    return [int(plan.requests * (0.1 + width * (k + rng.uniform(0.2, 0.8)))) for k in range(plan.outages)]


def flap(
    postgres: PostgresCluster,
    upstream: FakeUpstreamProcess,
    client: openai.OpenAI,
    batch: Batch,
    plan: FlapScale,
    rng: random.Random,
) -> list[Outage]:
    """Stop and start the cluster once per threshold, each time while results are being stored."""
    outages: list[Outage] = []
    for index, threshold in enumerate(thresholds(plan, rng)):
        seen = wait_batch_tolerant(
            client,
            batch.id,
            lambda b, t=threshold: b.request_counts.completed >= t or b.status in TERMINAL,
            plan.deadline_s,
            "stopped making progress",
        )
        assert seen.status not in TERMINAL, f"the batch ended before outage {index + 1}: {seen}"
        in_flight = upstream.stats()["in_flight"]
        mode = MODES[index % len(MODES)]
        down_for = rng.uniform(*plan.down_s)
        started = time.monotonic()
        with postgres.down(mode):
            stopped = time.monotonic()
            time.sleep(down_for)  # the fault itself: the database stays away this long (not synchronisation)
            starting = time.monotonic()
        outages.append(
            Outage(
                mode,
                seen.request_counts.completed,
                in_flight,
                stopped - started,
                starting - started,
                time.monotonic() - starting,
            )
        )
    return outages


def traceback_lines(log: str) -> int:
    return sum("Traceback" in line for line in log.splitlines())


def assert_outage_logged(log: str) -> None:
    """The server log says the database went away and, after the last time, that it came back.

    The wording is the outage log's (src/batchgate/store/outage.py): "database unreachable (...)"
    when an outage starts, "database reachable again after N s (M failed attempts)" when it ends.
    """
    lower = log.lower()
    assert "unreachable" in lower, "the log never says the database was unreachable"
    assert "again" in lower, "the log never says the database was reachable again"
    assert lower.rindex("again") > lower.rindex("unreachable"), "the log never says the last outage ended"


def test_results_survive_postgresql_stopped_and_started_under_a_running_batch(
    postgres: PostgresCluster, upstream: FakeUpstreamProcess, make_server: Any
) -> None:
    plan = FLAP_SCALES[scale().name]
    rng = random.Random(SEED)
    upstream.control(latency_ms=UPSTREAM_LATENCY_MS)
    server: ServerProcess = make_server(
        {
            "storage": {"database": postgres.new_database()},
            "models": [upstream_model_config(upstream.url, max_concurrency=CONCURRENCY)],
            "engine": ENGINE,  # quick retries; the default 60 s lease outlives every outage
        }
    )
    # The content names the line, so an answer can only match its own request.
    rows = [chat_line(f"flap-{i:05d}", f"flap line {i} of {plan.requests}") for i in range(plan.requests)]
    client = openai_client(server, timeout=10.0)
    started = time.monotonic()
    batch = submit(client, rows)  # files.create + batches.create, through the official SDK
    try:
        outages = flap(postgres, upstream, client, batch, plan, rng)
    finally:
        postgres.resume()  # whatever failed: later tests share the cluster
    final = wait_batch_tolerant(
        client, batch.id, lambda b: b.status in TERMINAL, plan.deadline_s, "never ended after the outages"
    )
    elapsed = time.monotonic() - started
    log = server.log_text()
    tracebacks = traceback_lines(log)
    out = file_lines(client, final.output_file_id)
    err = file_lines(client, final.error_file_id)
    unstorable = [line["custom_id"] for line in err if (line.get("error") or {}).get("code") == "result_unstorable"]
    report(plan, outages, final, elapsed, len(out), len(err), len(unstorable), tracebacks, len(log.encode()))
    client.close()

    assert len(outages) == plan.outages
    assert any(o.in_flight > 0 for o in outages), "no call was open at any stop: the outages hit nothing"
    assert not unstorable, f"{len(unstorable)} answers became result_unstorable: {unstorable[:10]}"
    assert not err, f"{len(err)} error lines, e.g. {err[:3]}"
    assert final.status == "completed", final
    assert final.request_counts.model_dump() == {"total": plan.requests, "completed": plan.requests, "failed": 0}
    counts: dict[str, int] = {}
    for line in out + err:
        counts[line["custom_id"]] = counts.get(line["custom_id"], 0) + 1
    assert counts == {row["custom_id"]: 1 for row in rows}, "every custom_id exactly once across output+error"
    by_id = {line["custom_id"]: line for line in out}
    for row in rows:
        assert_echoed(by_id[row["custom_id"]], row)

    assert tracebacks <= TRACEBACKS_PER_OUTAGE * plan.outages, (
        f"{tracebacks} tracebacks in {len(log.encode())} bytes of log for {plan.outages} outages"
    )
    assert_outage_logged(log)


def report(
    plan: FlapScale,
    outages: list[Outage],
    final: Batch,
    elapsed: float,
    out: int,
    err: int,
    unstorable: int,
    tracebacks: int,
    log_bytes: int,
) -> None:
    points = ", ".join(
        f"{o.at_completed} ({o.mode}, {o.in_flight} in flight, stop {o.stop_s:.1f}s, "
        f"down {o.down_s:.1f}s, start {o.start_s:.1f}s)"
        for o in outages
    )
    REPORT.extend(
        [
            f"PostgreSQL flap ({plan.name}): {plan.requests} requests, {len(outages)} stop/start outages, "
            f"{final.status} in {elapsed:.1f}s",
            f"  stopped at completed = {points}",
            f"  request_counts {final.request_counts.model_dump()}; {out} output lines, {err} error lines "
            f"({unstorable} result_unstorable)",
            f"  server log: {log_bytes} bytes, {tracebacks} lines with 'Traceback'",
        ]
    )  # printed in the terminal summary (tests/chaos/conftest.py)
