"""A streaming multipart/form-data reader: the file part goes straight to the blob store.

Starlette's `request.form()` spools whole files to a temporary file first; this writes each
chunk to its final blob as it arrives, counts bytes against the limit as it goes, and aborts the
blob (leaving nothing behind) on any error or client disconnect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from batchgate.blobs import BlobWriter
from batchgate.domain.errors import InvalidRequest, PayloadTooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    writer: BlobWriter | None = None


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, bytes] = {}
        self.name: str | None = None
        self.filename: str | None = None
        self.value = bytearray()


async def read_multipart(
    request: Request, file_field: str, open_writer: Callable[[], Awaitable[BlobWriter]], max_file_bytes: int
) -> Upload:
    """Parse the body; the part named `file_field` is streamed into a new blob."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequest("the request must be multipart/form-data with a file part", param=file_field)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_file_bytes + MAX_FIELD_BYTES * MAX_PARTS:
        raise PayloadTooLarge(
            f"the upload is larger than the {max_file_bytes}-byte limit", param=file_field, code="file_too_large"
        )

    events: list[tuple[str, bytes]] = []
    header_field = bytearray()
    header_value = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        events.append(("header", bytes(header_field) + b"\0" + bytes(header_value)))
        header_field.clear()
        header_value.clear()

    parser = MultipartParser(
        params[b"boundary"],
        callbacks={
            "on_part_begin": lambda: events.append(("begin", b"")),
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": lambda: events.append(("headers_done", b"")),
            "on_part_data": lambda data, start, end: events.append(("data", bytes(data[start:end]))),
            "on_part_end": lambda: events.append(("end", b"")),
        },
    )

    upload = Upload()
    part: _Part | None = None
    parts = 0
    file_complete = False
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except Exception as exc:  # python-multipart raises its own error types on malformed bodies
                raise InvalidRequest(f"malformed multipart body: {exc}") from exc
            for kind, data in events:
                if kind == "begin":
                    parts += 1
                    if parts > MAX_PARTS:
                        raise InvalidRequest(f"too many form fields (limit {MAX_PARTS})")
                    part = _Part()
                elif kind == "header" and part is not None:
                    name, _, value = data.partition(b"\0")
                    part.headers[name.decode("latin-1").lower()] = value  # raw bytes: names may be UTF-8
                elif kind == "headers_done" and part is not None:
                    _, options = parse_options_header(part.headers.get("content-disposition", b""))
                    part.name = options.get(b"name", b"").decode("utf-8", errors="replace")
                    raw_filename = options.get(b"filename")
                    if part.name == file_field:
                        if upload.writer is not None:
                            raise InvalidRequest(f"more than one '{file_field}' part", param=file_field)
                        upload.filename = raw_filename.decode("utf-8", errors="replace") if raw_filename else None
                        upload.writer = await open_writer()
                elif kind == "data" and part is not None:
                    if part.name == file_field and upload.writer is not None:
                        if upload.writer.size + len(data) > max_file_bytes:
                            raise PayloadTooLarge(
                                f"the upload is larger than the {max_file_bytes}-byte limit",
                                param=file_field,
                                code="file_too_large",
                            )
                        await upload.writer.write(data)
                    else:
                        part.value.extend(data)
                        if len(part.value) > MAX_FIELD_BYTES:
                            raise InvalidRequest(f"form field '{part.name}' is too long", param=part.name)
                elif kind == "end" and part is not None:
                    if part.name == file_field:
                        file_complete = True
                    elif part.name:
                        upload.fields[part.name] = part.value.decode("utf-8", errors="replace")
                    part = None
            events.clear()
        parser.finalize()
        if upload.writer is not None and not file_complete:
            raise InvalidRequest("the multipart body ended in the middle of the file", param=file_field)
    except BaseException:  # a bad body, a limit, or ClientDisconnect: the blob must not survive
        await _abort(upload)
        raise
    return upload


async def _abort(upload: Upload) -> None:
    if upload.writer is not None:
        await upload.writer.abort()
        upload.writer = None
