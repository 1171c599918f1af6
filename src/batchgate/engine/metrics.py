"""Prometheus metrics, served at /metrics."""

from prometheus_client import Counter, Gauge

REQUESTS_IN_FLIGHT = Gauge("batchgate_upstream_in_flight", "Requests in flight per deployment", ["deployment"])
UPSTREAM_REPLIES = Counter(
    "batchgate_upstream_replies_total", "Upstream attempts by deployment and HTTP status (or error code)",
    ["deployment", "status"],
)
REQUESTS_FINISHED = Counter("batchgate_requests_finished_total", "Batch requests finished", ["outcome"])
BATCHES_FINISHED = Counter("batchgate_batches_finished_total", "Batches that reached a final status", ["status"])
FILES_UPLOADED = Counter("batchgate_files_uploaded_total", "Files uploaded")
BYTES_UPLOADED = Counter("batchgate_uploaded_bytes_total", "Bytes uploaded")
