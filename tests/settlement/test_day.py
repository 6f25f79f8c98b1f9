"""A whole day with injected trouble, end of day to a closed day: a payout the bank refuses,
a statement line the bank duplicates, a fee we did not expect, a VA payment for no card."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import asyncpg
import pytest

from gateways.snap.client import Payout, TransferOutcome, TransferState
from ledger.records import AccountKind
from settlement import actions, end_of_day, reconciliation
from settlement.actions import ActionResult, Role, Staff
from settlement.statements import Direction, StatementLine, write_mt940
from tests.settlement.day import bank, book_day, our_account, sale_fee_rupiah, service_day

config = end_of_day.EndOfDayConfig(source_bank=bank, source_account_no=our_account)
clerk = Staff("clerk.ani", Role.clerk)
supervisor = Staff("super.budi", Role.supervisor)
auditor = Staff("audit.citra", Role.auditor)
now = dt.datetime(2026, 11, 24, 3, 0, tzinfo=end_of_day.jakarta)


class ScriptedBank:
    """Answers payouts as a bank would, refusing the references it is told to refuse, and
    remembering what it paid (which becomes the statement)."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.paid: list[Payout] = []

    async def pay(self, payout: Payout) -> TransferOutcome:
        if payout.partner_reference_no in self.refuse:
            return TransferOutcome(
                payout.partner_reference_no, TransferState.failed, "4031818", "Inactive Account"
            )
        if payout.partner_reference_no not in {p.partner_reference_no for p in self.paid}:
            self.paid.append(payout)
        return TransferOutcome(
            payout.partner_reference_no,
            TransferState.succeeded,
            "2001800",
            "Successful",
            "BNK" + payout.partner_reference_no,
        )


def statement_line(
    amount: int,
    direction: Direction,
    reference: str,
    description: str,
    number: int,
    type_code: str = "NTRF",
    value_date: dt.date = service_day,
) -> StatementLine:
    return StatementLine(
        bank,
        our_account,
        value_date,
        amount,
        direction,
        reference,
        f"BR{number:06d}",
        type_code,
        description,
        "day.sta",
        number,
    )


async def test_day_with_trouble_closes_with_zero_unexplained(
    database_url: str, tmp_path: Path
) -> None:
    connection = await asyncpg.connect(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    try:
        day = await book_day(connection)
        # End of day: one batch per merchant plus the operator.
        await end_of_day.register_parties(
            connection,
            [
                ("merchant", m, f"Toko {m}", "009", f"77{n:08d}")
                for n, m in enumerate(sorted(day.sales))
            ]
            + [("operator", "trans-semarang", "BLU UPTD Trans Semarang", "", "1350099990001")],
        )
        batches = await end_of_day.close_day(connection, service_day, config)
        assert sorted(b.party_id for b in batches) == [*sorted(day.sales), "trans-semarang"]
        operator = next(b for b in batches if b.party_kind == "operator")
        assert operator.gross_rupiah == day.fares_rupiah
        for batch in batches:
            assert batch.gross_rupiah == batch.fees_rupiah + batch.net_rupiah
            if batch.party_kind == "merchant":
                assert batch.gross_rupiah == day.sales[batch.party_id]
                assert batch.fees_rupiah == day.sales[batch.party_id] // 25_000 * sale_fee_rupiah
        assert await end_of_day.close_day(connection, service_day, config) == []  # once only

        refused_batch = next(b for b in batches if b.party_id == "M001")
        first_attempt = end_of_day.payout_id_for(refused_batch.batch_id, 1)
        bank_side = ScriptedBank(refuse={first_attempt})
        counts = await end_of_day.pay_day(pool, service_day, bank_side, config, "eod", now)
        assert counts[end_of_day.PayResult.refused] == 1
        assert counts[end_of_day.PayResult.paid] == len(batches) - 1
        exceptions = await open_exceptions(connection)
        assert exceptions == {f"payout:{first_attempt}": "payout_rejected"}

        # Paying again pays nothing twice: no batch is without an attempt.
        again = await end_of_day.pay_day(pool, service_day, bank_side, config, "eod", now)
        assert sum(again.values()) == 0

        # Staff re-initiate the refused payout (the merchant's account was fixed).
        assert (
            await actions.reinitiate_payout(
                connection, f"payout:{first_attempt}", auditor, "fixed", bank_side, config, now
            )
            is ActionResult.not_allowed
        )
        result = await actions.reinitiate_payout(
            connection,
            f"payout:{first_attempt}",
            clerk,
            "merchant fixed account",
            bank_side,
            config,
            now,
        )
        assert result is ActionResult.done
        assert len(bank_side.paid) == len(batches)
        assert (
            await actions.reinitiate_payout(
                connection, f"payout:{first_attempt}", clerk, "again", bank_side, config, now
            )
            is ActionResult.already_resolved
        )

        # The bank's statement: collections, payouts, their interbank fees, and trouble.
        lines = [
            statement_line(amount, Direction.credit, request_id, f"VA PAYMENT {request_id}", n + 1)
            for n, (request_id, amount) in enumerate(day.collections)
        ]
        number = len(lines)
        next_day = service_day + dt.timedelta(days=1)
        for payout in bank_side.paid:
            number += 1
            lines.append(
                statement_line(
                    payout.amount_rupiah,
                    Direction.debit,
                    payout.partner_reference_no,
                    f"TRANSFER {payout.partner_reference_no}",
                    number,
                    value_date=next_day,
                )
            )
            if payout.beneficiary_bank_code:
                number += 1
                lines.append(
                    statement_line(
                        2_500,
                        Direction.debit,
                        payout.partner_reference_no,
                        f"BIAYA BI-FAST {payout.partner_reference_no}",
                        number,
                        "NCHG",
                        next_day,
                    )
                )
        duplicated = lines[0]
        lines.append(dataclasses.replace(duplicated, source_line=number + 1))
        lines.append(
            statement_line(
                6_500, Direction.debit, "", "BIAYA ADMIN BULANAN", number + 2, "NCHG", next_day
            )
        )
        lines.append(
            statement_line(
                1_500_000, Direction.credit, "VAPAY99999999", "VA PAYMENT 8800199999", number + 3
            )
        )
        statement = tmp_path / "jateng-20261124.sta"
        statement.write_text(write_mt940(lines, our_account, "STMT20261124", 0))

        imported = await reconciliation.import_statement(
            connection, statement, bank, clerk.username
        )
        assert imported.lines_new == len(lines)
        again_imported = await reconciliation.import_statement(
            connection, statement, bank, clerk.username
        )
        assert again_imported.lines_new == 0

        start = dt.datetime.combine(service_day, dt.time(0), tzinfo=end_of_day.jakarta)
        await reconciliation.expect_collections(
            connection,
            start,
            end_of_day.cutoff_at(service_day, config),
            service_day,
            {},
            our_account,
        )
        report = await reconciliation.reconcile(connection, statement_through=next_day)
        assert report.lines_matched == len(lines) - 3
        exceptions = await open_exceptions(connection)
        by_reason = sorted(exceptions.values())
        assert by_reason == ["duplicate_line", "unexpected_fee", "unknown_reference"], exceptions

        rerun = await reconciliation.reconcile(connection, statement_through=next_day)
        assert rerun.matches_new == 0
        assert rerun.transfers_booked == 0
        assert await open_exceptions(connection) == exceptions

        close = await actions.day_close(connection, next_day)
        assert not close.closed
        assert close.unexplained_rupiah == duplicated.amount_rupiah - 6_500 + 1_500_000

        # Staff actions: write-offs to suspense; the big one needs a supervisor.
        by_id = {reason: exception_id for exception_id, reason in exceptions.items()}
        assert (
            await actions.write_off(connection, by_id["unexpected_fee"], auditor, "x")
            is ActionResult.not_allowed
        )
        assert (
            await actions.write_off(connection, by_id["unexpected_fee"], clerk, " ")
            is ActionResult.note_required
        )
        assert (
            await actions.write_off(
                connection, by_id["unexpected_fee"], clerk, "monthly admin fee, claimed from bank"
            )
            is ActionResult.done
        )
        assert (
            await actions.write_off(
                connection, by_id["duplicate_line"], clerk, "bank listed it twice"
            )
            is ActionResult.done
        )
        unknown = by_id["unknown_reference"]
        assert (
            await actions.write_off(
                connection, unknown, clerk, "no card with this VA; refund pending"
            )
            is ActionResult.awaiting_approval
        )
        assert (
            await actions.approve_write_off(connection, unknown, clerk) is ActionResult.not_allowed
        )
        assert await actions.approve_write_off(connection, unknown, supervisor) is ActionResult.done

        close = await actions.day_close(connection, next_day)
        assert close.exceptions_open == 0
        assert close.unexplained_rupiah == 0
        assert close.bank_books_difference_rupiah == 0
        assert close.closed

        # The books: nothing left in transit or in clearing; suspense holds the written-off net.
        balances = {
            row["kind"]: row["balance"]
            for row in await connection.fetch(
                """select kind, sum(credits_posted - debits_posted) as balance, sum(debits_pending + credits_pending) as held
                     from ledger_accounts group by kind"""
            )
        }
        assert balances[AccountKind.settlement_in_transit.value] == 0
        assert balances[AccountKind.bank_clearing.value] == 0
        assert balances[AccountKind.suspense.value] == duplicated.amount_rupiah - 6_500 + 1_500_000
        assert sum(balances.values()) == 0
        written = await connection.fetch(
            "select metadata from ledger_transfers where code = 102 order by sequence"
        )
        assert len(written) == 3
        assert all(
            "requested_by" in row["metadata"] and "note" in row["metadata"] for row in written
        )
    finally:
        await pool.close()
        await connection.close()


async def open_exceptions(connection: asyncpg.Connection) -> dict[str, str]:
    rows = await connection.fetch(
        "select exception_id, reason from settlement_exceptions where resolved_at is null"
    )
    return {row["exception_id"]: row["reason"] for row in rows}


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
