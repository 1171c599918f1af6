"""Who a call acts for: the admin or a team's key, with what that key may use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    team_id: str | None  # None: the admin, who sees every team's objects
    is_admin: bool
    key_id: str | None = None
    models: tuple[str, ...] | None = None  # models this key may use; None: all

    def allowed_models(self, configured: list[str]) -> list[str]:
        return configured if self.models is None else [m for m in configured if m in self.models]


ADMIN = Principal(team_id=None, is_admin=True)
