"""The pieces the chaos suite relies on, checked in-process: the fault plan, the fake upstream's
repeat counter, the blob store's integrity check, and how storage errors are classified."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any

import httpx
import obstore.exceptions
import pytest
from obstore.store import MemoryStore

from batchgate.api.openai.files import storage_error
from batchgate.blobs import BlobMismatch, LocalBlobStore, VerifyingBlobStore
from batchgate.blobs.s3 import S3Writer
from tests.chaos.helpers import DIRECTIVES, FAULT_RATES, fault_plan
from tests.fake_upstream import FakeUpstream


def test_fault_plan_has_exact_counts_and_is_reproducible() -> None:
    plan = fault_plan(1000, seed=1)
    assert {kind: len(lines) for kind, lines in plan.faults.items()} == {"500": 50, "reset": 20, "hang": 10, "429": 20}
    assert set(FAULT_RATES) == set(DIRECTIVES) == set(plan.faults)
    faulty = [i for lines in plan.faults.values() for i in lines]
    assert len(faulty) == len(set(faulty)), "a line got two faults"
    for kind, lines in plan.faults.items():
        for i in lines:
            assert plan.rows[i]["body"]["messages"][0]["content"].endswith(DIRECTIVES[kind])
    assert fault_plan(1000, seed=1) == plan and fault_plan(1000, seed=2) != plan
    assert len({r["custom_id"] for r in plan.rows}) == 1000


async def test_answers_repeated_counts_work_the_upstream_did_twice() -> None:
    async with FakeUpstream() as fake, httpx.AsyncClient(base_url=fake.url, timeout=10) as client:

        def chat(text: str) -> dict[str, Any]:
            return {"model": "m", "messages": [{"role": "user", "content": text}]}

        assert (await client.post("/chat/completions", json=chat("a @status:500:1"))).status_code == 500
        assert (await client.post("/chat/completions", json=chat("a @status:500:1"))).status_code == 200
        assert fake.stats()["answers_repeated"] == 0  # a retry after a fault is not work done twice
        for _ in range(3):
            assert (await client.post("/chat/completions", json=chat("b"))).status_code == 200
        stats = fake.stats()
        assert stats["answers_repeated"] == 2 and stats["bodies_repeated"] == 2
        fake.reset()
        assert fake.stats()["answers_repeated"] == 0


async def test_verifying_store_accepts_the_recorded_bytes_only(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    content = b"".join(b"line %d\n" % i for i in range(50_000))
    recorded = (len(content), hashlib.sha256(content).hexdigest())

    async def read_back(stored: bytes) -> bytes:
        (tmp_path / "k").write_bytes(stored)
        verified = VerifyingBlobStore(store, {"k": recorded})
        return b"".join([chunk async for chunk in verified.iter_chunks("k", 4096)])

    assert await read_back(content) == content
    for damaged, says in (
        (content[:-7], "truncated"),
        (content + b"x\n", "more than"),
        (content.replace(b"line 7\n", b"LINE 7\n"), "sha256"),
    ):
        with pytest.raises(BlobMismatch, match=says):
            await read_back(damaged)
    (tmp_path / "other").write_bytes(b"unchecked")
    passthrough = VerifyingBlobStore(store, {"k": recorded})
    assert b"".join([c async for c in passthrough.iter_chunks("other")]) == b"unchecked"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 507, "storage_full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 507, "storage_full"),
        (OSError(errno.EROFS, "Read-only file system"), 503, "storage_unavailable"),
        (OSError(errno.EIO, "S3 upload failed: GenericError: connection refused"), 503, "storage_unavailable"),
    ],
)
def test_storage_errors_answer_5xx_naming_the_cause(exc: OSError, status: int, code: str) -> None:
    error = storage_error(exc)
    assert (error.status_code, error.code, error.error_type) == (status, code, "server_error")
    assert exc.strerror in error.message and "not stored" in error.message


class _FailingUpload:
    async def write(self, data: bytes) -> None:
        raise obstore.exceptions.GenericError("connection refused")

    async def close(self) -> None:
        raise obstore.exceptions.GenericError("connection refused")


async def test_s3_upload_failures_surface_as_os_errors() -> None:
    writer = S3Writer(MemoryStore(), "k")  # type: ignore[arg-type]  # any obstore store will do
    writer._file = _FailingUpload()
    with pytest.raises(OSError, match="S3 upload failed: GenericError") as info:
        await writer.write(b"data")
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError, match="S3 upload failed"):
        await writer.commit()
