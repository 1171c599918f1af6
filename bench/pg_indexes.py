"""PostgreSQL query plans at scale: 1,000,000 request rows (and their results), hot queries EXPLAINed.

Starts Debian's local cluster (as the tests do), migrates a fresh database, fills it with
generate_series (20 batches of 50,000 requests, half of them finished), then runs EXPLAIN ANALYZE on
the queries the engine and the API run all the time, printing each one's plan shape and time.
A claim or a page must use an index, never a sequential scan of the million rows.
Run: .venv/bin/python bench/pg_indexes.py  (needs root and Debian's postgresql, like `make test`)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from batchgate.store.database import create_engine  # noqa: E402
from batchgate.store.migrate import upgrade_to_head  # noqa: E402
from tests.postgres import PostgresCluster  # noqa: E402

BATCHES, PER_BATCH = 20, 50_000

FILL = [
    """INSERT INTO batches (id, endpoint, model, input_file_id, completion_window, status, created_at, expires_at,
       total, completed, failed, input_tokens, cached_tokens, output_tokens, reasoning_tokens)
       SELECT 'batch_' || lpad(b::text, 6, '0'), '/v1/chat/completions', 'm', 'file-x', '24h', 'in_progress',
              1000 + b, 999999, :per, 0, 0, 0, 0, 0, 0 FROM generate_series(1, :batches) b""",
    """INSERT INTO requests (batch_id, line_no, custom_id, "offset", length, state, attempts, next_attempt_at)
       SELECT 'batch_' || lpad(b::text, 6, '0'), l, 'c' || l, l * 100, 99,
              CASE WHEN l <= :per / 2 THEN 'done' ELSE 'pending' END, 0, 0
       FROM generate_series(1, :batches) b, generate_series(1, :per) l""",
    """INSERT INTO results (batch_id, line_no, custom_id, ok, status_code, body, finished_at)
       SELECT batch_id, line_no, custom_id, true, 200, '{"ok": true}', 0 FROM requests WHERE state = 'done'""",
    "ANALYZE",
]

QUERIES = {
    "claim 32 ready rows of one batch": (
        """SELECT line_no FROM requests WHERE batch_id = 'batch_000007' AND state = 'pending'
           AND next_attempt_at <= 1e12 ORDER BY line_no LIMIT 32 FOR UPDATE SKIP LOCKED"""
    ),
    "xAI results page after a seq": (
        "SELECT * FROM results WHERE batch_id = 'batch_000007' AND seq > 100000 ORDER BY seq LIMIT 100"
    ),
    "finalisation page by line": (
        "SELECT * FROM results WHERE batch_id = 'batch_000007' AND line_no > 10000 ORDER BY line_no LIMIT 1000"
    ),
    "xAI requests page": (
        """SELECT r.line_no, r.state, res.ok FROM requests r LEFT JOIN results res
           ON res.batch_id = r.batch_id AND res.line_no = r.line_no
           WHERE r.batch_id = 'batch_000007' AND r.line_no > 20000 ORDER BY r.line_no LIMIT 100"""
    ),
    "expired leases": "SELECT count(*) FROM requests WHERE state = 'running' AND lease_until < 1e12",
    "batches newest first": "SELECT * FROM batches ORDER BY id DESC LIMIT 21",
    "duplicate ids on an xAI add": (
        "SELECT custom_id FROM requests WHERE batch_id = 'batch_000007' AND custom_id IN ('c1', 'c2', 'c3')"
    ),
}


def shape(plan: dict) -> str:
    """Node types of the plan, outermost first, with the index each scan used."""
    out = []
    node = plan
    while node:
        label = node["Node Type"]
        if "Index Name" in node:
            label += f" ({node['Index Name']})"
        out.append(label)
        node = (node.get("Plans") or [None])[0]
    return " > ".join(out)


async def main() -> None:
    cluster = PostgresCluster().start()
    try:
        engine = create_engine(cluster.new_database())
        await upgrade_to_head(engine)
        params = {"batches": BATCHES, "per": PER_BATCH}
        start = time.perf_counter()
        async with engine.begin() as conn:
            for statement in FILL:
                await conn.execute(text(statement), params if ":" in statement else {})
        print(
            f"\nfilled {BATCHES * PER_BATCH:,} request rows and {BATCHES * PER_BATCH // 2:,} results "
            f"in {time.perf_counter() - start:.1f} s"
        )
        print(f"{'query':38}{'ms':>9}  plan")
        async with engine.connect() as conn:
            for name, sql in QUERIES.items():
                raw = (await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql))).scalar_one()
                plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
                seq = "Seq Scan" in json.dumps(plan["Plan"]) and "batches" not in name
                print(
                    f"{name:38}{plan['Execution Time']:>9.2f}  {shape(plan['Plan'])}"
                    f"{'   <-- sequential scan' if seq else ''}"
                )
        await engine.dispose()
    finally:
        cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
