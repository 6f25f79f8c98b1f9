"""The four-eyes limits: above one, money moves only once a second person agrees.

- `refund`: a complaint's refund to a card (`gateways.service_desk.complaints`), and a refund
  of an expired top-up paid in cash at the counter (`settlement.top_up_refunds`).
- `write_off`: an unexplained bank statement line parked in suspense (`settlement.actions`).

Each has one home, the database (`four_eyes_limits`, migration 0020), so that the pages of
every `ksh serve` process and every `ksh` command enforce the same figure, and its history says
who set it, when and why. Until one is set, the default: Rp 1,000,000 each. A supervisor sets
one (`ksh settle limit NAME RUPIAH --as USERNAME --reason TEXT`, which writes each step to
`staff_actions` as `four_eyes_limit_<outcome>`; no page changes it). Lowering takes effect at
once; raising waits for a second supervisor asking for the same figure, else one person could
raise the bar and then act alone below it.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg

from gateways.staff import Role, StaffMember, reason_problem


class Limit(enum.StrEnum):
    refund = "refund"
    write_off = "write_off"


default_rupiah = 1_000_000
rupiah_max = 1_000_000_000_000  # a bound on typing errors, far above any card or statement line


class LimitError(ValueError):
    """A change of a limit refused: nothing written."""


class Outcome(enum.StrEnum):
    lowered = "lowered"  # in force
    raise_asked = "raise_asked"  # not yet: until another supervisor asks the same
    raise_confirmed = "raise_confirmed"  # in force

    @property
    def in_force(self) -> bool:
        return self is not Outcome.raise_asked


class Asked(NamedTuple):
    outcome: Outcome
    was_rupiah: int  # the limit in force before, read under the table's lock


@dataclass(frozen=True, slots=True)
class LimitChange:
    change_id: int
    limit: Limit
    rupiah: int
    asked_by: str
    asked_at: dt.datetime
    reason: str
    confirmed_by: str | None
    confirmed_at: dt.datetime | None


def _change(row: asyncpg.Record) -> LimitChange:
    return LimitChange(
        row["change_id"],
        Limit(row["limit_name"]),
        int(row["limit_rupiah"]),
        row["asked_by"],
        row["asked_at"],
        row["reason"],
        row["confirmed_by"],
        row["confirmed_at"],
    )


async def limit_rupiah(connection: asyncpg.Connection, limit: Limit) -> int:
    """The limit in force: above it, a second person."""
    value = await connection.fetchval(
        "select limit_rupiah from four_eyes_limits where limit_name = $1 "
        "and confirmed_by is not null order by change_id desc limit 1",
        limit.value,
    )
    return default_rupiah if value is None else int(value)


async def changes(
    connection: asyncpg.Connection, limit: Limit, *, newest: int = 20
) -> list[LimitChange]:
    """The limit's history, newest first."""
    rows = await connection.fetch(
        "select * from four_eyes_limits where limit_name = $1 order by change_id desc limit $2",
        limit.value,
        newest,
    )
    return [_change(row) for row in rows]


async def set_limit(
    connection: asyncpg.Connection,
    limit: Limit,
    rupiah: int,
    member: StaffMember,
    reason: str,
    *,
    now: dt.datetime,
) -> Asked:
    """A supervisor asks for `rupiah` as `limit`: lower, in force at once; higher, in force
    when a second supervisor asks for the same figure while it is the newest request."""
    if member.role is not Role.supervisor:
        article = "an" if member.role.value[0] in "aeiou" else "a"
        raise LimitError(
            f"{member.username} is {article} {member.role.value}; a supervisor sets limits"
        )
    if not 0 <= rupiah <= rupiah_max:
        raise LimitError(f"a limit is 0 to {rupiah_max:,} rupiah, not {rupiah:,}")
    if problem := reason_problem(reason):
        raise LimitError(problem)
    async with connection.transaction():
        # One change at a time: two supervisors asking at once see each other's request.
        await connection.execute("lock table four_eyes_limits in share row exclusive mode")
        in_force = await limit_rupiah(connection, limit)
        if rupiah == in_force:
            raise LimitError(f"the {limit.value} limit is Rp {in_force:,} already")
        newest = await connection.fetchrow(
            "select * from four_eyes_limits where limit_name = $1 order by change_id desc limit 1",
            limit.value,
        )
        asked = newest is not None and newest["confirmed_by"] is None
        if rupiah < in_force:
            await _insert(connection, limit, rupiah, member, reason, now, confirmed=True)
            return Asked(Outcome.lowered, in_force)
        if asked and newest["limit_rupiah"] == rupiah and newest["asked_by"] != member.username:
            await connection.execute(
                "update four_eyes_limits set confirmed_by = $2, confirmed_at = $3 "
                "where change_id = $1",
                newest["change_id"],
                member.username,
                now,
            )
            return Asked(Outcome.raise_confirmed, in_force)
        if asked and newest["limit_rupiah"] == rupiah:
            raise LimitError(
                f"you asked for Rp {rupiah:,} already: a second supervisor confirms a raise"
            )
        await _insert(connection, limit, rupiah, member, reason, now, confirmed=False)
        return Asked(Outcome.raise_asked, in_force)


async def _insert(
    connection: asyncpg.Connection,
    limit: Limit,
    rupiah: int,
    member: StaffMember,
    reason: str,
    now: dt.datetime,
    *,
    confirmed: bool,
) -> None:
    await connection.execute(
        "insert into four_eyes_limits (limit_name, limit_rupiah, asked_by, asked_at, reason, "
        "confirmed_by, confirmed_at) values ($1, $2, $3, $4, $5, $6, $7)",
        limit.value,
        rupiah,
        member.username,
        now,
        reason.strip(),
        member.username if confirmed else None,
        now if confirmed else None,
    )
