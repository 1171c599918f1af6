"""How a request's end is recorded: its result row for the group-committing writer, the finished
counters, the model's usage and cost, and what each attempt adds to the metrics and the trace."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from batchgate.domain.pricing import priced_usd
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.engine.guardrails import Guardrails
from batchgate.engine.usage import extract_usage
from batchgate.engine.work import ActiveBatch, log
from batchgate.engine.writer import ResultWriter
from batchgate.observability import metrics
from batchgate.store.records import ClaimedRequest, FinishedRequest
from batchgate.upstreams.base import UpstreamReply

MAX_REQUEST_ID_CHARS = 256  # results.upstream_request_id


class OutcomeRecorder:
    """Ends requests: every path that ends one (an answer, a last error, a blocked or unreadable line)
    comes here, so each ends with exactly one result row."""

    def __init__(self, writer: ResultWriter, guardrails: Guardrails) -> None:
        self._writer = writer
        self._guardrails = guardrails

    def finish(
        self, batch: ActiveBatch, request: ClaimedRequest, reply: UpstreamReply, answered_by: ModelPool | None = None
    ) -> None:
        ok = succeeded(reply)
        body_text, parsed = json_text(reply.body)
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
                upstream_request_id=stored_request_id(reply.request_id),
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
            observe_usage(answered_by, tokens[0], tokens[2])
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


def observe_attempt(model: str, deployment: Deployment, reply: UpstreamReply, seconds: float) -> None:
    series = deployment.series
    series.replies(model, str(reply.status_code or reply.error_code)).inc()
    series.latency.observe(seconds)
    if reply.status_code == 429:
        series.throttled.inc()


def observe_usage(pool: ModelPool, input_tokens: int, output_tokens: int) -> None:
    series = pool.series
    series.input_tokens.inc(input_tokens)
    series.output_tokens.inc(output_tokens)
    series.cost_usd.inc(priced_usd(pool.model.price, input_tokens, output_tokens))


def describe_outcome(span: Any, reply: UpstreamReply) -> None:
    if reply.status_code is not None:
        span.set_attribute("http.response.status_code", reply.status_code)
    if reply.request_id:
        span.set_attribute("batchgate.upstream_request_id", reply.request_id)
    if not succeeded(reply):
        span.set_attribute("error.type", reply.error_code or str(reply.status_code))


def stored_request_id(request_id: str | None) -> str | None:
    """The upstream's x-request-id, cut to what the results column holds (a proxy may send any length)."""
    return request_id[:MAX_REQUEST_ID_CHARS] if request_id else request_id


def succeeded(reply: UpstreamReply) -> bool:
    return reply.answered and 200 <= (reply.status_code or 0) < 300


def json_text(body: bytes | None) -> tuple[str | None, Any]:
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
