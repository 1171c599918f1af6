"""The chaos run of issue 7: one batch against a flaky upstream while the server is SIGKILLed and restarted.

Every request must end exactly once with the echo of its own input line, whatever the faults and
however the kills fall. The run also measures what the kills cost: upstream calls made again
because a kill cut them short or lost their answer before it was stored.

Size: BATCHGATE_CHAOS_SCALE=short (default, CI: 800 requests, 3 kills) or full (`make chaos`:
5,000 requests, 10 kills).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import openai
from openai.types import Batch

from batchgate.engine.finalize import request_id
from tests.chaos.helpers import REPORT, FaultPlan, Scale, fault_plan, scale
from tests.e2e.helpers import (
    TERMINAL,
    assert_echoed,
    result_files,
    single_model_config,
    submit,
    wait_batch,
    wait_terminal,
    wait_upstream_idle,
)
from tests.harness import FakeUpstreamProcess, ServerProcess, openai_client

SEED = 7  # issue 7; every random choice below comes from it
UPSTREAM_LATENCY_MS = 20
CONCURRENCY = 32
HANG_TIMEOUT_S = 2.0  # a hung call is given up after this long, then retried


@dataclass
class Kill:
    at_completed: int  # request_counts.completed the API showed just before the kill
    status: str
    restart_s: float  # SIGKILL to /health answering again


def kill_storm(
    server: ServerProcess, client: openai.OpenAI, batch: Batch, plan: Scale, rng: random.Random
) -> tuple[list[Kill], openai.OpenAI]:
    """SIGKILL the server at `plan.kills` random points of the run, restarting it after each.

    The points are random progress thresholds (then a random pause of up to 50 ms): reaching one is
    polled, never slept for, and the outcome must not depend on where they fall.
    """
    total = plan.requests
    thresholds = sorted(rng.uniform(0.05, 0.9) * total for _ in range(plan.kills))
    kills: list[Kill] = []
    for threshold in thresholds:
        before = wait_batch(
            client,
            batch.id,
            lambda b, t=threshold: b.request_counts.completed >= t or b.status in TERMINAL,
            timeout=plan.deadline_s,
            interval=0.02,
            what="stopped making progress",
        )
        assert before.status not in TERMINAL, f"the batch ended before kill {len(kills) + 1}: {before}"
        time.sleep(rng.uniform(0, 0.05))  # a random moment; correctness never depends on it
        seen = client.batches.retrieve(batch.id)
        started = time.monotonic()
        server.kill()
        client.close()
        server.start().wait_ready(60)
        kills.append(Kill(seen.request_counts.completed, seen.status, time.monotonic() - started))
        client = openai_client(server)  # the old client's pooled connections died with the server
        after = client.batches.retrieve(batch.id)
        assert after.request_counts.completed >= seen.request_counts.completed, "a stored result was lost"
    return kills, client


def assert_every_request_once_and_its_own(client: openai.OpenAI, batch: Batch, plan: FaultPlan) -> None:
    """Completed, all succeeded, each custom_id once, and each output line is the answer to its own line."""
    rows = plan.rows
    assert batch.status == "completed", batch
    assert batch.request_counts.model_dump() == {"total": len(rows), "completed": len(rows), "failed": 0}
    assert batch.error_file_id is None
    out, _ = result_files(client, batch, rows)  # asserts every custom_id exactly once
    input_tokens = output_tokens = 0
    for line_no, row in enumerate(rows, start=1):
        line = out[row["custom_id"]]
        assert_echoed(line, row)  # the answer echoes this line's content, which names the line
        assert line["id"] == request_id(batch.id, line_no)
        input_tokens += line["response"]["body"]["usage"]["prompt_tokens"]
        output_tokens += line["response"]["body"]["usage"]["completion_tokens"]
    # Usage is summed from stored results: one stored twice would show here.
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (input_tokens, output_tokens)


def kill_costs(stats: dict[str, Any], plan: FaultPlan) -> dict[str, int]:
    """What the upstream saw, and the calls the kills added.

    A line with one injected fault needs exactly two calls and a clean line one, when nothing
    crashes; a kill can only add calls (a call it cuts short, or whose answer it loses, is made
    again). So the calls beyond the lines plus their planned faults are the kills' doing. A fault a
    kill cut short before it was delivered was "used up" by the call it cost; the sum still holds.
    """
    by_status = stats["by_status"]
    planned = len(plan.rows) + plan.fault_attempts
    return {
        "calls": stats["requests_total"],
        "calls_without_kills": planned,
        "repeated_by_kills": stats["requests_total"] - planned,
        "answered_twice": stats["answers_repeated"],
        **{f"delivered_{kind}": by_status.get(kind, 0) for kind in plan.faults},
    }


def test_flaky_upstream_and_repeated_sigkill(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    plan_size = scale()
    rng = random.Random(SEED)
    plan = fault_plan(plan_size.requests, SEED)
    upstream.control(latency_ms=UPSTREAM_LATENCY_MS)
    server = make_server(
        single_model_config(upstream.url, max_concurrency=CONCURRENCY, timeout_s=HANG_TIMEOUT_S, max_attempts=5)
    )
    client = openai_client(server)
    started = time.monotonic()
    batch = submit(client, plan.rows)

    kills, client = kill_storm(server, client, batch, plan_size, rng)
    final = wait_terminal(client, batch.id, timeout=plan_size.deadline_s, interval=0.1)
    elapsed = time.monotonic() - started

    assert len(kills) == plan_size.kills
    assert_every_request_once_and_its_own(client, final, plan)
    wait_upstream_idle(upstream, "calls the gateway gave up are still open upstream")
    stats = upstream.stats()
    costs = kill_costs(stats, plan)
    assert stats["bodies_seen"] == plan_size.requests  # every line reached the upstream, no other body did
    assert costs["repeated_by_kills"] > 0, "the kills never cut a call short: they hit nothing"
    assert costs["answered_twice"] <= costs["repeated_by_kills"]
    for kind, lines in plan.faults.items():  # a kill can swallow a fault before it is delivered, never add one
        assert costs[f"delivered_{kind}"] <= len(lines), (kind, costs)
    report(plan_size, plan, kills, costs, elapsed)
    client.close()


def report(plan_size: Scale, plan: FaultPlan, kills: list[Kill], costs: dict[str, int], elapsed: float) -> None:
    planned = ", ".join(f"{len(lines)} {kind}" for kind, lines in plan.faults.items())
    delivered = ", ".join(f"{costs[f'delivered_{kind}']} {kind}" for kind in plan.faults)
    points = ", ".join(f"{k.at_completed} ({k.status}, back in {k.restart_s:.1f}s)" for k in kills)
    lines = [
        f"kill storm ({plan_size.name}): {plan_size.requests} requests, {len(kills)} SIGKILLs, "
        f"completed in {elapsed:.1f}s",
        f"  faults planned: {planned}; delivered: {delivered}",
        f"  killed at completed = {points}",
        f"  upstream calls: {costs['calls']} (without kills {costs['calls_without_kills']}): "
        f"{costs['repeated_by_kills']} repeated because of the kills, {costs['answered_twice']} of them "
        "answered twice (answer lost before it was stored)",
    ]
    REPORT.extend(lines)  # printed in the terminal summary (tests/chaos/conftest.py)
