"""The state store: SQLModel tables on an async SQLAlchemy engine (SQLite in WAL mode by default).

The schema is owned by the Alembic migrations under ``migrations/``; ``migrate()`` brings a database to
head and the daemon calls it on start. Rows map to the pure records of ``domain`` here and nowhere else.

Invariants the database itself enforces:
- one pod slot is never held by two active leases (partial unique index ``ux_leases_active_slot``);
- an idempotency key names one lease (unique index);
- a RunPod pod id belongs to one record (unique index).
Conditional updates (``... WHERE state = 'pending'``) make lease changes safe against the API and the
reconcile loop acting at the same moment.

The live view (an informer's cache, in Kubernetes terms): the controller is the only writer of its database,
so the store keeps the live pods, the active leases, the policy and the GPU types in memory. ``open()``
loads them once; every write then applies the rows it changed (``RETURNING``) right after its commit and
before it leaves its session, so changes land in commit order (one writer connection, and nothing awaits
between a commit and its apply; closing a session does, which is why the apply comes first). Reads on the API's hot
path and the loop's planning state come from there: a statement through the async engine costs ~0.6 ms
of CPU, which at 200 requests/s plus a pass over 1,000 leases was the API's p99. Ended leases and
terminated pods leave the view and are read from the database when asked for.

One controller per database: ``claim()`` takes the controller lock (``claim`` module) before anything else
touches the database, a background task renews it, ``close()`` releases it; a store that lost its claim
refuses writes.

Errors: ``StoreError``, with ``SlotTaken`` (the slot invariant), ``DuplicateKey`` and ``StoreLocked``
(another controller holds the database), chained from SQLAlchemy's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import event, exists, or_, text
from sqlalchemy.exc import ArgumentError, IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from . import claim as claims
from .domain import (
    ACTIVE_LEASE_STATES,
    ClaimPath,
    Lease,
    LeaseState,
    Pod,
    PodPhase,
    PodRole,
    Policy,
    check_lease_transition,
    check_pod_transition,
    waiting_for,
)
from .tables import EventRow, GpuTypeRow, LeaseRow, PodRow, PolicyRow, SpendDailyRow, SpendRow

log = logging.getLogger(__name__)
_ACTIVE = tuple(state.value for state in ACTIVE_LEASE_STATES)
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class StoreError(Exception):
    """The state store refused or failed an operation."""


class SlotTaken(StoreError):
    """Another active lease holds that pod slot."""


class DuplicateKey(StoreError):
    """A lease with that idempotency key exists already."""


class StoreLocked(StoreError):
    """Another controller holds this database, or took it over from this one. ``holder`` names it where known;
    the message is the one line to show the operator."""

    def __init__(self, message: str, holder: claims.Holder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


# ------------------------------------------------------------------------------------------------- store


def async_url(url: str) -> str:
    """``url`` with an async driver: a bare ``postgresql://`` (or ``postgres://``) URL gets asyncpg, the driver
    of the ``postgres`` extra (SQLAlchemy's own default differs between versions, and is not always async)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+asyncpg://" + url.removeprefix(bare)
    return url


def sync_url(url: str) -> str:
    """The synchronous driver URL Alembic uses for an async URL."""
    return async_url(url).replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")


def _unusable_url(url: str, e: Exception) -> StoreError:
    """A driver that is not installed, or a URL SQLAlchemy cannot read: say which, never with the URL's
    credentials."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    hint = " (install the postgres extra: pip install 'harper-voice-pods[postgres]')" if "postgres" in scheme else ""
    what = f"a {scheme}:// database URL" if scheme else "the database URL"
    return StoreError(f"cannot use {what}: {e}{hint}")


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (blocking; run it in a thread from async code)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    try:
        command.upgrade(cfg, "head")
    except (ImportError, ArgumentError) as e:  # the engine could not be made: no driver, or a malformed URL
        raise _unusable_url(url, e) from e


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    # No checkpoint inside a commit (it would stall every writer behind it for the fsync): the loop runs a
    # PASSIVE checkpoint off the write path after each pass instead (``Store.checkpoint``).
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    """Open with ``await store.open()`` before use. Rows it hands out are shared with the live view: read
    them, never change them."""

    def __init__(self, url: str) -> None:
        self.url = url = async_url(url)
        self._pods: dict[str, PodRow] = {}  # every pod but terminated ones
        self._leases: dict[str, LeaseRow] = {}  # active leases (pending, ready)
        self._records: dict[str, Lease] = {}  # the same leases as domain records, for the planner
        self._queued: set[str] = set()  # pending leases on no pod yet (the queue)
        self._ended: Counter[str] = Counter()  # ended leases by state (the ``harper_leases`` gauge)
        self._policy: Policy | None = None
        self._gpu_types: dict[str, GpuTypeRow] = {}
        self._beats: dict[str, tuple[float, float]] = {}  # lease id -> (expires_at, now), not yet written
        self._writing: dict[str, tuple[float, float]] = {}  # the batch being written now
        self._beat_writer: asyncio.Task | None = None
        # the controller lock, once claimed
        self._token: str | None = None
        self.took_over: claims.Holder | None = None  # the controller this one replaced: it died holding the lock
        self._clock: Callable[[], float] = time.time
        self._renew_s = claims.RENEW_S
        self._renewed_at = 0.0
        self._lost: StoreLocked | None = None
        self._renewer: asyncio.Task | None = None
        # Writes queue in-process on one connection, on every database: the live view applies each write's
        # rows right after its commit, which matches the database's commit order only if commits cannot
        # overtake each other. (On PostgreSQL, writers on a pool raced: a row read before another
        # connection's commit was applied after it.) SQLite has one writer at a time anyway, and a writer
        # that finds the lock taken sleeps in its busy handler (milliseconds at a time). Reads use a pool
        # of their own (on SQLite, WAL lets them run beside the writer). The session already rolls back
        # what it leaves open; a second reset on return would be a wasted round trip.
        self.sqlite = url.startswith("sqlite")
        try:
            self.engine: AsyncEngine = create_async_engine(
                url, pool_reset_on_return=None, pool_size=1, max_overflow=0
            )
            self.reader: AsyncEngine = create_async_engine(url, pool_reset_on_return=None)
        except (ImportError, ArgumentError, InvalidRequestError) as e:  # InvalidRequestError: a sync-only driver
            raise _unusable_url(url, e) from e
        if self.sqlite:
            for engine in (self.engine, self.reader):
                event.listen(engine.sync_engine, "connect", _sqlite_pragmas)

    async def open(self) -> Store:
        """Load the live view from the database (call once, before use)."""
        async with self.reading() as s:
            pods = (await s.exec(select(PodRow).where(col(PodRow.phase) != PodPhase.TERMINATED.value))).all()
            leases = (await s.exec(select(LeaseRow).where(col(LeaseRow.state).in_(_ACTIVE)))).all()
            ended = (await s.exec(text(
                "SELECT state, COUNT(*) FROM leases WHERE state NOT IN ('pending', 'ready') GROUP BY state"))).all()
            policy = await s.get(PolicyRow, 1)
            gpu_types = (await s.exec(select(GpuTypeRow))).all()
        self._pods = {row.id: row for row in pods}
        self._leases, self._records, self._queued = {}, {}, set()
        for row in leases:
            self._keep_lease(row)
        self._ended = Counter({state: count for state, count in ended})
        self._policy = Policy.model_validate_json(policy.body) if policy else None
        self._gpu_types = {row.gpu_type: row for row in gpu_types}
        return self

    # -- the live view: applied after each commit
    def _keep_pod(self, row: PodRow) -> PodRow:
        if row.phase == PodPhase.TERMINATED.value:
            self._pods.pop(row.id, None)
        else:
            self._pods[row.id] = row
        return row

    def _keep_lease(self, row: LeaseRow) -> LeaseRow:
        beat = self._beats.get(row.id) or self._writing.get(row.id)
        if beat is not None and beat[0] > row.expires_at:  # a row read back before its heartbeat is written
            row = row.model_copy(update={"expires_at": beat[0]})
        if row.state == LeaseState.PENDING.value and row.pod_id is None:
            self._queued.add(row.id)
        else:
            self._queued.discard(row.id)
        if row.state in _ACTIVE:
            self._leases[row.id] = row
            self._records[row.id] = _lease_record(row)
        elif self._leases.pop(row.id, None) is not None:
            del self._records[row.id]
            self._ended[row.state] += 1
        return row

    async def checkpoint(self) -> None:
        """Copy the WAL into the database file without blocking writers (SQLite only)."""
        if self.sqlite:
            async with self.reader.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), 10)
        except TimeoutError:
            log.error("closing with %d heartbeats not stored", len(self._beats))
        await self._release()
        await self.engine.dispose()
        await self.reader.dispose()

    def session(self) -> AsyncSession:
        """A session for changes (and reads that must see them in the same transaction). Refused once this
        store's claim on the database is lost, or overdue (``StoreLocked``)."""
        if self._token is not None:
            self._check_claim()
        return AsyncSession(self.engine, expire_on_commit=False)

    def reading(self) -> AsyncSession:
        return AsyncSession(self.reader, expire_on_commit=False)

    # -- the controller lock (``claim`` module)
    async def claim(
        self, me: claims.Claimant, clock: Callable[[], float] = time.time, renew_s: float = claims.RENEW_S
    ) -> None:
        """Take this database for this controller before anything else touches it, or raise ``StoreLocked``
        naming the controller that holds it. The claim is renewed every ``renew_s`` (wall-clock ``clock``)
        from then on, and released by ``close()``."""
        now = clock()
        try:
            token, replaced = await claims.take(self.engine, me, now, renew_s * claims.STALE_AFTER_RENEWALS)
        except claims.Refused as e:
            raise StoreLocked(claims.refusal(e.holder, now), e.holder) from None
        except RuntimeError as e:
            raise StoreError(f"could not claim the database: {e}") from e
        if replaced is not None:
            log.warning("took over the database from a controller that stopped renewing its claim or is gone: %s",
                        replaced.describe(now))
        self.took_over = replaced
        self._token, self._clock, self._renew_s, self._renewed_at, self._lost = token, clock, renew_s, now, None
        self._renewer = asyncio.create_task(self._keep_claim(), name="controller-lock-renewal")

    @property
    def claim_lost(self) -> StoreLocked | None:
        """Why this store stopped writing, once another controller took the database over."""
        return self._lost

    async def renew_claim(self) -> None:
        """Renew this store's claim now (the background task does it every renew period); raises
        ``StoreLocked`` if another controller has taken the database over."""
        assert self._token is not None, "renew_claim() before claim()"
        now = self._clock()
        if await claims.renew(self.engine, self._token, now):
            self._renewed_at = now
            return
        holder = await claims.read(self.engine)
        taker = holder.describe(now) if holder is not None else "none holds it now"
        self._lost = StoreLocked(
            f"this controller lost the database to another controller ({taker}): it had not renewed its claim "
            "for too long; it stops writing", holder,
        )
        raise self._lost

    def _check_claim(self) -> None:
        if self._lost is not None:
            raise self._lost
        overdue = self._clock() - self._renewed_at
        if overdue > self._renew_s * claims.STALE_AFTER_RENEWALS:
            # Another controller may have taken the database over by now: write nothing until a renewal shows
            # that none did (this controller was paused, or cut off from the database, for that long).
            raise StoreLocked(f"this controller's claim on the database was last renewed {overdue:.0f} s ago; "
                              "not writing until it is renewed")

    async def _keep_claim(self) -> None:
        while True:
            await asyncio.sleep(self._renew_s)
            try:
                await self.renew_claim()
            except StoreLocked as e:
                log.error("%s", e)
                return
            except Exception as e:
                log.warning("renewing the claim on the database failed (retrying in %.0f s): %s", self._renew_s, e)

    async def _release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        token, self._token = self._token, None
        if token is None or self._lost is not None:  # not claimed, or the row is another controller's now
            return
        try:
            await claims.release(self.engine, token)
        except Exception as e:
            log.warning("could not release the claim on the database (a successor waits until it is stale): %s", e)

    # -- policy and GPU types
    @property
    def policy(self) -> Policy | None:
        """The stored policy; None until a database has one (``get_policy`` writes the default)."""
        return self._policy

    async def get_policy(self, default: Policy) -> Policy:
        """The stored policy; a new database gets ``default`` written."""
        if self._policy is None:
            await self.set_policy(default)
        assert self._policy is not None
        return self._policy

    async def set_policy(self, policy: Policy) -> None:
        async with self.session() as s:
            row = await s.get(PolicyRow, 1) or PolicyRow(id=1, body="")
            row.body = policy.model_dump_json()
            s.add(row)
            await s.commit()
            self._policy = policy

    async def gpu_types(self) -> list[GpuTypeRow]:
        return list(self._gpu_types.values())

    async def set_gpu_type(self, gpu_type: str, **values: float) -> None:
        async with self.session() as s:
            row = await s.get(GpuTypeRow, gpu_type) or GpuTypeRow(gpu_type=gpu_type)
            for key, value in values.items():
                setattr(row, key, value)
            s.add(row)
            await s.commit()
            self._gpu_types[gpu_type] = row

    # -- pods
    async def live_pods(self) -> list[PodRow]:
        """Every record that may still have a pod at RunPod (all but terminated)."""
        return list(self._pods.values())

    async def all_pods(self) -> list[PodRow]:
        async with self.reading() as s:
            return list((await s.exec(select(PodRow).order_by(col(PodRow.created_at)))).all())

    async def get_pod(self, pod_id: str) -> PodRow | None:
        if pod_id in self._pods:
            return self._pods[pod_id]
        async with self.reading() as s:  # terminated, or unknown
            return await s.get(PodRow, pod_id)

    async def add_pod(self, row: PodRow, lease_id: str | None = None, now: float = 0.0) -> None:
        """Write a create intent (before the create call), putting ``lease_id`` on its slot 0 if given."""
        async with self.session() as s:
            s.add(row)
            await s.flush()
            lease = None
            if lease_id is not None:
                lease = await self._assign(s, lease_id, row.id, 0, ClaimPath.COLD_CREATE, ready=False, now=now)
            await self._commit(s)
            self._keep_pod(row)
            if lease is not None:
                self._keep_lease(lease)

    async def update_pod(self, pod_id: str, changes: Iterable[tuple[str, object]]) -> PodRow | None:
        async with self.session() as s:
            row = await s.get(PodRow, pod_id)
            if row is None:
                return None
            for field, value in changes:
                if field == "phase":
                    check_pod_transition(PodPhase(row.phase), PodPhase(value))
                setattr(row, field, value.value if isinstance(value, PodRole | PodPhase) else value)
            s.add(row)
            await s.commit()
            return self._keep_pod(row)

    async def mark_unhealthy(self, pod_id: str, now: float) -> None:
        """Take a Ready pod out of the warm pool until a probe finds it healthy again."""
        async with self.session() as s:
            result = await s.exec(
                update(PodRow).where(col(PodRow.id) == pod_id, col(PodRow.unhealthy_since).is_(None))
                .values(unhealthy_since=now).returning(PodRow)
            )
            rows = result.scalars().all()
            await s.commit()
            for row in rows:
                self._keep_pod(row)

    async def begin_resume(self, pod_id: str, lease_id: str | None, now: float) -> bool:
        """Mark a stopped pod as starting (and put the lease on it) in one transaction; False if it moved."""
        async with self.session() as s:
            result = await s.exec(
                update(PodRow)
                .where(col(PodRow.id) == pod_id, col(PodRow.phase) == PodPhase.STOPPED.value)
                .values(phase=PodPhase.STARTING.value, phase_since=now, role=PodRole.SERVING.value)
                .returning(PodRow)
            )
            pod = result.scalars().first()
            if pod is None:
                return False
            lease = None
            if lease_id is not None:
                lease = await self._assign(s, lease_id, pod_id, 0, ClaimPath.STANDBY_RESUME, ready=False, now=now)
            await self._commit(s)
            self._keep_pod(pod)
            if lease is not None:
                self._keep_lease(lease)
            return True

    async def begin_stop(
        self, pod_id: str, now: float, make_standby: bool, force: bool = False, reason: str = ""
    ) -> bool:
        """Mark a pod as stopping unless a lease holds it (checked in the same statement) or ``force``."""
        async with self.session() as s:
            query = update(PodRow).where(
                col(PodRow.id) == pod_id,
                col(PodRow.phase).in_([PodPhase.READY.value, PodPhase.STARTING.value, PodPhase.STOPPING.value]),
            )
            if not force:
                query = query.where(
                    text(
                        "NOT EXISTS (SELECT 1 FROM leases WHERE leases.pod_id = pods.id "
                        "AND leases.state IN ('pending', 'ready'))"
                    )
                )
            values: dict[str, object] = {"phase": PodPhase.STOPPING.value, "phase_since": now}
            if reason:
                values["reason"] = reason[:300]
            if make_standby:
                values["role"] = PodRole.STANDBY.value
            result = await s.exec(query.values(**values).returning(PodRow))
            pod = result.scalars().first()
            await s.commit()
            if pod is not None:
                self._keep_pod(pod)
            return pod is not None

    # -- leases
    async def active_leases(self) -> list[LeaseRow]:
        return list(self._leases.values())

    def is_active(self, lease_id: str) -> bool:
        return lease_id in self._leases

    async def planning_state(self) -> tuple[list[Pod], list[Lease]]:
        """Live pods and active leases as domain records (the lease records are kept ready with the view)."""
        return [_pod_record(row) for row in self._pods.values()], list(self._records.values())

    async def get_lease(self, lease_id: str) -> LeaseRow | None:
        if lease_id in self._leases:
            return self._leases[lease_id]
        async with self.reading() as s:  # ended, or unknown
            return await s.get(LeaseRow, lease_id)

    async def lease_by_key(self, key: str) -> LeaseRow | None:
        async with self.reading() as s:
            return (await s.exec(select(LeaseRow).where(col(LeaseRow.idempotency_key) == key))).first()

    async def list_leases(self, state: str | None = None, limit: int = 1000) -> list[LeaseRow]:
        async with self.reading() as s:
            query = select(LeaseRow).order_by(col(LeaseRow.created_at).desc()).limit(limit)
            if state:
                query = query.where(col(LeaseRow.state) == state)
            return list((await s.exec(query)).all())

    async def leases_on(self, pod_ids: list[str]) -> list[LeaseRow]:
        wanted = set(pod_ids)
        return [row for row in self._leases.values() if row.pod_id in wanted]

    async def insert_lease(self, row: LeaseRow, require_ready_pod: bool = False) -> bool:
        """Insert a lease. With ``require_ready_pod`` (a warm grant onto ``row.pod_id``) the insert happens only
        if that pod is Ready, healthy and uncordoned at that moment: one statement, no window for a stop.
        Raises ``SlotTaken`` or ``DuplicateKey``; returns False if the pod was not Ready."""
        async with self.session() as s:
            try:
                if not require_ready_pod:
                    s.add(row)
                    await s.commit()
                    self._keep_lease(row)
                    return True
                values = row.model_dump()
                columns = ", ".join(values)
                result = await s.exec(
                    text(
                        f"INSERT INTO leases ({columns}) SELECT {', '.join(':' + c for c in values)} "
                        "WHERE EXISTS (SELECT 1 FROM pods WHERE pods.id = :pod_id AND pods.phase = 'ready' "
                        "AND NOT pods.cordoned AND pods.unhealthy_since IS NULL)"
                    ).bindparams(**values)
                )
                await s.commit()
                if result.rowcount != 1:
                    return False
                self._keep_lease(row)
                return True
            except IntegrityError as e:
                await s.rollback()
                if "idempotency_key" in str(e.orig):  # the driver's message, not the SQL around it
                    raise DuplicateKey("that idempotency key names another lease") from e
                raise SlotTaken("that pod slot is held by another active lease") from e

    async def queue_position(self, lease: LeaseRow) -> int:
        """1-based place of a queued lease (oldest first)."""
        key = (lease.created_at, lease.id)
        records = self._records
        return sum(1 for i in self._queued if (records[i].created_at, i) <= key)

    async def queue_length(self) -> int:
        return len(self._queued)

    async def extend_leases(self, until: float) -> int:
        """Let no active lease expire before ``until``; returns how many were extended (``Controller.start``)."""
        async with self.session() as s:
            result = await s.exec(
                update(LeaseRow).where(col(LeaseRow.state).in_(_ACTIVE), col(LeaseRow.expires_at) < until)
                .values(expires_at=until)
            )
            await s.commit()
        for row in list(self._leases.values()):
            if row.expires_at < until:
                self._keep_lease(row.model_copy(update={"expires_at": until}))
        return result.rowcount

    async def queue_head(self) -> str | None:
        """The id of the oldest queued lease (the next one a free slot goes to), or None."""
        records = self._records
        return min(self._queued, key=lambda i: (records[i].created_at, i), default=None)

    async def lease_counts(self) -> dict[str, int]:
        return dict(self._ended + Counter(row.state for row in self._leases.values()))

    async def assign_lease(
        self, lease_id: str, pod_id: str, slot: int, path: ClaimPath, ready: bool, now: float,
        require_ready_pod: bool = False,
    ) -> bool:
        """Put a pending lease on a pod slot (the database refuses a slot held by another active lease). With
        ``require_ready_pod`` only while that pod is Ready, healthy and uncordoned: one statement, no window for a
        stop (as ``insert_lease``)."""
        async with self.session() as s:
            lease = await self._assign(s, lease_id, pod_id, slot, path, ready, now, require_ready_pod)
            await self._commit(s)
            if lease is not None:
                self._keep_lease(lease)
            return lease is not None

    async def _assign(
        self, s: AsyncSession, lease_id: str, pod_id: str, slot: int, path: ClaimPath, ready: bool, now: float,
        require_ready_pod: bool = False,
    ) -> LeaseRow | None:
        """The assignment inside the caller's transaction: the changed lease, or None if it was not pending (or,
        with ``require_ready_pod``, if the pod was not Ready)."""
        values: dict[str, object] = {"pod_id": pod_id, "slot": slot, "path": path.value,
                                     "reason": "" if ready else waiting_for(pod_id)}
        if ready:
            values |= {"state": LeaseState.READY.value, "ready_at": now}
        query = update(LeaseRow).where(
            col(LeaseRow.id) == lease_id, col(LeaseRow.state) == LeaseState.PENDING.value,
            col(LeaseRow.pod_id).is_(None),
        )
        if require_ready_pod:
            query = query.where(exists().where(
                col(PodRow.id) == pod_id, col(PodRow.phase) == PodPhase.READY.value, col(PodRow.cordoned).is_(False),
                col(PodRow.unhealthy_since).is_(None),
            ))
        try:
            result = await s.exec(query.values(**values).returning(LeaseRow))
            return result.scalars().first()
        except IntegrityError as e:  # SQLite checks the unique index at the statement, not at commit
            await s.rollback()
            raise SlotTaken("that pod slot is held by another active lease") from e

    async def warm_candidates(self, sessions_per_pod: int, limit: int = 8) -> list[tuple[PodRow, list[int]]]:
        """Ready pods with a free slot, busiest first (bin-packing), with the slots in use on each."""
        used: dict[str, list[int]] = {}
        for lease in self._records.values():  # slotted records: cheaper to scan than the ORM rows
            if lease.pod_id is not None and lease.slot is not None:
                used.setdefault(lease.pod_id, []).append(lease.slot)
        pods = [
            pod for pod in self._pods.values()
            if pod.phase == PodPhase.READY.value and not pod.cordoned and pod.unhealthy_since is None
            and len(used.get(pod.id, ())) < sessions_per_pod
        ]
        pods.sort(key=lambda pod: (-len(used.get(pod.id, ())), pod.created_at))
        return [(pod, used.get(pod.id, [])) for pod in pods[:limit]]

    async def grant_lease(self, lease_id: str, now: float) -> bool:
        return await self._change_lease(
            update(LeaseRow)
            .where(col(LeaseRow.id) == lease_id, col(LeaseRow.state) == LeaseState.PENDING.value,
                   col(LeaseRow.pod_id).is_not(None))
            .values(state=LeaseState.READY.value, ready_at=now, reason="")
        ) is not None

    async def note_lease(self, lease_id: str, reason: str) -> bool:
        """Say why a pending lease waits (kept current by each pass)."""
        return await self._change_lease(
            update(LeaseRow)
            .where(col(LeaseRow.id) == lease_id, col(LeaseRow.state) == LeaseState.PENDING.value)
            .values(reason=reason[:300])
        ) is not None

    async def free_key(self, lease_id: str) -> None:
        """Let a new lease use an ended lease's idempotency key: the old row keeps it with its id appended."""
        async with self.session() as s:
            await s.exec(
                text("UPDATE leases SET idempotency_key = idempotency_key || '#' || id WHERE id = :id")
                .bindparams(id=lease_id)
            )
            await s.commit()

    async def requeue_lease(self, lease_id: str, reason: str) -> bool:
        return await self._change_lease(
            update(LeaseRow)
            .where(col(LeaseRow.id) == lease_id, col(LeaseRow.state) == LeaseState.PENDING.value)
            .values(pod_id=None, slot=None, path=None, reason=reason)
        ) is not None

    async def end_lease(self, lease_id: str, state: LeaseState, reason: str, now: float) -> LeaseRow | None:
        """Move an active lease to a final state (a no-op on an ended one); returns the row as it now is
        (None if unknown)."""
        check_lease_transition(LeaseState.READY, state)
        if lease_id not in self._leases:
            return await self.get_lease(lease_id)  # ended already, or unknown: nothing to write
        changed = await self._change_lease(
            update(LeaseRow)
            .where(col(LeaseRow.id) == lease_id, col(LeaseRow.state).in_(_ACTIVE))
            .values(state=state.value, reason=reason, ended_at=now)
        )
        return changed or await self.get_lease(lease_id)

    async def _change_lease(self, statement: Any) -> LeaseRow | None:
        """Run one conditional lease UPDATE; the changed row (now in the live view), or None."""
        async with self.session() as s:
            row = (await s.exec(statement.returning(LeaseRow))).scalars().first()
            await s.commit()
            return None if row is None else self._keep_lease(row)

    async def lease_with_pod(self, lease_id: str) -> tuple[LeaseRow | None, PodRow | None]:
        """A lease and its pod (the hot path of GET and heartbeat)."""
        lease = await self.get_lease(lease_id)
        if lease is None or lease.pod_id is None:
            return lease, None
        return lease, await self.get_pod(lease.pod_id)

    async def heartbeat(self, lease_id: str, expires_at: float, now: float) -> tuple[LeaseRow | None, PodRow | None]:
        """Extend an active, unexpired lease; returns the lease (as it now is) and its pod.

        Heartbeats are most of the API's writes. The live view (which the loop expires leases by) takes the
        new expiry at once; the database gets it from a background group commit, a few milliseconds later,
        retried until it lands. So a heartbeat waits for no disk and no writer thread. What a crash in that
        window loses is one extension: the lease keeps the expiry of its previous heartbeat, which the TTL
        covers (clients beat every TTL/3), like a TTL renewal that a Consul leader failover resets."""
        lease = self._leases.get(lease_id)
        if lease is not None and lease.expires_at > now:  # else nothing to extend: answer as it is
            self._beats[lease_id] = (expires_at, now)  # a later beat of the same lease replaces this one
            self._keep_lease(lease)  # which takes the new expiry from the beat
            if self._beat_writer is None or self._beat_writer.done():
                self._beat_writer = asyncio.create_task(self._write_beats(), name="heartbeat-group-commit")
        return await self.lease_with_pod(lease_id)

    async def flush(self) -> None:
        """Wait until every heartbeat taken so far is in the database."""
        while self._beat_writer is not None and not self._beat_writer.done():
            await asyncio.shield(self._beat_writer)

    async def _write_beats(self) -> None:
        while self._beats:
            batch = self._writing = self._beats
            self._beats = {}
            try:
                async with self.session() as s:
                    await s.exec(
                        text(
                            "UPDATE leases SET expires_at = :expires_at WHERE id = :id "
                            "AND state IN ('pending', 'ready') AND expires_at > :now"
                        ),
                        params=[{"id": i, "expires_at": exp, "now": now} for i, (exp, now) in batch.items()],
                    )
                    await s.commit()
            except Exception as e:
                if self._lost is not None:  # another controller owns the database now: nothing to retry
                    log.error("%d heartbeats not stored: %s", len(batch) + len(self._beats), e)
                    self._beats = {}
                    return
                log.error("storing %d heartbeats failed (retrying in 1 s): %s", len(batch), e)
                self._beats = batch | self._beats
                await asyncio.sleep(1.0)
            finally:
                self._writing = {}

    async def _commit(self, s: AsyncSession) -> None:
        try:
            await s.commit()
        except IntegrityError as e:
            await s.rollback()
            if "ux_leases_active_slot" in str(e.orig) or "leases.pod_id, leases.slot" in str(e.orig):
                raise SlotTaken("that pod slot is held by another active lease") from e
            raise StoreError("the state store refused the change") from e

    # -- events and spend
    async def add_events(self, events: list[tuple[float, str, str, str]], keep: int = 5000) -> None:
        if not events:
            return
        async with self.session() as s:
            for time, obj, reason, message in events:
                # Messages quote what others wrote (a pod's log tail, RunPod's errors); PostgreSQL stores no NUL.
                message = message[:1000].replace("\x00", "\ufffd")
                s.add(EventRow(time=time, object=obj, reason=reason, message=message))
            await s.commit()
            await s.exec(
                text("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - :keep").bindparams(keep=keep)
            )
            await s.commit()

    async def events(self, limit: int = 200, obj: str | None = None) -> list[EventRow]:
        async with self.reading() as s:
            query = select(EventRow).order_by(col(EventRow.id).desc()).limit(limit)
            if obj and "/" not in obj:  # a bare id: "l_1f2e" finds "lease/l_1f2e", "pod/..." alike
                bare = or_(col(EventRow.object) == obj, col(EventRow.object).endswith("/" + obj, autoescape=True))
                query = query.where(bare)
            elif obj:
                query = query.where(col(EventRow.object) == obj)
            return list((await s.exec(query)).all())

    async def add_spend(self, amounts: dict[str, tuple[float, float]], day: str = "") -> None:
        """Add ``{key: (usd, seconds)}`` to the running totals per pod, and (with ``day``, a UTC date) the same
        amounts by kind to that day's totals: one transaction."""
        if not amounts:
            return
        by_kind: dict[str, float] = {}
        for key, (usd, _) in amounts.items():
            kind = key.partition(":")[0]
            by_kind[kind] = by_kind.get(kind, 0.0) + usd
        async with self.session() as s:
            await s.exec(
                text(
                    "INSERT INTO spend (key, usd, seconds) VALUES (:key, :usd, :seconds) ON CONFLICT (key) "
                    "DO UPDATE SET usd = spend.usd + excluded.usd, seconds = spend.seconds + excluded.seconds"
                ),
                params=[{"key": k, "usd": usd, "seconds": sec} for k, (usd, sec) in amounts.items()],
            )
            if day:
                await s.exec(
                    text(
                        "INSERT INTO spend_daily (day, kind, usd) VALUES (:day, :kind, :usd) ON CONFLICT (day, kind) "
                        "DO UPDATE SET usd = spend_daily.usd + excluded.usd"
                    ),
                    params=[{"day": day, "kind": kind, "usd": usd} for kind, usd in by_kind.items()],
                )
            await s.commit()

    async def spend_since(self, day: str) -> dict[str, float]:
        """Spend by kind on UTC days from ``day`` (YYYY-MM-DD) on."""
        async with self.reading() as s:
            rows = (await s.exec(select(SpendDailyRow).where(col(SpendDailyRow.day) >= day))).all()
        totals: dict[str, float] = {}
        for row in rows:
            totals[row.kind] = totals.get(row.kind, 0.0) + row.usd
        return totals

    async def spend(self) -> list[SpendRow]:
        async with self.reading() as s:
            return list((await s.exec(select(SpendRow))).all())


def _lease_record(row: LeaseRow) -> Lease:
    return Lease(
        id=row.id, session_id=row.session_id, state=LeaseState(row.state), created_at=row.created_at,
        expires_at=row.expires_at, pod_id=row.pod_id, slot=row.slot,
        path=ClaimPath(row.path) if row.path else None, ready_at=row.ready_at, reason=row.reason,
    )


def _pod_record(row: PodRow) -> Pod:
    values = {name: getattr(row, name) for name in Pod.__slots__}
    values["role"], values["phase"] = PodRole(row.role), PodPhase(row.phase)
    values["cordoned"], values["was_ready"] = bool(row.cordoned), bool(row.was_ready)
    return Pod(**values)


def dumps(body: object) -> str:
    return json.dumps(body, separators=(",", ":"), sort_keys=True)
