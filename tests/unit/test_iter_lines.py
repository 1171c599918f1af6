"""blobs.iter_lines: streaming a blob's lines with exact byte offsets."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchgate.blobs import LocalBlobStore, iter_lines


async def _put(store: LocalBlobStore, key: str, data: bytes) -> None:
    writer = await store.writer(key)
    # Write in odd pieces: the blob must not depend on how the upload arrived.
    for start in range(0, len(data), 4099):
        await writer.write(data[start : start + 4099])
    await writer.commit()


class _SmallChunks:
    """A LocalBlobStore seen through tiny read chunks, to put chunk boundaries everywhere."""

    def __init__(self, store: LocalBlobStore, chunk_size: int) -> None:
        self._store = store
        self._chunk_size = chunk_size

    def iter_chunks(self, key: str, chunk_size: int = 0) -> AsyncIterator[bytes]:
        return self._store.iter_chunks(key, self._chunk_size)


def _reference_lines(data: bytes, max_line: int) -> list[tuple[int, int, bytes | None]]:
    """What iter_lines must yield: split on LF, newline excluded, no phantom line after a final LF."""
    out = []
    offset = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:
            end = len(data)
        line = data[offset:end]
        out.append((offset, len(line), None if len(line) > max_line else line))
        offset = end + 1
    return out


async def _lines(store: Any, key: str, max_line: int) -> list[tuple[int, int, bytes | None]]:
    return [item async for item in iter_lines(store, key, max_line)]


@pytest.fixture
def blob_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


async def test_iter_lines_offsets_and_lengths_address_each_line(blob_store: LocalBlobStore) -> None:
    data = b'{"a":1}\n{"bb":22}\n\n{"ccc":333}\n'
    await _put(blob_store, "k1", data)
    got = await _lines(blob_store, "k1", 1000)
    assert got == [(0, 7, b'{"a":1}'), (8, 9, b'{"bb":22}'), (18, 0, b""), (19, 11, b'{"ccc":333}')]
    # The offsets and lengths are what the dispatcher reads back by range.
    ranges = await blob_store.read_ranges("k1", [(o, n) for o, n, _ in got])
    assert ranges == [line for _, _, line in got]


async def test_iter_lines_last_line_without_trailing_newline(blob_store: LocalBlobStore) -> None:
    await _put(blob_store, "k", b"first\nsecond")
    assert await _lines(blob_store, "k", 100) == [(0, 5, b"first"), (6, 6, b"second")]


async def test_iter_lines_empty_blob_and_single_newline(blob_store: LocalBlobStore) -> None:
    await _put(blob_store, "empty", b"")
    assert await _lines(blob_store, "empty", 100) == []
    await _put(blob_store, "nl", b"\n")
    assert await _lines(blob_store, "nl", 100) == [(0, 0, b"")]


async def test_iter_lines_crlf_keeps_offsets_exact_and_json_parses(blob_store: LocalBlobStore) -> None:
    rows = [{"custom_id": f"c{i}", "n": i} for i in range(3)]
    data = b"\r\n".join(orjson.dumps(r) for r in rows)  # CRLF and no final newline
    await _put(blob_store, "crlf", data)
    got = await _lines(blob_store, "crlf", 1000)
    assert len(got) == 3
    for (offset, length, line), row in zip(got, rows, strict=True):
        assert line is not None
        assert data[offset : offset + length] == line
        assert line.rstrip(b"\r") == orjson.dumps(row)
        assert orjson.loads(line) == row  # a trailing CR is JSON whitespace


async def test_iter_lines_oversized_lines_are_none_with_exact_offsets(blob_store: LocalBlobStore) -> None:
    big = b"x" * 50
    data = b"ok\n" + big + b"\nfine\n" + big + b"y"  # oversized in the middle and at the end (no LF)
    await _put(blob_store, "big", data)
    for chunk in (1, 3, 7, 16, 49, 50, 51, 64, 1 << 20):
        got = await _lines(_SmallChunks(blob_store, chunk), "big", 10)
        assert got == [(0, 2, b"ok"), (3, 50, None), (54, 4, b"fine"), (59, 51, None)], chunk


async def test_iter_lines_line_of_exactly_max_line_is_kept(blob_store: LocalBlobStore) -> None:
    data = b"a" * 10 + b"\n" + b"b" * 11 + b"\n" + b"c" * 10
    await _put(blob_store, "edge", data)
    for chunk in (1, 2, 5, 10, 11, 12, 100):
        got = await _lines(_SmallChunks(blob_store, chunk), "edge", 10)
        assert got == [(0, 10, b"a" * 10), (11, 11, None), (23, 10, b"c" * 10)], chunk


async def test_iter_lines_matches_a_reference_at_every_chunk_size(blob_store: LocalBlobStore) -> None:
    rng = random.Random(1234)
    for case in range(40):
        pieces = []
        for _ in range(rng.randint(0, 12)):
            length = rng.choice([0, 0, 1, 2, 5, 9, 10, 11, 17, 40])
            pieces.append(bytes(rng.choice(b'ab{}\r" ') for _ in range(length)))
        data = b"\n".join(pieces) + (b"\n" if rng.random() < 0.5 else b"")
        key = f"case{case}"
        await _put(blob_store, key, data)
        expected = _reference_lines(data, 10)
        for chunk in (1, 2, 3, 5, 8, 11, 13, 64):
            assert await _lines(_SmallChunks(blob_store, chunk), key, 10) == expected, (data, chunk)


async def test_iter_lines_across_real_megabyte_chunks(blob_store: LocalBlobStore) -> None:
    # Lines of 1000 bytes over ~3 MB: many lines straddle the store's real 1 MiB read chunks.
    lines = [orjson.dumps({"custom_id": f"r{i}", "pad": "z" * (970 - len(str(i)))}) for i in range(3000)]
    data = b"\n".join(lines) + b"\n"
    await _put(blob_store, "mb", data)
    got = await _lines(blob_store, "mb", 1 << 20)
    assert [line for _, _, line in got] == lines
    offset = 0
    for (o, n, _), line in zip(got, lines, strict=True):
        assert (o, n) == (offset, len(line))
        offset += len(line) + 1
