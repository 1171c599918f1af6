"""Every query batchgate runs, named, in one place: the only module that talks to the database."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from batchgate.domain.status import ACTIVE, BatchStatus, RequestState
from batchgate.store.outage import OutageLog
from batchgate.store.tables import (
    api_keys,
    batches,
    capacity_leases,
    deployment_minutes,
    files,
    gateway_secrets,
    requests,
    results,
    teams,
)

Row = Mapping[Any, Any]  # a row as read (a RowMapping), or one being built (a dict)

RESULT_PAGE_ROWS = 1000
RESULT_PAGE_BYTES = 8 * 1024 * 1024  # answer bytes read at once when streaming results out
RESULTS_LOCK_KEY = 0x62617463  # "batc": the advisory lock serialising result writes on PostgreSQL
CAPACITY_LOCK_KEY = 0x63617061  # "capa": serialises the workers' capacity lease renewals


@dataclass(slots=True)
class ClaimedRequest:
    batch_id: str
    line_no: int
    custom_id: str
    offset: int
    length: int
    attempts: int
    blob_key: str | None  # None: the batch's input file


class BatchClosed(Exception):
    """Requests cannot be added: the batch is sealed, finished, cancelled or expired."""

    def __init__(self, status: str, sealed: bool) -> None:
        super().__init__(status)
        self.status = status
        self.sealed = sealed


class DuplicateRequestIds(Exception):
    def __init__(self, ids: list[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = ids


class MismatchedModel(Exception):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class BatchFull(Exception):
    def __init__(self, total: int) -> None:
        super().__init__(str(total))
        self.total = total


@dataclass(frozen=True, slots=True)
class Quota:
    """What a team may hold, checked in the same transaction that adds to it (never check-then-insert)."""

    team_id: str | None  # None: the admin's own objects
    max_queued_requests: int | None = None  # requests without a result yet, across its batches
    adding: int = 0  # requests the statement adds
    max_open_batches: int | None = None  # open (xAI) batches; checked only when one is created


class QueueFull(Exception):
    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"{queued} queued, limit {limit}")
        self.queued, self.limit = queued, limit


class TooManyOpenBatches(Exception):
    def __init__(self, open_batches: int, limit: int) -> None:
        super().__init__(f"{open_batches} open, limit {limit}")
        self.open_batches, self.limit = open_batches, limit


@dataclass(frozen=True, slots=True)
class CapacityLease:
    """One worker's share of one deployment's global limits."""

    deployment: str
    owner: str
    slots: int
    rate_share: float
    demand: int
    wants_rate: bool


@dataclass(slots=True)
class FinishedRequest:
    """A request's final outcome, as the engine hands it to the group-commit writer."""

    batch_id: str
    line_no: int
    custom_id: str
    ok: bool
    status_code: int | None
    upstream_request_id: str | None
    body: str | None
    error_code: str | None
    error_message: str | None
    finished_at: float
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.outage = OutageLog()  # every loop of this process reports database trouble here, once
        self._insert_results = _insert_ignore(self.dialect, results).returning(results.c.batch_id, results.c.line_no)

    async def close(self) -> None:
        await self.engine.dispose()

    async def _serialise_result_writes(self, conn: Any) -> None:
        """Result rows must commit in `seq` order, or a reader paging by seq could pass a row that
        commits later with a smaller seq. SQLite has one writer anyway; PostgreSQL takes a
        transaction-scoped advisory lock (one result transaction at a time, every ~50 ms per worker)."""
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RESULTS_LOCK_KEY})

    async def reset_connections(self) -> None:
        """Drop pooled connections so the next query opens a fresh one (after repeated failures)."""
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def gateway_secret(self, name: str) -> bytes:
        """A random secret shared by every server of this database, made by whichever asks first."""
        async with self.engine.begin() as conn:
            await conn.execute(
                _insert_ignore(self.dialect, gateway_secrets).values(name=name, value=secrets.token_hex(32))
            )
            value = (
                await conn.execute(select(gateway_secrets.c.value).where(gateway_secrets.c.name == name))
            ).scalar_one()
        return bytes.fromhex(value)

    # ---------------------------------------------------------------- teams and keys
    async def insert_team(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(teams).values(**row))

    async def team_by_name(self, name: str) -> Row | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(teams).where(teams.c.name == name))).mappings().first()

    async def team_by_id(self, team_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(teams).where(teams.c.id == team_id))).mappings().first()

    async def list_teams(self) -> list[Row]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(teams).order_by(teams.c.name))).mappings())

    async def insert_key(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(api_keys).values(**row))

    async def key_by_hash(self, key_hash: str) -> Row | None:
        """A live (not revoked) key and its team's name; looked up on every request, so revocation is instant."""
        query = (
            select(api_keys, teams.c.name.label("team_name"))
            .join(teams, teams.c.id == api_keys.c.team_id)
            .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).mappings().first()

    async def list_keys(self, team_id: str | None = None) -> list[Row]:
        query = select(api_keys, teams.c.name.label("team_name")).join(teams, teams.c.id == api_keys.c.team_id)
        if team_id is not None:
            query = query.where(api_keys.c.team_id == team_id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query.order_by(api_keys.c.id))).mappings())

    async def revoke_key(self, key_id: str, now: int) -> bool:
        statement = (
            update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def get_key(self, key_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).mappings().first()

    async def queued_requests(self, team_id: str) -> int:
        async with self.engine.connect() as conn:
            return await _queued_requests(conn, team_id)

    async def _check_quota(self, conn: Any, quota: Quota) -> None:
        """Under a per-team lock held to the end of the caller's transaction: refuse what would pass
        the team's caps. SQLite has one connection for the process, so its transactions are serial."""
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _team_lock_key(quota.team_id)})
        if quota.max_queued_requests is not None and quota.team_id is not None:
            queued = await _queued_requests(conn, quota.team_id)
            if queued + quota.adding > quota.max_queued_requests:
                raise QueueFull(queued, quota.max_queued_requests)
        if quota.max_open_batches is not None:
            owner = batches.c.team_id.is_(None) if quota.team_id is None else batches.c.team_id == quota.team_id
            open_batches = (
                await conn.execute(
                    select(func.count()).where(
                        owner, batches.c.status == BatchStatus.IN_PROGRESS, batches.c.sealed.is_(False)
                    )
                )
            ).scalar_one()
            if open_batches >= quota.max_open_batches:
                raise TooManyOpenBatches(open_batches, quota.max_open_batches)

    async def usage(
        self, *, team_id: str | None, key_id: str | None, since: int | None, batch_id: str | None = None
    ) -> list[Row]:
        """Requests and tokens per team, key and model, from the batches' live counters."""
        query = (
            select(
                batches.c.team_id,
                teams.c.name.label("team"),
                batches.c.create_api_key_id.label("key_id"),
                batches.c.model,
                func.count().label("batches"),
                # PostgreSQL sums BIGINTs as NUMERIC (Decimal); cast back so prices multiply as numbers
                func.sum(batches.c.completed).cast(BigInteger).label("completed"),
                func.sum(batches.c.failed).cast(BigInteger).label("failed"),
                func.sum(batches.c.input_tokens).cast(BigInteger).label("input_tokens"),
                func.sum(batches.c.output_tokens).cast(BigInteger).label("output_tokens"),
            )
            .select_from(batches.outerjoin(teams, teams.c.id == batches.c.team_id))
            .group_by(batches.c.team_id, teams.c.name, batches.c.create_api_key_id, batches.c.model)
            .order_by(teams.c.name, batches.c.create_api_key_id, batches.c.model)
        )
        if team_id is not None:
            query = query.where(batches.c.team_id == team_id)
        if key_id is not None:
            query = query.where(batches.c.create_api_key_id == key_id)
        if since is not None:
            query = query.where(batches.c.created_at >= since)
        if batch_id is not None:
            query = query.where(batches.c.id == batch_id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    # ---------------------------------------------------------------- files
    async def insert_file(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(files).values(**row))

    async def get_file(self, file_id: str, now: int, team_id: str | None = None) -> Row | None:
        query = select(files).where(files.c.id == file_id, _not_expired(now))
        query = _for_team(query, files, team_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).mappings().first()

    async def list_files(
        self, *, now: int, after: str | None, limit: int, order: str, purpose: str | None, team_id: str | None = None
    ) -> list[Row]:
        query = select(files).where(_not_expired(now))
        query = _for_team(query, files, team_id)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        if after:
            query = query.where(files.c.id < after if order == "desc" else files.c.id > after)
        query = query.order_by(files.c.id.desc() if order == "desc" else files.c.id.asc()).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def delete_file(self, file_id: str) -> bool:
        async with self.engine.begin() as conn:
            return (await conn.execute(delete(files).where(files.c.id == file_id))).rowcount > 0

    async def expired_file_ids(self, now: int, limit: int = 500) -> list[str]:
        """Expired files no unfinished batch still reads."""
        in_use = select(batches.c.input_file_id).where(
            batches.c.status.in_(ACTIVE), batches.c.input_file_id.is_not(None)
        )
        query = select(files.c.id).where(files.c.expires_at <= now, files.c.id.not_in(in_use)).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    # ---------------------------------------------------------------- batches
    async def insert_batch(self, row: dict[str, Any], quota: Quota | None = None) -> None:
        async with self.engine.begin() as conn:
            if quota is not None:
                await self._check_quota(conn, quota)
            await conn.execute(insert(batches).values(**row))

    async def get_batch(self, batch_id: str, team_id: str | None = None) -> Row | None:
        query = _for_team(select(batches).where(batches.c.id == batch_id), batches, team_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).mappings().first()

    async def list_batches(self, *, after: str | None, limit: int, team_id: str | None = None) -> list[Row]:
        query = _for_team(select(batches), batches, team_id)
        if after:
            query = query.where(batches.c.id < after)
        query = query.order_by(batches.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def batches_with_status(self, statuses: Sequence[str]) -> list[Row]:
        query = select(batches).where(batches.c.status.in_(statuses)).order_by(batches.c.expires_at, batches.c.id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def input_files_in_use(self) -> set[str]:
        query = select(batches.c.input_file_id).where(batches.c.status.in_(ACTIVE)).distinct()
        async with self.engine.connect() as conn:
            return set((await conn.execute(query)).scalars())

    async def transition(self, batch_id: str, from_statuses: Sequence[str], to_status: str, **values: Any) -> bool:
        """Move a batch between statuses atomically; False if it was no longer in `from_statuses`.
        Called only by engine/transitions.py, which names every change."""
        statement = (
            update(batches)
            .where(batches.c.id == batch_id, batches.c.status.in_(from_statuses))
            .values(status=to_status, **values)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def finish_batch(
        self,
        batch_id: str,
        from_statuses: Sequence[str],
        to_status: str,
        new_files: list[dict[str, Any]],
        **values: Any,
    ) -> bool:
        """Record output/error files and the final status in one transaction, exactly once."""
        async with self.engine.begin() as conn:
            moved = await conn.execute(
                update(batches)
                .where(batches.c.id == batch_id, batches.c.status.in_(from_statuses))
                .values(status=to_status, **values)
            )
            if moved.rowcount != 1:
                await conn.rollback()
                return False
            for row in new_files:
                await conn.execute(insert(files).values(**row))
        return True

    # ---------------------------------------------------------------- request rows
    async def insert_requests(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            async with self.engine.begin() as conn:
                await conn.execute(insert(requests), rows)

    async def delete_requests(self, batch_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(requests).where(requests.c.batch_id == batch_id))
            await conn.execute(delete(results).where(results.c.batch_id == batch_id))

    async def claim(
        self, batch_id: str, owner: str, limit: int, now: float, lease_until: float
    ) -> list[ClaimedRequest]:
        """Lease up to `limit` ready rows of one batch, in line order."""
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        statement = text(
            # The states as constants in the text, not parameters: the planner sees them (and may use an index).
            f"UPDATE requests SET state = '{RequestState.RUNNING}', lease_owner = :owner, lease_until = :lease_until,"
            " attempts = attempts + 1"
            " WHERE batch_id = :batch_id AND line_no IN ("
            f"  SELECT line_no FROM requests WHERE batch_id = :batch_id AND state = '{RequestState.PENDING}'"
            f"  AND next_attempt_at <= :now ORDER BY line_no LIMIT :limit{lock})"
            ' RETURNING line_no, custom_id, "offset", length, attempts, blob_key'
        )
        params = {"owner": owner, "lease_until": lease_until, "batch_id": batch_id, "now": now, "limit": limit}
        async with self.engine.begin() as conn:
            rows = (await conn.execute(statement, params)).all()
        return [ClaimedRequest(batch_id, r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def lease_batch(self, batch_id: str, owner: str, now: float, lease_until: float) -> bool:
        """Take a validating batch for this worker, unless another holds a live lease on it."""
        statement = (
            update(batches)
            .where(
                batches.c.id == batch_id,
                batches.c.status == BatchStatus.VALIDATING,
                or_(batches.c.lease_owner.is_(None), batches.c.lease_owner == owner, batches.c.lease_until < now),
            )
            .values(lease_owner=owner, lease_until=lease_until)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def release_rows(self, batch_id: str, line_nos: list[int], retry_at: float = 0.0) -> None:
        """Put claimed rows back in the queue, to be claimed again from `retry_at` (their bodies
        could not be read this time)."""
        async with self.engine.begin() as conn:
            for chunk in _chunks(line_nos, 500):
                await conn.execute(
                    update(requests)
                    .where(
                        requests.c.batch_id == batch_id,
                        requests.c.line_no.in_(chunk),
                        requests.c.state == RequestState.RUNNING,
                    )
                    .values(state=RequestState.PENDING, lease_owner=None, lease_until=None, next_attempt_at=retry_at)
                )

    async def extend_leases(self, owner: str, lease_until: float) -> None:
        """Heartbeat: this worker still holds its running rows and the batches it validates."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(requests)
                .where(requests.c.state == RequestState.RUNNING, requests.c.lease_owner == owner)
                .values(lease_until=lease_until)
            )
            await conn.execute(
                update(batches)
                .where(batches.c.status == BatchStatus.VALIDATING, batches.c.lease_owner == owner)
                .values(lease_until=lease_until)
            )

    async def release_expired_leases(self, now: float) -> int:
        """Hand rows whose worker vanished back to the queue."""
        statement = (
            update(requests)
            .where(requests.c.state == RequestState.RUNNING, requests.c.lease_until < now)
            .values(state=RequestState.PENDING, lease_owner=None, lease_until=None)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement)).rowcount

    async def release_all_leases(self, owner: str | None = None) -> int:
        """Return running rows to the queue (all of them, or one worker's on a clean shutdown)."""
        statement = update(requests).where(requests.c.state == RequestState.RUNNING)
        if owner is not None:
            statement = statement.where(requests.c.lease_owner == owner)
        statement = statement.values(state=RequestState.PENDING, lease_owner=None, lease_until=None)
        free_batches = update(batches).where(batches.c.lease_owner.is_not(None))
        if owner is not None:
            free_batches = free_batches.where(batches.c.lease_owner == owner)
        async with self.engine.begin() as conn:
            await conn.execute(free_batches.values(lease_owner=None, lease_until=None))
            return (await conn.execute(statement)).rowcount

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

    async def take_key_token(self, key_id: str, rpm: int) -> float:
        """Scale-out: one request from a key's shared `rpm` bucket (PostgreSQL). 0 if it may go ahead,
        else the seconds until it may. One atomic upsert; the database's clock, so servers' clocks
        need not agree."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(_TAKE_KEY_TOKEN, {"key_id": key_id, "rpm": float(rpm), "rate": rpm / 60.0})).one()
        granted, tokens = row
        return 0.0 if granted else (1 - tokens) / (rpm / 60.0)

    async def release_capacity(self, owner: str) -> None:
        """A clean shutdown: this worker's shares are free for the others at once."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(capacity_leases).where(capacity_leases.c.owner == owner))

    async def list_capacity_leases(self) -> list[Row]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(capacity_leases))).mappings().all())

    # ---------------------------------------------------------------- results
    async def store_results(self, finished: Sequence[FinishedRequest]) -> int:
        """Group commit: insert results, mark their rows done and bump batch counters in one transaction.

        A result that already exists (the request ran twice after a crash) is ignored, and only
        the rows actually inserted count, so counters never double.
        """
        if not finished:
            return 0
        by_key = {(f.batch_id, f.line_no): f for f in finished}
        async with self.engine.begin() as conn:
            await self._serialise_result_writes(conn)
            # executemany + RETURNING: SQLAlchemy batches it into multi-row INSERTs from one cached
            # compilation; only rows really inserted come back.
            returned = await conn.execute(self._insert_results, [_result_row(f) for f in by_key.values()])
            inserted = [by_key[(batch_id, line_no)] for batch_id, line_no in returned.all()]
            await conn.execute(_MARK_DONE, [{"b_id": f.batch_id, "b_line": f.line_no} for f in by_key.values()])
            deltas = _counter_deltas(inserted)
            if deltas:
                await conn.execute(
                    _BUMP_COUNTERS,
                    [{"b_id": batch_id, **{f"d_{k}": v for k, v in d.items()}} for batch_id, d in deltas.items()],
                )
        return len(inserted)

    async def terminate_unfinished(
        self, batch_id: str, states: Sequence[str], error_code: str, message: str, now: float
    ) -> int:
        """Give every unfinished row of a batch an error result (expiry, cancellation)."""
        async with self.engine.begin() as conn:
            await self._serialise_result_writes(conn)
            rows = (
                await conn.execute(
                    select(requests.c.line_no, requests.c.custom_id).where(
                        requests.c.batch_id == batch_id, requests.c.state.in_(states)
                    )
                )
            ).all()
            count = 0
            for chunk in _chunks(rows, 400):
                statement = (
                    _insert_ignore(self.dialect, results)
                    .values(
                        [
                            {
                                "batch_id": batch_id,
                                "line_no": line_no,
                                "custom_id": custom_id,
                                "ok": False,
                                "status_code": None,
                                "upstream_request_id": None,
                                "body": None,
                                "error_code": error_code,
                                "error_message": message,
                                "finished_at": now,
                                "input_tokens": 0,
                                "output_tokens": 0,
                            }
                            for line_no, custom_id in chunk
                        ]
                    )
                    .returning(results.c.line_no)
                )
                count += len((await conn.execute(statement)).all())
            await conn.execute(
                update(requests)
                .where(requests.c.batch_id == batch_id, requests.c.state.in_(states))
                .values(state=RequestState.DONE, lease_owner=None, lease_until=None)
            )
            if count:
                cancelled = count if error_code == "batch_cancelled" else 0
                await conn.execute(
                    update(batches)
                    .where(batches.c.id == batch_id)
                    .values(failed=batches.c.failed + count, cancelled=batches.c.cancelled + cancelled)
                )
        return count

    def iter_results(
        self, batch_id: str, *, after_line: int = 0, ok: bool | None = None, max_bytes: int = RESULT_PAGE_BYTES
    ) -> AsyncIterator[Row]:
        """Every result of a batch in line order, read in pages bounded by rows and by answer bytes."""
        return self._iter_results(batch_id, results.c.line_no, after_line, None, ok, max_bytes)

    def iter_results_by_seq(
        self,
        batch_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        ok: bool | None = None,
        max_bytes: int = RESULT_PAGE_BYTES,
    ) -> AsyncIterator[Row]:
        """Results in the order they were stored, each with its request's endpoint: a cursor on `seq`
        never skips or repeats one."""
        return self._iter_results(batch_id, results.c.seq, after_seq, limit, ok, max_bytes)

    async def _iter_results(
        self, batch_id: str, key: Any, after: int, limit: int | None, ok: bool | None, max_bytes: int
    ) -> AsyncIterator[Row]:
        """Sizes first (a cheap index walk), then the rows in groups of at most `max_bytes` of bodies
        (a larger body comes alone): memory is bounded by a constant, not by the answers' sizes."""
        where = [results.c.batch_id == batch_id]
        if ok is not None:
            where.append(results.c.ok == ok)
        left = limit
        while left is None or left > 0:
            page = RESULT_PAGE_ROWS if left is None else min(left, RESULT_PAGE_ROWS)
            sizes_query = (
                select(key, func.coalesce(func.length(results.c.body), 0))
                .where(*where, key > after)
                .order_by(key)
                .limit(page)
            )
            async with self.engine.connect() as conn:
                sizes = (await conn.execute(sizes_query)).all()
            if not sizes:
                return
            for first, last in _groups_by_size(sizes, max_bytes):
                query = (
                    select(results, requests.c.endpoint)
                    .join(
                        requests,
                        and_(requests.c.batch_id == results.c.batch_id, requests.c.line_no == results.c.line_no),
                        isouter=True,
                    )
                    .where(*where, key >= first, key <= last)
                    .order_by(key)
                )
                async with self.engine.connect() as conn:
                    rows = list((await conn.execute(query)).mappings())
                rows.reverse()
                while rows:  # popped, so a row the caller is done with is not held by this page
                    yield rows.pop()
            after = sizes[-1][0]
            if left is not None:
                left -= len(sizes)
            if len(sizes) < page:
                return

    async def referenced_blob_keys(self) -> set[str]:
        """Blobs something points at: file rows and the segments of requests added to open batches."""
        async with self.engine.connect() as conn:
            keys = set((await conn.execute(select(files.c.id))).scalars())
            keys |= set(
                (
                    await conn.execute(select(requests.c.blob_key).where(requests.c.blob_key.is_not(None)).distinct())
                ).scalars()
            )
        return keys

    async def segment_keys(self, batch_id: str) -> list[str]:
        """Blobs holding requests added to an open batch (not its input file)."""
        query = (
            select(requests.c.blob_key)
            .where(requests.c.batch_id == batch_id, requests.c.blob_key.is_not(None))
            .distinct()
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def request_page(self, batch_id: str, after_line: int, limit: int) -> list[Row]:
        """Requests in the order they were added, each with its result's outcome if it has one."""
        query = (
            select(
                requests.c.line_no,
                requests.c.custom_id,
                requests.c.state,
                requests.c.endpoint,
                requests.c.created_at,
                results.c.ok,
                results.c.error_code,
                results.c.finished_at,
            )
            .join(
                results,
                and_(results.c.batch_id == requests.c.batch_id, results.c.line_no == requests.c.line_no),
                isouter=True,
            )
            .where(requests.c.batch_id == batch_id, requests.c.line_no > after_line)
            .order_by(requests.c.line_no)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def usage_by_endpoint(self, batch_id: str) -> list[Row]:
        """Requests answered and tokens used per endpoint (null endpoint: the batch's own)."""
        query = (
            select(
                requests.c.endpoint,
                func.count().label("requests"),
                func.coalesce(func.sum(results.c.input_tokens), 0).label("input_tokens"),
                func.coalesce(func.sum(results.c.output_tokens), 0).label("output_tokens"),
            )
            .select_from(
                results.join(
                    requests, and_(requests.c.batch_id == results.c.batch_id, requests.c.line_no == results.c.line_no)
                )
            )
            .where(results.c.batch_id == batch_id, results.c.status_code.is_not(None))
            .group_by(requests.c.endpoint)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def append_requests(
        self, batch_id: str, rows: list[dict[str, Any]], model: str, max_total: int, quota: Quota | None = None
    ) -> int:
        """Add requests to an open batch, all or nothing; returns the new total.

        Line numbers continue from the batch's total, taken under the batch row's lock, so
        concurrent add-calls never collide.
        """
        lock = self.dialect == "postgresql"
        async with self.engine.begin() as conn:
            if quota is not None:  # the team's lock first, then the batch's: the order every writer takes
                await self._check_quota(conn, quota)
            query = select(
                batches.c.status, batches.c.sealed, batches.c.total, batches.c.model, batches.c.expires_at
            ).where(batches.c.id == batch_id)
            batch = (await conn.execute(query.with_for_update() if lock else query)).first()
            running = batch is not None and batch.status == BatchStatus.IN_PROGRESS
            if batch is None or batch.sealed or not running or batch.expires_at <= time.time():
                status = BatchStatus.EXPIRED if running else None
                raise BatchClosed(status or (batch.status if batch else "missing"), bool(batch and batch.sealed))
            if batch.model is not None and batch.model != model:
                raise MismatchedModel(batch.model)
            if batch.total + len(rows) > max_total:
                raise BatchFull(batch.total)
            ids = [r["custom_id"] for r in rows]
            taken: list[str] = []
            for chunk in _chunks(ids, 500):
                taken += (
                    (
                        await conn.execute(
                            select(requests.c.custom_id).where(
                                requests.c.batch_id == batch_id, requests.c.custom_id.in_(chunk)
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
            if taken:
                raise DuplicateRequestIds(taken)
            numbered = [{**row, "batch_id": batch_id, "line_no": batch.total + i + 1} for i, row in enumerate(rows)]
            await conn.execute(insert(requests), numbered)
            total = batch.total + len(rows)
            await conn.execute(update(batches).where(batches.c.id == batch_id).values(total=total, model=model))
        return total


async def _queued_requests(conn: Any, team_id: str) -> int:
    """Requests of a team's unfinished batches that have no result yet (plus files still validating)."""
    query = select(func.coalesce(func.sum(batches.c.total - batches.c.completed - batches.c.failed), 0)).where(
        batches.c.team_id == team_id, batches.c.status.in_(ACTIVE)
    )
    validating = (
        select(func.coalesce(func.sum(files.c.lines), 0))
        .select_from(batches.join(files, files.c.id == batches.c.input_file_id))
        .where(batches.c.team_id == team_id, batches.c.status == BatchStatus.VALIDATING)
    )
    return int((await conn.execute(query)).scalar_one()) + int((await conn.execute(validating)).scalar_one())


def _team_lock_key(team_id: str | None) -> int:
    """A stable 63-bit advisory lock key per team ("" for the admin)."""
    digest = hashlib.blake2b(f"team-quota:{team_id or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _groups_by_size(sizes: Sequence[Any], max_bytes: int) -> Iterable[tuple[int, int]]:
    """(first, last) key ranges of consecutive rows whose bodies add up to at most `max_bytes`."""
    start, total = sizes[0][0], 0
    previous = start
    for position, size in sizes:
        if total and total + size > max_bytes:
            yield start, previous
            start, total = position, 0
        total += size
        previous = position
    yield start, previous


def _insert_ignore(dialect: str, table: Any) -> Any:
    if dialect == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()


def _result_row(f: FinishedRequest) -> dict[str, Any]:
    return {
        "batch_id": f.batch_id,
        "line_no": f.line_no,
        "custom_id": f.custom_id,
        "ok": f.ok,
        "status_code": f.status_code,
        "upstream_request_id": f.upstream_request_id,
        "body": f.body,
        "error_code": f.error_code,
        "error_message": f.error_message,
        "finished_at": f.finished_at,
        "input_tokens": f.input_tokens,
        "output_tokens": f.output_tokens,
    }


# The group commit's statements, built once: constructing Core expressions on every flush (one per
# batch with results in it) cost more than running them.
_COUNTERS = ("completed", "failed", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
_MARK_DONE = (
    update(requests)
    .where(requests.c.batch_id == bindparam("b_id"), requests.c.line_no == bindparam("b_line"))
    .values(state=RequestState.DONE, lease_owner=None, lease_until=None)
)
_BUMP_COUNTERS = (
    update(batches)
    .where(batches.c.id == bindparam("b_id"))
    .values({getattr(batches.c, k): getattr(batches.c, k) + bindparam(f"d_{k}") for k in _COUNTERS})
)


def _counter_deltas(inserted: Iterable[FinishedRequest]) -> dict[str, dict[str, int]]:
    """Per batch, what the inserted results add to its counters (every counter, zeros included,
    so all rows of the executemany have the same parameters)."""
    deltas: dict[str, dict[str, int]] = {}
    for f in inserted:
        d = deltas.setdefault(f.batch_id, dict.fromkeys(_COUNTERS, 0))
        d["completed" if f.ok else "failed"] += 1
        d["input_tokens"] += f.input_tokens
        d["cached_tokens"] += f.cached_tokens
        d["output_tokens"] += f.output_tokens
        d["reasoning_tokens"] += f.reasoning_tokens
    return deltas


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _not_expired(now: int) -> Any:
    return or_(files.c.expires_at.is_(None), files.c.expires_at > now)


def _for_team(query: Any, table: Any, team_id: str | None) -> Any:
    """Scope a query to one team; None means the admin, who sees everything."""
    return query if team_id is None else query.where(and_(table.c.team_id == team_id))


# ---------------------------------------------------------------- the web console (api/console.py)
# Module-level so they sit apart from the engine's queries above; each takes the Store.
async def console_batch_page(
    store: Store,
    *,
    team_id: str | None,
    after: str | None,
    limit: int,
    status: str | None = None,
    model: str | None = None,
    metadata_contains: str | None = None,
) -> list[Row]:
    """Batches newest first, filtered, after the id `after`: one walk down the id (or team, id) index
    that stops at `limit` matches, so a page costs the rows walked to fill it (a rare filter walks
    the team's whole history; measured in README). `metadata_contains` is a substring of the
    metadata JSON, matched case-sensitively (LIKE is not, on SQLite)."""
    query = _for_team(select(batches), batches, team_id)
    if after:
        query = query.where(batches.c.id < after)
    if status:  # as an expression, not the bare column: walk the id order, never sort a status's rows
        query = query.where(func.coalesce(batches.c.status, "") == status)
    if model:
        query = query.where(batches.c.model == model)
    if metadata_contains:
        find = func.strpos if store.dialect == "postgresql" else func.instr
        query = query.where(find(batches.c.metadata, metadata_contains) > 0)
    query = query.order_by(batches.c.id.desc()).limit(limit)
    async with store.engine.connect() as conn:
        return list((await conn.execute(query)).mappings())


async def console_request_page(
    store: Store, batch_id: str, *, after_line: int, limit: int, state: str | None = None
) -> list[Row]:
    """A batch's requests in line order with their attempts and, once finished, their result's outcome."""
    query = (
        select(
            requests.c.line_no,
            requests.c.custom_id,
            requests.c.state,
            requests.c.attempts,
            requests.c.next_attempt_at,
            results.c.ok,
            results.c.status_code,
            results.c.error_code,
            results.c.finished_at,
        )
        .join(
            results,
            and_(results.c.batch_id == requests.c.batch_id, results.c.line_no == requests.c.line_no),
            isouter=True,
        )
        .where(requests.c.batch_id == batch_id, requests.c.line_no > after_line)
    )
    if state:
        query = query.where(requests.c.state == state)
    async with store.engine.connect() as conn:
        return list((await conn.execute(query.order_by(requests.c.line_no).limit(limit))).mappings())


async def console_result(
    store: Store, batch_id: str, *, line_no: int | None = None, custom_id: str | None = None
) -> Row | None:
    """One request's stored result, by line number or custom_id (None: no such request, or not finished)."""
    if custom_id is not None:  # through requests' unique (batch_id, custom_id) index
        line = select(requests.c.line_no).where(requests.c.batch_id == batch_id, requests.c.custom_id == custom_id)
        query = select(results).where(results.c.batch_id == batch_id, results.c.line_no == line.scalar_subquery())
    else:
        query = select(results).where(results.c.batch_id == batch_id, results.c.line_no == line_no)
    async with store.engine.connect() as conn:
        return (await conn.execute(query.limit(1))).mappings().first()


# The bucket refilled to `now` (capped at rpm), then a token taken if one is whole. In an UPDATE every
# SET expression sees the row as it was, so `refilled` is written out where it is needed.
# `greatest`: a take that read the clock first may commit second; time never runs backwards here.
_REFILLED = "least(CAST(:rpm AS float8), b.tokens + greatest(excluded.updated - b.updated, 0) * CAST(:rate AS float8))"
_TAKE_KEY_TOKEN = text(f"""
    INSERT INTO key_rate_buckets AS b (key_id, tokens, updated, granted)
    VALUES (:key_id, CAST(:rpm AS float8) - 1, extract(epoch from clock_timestamp())::float8, true)
    ON CONFLICT (key_id) DO UPDATE SET
        tokens = CASE WHEN {_REFILLED} >= 1 THEN {_REFILLED} - 1 ELSE {_REFILLED} END,
        granted = {_REFILLED} >= 1,
        updated = greatest(b.updated, excluded.updated)
    RETURNING granted, tokens
""")


# ---------------------------------------------------------------- deployment activity (scale-out console)
ACTIVITY_COLUMNS = ("requests", "tokens", "throttled", "errors", "peak_in_flight", "circuit_open")


async def publish_activity(store: Store, owner: str, rows: list[dict[str, Any]], keep_from_minute: int) -> None:
    """Store this engine's latest minutes (totals, so a repeat is harmless) and drop hour-old ones."""
    async with store.engine.begin() as conn:
        await conn.execute(delete(deployment_minutes).where(deployment_minutes.c.minute < keep_from_minute))
        if not rows:
            return
        insert_ = pg_insert if store.dialect == "postgresql" else sqlite_insert
        statement = insert_(deployment_minutes)
        statement = statement.on_conflict_do_update(
            index_elements=["owner", "deployment", "minute"],
            set_={name: statement.excluded[name] for name in ACTIVITY_COLUMNS},
        )
        await conn.execute(statement, [{"owner": owner, **row} for row in rows])


async def activity_minutes(store: Store, from_minute: int, exclude_owner: str | None) -> list[Row]:
    """Every other engine's published minutes since `from_minute`."""
    query = select(deployment_minutes).where(deployment_minutes.c.minute >= from_minute)
    if exclude_owner is not None:
        query = query.where(deployment_minutes.c.owner != exclude_owner)
    async with store.engine.connect() as conn:
        return list((await conn.execute(query)).mappings())
