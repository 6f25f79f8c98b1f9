"""End of day: close each merchant's and the operator's payable into a settlement batch
(gross, fees, net), then pay the batches out and book them as in transit until the bank
statement shows them.

The close is set-based: one SQL statement works out, for every payable at once, what was owed
at the service day's cut-off minus what earlier batches already closed; the batches are
inserted in one statement and their ledger transfers booked in large batches.

Paying never pays twice. Each batch holds its net amount with a two-phase ledger transfer
(payable -> settlement in transit, pending) so no later close can count it again. Each attempt
has its own partnerReferenceNo, written to the database *before* it is sent; retries of an
attempt reuse it and an unknown outcome is resolved by a status inquiry (the SNAP client does
both). Only a definite refusal lets staff start a new attempt.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import enum
import io
import uuid
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import asyncpg

from gateways.snap.client import Payout, PayoutOutcome, PayoutState
from ledger.records import AccountKind, Transfer, TransferCode, TransferFlags, derive_id
from settlement import books
from settlement.matching import ExpectedMovement, MovementKind
from settlement.reconciliation import expect_movements
from settlement.statements import Direction

jakarta = zoneinfo.ZoneInfo("Asia/Jakarta")
batches_per_day_max = 99_999  # five digits of the batch number in partnerReferenceNo
payout_attempts_max = 99
payouts_in_flight_max = 8


class PayoutPort(Protocol):
    """What settlement needs from a bank: `gateways.snap.client.BankClient` is one."""

    async def pay(self, payout: Payout) -> PayoutOutcome: ...


@dataclass(frozen=True, slots=True)
class EndOfDayConfig:
    source_bank: str = "bank-jateng"  # the bank our payouts leave from
    source_account_no: str = "1350012345678"
    cutoff: dt.time = dt.time(2, 0)  # local time after midnight: a night bus belongs to its day
    # The back office books each sale's fee at the merchant's own rate; this one is an extra
    # end-of-day charge on what is owed (0: none).
    merchant_discount_basis_points: int = 0
    operator_fee_basis_points: int = 0
    interbank_fee_rupiah: int = 2_500  # BI-FAST ceiling; the bank debits it with the payout

    def __post_init__(self) -> None:
        assert 0 <= self.merchant_discount_basis_points < 10_000
        assert 0 <= self.operator_fee_basis_points < 10_000
        assert self.interbank_fee_rupiah >= 0


def cutoff_at(day: dt.date, config: EndOfDayConfig) -> dt.datetime:
    """The end of service day `day`: the cut-off time on the next calendar day, Jakarta time."""
    return dt.datetime.combine(day + dt.timedelta(days=1), config.cutoff, tzinfo=jakarta)


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    service_day: dt.date
    party_kind: str
    party_id: str
    owed_rupiah: int
    gross_rupiah: int
    fees_rupiah: int
    net_rupiah: int

    def __post_init__(self) -> None:
        assert self.gross_rupiah == self.fees_rupiah + self.net_rupiah, self
        assert self.net_rupiah > 0, self


def batch_id_for(day: dt.date, number: int) -> str:
    assert 1 <= number <= batches_per_day_max
    return f"B{day:%y%m%d}{number:05d}"


def payout_id_for(batch_id: str, attempt: int) -> str:
    """partnerReferenceNo: 14 characters, fits MT940's 16-character customer reference."""
    assert 1 <= attempt <= payout_attempts_max
    return f"P{batch_id[1:]}{attempt:02d}"


# ---------------------------------------------------------------------------- close


async def close_day(
    connection: asyncpg.Connection, day: dt.date, config: EndOfDayConfig, *, now: dt.datetime
) -> list[Batch]:
    """Create (once) the day's settlement batches and book their fees and holds at `now`;
    record that the day was closed (`day_closed_at`), with batches or none."""
    cutoff = cutoff_at(day, config)
    accounts = await _ensure_close_accounts(connection)
    # Fresh planner statistics: after a busy day autovacuum may not have caught up, and the
    # close below scans the day's transfers once, set-based.
    await connection.execute("analyze ledger_accounts, ledger_transfers, settlement_batches")
    async with connection.transaction():
        await connection.execute("select pg_advisory_xact_lock(hashtext('settlement-close'))")
        base = await connection.fetchval(
            "select count(*) from settlement_batches where service_day = $1", day
        )
        rows = await _owed_at_cutoff(connection, day, cutoff)
        assert base + len(rows) <= batches_per_day_max, "too many batches for one day"
        closing = _batches_from(rows, day, base, config)
        transfers = await _close_transfers(
            connection,
            closing.batches,
            closing.payable_ids,
            fee_income=accounts.fee_income,
            in_transit=accounts.in_transit,
        )
        await _insert_batches(connection, closing)
        await books.book(connection, transfers, now=now)
        await connection.execute(
            """insert into settlement_day_closes (service_day, first_closed_at, last_closed_at)
               values ($1, $2, $2) on conflict (service_day)
               do update set last_closed_at = excluded.last_closed_at""",
            day,
            now,
        )
    return closing.batches


class _CloseAccounts(NamedTuple):
    in_transit: uuid.UUID  # settlement in transit: holds of what is being paid out
    fee_income: uuid.UUID  # the end-of-day fees


async def _ensure_close_accounts(connection: asyncpg.Connection) -> _CloseAccounts:
    """The accounts a close books into: in transit, fee income and each operator's payable."""
    in_transit = await books.ensure_account(
        connection, AccountKind.settlement_in_transit, "payouts"
    )
    fee_income = await books.ensure_account(connection, AccountKind.fee_income, "merchant-discount")
    for row in await connection.fetch(
        "select distinct owner_reference from ledger_accounts where kind = 'operator_revenue'"
    ):
        await books.ensure_account(connection, AccountKind.operator_payable, row["owner_reference"])
    return _CloseAccounts(in_transit, fee_income)


async def _owed_at_cutoff(
    connection: asyncpg.Connection, day: dt.date, cutoff: dt.datetime
) -> list[asyncpg.Record]:
    """Every payable (merchant, operator revenue) still owed something at the cut-off and not
    yet in a batch of `day`: what it was owed minus what earlier batches closed, and the day's
    sale fees; in (kind, owner) order."""
    return await connection.fetch(
        """
        with payables as (
            select id, kind, owner_reference from ledger_accounts
             where kind in ('merchant_payable', 'operator_revenue')
        ),
        movements as (
            -- posted movements booked before the cut-off, apart from settlement's own,
            -- summed per account first (one pass), then narrowed to the payables
            select id, sum(rupiah) as rupiah from (
                select credit_account_id as id, amount as rupiah from ledger_transfers
                 where booked_at < $1 and flags & (2 | 8) = 0 and settlement_batch is null
                union all
                select debit_account_id, -amount from ledger_transfers
                 where booked_at < $1 and flags & (2 | 8) = 0 and settlement_batch is null
            ) legs group by id
        ),
        owed as (
            select id, rupiah from movements join payables using (id)
        ),
        closed as (
            select payable_account_id as id, sum(owed_rupiah) as rupiah
              from settlement_batches group by payable_account_id
        ),
        sale_fees as (
            select debit_account_id as id, sum(amount) as rupiah from ledger_transfers
             where booked_at >= $3 and booked_at < $1 and code = $4
               and flags & (2 | 8) = 0 and settlement_batch is null
             group by debit_account_id
        )
        select p.id, p.kind, p.owner_reference,
               o.rupiah - coalesce(c.rupiah, 0) as owed_rupiah,
               coalesce(f.rupiah, 0) as sale_fees_rupiah
          from payables p join owed o using (id) left join closed c using (id)
          left join sale_fees f using (id)
         where o.rupiah - coalesce(c.rupiah, 0) > 0
           and not exists (select 1 from settlement_batches b
                            where b.service_day = $2 and b.payable_account_id = p.id)
         order by p.kind, p.owner_reference
        """,
        cutoff,
        day,
        cutoff - dt.timedelta(days=1),
        int(TransferCode.merchant_fee),
    )


@dataclass(frozen=True, slots=True)
class _Closing:
    """The batches a close creates and, position by position, the payable each one pays."""

    batches: list[Batch]
    payable_ids: list[uuid.UUID]


def _batches_from(
    rows: Sequence[asyncpg.Record], day: dt.date, base: int, config: EndOfDayConfig
) -> _Closing:
    """A batch per payable owed more than the end-of-day fee, numbered on from `base`."""
    batches: list[Batch] = []
    payable_ids: list[uuid.UUID] = []
    for number, row in enumerate(rows, start=base + 1):
        merchant = row["kind"] == AccountKind.merchant_payable.value
        basis_points = (
            config.merchant_discount_basis_points if merchant else config.operator_fee_basis_points
        )
        owed = int(row["owed_rupiah"])
        end_of_day_fee = owed * basis_points // 10_000
        if owed - end_of_day_fee <= 0:
            continue
        sale_fees = int(row["sale_fees_rupiah"])
        batches.append(
            Batch(
                batch_id_for(day, number),
                day,
                "merchant" if merchant else "operator",
                row["owner_reference"],
                owed,
                owed + sale_fees,
                sale_fees + end_of_day_fee,
                owed - end_of_day_fee,
            )
        )
        payable_ids.append(row["id"])
    return _Closing(batches, payable_ids)


async def _insert_batches(connection: asyncpg.Connection, closing: _Closing) -> None:
    batches = closing.batches
    await connection.execute(
        """insert into settlement_batches
             (batch_id, service_day, party_kind, party_id, payable_account_id, hold_transfer_id,
              owed_rupiah, gross_rupiah, fees_rupiah, net_rupiah)
           select * from unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::uuid[],
                                $6::uuid[], $7::bigint[], $8::bigint[], $9::bigint[],
                                $10::bigint[])""",
        [b.batch_id for b in batches],
        [b.service_day for b in batches],
        [b.party_kind for b in batches],
        [b.party_id for b in batches],
        closing.payable_ids,
        [books.hold_id_for(b.batch_id) for b in batches],
        [b.owed_rupiah for b in batches],
        [b.gross_rupiah for b in batches],
        [b.fees_rupiah for b in batches],
        [b.net_rupiah for b in batches],
    )


async def _close_transfers(
    connection: asyncpg.Connection,
    batches: Sequence[Batch],
    payable_ids: Sequence[uuid.UUID],
    *,
    fee_income: uuid.UUID,
    in_transit: uuid.UUID,
) -> list[Transfer]:
    """Each batch's ledger transfers: an operator's revenue swept to what it is owed, the
    end-of-day fee, and the hold of the net amount (payable -> in transit, pending)."""
    operator_payables = {
        row["owner_reference"]: row["id"]
        for row in await connection.fetch(
            "select owner_reference, id from ledger_accounts where kind = 'operator_payable'"
        )
    }
    transfers: list[Transfer] = []
    for batch, payable in zip(batches, payable_ids, strict=True):
        source = payable
        if batch.party_kind == "operator":
            # fares earned become what the issuer owes the operator, then that is held
            source = operator_payables[batch.party_id]
            transfers.append(
                Transfer(
                    derive_id("settlement-sweep", batch.batch_id),
                    payable,
                    source,
                    batch.owed_rupiah,
                    TransferCode.operator_settlement,
                    settlement_batch=batch.batch_id,
                )
            )
        if batch.owed_rupiah > batch.net_rupiah:
            transfers.append(
                Transfer(
                    derive_id("settlement-fee", batch.batch_id),
                    source,
                    fee_income,
                    batch.owed_rupiah - batch.net_rupiah,
                    TransferCode.merchant_fee,
                    settlement_batch=batch.batch_id,
                )
            )
        transfers.append(
            Transfer(
                books.hold_id_for(batch.batch_id),
                source,
                in_transit,
                batch.net_rupiah,
                TransferCode.payout,
                flags=TransferFlags.pending,
                settlement_batch=batch.batch_id,
            )
        )
    return transfers


# ---------------------------------------------------------------------------- paying


class PayResult(enum.StrEnum):
    paid = "paid"  # the bank says it moved the money (or will: in progress)
    refused = "refused"  # definite refusal: an exception for staff
    unresolved = "unresolved"  # still unknown after status inquiries: an exception for staff
    no_account = "no_account"  # we do not know where to pay this party


@dataclass(frozen=True, slots=True)
class PayoutInstruction:
    batch_id: str
    payout_id: str
    attempt: int
    payout: Payout
    interbank: bool


async def pending_instructions(
    connection: asyncpg.Connection, day: dt.date, config: EndOfDayConfig, now: dt.datetime
) -> list[PayoutInstruction]:
    """Batches of `day` with no attempt yet: their first attempt, recorded before sending."""
    rows = await connection.fetch(
        """select b.batch_id, b.net_rupiah, b.party_kind, b.party_id, p.bank_code, p.account_no, p.name
             from settlement_batches b
             left join settlement_parties p using (party_kind, party_id)
            where b.service_day = $1
              and not exists (select 1 from settlement_payouts x where x.batch_id = b.batch_id)
            order by b.batch_id""",
        day,
    )
    instructions = []
    for row in rows:
        if row["account_no"] is None:
            await open_exception(
                connection,
                "payout",
                row["batch_id"],
                "no_beneficiary_account",
                f"{row['party_kind']} {row['party_id']} has no bank account on file",
                row["net_rupiah"],
                day,
            )
            continue
        instructions.append(instruction_for(row, 1, config, now))
    return instructions


async def unanswered_instructions(
    connection: asyncpg.Connection,
    day: dt.date,
    config: EndOfDayConfig,
    now: dt.datetime,
    just_recorded: Sequence[PayoutInstruction],
) -> list[PayoutInstruction]:
    """Attempts of `day` still unknown or in progress with nobody looking at them."""
    fresh = [instruction.payout_id for instruction in just_recorded]
    rows = await connection.fetch(
        f"""select x.attempt, x.instructed_at, b.batch_id, b.net_rupiah, {attempt_beneficiary}
             from settlement_payouts x join settlement_batches b using (batch_id)
             left join settlement_parties p using (party_kind, party_id)
            where b.service_day = $1 and x.state in ('unknown', 'in_progress')
              and x.payout_id <> all($2::text[])
              and not exists (select 1 from settlement_exceptions e
                               where e.subject_kind = 'payout' and e.subject_id = x.payout_id)
            order by x.payout_id""",
        day,
        fresh,
    )
    # the same body as first sent (transactionDate included), only the reference matters to
    # the bank but a byte-identical repeat is the safest
    return [instruction_for(row, row["attempt"], config, row["instructed_at"]) for row in rows]


# The beneficiary of a recorded attempt: as instructed then, or (attempts recorded before that
# was kept) the party's account on file. Columns for `instruction_for`; `x` is the attempt.
attempt_beneficiary = (
    "coalesce(x.beneficiary_bank_code, p.bank_code) as bank_code, "
    "coalesce(x.beneficiary_account_no, p.account_no) as account_no, "
    "coalesce(x.beneficiary_name, p.name) as name"
)


def instruction_for(
    row: asyncpg.Record, attempt: int, config: EndOfDayConfig, now: dt.datetime
) -> PayoutInstruction:
    payout_id = payout_id_for(row["batch_id"], attempt)
    payout = Payout(
        partner_reference_no=payout_id,
        source_account_no=config.source_account_no,
        beneficiary_account_no=row["account_no"],
        amount_rupiah=row["net_rupiah"],
        transaction_date=now,
        beneficiary_bank_code=row["bank_code"],
        beneficiary_account_name=row["name"],
        remark=f"KSH settlement {row['batch_id']}",
    )
    return PayoutInstruction(row["batch_id"], payout_id, attempt, payout, bool(row["bank_code"]))


async def record_instructions(
    connection: asyncpg.Connection,
    instructions: Sequence[PayoutInstruction],
    state: str,
    who: str,
    day: dt.date,
    config: EndOfDayConfig,
) -> None:
    """Persist the attempts (and what the statement should show) before anything is sent."""
    if not instructions:
        return
    in_transit = await books.ensure_account(
        connection, AccountKind.settlement_in_transit, "payouts"
    )
    fee_expense = await books.ensure_account(connection, AccountKind.fee_expense, "bank-charges")
    value_date = day + dt.timedelta(days=1)
    movements: list[tuple[ExpectedMovement, uuid.UUID]] = []
    for instruction in instructions:
        movements.append(
            (
                ExpectedMovement(
                    instruction.payout_id,
                    MovementKind.payout,
                    config.source_account_no,
                    Direction.debit,
                    instruction.payout.amount_rupiah,
                    value_date,
                    instruction.payout_id,
                ),
                in_transit,
            )
        )
        if instruction.interbank and config.interbank_fee_rupiah:
            movements.append(
                (
                    ExpectedMovement(
                        f"{instruction.payout_id}-fee",
                        MovementKind.fee,
                        config.source_account_no,
                        Direction.debit,
                        config.interbank_fee_rupiah,
                        value_date,
                        instruction.payout_id,
                    ),
                    fee_expense,
                )
            )
    async with connection.transaction():
        await connection.execute(
            """insert into settlement_payouts
                 (payout_id, batch_id, attempt, amount_rupiah, state, instructed_by, instructed_at,
                  beneficiary_bank_code, beneficiary_account_no, beneficiary_name)
               select p, b, a, r, $5, $6, t, bc, ba, bn
                 from unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $7::timestamptz[],
                             $8::text[], $9::text[], $10::text[])
                      as x(p, b, a, r, t, bc, ba, bn)
               on conflict (payout_id) do nothing""",
            [i.payout_id for i in instructions],
            [i.batch_id for i in instructions],
            [i.attempt for i in instructions],
            [i.payout.amount_rupiah for i in instructions],
            state,
            who,
            [i.payout.transaction_date for i in instructions],
            [i.payout.beneficiary_bank_code for i in instructions],
            [i.payout.beneficiary_account_no for i in instructions],
            [i.payout.beneficiary_account_name for i in instructions],
        )
        await expect_movements(connection, movements)


async def pay_day(
    pool: asyncpg.Pool,
    day: dt.date,
    payer: PayoutPort,
    config: EndOfDayConfig,
    who: str,
    now: dt.datetime,
) -> dict[PayResult, int]:
    """Send the first attempt of every unpaid batch of `day` (a few at a time), and ask again
    about attempts left without an answer (a crash between recording and sending, or a bank
    still processing): same partnerReferenceNo, so the bank books each at most once."""
    async with pool.acquire() as connection:
        instructions = await pending_instructions(connection, day, config, now)
        await record_instructions(connection, instructions, "unknown", who, day, config)
        # what is left without an attempt had no bank account on file (an exception each)
        no_account = await connection.fetchval(
            """select count(*) from settlement_batches b where b.service_day = $1
                 and not exists (select 1 from settlement_payouts x where x.batch_id = b.batch_id)""",
            day,
        )
        instructions += await unanswered_instructions(connection, day, config, now, instructions)
    counts = {result: 0 for result in PayResult}
    counts[PayResult.no_account] = no_account
    gate = asyncio.Semaphore(payouts_in_flight_max)

    async def one(instruction: PayoutInstruction) -> None:
        async with gate:
            outcome = await payer.pay(instruction.payout)
            async with pool.acquire() as connection:
                counts[await record_outcome(connection, instruction, outcome, day, now)] += 1

    await asyncio.gather(*(one(instruction) for instruction in instructions))
    return counts


async def record_outcome(
    connection: asyncpg.Connection,
    instruction: PayoutInstruction,
    outcome: PayoutOutcome,
    day: dt.date,
    now: dt.datetime,
) -> PayResult:
    async with connection.transaction():
        await connection.execute(
            """update settlement_payouts set state = $2, response_code = $3, response_message = $4,
                      bank_reference_no = $5, updated_at = $6
                where payout_id = $1""",
            instruction.payout_id,
            outcome.state.value,
            outcome.response_code,
            outcome.response_message[:200],
            outcome.bank_reference_no,
            now,
        )
        if outcome.state is PayoutState.succeeded:
            from settlement.reconciliation import post_hold

            await books.book(
                connection, [post_hold(instruction.batch_id, instruction.payout_id)], now=now
            )
            return PayResult.paid
        if outcome.state is PayoutState.in_progress:
            return PayResult.paid
        if outcome.state is PayoutState.failed:
            await connection.execute(
                "update settlement_expected_movements set cancelled = true where movement_id = any($1::text[])",
                [instruction.payout_id, f"{instruction.payout_id}-fee"],
            )
            await open_exception(
                connection,
                "payout",
                instruction.payout_id,
                "payout_rejected",
                f"{outcome.response_code} {outcome.response_message}".strip(),
                instruction.payout.amount_rupiah,
                day,
            )
            return PayResult.refused
        await open_exception(
            connection,
            "payout",
            instruction.payout_id,
            "payout_unresolved",
            f"no final answer after status inquiries: {outcome.response_message}".strip(),
            instruction.payout.amount_rupiah,
            day,
        )
        return PayResult.unresolved


@dataclass(frozen=True, slots=True)
class PayoutException:
    """An open exception about paying one of a day's batches, with the party it is for."""

    exception_id: str
    reason: str  # no_beneficiary_account | payout_rejected | payout_unresolved
    detail: str
    amount_rupiah: int
    batch_id: str
    payout_id: str | None  # None: no attempt was made (no account on file)
    party_kind: str
    party_id: str
    attempted: bool  # the batch has a payout attempt (so a no-account exception is stale)


async def open_payout_exceptions(
    connection: asyncpg.Connection, day: dt.date
) -> list[PayoutException]:
    """The open exceptions about paying `day`'s batches, by id."""
    rows = await connection.fetch(
        """select e.exception_id, e.reason, e.detail, e.amount_rupiah, b.batch_id, x.payout_id,
                  b.party_kind, b.party_id,
                  exists (select 1 from settlement_payouts a where a.batch_id = b.batch_id)
                      as attempted
             from settlement_exceptions e
             left join settlement_payouts x on x.payout_id = e.subject_id
             join settlement_batches b on b.batch_id = coalesce(x.batch_id, e.subject_id)
            where e.subject_kind = 'payout' and e.resolved_at is null and b.service_day = $1
            order by e.exception_id""",
        day,
    )
    return [PayoutException(**dict(row)) for row in rows]


async def day_closed_at(connection: asyncpg.Connection, day: dt.date) -> dt.datetime | None:
    """When `day` was first closed (`close_day`), or None if it never was."""
    found: dt.datetime | None = await connection.fetchval(
        "select first_closed_at from settlement_day_closes where service_day = $1", day
    )
    return found


async def open_exception(
    connection: asyncpg.Connection,
    subject_kind: str,
    subject_id: str,
    reason: str,
    detail: str,
    amount_rupiah: int,
    day: dt.date,
) -> None:
    await connection.execute(
        """insert into settlement_exceptions
             (exception_id, subject_kind, subject_id, reason, detail, amount_rupiah, service_day)
           values ($1, $2, $3, $4, $5, $6, $7)
           on conflict (subject_kind, subject_id) do nothing""",
        f"{subject_kind}:{subject_id}",
        subject_kind,
        subject_id,
        reason,
        detail[:500],
        amount_rupiah,
        day,
    )


async def export_bulk_csv(
    connection: asyncpg.Connection, day: dt.date, config: EndOfDayConfig, who: str, now: dt.datetime
) -> str:
    """Instead of SNAP: the day's unpaid batches as a bulk-transfer file for the bank's portal
    (attempts recorded as `exported`; the statement confirms them)."""
    instructions = await pending_instructions(connection, day, config, now)
    await record_instructions(connection, instructions, "exported", who, day, config)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        (
            "reference",
            "source_account",
            "beneficiary_bank",
            "beneficiary_account",
            "beneficiary_name",
            "amount",
            "remark",
        )
    )
    for instruction in instructions:
        payout = instruction.payout
        writer.writerow(
            (
                payout.partner_reference_no,
                payout.source_account_no,
                payout.beneficiary_bank_code,
                payout.beneficiary_account_no,
                payout.beneficiary_account_name,
                payout.amount_rupiah,
                payout.remark,
            )
        )
    return out.getvalue()


party_kinds = ("operator", "merchant")
# What a SNAP payout can carry (beneficiaryBankCode, beneficiaryAccountNo, beneficiaryAccountName).
bank_code_length_max = 8
account_no_length_max = 34
holder_name_length_max = 100


def party_account_problem(
    party_kind: str, party_id: str, name: str, bank_code: str, account_no: str
) -> str | None:
    """What is wrong with where a party is to be paid, or None. `bank_code` empty: the bank our
    payouts leave from (intrabank)."""
    if party_kind not in party_kinds:
        return f"a party is an operator or a merchant, not {party_kind!r}"
    if not party_id or not party_id.isprintable():
        return "the party's id is printable text"
    if bank_code and not (
        bank_code.isascii() and bank_code.isalnum() and len(bank_code) <= bank_code_length_max
    ):
        return f"a bank code is up to {bank_code_length_max} letters and digits (e.g. 009)"
    if (
        not (account_no.isascii() and account_no.isdigit())
        or len(account_no) > account_no_length_max
    ):
        return f"an account number is 1 to {account_no_length_max} digits"
    if not name.strip() or len(name) > holder_name_length_max or not name.isprintable():
        return f"the account holder's name is 1 to {holder_name_length_max} printable characters"
    return None


@dataclass(frozen=True, slots=True)
class PartyAccount:
    """Where a party is paid."""

    party_kind: str
    party_id: str
    name: str  # the account holder's name
    bank_code: str  # empty: the bank our payouts leave from
    account_no: str


async def party_accounts(
    connection: asyncpg.Connection, party_kind: str | None = None, party_id: str | None = None
) -> list[PartyAccount]:
    """The bank accounts on file (all, a kind's, or one party's), by kind and id."""
    rows = await connection.fetch(
        """select party_kind, party_id, name, bank_code, account_no from settlement_parties
            where ($1::text is null or party_kind = $1) and ($2::text is null or party_id = $2)
            order by party_kind, party_id""",
        party_kind,
        party_id,
    )
    return [PartyAccount(**dict(row)) for row in rows]


async def register_parties(
    connection: asyncpg.Connection, parties: Sequence[tuple[str, str, str, str, str]]
) -> None:
    """(party_kind, party_id, name, bank_code, account_no): where each party is paid. ValueError
    (and nothing stored) when one is malformed (`party_account_problem`)."""
    for party in parties:
        problem = party_account_problem(*party)
        if problem:
            raise ValueError(f"{party[0]} {party[1]}: {problem}")
    await connection.executemany(
        """insert into settlement_parties (party_kind, party_id, name, bank_code, account_no)
           values ($1, $2, $3, $4, $5)
           on conflict (party_kind, party_id) do update
              set name = excluded.name, bank_code = excluded.bank_code, account_no = excluded.account_no""",
        parties,
    )


async def set_party_account(
    connection: asyncpg.Connection, account: PartyAccount
) -> PartyAccount | None:
    """Put on file where a registered operator or merchant is paid; returns the account it
    replaces, if any. ValueError (nothing stored) for a malformed account or a party not
    registered. Attempts already made keep the account they were sent to."""
    from gateways.terminal_api.registry import PartyKind, party

    problem = party_account_problem(
        account.party_kind, account.party_id, account.name, account.bank_code, account.account_no
    )
    if problem:
        raise ValueError(problem)
    async with connection.transaction():
        if await party(connection, PartyKind(account.party_kind), account.party_id) is None:
            raise ValueError(f"no {account.party_kind} {account.party_id}: register it first")
        before = await party_accounts(connection, account.party_kind, account.party_id)
        await register_parties(
            connection,
            [
                (
                    account.party_kind,
                    account.party_id,
                    account.name,
                    account.bank_code,
                    account.account_no,
                )
            ],
        )
    return before[0] if before else None
