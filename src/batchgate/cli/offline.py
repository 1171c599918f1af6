"""`batchgate run`: one batch file executed in-process, no server, resumable.

The run keeps its state (a SQLite database and a copy of the input) in a hidden directory beside
the output file. Re-running the same command after Ctrl-C or a crash opens that state, and the
engine picks up every request that has no result yet, exactly as a restarted server would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from pathlib import Path

import orjson
from rich.console import Console

from batchgate.blobs import CHUNK
from batchgate.cli.progress import batch_progress
from batchgate.config import ConfigError, Settings
from batchgate.domain import ids
from batchgate.domain.params import SERVED_ENDPOINTS, BatchParams, new_batch_row
from batchgate.domain.status import TERMINAL, BatchStatus
from batchgate.engine.aio import wait_for_event
from batchgate.gateway import Gateway, open_gateway
from batchgate.store.records import Row

OFFLINE_WINDOW = "366d"  # an offline run has no deadline but the one the user gives by stopping it
STATE_FILE = "run.json"


def state_dir_for(output: Path) -> Path:
    return output.parent / f".{output.name}.batchgate"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _endpoint_of(path: Path) -> str:
    """The endpoint the file's first request names (validation reports a bad one properly)."""
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    url = orjson.loads(line).get("url")
                except (orjson.JSONDecodeError, AttributeError):
                    break
                return url if url in SERVED_ENDPOINTS else "/v1/chat/completions"
    return "/v1/chat/completions"


def run_offline(settings: Settings, input_path: Path, output: Path, errors: Path, model: str | None) -> int:
    if model is not None and settings.model(model) is None:
        raise ConfigError(f"--model {model!r} is not configured (models: {', '.join(m.name for m in settings.models)})")
    state = state_dir_for(output)
    fingerprint = {"input_sha256": _sha256(input_path), "model": model}
    previous = _read_state(state)
    console = Console(stderr=True)
    if previous and {k: previous.get(k) for k in fingerprint} != fingerprint:
        console.print(f"[yellow]{input_path} or --model changed since the last run; starting over")
        shutil.rmtree(state)
        previous = None
    state.mkdir(parents=True, exist_ok=True)
    local = settings.model_copy(deep=True)
    local.storage.database = f"sqlite:///{state / 'state.db'}"
    local.storage.files = str(state / "files")
    local.engine.poll_interval_s = min(local.engine.poll_interval_s, 0.2)
    try:
        return asyncio.run(_run(local, input_path, output, errors, model, state, fingerprint, previous, console))
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped; run the same command again to resume (state in {state})")
        return 130


def _read_state(state: Path) -> dict | None:
    try:
        return json.loads((state / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


async def _run(
    settings: Settings,
    input_path: Path,
    output: Path,
    errors: Path,
    model: str | None,
    state: Path,
    fingerprint: dict,
    previous: dict | None,
    console: Console,
) -> int:
    done = asyncio.Event()
    async with open_gateway(settings, on_batch_done=lambda _id: done.set()) as gateway:
        # The id is recorded before the batch exists, so a crash in between never leaves a second,
        # unexported batch behind: the next run finds the id and creates the batch then.
        batch_id = previous["batch_id"] if previous else ids.batch_id()
        if not previous:
            (state / STATE_FILE).write_text(json.dumps({**fingerprint, "batch_id": batch_id}))
        if await gateway.store.get_batch(batch_id) is None:
            await _start(gateway, input_path, model, batch_id)
        else:
            console.print(f"resuming {batch_id} from {state}")
        batch = await _follow(gateway, batch_id, done, console)
        return await _export(gateway, batch, output, errors, console)


async def _start(gateway: Gateway, input_path: Path, model: str | None, batch_id: str) -> None:
    file_id = ids.file_id()
    writer = await gateway.blobs.writer(file_id)
    with open(input_path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            await writer.write(chunk)
    sha = await writer.commit()
    now = int(time.time())
    await gateway.store.insert_file(
        {
            "id": file_id,
            "team_id": None,
            "filename": input_path.name,
            "purpose": "batch",
            "bytes": writer.size,
            "sha256": sha,
            "created_at": now,
            "expires_at": None,
            "provider_name": None,
        }
    )
    params = BatchParams(file_id, _endpoint_of(input_path), OFFLINE_WINDOW, 366 * 86400, None, None)
    row = new_batch_row(params, team_id=None, now=now, model_override=model)
    row["id"] = batch_id
    await gateway.store.insert_batch(row)
    gateway.notify()


async def _follow(gateway: Gateway, batch_id: str, done: asyncio.Event, console: Console) -> Row:
    with batch_progress(console) as progress:
        task = progress.add_task(BatchStatus.VALIDATING, total=None, failed=0)
        while True:
            batch = await gateway.store.get_batch(batch_id)
            assert batch is not None
            finished = batch["completed"] + batch["failed"]
            progress.update(
                task,
                description=batch["status"],
                total=batch["total"] or None,
                completed=finished,
                failed=batch["failed"],
            )
            if batch["status"] in TERMINAL:
                return batch
            await wait_for_event(done, 0.25)


async def _export(gateway: Gateway, batch: Row, output: Path, errors: Path, console: Console) -> int:
    if batch["status"] == BatchStatus.FAILED:
        report = orjson.loads(batch["errors"] or "{}")
        for error in report.get("data", [])[:20]:
            console.print(f"[red]line {error.get('line')}: {error['code']}: {error['message']}")
        console.print(f"[red]the input file is invalid ({report.get('total', 0)} errors); nothing ran")
        return 1
    for file_id, path in ((batch["output_file_id"], output), (batch["error_file_id"], errors)):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            if file_id:
                async for chunk in gateway.blobs.iter_chunks(file_id):
                    fh.write(chunk)
        tmp.replace(path)
    console.print(f"{batch['status']}: {batch['completed']} succeeded → {output}, {batch['failed']} failed → {errors}")
    return 0
