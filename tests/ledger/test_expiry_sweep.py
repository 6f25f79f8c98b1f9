"""The back office voids the ledger's expired holds by itself (`gateways.backoffice.hold_expiry`),
on a real aiohttp server on loopback: what a hold kept pending is released without anyone
running `ksh ledger expire`; a hold not yet due, or already posted, is left alone.

The sweeper voids at the database's clock, so the holds are booked an hour before it: the
tests pass on any day."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateways.backoffice import BackofficeConfig, create_app, hold_expiry
from ledger import (
    CreateTransferResult,
    ExpirySweep,
    Transfer,
    TransferCode,
    TransferFlags,
    account_balances,
    create_transfers,
    derive_id,
    expiry_transfer_id,
    lookup_transfers,
)
from tests.ledger.books import bank, database_clock, open_books, purses
from tests.waiting import wait_until_async


async def sweep_until(
    database_url: str, interval_s: float, done: Callable[[], Awaitable[bool]], what: str
) -> None:
    """Run the back office with only its sweeper, on loopback, until `done()`; fail saying
    `what` was awaited after 30 s."""
    settings = {"expiry_sweep_interval_s": interval_s}
    app = create_app(BackofficeConfig(database_url, settings=settings), [hold_expiry])
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        await wait_until_async(done, what, within_s=30, every_s=0.05)
    finally:
        await server.close()


def count_sweeps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at each sweep (the real `expire_due_holds`, counted)."""
    import ledger

    sweeps: list[int] = []
    real = ledger.expire_due_holds

    async def counted(connection: asyncpg.Connection, **options: Any) -> ExpirySweep:
        sweeps.append(1)
        return await real(connection, **options)

    monkeypatch.setattr(ledger, "expire_due_holds", counted)
    return sweeps


async def test_the_back_office_voids_expired_holds(
    connection, database_url, caplog, monkeypatch
) -> None:
    await open_books(connection)

    def hold(name: str, purse_number: int, timeout_s: int) -> Transfer:
        return Transfer(
            derive_id("sweep", name),
            bank,
            purses[purse_number],
            1_000,
            TransferCode.pending_top_up,
            TransferFlags.pending,
            timeout_s=timeout_s,
        )

    due, later, posted = hold("due", 0, 60), hold("later", 1, 86_400), hold("posted", 2, 60)
    # Booked an hour before the database's now: `due` and `posted` are past their timeout,
    # `later` has a day to go.
    booked_at = await database_clock(connection) - timedelta(hours=1)
    outcomes = await create_transfers(connection, [due, later, posted], now=booked_at)
    assert {o.result for o in outcomes} == {CreateTransferResult.created}
    post = Transfer(
        derive_id("sweep", "post"), None, None, None, 0, TransferFlags.post_pending, posted.id
    )
    [done] = await create_transfers(connection, [post], now=booked_at)
    assert done.result is CreateTransferResult.created
    before = await account_balances(connection, purses[1])

    caplog.set_level(logging.INFO, logger="ksh.ledger.expiry")
    void_id = expiry_transfer_id(due.id)

    def swept() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "ksh.ledger.expiry"]

    async def voided_and_said() -> bool:
        # The sweep logs after its void commits: wait for both, or the server may close while
        # the sweep is between the two, and its line is never written.
        return bool(await lookup_transfers(connection, [void_id])) and bool(swept())

    sweeps = count_sweeps(monkeypatch)
    await sweep_until(database_url, 0.05, voided_and_said, "the due hold is voided, and logged")
    # A few sweeps more, on a fresh start: nothing left to do.
    swept_before = len(sweeps)

    async def three_sweeps_more() -> bool:
        return len(sweeps) >= swept_before + 3

    await sweep_until(database_url, 0.05, three_sweeps_more, "three sweeps more have run")
    voids = await lookup_transfers(
        connection, [void_id, expiry_transfer_id(later.id), expiry_transfer_id(posted.id)]
    )
    assert list(voids) == [void_id]
    assert voids[void_id].transfer.code == TransferCode.expiry
    released = await account_balances(connection, purses[0])
    assert released is not None and released.credits_pending == 0  # it held 1,000
    assert await account_balances(connection, purses[1]) == before  # not due: still held
    assert swept() == ["1 hold(s) past their timeout voided"]


async def test_a_sweep_that_fails_is_logged_and_the_next_one_runs(
    database_url, caplog, monkeypatch
) -> None:
    import ledger

    calls: list[int] = []

    async def flaky(connection: asyncpg.Connection) -> ExpirySweep:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the sweep")
        return ExpirySweep.of(Counter())

    monkeypatch.setattr(ledger, "expire_due_holds", flaky)
    caplog.set_level(logging.INFO, logger="ksh.ledger.expiry")

    async def swept_three_times() -> bool:
        return len(calls) >= 3

    await sweep_until(database_url, 0.02, swept_three_times, "three sweeps have run")
    assert len(calls) >= 3
    [failure] = [
        r for r in caplog.records if r.name == "ksh.ledger.expiry" and r.levelno >= logging.WARNING
    ]
    assert failure.exc_info is not None and "a bug in the sweep" in str(failure.exc_info[1])


def test_the_sweep_interval_is_an_environment_setting(monkeypatch) -> None:
    from ksh.cli import UserError
    from ksh.commands.serve import expiry_sweep_interval_s

    for given, interval in [("", 60.0), ("5", 5.0), ("0", 0.0)]:
        monkeypatch.setenv("KSH_EXPIRY_SWEEP_INTERVAL_S", given)
        assert expiry_sweep_interval_s() == interval
    for given in ("soon", "-1", "nan", "1e9"):
        monkeypatch.setenv("KSH_EXPIRY_SWEEP_INTERVAL_S", given)
        with pytest.raises(UserError, match="KSH_EXPIRY_SWEEP_INTERVAL_S"):
            expiry_sweep_interval_s()


async def test_a_sweep_waits_for_the_head_only_so_long(
    connection, database_url, caplog, monkeypatch
) -> None:
    """A transaction elsewhere holding the ledger's head: the sweep gives up after its lock
    timeout (logged) instead of hanging, and a later sweep voids the hold."""
    import gateways.backoffice

    await open_books(connection)
    due = Transfer(
        derive_id("sweep", "blocked"),
        bank,
        purses[0],
        1_000,
        TransferCode.pending_top_up,
        TransferFlags.pending,
        timeout_s=60,
    )
    booked_at = await database_clock(connection) - timedelta(hours=1)  # past its timeout
    [booked] = await create_transfers(connection, [due], now=booked_at)
    assert booked.result is CreateTransferResult.created
    monkeypatch.setattr(gateways.backoffice, "sweep_lock_timeout_ms", 100)
    caplog.set_level(logging.INFO, logger="ksh.ledger.expiry")
    holder = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("select 1 from ledger_head for update")

        async def gave_up() -> bool:
            return any(r.levelno == logging.WARNING for r in caplog.records)

        await sweep_until(database_url, 0.05, gave_up, "a sweep gives up on the held head")
        assert await gave_up()
        assert "lock timeout" in caplog.records[0].getMessage()
        await transaction.rollback()
    finally:
        await holder.close()

    async def voided() -> bool:
        return bool(await lookup_transfers(connection, [expiry_transfer_id(due.id)]))

    await sweep_until(database_url, 0.05, voided, "a later sweep voids the hold")
    assert await voided()
