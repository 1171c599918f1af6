"""The `batchgate` command: server, worker, offline runs, a client for a running server, admin."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from batchgate.config import ConfigError, Settings, check_bind_is_safe, load_settings

app = typer.Typer(
    help="batchgate: a self-hosted LLM batch gateway that executes batches itself.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="batchgate.yaml (default: $BATCHGATE_CONFIG or ./batchgate.yaml)")
]
BaseUrlOption = Annotated[
    str, typer.Option("--base-url", envvar="BATCHGATE_BASE_URL", help="the server's OpenAI base URL")
]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="BATCHGATE_API_KEY", help="API key (default: $BATCHGATE_API_KEY)")
]
DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="BATCHGATE_LOG_FORMAT",
        help="text, or json: one object a line with batch and request ids",
    ),
]


def _logging(log_format: str) -> None:
    from batchgate.observability.logs import configure

    if log_format not in ("text", "json"):
        _fail(f"--log-format must be text or json, not {log_format!r}")
    configure("json" if log_format == "json" else "text")
    from batchgate.observability import tracing

    tracing.setup()  # OpenTelemetry, when OTEL_TRACES_EXPORTER asks and the SDK is installed


def _drained_server_class() -> type:
    import contextlib

    import uvicorn

    class DrainedServer(uvicorn.Server):
        """uvicorn re-raises the SIGTERM it handled once shutdown is over (exit 143); a drained
        shutdown is a success, so `serve` exits 0 as `worker` does."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return DrainedServer


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="bind address (default from config: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default from config: 8080)")] = None,
    no_engine: Annotated[bool, typer.Option("--no-engine", help="API only; workers run batches")] = False,
    log_format: LogFormatOption = "text",
) -> None:
    """Run the API server with its batch engine."""
    import uvicorn

    from batchgate.api.app import create_app

    settings = _settings(config)
    bind_host = host or settings.server.host
    try:
        check_bind_is_safe(settings, bind_host)
    except ConfigError as exc:
        _fail(str(exc))
    _logging(log_format)
    from batchgate.api.http_protocol import limited_protocol

    failures: list[str] = []

    def stop_server(reason: str) -> None:  # an engine loop died: stop serving, exit non-zero (see engine/core.py)
        failures.append(reason)
        server.should_exit = True

    asgi = create_app(settings, run_engine=not no_engine, on_engine_failure=stop_server)
    server_config = uvicorn.Config(
        asgi,
        host=bind_host,
        port=port or settings.server.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        http=limited_protocol(settings.limits),
        ws="none",  # no WebSocket routes; an upgrade would also swap the protocol and skip its bookkeeping
        **proxy_options(settings),
        log_config=None,
    )  # uvicorn's own records go through our handler (and format)
    server = _drained_server_class()(server_config)
    server.run()
    if failures:
        typer.secho(f"error: {failures[0]}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise: only when forwarded IPs are
    configured (server.forwarded_allow_ips, or uvicorn's own FORWARDED_ALLOW_IPS) is a proxy trusted."""
    allowed = settings.server.forwarded_allow_ips
    if allowed:
        return {"proxy_headers": True, "forwarded_allow_ips": allowed}
    return {"proxy_headers": bool(os.environ.get("FORWARDED_ALLOW_IPS"))}


@app.command()
def worker(
    config: ConfigOption = None,
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus /metrics on this port")] = None,
    metrics_host: Annotated[str, typer.Option(help="bind address of --metrics-port")] = "127.0.0.1",
    log_format: LogFormatOption = "text",
) -> None:
    """Run the batch engine without the API (scale-out: several workers share one database)."""
    from batchgate.gateway import open_gateway

    settings = _settings(config)
    _logging(log_format)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, metrics_host)  # a daemon thread; the engine's metrics, nothing else

    async def main() -> str | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with open_gateway(settings, run_engine=True) as gateway:
            logging.getLogger("batchgate").info("worker running; SIGTERM stops it")
            assert gateway.engine is not None and gateway.engine.failed is not None
            failed = gateway.engine.failed
            stopped = asyncio.create_task(stop.wait())
            waiters: list[asyncio.Future[Any]] = [stopped, failed]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            return failed.result() if failed.done() else None

    from batchgate.engine.aio import run_fast

    failure = run_fast(main())
    if failure is not None:  # an engine loop died (see engine/core.py): exit non-zero so it is restarted
        typer.secho(f"error: {failure}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Create or upgrade the database schema."""
    from batchgate.store.database import create_engine
    from batchgate.store.migrate import upgrade_to_head

    settings = _settings(config)

    async def main() -> None:
        engine = create_engine(settings.storage.database)
        try:
            await upgrade_to_head(engine)
        finally:
            await engine.dispose()

    asyncio.run(main())
    typer.echo(f"database at {settings.storage.database} is up to date")


@app.command()
def run(
    input_file: Annotated[Path, typer.Argument(help="the batch input, OpenAI JSONL")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where successful results go")],
    errors: Annotated[
        Path | None, typer.Option("--errors", help="where failed requests go (default: OUTPUT with .errors.jsonl)")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="run every line on this model instead")] = None,
    config: ConfigOption = None,
) -> None:
    """Run one batch file in-process, no server needed; re-running resumes where it stopped."""
    from batchgate.cli.offline import run_offline

    settings = _settings(config)
    if not input_file.is_file():
        _fail(f"{input_file} is not a file")
    errors_path = errors or output.with_name(output.stem + ".errors.jsonl")
    try:
        code = run_offline(settings, input_file, output, errors_path, model)
    except ConfigError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def submit(
    input_file: Annotated[Path, typer.Argument(help="the batch input, OpenAI JSONL")],
    endpoint: Annotated[str, typer.Option(help="the endpoint every line calls")] = "/v1/chat/completions",
    completion_window: Annotated[str, typer.Option(help="24h, or any <n>s|m|h|d")] = "24h",
    wait: Annotated[bool, typer.Option("--wait", help="follow progress until the batch ends")] = False,
    output_dir: Annotated[Path | None, typer.Option("--download", "-d", help="with --wait: save results here")] = None,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Upload a file to a running server and start a batch on it."""
    from batchgate.cli import client

    raise typer.Exit(client.submit(base_url, api_key, input_file, endpoint, completion_window, wait, output_dir))


@app.command()
def status(batch_id: str, base_url: BaseUrlOption = DEFAULT_BASE_URL, api_key: ApiKeyOption = None) -> None:
    """Show one batch."""
    from batchgate.cli import client

    client.show_status(base_url, api_key, batch_id)


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 20,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """List batches, newest first."""
    from batchgate.cli import client

    client.list_batches(base_url, api_key, limit)


@app.command()
def cancel(batch_id: str, base_url: BaseUrlOption = DEFAULT_BASE_URL, api_key: ApiKeyOption = None) -> None:
    """Cancel a batch: finished results are kept, the rest end as batch_cancelled."""
    from batchgate.cli import client

    client.cancel(base_url, api_key, batch_id)


@app.command()
def download(
    batch_id: str,
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="directory")],
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Save a finished batch's output and error files into a directory."""
    from batchgate.cli import client

    client.download(base_url, api_key, batch_id, output_dir)


keys_app = typer.Typer(help="Manage API keys (admin key needed).", no_args_is_help=True)
teams_app = typer.Typer(help="Manage teams (admin key needed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(teams_app, name="teams")


@keys_app.command("create")
def keys_create(
    team: Annotated[str, typer.Option(help="the team (name or id) the key belongs to")],
    name: Annotated[str | None, typer.Option(help="a label for the key")] = None,
    models: Annotated[str | None, typer.Option(help="comma-separated models it may use")] = None,
    rpm: Annotated[int | None, typer.Option(help="API requests per minute")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="spend limit in USD")] = None,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a key; the full key is printed once, on stdout."""
    from batchgate.cli import admin as admin_client

    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    admin_client.create_key(base_url, api_key, team, name, model_list, rpm, budget_usd)


@keys_app.command("list")
def keys_list(base_url: BaseUrlOption = DEFAULT_BASE_URL, api_key: ApiKeyOption = None) -> None:
    """List keys (prefixes only)."""
    from batchgate.cli import admin as admin_client

    admin_client.list_keys(base_url, api_key)


@keys_app.command("revoke")
def keys_revoke(key_id: str, base_url: BaseUrlOption = DEFAULT_BASE_URL, api_key: ApiKeyOption = None) -> None:
    """Revoke a key; it stops working on its next request."""
    from batchgate.cli import admin as admin_client

    admin_client.revoke_key(base_url, api_key, key_id)


@teams_app.command("create")
def teams_create(
    name: str,
    weight: Annotated[float | None, typer.Option(help="fair-share weight")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="spend limit in USD")] = None,
    max_queued_requests: Annotated[int | None, typer.Option(help="queued requests cap")] = None,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a team."""
    from batchgate.cli import admin as admin_client

    admin_client.create_team(base_url, api_key, name, weight, budget_usd, max_queued_requests)


@teams_app.command("list")
def teams_list(base_url: BaseUrlOption = DEFAULT_BASE_URL, api_key: ApiKeyOption = None) -> None:
    """List teams."""
    from batchgate.cli import admin as admin_client

    admin_client.list_teams(base_url, api_key)


@app.command()
def usage(
    team: Annotated[str | None, typer.Option(help="one team (name or id)")] = None,
    key: Annotated[str | None, typer.Option(help="one key id")] = None,
    since: Annotated[int | None, typer.Option(help="batches created since (Unix seconds)")] = None,
    base_url: BaseUrlOption = DEFAULT_BASE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Requests, tokens and cost per team, key and model (admin key needed)."""
    from batchgate.cli import admin as admin_client

    admin_client.usage(base_url, api_key, team, key, since)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
