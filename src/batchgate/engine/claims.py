"""What to claim, and from which batches: exactly the free slots plus a small prefetch, split fairly.

Rows are leased on demand (the Oban / Solid Queue / pg-boss pattern), never a chunk that waits for
its slowest member. A model's free slots are split between teams by weight, and within a team round
robin over its batches in earliest-deadline-first order. Claimed rows have their lines read back by
byte range, parsed and passed through the input guardrails before they queue for a slot.
"""

from __future__ import annotations

import time
from collections import defaultdict

import orjson

from batchgate.blobs import BlobStore
from batchgate.config import EngineConfig
from batchgate.domain.params import SERVED_ENDPOINTS
from batchgate.engine.deployments import ModelPool
from batchgate.engine.fairness import FairShare
from batchgate.engine.guardrails import Blocked, Guardrails
from batchgate.engine.limits import estimate_tokens
from batchgate.engine.outcomes import OutcomeRecorder
from batchgate.engine.scheduler import SlotScheduler
from batchgate.engine.work import ActiveBatch, Ready, log
from batchgate.store.records import ClaimedRequest
from batchgate.store.store import Store
from batchgate.upstreams.base import UpstreamReply

# Rows claimed ahead of free slots, as a fraction of capacity: a finished request's slot is
# refilled from memory at once, and the database is asked for rows in chunks, not one by one.
# Half the capacity covers a claim round trip that waits behind a group commit: at a quarter the
# buffer ran dry and a 64-slot deployment averaged 0.90 of its limit; at a half, 0.98.
PREFETCH_DIVISOR = 2
# ...but never fewer than this: each claim is a statement with a fixed cost, and a buffer refilled
# two rows at a time makes small deployments pay it for every other request.
MIN_PREFETCH = 16
READ_RETRY_S = 5.0  # request bodies that could not be read are claimed again after this long


def parse(batch: ActiveBatch, request: ClaimedRequest, line: bytes) -> Ready:
    try:
        parsed = orjson.loads(line)
        body, endpoint = parsed["body"], parsed.get("url")
        if not isinstance(body, dict):
            raise TypeError("body")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return Ready(batch, request, None, batch.endpoint, 0)
    if endpoint not in SERVED_ENDPOINTS:  # only config decides where a request may go
        endpoint = batch.endpoint
    return Ready(batch, request, body, endpoint, estimate_tokens(line, body))


class ClaimPlanner:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        pools: dict[str, ModelPool],
        engine_config: EngineConfig,
        owner: str,
        guardrails: Guardrails,
        scheduler: SlotScheduler,
        outcomes: OutcomeRecorder,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._pools = pools
        self._config = engine_config
        self._owner = owner
        self._guardrails = guardrails
        self._scheduler = scheduler
        self._outcomes = outcomes
        self._cursor: dict[str, int] = defaultdict(int)
        self._fair: dict[str, FairShare] = defaultdict(FairShare)
        self.exhausted: dict[str, bool] = {}  # per model: the last claim found fewer rows than it asked

    async def claim_round(self, active: list[ActiveBatch]) -> None:
        by_model: dict[str, list[ActiveBatch]] = defaultdict(list)
        for batch in active:
            by_model[batch.model].append(batch)
        for model, batches in by_model.items():
            pool = self._pools.get(model)
            if pool is None:
                continue
            ready = self._scheduler.ready[model]
            self._scheduler.start_ready(pool, ready)
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
            self.exhausted[model] = sum(len(claimed) for _, claimed in claims) < want and not ready
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
                        self._outcomes.finish(
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
                    item = self._guarded(parse(batch, request, line))
                    if item is not None:
                        ready.append(item)
            self._scheduler.start_ready(pool, ready)

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

    def _guarded(self, item: Ready) -> Ready | None:
        """Apply the guardrails before a request takes a slot; a blocked one ends here, never sent."""
        if not self._guardrails or item.body is None:
            return item
        try:
            guarded = self._guardrails.check_input(item.batch.model, item.batch.key_id, item.endpoint, item.body)
        except Blocked as blocked:
            self._outcomes.finish(
                item.batch,
                item.request,
                UpstreamReply(None, error_code="guardrail_blocked", error_message=str(blocked)),
            )
            return None
        if guarded is not item.body:  # changed (clamped, redacted): budget TPM for what is really sent
            item.body, item.tokens = guarded, estimate_tokens(orjson.dumps(guarded), guarded)
        return item
