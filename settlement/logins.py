"""Staff logins against one hostile person: passwords, the lockout, and sessions.

Passwords are hashed with scrypt. A check runs on a worker thread (never on the event loop),
at most `LoginLimits.checks_concurrent_max` at once per process, and costs the same for a user
name that does not exist (it is checked against a hash of a random password).

The lockout lives in the database (`settlement_login_attempts`), so every back-office process
counts the same attempts and a restart forgets nothing. An attempt is counted *before* its
password is checked, by one atomic INSERT ... ON CONFLICT DO UPDATE ... RETURNING per subject
(its user name, then its client address): concurrent attempts queue on the row, and only those
that got a count within the limit are checked. So 25 wrong passwords sent at once are 5 checks
and 20 refusals. A window starts with the first attempt counted and lasts
`LoginLimits.window_seconds`; a right password clears its user name's count and gives its
address's attempt back, so the address counts only wrong ones. A supervisor (or `ksh settle
staff --unlock`) clears a user name's count before its window ends; that is logged.

Sessions are random tokens stored hashed, valid until `session_ttl_seconds` after login, and
ended by logging out, by "log out everywhere", by a supervisor, or by a password or role change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg

from gateways import staff

password_length_min = 10
scrypt_n, scrypt_r, scrypt_p = 2**14, 8, 1  # ~16 MiB, tens of milliseconds per check
session_ttl_seconds = 8 * 3600  # one working shift
subject_length_max = 64  # user names and client addresses are counted up to this length
attempts_counted_max = 1_000_000  # a count stops growing here (it only has to exceed a limit)


@dataclass(frozen=True, slots=True)
class LoginLimits:
    user_attempts_max: int = 5  # password checks per user name per window
    address_attempts_max: int = 20  # wrong passwords per client address per window
    window_seconds: int = 15 * 60
    checks_concurrent_max: int = 2  # scrypt checks running at once in one process

    def __post_init__(self) -> None:
        assert self.user_attempts_max >= 1
        assert self.address_attempts_max >= self.user_attempts_max
        assert self.window_seconds >= 1
        assert self.checks_concurrent_max >= 1


# ---------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=scrypt_n, r=scrypt_r, p=scrypt_p)
    return f"scrypt${scrypt_n}${scrypt_r}${scrypt_p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    try:
        computed = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p)
        )
    except ValueError:  # a damaged stored hash: no one logs in with it, and no 500
        return False
    return hmac.compare_digest(computed.hex(), digest)


# What a user name that does not exist is checked against: the same work, so timing does not
# tell which names exist.
absent_user_hash = hash_password(secrets.token_hex(16))


class PasswordChecker:
    """Checks passwords on worker threads, at most `concurrent_max` at once; the others wait."""

    def __init__(self, concurrent_max: int) -> None:
        assert concurrent_max >= 1
        self._slots = asyncio.Semaphore(concurrent_max)
        self.checks_run = 0

    async def verify(self, password: str, stored: str | None) -> bool:
        async with self._slots:
            self.checks_run += 1
            return await asyncio.to_thread(
                verify_password, password, stored if stored is not None else absent_user_hash
            )


# ---------------------------------------------------------------------------- the lockout


class SubjectKind(enum.StrEnum):
    user = "user"
    address = "address"


class Gate(enum.StrEnum):
    """What the counters say about one login attempt, in the order they are asked."""

    open = "open"  # counted, within both limits: check the password
    address_locked = "address_locked"
    user_locked = "user_locked"


_count_attempt = """
insert into settlement_login_attempts as a (subject_kind, subject, window_started_at, attempts)
values ($1, $2, $3, 1)
on conflict (subject_kind, subject) do update set
    window_started_at = case when a.window_started_at <= $4 then $3 else a.window_started_at end,
    attempts = case when a.window_started_at <= $4 then 1 else least(a.attempts + 1, $5) end
returning attempts
"""


async def count_attempt(
    connection: asyncpg.Connection,
    kind: SubjectKind,
    subject: str,
    *,
    now: dt.datetime,
    limits: LoginLimits,
) -> int:
    """Count one attempt for `subject` (atomically) and return the count in its window."""
    window_start = now - dt.timedelta(seconds=limits.window_seconds)
    attempts = await connection.fetchval(
        _count_attempt,
        kind.value,
        subject[:subject_length_max] or "-",
        now,
        window_start,
        attempts_counted_max,
    )
    return int(attempts)


async def open_gate(
    connection: asyncpg.Connection,
    username: str,
    address: str,
    *,
    now: dt.datetime,
    limits: LoginLimits,
) -> Gate:
    """Count an attempt for the client address, then (if that is within its limit) for the
    user name; `Gate.open` means the password may be checked."""
    by_address = await count_attempt(
        connection, SubjectKind.address, address, now=now, limits=limits
    )
    if by_address > limits.address_attempts_max:
        return Gate.address_locked
    by_user = await count_attempt(connection, SubjectKind.user, username, now=now, limits=limits)
    if by_user > limits.user_attempts_max:
        return Gate.user_locked
    return Gate.open


async def login_succeeded(
    connection: asyncpg.Connection, username: str, address: str, *, now: dt.datetime
) -> None:
    """A right password: the user name starts afresh, the address gets its attempt back, and
    counts whose window is long over are forgotten."""
    await connection.execute(
        "delete from settlement_login_attempts where subject_kind = 'user' and subject = $1",
        username[:subject_length_max],
    )
    await connection.execute(
        """update settlement_login_attempts set attempts = greatest(attempts - 1, 0)
            where subject_kind = 'address' and subject = $1""",
        address[:subject_length_max] or "-",
    )
    await connection.execute(
        "delete from settlement_login_attempts where window_started_at < $1",
        now - dt.timedelta(days=1),
    )


@dataclass(frozen=True, slots=True)
class LockState:
    username: str
    attempts: int
    locked: bool
    window_ends_at: dt.datetime


async def lock_states(
    connection: asyncpg.Connection, *, now: dt.datetime, limits: LoginLimits
) -> dict[str, LockState]:
    """The user names with attempts counted in a window that has not ended."""
    rows = await connection.fetch(
        """select subject, attempts, window_started_at from settlement_login_attempts
            where subject_kind = 'user' and window_started_at > $1""",
        now - dt.timedelta(seconds=limits.window_seconds),
    )
    window = dt.timedelta(seconds=limits.window_seconds)
    return {
        row["subject"]: LockState(
            row["subject"],
            int(row["attempts"]),
            int(row["attempts"]) >= limits.user_attempts_max,
            row["window_started_at"] + window,
        )
        for row in rows
    }


async def unlock(
    connection: asyncpg.Connection,
    username: str,
    *,
    by: str,
    by_role: str,
    reason: str,
    now: dt.datetime,
) -> bool:
    """Clear a user name's count of attempts (logged, whether or not it was locked); True when
    there was one."""
    async with connection.transaction():
        cleared = await connection.fetchval(
            """delete from settlement_login_attempts
                where subject_kind = 'user' and subject = $1 returning attempts""",
            username[:subject_length_max],
        )
        await staff.record_action(
            connection,
            username=by,
            role=by_role,
            action="unlock_login",
            subject=username,
            reason=reason,
            now=now,
            detail={"attempts_cleared": int(cleared or 0)},
        )
    return cleared is not None


# ---------------------------------------------------------------------------- sessions


def session_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str
    csrf_token: str
    expires_at: dt.datetime


async def open_session(
    connection: asyncpg.Connection, username: str, address: str, *, now: dt.datetime
) -> NewSession:
    session = NewSession(
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(24),
        now + dt.timedelta(seconds=session_ttl_seconds),
    )
    await connection.execute("delete from settlement_sessions where expires_at < $1", now)
    await connection.execute(
        """insert into settlement_sessions
               (token_sha256, username, csrf_token, expires_at, created_at, client_address)
           values ($1, $2, $3, $4, $5, $6)""",
        session_digest(session.token),
        username,
        session.csrf_token,
        session.expires_at,
        now,
        address[:subject_length_max],
    )
    return session


async def end_sessions(
    connection: asyncpg.Connection,
    username: str,
    *,
    by: str,
    by_role: str,
    reason: str,
    now: dt.datetime,
) -> int:
    """End every session of `username` (log out everywhere); logged. Returns how many."""
    async with connection.transaction():
        ended = await connection.fetchval(
            """with ended as (delete from settlement_sessions where username = $1
                               returning expires_at)
               select count(*) filter (where expires_at > $2) from ended""",
            username,
            now,
        )
        await staff.record_action(
            connection,
            username=by,
            role=by_role,
            action="end_sessions",
            subject=username,
            reason=reason,
            now=now,
            detail={"sessions_ended": int(ended)},
        )
    return int(ended)
