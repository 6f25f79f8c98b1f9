"""Who and what the terminal side knows: operators, merchants, terminals, cards, deny list,
pending top-ups. Each function takes an asyncpg connection and is idempotent, so callers (the
SNAP virtual-account mapping, the demo, staff pages) can repeat them safely.

Ledger accounts have ids derived from what they belong to (`ledger.records.derive_id`), so any
component can name a card's purse without a lookup.

The rules of registration (what an id, a key or an opening balance may be; that a terminal's
owner exists and is active) live here, once: the admin API and the `ksh` commands both call
these functions and turn a `RegistryError` into their own answer (a problem, a one-line error).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from bus_terminals.wire import (
    WireError,
    card_number_length_max,
    load_public_key,
    reference_check,
    rupiah_max,
    terminal_id_check,
)
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
    suspended = "suspended"  # uploads refused until a supervisor resumes it (`suspension`)
    revoked = "revoked"  # for good: registering it again with a new key reactivates it


class PartyKind(enum.StrEnum):
    """Who a terminal belongs to and whose payable a settlement closes."""

    operator = "operator"  # runs validators; earns fares
    merchant = "merchant"  # runs points of sale; is paid its sales less its fee


class PartyStatus(enum.StrEnum):
    active = "active"
    suspended = "suspended"  # its terminals revoked; no new one; what it is owed is still paid


class RegistryError(ValueError):
    """A registration refused, said in one line. `code` names the kind of refusal (the admin
    API's problem type), `field` the input at fault (None: the combination of inputs)."""

    def __init__(self, message: str, *, code: str = "bad_field", field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


class NotRegistered(RegistryError):
    """What the change names (an owner, a terminal, a party) is not registered."""


class Conflict(RegistryError):
    """The change clashes with what is registered: an id taken, a suspended owner."""


name_length_max = 200
card_number_length_min = 8


def check_reference(field: str, value: str) -> str:
    """An operator, merchant or top-up id: printable, 1 to 64 characters (what the wire and the
    ledger's references hold)."""
    problem = reference_check(value)
    if problem:
        raise RegistryError(f"{field} {problem}", field=field)
    return value


def check_name(value: str) -> str:
    if len(value) > name_length_max or not value.isprintable():
        raise RegistryError(f"name is at most {name_length_max} printable characters", field="name")
    return value


def check_card_number(number: str) -> str:
    if not (number.isascii() and number.isdigit()) or not (
        card_number_length_min <= len(number) <= card_number_length_max
    ):
        raise RegistryError(
            f"card_number must be {card_number_length_min} to {card_number_length_max} digits",
            field="card_number",
        )
    return number


def check_opening_balance(rupiah: int) -> int:
    """What a card may be sold with: 0 to the purse's cap."""
    if not 0 <= rupiah <= rupiah_max:
        raise RegistryError(
            f"opening_balance_rupiah is 0..{rupiah_max:,}", field="opening_balance_rupiah"
        )
    return rupiah


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
    connection: asyncpg.Connection, operator_id: str, name: str = "", *, new: bool = False
) -> None:
    """Register an operator and its revenue account; again with the same id renames it, unless
    `new` (then an id already registered is a `Conflict`)."""
    check_reference("operator_id", operator_id)
    check_name(name)
    account_id = operator_revenue_account_id(operator_id)
    async with connection.transaction():
        await ensure_house_accounts(connection)
        await books.ensure_accounts(
            connection, [Account(account_id, AccountKind.operator_revenue, operator_id)]
        )
        inserted = await connection.fetchval(
            "insert into operators (operator_id, name, revenue_account_id) values ($1, $2, $3) "
            "on conflict (operator_id) do "
            + ("nothing" if new else "update set name = excluded.name")
            + " returning true",
            operator_id,
            name,
            account_id,
        )
        if not inserted:
            raise _taken(PartyKind.operator, operator_id)


fee_basis_points_max = 10_000


async def register_merchant(
    connection: asyncpg.Connection,
    merchant_id: str,
    name: str = "",
    fee_basis_points: int = 0,
    *,
    new: bool = False,
) -> None:
    """Register a merchant (its fee per sale, in basis points) and its payable account; again
    with the same id updates name and fee, unless `new` (then it is a `Conflict`)."""
    check_reference("merchant_id", merchant_id)
    check_name(name)
    if not 0 <= fee_basis_points <= fee_basis_points_max:
        raise RegistryError(
            f"fee_basis_points is 0..{fee_basis_points_max}", field="fee_basis_points"
        )
    account_id = merchant_payable_account_id(merchant_id)
    async with connection.transaction():
        await ensure_house_accounts(connection)
        await books.ensure_accounts(
            connection, [Account(account_id, AccountKind.merchant_payable, merchant_id)]
        )
        inserted = await connection.fetchval(
            "insert into merchants (merchant_id, name, fee_basis_points, payable_account_id) "
            "values ($1, $2, $3, $4) on conflict (merchant_id) do "
            + (
                "nothing"
                if new
                else "update set name = excluded.name, fee_basis_points = excluded.fee_basis_points"
            )
            + " returning true",
            merchant_id,
            name,
            fee_basis_points,
            account_id,
        )
        if not inserted:
            raise _taken(PartyKind.merchant, merchant_id)


def _taken(kind: PartyKind, party_id: str) -> Conflict:
    return Conflict(
        f"{kind.value} {party_id} is already registered",
        code="already_registered",
        field=f"{kind.value}_id",
    )


async def suspend_party(
    connection: asyncpg.Connection, kind: PartyKind, party_id: str
) -> list[str]:
    """Suspend an operator or merchant and revoke its active terminals (returned, sorted), in
    one transaction. What it is owed is still closed and paid at end of day."""
    table, key = _party_table(kind)
    async with connection.transaction():
        status = await connection.fetchval(
            f"select status from {table} where {key} = $1 for update", party_id
        )
        if status is None:
            raise NotRegistered(
                f"no {kind.value} {party_id}", code=f"{kind.value}_not_found", field=key
            )
        if status == PartyStatus.suspended:
            raise Conflict(
                f"{kind.value} {party_id} is already suspended", code="already_suspended"
            )
        await connection.execute(
            f"update {table} set status = 'suspended' where {key} = $1", party_id
        )
        rows = await connection.fetch(
            f"update terminals set status = 'revoked' where {key} = $1 and status <> 'revoked' "
            "returning terminal_id",
            party_id,
        )
    return sorted(row["terminal_id"] for row in rows)


def _party_table(kind: PartyKind) -> tuple[str, str]:
    """The table of `kind` and its key column (also the terminals' column naming the owner)."""
    return (
        ("operators", "operator_id") if kind is PartyKind.operator else ("merchants", "merchant_id")
    )


async def register_terminal(
    connection: asyncpg.Connection,
    terminal_id: str,
    public_key: str,
    role: TerminalRole,
    *,
    operator_id: str | None = None,
    merchant_id: str | None = None,
    new: bool = False,
) -> None:
    """Register a terminal: a validator belongs to an operator, a POS to a merchant, either
    registered and active; `public_key` is its raw Ed25519 key in base64. Again with the same
    id re-keys and reactivates it, unless `new` (then it is a `Conflict`)."""
    from bus_terminals.wire import card_terminal_number

    problem = terminal_id_check(terminal_id)
    if problem:
        raise RegistryError(f"terminal_id {problem}", field="terminal_id")
    if (role == TerminalRole.validator) != (operator_id is not None) or (
        role == TerminalRole.pos
    ) != (merchant_id is not None):
        raise RegistryError("a validator belongs to an operator, a POS to a merchant")
    try:
        load_public_key(public_key)
    except WireError as error:
        raise RegistryError(str(error), field="public_key") from None
    kind = PartyKind.operator if operator_id is not None else PartyKind.merchant
    owner = operator_id or merchant_id
    table, key = _party_table(kind)
    status = await connection.fetchval(
        f"select status from {table} where {key} = $1 for share", owner
    )
    if status is None:
        raise NotRegistered(
            f"no {kind.value} {owner}: register the operator or merchant first",
            code="owner_not_found",
            field=key,
        )
    if status == PartyStatus.suspended:
        raise Conflict(f"{kind.value} {owner} is suspended", code="owner_suspended", field=key)
    try:
        inserted = await connection.fetchval(
            "insert into terminals (terminal_id, public_key, role, operator_id, merchant_id, "
            "card_terminal_number) values ($1, $2, $3, $4, $5, $6) on conflict (terminal_id) do "
            + (
                "nothing"
                if new
                else "update set public_key = excluded.public_key, status = 'active'"
            )
            + " returning true",
            terminal_id,
            public_key,
            role.value,
            operator_id,
            merchant_id,
            card_terminal_number(terminal_id),
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(
            f"another terminal has the same card number as {terminal_id} (a checksum of the "
            "id): choose another id",
            code="terminal_number_taken",
            field="terminal_id",
        ) from None
    if not inserted:
        raise Conflict(
            f"terminal {terminal_id} is already registered",
            code="already_registered",
            field="terminal_id",
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
    # A card already registered has its accounts (made with its row); its purse may be closed
    # since (replaced at the service desk), which an account made again would not match.
    known = await connection.fetch(
        "select card_number from cards where card_number = any($1::text[])", card_numbers
    )
    card_numbers = sorted(set(card_numbers) - {row["card_number"] for row in known})
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
    check_card_number(card_number)
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


class DenySource(enum.StrEnum):
    rule = "rule"  # an automatic rule of the back office (counter_repeat, balance_mismatch)
    staff = "staff"  # a person (a lost or stolen card, fraud found by staff)


async def deny_cards(
    connection: asyncpg.Connection,
    card_numbers: list[str],
    reason: str,
    *,
    source: DenySource = DenySource.rule,
    username: str = "",
    note: str = "",
    now: datetime,
) -> list[str]:
    """Put cards on the deny list (those already on it stay as they are), each addition also a
    row of its history (`deny_list_changes`, whose change id is the entry's id and the list's
    new version). Returns the cards added, at business time `now`."""
    if not card_numbers:
        return []
    async with connection.transaction():
        await hold_deny_list_order(connection)
        rows = await _add_to_deny_list(
            connection, card_numbers, reason, source, username, note, now
        )
    return sorted(row["card_number"] for row in rows)


async def hold_deny_list_order(connection: asyncpg.Connection) -> None:
    """Taken by every writer of `deny_list_changes` before it takes a change id, held to its
    commit. A change id is a terminal's deny list version (a terminal at version V is sent the
    changes above V); ids come from a sequence, so two writers could commit out of order and a
    terminal syncing between the two commits would skip the lower id for good. With this lock
    the ids commit in their order."""
    await connection.execute("select pg_advisory_xact_lock(hashtext('ksh-deny-list-changes'))")


async def _add_to_deny_list(
    connection: asyncpg.Connection,
    card_numbers: list[str],
    reason: str,
    source: DenySource,
    username: str,
    note: str,
    now: datetime,
) -> list[asyncpg.Record]:
    return await connection.fetch(
        """with added as (
               insert into deny_list (card_number, reason, source, added_by, note, added_at)
               select number, $2, $3, $4, $5, $6
                 from unnest($1::text[]) as given(number)
               on conflict (card_number) do nothing
               returning entry_id, card_number, added_at)
           insert into deny_list_changes
                  (change_id, card_number, change, reason, source, username, note, at)
           select entry_id, card_number, 'added', $2, $3, $4, $5, added_at from added
           returning card_number""",
        sorted(set(card_numbers)),
        reason,
        source.value,
        username,
        note,
        now,
    )


# The staff action of an issuing desk writing a blocked card active again (`ksh card unblock`);
# its detail's `card_counter` is the card's newest counter then: its later transactions are the
# desk's doing, not a terminal's that ignored the block (`ingest`).
chip_unblock_action = "unblock_card_chip"

# The deny list entries terminals write onto the chip (`bus_terminals.terminal`): staff blocks
# final for that piece of plastic, the causes a replacement follows, and cards replaced. Not
# automatic entries nor fraud: staff may lift those, and a terminal cannot unblock a card.
chip_block_reasons = ("damaged", "lost", "stolen")
# A condition on a `deny_list` row `d`: its card is to be blocked on the chip.
chip_block_condition = (
    "((d.source = 'staff' and d.reason in ('damaged', 'lost', 'stolen')) or exists "
    "(select 1 from card_replacements r where r.old_card_number = d.card_number))"
)
assert all(f"'{reason}'" in chip_block_condition for reason in chip_block_reasons)


async def chip_block_changes(
    connection: asyncpg.Connection, since: int, limit: int
) -> list[tuple[str, bool]]:
    """The cards whose chip block changed after change `since` (at most `limit`), each with
    whether it is to be blocked now (added) or not any more (lifted)."""
    rows = await connection.fetch(
        "select c.card_number, exists (select 1 from deny_list d "
        f"where d.card_number = c.card_number and {chip_block_condition}) as blocked "
        "from (select distinct card_number from deny_list_changes where change_id > $1 "
        "and change in ('added', 'lifted') and reason = any($2::text[]) limit $3) c",
        since,
        list(chip_block_reasons),
        limit,
    )
    return [(row["card_number"], row["blocked"]) for row in rows]


async def chip_block_requested(
    connection: asyncpg.Connection, card_numbers: list[str]
) -> dict[str, int | None]:
    """Of these cards, those the back office ever asked to block on the chip: None while it
    still does, else when staff last lifted the block (Unix ms)."""
    rows = await connection.fetch(
        "select c.card_number, case when exists (select 1 from deny_list d "
        f"where d.card_number = c.card_number and {chip_block_condition}) then null else "
        "(select (extract(epoch from max(l.at)) * 1000)::bigint from deny_list_changes l "
        "where l.card_number = c.card_number and l.change = 'lifted' "
        "and l.reason = any($2::text[])) end as lifted_ms "
        "from (select distinct card_number from deny_list_changes "
        "where card_number = any($1::text[]) and change = 'added' and source = 'staff' "
        "and reason = any($2::text[])) c",
        card_numbers,
        list(chip_block_reasons),
    )
    return {row["card_number"]: row["lifted_ms"] for row in rows}


async def deny_list_version(connection: asyncpg.Connection) -> int:
    """The highest change of the deny list (an addition, a review, a lift)."""
    return int(
        await connection.fetchval("select coalesce(max(change_id), 0) from deny_list_changes")
    )


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
        "chip_block": await chip_block_of(connection, card_number),
    }


async def chip_block_of(connection: asyncpg.Connection, card_number: str) -> dict[str, Any] | None:
    """The card's last block written on its chip, as the back office took it (`kind` block):
    the terminal, its record, the card's counter and the time (the terminal's clock, Unix ms),
    and `active_again_counter`: the first counter the card committed after it (a desk unblocked
    it: `card_reader.ksh_card.unblock` writes no record), or None while it is blocked."""
    row = await connection.fetchrow(
        "select b.terminal_id, b.sequence, b.card_counter, b.time_ms, "
        "(select min(l.card_counter) from card_records l where l.card_number = b.card_number "
        "and l.card_counter > b.card_counter and l.outcome = 'booked') as active_again_counter "
        "from card_records b where b.card_number = $1 and b.kind = 'block' "
        "and b.outcome = 'booked' order by b.card_counter desc limit 1",
        card_number,
    )
    return None if row is None else dict(row)


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
    new: bool = False,
) -> None:
    """Register cards sold with value already on them (personalised with an opening balance):
    their accounts, and the opening balance booked from the selling point's bank clearing.
    Idempotent per card (the transfer id derives from the card number), unless `new`: then a
    card already issued is a `Conflict` and nothing is issued."""
    from ledger.records import Transfer, TransferCode

    for number, rupiah in opening_balances_rupiah.items():
        check_card_number(number)
        check_opening_balance(rupiah)
    numbers = sorted(opening_balances_rupiah)
    clearing = bank_clearing_account_id(bank_code)
    async with connection.transaction():
        if new:
            await _refuse_issued(connection, numbers)
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
            if refused:
                raise Conflict(
                    f"{len(refused)} of these cards were issued before with another opening "
                    f"balance ({refused[0].result})",
                    code="issued_differently",
                    field="opening_balance_rupiah",
                )


async def _refuse_issued(connection: asyncpg.Connection, numbers: list[str]) -> None:
    """A `Conflict` naming the first of `numbers` already issued. Issuing is serialised for
    the rest of the transaction, so two desks cannot both find a number free."""
    await connection.execute("select pg_advisory_xact_lock(hashtext('ksh-card-issue'))")
    issued = await connection.fetch(
        "select card_number from cards where card_number = any($1::text[]) "
        "order by card_number limit 1",
        numbers,
    )
    if issued:
        raise Conflict(
            f"card {issued[0]['card_number']} is already issued",
            code="already_registered",
            field="card_number",
        )


async def highest_card_number(connection: asyncpg.Connection, at_least: int) -> int | None:
    """The highest card number issued that is at least `at_least` (and no longer than a card
    number), or None: where a new run of numbers can start."""
    found = await connection.fetchval(
        "select max(card_number::numeric) from cards where length(card_number) = $1 "
        "and card_number >= $2",
        len(str(at_least)),
        str(at_least),
    )
    return None if found is None else int(found)


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


# ------------------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class PartyRow:
    """An operator or merchant as registered, with how many terminals it has."""

    kind: PartyKind
    party_id: str
    name: str
    status: PartyStatus
    account_id: uuid.UUID  # the operator's revenue or the merchant's payable
    fee_basis_points: int  # a merchant's fee per sale (0 for an operator)
    terminals_active: int
    terminals: int


async def parties(
    connection: asyncpg.Connection, kind: PartyKind, party_id: str | None = None
) -> list[PartyRow]:
    """Every operator or merchant (or the one named), by id."""
    table, key = _party_table(kind)
    account = "revenue_account_id" if kind is PartyKind.operator else "payable_account_id"
    fee = "0" if kind is PartyKind.operator else "p.fee_basis_points"
    rows = await connection.fetch(
        f"""select p.{key} as party_id, p.name, p.status, p.{account} as account_id,
                   {fee} as fee_basis_points,
                   count(t.terminal_id) filter (where t.status = 'active') as terminals_active,
                   count(t.terminal_id) as terminals
              from {table} p left join terminals t on t.{key} = p.{key}
             where $1::text is null or p.{key} = $1
             group by p.{key} order by p.{key}""",
        party_id,
    )
    return [
        PartyRow(
            kind,
            row["party_id"],
            row["name"],
            PartyStatus(row["status"]),
            row["account_id"],
            row["fee_basis_points"],
            row["terminals_active"],
            row["terminals"],
        )
        for row in rows
    ]


async def party(connection: asyncpg.Connection, kind: PartyKind, party_id: str) -> PartyRow | None:
    found = await parties(connection, kind, party_id)
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class TerminalListing:
    """A terminal as registered, for people (`TerminalRow` is what an upload needs)."""

    terminal_id: str
    role: TerminalRole
    owner_kind: PartyKind
    owner_id: str
    status: TerminalStatus
    public_key: str
    card_terminal_number: int
    next_batch_sequence: int
    registered_at: datetime
    feed_service_end: date | None
    suspended_at: datetime | None  # while suspended: when, by whom ('automatic' or a
    suspended_by: str | None  # supervisor) and why
    suspended_reason: str | None


async def terminal_listings(
    connection: asyncpg.Connection,
    *,
    terminal_id: str | None = None,
    owner: tuple[PartyKind, str] | None = None,
) -> list[TerminalListing]:
    """Every terminal (or the one named, or an owner's), by id."""
    owner_kind, owner_id = owner if owner else (None, None)
    rows = await connection.fetch(
        """select terminal_id, role, operator_id, merchant_id, status, public_key,
                  card_terminal_number, next_batch_sequence, registered_at, feed_service_end,
                  suspended_at, suspended_by, suspended_reason
             from terminals
            where ($1::text is null or terminal_id = $1)
              and ($2::text is null or ($2 = 'operator' and operator_id = $3)
                   or ($2 = 'merchant' and merchant_id = $3))
            order by terminal_id""",
        terminal_id,
        owner_kind,
        owner_id,
    )
    return [
        TerminalListing(
            row["terminal_id"],
            TerminalRole(row["role"]),
            PartyKind.operator if row["operator_id"] is not None else PartyKind.merchant,
            row["operator_id"] or row["merchant_id"],
            TerminalStatus(row["status"]),
            row["public_key"],
            row["card_terminal_number"],
            row["next_batch_sequence"],
            row["registered_at"],
            row["feed_service_end"],
            row["suspended_at"],
            row["suspended_by"],
            row["suspended_reason"],
        )
        for row in rows
    ]


card_uid_bytes = 7


async def register_card_uids(connection: asyncpg.Connection, uids: dict[str, bytes]) -> None:
    """Record the UID of issued cards (the back office verifies each card's Transaction MAC with
    a key diversified from it). A card's UID never changes: another UID for a card that has one
    is a `Conflict`, and nothing is recorded."""
    for number, uid in uids.items():
        if len(uid) != card_uid_bytes:
            raise RegistryError(
                f"card {number}: a UID is {card_uid_bytes} bytes, not {len(uid)}", field="uid"
            )
    if not uids:
        return
    async with connection.transaction():
        rows = await connection.fetch(
            "update cards c set uid = coalesce(c.uid, given.uid) "
            "from unnest($1::text[], $2::bytea[]) as given(number, uid) "
            "where c.card_number = given.number returning c.card_number, c.uid",
            list(uids),
            list(uids.values()),
        )
        found = {row["card_number"]: bytes(row["uid"]) for row in rows}
        missing = sorted(set(uids) - set(found))
        if missing:
            raise NotRegistered(f"card {missing[0]} was never issued", field="card_number")
        for number, uid in found.items():
            if uid != uids[number]:
                raise Conflict(f"card {number} has another UID ({uid.hex()})", field="uid")
