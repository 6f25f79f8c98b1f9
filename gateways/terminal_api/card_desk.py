"""The service desk's work on cards: register a card to its holder, block a lost or stolen card
and replace it, and keep the deny list (review automatic entries, lift them).

- A registered card belongs to a person (name, phone, the national ID number as a salted hash
  and its last four digits) and may hold up to Bank Indonesia's cap for registered e-money
  (Rp 20,000,000; Rp 2,000,000 unregistered): top-ups above a card's cap are refused.
- A blocked card goes on the deny list (reason, who, when); terminals refuse it from their next
  sync. A registered card blocked as lost, stolen or damaged can be replaced by a new card: after
  the waiting period (`replacement_wait_default`, for offline taps still on their way) its
  balance as the books know it (purse, and pending top-ups not yet on the card) moves to the new
  card as pending top-ups, delivered at its next tap, and the old purse account is closed. A
  late tap of the old card is then booked against suspense and flagged `purse_closed`
  (`planning.judge_booking`): the balance is never paid twice.
- Deny list entries say where they came from (an automatic rule or a person); staff review the
  automatic ones and lift entries with a note. Lifting a fraud entry takes two people: one asks,
  a supervisor other than them lifts. Every change is a row of `deny_list_changes`, and a lift
  reaches the terminals at their next sync as an addition does.

Refusals are `registry.RegistryError`s, as for registration: the admin API and `ksh` turn them
into a problem or a one-line error. Times are the caller's business time.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import secrets
from dataclasses import dataclass

import asyncpg

from bus_terminals.wire import rupiah_max
from gateways.staff import Role, StaffMember
from gateways.terminal_api import books, registry
from gateways.terminal_api.registry import Conflict, DenySource, NotRegistered, RegistryError
from ledger.records import Transfer, TransferCode, booked_results, derive_id

# Bank Indonesia's caps on an e-money balance (reference/indonesia.md). The chip's value file
# holds at most the unregistered cap (`card_reader.ksh_card.balance_max_rupiah`): a registered
# card's value above it waits as pending top-ups until the card has room.
purse_cap_rupiah_unregistered = 2_000_000
purse_cap_rupiah_registered = 20_000_000
assert purse_cap_rupiah_unregistered == rupiah_max
replacement_wait_default = dt.timedelta(days=3)  # setting `replacement_wait_days`
replacement_lock = "ksh-card-replacement"  # one replacement at a time, and refunds wait for it
# Who took the pending top-ups a replacement moved on (`pending_top_ups.taken_terminal_id`): a
# late delivery of one is then booked from suspense, as any second delivery is.
desk_taker = "service-desk"
nik_digits = 16  # Nomor Induk Kependudukan
nik_salt_bytes = 16
scrypt_n, scrypt_r, scrypt_p = 2**14, 8, 1  # as staff passwords: a NIK has little entropy
phone_pattern = re.compile(r"\+?[0-9]{8,15}")
note_length_max = 500
deny_entries_listed_max = 1_000


class BlockCause(enum.StrEnum):
    lost = "lost"
    stolen = "stolen"
    damaged = "damaged"
    fraud = "fraud"


replaceable_causes = frozenset({BlockCause.lost, BlockCause.stolen, BlockCause.damaged})
# The same causes are final for the plastic: terminals block those cards on the chip itself.
assert {cause.value for cause in replaceable_causes} == set(registry.chip_block_reasons)
# Entries whose lifting takes two people: staff found fraud, or a rule saw a cloned or
# tampered card (the ingest's `counter_repeat`, `balance_mismatch`).
fraud_reasons = frozenset({BlockCause.fraud.value, "counter_repeat", "balance_mismatch"})


class LiftOutcome(enum.StrEnum):
    lifted = "lifted"
    awaiting_approval = "awaiting_approval"  # a fraud entry: a supervisor other than the asker


# ------------------------------------------------------------------------------ holders


@dataclass(frozen=True, slots=True)
class Holder:
    card_number: str
    name: str
    nik_last4: str
    phone: str
    registered_by: str
    registered_at: dt.datetime


def check_nik(nik: str) -> str:
    if not (nik.isascii() and nik.isdigit() and len(nik) == nik_digits):
        raise RegistryError(f"nik is the {nik_digits}-digit national ID number", field="nik")
    return nik


def check_phone(phone: str) -> str:
    """A phone number, spaces and dashes taken out: 8 to 15 digits, maybe a leading +."""
    compact = phone.replace(" ", "").replace("-", "")
    if not phone_pattern.fullmatch(compact):
        raise RegistryError("phone is 8 to 15 digits (a leading + allowed)", field="phone")
    return compact


def check_note(note: str) -> str:
    if not note.strip() or len(note) > note_length_max or not note.isprintable():
        raise RegistryError(
            f"a note says why, in 1 to {note_length_max} printable characters", field="note"
        )
    return note.strip()


def nik_digest(nik: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        nik.encode(), salt=salt, n=scrypt_n, r=scrypt_r, p=scrypt_p, dklen=32, maxmem=2**26
    )


async def _require_issued(connection: asyncpg.Connection, card_number: str, field: str) -> None:
    registry.check_card_number(card_number)
    if not await connection.fetchval("select 1 from cards where card_number = $1", card_number):
        raise NotRegistered(f"card {card_number} was never issued", field=field)


async def refuse_replaced(connection: asyncpg.Connection, card_number: str, so: str) -> None:
    """A replaced card's balance lives on its new card and its purse is closed: it is never
    made usable again (its taps would be paid from suspense)."""
    replaced = await connection.fetchval(
        "select new_card_number from card_replacements where old_card_number = $1", card_number
    )
    if replaced is not None:
        raise Conflict(f"card {card_number} was replaced by {replaced}: {so}", code="card_replaced")


async def check_unblock(connection: asyncpg.Connection, card_number: str) -> None:
    """Whether an issuing desk may write a blocked card active again on its chip (`ksh card
    unblock`): a card the back office issued and has not replaced."""
    await _require_issued(connection, card_number, "card_number")
    # Until the caller's commit no replacement of the card begins (the replacements' lock).
    await connection.execute(f"select pg_advisory_xact_lock(hashtext('{replacement_lock}'))")
    await refuse_replaced(connection, card_number, "its chip stays blocked")


async def register_holder(
    connection: asyncpg.Connection,
    card_number: str,
    name: str,
    nik: str,
    phone: str,
    *,
    username: str,
    now: dt.datetime,
) -> Holder:
    """Register an issued card to a person. A card registered already is a `Conflict`, as is a
    card on the deny list (unblock or replace it first)."""
    if not name.strip():
        raise RegistryError("name is needed", field="name")
    registry.check_name(name)
    check_nik(nik)
    phone = check_phone(phone)
    await _require_issued(connection, card_number, "card_number")
    denied = await connection.fetchval(
        "select reason from deny_list where card_number = $1", card_number
    )
    if denied is not None:
        raise Conflict(f"card {card_number} is on the deny list ({denied})", code="card_denied")
    salt = secrets.token_bytes(nik_salt_bytes)
    inserted = await connection.fetchval(
        "insert into card_holders (card_number, name, nik_salt, nik_hash, nik_last4, phone, "
        "registered_by, registered_at) values ($1, $2, $3, $4, $5, $6, $7, $8) "
        "on conflict (card_number) do nothing returning true",
        card_number,
        name.strip(),
        salt,
        nik_digest(nik, salt),
        nik[-4:],
        phone,
        username,
        now,
    )
    if not inserted:
        raise Conflict(f"card {card_number} is registered already", code="already_registered")
    return Holder(card_number, name.strip(), nik[-4:], phone, username, now)


async def holder_of(connection: asyncpg.Connection, card_number: str) -> Holder | None:
    row = await connection.fetchrow(
        "select card_number, name, nik_last4, phone, registered_by, registered_at "
        "from card_holders where card_number = $1",
        card_number,
    )
    return None if row is None else Holder(**dict(row))


async def nik_matches(connection: asyncpg.Connection, card_number: str, nik: str) -> bool:
    """Whether `nik` is the registered holder's (what a rider says at the desk)."""
    row = await connection.fetchrow(
        "select nik_salt, nik_hash from card_holders where card_number = $1", card_number
    )
    if row is None or not (nik.isascii() and nik.isdigit()):
        return False
    return secrets.compare_digest(nik_digest(nik, bytes(row["nik_salt"])), bytes(row["nik_hash"]))


async def purse_cap_rupiah(connection: asyncpg.Connection, card_number: str) -> int:
    registered = await connection.fetchval(
        "select 1 from card_holders where card_number = $1", card_number
    )
    return purse_cap_rupiah_registered if registered else purse_cap_rupiah_unregistered


async def top_up_room_rupiah(connection: asyncpg.Connection, card_number: str) -> int:
    """How much more may be paid in for the card: its cap less its purse and pending top-ups
    (as the books know them), never below zero."""
    accounts = registry.card_accounts(card_number)
    found = await books.balances(
        connection, [accounts.purse_account_id, accounts.pending_top_up_account_id]
    )
    held = sum(balance.credit_balance for balance in found.values())
    return max(0, await purse_cap_rupiah(connection, card_number) - held)


# ------------------------------------------------------------------------------ deny list


@dataclass(frozen=True, slots=True)
class DenyEntry:
    card_number: str
    reason: str
    source: DenySource
    added_by: str
    added_at: dt.datetime
    note: str
    reviewed_by: str | None  # the last person who looked at it and kept it
    lift_requested_by: str | None  # a fraud entry's lift waiting for a second person


@dataclass(frozen=True, slots=True)
class DenyChange:
    change_id: int
    card_number: str
    change: str  # added | reviewed | lift_requested | lifted
    reason: str
    source: DenySource
    username: str
    note: str
    at: dt.datetime


_entries_query = """
    select d.card_number, d.reason, d.source, d.added_by, d.added_at, d.note,
           (select username from deny_list_changes c where c.card_number = d.card_number
             and c.change_id > d.entry_id and c.change = 'reviewed'
             order by c.change_id desc limit 1) as reviewed_by,
           (select username from deny_list_changes c where c.card_number = d.card_number
             and c.change_id > d.entry_id and c.change = 'lift_requested'
             order by c.change_id desc limit 1) as lift_requested_by
      from deny_list d
"""


def _entry(row: asyncpg.Record) -> DenyEntry:
    return DenyEntry(**{**dict(row), "source": DenySource(row["source"])})


async def deny_entry(
    connection: asyncpg.Connection, card_number: str, *, for_update: bool = False
) -> DenyEntry | None:
    row = await connection.fetchrow(
        _entries_query + " where d.card_number = $1" + (" for update of d" if for_update else ""),
        card_number,
    )
    return None if row is None else _entry(row)


async def deny_entries(
    connection: asyncpg.Connection,
    *,
    source: DenySource | None = None,
    unreviewed: bool = False,
    limit: int = deny_entries_listed_max,
) -> list[DenyEntry]:
    """The deny list as it stands, newest first; `unreviewed`: automatic entries nobody has
    looked at yet (what staff review)."""
    rows = await connection.fetch(
        f"select * from ({_entries_query}) e where ($1::text is null or e.source = $1) "
        "and (not $2 or (e.source = 'rule' and e.reviewed_by is null)) "
        "order by e.added_at desc, e.card_number limit $3",
        None if source is None else source.value,
        unreviewed,
        limit,
    )
    return [_entry(row) for row in rows]


async def deny_history(connection: asyncpg.Connection, card_number: str) -> list[DenyChange]:
    rows = await connection.fetch(
        "select change_id, card_number, change, reason, source, username, note, at "
        "from deny_list_changes where card_number = $1 order by change_id",
        card_number,
    )
    return [DenyChange(**{**dict(row), "source": DenySource(row["source"])}) for row in rows]


async def block_card(
    connection: asyncpg.Connection,
    card_number: str,
    cause: BlockCause,
    note: str,
    *,
    username: str,
    now: dt.datetime,
) -> None:
    """Put an issued card on the deny list in a person's name; terminals refuse it from their
    next sync. A card on the list already is a `Conflict` (its entry says why)."""
    await _require_issued(connection, card_number, "card_number")
    added = await registry.deny_cards(
        connection,
        [card_number],
        cause.value,
        source=DenySource.staff,
        username=username,
        note=check_note(note),
        now=now,
    )
    if not added:
        entry = await deny_entry(connection, card_number)
        assert entry is not None
        raise Conflict(
            f"card {card_number} is on the deny list already ({entry.reason}, "
            f"{entry.source.value})",
            code="already_denied",
        )


async def _change(
    connection: asyncpg.Connection,
    entry: DenyEntry,
    change: str,
    *,
    username: str,
    note: str,
    now: dt.datetime,
) -> None:
    async with connection.transaction():
        await registry.hold_deny_list_order(connection)
        await connection.execute(
            "insert into deny_list_changes (card_number, change, reason, source, username, "
            "note, at) values ($1, $2, $3, 'staff', $4, $5, $6)",
            entry.card_number,
            change,
            entry.reason,
            username,
            note,
            now,
        )


async def _open_entry(connection: asyncpg.Connection, card_number: str) -> DenyEntry:
    """The card's entry, locked for a change; the deny list's order first, as every writer
    takes it, so that an automatic denial of the same card cannot wait on us crosswise."""
    await registry.hold_deny_list_order(connection)
    entry = await deny_entry(connection, card_number, for_update=True)
    if entry is None:
        raise NotRegistered(f"card {card_number} is not on the deny list", code="not_denied")
    return entry


async def review_entry(
    connection: asyncpg.Connection, card_number: str, note: str, *, username: str, now: dt.datetime
) -> None:
    """A person looked at an automatic entry and keeps it (lifting is `lift_entry`)."""
    note = check_note(note)
    async with connection.transaction():
        entry = await _open_entry(connection, card_number)
        if entry.source is not DenySource.rule:
            raise Conflict(f"card {card_number} was blocked by a person", code="not_automatic")
        await _change(connection, entry, "reviewed", username=username, note=note, now=now)


async def lift_entry(
    connection: asyncpg.Connection,
    card_number: str,
    note: str,
    member: StaffMember,
    *,
    now: dt.datetime,
) -> LiftOutcome:
    """Take a card off the deny list, with a note; terminals let it through after their next
    sync. A fraud entry waits for a supervisor other than the one who asked. A replaced card
    stays denied (its purse is closed)."""
    note = check_note(note)
    async with connection.transaction():
        entry = await _open_entry(connection, card_number)
        await refuse_replaced(connection, card_number, "it stays denied")
        if entry.reason in fraud_reasons:
            if entry.lift_requested_by is None:
                await _change(
                    connection,
                    entry,
                    "lift_requested",
                    username=member.username,
                    note=note,
                    now=now,
                )
                return LiftOutcome.awaiting_approval
            if entry.lift_requested_by == member.username:
                raise Conflict(
                    "a fraud entry is lifted by a second person, not the one who asked",
                    code="same_person",
                )
            if member.role is not Role.supervisor:
                raise Conflict("a supervisor lifts a fraud entry", code="supervisor_needed")
        await connection.execute("delete from deny_list where card_number = $1", card_number)
        await _change(connection, entry, "lifted", username=member.username, note=note, now=now)
    return LiftOutcome.lifted


# ------------------------------------------------------------------------------ replacement


@dataclass(frozen=True, slots=True)
class Replacement:
    old_card_number: str
    new_card_number: str
    requested_by: str
    requested_at: dt.datetime
    blocked_at: dt.datetime
    moved_at: dt.datetime | None
    purse_rupiah: int | None  # what moved from the old purse
    pending_rupiah: int | None  # and from its pending top-ups

    def due_at(self, wait: dt.timedelta) -> dt.datetime:
        return self.blocked_at + wait


_replacement_query = """
    select r.old_card_number, r.new_card_number, r.requested_by, r.requested_at,
           d.added_at as blocked_at, r.moved_at, r.purse_rupiah, r.pending_rupiah
      from card_replacements r join deny_list d on d.card_number = r.old_card_number
"""


async def replacement_of(
    connection: asyncpg.Connection, old_card_number: str
) -> Replacement | None:
    row = await connection.fetchrow(
        _replacement_query + " where r.old_card_number = $1", old_card_number
    )
    return None if row is None else Replacement(**dict(row))


async def request_replacement(
    connection: asyncpg.Connection,
    old_card_number: str,
    new_card_number: str,
    *,
    username: str,
    now: dt.datetime,
    wait: dt.timedelta = replacement_wait_default,
) -> Replacement:
    """Name the card that replaces a registered card blocked as lost, stolen or damaged; the
    new card is registered to the same holder. Its balance moves when the wait is over (now,
    if it is): `move_due_balances`. Asking again for the same pair answers as before."""
    await _require_issued(connection, old_card_number, "card_number")
    await _require_issued(connection, new_card_number, "new_card_number")
    async with connection.transaction():
        await connection.execute(
            f"select pg_advisory_xact_lock(hashtext('{replacement_lock}'))"
        )  # one replacement at a time: a card replaces one card, a card is replaced once
        existing = await replacement_of(connection, old_card_number)
        if existing is not None and existing.new_card_number != new_card_number:
            raise Conflict(
                f"card {old_card_number} is replaced by {existing.new_card_number} already",
                code="already_replaced",
            )
        if existing is None:
            await _add_replacement(connection, old_card_number, new_card_number, username, now)
    await move_due_balances(connection, now=now, wait=wait, old_card_number=old_card_number)
    found = await replacement_of(connection, old_card_number)
    assert found is not None
    return found


async def _add_replacement(
    connection: asyncpg.Connection,
    old_card_number: str,
    new_card_number: str,
    username: str,
    now: dt.datetime,
) -> None:
    await _check_replaceable(connection, old_card_number, new_card_number)
    # A pass sale or grant to the old card in flight (it holds the card's row) commits first,
    # and its pass moves with the balance; one that comes after sees the replacement.
    await connection.execute(
        "select 1 from cards where card_number = $1 for update", old_card_number
    )
    await connection.execute(
        "insert into card_replacements (old_card_number, new_card_number, requested_by, "
        "requested_at) values ($1, $2, $3, $4)",
        old_card_number,
        new_card_number,
        username,
        now,
    )
    await connection.execute(
        "insert into card_holders (card_number, name, nik_salt, nik_hash, nik_last4, phone, "
        "registered_by, registered_at) select $2, name, nik_salt, nik_hash, nik_last4, "
        "phone, $3, $4 from card_holders where card_number = $1",
        old_card_number,
        new_card_number,
        username,
        now,
    )


async def _check_replaceable(connection: asyncpg.Connection, old: str, new: str) -> None:
    if old == new:
        raise RegistryError("a card cannot replace itself", field="new_card_number")
    entry = await deny_entry(connection, old)
    if entry is None or entry.reason not in replaceable_causes:
        raise Conflict(
            f"card {old} is not blocked as lost, stolen or damaged: block it first",
            code="not_blocked",
        )
    if await holder_of(connection, old) is None:
        raise Conflict(
            f"card {old} is not registered: only a registered card's balance is recovered",
            code="not_registered",
        )
    if await deny_entry(connection, new) is not None:
        raise Conflict(f"card {new} is on the deny list", code="card_denied")
    if await holder_of(connection, new) is not None:
        raise Conflict(f"card {new} is registered already", code="already_registered")
    if await connection.fetchval("select 1 from card_replacements where new_card_number = $1", new):
        raise Conflict(f"card {new} replaces another card already", code="already_replacing")


async def move_due_balances(
    connection: asyncpg.Connection,
    *,
    now: dt.datetime,
    wait: dt.timedelta = replacement_wait_default,
    old_card_number: str | None = None,
) -> list[Replacement]:
    """Move the balances whose wait is over (of one card, or of all); returns those moved.
    The ledger is locked before any replacement row, as `card_owed` does: a caller moving
    several cards in one transaction holds rows and the ledger together. The old cards'
    waiting top-ups are locked before the ledger, as an upload that delivers one takes them
    (`ingest._pending_top_ups`, then the ledger when it books): the two never wait crosswise."""
    moved: list[Replacement] = []
    # The hourly sweep mostly finds nothing: look without the ledger's lock first. A card that
    # falls due after this look is moved by the next sweep (or by its own request, which calls
    # this after its commit); those found are the only ones moved, so their top-ups are
    # locked before the ledger whatever commits meanwhile.
    due_cards = [
        row["old_card_number"]
        for row in await connection.fetch(
            "select r.old_card_number from card_replacements r join deny_list d "
            "on d.card_number = r.old_card_number where r.moved_at is null "
            "and d.added_at + $1::interval <= $2 and ($3::text is null or r.old_card_number = $3) "
            "order by 1",
            wait,
            now,
            old_card_number,
        )
    ]
    if not due_cards:
        return moved
    async with connection.transaction():
        await connection.execute(
            "select 1 from pending_top_ups where card_number = any($1::text[]) "
            "and taken_terminal_id is null order by top_up_id for update",
            due_cards,
        )
        await books.lock_ledger(connection)
        due = await connection.fetch(
            _replacement_query + " where r.old_card_number = any($1::text[]) "
            "and r.moved_at is null order by r.old_card_number",
            due_cards,
        )
        for row in due:
            await _move_balance(connection, row["old_card_number"], row["new_card_number"], now)
            found = await replacement_of(connection, row["old_card_number"])
            assert found is not None
            moved.append(found)
    return moved


replacement_chain_max = 100


async def card_in_use(connection: asyncpg.Connection, number: str) -> str:
    """The card that replaced `number`, and the one that replaced that, to the one in use: a
    replacement lost in its turn before the first balance moved gets it all the same. Money
    owed to a replaced card later (a refund) is owed to this one: its own purse is closed."""
    for _ in range(replacement_chain_max):
        newer = await connection.fetchval(
            "select new_card_number from card_replacements where old_card_number = $1", number
        )
        if newer is None:
            return number
        number = newer
    raise AssertionError(f"a chain of more than {replacement_chain_max} replacements")


async def card_owed(connection: asyncpg.Connection, number: str) -> str:
    """The card that money owed to `number` (a complaint's refund) goes to: `number` itself
    until its balance moved to a replacement (the move takes what waits for it along), the card
    in use after that, since its own purse is closed and it is denied everywhere. Inside the
    caller's transaction, replacements and moves wait for the caller's commit (the
    replacements' lock, as `request_replacement` takes it first; then the ledger before the
    replacement's row, as `move_due_balances` takes them), so a move takes the booked refund
    along or comes before it."""
    await connection.execute(f"select pg_advisory_xact_lock(hashtext('{replacement_lock}'))")
    await books.lock_ledger(connection)
    moved = await connection.fetchrow(
        "select moved_at from card_replacements where old_card_number = $1 for share", number
    )
    if moved is None or moved["moved_at"] is None:
        return number
    return await card_in_use(connection, number)


async def _move_balance(
    connection: asyncpg.Connection, old: str, new: str, now: dt.datetime
) -> None:
    """Old purse and old pending top-ups -> the new card's pending top-up account, announced
    as pending top-ups of at most what one card transaction carries, and the passes waiting
    for the old card to the new one; the old purse closed. The
    ledger is locked from the balances' reading to the close: nothing books in between."""
    from gateways.terminal_api import passes  # passes asks this module who holds a card

    source = registry.card_accounts(old)
    async with connection.transaction():
        if await connection.fetchval(
            "select moved_at from card_replacements where old_card_number = $1 for update", old
        ):
            return  # moved by another desk meanwhile
        await books.lock_ledger(connection)
        new = await card_in_use(connection, new)
        target = registry.card_accounts(new)
        found = await books.balances(
            connection, [source.purse_account_id, source.pending_top_up_account_id]
        )
        held = {
            name: max(0, found[account].credit_balance) if account in found else 0
            for name, account in (
                ("purse", source.purse_account_id),
                ("pending", source.pending_top_up_account_id),
            )
        }
        transfers = [
            Transfer(
                derive_id("card-replacement", old, name),
                source.purse_account_id if name == "purse" else source.pending_top_up_account_id,
                target.pending_top_up_account_id,
                rupiah,
                TransferCode.card_replacement,
                card_number=old,
                bank_reference=f"replace:{old}",
            )
            for name, rupiah in held.items()
            if rupiah > 0
        ]
        outcomes = await books.create_transfers(connection, transfers, now=now)
        assert all(o.result in booked_results for o in outcomes), outcomes
        await connection.execute(
            "update pending_top_ups set taken_terminal_id = $2 "
            "where card_number = $1 and taken_terminal_id is null",
            old,
            desk_taker,
        )
        total = held["purse"] + held["pending"]
        for index, start in enumerate(range(0, total, rupiah_max), start=1):
            await registry.add_pending_top_up(
                connection, f"replace:{old}:{index}", new, min(rupiah_max, total - start), now
            )
        await connection.execute(
            "update pending_passes set card_number = $2, "
            "sold_for_card = coalesce(sold_for_card, card_number) "
            "where card_number = $1 and activated_at is null and cancelled_at is null",
            old,
            new,
        )  # a pass still waiting goes with the balance
        await passes.carry_running_passes(connection, old, new, now=now)  # and one on the chip
        await books.close_account(connection, source.purse_account_id)
        await connection.execute(
            "update card_replacements set moved_at = $2, purse_rupiah = $3, pending_rupiah = $4 "
            "where old_card_number = $1",
            old,
            now,
            held["purse"],
            held["pending"],
        )
