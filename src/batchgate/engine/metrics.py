"""Prometheus metrics, served at /metrics."""

from prometheus_client import Counter, Gauge

REQUESTS_IN_FLIGHT = Gauge("batchgate_upstream_in_flight", "Requests in flight per deployment", ["deployment"])
UPSTREAM_REPLIES = Counter(
    "batchgate_upstream_replies_total", "Upstream attempts by model and HTTP status (or error code)",
    ["model", "status"],
)
REQUESTS_FINISHED = Counter("batchgate_requests_finished_total", "Batch requests finished", ["outcome"])
BATCHES_FINISHED = Counter("batchgate_batches_finished_total", "Batches that reached a final status", ["status"])
FILES_UPLOADED = Counter("batchgate_files_uploaded_total", "Files uploaded")
BYTES_UPLOADED = Counter("batchgate_uploaded_bytes_total", "Bytes uploaded")
CIRCUIT_OPEN = Gauge("batchgate_circuit_open", "1 while a deployment's circuit breaker is open or probing",
                     ["deployment"])
CAPACITY_GRANTED = Gauge("batchgate_capacity_granted_slots",
                         "Slots of a deployment's global max_concurrency this worker holds (scale-out)",
                         ["deployment"])
