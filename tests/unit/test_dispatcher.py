"""engine/dispatcher.py in-process: the coordinator and its parts on a migrated SQLite store, a local
blob store and fake upstreams answering from a handler function, with a real result writer.

What each test checks is what is stored (result rows, request states) and what the upstream saw;
every wait is a poll with a deadline, never a sleep standing in for synchronisation.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchgate.blobs import LocalBlobStore
from batchgate.config import DeploymentConfig, EngineConfig, ModelConfig
from batchgate.domain.params import BatchParams, new_batch_row
from batchgate.domain.status import BatchStatus, RequestState
from batchgate.engine.claims import MIN_PREFETCH
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.engine.dispatcher import ActiveBatch, Dispatcher
from batchgate.engine.writer import ResultWriter
from batchgate.store.records import Row
from batchgate.store.store import Store
from batchgate.upstreams.base import UpstreamReply, error_body

DEADLINE_S = 20.0
ENDPOINT = "/v1/chat/completions"
# Short backoffs, so a retried request ends within the test; a slow poll, so a claim round runs
# because something happened (a slot freed, a batch came), not because time passed.
ENGINE = EngineConfig(backoff_base_s=0.01, backoff_max_s=0.02, poll_interval_s=0.2, flush_interval_s=0.01)

Handler = Callable[[dict[str, Any]], UpstreamReply | Awaitable[UpstreamReply]]


@dataclass(eq=False)
class MockUpstream:
    """The upstream interface (upstreams/base.py) answered by a handler function, like httpx's
    MockTransport: the handler gets the request body and returns (or awaits) the reply."""

    handler: Handler
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every call's body, in the order sent
    in_flight: int = 0
    max_in_flight: int = 0
    abandoned: int = 0  # calls cancelled before they answered

    async def send(self, endpoint: str, body: dict[str, Any], timeout_s: float) -> UpstreamReply:
        assert endpoint == ENDPOINT
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self.handler(body)
            return await reply if inspect.isawaitable(reply) else reply
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        pass

    def calls_for(self, custom_id: str) -> int:
        return sum(1 for body in self.bodies if body["metadata"]["custom_id"] == custom_id)


def answer(body: dict[str, Any], status: int = 200, **extra: Any) -> UpstreamReply:
    """A chat completion naming the line it answers (and whatever `extra` adds)."""
    payload = {
        "object": "chat.completion",
        "choices": [{"message": {"role": "assistant", "content": body["metadata"]["custom_id"]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        **extra,
    }
    return UpstreamReply(status, orjson.dumps(payload), request_id="req-" + body["metadata"]["custom_id"])


def failure(status: int, message: str = "no") -> UpstreamReply:
    return UpstreamReply(status, error_body(message, str(status)))


def model(name: str, upstream: MockUpstream, fallbacks: tuple[str, ...] = (), **deployment: Any) -> ModelPool:
    config = DeploymentConfig(provider="openai", base_url="http://upstream.invalid/v1", name=f"{name}-d", **deployment)
    return ModelPool(
        ModelConfig(name=name, fallbacks=list(fallbacks), deployments=[config]), [Deployment(config, upstream)]
    )


@dataclass
class Gateway:
    """A dispatcher running on its own, fed batches the way the lifecycle loop feeds them."""

    store: Store
    blobs: LocalBlobStore
    writer: ResultWriter
    dispatcher: Dispatcher
    active: list[ActiveBatch] = field(default_factory=list)

    async def add_batch(
        self, model: str, lines: int, team: str = "", weight: float = 1.0, activate: bool = True
    ) -> ActiveBatch:
        """A batch in progress with `lines` requests, its input in the blob store; activated unless told."""
        file_id = f"file-{len(self.active)}"
        params = BatchParams(file_id, ENDPOINT, "24h", 86400, None, None)
        row = {**new_batch_row(params, team_id=team or None, now=int(time.time())), "model": model}
        row.update(status=BatchStatus.IN_PROGRESS, total=lines)
        await self.store.insert_batch(row)
        data, requests, offset = bytearray(), [], 0
        for line_no in range(1, lines + 1):
            custom_id = f"{row['id'][-6:]}-{line_no}"
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"custom_id": custom_id},
            }
            line = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"
            requests.append(
                {
                    "batch_id": row["id"],
                    "line_no": line_no,
                    "custom_id": custom_id,
                    "offset": offset,
                    "length": len(line) - 1,
                    "state": RequestState.PENDING,
                    "attempts": 0,
                    "next_attempt_at": 0.0,
                }
            )
            data += line
            offset += len(line)
        writer = await self.blobs.writer(file_id)
        await writer.write(bytes(data))
        await writer.commit()
        await self.store.insert_requests(requests)
        batch = ActiveBatch(row["id"], model, ENDPOINT, file_id, row["expires_at"], team=team, team_weight=weight)
        self.active.append(batch)
        if activate:
            self.activate()
        return batch

    def activate(self) -> None:
        """Hand the dispatcher every batch added so far, as one lifecycle tick does."""
        self.dispatcher.set_active(list(self.active))

    async def results(self, batch: ActiveBatch) -> list[Row]:
        return [row async for row in self.store.iter_results(batch.id)]

    async def states(self, batch: ActiveBatch) -> Counter[str]:
        return Counter(row["state"] for row in await self.store.request_page(batch.id, 0, 10_000))

    async def all_done(self, batch: ActiveBatch, lines: int) -> list[Row]:
        await until(lambda: self._stored(batch, lines), f"{lines} results of {batch.id}")
        return await self.results(batch)

    async def _stored(self, batch: ActiveBatch, lines: int) -> bool:
        return len(await self.results(batch)) >= lines


async def until(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll `check` until it holds; fail after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {DEADLINE_S:g}s for {what}")
        await asyncio.sleep(0.01)  # the poll's interval: the condition decides, not this


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


@pytest.fixture
async def start(store: Store, tmp_path: Path) -> AsyncIterator[Callable[..., Gateway]]:
    """start(*pools) runs a dispatcher and a result writer over those models until the test ends."""
    running: list[tuple[Gateway, asyncio.Task[None]]] = []

    def start_gateway(*pools: ModelPool) -> Gateway:
        writer = ResultWriter(store, ENGINE.flush_interval_s, ENGINE.flush_max_results)
        blobs = LocalBlobStore(tmp_path / "blobs")
        dispatcher = Dispatcher(store, blobs, {p.model.name: p for p in pools}, writer, ENGINE, "test-owner")
        gateway = Gateway(store, blobs, writer, dispatcher)
        writer.start()
        running.append((gateway, asyncio.create_task(dispatcher.run())))
        return gateway

    yield start_gateway
    for gateway, task in running:
        await gateway.dispatcher.stop()
        await asyncio.wait_for(task, DEADLINE_S)
        await gateway.writer.stop()


async def test_claims_take_the_free_slots_and_never_more_are_in_flight(start: Callable[..., Gateway]) -> None:
    gate = asyncio.Event()

    async def held(body: dict[str, Any]) -> UpstreamReply:
        await gate.wait()
        return answer(body)

    upstream = MockUpstream(held)
    gateway = start(model("m", upstream, max_concurrency=4))
    batch = await gateway.add_batch("m", 60)
    await until(lambda: upstream.in_flight == 4, "4 calls in flight")
    # Leased: the 4 on the wire and a prefetch of MIN_PREFETCH waiting for a slot; nothing else.
    assert await gateway.states(batch) == {
        RequestState.RUNNING: 4 + MIN_PREFETCH,
        RequestState.PENDING: 56 - MIN_PREFETCH,
    }
    assert upstream.in_flight == 4 and len(upstream.bodies) == 4
    gate.set()
    results = await gateway.all_done(batch, 60)
    assert upstream.max_in_flight == 4
    assert len(upstream.bodies) == 60  # every line sent once
    assert sorted(r["line_no"] for r in results) == list(range(1, 61))
    assert all(r["ok"] and r["status_code"] == 200 for r in results)
    assert await gateway.states(batch) == {RequestState.DONE: 60}


async def test_two_teams_share_the_slots_by_weight(start: Callable[..., Gateway]) -> None:
    upstream = MockUpstream(answer)
    gateway = start(model("m", upstream, max_concurrency=4))
    heavy = await gateway.add_batch("m", 300, team="heavy", weight=3.0, activate=False)
    light = await gateway.add_batch("m", 300, team="light", weight=1.0, activate=False)
    gateway.activate()  # both in one tick, as when they were created at the same moment
    stored: dict[str, int] = {}

    async def first_200_stored() -> bool:
        rows = [r async for r in gateway.store.iter_results_by_seq(heavy.id)]
        rows += [r async for r in gateway.store.iter_results_by_seq(light.id)]
        if len(rows) < 200:
            return False
        first = sorted(rows, key=lambda r: r["seq"])[:200]
        stored.update(Counter(r["batch_id"] for r in first))
        return True

    await until(first_200_stored, "200 results")
    # While both teams have work, weight 3 gets three slots for every one of weight 1.
    assert 0.65 <= stored[heavy.id] / 200 <= 0.85, stored
    await gateway.all_done(heavy, 300)
    await gateway.all_done(light, 300)


async def test_a_500_is_retried_then_answered(start: Callable[..., Gateway]) -> None:
    failed_once: set[str] = set()

    def flaky(body: dict[str, Any]) -> UpstreamReply:
        custom_id = body["metadata"]["custom_id"]
        if custom_id.endswith("-2") and custom_id not in failed_once:
            failed_once.add(custom_id)
            return failure(500, "try again")
        return answer(body)

    upstream = MockUpstream(flaky)
    gateway = start(model("m", upstream, max_attempts=3))
    batch = await gateway.add_batch("m", 3)
    results = {r["line_no"]: r for r in await gateway.all_done(batch, 3)}
    retried = results[2]
    assert (retried["ok"], retried["status_code"], retried["error_code"]) == (True, 200, None)
    assert orjson.loads(retried["body"])["choices"][0]["message"]["content"] == retried["custom_id"]
    assert upstream.calls_for(retried["custom_id"]) == 2
    assert [upstream.calls_for(results[n]["custom_id"]) for n in (1, 3)] == [1, 1]
    assert await gateway.states(batch) == {RequestState.DONE: 3}


async def test_a_400_is_the_lines_error_without_a_retry(start: Callable[..., Gateway]) -> None:
    def refuses_line_1(body: dict[str, Any]) -> UpstreamReply:
        return failure(400, "bad request") if body["metadata"]["custom_id"].endswith("-1") else answer(body)

    upstream = MockUpstream(refuses_line_1)
    gateway = start(model("m", upstream, max_attempts=5))
    batch = await gateway.add_batch("m", 2)
    results = {r["line_no"]: r for r in await gateway.all_done(batch, 2)}
    refused = results[1]
    assert (refused["ok"], refused["status_code"]) == (False, 400)
    assert orjson.loads(refused["body"])["error"]["message"] == "bad request"  # the upstream's answer, as it came
    assert upstream.calls_for(refused["custom_id"]) == 1
    assert (results[2]["ok"], results[2]["status_code"]) == (True, 200)


async def test_the_fallback_model_answers_once_the_primarys_attempts_are_spent(start: Callable[..., Gateway]) -> None:
    primary = MockUpstream(lambda body: failure(503, "overloaded"))
    backup = MockUpstream(lambda body: answer(body, served_by="backup"))
    gateway = start(model("primary", primary, fallbacks=("backup",), max_attempts=2), model("backup", backup))
    batch = await gateway.add_batch("primary", 3)
    results = await gateway.all_done(batch, 3)
    assert all((r["ok"], r["status_code"]) == (True, 200) for r in results)
    assert all(orjson.loads(r["body"])["served_by"] == "backup" for r in results)
    assert all(primary.calls_for(r["custom_id"]) == 2 for r in results)  # max_attempts on the primary
    assert all(backup.calls_for(r["custom_id"]) == 1 for r in results)


async def test_cancel_batch_abandons_the_calls_in_flight(start: Callable[..., Gateway]) -> None:
    async def never(body: dict[str, Any]) -> UpstreamReply:
        await asyncio.Event().wait()  # a call that would never come back by itself
        raise AssertionError("unreachable")

    upstream = MockUpstream(never)
    gateway = start(model("m", upstream, max_concurrency=2))
    batch = await gateway.add_batch("m", 30)
    await until(lambda: upstream.in_flight == 2, "2 calls in flight")
    assert gateway.dispatcher.cancel_batch(batch.id) == 2
    gateway.dispatcher.set_active([])  # the lifecycle's next tick: the batch is no longer active
    await until(lambda: upstream.abandoned == 2, "both calls abandoned")
    assert upstream.in_flight == 0 and len(upstream.bodies) == 2  # nothing else was sent
    await gateway.writer.flush()
    assert await gateway.results(batch) == []  # an abandoned call stores nothing: its row ends elsewhere
    states = await gateway.states(batch)
    assert RequestState.DONE not in states and sum(states.values()) == 30
