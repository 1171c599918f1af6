"""One request's calls upstream, from the slot the scheduler started it on to its one result.

Each attempt holds a slot only while its call is on the wire; a retry waits out its backoff holding
none, then takes the next free slot ahead of queued requests. A bug in here ends the request as an
internal error instead of stranding its row.
"""

from __future__ import annotations

import asyncio
import time

from batchgate.config import EngineConfig
from batchgate.engine import activity
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.engine.outcomes import OutcomeRecorder, describe_outcome, observe_attempt, succeeded
from batchgate.engine.retry import backoff_s, is_retryable
from batchgate.engine.scheduler import SlotScheduler
from batchgate.engine.work import Ready, log
from batchgate.observability import tracing
from batchgate.upstreams.base import UpstreamReply


class AttemptRunner:
    def __init__(
        self,
        pools: dict[str, ModelPool],
        scheduler: SlotScheduler,
        outcomes: OutcomeRecorder,
        engine_config: EngineConfig,
    ) -> None:
        self._pools = pools
        self._scheduler = scheduler
        self._outcomes = outcomes
        self._config = engine_config

    async def execute(self, item: Ready, deployment: Deployment | None) -> None:
        try:
            await self._attempts(item, deployment)
        except Exception as exc:  # a bug must end the request visibly, never strand its row
            log.exception(
                "request %s/%s failed inside the gateway",
                item.batch.id,
                item.request.custom_id,
                extra={"batch_id": item.batch.id, "custom_id": item.request.custom_id},
            )
            self._outcomes.finish(
                item.batch,
                item.request,
                UpstreamReply(
                    None, error_code="internal_error", error_message=f"gateway error: {type(exc).__name__}: {exc}"
                ),
            )

    async def _attempts(self, item: Ready, deployment: Deployment | None) -> None:
        """One request to its end: retries with backoff on its model (any of its deployments),
        then on each fallback model in turn; the last answer is the result."""
        batch, reply = item.batch, None
        if item.body is None:
            assert deployment is not None
            self._scheduler.release(self._pools[batch.model], deployment, None)
            self._outcomes.finish(
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
                    deployment = await self._scheduler.wait_for_slot(pool, pinned, item.tokens)
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
                        self._scheduler.release(pool, deployment, outcome)
                    if span is not None:
                        describe_outcome(span, outcome)
                observe_attempt(pool.model.name, deployment, outcome, time.perf_counter() - started)
                activity.record(
                    deployment.name,
                    outcome.status_code,
                    item.tokens,  # the web console's last hour
                    min(deployment.in_flight + 1, deployment.limits.concurrency),
                    deployment.limits.circuit.state != "closed",
                )
                reply, max_attempts, deployment = outcome, deployment.config.max_attempts, None
                if succeeded(reply) or not is_retryable(reply):
                    self._outcomes.finish(batch, item.request, reply, pool)
                    return
                if attempt >= max_attempts:
                    break  # retries exhausted here: the next fallback model, if any
                pool.series.retries.inc()
                await asyncio.sleep(
                    backoff_s(attempt, self._config.backoff_base_s, self._config.backoff_max_s, reply.retry_after_s)
                )
        assert reply is not None
        self._outcomes.finish(batch, item.request, reply)
