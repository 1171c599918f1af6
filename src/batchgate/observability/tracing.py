"""OpenTelemetry traces, when the SDK is installed and the standard environment asks for them.

`OTEL_TRACES_EXPORTER=console` (spans as JSON on stdout) or `otlp` (needs
opentelemetry-exporter-otlp; its own `OTEL_EXPORTER_OTLP_*` variables say where), and
`OTEL_SERVICE_NAME` (default `batchgate`). Unset, `none`, or without the SDK, every `span()` is a
shared no-op context, so the hot path pays one attribute lookup and nothing else.

Spans: one per API request (`POST /v1/batches`), per batch validation and finalisation, and per
upstream attempt; each carries the batch id (and the custom_id for an attempt), so a trace
backend can gather a batch's work, which may span hours and many processes, by attribute.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

log = logging.getLogger(__name__)

_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Any = None  # an opentelemetry Tracer once `setup()` found one to use


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span around a block (the span is the `as` target, None when tracing is off)."""
    if _tracer is None:
        return _NO_SPAN
    return _active_span(name, attributes)


@contextlib.contextmanager
def _active_span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    clean = {k: v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(name, attributes=clean) as current:
        yield current


def setup() -> bool:
    """Configure tracing from the environment; True when spans will be exported."""
    global _tracer
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter_name in ("", "none"):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER=%s but opentelemetry-sdk is not installed: no traces", exporter_name)
        return False
    if exporter_name == "console":
        exporter: Any = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp: no traces")
            return False
        exporter = OTLPSpanExporter()
    else:
        log.warning("OTEL_TRACES_EXPORTER=%s is not one batchgate knows (console, otlp): no traces", exporter_name)
        return False
    service = os.environ.get("OTEL_SERVICE_NAME", "batchgate")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # flush what is buffered when the process ends
    _tracer = trace.get_tracer("batchgate")
    log.info("OpenTelemetry traces on: %s exporter, service %s", exporter_name, service)
    return True
