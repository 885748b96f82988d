"""One controller per database: the controller lock, a lease-style row held in the database itself.

Two controllers on one database would each adopt, create and terminate the other's pods, so the second
must refuse to start. The lock lives in the database (table ``controller_lock``, one row) so that it holds
wherever the database is shared: a SQLite file on one machine, or a PostgreSQL server many hosts reach.

The row names its holder (host, pid, API URL, when it claimed) and carries a random claim token, the time
of its last renewal and after how long without one it is stale (3x the renew period). In the flow:
``app`` migrates, then ``Store.claim()`` takes the row before anything else reads or writes; the store renews
it in the background and ``Store.close()`` deletes it. A claim succeeds when the row is absent, or stale, or
its holder is provably dead (same machine and process namespace, process gone: a crashed or SIGKILLed
controller's successor on the same machine starts at once); otherwise it fails naming the holder.
Taking the row over is one conditional UPDATE on the old token, so two claimants cannot both win.

A holder that finds its token gone at a renewal (it was stale: paused, cut off from the database) has lost
the database to another controller, and its store refuses further writes. Staleness compares the holder's
wall-clock renewal time with the claimant's wall clock: hosts sharing a database need clocks within a few
seconds of each other (NTP), well inside the 30 s.

This module holds the records, the decisions and the statements on the row; the store owns the renewal
task and refuses writes once its claim is lost or overdue.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, delete, update
from sqlmodel.ext.asyncio.session import AsyncSession

from .tables import LockRow

RENEW_S = 10.0  # how often the holder renews its claim
STALE_AFTER_RENEWALS = 3  # a claim not renewed for this many periods may be taken over


@dataclass(frozen=True, slots=True)
class Claimant:
    """Who is asking for the database: this process."""

    host: str
    pid: int
    process: str  # ``process_key()``: "" where liveness cannot be checked
    api_url: str = ""

    @classmethod
    def here(cls, api_url: str = "") -> Claimant:
        return cls(host=socket.gethostname(), pid=os.getpid(), process=process_key(os.getpid()), api_url=api_url)


@dataclass(frozen=True, slots=True)
class Holder:
    """The lock row as read from the database."""

    token: str
    host: str
    pid: int
    process: str
    api_url: str
    since: float
    renewed_at: float
    stale_after_s: float

    def is_stale(self, now: float) -> bool:
        return now - self.renewed_at > self.stale_after_s

    def describe(self, now: float) -> str:
        api = f" (API {self.api_url})" if self.api_url else ""
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"host {self.host} pid {self.pid}{api} since {since}, "
                f"last renewed {max(0.0, now - self.renewed_at):.0f} s ago")


def may_take_over(holder: Holder, now: float, holder_gone: bool) -> bool:
    """Whether a claimant may replace ``holder``: its claim went stale, or its process is known to be gone."""
    return holder.is_stale(now) or holder_gone


def refusal(holder: Holder, now: float) -> str:
    """The one line a second controller stops with."""
    return (f"another controller holds this database: {holder.describe(now)}; "
            f"stop it or wait {holder.stale_after_s:.0f} s after it died")


class Refused(Exception):
    """The claim was refused: ``holder`` holds the database (the store turns this into ``StoreLocked``)."""

    def __init__(self, holder: Holder) -> None:
        super().__init__(holder)
        self.holder = holder


# ------------------------------------------------------------------------------------------------ statements
# Each is one statement in its own transaction: SQLite takes its write lock at the statement (waiting out its
# busy timeout), and a step that loses a race with another claimant reads the row again.


async def take(engine: AsyncEngine, me: Claimant, now: float, stale_after_s: float) -> tuple[str, Holder | None]:
    """Claim the row for ``me``: (the new claim's token, the holder it replaced, if any). Raises ``Refused``
    while another holder's claim is live."""
    token = secrets.token_hex(16)
    values = {"token": token, "host": me.host, "pid": me.pid, "process": me.process, "api_url": me.api_url,
              "since": now, "renewed_at": now, "stale_after_s": stale_after_s}
    for _ in range(5):
        holder = await read(engine)
        async with AsyncSession(engine) as s:
            if holder is None:
                s.add(LockRow(id=1, **values))
                try:
                    await s.commit()
                except IntegrityError:
                    continue  # another claimant inserted it first
                return token, None
            if not may_take_over(holder, now, holder_gone(holder)):
                raise Refused(holder)
            result = await s.exec(
                update(LockRow).where(col(LockRow.id) == 1, col(LockRow.token) == holder.token).values(**values)
            )
            await s.commit()
            if result.rowcount == 1:
                return token, holder
    raise RuntimeError("other controllers kept claiming the database at the same moment")


async def renew(engine: AsyncEngine, token: str, now: float) -> bool:
    """Renew the claim ``token``; False if the row is no longer ours."""
    async with AsyncSession(engine) as s:
        result = await s.exec(
            update(LockRow).where(col(LockRow.id) == 1, col(LockRow.token) == token).values(renewed_at=now)
        )
        await s.commit()
    return result.rowcount == 1


async def release(engine: AsyncEngine, token: str) -> None:
    async with AsyncSession(engine) as s:
        await s.exec(delete(LockRow).where(col(LockRow.id) == 1, col(LockRow.token) == token))
        await s.commit()


async def read(engine: AsyncEngine) -> Holder | None:
    async with AsyncSession(engine) as s:
        row = await s.get(LockRow, 1)
    if row is None:
        return None
    return Holder(
        token=row.token, host=row.host, pid=row.pid, process=row.process, api_url=row.api_url, since=row.since,
        renewed_at=row.renewed_at, stale_after_s=row.stale_after_s,
    )


# ------------------------------------------------------------------------------------------- process liveness
# A pid means one process only within one boot of one machine and one pid namespace, and only while that
# process lives (pids are reused). So the key is boot id, pid namespace and the process's start time: the
# holder is provably gone when a claimant with the same boot and namespace finds no process with its pid and
# start time (or only a zombie). Elsewhere (another host or container, no /proc) nothing is known and only
# staleness counts.


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, or None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name before it may hold spaces and parentheses
    return fields[0], fields[19]


def _namespace() -> str | None:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def process_key(pid: int) -> str:
    """Where and when process ``pid`` runs ("boot/pid-namespace/start time"), or "" where that is unknown."""
    namespace, stat = _namespace(), _stat(pid)
    return f"{namespace}/{stat[1]}" if namespace and stat else ""


def holder_gone(holder: Holder) -> bool:
    """True only when the holder's process is known to be gone (its key is checkable from here)."""
    namespace = _namespace()
    if not holder.process or not namespace or holder.process.rsplit("/", 1)[0] != namespace:
        return False
    stat = _stat(holder.pid)
    return stat is None or stat[0] == "Z" or f"{namespace}/{stat[1]}" != holder.process
