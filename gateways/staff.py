"""Staff as the back office knows them: roles, the bearer tokens each person calls the admin API
with, and the log of what staff did.

A staff token belongs to one person and carries the role it was issued for (`ksh settle staff
USER --issue-token` issues one for a finance staff account, with that account's role). Only its
SHA-256 is stored; it works until revoked. Every action that creates money or changes a party
is written to `staff_actions` (who, in what role, what, on what, why) and to the log.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

logger = logging.getLogger("ksh.staff")

token_length_min = 16  # a token handed in (tests, the demo) must be at least this long
reason_length_max = 500
username_length_max = 64


class Role(enum.StrEnum):
    clerk = "clerk"  # works exceptions, takes counter top-ups, issues cards
    supervisor = "supervisor"  # also approves, registers parties and terminals, unlocks staff
    auditor = "auditor"  # reads everything, changes nothing


# Who may do what (README, "Who can do what"), for the admin API and the `ksh` commands alike.
money_roles = (Role.clerk, Role.supervisor)  # issue cards, take pending top-ups: create money
party_roles = (Role.supervisor,)  # register or suspend operators, merchants, terminals
desk_roles = (Role.clerk, Role.supervisor)  # the service desk: register, block, replace cards
any_role = tuple(Role)


@dataclass(frozen=True, slots=True)
class StaffMember:
    username: str
    role: Role


def reason_problem(reason: str) -> str | None:
    """What is wrong with a reason given for a staff action, or None: every change says why,
    in 1 to `reason_length_max` printable characters."""
    if not reason.strip() or len(reason) > reason_length_max or not reason.isprintable():
        return f"reason says why, in 1 to {reason_length_max} printable characters"
    return None


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def issue_token(
    connection: asyncpg.Connection,
    member: StaffMember,
    *,
    issued_by: str,
    now: datetime,
    label: str = "",
    token: str | None = None,
) -> str:
    """A new bearer token for `member`; returned once, stored hashed. `token` hands in the
    value (tests, the demo); by default it is 32 random bytes."""
    if not 1 <= len(member.username) <= username_length_max:
        raise ValueError(f"a user name has 1 to {username_length_max} characters")
    chosen = token if token is not None else secrets.token_urlsafe(32)
    if len(chosen) < token_length_min:
        raise ValueError(f"a staff token has at least {token_length_min} characters")
    await connection.execute(
        """insert into staff_tokens (token_sha256, username, role, label, issued_by, issued_at)
           values ($1, $2, $3, $4, $5, $6)""",
        token_digest(chosen),
        member.username,
        member.role.value,
        label,
        issued_by,
        now,
    )
    return chosen


async def member_of_token(connection: asyncpg.Connection, token: str) -> StaffMember | None:
    """Whose this token is, or None when it is unknown or revoked."""
    if not token:
        return None
    row = await connection.fetchrow(
        "select username, role from staff_tokens where token_sha256 = $1 and revoked_at is null",
        token_digest(token),
    )
    if row is None:
        return None
    return StaffMember(row["username"], Role(row["role"]))


async def revoke_tokens(connection: asyncpg.Connection, username: str, *, now: datetime) -> int:
    """Revoke every live token of `username`; returns how many."""
    result = await connection.execute(
        "update staff_tokens set revoked_at = $2 where username = $1 and revoked_at is null",
        username,
        now,
    )
    return int(result.split()[-1])


async def set_role_of_tokens(connection: asyncpg.Connection, member: StaffMember) -> None:
    """A person's role changed: their live tokens act in the new role from now on."""
    await connection.execute(
        "update staff_tokens set role = $2 where username = $1 and revoked_at is null",
        member.username,
        member.role.value,
    )


async def record_action(
    connection: asyncpg.Connection,
    *,
    username: str,
    role: str,
    action: str,
    subject: str,
    reason: str,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one staff action to `staff_actions` and to the log (logger `ksh.staff`)."""
    details = detail or {}
    await connection.execute(
        """insert into staff_actions (at, username, role, action, subject, reason, detail)
           values ($1, $2, $3, $4, $5, $6, $7::jsonb)""",
        now,
        username,
        role,
        action,
        subject,
        reason[:reason_length_max],
        json.dumps(details, default=str),
    )
    logger.info(
        "staff action",
        extra={
            "staff": username,
            "role": role,
            "action": action,
            "subject": subject,
            "reason": reason[:reason_length_max],
            **{f"detail_{key}": value for key, value in details.items()},
        },
    )


async def actions_on(
    connection: asyncpg.Connection, subject: str, actions: tuple[str, ...], *, limit: int = 100
) -> list[dict[str, Any]]:
    """The staff actions of the kinds `actions` on `subject`, oldest first: who did what, in
    what role, when and why (what `ksh operator show` and the like print as history)."""
    rows = await connection.fetch(
        """select at, username, role, action, reason, detail from staff_actions
            where subject = $1 and action = any($2::text[]) order by action_id limit $3""",
        subject,
        list(actions),
        limit,
    )
    return [
        {
            **dict(row),
            # text, unless the connection decodes jsonb itself
            "detail": json.loads(row["detail"])
            if isinstance(row["detail"], str)
            else row["detail"],
        }
        for row in rows
    ]
