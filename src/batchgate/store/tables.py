"""The schema as SQLAlchemy Core tables (migrations in `migrations/versions` create the same)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import (
    true as sa_true,
)

metadata = MetaData()

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("team_id", String(64), nullable=True),
    Column("filename", String(512), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("provider_name", String(256), nullable=True),
    Column("lines", Integer, nullable=True),  # newline count, for queue quotas before validation
    Index("ix_files_purpose", "purpose"),
    Index("ix_files_team", "team_id", "id"),
    Index("ix_files_expires_at", "expires_at"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("team_id", String(64), nullable=True),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(256), nullable=True),
    Column("model_override", String(256), nullable=True),
    Column("input_file_id", String(64), nullable=True),  # null: an open xAI batch fed by add-calls
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("output_file_id", String(64), nullable=True),
    Column("error_file_id", String(64), nullable=True),
    Column("errors", Text, nullable=True),  # JSON: {"object": "list", "data": [...]}
    Column("metadata", Text, nullable=True),  # JSON object of strings
    Column("output_expires_after", BigInteger, nullable=True),  # seconds after the output's creation
    Column("created_at", BigInteger, nullable=False),
    Column("in_progress_at", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=False),
    Column("finalizing_at", BigInteger, nullable=True),
    Column("completed_at", BigInteger, nullable=True),
    Column("failed_at", BigInteger, nullable=True),
    Column("expired_at", BigInteger, nullable=True),
    Column("cancelling_at", BigInteger, nullable=True),
    Column("cancelled_at", BigInteger, nullable=True),
    # live counters, incremented in the same transaction that stores each result
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("cancelled", Integer, nullable=False, default=0, server_default="0"),  # of `failed`: batch_cancelled
    # dialects: the same batch seen through the OpenAI, TrueFoundry or xAI API
    Column("dialect", String(16), nullable=False, default="openai", server_default="openai"),
    Column("name", String(256), nullable=True),  # xAI
    Column("job_name", String(256), nullable=True),  # TrueFoundry
    Column("sealed", Boolean, nullable=False, default=True, server_default=sa_true()),  # False: xAI, open to adds
    Column("pinned_deployment", String(256), nullable=True),  # TrueFoundry x-tfy-provider-name
    Column("cancel_message", Text, nullable=True),  # xAI cancel_by_xai_message
    Column("create_api_key_id", String(64), nullable=True),
    Column("allowed_models", Text, nullable=True),  # JSON list from the creating key; null: all
    # which worker validates it: on a shared database only one may
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Index("ix_batches_status", "status"),
    Index("ix_batches_team", "team_id", "id"),
)

# One row per input line: where its body lives in the input blob and who is working on it.
requests = Table(
    "requests",
    metadata,
    Column("batch_id", String(64), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("custom_id", Text, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("length", Integer, nullable=False),
    Column("state", String(8), nullable=False),  # a RequestState (domain/status.py)
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("blob_key", String(64), nullable=True),  # where the body lives; null: the batch's input file
    Column("endpoint", String(64), nullable=True),  # null: the batch's endpoint
    Column("created_at", Float, nullable=True),  # null: the batch's created_at
    PrimaryKeyConstraint("batch_id", "line_no"),
    Index("uq_requests_batch_custom", "batch_id", "custom_id", unique=True),
    Index("ix_requests_claim", "batch_id", "state", "line_no"),
    Index("ix_requests_lease", "state", "lease_until"),
)

# One row per finished request; the unique (batch_id, line_no) makes a repeated write after a crash
# harmless. `seq` grows in commit order (one writer on SQLite), so "results after seq N" pages
# stay exact while results keep arriving.
results = Table(
    "results",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("batch_id", String(64), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("custom_id", Text, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("upstream_request_id", String(256), nullable=True),
    Column("body", Text, nullable=True),  # the upstream's JSON body, verbatim
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("finished_at", Float, nullable=False),
    Column("input_tokens", Integer, nullable=False, default=0, server_default="0"),
    Column("output_tokens", Integer, nullable=False, default=0, server_default="0"),
    UniqueConstraint("batch_id", "line_no", name="uq_results_batch_line"),
    Index("ix_results_batch_seq", "batch_id", "seq"),  # xAI result pages: one batch, in commit order
    sqlite_autoincrement=True,
)


# Teams own files and batches; API keys belong to a team. Keys are stored as SHA-256 hashes.
teams = Table(
    "teams",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("weight", Float, nullable=False, default=1.0),
    Column("budget_usd", Float, nullable=True),
    Column("max_queued_requests", Integer, nullable=True),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("team_id", String(64), nullable=False),
    Column("name", String(128), nullable=True),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("models", Text, nullable=True),  # JSON list of allowed model names; null: all
    Column("rpm", Integer, nullable=True),  # API requests per minute; null: unlimited
    Column("budget_usd", Float, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Index("ix_api_keys_team", "team_id"),
)

# Scale-out: each worker's share of a deployment's global limits (max_concurrency, rpm, tpm).
# One row per deployment and worker, renewed by a heartbeat; an expired row is a vanished worker.
capacity_leases = Table(
    "capacity_leases",
    metadata,
    Column("deployment", String(256), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("slots", Integer, nullable=False),  # calls this worker may have in flight
    Column("rate_share", Float, nullable=False),  # its fraction of the deployment's rpm / tpm
    Column("demand", Integer, nullable=False),  # slots it could use now
    Column("wants_rate", Boolean, nullable=False),  # it has calls to start (in-flight ones need no rate)
    Column("lease_until", Float, nullable=False),
    PrimaryKeyConstraint("deployment", "owner"),
)

# Scale-out: each API key's `rpm` token bucket, shared by every API server on one database (on one
# node the bucket lives in the process's memory). Refilled from PostgreSQL's own clock.
key_rate_buckets = Table(
    "key_rate_buckets",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated", Float, nullable=False),  # Unix seconds of the last take
    Column("granted", Boolean, nullable=False),  # whether the last take got a token
)

# Random keys made once per database, so every server that shares it agrees on them (xAI result
# pagination tokens are sealed with one: they must not show the gateway-wide result positions).
gateway_secrets = Table(
    "gateway_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(128), nullable=False),
)

# Scale-out: each engine's per-minute activity per deployment (activity.py's rings), published every
# few seconds so any API server's console shows every worker's last hour. Rows older than an hour go.
deployment_minutes = Table(
    "deployment_minutes",
    metadata,
    Column("owner", String(64), nullable=False),
    Column("deployment", String(256), nullable=False),
    Column("minute", BigInteger, nullable=False),  # Unix minutes
    Column("requests", Integer, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("throttled", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("peak_in_flight", Integer, nullable=False),
    Column("circuit_open", Integer, nullable=False),
    PrimaryKeyConstraint("owner", "deployment", "minute"),
)
