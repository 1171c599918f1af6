"""Two engines on one PostgreSQL racing to finalise the same batch: both write their result files,
exactly one records them and the final status, the other throws its copies away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from batchgate.blobs import LocalBlobStore, LocalWriter
from batchgate.config import Settings
from batchgate.engine.core import Engine
from batchgate.store.records import FinishedRequest
from batchgate.store.store import Store


class RacingBlobs(LocalBlobStore):
    """Holds every commit of a result file until both engines have one ready: a forced photo finish."""

    def __init__(self, root: Path, barrier: asyncio.Barrier) -> None:
        super().__init__(root)
        self._barrier = barrier

    async def writer(self, key: str) -> LocalWriter:
        writer = await super().writer(key)
        commit = writer.commit

        async def commit_after_both() -> str:
            await asyncio.wait_for(self._barrier.wait(), 10)
            return await commit()

        writer.commit = commit_after_both  # type: ignore[method-assign]
        return writer


async def seed_finalizing_batch(store: Store, lines: int) -> str:
    now = int(time.time())
    batch_id = "batch_race"
    await store.insert_batch(
        {
            "id": batch_id,
            "endpoint": "/v1/chat/completions",
            "model": "m",
            "input_file_id": "file-gone",
            "completion_window": "24h",
            "status": "finalizing",
            "created_at": now,
            "in_progress_at": now,
            "finalizing_at": now,
            "expires_at": now + 3600,
            "total": lines,
        }
    )
    await store.insert_requests(
        [
            {
                "batch_id": batch_id,
                "line_no": i,
                "custom_id": f"c{i}",
                "offset": 0,
                "length": 1,
                "state": "running",
                "attempts": 1,
                "next_attempt_at": 0.0,
            }
            for i in range(1, lines + 1)
        ]
    )
    await store.store_results(
        [
            FinishedRequest(batch_id, i, f"c{i}", True, 200, f"req_{i}", '{"ok":true}', None, None, time.time())
            for i in range(1, lines + 1)
        ]
    )
    return batch_id


async def test_two_engines_racing_a_finalisation_record_it_once(pg_store: Store, tmp_path: Path) -> None:
    batch_id = await seed_finalizing_batch(pg_store, lines=50)
    barrier = asyncio.Barrier(2)
    blobs = RacingBlobs(tmp_path / "files", barrier)
    settings = Settings(
        models=[{"name": "m", "deployments": [{"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}]}]
    )
    engines = [Engine(settings, pg_store, blobs, single_node=False) for _ in range(2)]
    await asyncio.gather(*(engine.lifecycle.tick() for engine in engines))

    batch = await pg_store.get_batch(batch_id)
    assert batch is not None and batch["status"] == "completed"
    assert batch["completed"] == 50 and batch["failed"] == 0
    assert barrier.n_waiting == 0  # both reached the commit: the race really happened
    # One output file recorded, and the loser's copy deleted: the blob store holds exactly that file.
    assert sorted(blobs.committed_keys()) == [batch["output_file_id"]]
    output = await pg_store.get_file(batch["output_file_id"], int(time.time()))
    assert output is not None and output["purpose"] == "batch_output"
    lines = [line async for chunk in blobs.iter_chunks(output["id"]) for line in chunk.splitlines()]
    assert len(lines) == 50
