"""What the servers of one database share: capacity leases, published deployment activity, secrets."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import delete, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from batchgate.store.base import StoreBase, insert_ignore
from batchgate.store.records import CAPACITY_LOCK_KEY, CapacityLease, Row
from batchgate.store.tables import capacity_leases, deployment_minutes, gateway_secrets

ACTIVITY_COLUMNS = ("requests", "tokens", "throttled", "errors", "peak_in_flight", "circuit_open")


class ClusterQueries(StoreBase):
    async def gateway_secret(self, name: str) -> bytes:
        """A random secret shared by every server of this database, made by whichever asks first."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert_ignore(self.dialect, gateway_secrets).values(name=name, value=secrets.token_hex(32))
            )
            value = (
                await conn.execute(select(gateway_secrets.c.value).where(gateway_secrets.c.name == name))
            ).scalar_one()
        return bytes.fromhex(value)

    # ---------------------------------------------------------------- capacity (scale-out)
    async def renew_capacity(
        self,
        owner: str,
        now: float,
        lease_until: float,
        deployments: Sequence[str],
        decide: Callable[[dict[str, list[CapacityLease]]], list[CapacityLease]],
    ) -> list[CapacityLease]:
        """One serialised transaction: drop leases of vanished workers, show `decide` the other
        workers' live leases of `deployments`, and store the leases it picks for `owner`."""
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CAPACITY_LOCK_KEY})
            await conn.execute(delete(capacity_leases).where(capacity_leases.c.lease_until < now))
            rows = (
                (
                    await conn.execute(
                        select(capacity_leases).where(
                            capacity_leases.c.deployment.in_(list(deployments)), capacity_leases.c.owner != owner
                        )
                    )
                )
                .mappings()
                .all()
            )
            others: dict[str, list[CapacityLease]] = {name: [] for name in deployments}
            for row in rows:
                others[row["deployment"]].append(
                    CapacityLease(
                        row["deployment"],
                        row["owner"],
                        row["slots"],
                        row["rate_share"],
                        row["demand"],
                        row["wants_rate"],
                    )
                )
            mine = decide(others)
            await conn.execute(delete(capacity_leases).where(capacity_leases.c.owner == owner))
            if mine:
                await conn.execute(
                    insert(capacity_leases),
                    [
                        {
                            "deployment": lease.deployment,
                            "owner": owner,
                            "slots": lease.slots,
                            "rate_share": lease.rate_share,
                            "demand": lease.demand,
                            "wants_rate": lease.wants_rate,
                            "lease_until": lease_until,
                        }
                        for lease in mine
                    ],
                )
        return mine

    async def release_capacity(self, owner: str) -> None:
        """A clean shutdown: this worker's shares are free for the others at once."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(capacity_leases).where(capacity_leases.c.owner == owner))

    async def list_capacity_leases(self) -> list[Row]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(capacity_leases))).mappings().all())

    # ---------------------------------------------------------------- deployment activity (scale-out console)
    async def publish_activity(self, owner: str, rows: list[dict[str, Any]], keep_from_minute: int) -> None:
        """Store this engine's latest minutes (totals, so a repeat is harmless) and drop hour-old ones."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(deployment_minutes).where(deployment_minutes.c.minute < keep_from_minute))
            if not rows:
                return
            insert_ = pg_insert if self.dialect == "postgresql" else sqlite_insert
            statement = insert_(deployment_minutes)
            statement = statement.on_conflict_do_update(
                index_elements=["owner", "deployment", "minute"],
                set_={name: statement.excluded[name] for name in ACTIVITY_COLUMNS},
            )
            await conn.execute(statement, [{"owner": owner, **row} for row in rows])

    async def activity_minutes(self, from_minute: int, exclude_owner: str | None) -> list[Row]:
        """Every other engine's published minutes since `from_minute`."""
        query = select(deployment_minutes).where(deployment_minutes.c.minute >= from_minute)
        if exclude_owner is not None:
            query = query.where(deployment_minutes.c.owner != exclude_owner)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())
