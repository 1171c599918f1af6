"""The CLI's admin commands (`keys`, `teams`, `usage`): thin wrappers over the Admin API."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from batchgate.cli.client import Client


def _admin(base_url: str, api_key: str | None) -> Client:
    root = base_url.rstrip("/").removesuffix("/v1")
    return Client(root + "/admin", api_key)


def create_key(
    base_url: str,
    api_key: str | None,
    team: str,
    name: str | None,
    models: list[str] | None,
    rpm: int | None,
    budget_usd: float | None,
) -> None:
    body = {"team": team, "name": name, "models": models, "rpm": rpm, "budget_usd": budget_usd}
    key = _admin(base_url, api_key).call("POST", "/keys", json={k: v for k, v in body.items() if v is not None})
    typer.echo(key["key"])
    Console(stderr=True).print(f"key {key['id']} for team {key['team']}: shown once, store it now")


def list_keys(base_url: str, api_key: str | None) -> None:
    table = Table("id", "prefix", "team", "name", "models", "rpm", "revoked_at")
    for key in _admin(base_url, api_key).call("GET", "/keys")["data"]:
        table.add_row(
            key["id"],
            key["prefix"],
            key["team"],
            str(key["name"] or ""),
            ",".join(key["models"] or []) or "all",
            str(key["rpm"] or ""),
            str(key["revoked_at"] or ""),
        )
    Console().print(table)


def revoke_key(base_url: str, api_key: str | None, key_id: str) -> None:
    _admin(base_url, api_key).call("DELETE", f"/keys/{key_id}")
    typer.echo(f"{key_id} revoked")


def create_team(
    base_url: str,
    api_key: str | None,
    name: str,
    weight: float | None,
    budget_usd: float | None,
    max_queued_requests: int | None,
) -> None:
    body = {"name": name, "weight": weight, "budget_usd": budget_usd, "max_queued_requests": max_queued_requests}
    team = _admin(base_url, api_key).call("POST", "/teams", json={k: v for k, v in body.items() if v is not None})
    typer.echo(team["id"])


def list_teams(base_url: str, api_key: str | None) -> None:
    table = Table("id", "name", "weight", "budget_usd", "max_queued_requests")
    for team in _admin(base_url, api_key).call("GET", "/teams")["data"]:
        table.add_row(
            team["id"],
            team["name"],
            str(team["weight"]),
            str(team["budget_usd"] or ""),
            str(team["max_queued_requests"] or ""),
        )
    Console().print(table)


def usage(base_url: str, api_key: str | None, team: str | None, key: str | None, since: int | None) -> None:
    params = {k: v for k, v in {"team": team, "key": key, "since": since}.items() if v is not None}
    table = Table("team", "key", "model", "batches", "completed", "failed", "input tokens", "output tokens", "USD")
    for row in _admin(base_url, api_key).call("GET", "/usage", params=params)["data"]:
        table.add_row(
            str(row["team"] or "(admin)"),
            str(row["key_id"] or ""),
            str(row["model"] or ""),
            str(row["batches"]),
            str(row["requests"]["completed"]),
            str(row["requests"]["failed"]),
            str(row["input_tokens"]),
            str(row["output_tokens"]),
            f"{row['cost_usd']:.6f}",
        )
    Console().print(table)
