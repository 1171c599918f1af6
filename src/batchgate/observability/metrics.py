"""Prometheus metrics, served at /metrics (and by `batchgate worker --metrics-port`)."""

from prometheus_client import Counter, Gauge, Histogram

from batchgate.domain.status import RequestOutcome

# ---------------------------------------------------------------- the API
HTTP_REQUESTS = Counter(
    "batchgate_http_requests_total",
    "API requests by dialect, route template and HTTP status",
    ["dialect", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "batchgate_http_request_duration_seconds",
    "API request latency by dialect and route",
    ["dialect", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FILES_UPLOADED = Counter("batchgate_files_uploaded_total", "Files uploaded")
BYTES_UPLOADED = Counter("batchgate_uploaded_bytes_total", "Bytes uploaded")

# ---------------------------------------------------------------- upstream calls
REQUESTS_IN_FLIGHT = Gauge("batchgate_upstream_in_flight", "Requests in flight per deployment", ["deployment"])
UPSTREAM_REPLIES = Counter(
    "batchgate_upstream_replies_total",
    "Upstream attempts by model, deployment and HTTP status (or error code: request_timeout, upstream_unreachable)",
    ["model", "deployment", "status"],
)
UPSTREAM_LATENCY = Histogram(
    "batchgate_upstream_latency_seconds",
    "Time of one upstream attempt, by deployment",
    ["deployment"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
RETRIES = Counter("batchgate_upstream_retries_total", "Attempts repeated after a retryable answer, by model", ["model"])
THROTTLED = Counter("batchgate_upstream_throttled_total", "Upstream 429 answers, by deployment", ["deployment"])
CIRCUIT_OPEN = Gauge(
    "batchgate_circuit_open", "1 while a deployment's circuit breaker is open or probing", ["deployment"]
)
CAPACITY_GRANTED = Gauge(
    "batchgate_capacity_granted_slots",
    "Slots of a deployment's global max_concurrency this worker holds (scale-out)",
    ["deployment"],
)

# ---------------------------------------------------------------- batch work
REQUESTS_FINISHED = Counter("batchgate_requests_finished_total", "Batch requests finished", ["outcome"])
REQUESTS_QUEUED = Gauge(
    "batchgate_requests_queued",
    "Requests of running batches not finished yet, by model (the whole gateway's queue)",
    ["model"],
)
BATCHES_FINISHED = Counter("batchgate_batches_finished_total", "Batches that reached a final status", ["status"])
TOKENS = Counter(
    "batchgate_tokens_total", "Tokens the upstreams reported for succeeded requests, by model", ["model", "kind"]
)
COST_USD = Counter("batchgate_cost_usd_total", "Spend of succeeded requests at the model's configured price", ["model"])

FINISHED_OK = REQUESTS_FINISHED.labels(RequestOutcome.SUCCEEDED)  # bound once: `labels()` costs more than the increment
FINISHED_FAILED = REQUESTS_FINISHED.labels(RequestOutcome.FAILED)


class DeploymentSeries:
    """One deployment's labelled series, bound once (the hot path touches them on every call)."""

    def __init__(self, deployment: str) -> None:
        self._deployment = deployment
        self.in_flight = REQUESTS_IN_FLIGHT.labels(deployment)
        self.latency = UPSTREAM_LATENCY.labels(deployment)
        self.throttled = THROTTLED.labels(deployment)
        self.circuit_open = CIRCUIT_OPEN.labels(deployment)
        self._replies: dict[tuple[str, str], Counter] = {}

    def replies(self, model: str, status: str) -> Counter:
        child = self._replies.get((model, status))
        if child is None:
            child = self._replies[(model, status)] = UPSTREAM_REPLIES.labels(model, self._deployment, status)
        return child


class ModelSeries:
    """One model's labelled series, bound once."""

    def __init__(self, model: str) -> None:
        self.retries = RETRIES.labels(model)
        self.input_tokens = TOKENS.labels(model, "input")
        self.output_tokens = TOKENS.labels(model, "output")
        self.cost_usd = COST_USD.labels(model)
