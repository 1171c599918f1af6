"""The coordinator: claims exactly as many rows as there are free slots, fairly, and runs them.

One per process. It knows the free slots of every deployment and leases rows on demand (the
Oban / Solid Queue / pg-boss pattern): free slots plus a small prefetch, never a chunk that waits
for its slowest member.
Batches of one model share its slots round robin, visited in earliest-deadline-first order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from batchgate.blobs import BlobStore
from batchgate.config import EngineConfig
from batchgate.domain.params import SERVED_ENDPOINTS
from batchgate.domain.pricing import priced_usd
from batchgate.engine import activity
from batchgate.engine.aio import wait_for_event
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.engine.fairness import FairShare
from batchgate.engine.guardrails import Blocked, Guardrails
from batchgate.engine.limits import estimate_tokens
from batchgate.engine.retry import backoff_s, is_retryable
from batchgate.engine.usage import extract_usage
from batchgate.engine.writer import ResultWriter
from batchgate.observability import metrics, tracing
from batchgate.store.records import ClaimedRequest, FinishedRequest
from batchgate.store.store import Store
from batchgate.upstreams.base import UpstreamReply

log = logging.getLogger(__name__)

# Rows claimed ahead of free slots, as a fraction of capacity: a finished request's slot is
# refilled from memory at once, and the database is asked for rows in chunks, not one by one.
# Half the capacity covers a claim round trip that waits behind a group commit: at a quarter the
# buffer ran dry and a 64-slot deployment averaged 0.90 of its limit; at a half, 0.98.
PREFETCH_DIVISOR = 2
# ...but never fewer than this: each claim is a statement with a fixed cost, and a buffer refilled
# two rows at a time makes small deployments pay it for every other request.
MIN_PREFETCH = 16
READ_RETRY_S = 5.0  # request bodies that could not be read are claimed again after this long
MAX_REQUEST_ID_CHARS = 256  # results.upstream_request_id
POLL_SLOT_S = 0.5  # a request waiting to retry looks again at least this often


@dataclass(frozen=True, slots=True)
class ActiveBatch:
    id: str
    model: str
    endpoint: str
    input_file_id: str | None
    expires_at: int
    pinned_deployment: str | None = None
    team: str = ""  # "" for objects the admin created
    team_weight: float = 1.0
    key_id: str | None = None  # the API key that created it (guardrails may be per key)


@dataclass(slots=True)
class _Ready:
    """A claimed row with its request parsed, waiting for a free slot."""

    batch: ActiveBatch
    request: ClaimedRequest
    body: dict[str, Any] | None  # None: the stored line could not be read back
    endpoint: str
    tokens: int  # estimated, for TPM budgets


def _parse(batch: ActiveBatch, request: ClaimedRequest, line: bytes) -> _Ready:
    try:
        parsed = orjson.loads(line)
        body, endpoint = parsed["body"], parsed.get("url")
        if not isinstance(body, dict):
            raise TypeError("body")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _Ready(batch, request, None, batch.endpoint, 0)
    if endpoint not in SERVED_ENDPOINTS:  # only config decides where a request may go
        endpoint = batch.endpoint
    return _Ready(batch, request, body, endpoint, estimate_tokens(line, body))


class Dispatcher:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        pools: dict[str, ModelPool],
        writer: ResultWriter,
        engine_config: EngineConfig,
        owner: str,
        guardrails: Guardrails | None = None,
    ) -> None:
        self._guardrails = guardrails or Guardrails([])
        self._store = store
        self._blobs = blobs
        self._pools = pools
        self._writer = writer
        self._config = engine_config
        self._owner = owner
        self._wake = asyncio.Event()
        self._active: list[ActiveBatch] = []
        self._tasks: dict[str, set[asyncio.Task[None]]] = defaultdict(set)
        self._cursor: dict[str, int] = defaultdict(int)
        self._fair: dict[str, FairShare] = defaultdict(FairShare)
        self._slot_events: dict[str, asyncio.Event] = {}  # per model: set when a slot frees
        self._retry_waiters: dict[str, int] = defaultdict(int)
        self._timer: asyncio.TimerHandle | None = None
        self._ready: dict[str, deque[_Ready]] = defaultdict(deque)
        self._exhausted: dict[str, bool] = {}  # per model: the last claim found fewer rows than it asked
        self._pool_of = {d.name: pool for pool in pools.values() for d in pool.deployments}
        self._stopping = False
        # Called when a batch joins the active set: this process's demand may have grown (scale-out:
        # the capacity coordinator renews at once instead of at its next interval).
        self.on_new_work: Callable[[], None] = lambda: None

    # ------------------------------------------------------------ control from the lifecycle loop
    def set_active(self, batches: list[ActiveBatch]) -> None:
        """The batches allowed to dispatch, in earliest-deadline-first order."""
        known = {b.id for b in self._active}
        self._active = batches
        live = {b.id for b in batches}
        if not live <= known:
            for batch in batches:  # its model has rows again, whatever its last claim found
                if batch.id not in known:
                    self._exhausted[batch.model] = False
            self.on_new_work()
        for batch_id in [b for b in self._tasks if b not in live]:
            self.cancel_batch(batch_id)
        for ready in self._ready.values():
            if any(item.batch.id not in live for item in ready):
                kept = [item for item in ready if item.batch.id in live]
                ready.clear()
                ready.extend(kept)
        self.wake()

    def cancel_batch(self, batch_id: str) -> int:
        """Stop this process's in-flight and prefetched requests of a batch; their rows get a result elsewhere."""
        for ready in self._ready.values():
            kept = [item for item in ready if item.batch.id != batch_id]
            ready.clear()
            ready.extend(kept)
        tasks = self._tasks.pop(batch_id, set())
        for task in tasks:
            task.cancel()
        return len(tasks)

    def wake(self) -> None:
        self._wake.set()

    def demand(self, deployment: Deployment) -> int:
        """Slots this process could use on a deployment now (scale-out: its claim on the global limit).

        All of them while its model has work here; once the queue ran dry, only what is in flight or
        waiting to retry, so the other workers get the rest."""
        pool = self._pool_of[deployment.name]
        model = pool.model.name
        limit = deployment.config.max_concurrency
        has_work = any(batch.model == model for batch in self._active) and not self._exhausted.get(model, False)
        if self._ready[model] or has_work:
            return limit
        return min(limit, deployment.in_flight + self._retry_waiters[model])

    # ------------------------------------------------------------ the loop
    async def run(self) -> None:
        while not self._stopping:
            await wait_for_event(self._wake, self._config.poll_interval_s)
            if self._stopping:
                break
            try:
                await self._claim_round()
            except Exception as exc:
                self._store.outage.report(exc, "a claim round", log)
                await asyncio.sleep(self._config.poll_interval_s)

    async def stop(self) -> None:
        """Stop claiming and abandon in-flight calls; their leases are released by the caller."""
        self._stopping = True
        self._wake.set()
        self._ready.clear()
        tasks = [t for group in self._tasks.values() for t in group]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim_round(self) -> None:
        by_model: dict[str, list[ActiveBatch]] = defaultdict(list)
        for batch in self._active:
            by_model[batch.model].append(batch)
        for model, batches in by_model.items():
            pool = self._pools.get(model)
            if pool is None:
                continue
            ready = self._ready[model]
            self._start_ready(pool, ready)
            # Sized from the slots this process holds (all of them on one node; its share when scaled out).
            capacity = sum(d.limits.capacity for d in pool.deployments)
            prefetch = max(MIN_PREFETCH, capacity // PREFETCH_DIVISOR) if capacity else 1
            # Refill only when the buffer ran low, so one claim query serves several requests.
            if len(ready) > prefetch // 2 and pool.free_slots() == 0:
                continue
            want = pool.free_slots() + prefetch - len(ready)
            if want <= 0:
                continue
            claims = await self._claim_fairly(model, batches, want)
            self._exhausted[model] = sum(len(claimed) for _, claimed in claims) < want and not ready
            for batch, claimed in claims:
                try:
                    bodies = await self._read_bodies(batch, claimed)
                except FileNotFoundError:
                    # The input is gone from the blob store for good: these lines can never run.
                    log.error(
                        "the input of %s is missing from the blob store; %d requests end unanswered",
                        batch.id,
                        len(claimed),
                        extra={"batch_id": batch.id},
                    )
                    for request in claimed:
                        self._finish(
                            batch,
                            request,
                            UpstreamReply(
                                None,
                                error_code="input_file_missing",
                                error_message="the batch's input file is no longer in the blob store",
                            ),
                        )
                    continue
                except Exception:
                    # Hand the rows back, a little later: a lease we keep renewing would strand them,
                    # and an immediate retry would spin on a store that keeps failing.
                    log.exception(
                        "reading %d request bodies of %s failed; re-queued in %gs",
                        len(claimed),
                        batch.id,
                        READ_RETRY_S,
                        extra={"batch_id": batch.id},
                    )
                    await self._store.release_rows(
                        batch.id, [c.line_no for c in claimed], retry_at=time.time() + READ_RETRY_S
                    )
                    continue
                for request, line in bodies:
                    item = self._guarded(_parse(batch, request, line))
                    if item is not None:
                        ready.append(item)
            self._start_ready(pool, ready)

    async def _claim_fairly(
        self, model: str, batches: list[ActiveBatch], free: int
    ) -> list[tuple[ActiveBatch, list[ClaimedRequest]]]:
        """Split `free` slots between teams by weight, and within a team round robin over its batches
        (earliest deadline first); slots a batch cannot use go back to the others."""
        now = time.time()
        lease_until = now + self._config.lease_s
        fair = self._fair[model]
        out: list[tuple[ActiveBatch, list[ClaimedRequest]]] = []
        hungry = batches
        # Ends: every pass gives some batch want > 0, which either claims rows (free shrinks) or
        # comes up short and leaves `hungry`.
        while free > 0 and hungry:
            by_team: dict[str, list[ActiveBatch]] = defaultdict(list)
            for batch in hungry:
                by_team[batch.team].append(batch)
            weights = {team: group[0].team_weight for team, group in by_team.items()}
            still_hungry: list[ActiveBatch] = []
            for team, units in fair.allocate(weights, free).items():
                group = by_team[team]
                start = self._cursor[team] % len(group)
                self._cursor[team] += 1
                # The team's whole share goes to one batch per round (the cursor takes the next one
                # next round): one claim statement per team, not one per batch, so a round stays
                # short however many batches run. What a batch cannot use passes to the next.
                for batch in group[start:] + group[:start]:
                    if units == 0:
                        still_hungry.append(batch)
                        continue
                    claimed = await self._store.claim(batch.id, self._owner, units, now, lease_until)
                    if claimed:
                        out.append((batch, claimed))
                        free -= len(claimed)
                    if len(claimed) == units:
                        still_hungry.append(batch)
                    units -= len(claimed)
                if units:
                    fair.refund(team, units, weights[team])
            hungry = still_hungry
        return out

    async def _read_bodies(
        self, batch: ActiveBatch, claimed: list[ClaimedRequest]
    ) -> list[tuple[ClaimedRequest, bytes]]:
        """Each request's input line, read by byte range: one read per blob (input file or added segment)."""
        by_blob: dict[str, list[ClaimedRequest]] = defaultdict(list)
        for request in claimed:
            by_blob[request.blob_key or batch.input_file_id or ""].append(request)
        out: list[tuple[ClaimedRequest, bytes]] = []
        for blob, group in by_blob.items():
            lines = await self._blobs.read_ranges(blob, [(c.offset, c.length) for c in group])
            out.extend(zip(group, lines, strict=True))
        return out

    def _guarded(self, item: _Ready) -> _Ready | None:
        """Apply the guardrails before a request takes a slot; a blocked one ends here, never sent."""
        if not self._guardrails or item.body is None:
            return item
        try:
            guarded = self._guardrails.check_input(item.batch.model, item.batch.key_id, item.endpoint, item.body)
        except Blocked as blocked:
            self._finish(
                item.batch,
                item.request,
                UpstreamReply(None, error_code="guardrail_blocked", error_message=str(blocked)),
            )
            return None
        if guarded is not item.body:  # changed (clamped, redacted): budget TPM for what is really sent
            item.body, item.tokens = guarded, estimate_tokens(orjson.dumps(guarded), guarded)
        return item

    def _start_ready(self, pool: ModelPool, ready: deque[_Ready]) -> None:
        """Start prefetched requests on free slots: no database round trip between two requests.

        Requests waiting to retry go first: while any waits for this model, new ones stay queued.
        """
        if self._retry_waiters[pool.model.name]:
            return
        now = time.monotonic()
        waiting: list[_Ready] = []  # pinned to a deployment that is busy; others may pass them
        while ready:
            item = ready.popleft()
            deployment = pool.pick(item.batch.pinned_deployment)
            if deployment is None:
                waiting.append(item)
                if (pause := pool.pause_ends_in(now)) is not None:
                    self._wake_later(pause)  # resume the moment a Retry-After pause ends
                if item.batch.pinned_deployment is None or pool.free_slots() == 0:
                    break
                continue
            delay = deployment.limits.wait_for(item.tokens, now)
            if delay > 0:  # an RPM/TPM budget or a Retry-After pause: look again when it has passed
                waiting.append(item)
                self._wake_later(delay)
                break
            self._acquire(deployment, item.tokens, now)
            task = asyncio.create_task(self._execute(item, deployment))
            self._tasks[item.batch.id].add(task)
            task.add_done_callback(partial(self._done, item.batch))
        ready.extendleft(reversed(waiting))

    def _wake_later(self, delay: float) -> None:
        if self._timer is None or self._timer.when() > asyncio.get_running_loop().time() + delay:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake.set()

    def _acquire(self, deployment: Deployment, tokens: int, now: float) -> None:
        deployment.in_flight += 1
        deployment.limits.start(tokens, now)
        deployment.series.in_flight.inc()

    def _release(self, pool: ModelPool, deployment: Deployment, reply: UpstreamReply | None) -> None:
        """A call ended: free its slot, feed the deployment's limits, and hand the slot on."""
        deployment.in_flight -= 1
        deployment.series.in_flight.dec()
        limits, now = deployment.limits, time.monotonic()
        if reply is None or reply.error_code == "response_too_large":  # abandoned, or an answer too big to
            limits.on_neutral()  # keep: says nothing about the upstream's health
        elif reply.status_code == 429:
            limits.on_throttled(reply.retry_after_s, now)
        elif reply.answered and 200 <= (reply.status_code or 0) < 300:
            limits.on_success()
        elif not reply.answered or (reply.status_code or 0) >= 500:
            limits.on_failure(now)
            if reply.retry_after_s:
                limits.paused_until = max(limits.paused_until, now + reply.retry_after_s)
        else:
            limits.on_neutral()
        deployment.series.circuit_open.set(1 if limits.circuit.state != "closed" else 0)
        event = self._slot_events.pop(pool.model.name, None)
        if event is not None:
            event.set()  # wakes every request waiting to retry on this model
        if not self._stopping:
            self._start_ready(pool, self._ready[pool.model.name])
        self._wake.set()

    async def _wait_for_slot(self, pool: ModelPool, pinned: str | None, tokens: int) -> Deployment:
        name = pool.model.name
        self._retry_waiters[name] += 1
        try:
            while True:
                now = time.monotonic()
                deployment = pool.pick(pinned)
                if deployment is not None:
                    delay = deployment.limits.wait_for(tokens, now)
                else:
                    delay = min(POLL_SLOT_S, pool.pause_ends_in(now) or POLL_SLOT_S)
                if deployment is not None and delay == 0:
                    self._acquire(deployment, tokens, now)
                    return deployment
                event = self._slot_events.setdefault(name, asyncio.Event())
                await wait_for_event(event, min(delay, POLL_SLOT_S))
        finally:
            self._retry_waiters[name] -= 1

    def _done(self, batch: ActiveBatch, task: asyncio.Task[None]) -> None:
        group = self._tasks.get(batch.id)
        if group is not None:
            group.discard(task)
            if not group:
                del self._tasks[batch.id]
        self._wake.set()

    async def _execute(self, item: _Ready, deployment: Deployment | None) -> None:
        try:
            await self._attempts(item, deployment)
        except Exception as exc:  # a bug must end the request visibly, never strand its row
            log.exception(
                "request %s/%s failed inside the gateway",
                item.batch.id,
                item.request.custom_id,
                extra={"batch_id": item.batch.id, "custom_id": item.request.custom_id},
            )
            self._finish(
                item.batch,
                item.request,
                UpstreamReply(
                    None, error_code="internal_error", error_message=f"gateway error: {type(exc).__name__}: {exc}"
                ),
            )

    async def _attempts(self, item: _Ready, deployment: Deployment | None) -> None:
        """One request to its end: retries with backoff on its model (any of its deployments),
        then on each fallback model in turn; the last answer is the result."""
        batch, reply = item.batch, None
        if item.body is None:
            assert deployment is not None
            self._release(self._pools[batch.model], deployment, None)
            self._finish(
                batch,
                item.request,
                UpstreamReply(None, error_code="invalid_request", error_message="the input line could not be read"),
            )
            return
        chain = [batch.model, *self._pools[batch.model].model.fallbacks]
        for index, model in enumerate(chain):
            pool = self._pools.get(model)
            if pool is None:
                continue
            pinned = batch.pinned_deployment if index == 0 else None
            attempt = 0
            while True:
                attempt += 1
                if deployment is None:
                    deployment = await self._wait_for_slot(pool, pinned, item.tokens)
                outcome: UpstreamReply | None = None
                started = time.perf_counter()
                with tracing.span(
                    "upstream " + item.endpoint,
                    **{
                        "batchgate.batch_id": batch.id,
                        "batchgate.custom_id": item.request.custom_id,
                        "batchgate.model": pool.model.name,
                        "batchgate.deployment": deployment.name,
                        "batchgate.attempt": attempt,
                    },
                ) as span:
                    try:
                        outcome = await deployment.upstream.send(item.endpoint, item.body, deployment.config.timeout_s)
                    finally:
                        self._release(pool, deployment, outcome)
                    if span is not None:
                        _describe_outcome(span, outcome)
                _observe_attempt(pool.model.name, deployment, outcome, time.perf_counter() - started)
                activity.record(
                    deployment.name,
                    outcome.status_code,
                    item.tokens,  # the web console's last hour
                    min(deployment.in_flight + 1, deployment.limits.concurrency),
                    deployment.limits.circuit.state != "closed",
                )
                reply, max_attempts, deployment = outcome, deployment.config.max_attempts, None
                if _succeeded(reply) or not is_retryable(reply):
                    self._finish(batch, item.request, reply, pool)
                    return
                if attempt >= max_attempts:
                    break  # retries exhausted here: the next fallback model, if any
                pool.series.retries.inc()
                await asyncio.sleep(
                    backoff_s(attempt, self._config.backoff_base_s, self._config.backoff_max_s, reply.retry_after_s)
                )
        assert reply is not None
        self._finish(batch, item.request, reply)

    def _finish(
        self, batch: ActiveBatch, request: ClaimedRequest, reply: UpstreamReply, answered_by: ModelPool | None = None
    ) -> None:
        ok = _succeeded(reply)
        body_text, parsed = _json_text(reply.body)
        if ok and self._guardrails and self._guardrails.redacts_output(batch.model, batch.key_id):
            parsed = self._guardrails.redact_output(parsed)
            body_text = orjson.dumps(parsed).decode()
        tokens = extract_usage(parsed) if ok else (0, 0, 0, 0)
        self._writer.add(
            FinishedRequest(
                batch_id=batch.id,
                line_no=request.line_no,
                custom_id=request.custom_id,
                ok=ok,
                status_code=reply.status_code,
                upstream_request_id=_stored_request_id(reply.request_id),
                body=body_text,
                error_code=None if reply.answered else reply.error_code,
                error_message=None if reply.answered else reply.error_message,
                finished_at=time.time(),
                input_tokens=tokens[0],
                cached_tokens=tokens[1],
                output_tokens=tokens[2],
                reasoning_tokens=tokens[3],
            )
        )
        (metrics.FINISHED_OK if ok else metrics.FINISHED_FAILED).inc()
        if ok and answered_by is not None:
            _observe_usage(answered_by, tokens[0], tokens[2])
        if log.isEnabledFor(logging.DEBUG):  # one line a request: only when asked for
            log.debug(
                "request %s/%s finished: %s",
                batch.id,
                request.custom_id,
                reply.status_code or reply.error_code,
                extra={
                    "batch_id": batch.id,
                    "custom_id": request.custom_id,
                    "line_no": request.line_no,
                    "status": reply.status_code or reply.error_code,
                    "attempts": request.attempts,
                    "model": answered_by.model.name if answered_by else batch.model,
                },
            )


def _observe_attempt(model: str, deployment: Deployment, reply: UpstreamReply, seconds: float) -> None:
    series = deployment.series
    series.replies(model, str(reply.status_code or reply.error_code)).inc()
    series.latency.observe(seconds)
    if reply.status_code == 429:
        series.throttled.inc()


def _observe_usage(pool: ModelPool, input_tokens: int, output_tokens: int) -> None:
    series = pool.series
    series.input_tokens.inc(input_tokens)
    series.output_tokens.inc(output_tokens)
    series.cost_usd.inc(priced_usd(pool.model.price, input_tokens, output_tokens))


def _describe_outcome(span: Any, reply: UpstreamReply) -> None:
    if reply.status_code is not None:
        span.set_attribute("http.response.status_code", reply.status_code)
    if reply.request_id:
        span.set_attribute("batchgate.upstream_request_id", reply.request_id)
    if not _succeeded(reply):
        span.set_attribute("error.type", reply.error_code or str(reply.status_code))


def _stored_request_id(request_id: str | None) -> str | None:
    """The upstream's x-request-id, cut to what the results column holds (a proxy may send any length)."""
    return request_id[:MAX_REQUEST_ID_CHARS] if request_id else request_id


def _succeeded(reply: UpstreamReply) -> bool:
    return reply.answered and 200 <= (reply.status_code or 0) < 300


def _json_text(body: bytes | None) -> tuple[str | None, Any]:
    """The body as compact JSON text (one output line, however the upstream indented it); a non-JSON
    answer (an HTML 502 page) becomes a JSON string."""
    if body is None:
        return None, None
    try:
        parsed = orjson.loads(body)
        # Valid JSON on one line goes into the output as it came: re-serialising a large answer costs
        # another copy of it (and CPU) for nothing.
        text = body.decode() if b"\n" not in body and b"\r" not in body else orjson.dumps(parsed).decode()
        return text, parsed
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        text = body.decode("utf-8", errors="replace")
        return orjson.dumps(text).decode(), text
