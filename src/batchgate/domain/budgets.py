"""Spend against budgets: what a team or an API key has spent, priced from the config."""

from __future__ import annotations

from batchgate.config import Settings
from batchgate.domain.pricing import cost_usd
from batchgate.store.store import Store


async def spend_usd(
    store: Store, settings: Settings, *, team_id: str | None = None, key_id: str | None = None
) -> float:
    rows = await store.usage(team_id=team_id, key_id=key_id, since=None)
    return sum(cost_usd(settings, r["model"], r["input_tokens"], r["output_tokens"]) for r in rows)


async def over_budget(store: Store, settings: Settings, team: dict | None, key: dict | None) -> str | None:
    """Why new work must be refused (a message), or None while both budgets have room."""
    if key is not None and key.get("budget_usd") is not None:
        spent = await spend_usd(store, settings, key_id=key["id"])
        if spent >= key["budget_usd"]:
            return f"API key {key['id']} has spent ${spent:.4f} of its ${key['budget_usd']:.4f} budget"
    if team is not None and team.get("budget_usd") is not None:
        spent = await spend_usd(store, settings, team_id=team["id"])
        if spent >= team["budget_usd"]:
            return f"team {team['name']!r} has spent ${spent:.4f} of its ${team['budget_usd']:.4f} budget"
    return None
