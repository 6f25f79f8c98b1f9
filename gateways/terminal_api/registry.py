"""Who and what the terminal side knows: operators, merchants, terminals, cards, deny list,
pending top-ups. Each function takes an asyncpg connection and is idempotent, so callers (the
SNAP virtual-account mapping, the demo, staff pages) can repeat them safely.

Ledger accounts have ids derived from what they belong to (`ledger.records.derive_id`), so any
component can name a card's purse without a lookup.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from bus_terminals.wire import reference_check
from gateways.terminal_api import books
from gateways.terminal_api.accounts import (
    bank_clearing_account_id as bank_clearing_account_id,
)
from gateways.terminal_api.accounts import (
    card_issue_transfer_id as card_issue_transfer_id,
)
from gateways.terminal_api.accounts import (
    fee_income_account_id as fee_income_account_id,
)
from gateways.terminal_api.accounts import (
    fee_income_owner as fee_income_owner,
)
from gateways.terminal_api.accounts import (
    merchant_payable_account_id as merchant_payable_account_id,
)
from gateways.terminal_api.accounts import (
    operator_revenue_account_id as operator_revenue_account_id,
)
from gateways.terminal_api.accounts import (
    pending_top_up_account_id as pending_top_up_account_id,
)
from gateways.terminal_api.accounts import (
    pending_top_up_transfer_id as pending_top_up_transfer_id,
)
from gateways.terminal_api.accounts import (
    purse_account_id as purse_account_id,
)
from gateways.terminal_api.accounts import (
    suspense_account_id as suspense_account_id,
)
from gateways.terminal_api.accounts import (
    suspense_owner as suspense_owner,
)
from ledger.records import Account, AccountFlags, AccountKind, booked_results


class TerminalRole(enum.StrEnum):
    validator = "validator"
    pos = "pos"


class TerminalStatus(enum.StrEnum):
    active = "active"
    revoked = "revoked"


@dataclass(frozen=True, slots=True)
class TerminalRow:
    terminal_id: str
    public_key: str
    role: TerminalRole
    operator_id: str | None
    merchant_id: str | None
    status: TerminalStatus
    next_batch_sequence: int


@dataclass(frozen=True, slots=True)
class CardAccounts:
    card_number: str
    purse_account_id: uuid.UUID
    pending_top_up_account_id: uuid.UUID


async def ensure_house_accounts(connection: asyncpg.Connection) -> None:
    await books.ensure_accounts(
        connection,
        [
            Account(fee_income_account_id, AccountKind.fee_income, fee_income_owner),
            Account(suspense_account_id, AccountKind.suspense, suspense_owner),
        ],
    )


async def register_operator(
    connection: asyncpg.Connection, operator_id: str, name: str = ""
) -> None:
    account_id = operator_revenue_account_id(operator_id)
    async with connection.transaction():
        await ensure_house_accounts(connection)
        await books.ensure_accounts(
            connection, [Account(account_id, AccountKind.operator_revenue, operator_id)]
        )
        await connection.execute(
            "insert into operators values ($1, $2, $3) on conflict (operator_id) do update "
            "set name = excluded.name",
            operator_id,
            name,
            account_id,
        )


async def register_merchant(
    connection: asyncpg.Connection, merchant_id: str, name: str = "", fee_basis_points: int = 0
) -> None:
    assert 0 <= fee_basis_points <= 10_000
    account_id = merchant_payable_account_id(merchant_id)
    async with connection.transaction():
        await ensure_house_accounts(connection)
        await books.ensure_accounts(
            connection, [Account(account_id, AccountKind.merchant_payable, merchant_id)]
        )
        await connection.execute(
            "insert into merchants values ($1, $2, $3, $4) on conflict (merchant_id) do update "
            "set name = excluded.name, fee_basis_points = excluded.fee_basis_points",
            merchant_id,
            name,
            fee_basis_points,
            account_id,
        )


async def register_terminal(
    connection: asyncpg.Connection,
    terminal_id: str,
    public_key: str,
    role: TerminalRole,
    *,
    operator_id: str | None = None,
    merchant_id: str | None = None,
) -> None:
    """Register (or re-key) a terminal. A validator belongs to an operator, a POS to a merchant."""
    assert (role == TerminalRole.validator) == (operator_id is not None)
    assert (role == TerminalRole.pos) == (merchant_id is not None)
    from bus_terminals.wire import card_terminal_number

    await connection.execute(
        "insert into terminals (terminal_id, public_key, role, operator_id, merchant_id, "
        "card_terminal_number) values ($1, $2, $3, $4, $5, $6) on conflict (terminal_id) do update "
        "set public_key = excluded.public_key, status = 'active'",
        terminal_id,
        public_key,
        role.value,
        operator_id,
        merchant_id,
        card_terminal_number(terminal_id),
    )


async def revoke_terminal(connection: asyncpg.Connection, terminal_id: str) -> bool:
    result = await connection.execute(
        "update terminals set status = 'revoked' where terminal_id = $1", terminal_id
    )
    return bool(result.endswith(" 1"))


async def terminal(
    connection: asyncpg.Connection, terminal_id: str, *, for_update: bool = False
) -> TerminalRow | None:
    """The terminal's row; `for_update` locks it until the transaction ends (uploads)."""
    row = await connection.fetchrow(
        "select terminal_id, public_key, role, operator_id, merchant_id, status, "
        "next_batch_sequence from terminals where terminal_id = $1"
        + (" for update" if for_update else ""),
        terminal_id,
    )
    if row is None:
        return None
    return TerminalRow(
        row["terminal_id"],
        row["public_key"],
        TerminalRole(row["role"]),
        row["operator_id"],
        row["merchant_id"],
        TerminalStatus(row["status"]),
        row["next_batch_sequence"],
    )


def card_accounts(card_number: str) -> CardAccounts:
    return CardAccounts(
        card_number, purse_account_id(card_number), pending_top_up_account_id(card_number)
    )


async def register_cards(connection: asyncpg.Connection, card_numbers: list[str]) -> None:
    """Create the ledger accounts of cards (purse, pending top-up) and their rows; idempotent."""
    if not card_numbers:
        return
    accounts = []
    for number in card_numbers:
        accounts.append(
            Account(
                purse_account_id(number),
                AccountKind.card_purse,
                number,
                # The purse never goes below zero online; offline taps book with `force`.
                AccountFlags.debits_must_not_exceed_credits,
            )
        )
        accounts.append(
            Account(pending_top_up_account_id(number), AccountKind.pending_top_up, number)
        )
    async with connection.transaction():
        await books.ensure_accounts(connection, accounts)
        await connection.execute(
            "insert into cards (card_number, purse_account_id, pending_top_up_account_id) "
            "select number, purse, pending from unnest($1::text[], $2::uuid[], $3::uuid[]) "
            "as given(number, purse, pending) on conflict (card_number) do nothing",
            card_numbers,
            [purse_account_id(number) for number in card_numbers],
            [pending_top_up_account_id(number) for number in card_numbers],
        )


async def register_card(connection: asyncpg.Connection, card_number: str) -> CardAccounts:
    """Issue (or look up) a card in the back office: its purse and pending top-up accounts."""
    await register_cards(connection, [card_number])
    return card_accounts(card_number)


async def add_pending_top_up(
    connection: asyncpg.Connection,
    top_up_id: str,
    card_number: str,
    amount_rupiah: int,
    paid_at: datetime,
) -> bool:
    """Announce value waiting for a card (the money is booked by the caller, into the card's
    pending top-up account). `paid_at` is when the bank took the payment (business time);
    terminals use it to recognise a delivery already on the card. Returns False if that
    top-up id was already announced."""
    assert amount_rupiah > 0
    await register_cards(connection, [card_number])
    result = await connection.execute(
        "insert into pending_top_ups (top_up_id, card_number, amount_rupiah, created_at) "
        "values ($1, $2, $3, $4) on conflict (top_up_id) do nothing",
        top_up_id,
        card_number,
        amount_rupiah,
        paid_at,
    )
    return bool(result.endswith(" 1"))


async def deny_cards(connection: asyncpg.Connection, card_numbers: list[str], reason: str) -> None:
    if card_numbers:
        await connection.execute(
            "insert into deny_list (card_number, reason) select unnest($1::text[]), $2 "
            "on conflict (card_number) do nothing",
            card_numbers,
            reason,
        )


async def deny_list_version(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("select coalesce(max(entry_id), 0) from deny_list"))


async def pay_pending_top_up(
    connection: asyncpg.Connection,
    top_up_id: str,
    card_number: str,
    amount_rupiah: int,
    *,
    paid_at: datetime,
    bank_code: str = "counter",
) -> bool:
    """Book money received for a card (bank clearing → its pending top-up account) and announce
    it to the terminals. Idempotent on `top_up_id`; returns False for a repeat. ValueError for
    a `top_up_id` the terminals' records cannot carry (it could never be delivered)."""
    from ledger.records import Transfer, TransferCode

    problem = reference_check(top_up_id)
    if problem:
        raise ValueError(f"top-up id {problem}")

    async with connection.transaction():
        await register_cards(connection, [card_number])
        clearing = bank_clearing_account_id(bank_code)
        await books.ensure_accounts(
            connection, [Account(clearing, AccountKind.bank_clearing, bank_code)]
        )
        outcomes = await books.create_transfers(
            connection,
            [
                Transfer(
                    pending_top_up_transfer_id(top_up_id),
                    clearing,
                    pending_top_up_account_id(card_number),
                    amount_rupiah,
                    TransferCode.pending_top_up,
                    card_number=card_number,
                    bank_reference=top_up_id,
                )
            ],
            now=paid_at,
        )
        assert outcomes[0].result in booked_results, outcomes
        return await add_pending_top_up(connection, top_up_id, card_number, amount_rupiah, paid_at)


async def card_view(connection: asyncpg.Connection, card_number: str) -> dict[str, object] | None:
    """What monitoring knows of a card: shadow balance, counters, gaps, flags, deny list."""
    known = await connection.fetchval("select 1 from cards where card_number = $1", card_number)
    if known is None:
        return None
    # The shadow: the card's balance after the highest counter booked.
    row = await connection.fetchrow(
        "select card_counter, balance_after_rupiah, time_ms from card_records "
        "where card_number = $1 and outcome = 'booked' order by card_counter desc limit 1",
        card_number,
    )
    counters = await connection.fetch(
        "select distinct card_counter from card_records where card_number = $1 "
        "and outcome in ('booked', 'anomaly') order by card_counter",
        card_number,
    )
    gaps = _first_gaps([r["card_counter"] for r in counters], counter_gaps_shown_max)
    flags = await connection.fetch(
        "select reason, terminal_id, sequence, card_counter, detail from card_flags "
        "where card_number = $1 order by flag_id limit 100",
        card_number,
    )
    denied = await connection.fetchval(
        "select reason from deny_list where card_number = $1", card_number
    )
    return {
        "card_number": card_number,
        "last_counter": row["card_counter"] if row else 0,
        "shadow_balance_rupiah": row["balance_after_rupiah"] if row else None,
        "last_tap_ms": row["time_ms"] if row else None,
        "counter_gaps": gaps,
        "flags": [dict(flag) for flag in flags],
        "denied": denied,
    }


counter_gaps_shown_max = 100


def _first_gaps(counters: list[int], most: int) -> list[int]:
    """The first `most` counters missing below the highest of the sorted `counters` (walked,
    not a set of every counter: a cloned card may claim a counter near 2**32)."""
    gaps: list[int] = []
    expected = 1
    for counter in counters:
        while expected < counter and len(gaps) < most:
            gaps.append(expected)
            expected += 1
        expected = counter + 1
    return gaps


async def issue_cards(
    connection: asyncpg.Connection,
    opening_balances_rupiah: dict[str, int],
    bank_code: str = "counter",
    *,
    now: datetime,
) -> None:
    """Register cards sold with value already on them (personalised with an opening balance):
    their accounts, and the opening balance booked from the selling point's bank clearing.
    Idempotent per card (the transfer id derives from the card number)."""
    from ledger.records import Transfer, TransferCode

    numbers = sorted(opening_balances_rupiah)
    clearing = bank_clearing_account_id(bank_code)
    async with connection.transaction():
        await books.ensure_accounts(
            connection, [Account(clearing, AccountKind.bank_clearing, bank_code)]
        )
        for start in range(0, len(numbers), 4_000):
            chunk = numbers[start : start + 4_000]
            await register_cards(connection, chunk)
            outcomes = await books.create_transfers(
                connection,
                [
                    Transfer(
                        card_issue_transfer_id(number),
                        clearing,
                        purse_account_id(number),
                        opening_balances_rupiah[number],
                        TransferCode.card_issue,
                        card_number=number,
                    )
                    for number in chunk
                    if opening_balances_rupiah[number] > 0
                ],
                now=now,
            )
            refused = [o for o in outcomes if o.result not in booked_results]
            assert not refused, refused[:3]


counter_gap_cards_max = 1_000


async def cards_with_counter_gaps(
    connection: asyncpg.Connection, limit: int = counter_gap_cards_max
) -> list[tuple[str, int, int]]:
    """Cards whose booked transactions skip counters: (card, highest counter, how many are
    missing). A gap is a transaction the card made that no terminal has reported yet (in
    doubt, or a terminal that has not uploaded); one that lasts is worth a look."""
    rows = await connection.fetch(
        "select card_number, max(card_counter) as highest, "
        "max(card_counter) - count(distinct card_counter) as missing from card_records "
        "where outcome in ('booked', 'anomaly') and card_counter > 0 group by card_number "
        "having max(card_counter) > count(distinct card_counter) "
        "order by missing desc, card_number limit $1",
        limit,
    )
    return [(row["card_number"], row["highest"], row["missing"]) for row in rows]


async def terminals_with_record_gaps(connection: asyncpg.Connection) -> list[tuple[str, int, int]]:
    """Terminals whose uploaded journal sequences skip: (terminal, highest sequence, missing).
    A terminal uploads every record in order, so a gap means records it never sent."""
    rows = await connection.fetch(
        "select terminal_id, max(sequence) as highest, max(sequence) - count(*) as missing "
        "from card_records group by terminal_id having max(sequence) > count(*) "
        "order by missing desc, terminal_id limit $1",
        counter_gap_cards_max,
    )
    return [(row["terminal_id"], row["highest"], row["missing"]) for row in rows]
