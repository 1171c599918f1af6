"""S3 (or any S3-compatible store) as the blob store, through obstore.

Settings come from `storage.s3` in the config, and what it leaves unset from the standard AWS
environment variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
AWS_ALLOW_HTTP=true for a plain-HTTP test server). Uploads are
streamed as multipart uploads that become visible only when completed, so an aborted upload
leaves no object behind (S3 drops the incomplete parts).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import obstore
from obstore.store import S3Store

from batchgate.blobs import CHUNK
from batchgate.config import S3Settings

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config


def _storage_error(exc: Exception, doing: str) -> OSError:
    """obstore's own exception types as OSError, which callers (the upload route) treat as storage trouble."""
    if isinstance(exc, OSError):
        return exc
    return OSError(errno.EIO, f"S3 {doing} failed: {type(exc).__name__}: {exc}")


class S3Writer:
    def __init__(self, store: S3Store, key: str) -> None:
        self._file: Any = obstore.open_writer_async(store, key, buffer_size=8 * CHUNK)
        self._sha = hashlib.sha256()
        self.size = 0
        self._newlines = 0
        self._open_line = False

    @property
    def lines(self) -> int:
        return self._newlines + (1 if self._open_line else 0)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._sha.update(data)
        self.size += len(data)
        self._newlines += data.count(b"\n")
        self._open_line = not data.endswith(b"\n")
        try:
            await self._file.write(data)
        except Exception as exc:
            raise _storage_error(exc, "upload") from exc

    async def commit(self) -> str:
        try:
            await self._file.close()  # completes the upload: only now does the object exist
        except Exception as exc:
            raise _storage_error(exc, "upload") from exc
        return self._sha.hexdigest()

    async def abort(self) -> None:
        self._file = None  # never completed: the object is never created


class S3BlobStore:
    def __init__(self, url: str, settings: S3Settings | None = None) -> None:
        self.url = url
        settings = settings or S3Settings()
        # obstore reads the AWS environment itself; the config's values override it.
        client_options = {} if settings.allow_http is None else {"allow_http": settings.allow_http}
        # Plain dicts of the keys obstore documents (its TypedDicts are for type checkers only).
        config = cast("S3Config", settings.overrides()) or None
        self._store = S3Store.from_url(url, config=config, client_options=cast("ClientConfig", client_options) or None)

    async def writer(self, key: str) -> S3Writer:
        return S3Writer(self._store, key)

    async def read_range(self, key: str, offset: int, length: int) -> bytes:
        return (await self.read_ranges(key, [(offset, length)]))[0]

    async def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        if not ranges:
            return []
        parts = await obstore.get_ranges_async(
            self._store, key, starts=[o for o, _ in ranges], lengths=[n for _, n in ranges]
        )
        return [bytes(part) for part in parts]

    async def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        result = await obstore.get_async(self._store, key)
        async for chunk in result.stream(min_chunk_size=chunk_size):
            yield bytes(chunk)

    async def size(self, key: str) -> int:
        return int((await obstore.head_async(self._store, key))["size"])

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self._store, key)

    async def ping(self) -> None:
        """Any answer from the bucket will do; a missing object is an answer."""
        with contextlib.suppress(FileNotFoundError):
            await obstore.head_async(self._store, ".batchgate-ping")
