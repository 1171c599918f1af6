"""End to end: the OpenAI Files API (SPEC §1) against a real batchgate server, through the official SDK."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import (
    API_ENGINE,
    assert_error,
    gateway_config,
    module_server,
    sdk_error,
    unexpected_tracebacks,
)
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    openai_client,
    poll_until,
    running_server,
    upstream_model_config,
)

PURPOSES = ("batch", "assistants", "fine-tune", "vision", "user_data", "evals")
FILE_KEYS = {"id", "object", "bytes", "created_at", "expires_at", "filename", "purpose", "status"}
THIRTY_DAYS = 30 * 86400


# ---------------------------------------------------------------------------- helpers
def config(upstream_url: str, **limits: int) -> dict[str, Any]:
    return gateway_config(upstream_model_config(upstream_url), engine=API_ENGINE, **limits)


def files_dir(server: ServerProcess) -> Path:
    return server.workdir / ".batchgate" / "files"


def dir_entries(server: ServerProcess) -> set[str]:
    return set(os.listdir(files_dir(server)))


def all_paths(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def listed_ids(client: openai.OpenAI, **params: Any) -> list[str]:
    return [f.id for f in client.files.list(**params).data]


server = module_server("server", config)


# ---------------------------------------------------------------------------- upload
def test_upload_returns_file_object(client: openai.OpenAI) -> None:
    content = b'{"hello": "world"}\n'
    before = int(time.time())
    raw = client.files.with_raw_response.create(file=("input.jsonl", content), purpose="batch")
    assert raw.status_code == 200
    body = raw.http_response.json()
    assert set(body) >= FILE_KEYS, body
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(content)
    assert body["filename"] == "input.jsonl"
    assert body["purpose"] == "batch"
    assert body["status"] == "processed"
    assert isinstance(body["created_at"], int) and before - 1 <= body["created_at"] <= int(time.time()) + 1
    # A batch input file is kept 30 days unless told otherwise.
    assert body["expires_at"] == body["created_at"] + THIRTY_DAYS
    # The SDK parses it too.
    parsed = raw.parse()
    assert parsed.id == body["id"] and parsed.bytes == len(content)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_every_documented_purpose_is_accepted(client: openai.OpenAI, purpose: str) -> None:
    f = client.files.create(file=(f"{purpose}.bin", b"some bytes"), purpose=purpose)  # type: ignore[arg-type]
    assert f.purpose == purpose
    assert f.status == "processed"
    assert f.bytes == len(b"some bytes")
    assert client.files.retrieve(f.id).purpose == purpose


@pytest.mark.parametrize("purpose", ["nonsense", "batch_output", "BATCH", "fine_tune"])
def test_unknown_purpose_is_rejected(client: openai.OpenAI, server: ServerProcess, purpose: str) -> None:
    before = dir_entries(server)
    sdk_error(lambda: client.files.create(file=("a.jsonl", b"x"), purpose=purpose), 400, "purpose")  # type: ignore[arg-type]
    assert dir_entries(server) == before


def test_missing_purpose_is_rejected(server: ServerProcess) -> None:
    before = dir_entries(server)
    response = httpx.post(f"{server.base_url}/files", files={"file": ("a.jsonl", b"abc")})
    assert_error(response, 400, "purpose")
    assert dir_entries(server) == before  # the streamed blob was discarded


def test_missing_file_is_rejected(server: ServerProcess) -> None:
    # Still multipart, just without a file part.
    response = httpx.post(f"{server.base_url}/files", files={"purpose": (None, "batch")})
    assert_error(response, 400, "file")


def test_expires_after_sets_expires_at(client: openai.OpenAI) -> None:
    f = client.files.create(
        file=("e.jsonl", b"x"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert f.expires_at == f.created_at + 3600
    assert client.files.retrieve(f.id).expires_at == f.created_at + 3600
    g = client.files.create(
        file=("e.jsonl", b"x"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 2_592_000}
    )
    assert g.expires_at == g.created_at + 2_592_000


@pytest.mark.parametrize("seconds", [0, 3599, 2_592_001])
def test_expires_after_out_of_range_is_rejected(client: openai.OpenAI, seconds: int) -> None:
    err = sdk_error(
        lambda: client.files.create(
            file=("e.jsonl", b"x"), purpose="batch", expires_after={"anchor": "created_at", "seconds": seconds}
        ),
        400,
    )
    assert isinstance(err["param"], str) and err["param"].startswith("expires_after"), err


def test_expires_after_bad_anchor_is_rejected(client: openai.OpenAI) -> None:
    err = sdk_error(
        lambda: client.files.create(
            file=("e.jsonl", b"x"), purpose="batch", expires_after={"anchor": "last_active_at", "seconds": 3600}
        ),  # type: ignore[typeddict-item]
        400,
    )
    assert isinstance(err["param"], str) and err["param"].startswith("expires_after"), err


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_after[anchor]": "created_at"},
        {"expires_after[seconds]": "3600"},
        {"expires_after[anchor]": "created_at", "expires_after[seconds]": "abc"},
        {"expires_after[anchor]": "created_at", "expires_after[seconds]": "-3600"},
    ],
)
def test_incomplete_expires_after_is_rejected(server: ServerProcess, fields: dict[str, str]) -> None:
    before = dir_entries(server)
    parts: dict[str, Any] = {
        "purpose": (None, "batch"),
        **{k: (None, v) for k, v in fields.items()},
        "file": ("e.jsonl", b"x"),
    }
    err = assert_error(httpx.post(f"{server.base_url}/files", files=parts), 400)
    assert isinstance(err["param"], str) and err["param"].startswith("expires_after"), err
    assert dir_entries(server) == before


# ---------------------------------------------------------------------------- retrieve, content, delete
def test_retrieve_and_content_round_trip_binary(client: openai.OpenAI) -> None:
    content = bytes(range(256)) * 40 + b"\xff\xfe\x00\r\n\x80 not utf-8 \xc3\x28"
    f = client.files.create(file=("blob.bin", content), purpose="user_data")
    got = client.files.retrieve(f.id)
    assert got.model_dump() == f.model_dump()
    assert client.files.content(f.id).content == content


def test_content_of_a_jsonl_batch_file_is_identical(client: openai.OpenAI) -> None:
    content = "".join(f'{{"custom_id":"r{i}","text":"héllo ✓ {i}"}}\n' for i in range(500)).encode()
    f = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert f.bytes == len(content)
    assert client.files.content(f.id).content == content


def test_multi_megabyte_content_round_trips(client: openai.OpenAI) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)  # several of the server's 1 MiB chunks, and a ragged end
    f = client.files.create(file=("random.bin", content), purpose="user_data")
    assert f.bytes == len(content)
    assert client.files.content(f.id).content == content


def test_file_part_before_purpose_is_fine(server: ServerProcess, client: openai.OpenAI) -> None:
    # `curl -F file=@x -F purpose=batch` sends the file first.
    body = (
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="first.jsonl"\r\n'
        b'Content-Type: application/jsonl\r\n\r\n{"a": 1}\n\r\n'
        b'--b0\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b0--\r\n'
    )
    response = httpx.post(
        f"{server.base_url}/files", content=body, headers={"content-type": "multipart/form-data; boundary=b0"}
    )
    assert response.status_code == 200, response.text
    f = response.json()
    assert (f["filename"], f["purpose"], f["bytes"]) == ("first.jsonl", "batch", len(b'{"a": 1}\n'))
    assert client.files.content(f["id"]).content == b'{"a": 1}\n'


def test_two_file_parts_are_rejected(server: ServerProcess) -> None:
    before = dir_entries(server)
    response = httpx.post(
        f"{server.base_url}/files",
        files=[("file", ("a.jsonl", b"a")), ("file", ("b.jsonl", b"b")), ("purpose", (None, "batch"))],
    )
    assert_error(response, 400, "file")
    assert dir_entries(server) == before


def test_delete_then_everything_is_404(client: openai.OpenAI, server: ServerProcess) -> None:
    f = client.files.create(file=("gone.jsonl", b"bye"), purpose="batch")
    assert f.id in dir_entries(server)
    deleted = client.files.delete(f.id)
    assert deleted.model_dump() == {"id": f.id, "object": "file", "deleted": True}
    sdk_error(lambda: client.files.retrieve(f.id), 404)
    sdk_error(lambda: client.files.content(f.id), 404)
    sdk_error(lambda: client.files.delete(f.id), 404)
    assert f.id not in listed_ids(client)
    assert f.id not in dir_entries(server)


@pytest.mark.parametrize("file_id", ["file-doesnotexist", "nope", "file-01m84qjfhycr9n7h4sb35z2q0f"])
def test_unknown_file_is_404(client: openai.OpenAI, file_id: str) -> None:
    sdk_error(lambda: client.files.retrieve(file_id), 404)
    sdk_error(lambda: client.files.content(file_id), 404)
    sdk_error(lambda: client.files.delete(file_id), 404)


# ---------------------------------------------------------------------------- list
@pytest.fixture(scope="module")
def listing(
    fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[openai.OpenAI, list[str], dict[str, str]]]:
    """A fresh server holding exactly 7 files (4 batch, 3 user_data), ids in creation order."""
    with (
        running_server(config(fake_upstream.url), tmp_path_factory.mktemp("files-listing")) as srv,
        openai_client(srv) as c,
    ):
        ids: list[str] = []
        purposes: dict[str, str] = {}
        for i in range(7):
            purpose = "batch" if i % 2 == 0 else "user_data"
            f = c.files.create(file=(f"f{i}.jsonl", f"file {i}\n".encode()), purpose=purpose)
            ids.append(f.id)
            purposes[f.id] = purpose
        yield c, ids, purposes


def test_list_default_is_newest_first(listing: tuple[openai.OpenAI, list[str], dict[str, str]]) -> None:
    client, ids, _ = listing
    assert listed_ids(client) == list(reversed(ids))
    raw = client.files.with_raw_response.list().http_response.json()
    assert raw["object"] == "list"
    assert raw["has_more"] is False
    assert [f["id"] for f in raw["data"]] == list(reversed(ids))
    assert raw.get("first_id", ids[-1]) == ids[-1]
    assert raw.get("last_id", ids[0]) == ids[0]


def test_list_order_asc_and_desc(listing: tuple[openai.OpenAI, list[str], dict[str, str]]) -> None:
    client, ids, _ = listing
    assert listed_ids(client, order="asc") == ids
    assert listed_ids(client, order="desc") == list(reversed(ids))


def test_list_purpose_filter(listing: tuple[openai.OpenAI, list[str], dict[str, str]]) -> None:
    client, ids, purposes = listing
    for purpose in ("batch", "user_data"):
        expected = [i for i in reversed(ids) if purposes[i] == purpose]
        page = client.files.list(purpose=purpose)
        assert [f.id for f in page.data] == expected
        assert all(f.purpose == purpose for f in page.data)
    assert listed_ids(client, purpose="vision") == []


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_list_pagination_walks_every_file_once(
    listing: tuple[openai.OpenAI, list[str], dict[str, str]], order: str
) -> None:
    client, ids, _ = listing
    expected = ids if order == "asc" else list(reversed(ids))
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "order": order}
        if after is not None:
            params["after"] = after
        raw = client.files.with_raw_response.list(**params).http_response.json()
        pages += 1
        page_ids = [f["id"] for f in raw["data"]]
        assert len(page_ids) <= 3
        seen += page_ids
        assert raw["has_more"] is (len(seen) < len(ids)), raw
        if not raw["has_more"]:
            break
        assert pages < 10, "pagination does not end"
        after = page_ids[-1]
    assert seen == expected
    assert pages == 3  # 3 + 3 + 1
    # The SDK's own auto-pagination gives the same walk.
    assert [f.id for f in client.files.list(limit=3, order=order)] == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -1, 10_001, "abc"])
def test_list_invalid_limit_is_rejected(listing: tuple[openai.OpenAI, list[str], dict[str, str]], limit: Any) -> None:
    client, _, _ = listing
    sdk_error(lambda: client.files.list(limit=limit), 400, "limit")


def test_list_limit_bounds_are_accepted(listing: tuple[openai.OpenAI, list[str], dict[str, str]]) -> None:
    client, ids, _ = listing
    page = client.files.list(limit=1)
    assert [f.id for f in page.data] == [ids[-1]]
    assert page.has_more is True
    assert listed_ids(client, limit=10_000) == list(reversed(ids))


def test_list_limit_equal_to_the_count_has_no_more(listing: tuple[openai.OpenAI, list[str], dict[str, str]]) -> None:
    client, ids, _ = listing
    page = client.files.list(limit=len(ids))
    assert [f.id for f in page.data] == list(reversed(ids))
    assert page.has_more is False
    rest = client.files.list(limit=len(ids), after=ids[0])
    assert rest.data == [] and rest.has_more is False


def test_list_invalid_purpose_filter_is_rejected(listing: tuple[openai.OpenAI, list[str], dict[str, str]]) -> None:
    client, _, _ = listing
    sdk_error(lambda: client.files.list(purpose="nonsense"), 400, "purpose")


def test_list_invalid_order_is_rejected(listing: tuple[openai.OpenAI, list[str], dict[str, str]]) -> None:
    client, _, _ = listing
    sdk_error(lambda: client.files.list(order="sideways"), 400, "order")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- limits and hostile input
@pytest.mark.parametrize("size", [5000, 3_000_000])
def test_oversized_upload_is_413_and_leaves_nothing(
    make_server: Callable[..., ServerProcess], upstream: FakeUpstreamProcess, size: int
) -> None:
    srv = make_server(config(upstream.url, max_upload_bytes=1000))
    with openai_client(srv) as c:
        before = dir_entries(srv)
        sdk_error(lambda: c.files.create(file=("big.jsonl", b"x" * size), purpose="batch"), 413, "file")
        assert dir_entries(srv) == before == set()
        assert c.files.list().data == []
        # A file at the limit is fine.
        ok = c.files.create(file=("small.jsonl", b"y" * 1000), purpose="batch")
        assert ok.bytes == 1000
        assert dir_entries(srv) == {ok.id}


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("../../etc/passwd", "passwd"),
        ("a\\b.jsonl", "b.jsonl"),
        ("/abs/path/x.jsonl", "x.jsonl"),
        ("..\\..\\evil.jsonl", "evil.jsonl"),
    ],
)
def test_filename_is_a_label_not_a_path(client: openai.OpenAI, server: ServerProcess, name: str, label: str) -> None:
    root = server.workdir.parent  # everything the server could plausibly escape to
    before = all_paths(root)
    f = client.files.create(file=(name, b"path trick"), purpose="user_data")
    assert f.filename == label
    assert client.files.retrieve(f.id).filename == label
    new = all_paths(root) - before
    assert new, "the upload wrote nothing"
    inside = files_dir(server).resolve()
    for path in new:
        resolved = path.resolve()
        # Only blobs inside the files directory, or the server's own database/log churn.
        assert (
            resolved.parent == inside
            or resolved.parent == (server.workdir / ".batchgate").resolve()
            or resolved == server.log_path.resolve()
        ), path
        assert path.name not in ("passwd", "evil.jsonl", "b.jsonl", "x.jsonl")
    assert f.id in dir_entries(server)
    assert client.files.content(f.id).content == b"path trick"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=xyz", b"this is not a multipart body at all"),
        ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--x--\r\n'),
        ("text/plain", b"purpose=batch"),
        ("application/json", b'{"purpose": "batch", "file": "abc"}'),
        ("application/x-www-form-urlencoded", b"purpose=batch&file=abc"),
        (None, b""),
    ],
)
def test_malformed_upload_body_is_400(server: ServerProcess, content_type: str | None, body: bytes) -> None:
    before = dir_entries(server)
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{server.base_url}/files", content=body, headers=headers)
    assert_error(response, 400)
    assert dir_entries(server) == before


def test_multipart_body_ending_mid_file_is_400_and_leaves_nothing(server: ServerProcess) -> None:
    before = dir_entries(server)
    body = (
        b'--abc\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        b'{"truncated": tr'
    )
    response = httpx.post(
        f"{server.base_url}/files", content=body, headers={"content-type": "multipart/form-data; boundary=abc"}
    )
    assert_error(response, 400)
    assert dir_entries(server) == before


def test_client_disconnect_mid_upload_leaves_no_file(server: ServerProcess, client: openai.OpenAI) -> None:
    before_entries = dir_entries(server)
    before_ids = listed_ids(client)
    boundary = "bgdisconnectboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    declared = len(head) + 10_000_000
    request_head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request_head + head + b'{"x": 1}\n' * 20_000)
        # The upload really is being streamed to a (temporary) blob before we hang up.
        poll_until(
            lambda: dir_entries(server) - before_entries,
            timeout=10,
            message="the server never started writing the upload",
        )
    # Hung up mid-body: the partial blob must go away and no file may be listed.
    poll_until(
        lambda: dir_entries(server) == before_entries,
        timeout=10,
        message=lambda: f"leftovers: {dir_entries(server) - before_entries}",
    )
    assert listed_ids(client) == before_ids
    # Still healthy, and still taking uploads.
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    f = client.files.create(file=("after.jsonl", b"after\n"), purpose="batch")
    assert client.files.content(f.id).content == b"after\n"
    assert dir_entries(server) == before_entries | {f.id}


def test_no_unhandled_errors_in_server_log(server: ServerProcess) -> None:
    assert unexpected_tracebacks(server.log_text()) == []
