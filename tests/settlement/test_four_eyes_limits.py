"""The four-eyes limits in their one home (`gateways.four_eyes`), on the real database: a
write-off under the limit in force is one person's, above it two; a raise waits for a second
supervisor and is overtaken by a later change; bad requests change nothing. The refund limit
through `ksh settle limit` and the counter: tests/terminals/test_top_up_expiry.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateways import four_eyes
from gateways.four_eyes import Limit, LimitError, Outcome
from gateways.staff import Role, StaffMember
from settlement import actions
from settlement.actions import ActionResult
from tests.settlement.day import closing_time
from tests.settlement.test_hostile_person import unexplained_credit

ani = StaffMember("ani", Role.clerk)
budi = StaffMember("budi", Role.supervisor)
dewi = StaffMember("dewi", Role.supervisor)
citra = StaffMember("citra", Role.auditor)


async def ask(connection: Any, limit: Limit, rupiah: int, member: StaffMember) -> Outcome:
    """`member` asks for `rupiah` as `limit`, for the reason "policy"; the outcome."""
    asked = await four_eyes.set_limit(connection, limit, rupiah, member, "policy", now=closing_time)
    return asked.outcome


async def test_a_write_off_follows_the_limit_in_force(database_url: str, tmp_path: Path) -> None:
    exception_id = await unexplained_credit(database_url, tmp_path, 7_000_000)
    connection = await asyncpg.connect(database_url)
    try:

        async def set_write_off(rupiah: int, member: StaffMember) -> Outcome:
            return await ask(connection, Limit.write_off, rupiah, member)

        assert await set_write_off(10_000_000, budi) is Outcome.raise_asked
        assert await four_eyes.limit_rupiah(connection, Limit.write_off) == 1_000_000
        assert await four_eyes.limit_rupiah(connection, Limit.refund) == 1_000_000
        assert await set_write_off(10_000_000, dewi) is Outcome.raise_confirmed
        assert await four_eyes.limit_rupiah(connection, Limit.write_off) == 10_000_000
        assert await four_eyes.limit_rupiah(connection, Limit.refund) == 1_000_000  # its own
        done = await actions.write_off(
            connection, exception_id, ani, "a known refund", now=closing_time
        )
        assert done is ActionResult.done
    finally:
        await connection.close()


async def test_a_raise_needs_a_second_supervisor_while_it_is_the_newest_request(
    database_url: str,
) -> None:
    connection = await asyncpg.connect(database_url)
    try:

        async def refund(rupiah: int, member: StaffMember) -> Outcome:
            return await ask(connection, Limit.refund, rupiah, member)

        assert await refund(3_000_000, budi) is Outcome.raise_asked
        assert await refund(800_000, dewi) is Outcome.lowered  # at once, and the raise is overtaken
        assert await refund(3_000_000, dewi) is Outcome.raise_asked  # a new request, not budi's
        assert await four_eyes.limit_rupiah(connection, Limit.refund) == 800_000
        assert await refund(3_000_000, budi) is Outcome.raise_confirmed
        assert await four_eyes.limit_rupiah(connection, Limit.refund) == 3_000_000
        history = await four_eyes.changes(connection, Limit.refund)
        assert [(c.rupiah, c.asked_by, c.confirmed_by) for c in history] == [
            (3_000_000, "dewi", "budi"),
            (800_000, "dewi", "dewi"),
            (3_000_000, "budi", None),
        ]

        refusals = [
            (3_000_000, budi, "policy", "is Rp 3,000,000 already"),
            (5_000_000, ani, "policy", "ani is a clerk; a supervisor sets limits"),
            (5_000_000, citra, "policy", "citra is an auditor"),
            (-1, budi, "policy", "a limit is 0 to"),
            (four_eyes.rupiah_max + 1, budi, "policy", "a limit is 0 to"),
            (5_000_000, budi, " ", "reason says why"),
        ]
        for rupiah, member, reason, message in refusals:
            with pytest.raises(LimitError, match=message):
                await four_eyes.set_limit(
                    connection, Limit.refund, rupiah, member, reason, now=closing_time
                )
        assert len(await four_eyes.changes(connection, Limit.refund)) == 3  # nothing written
    finally:
        await connection.close()
