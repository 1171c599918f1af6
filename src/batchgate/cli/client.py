"""The CLI's client for a running server: submit, status, list, cancel, download."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Column, Table

from batchgate.cli.progress import batch_progress
from batchgate.domain.status import TERMINAL, BatchStatus

console = Console(stderr=True)


class Client:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(60, read=600))

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _die(f"cannot reach {self._http.base_url}: {exc}")
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            _die(f"{response.status_code}: {message}")
        return response.json()

    def save(self, path: str, target: Path) -> int:
        tmp = target.with_name(target.name + ".part")
        with self._http.stream("GET", path) as response, open(tmp, "wb") as fh:
            if response.status_code >= 400:
                _die(f"{response.status_code} downloading {path}")
            for chunk in response.iter_bytes():
                fh.write(chunk)
        tmp.replace(target)
        return target.stat().st_size


def _die(message: str) -> typer.Exit:
    console.print(f"[red]error: {message}")
    raise typer.Exit(1)


def submit(
    base_url: str,
    api_key: str | None,
    input_file: Path,
    endpoint: str,
    window: str,
    wait: bool,
    output_dir: Path | None,
) -> int:
    client = Client(base_url, api_key)
    with open(input_file, "rb") as fh:
        uploaded = client.call("POST", "/files", files={"file": (input_file.name, fh)}, data={"purpose": "batch"})
    batch = client.call(
        "POST", "/batches", json={"input_file_id": uploaded["id"], "endpoint": endpoint, "completion_window": window}
    )
    typer.echo(batch["id"])
    if not wait:
        return 0
    batch = _wait(client, batch["id"])
    _summary(batch)
    if output_dir is not None:
        _download(client, batch, output_dir)
    return 0 if batch["status"] == BatchStatus.COMPLETED else 1


def _wait(client: Client, batch_id: str) -> dict:
    with batch_progress(console) as progress:
        task = progress.add_task(BatchStatus.VALIDATING, total=None, failed=0)
        while True:
            batch = client.call("GET", f"/batches/{batch_id}")
            counts = batch["request_counts"]
            progress.update(
                task,
                description=batch["status"],
                total=counts["total"] or None,
                completed=counts["completed"] + counts["failed"],
                failed=counts["failed"],
            )
            if batch["status"] in TERMINAL:
                return batch
            time.sleep(1.0)


def _summary(batch: dict) -> None:
    counts = batch["request_counts"]
    console.print(
        f"{batch['id']}: {batch['status']} — {counts['completed']}/{counts['total']} succeeded, "
        f"{counts['failed']} failed"
    )
    for error in ((batch.get("errors") or {}).get("data") or [])[:20]:
        console.print(f"[red]line {error.get('line')}: {error.get('code')}: {error.get('message')}")


def show_status(base_url: str, api_key: str | None, batch_id: str) -> None:
    batch = Client(base_url, api_key).call("GET", f"/batches/{batch_id}")
    table = Table(show_header=False)
    for key in (
        "id",
        "status",
        "endpoint",
        "model",
        "input_file_id",
        "output_file_id",
        "error_file_id",
        "created_at",
        "expires_at",
        "completed_at",
    ):
        table.add_row(key, str(batch.get(key)))
    counts, usage = batch["request_counts"], batch.get("usage") or {}
    table.add_row("requests", f"{counts['completed']} completed, {counts['failed']} failed, {counts['total']} total")
    table.add_row("tokens", f"{usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out")
    Console().print(table)
    _summary(batch)


def list_batches(base_url: str, api_key: str | None, limit: int) -> None:
    page = Client(base_url, api_key).call("GET", "/batches", params={"limit": limit})
    table = Table("status", "model", "done", "failed", "total", "created_at")
    table.columns.insert(0, Column("id", no_wrap=True))
    for batch in page["data"]:
        counts = batch["request_counts"]
        table.add_row(
            batch["id"],
            batch["status"],
            str(batch.get("model")),
            str(counts["completed"]),
            str(counts["failed"]),
            str(counts["total"]),
            str(batch["created_at"]),
        )
    Console().print(table)


def cancel(base_url: str, api_key: str | None, batch_id: str) -> None:
    batch = Client(base_url, api_key).call("POST", f"/batches/{batch_id}/cancel")
    typer.echo(f"{batch['id']}: {batch['status']}")


def download(base_url: str, api_key: str | None, batch_id: str, output_dir: Path) -> None:
    client = Client(base_url, api_key)
    _download(client, client.call("GET", f"/batches/{batch_id}"), output_dir)


def _download(client: Client, batch: dict, output_dir: Path) -> None:
    if batch["status"] not in TERMINAL:
        _die(f"{batch['id']} is {batch['status']}; results are ready once it ends")
    output_dir.mkdir(parents=True, exist_ok=True)
    for key, name in (("output_file_id", "output.jsonl"), ("error_file_id", "errors.jsonl")):
        if batch.get(key):
            size = client.save(f"/files/{batch[key]}/content", output_dir / f"{batch['id']}_{name}")
            typer.echo(f"{output_dir / (batch['id'] + '_' + name)} ({size} bytes)")
