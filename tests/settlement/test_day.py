"""A whole day with injected trouble, from end of day to a closed day, against the SNAP bank
simulator: a payout the bank refuses, an answer lost on the way back, a statement line the
bank lists twice, a fee nobody announced, a VA payment for no known card."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import asyncpg
import pytest

from gateways.bank_simulator import write_mt940
from ledger.records import AccountKind
from settlement import actions, end_of_day, reconciliation
from settlement.actions import ActionResult, Role, Staff
from tests.settlement.conftest import BankHarness, operator_account
from tests.settlement.day import (
    bank,
    book_day,
    closing_time,
    our_account,
    sale_fee_rupiah,
    service_day,
)

config = end_of_day.EndOfDayConfig(source_bank=bank, source_account_no=our_account)
clerk = Staff("clerk.ani", Role.clerk)
supervisor = Staff("super.budi", Role.supervisor)
auditor = Staff("audit.citra", Role.auditor)
other_bank = "113"  # Bank Jateng: M000 is paid interbank, with BI-FAST's fee


async def open_exceptions(connection: asyncpg.Connection) -> dict[str, str]:
    rows = await connection.fetch(
        "select exception_id, reason from settlement_exceptions where resolved_at is null"
    )
    return {row["exception_id"]: row["reason"] for row in rows}


async def test_day_with_trouble_closes_with_zero_unexplained(
    database_url: str, tmp_path: Path, bank_harness: BankHarness
) -> None:
    the_bank = bank_harness.bank
    connection = await asyncpg.connect(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    try:
        day = await book_day(connection)
        # The bank's side of the day's VA payments (our side is booked by book_day); it lists
        # the second one twice, and credits a payment for a VA that belongs to no card.
        for index, (request_id, amount) in enumerate(day.collections):
            if index == 1:
                the_bank.trouble.duplicate_next_statement_lines = 1
            the_bank.credit_collection(amount, request_id, f"VA PAYMENT {request_id}")
        the_bank.credit_collection(1_500_000, "PR99999999", "VA PAYMENT 880016099999999999")

        await end_of_day.register_parties(
            connection,
            [
                ("merchant", "M000", "Toko M000", other_bank, "0987654321"),
                ("merchant", "M001", "Toko M001", "", "7700000001"),
                ("merchant", "M002", "Toko M002", "", "7700000002"),
                ("operator", "trans-semarang", "BLU UPTD Trans Semarang", "", operator_account),
            ],
        )
        batches = await end_of_day.close_day(connection, service_day, config, now=closing_time)
        assert sorted(b.party_id for b in batches) == [*sorted(day.sales), "trans-semarang"]
        operator = next(b for b in batches if b.party_kind == "operator")
        assert operator.gross_rupiah == day.fares_rupiah
        for batch in batches:
            assert batch.gross_rupiah == batch.fees_rupiah + batch.net_rupiah
            if batch.party_kind == "merchant":
                assert batch.gross_rupiah == day.sales[batch.party_id]
                assert batch.fees_rupiah == day.sales[batch.party_id] // 25_000 * sale_fee_rupiah
        assert (
            await end_of_day.close_day(connection, service_day, config, now=closing_time) == []
        )  # once only

        # Paying: M001's account is inactive; one answer is lost (resolved by status inquiry,
        # never by paying again); the bank charges a fee nobody announced.
        the_bank.trouble.reject_accounts = {"7700000001"}
        the_bank.trouble.lose_next_answers = 1
        the_bank.trouble.unexpected_fee_rupiah = 4_000
        now = bank_harness.clock.local_now()
        counts = await end_of_day.pay_day(
            pool, service_day, bank_harness.client, config, "eod", now
        )
        assert counts[end_of_day.PayResult.refused] == 1
        assert counts[end_of_day.PayResult.paid] == len(batches) - 1
        refused_batch = next(b for b in batches if b.party_id == "M001")
        first_attempt = end_of_day.payout_id_for(refused_batch.batch_id, 1)
        assert await open_exceptions(connection) == {f"payout:{first_attempt}": "payout_rejected"}
        again = await end_of_day.pay_day(pool, service_day, bank_harness.client, config, "eod", now)
        assert sum(again.values()) == 0  # every batch has its attempt: nothing is paid twice

        # Staff re-initiate the refused payout once the merchant fixed the account.
        the_bank.trouble.reject_accounts = set()
        exception_id = f"payout:{first_attempt}"
        assert (
            await actions.reinitiate_payout(
                connection, exception_id, auditor, "x", bank_harness.client, config, now
            )
            is ActionResult.not_allowed
        )
        assert (
            await actions.reinitiate_payout(
                connection,
                exception_id,
                clerk,
                "account reactivated",
                bank_harness.client,
                config,
                now,
            )
            is ActionResult.done
        )
        assert (
            await actions.reinitiate_payout(
                connection, exception_id, clerk, "again", bank_harness.client, config, now
            )
            is ActionResult.already_resolved
        )
        paid = [t for t in the_bank.transfers.values() if t.status == "00"]
        assert len(paid) == len(batches)  # each batch paid exactly once
        assert sum(t.amount_rupiah for t in paid) == sum(b.net_rupiah for b in batches)

        # The bank's statement, imported twice (the second time adds nothing), reconciled.
        statement = the_bank.statement(our_account, the_bank.today())
        path = tmp_path / "statement.sta"
        path.write_text(write_mt940(statement))
        imported = await reconciliation.import_statement(connection, path, bank, clerk.username)
        assert imported.lines_new == len(statement.lines)
        assert (
            await reconciliation.import_statement(connection, path, bank, clerk.username)
        ).lines_new == 0
        start = dt.datetime.combine(service_day, dt.time(0), tzinfo=end_of_day.jakarta)
        await reconciliation.expect_collections(
            connection,
            start,
            end_of_day.cutoff_at(service_day, config),
            service_day,
            {},
            our_account,
        )
        report = await reconciliation.reconcile(
            connection, statement_through=the_bank.today(), now=closing_time
        )
        assert report.lines_matched == len(statement.lines) - 3
        exceptions = await open_exceptions(connection)
        assert sorted(exceptions.values()) == [
            "duplicate_line",
            "unexpected_fee",
            "unknown_reference",
        ], exceptions
        rerun = await reconciliation.reconcile(
            connection, statement_through=the_bank.today(), now=closing_time
        )
        assert (rerun.matches_new, rerun.transfers_booked) == (0, 0)
        assert await open_exceptions(connection) == exceptions

        close = await actions.day_close(connection, the_bank.today())
        assert not close.closed
        duplicated = day.collections[1][1]
        assert close.unexplained_rupiah == duplicated - 4_000 + 1_500_000

        # Finance works them: write-offs to suspense; the big one needs a supervisor.
        by_reason = {reason: exception_id for exception_id, reason in exceptions.items()}
        assert (
            await actions.write_off(
                connection, by_reason["unexpected_fee"], auditor, "x", now=closing_time
            )
            is ActionResult.not_allowed
        )
        assert (
            await actions.write_off(
                connection, by_reason["unexpected_fee"], clerk, " ", now=closing_time
            )
            is ActionResult.note_required
        )
        assert (
            await actions.write_off(
                connection,
                by_reason["unexpected_fee"],
                clerk,
                "fee not agreed; disputed",
                now=closing_time,
            )
            is ActionResult.done
        )
        assert (
            await actions.write_off(
                connection,
                by_reason["duplicate_line"],
                clerk,
                "listed twice; claimed",
                now=closing_time,
            )
            is ActionResult.done
        )
        unknown = by_reason["unknown_reference"]
        assert (
            await actions.write_off(
                connection, unknown, clerk, "VA of no card; refund requested", now=closing_time
            )
            is ActionResult.awaiting_approval
        )
        assert (
            await actions.approve_write_off(connection, unknown, clerk, now=closing_time)
            is ActionResult.not_allowed
        )
        assert (
            await actions.approve_write_off(connection, unknown, supervisor, now=closing_time)
            is ActionResult.done
        )
        assert (
            await actions.write_off(connection, unknown, supervisor, "again", now=closing_time)
            is ActionResult.already_resolved
        )

        close = await actions.day_close(connection, the_bank.today())
        assert (
            close.exceptions_open,
            close.unexplained_rupiah,
            close.bank_books_difference_rupiah,
        ) == (0, 0, 0)
        assert close.closed

        # The books: nothing in transit or in this bank's clearing; suspense holds what was
        # written off; the bank account's books equal the bank's own movement.
        kinds = {
            row["kind"]: int(row["balance"])
            for row in await connection.fetch(
                "select kind, sum(credits_posted - debits_posted) as balance from ledger_accounts group by kind"
            )
        }
        assert kinds[AccountKind.settlement_in_transit.value] == 0
        assert kinds[AccountKind.bank_clearing.value] == 0
        assert kinds[AccountKind.suspense.value] == duplicated - 4_000 + 1_500_000
        assert sum(kinds.values()) == 0
        account = the_bank.accounts[our_account]
        assert (
            -kinds[AccountKind.bank_account.value]
            == account.balance_rupiah - account.opening_rupiah
        )
        written = await connection.fetch("select metadata from ledger_transfers where code = 102")
        assert len(written) == 3
        assert all(
            "requested_by" in row["metadata"] and "note" in row["metadata"] for row in written
        )
    finally:
        await pool.close()
        await connection.close()


async def garbled_collection(
    connection: asyncpg.Connection, tmp_path: Path
) -> tuple[asyncpg.Record, str]:
    """A collection the bank credited under a garbled reference: its line's open exception and
    the movement nothing matched."""
    from settlement.statements import Direction, StatementLine
    from settlement.statements import write_mt940 as write_ours

    day = await book_day(connection, cards=2, merchants=1)
    (first_id, first_amount), (_, second_amount) = day.collections
    lines = [
        StatementLine(
            bank,
            our_account,
            service_day,
            first_amount,
            Direction.credit,
            first_id,
            "B1",
            "NTRF",
            "VA",
            "m.sta",
            1,
        ),
        StatementLine(
            bank,
            our_account,
            service_day,
            second_amount,
            Direction.credit,
            "GARBLED",
            "B2",
            "NTRF",
            "VA ???",
            "m.sta",
            2,
        ),
    ]
    path = tmp_path / "m.sta"
    path.write_text(write_ours(lines, our_account, "M", 0))
    await reconciliation.import_statement(connection, path, bank, "ani")
    start = dt.datetime.combine(service_day, dt.time(0), tzinfo=end_of_day.jakarta)
    await reconciliation.expect_collections(
        connection,
        start,
        end_of_day.cutoff_at(service_day, config),
        service_day,
        {},
        our_account,
    )
    await reconciliation.reconcile(connection, now=closing_time)
    [exception] = await connection.fetch(
        "select * from settlement_exceptions where resolved_at is null"
    )
    assert exception["reason"] == "unknown_reference"
    [movement] = await connection.fetch(
        "select movement_id, amount_rupiah from settlement_expected_movements e where not exists "
        "(select 1 from settlement_match_movements m where m.movement_id = e.movement_id)"
    )
    return exception, movement["movement_id"]


async def test_manual_match(database_url: str, tmp_path: Path) -> None:
    """A collection the bank credited under a garbled reference: the clerk matches it by hand."""
    connection = await asyncpg.connect(database_url)
    try:
        exception, movement_id = await garbled_collection(connection, tmp_path)
        line_key = exception["subject_id"]
        assert (
            await actions.manual_match(
                connection, [line_key], [movement_id], auditor, "x", now=closing_time
            )
            is ActionResult.not_allowed
        )
        assert (
            await actions.manual_match(
                connection, [line_key], [movement_id], clerk, "", now=closing_time
            )
            is ActionResult.note_required
        )
        assert (
            await actions.manual_match(
                connection,
                [line_key, line_key],  # a key given twice (a page's "k1,k1") counts once
                [movement_id, movement_id],
                clerk,
                "bank garbled the VA reference",
                now=closing_time,
            )
            is ActionResult.done
        )
        assert (
            await actions.manual_match(
                connection, [line_key], [movement_id], clerk, "again", now=closing_time
            )
            is ActionResult.already_resolved
        )
        close = await actions.day_close(connection, service_day)
        assert close.closed, close
        kind = await connection.fetchval(
            "select kind from settlement_matches m join settlement_match_lines using (match_id) where line_key = $1",
            line_key,
        )
        assert kind == "manual"
    finally:
        await connection.close()


async def test_a_written_off_line_cannot_be_matched_too(database_url: str, tmp_path: Path) -> None:
    """Its money is in suspense already: matching it as well would book it a second time."""
    connection = await asyncpg.connect(database_url)
    try:
        exception, movement_id = await garbled_collection(connection, tmp_path)
        assert (
            await actions.write_off(
                connection, exception["exception_id"], clerk, "unknown payer", now=closing_time
            )
            is ActionResult.done
        )
        booked = await connection.fetchval("select count(*) from ledger_transfers")
        assert (
            await actions.manual_match(
                connection,
                [exception["subject_id"]],
                [movement_id],
                clerk,
                "found it",
                now=closing_time,
            )
            is ActionResult.already_resolved
        )
        assert await connection.fetchval("select count(*) from ledger_transfers") == booked
    finally:
        await connection.close()


@pytest.mark.parametrize("name", ["broken.sta"])
async def test_broken_statement_imports_nothing(
    database_url: str, tmp_path: Path, name: str
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        path = tmp_path / name
        path.write_text(
            ":20:X\n:25:1\n:28C:1/1\n:60F:C261123IDR0,00\n:61:2611231123C100,00NTRFA1\n:86:ok\n:61:oops\n:62F:C261123IDR0,00\n"
        )
        with pytest.raises(reconciliation.StatementError):
            await reconciliation.import_statement(connection, path, bank, "clerk")
        assert await connection.fetchval("select count(*) from settlement_statement_lines") == 0
        assert await connection.fetchval("select count(*) from settlement_statement_files") == 0
    finally:
        await connection.close()


async def test_unanswered_payout_is_asked_again_never_paid_twice(
    database_url: str, bank_harness: BankHarness
) -> None:
    the_bank = bank_harness.bank
    connection = await asyncpg.connect(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await book_day(connection, cards=2, merchants=1)
        await end_of_day.register_parties(
            connection,
            [
                ("merchant", "M000", "Toko M000", "", "7700000001"),
                ("operator", "trans-semarang", "BLU", "", operator_account),
            ],
        )
        await end_of_day.close_day(connection, service_day, config, now=closing_time)
        the_bank.trouble.fail_next_transfers = 1_000  # the core banking system is down
        now = bank_harness.clock.local_now()
        counts = await end_of_day.pay_day(
            pool, service_day, bank_harness.client, config, "eod", now
        )
        assert counts[end_of_day.PayResult.unresolved] == 2
        assert the_bank.transfers == {}
        exceptions = await open_exceptions(connection)
        assert sorted(exceptions.values()) == ["payout_unresolved", "payout_unresolved"]
        the_bank.trouble.fail_next_transfers = 0
        # The merchant's account on file changes meanwhile: asking about the attempt resends
        # what was instructed, to the account it named (a new account needs a new attempt).
        await end_of_day.register_parties(
            connection, [("merchant", "M000", "Toko M000", "", "7700000009")]
        )
        for exception_id in exceptions:
            assert (
                await actions.ask_bank_again(
                    connection, exception_id, auditor, bank_harness.client, config, now
                )
                is ActionResult.not_allowed
            )
            assert (
                await actions.ask_bank_again(
                    connection, exception_id, clerk, bank_harness.client, config, now
                )
                is ActionResult.done
            )
            # Asking again once more cannot pay twice: the exception is closed, the bank knows the reference.
            assert (
                await actions.ask_bank_again(
                    connection, exception_id, clerk, bank_harness.client, config, now
                )
                is ActionResult.already_resolved
            )
        assert await open_exceptions(connection) == {}
        assert len(the_bank.transfers) == 2
        assert {t.beneficiary_account_no for t in the_bank.transfers.values()} == {
            "7700000001",
            operator_account,
        }
        held = await connection.fetchval(
            "select sum(debits_pending) from ledger_accounts where kind in ('merchant_payable', 'operator_payable')"
        )
        assert held == 0  # both holds posted: the money is in transit
    finally:
        await pool.close()
        await connection.close()


async def test_crash_between_recording_and_answer_pays_once(
    database_url: str, bank_harness: BankHarness
) -> None:
    """The process dies after recording its attempts: one was never sent, one reached the bank
    but its answer was never recorded. The next run sends the first and asks about the second
    under the same references; the bank books each once."""
    the_bank = bank_harness.bank
    connection = await asyncpg.connect(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await book_day(connection, cards=2, merchants=1)
        await end_of_day.register_parties(
            connection,
            [
                ("merchant", "M000", "Toko M000", "", "7700000001"),
                ("operator", "trans-semarang", "BLU", "", operator_account),
            ],
        )
        await end_of_day.close_day(connection, service_day, config, now=closing_time)
        now = bank_harness.clock.local_now()
        instructions = await end_of_day.pending_instructions(connection, service_day, config, now)
        await end_of_day.record_instructions(
            connection, instructions, "unknown", "eod", service_day, config
        )
        sent = await bank_harness.client.pay(instructions[0].payout)  # then the crash
        assert sent.state.value == "succeeded"
        counts = await end_of_day.pay_day(
            pool, service_day, bank_harness.client, config, "eod", now
        )
        assert counts[end_of_day.PayResult.paid] == 2
        assert sorted(the_bank.transfers) == sorted(i.payout_id for i in instructions)
        states = await connection.fetch("select state from settlement_payouts")
        assert {row["state"] for row in states} == {"succeeded"}
        again = await end_of_day.pay_day(pool, service_day, bank_harness.client, config, "eod", now)
        assert sum(again.values()) == 0
        assert len(the_bank.transfers) == 2
    finally:
        await pool.close()
        await connection.close()


async def test_no_new_attempt_while_another_may_pay(
    database_url: str, bank_harness: BankHarness
) -> None:
    """A batch first had no account on file; the account is added and the next run pays it:
    re-initiating from the old exception must not send a second reference for that batch. Two
    people re-initiating one refused payout at once make one new attempt."""
    the_bank = bank_harness.bank
    connection = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await book_day(connection, cards=2, merchants=1)
        await end_of_day.register_parties(
            connection, [("operator", "trans-semarang", "BLU", "", operator_account)]
        )
        await end_of_day.close_day(connection, service_day, config, now=closing_time)
        the_bank.trouble.reject_accounts = {operator_account}
        now = bank_harness.clock.local_now()
        await end_of_day.pay_day(pool, service_day, bank_harness.client, config, "eod", now)
        exceptions = {reason: key for key, reason in (await open_exceptions(connection)).items()}
        assert sorted(exceptions) == ["no_beneficiary_account", "payout_rejected"]

        await end_of_day.register_parties(
            connection, [("merchant", "M000", "Toko M000", "", "7700000001")]
        )
        counts = await end_of_day.pay_day(
            pool, service_day, bank_harness.client, config, "eod", now
        )
        assert counts[end_of_day.PayResult.paid] == 1
        assert (
            await actions.reinitiate_payout(
                connection,
                exceptions["no_beneficiary_account"],
                clerk,
                "account on file now",
                bank_harness.client,
                config,
                now,
            )
            is ActionResult.attempt_outstanding
        )

        the_bank.trouble.reject_accounts = set()
        results = await asyncio.gather(
            *(
                actions.reinitiate_payout(
                    who_connection,
                    exceptions["payout_rejected"],
                    staff,
                    "account reactivated",
                    bank_harness.client,
                    config,
                    now,
                )
                for who_connection, staff in ((connection, clerk), (second, supervisor))
            )
        )
        assert sorted(results) == [ActionResult.already_resolved, ActionResult.done]
        paid = [t for t in the_bank.transfers.values() if t.status == "00"]
        assert sorted(t.beneficiary_account_no for t in paid) == sorted(
            ["7700000001", operator_account]
        )  # each batch paid exactly once
    finally:
        await pool.close()
        await second.close()
        await connection.close()
