"""The S3 blob store against moto's S3 server: the same contract as the local directory store."""

from __future__ import annotations

import secrets

import pytest

from batchgate.blobs import iter_lines
from batchgate.blobs.s3 import S3BlobStore
from batchgate.config import Settings
from batchgate.gateway import open_blobs
from tests.s3 import BUCKET, MotoS3Process


@pytest.fixture
def store(s3: MotoS3Process, monkeypatch: pytest.MonkeyPatch) -> S3BlobStore:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return S3BlobStore(f"s3://{BUCKET}/unit-{secrets.token_hex(4)}")


async def test_a_streamed_write_reads_back_whole_and_by_ranges(store: S3BlobStore) -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(200_000))  # ~1.6 MB, several chunks
    writer = await store.writer("file-a")
    for start in range(0, len(data), 300_000):
        await writer.write(data[start : start + 300_000])
    digest = await writer.commit()
    assert writer.size == len(data) and writer.lines == 200_000
    assert len(digest) == 64
    assert b"".join([chunk async for chunk in store.iter_chunks("file-a", 256 * 1024)]) == data
    assert await store.size("file-a") == len(data)
    assert await store.read_ranges("file-a", [(0, 7), (len(data) - 12, 12)]) == [b"line 0\n", b"line 199999\n"]
    assert await store.read_range("file-a", 7, 7) == b"line 1\n"


async def test_lines_stream_from_s3_with_exact_offsets(store: S3BlobStore) -> None:
    writer = await store.writer("file-b")
    await writer.write(b'{"a": 1}\n\n{"b": 22}')
    await writer.commit()
    assert [item async for item in iter_lines(store, "file-b", 1024)] == [
        (0, 8, b'{"a": 1}'),
        (9, 0, b""),
        (10, 9, b'{"b": 22}'),
    ]


async def test_an_aborted_upload_leaves_no_object(store: S3BlobStore, s3: MotoS3Process) -> None:
    writer = await store.writer("file-c")
    await writer.write(b"half")
    await writer.abort()
    assert s3.keys(store.url.split("/", 3)[3]) == []
    with pytest.raises(FileNotFoundError):
        await store.size("file-c")


async def test_delete_is_idempotent_and_ping_answers(store: S3BlobStore) -> None:
    writer = await store.writer("file-d")
    await writer.write(b"x")
    await writer.commit()
    await store.delete("file-d")
    await store.delete("file-d")
    with pytest.raises(FileNotFoundError):
        await store.size("file-d")
    await store.ping()


async def test_settings_in_the_config_override_the_aws_environment(
    s3: MotoS3Process, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment points nowhere useful; `storage.s3` in the config names the real server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing answers
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    config = Settings.model_validate(
        {
            "storage": {
                "files": f"s3://{BUCKET}/cfg-{secrets.token_hex(4)}",
                "s3": {
                    "endpoint": s3.url,
                    "region": "us-east-1",
                    "access_key_id": "test",
                    "secret_access_key": "test",
                    "allow_http": True,
                },
            }
        }
    )
    assert "secret_access_key='test'" not in repr(config.storage.s3)  # never in a log line
    store = open_blobs(config.storage.files, config.storage.s3)
    writer = await store.writer("file-cfg")
    await writer.write(b'{"from": "config"}\n')
    await writer.commit()
    assert await store.read_range("file-cfg", 0, 8) == b'{"from":'
    assert [key for key in s3.keys(prefix=config.storage.files.split("/", 3)[3]) if key.endswith("file-cfg")]
