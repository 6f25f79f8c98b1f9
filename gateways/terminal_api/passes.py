"""Passes at the desk (issue 17, item 7): staff put a product of the fare feed's
fare_passes.txt on a card; it waits like a pending top-up, terminals download it at their sync,
and the next validator the card taps writes it into the card's trip state inside that tap's
journalled fare transaction (`bus_terminals.validator`). The uploaded record names the sale
(`activates <id>` in its fare detail) and the upload records the activation here.

A pass priced Rp 0 (the Trans Semarang student subscription) is granted: nothing is booked; who
and why are recorded, here and in `staff_actions`. A pass with a price is sold for cash at the
counter: the cash goes into the seller's own drawer (`counter`) and is booked drawer -> the
operator's revenue (code `pass_sale`) in the sale's transaction, once per counter receipt (a
repeat answers the first sale). Issuer, not operator: the issuer collects the cash for the
operator, so the sale is the operator's revenue at once and is paid to it with the day's fares.
A sale not yet activated may be cancelled: the cash goes back out of the canceller's drawer
(operator revenue -> drawer) and the pass leaves the terminals' list. A terminal that
downloaded it before may still write it to the card: trust the card, the activation is recorded
and the card flagged `pass_cancelled_activated` for staff.

The price is the feed's the validators run: the newest fare feed package the fleet has made
effective (`fleet`), else the shipped Trans Semarang feed.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg

from bus_terminals.fare.feed import compile_feed, load_feed
from bus_terminals.fare.tariff import Tariff
from bus_terminals.packages import PackageKind, feed_texts
from bus_terminals.wire import UploadKind, UploadRecord, pass_activation_pattern
from gateways.staff import Role, StaffMember
from gateways.terminal_api import books, card_desk, counter, registry
from gateways.terminal_api.accounts import bank_clearing_account_id
from gateways.terminal_api.planning import CardFlag
from gateways.terminal_api.registry import Conflict, NotRegistered, RegistryError
from ledger.records import Account, AccountKind, Transfer, TransferCode, booked_results, derive_id

pending_passes_download_max = 50_000


@dataclass(frozen=True, slots=True)
class PendingPass:
    pass_sale_id: str
    card_number: str
    fare_pass_id: str
    amount_rupiah: int  # 0: a grant, nothing booked
    sold_by: str
    reason: str
    sold_at: dt.datetime
    activated_terminal_id: str | None
    activated_at: dt.datetime | None
    receipt_id: str | None = None
    drawer: str | None = None  # drawer:USERNAME that took the cash; None: a grant
    operator_id: str | None = None
    cancelled_at: dt.datetime | None = None
    cancelled_by: str | None = None
    created: bool = True  # False: the answer to a repeat (the first sale or cancellation)
    carried_from: str | None = None  # a pass carried from a lost card: the sale it carries
    from_day: dt.date | None = None  # and its first day there (the new card runs to its end)


async def sale_tariff(connection: asyncpg.Connection, now: dt.datetime) -> Tariff:
    """The feed the validators price by: the newest fare feed package effective at `now`,
    else the shipped Trans Semarang feed."""
    content = await connection.fetchval(
        "select content from fleet_packages where kind = $1 and effective_at <= $2 "
        "order by version desc limit 1",
        PackageKind.fare_feed.value,
        now,
    )
    return _compiled(None if content is None else bytes(content))


@functools.lru_cache(maxsize=4)
def _compiled(content: bytes | None) -> Tariff:
    """A fare feed package's content compiled (None: the shipped feed), once per content."""
    return load_feed() if content is None else compile_feed(feed_texts(content))


def _feed_pass(tariff: Tariff, fare_pass_id: str) -> int:
    """The pass's price in whole rupiah; refuses a pass the feed does not have."""
    position = tariff.pass_index.get(fare_pass_id)
    if position is None:
        known = ", ".join(rule.pass_id for rule in tariff.passes) or "none"
        raise RegistryError(
            f"no pass {fare_pass_id!r} in the fare feed (passes: {known})", field="fare_pass_id"
        )
    return tariff.passes[position].amount // 10**tariff.currency_decimals


async def pass_price(connection: asyncpg.Connection, fare_pass_id: str, *, now: dt.datetime) -> int:
    """What the counter charges for a pass today, in whole rupiah (0: granted, not sold)."""
    return _feed_pass(await sale_tariff(connection, now), fare_pass_id)


async def grant_pass(
    connection: asyncpg.Connection,
    card_number: str,
    fare_pass_id: str,
    *,
    username: str,
    reason: str,
    now: dt.datetime,
    tariff: Tariff | None = None,
    receipt_id: str | None = None,
    drawer: str | None = None,
    operator_id: str | None = None,
    amount_rupiah: int | None = None,
) -> PendingPass:
    """Put a pass of the fare feed (default: `sale_tariff`) on its way to an issued card.

    Priced Rp 0: a grant, nothing booked (a `drawer` is not needed and takes nothing). Priced:
    a cash sale into `drawer` (the seller's own: `counter.drawer_code`), booked drawer ->
    `operator_id`'s revenue (default: the one active operator). `receipt_id` makes a repeat
    answer the first sale (`created` False) and book nothing; `amount_rupiah`, when given, is
    the price the seller told the rider: a feed that changed since is refused."""
    registry.check_card_number(card_number)
    if receipt_id is not None:
        registry.check_reference("receipt_id", receipt_id)
    tariff = tariff or await sale_tariff(connection, now)
    price = _feed_pass(tariff, fare_pass_id)
    if not reason.strip():
        raise RegistryError("a grant needs a reason", field="reason")
    if price:  # a sale books: the ledger before the card's row, as a replacement's move
        await books.lock_ledger(connection)
    if not await connection.fetchval(
        "select 1 from cards where card_number = $1 for update", card_number
    ):  # the card's row also makes sales of one card wait for one another, and a replacement
        raise NotRegistered(f"card {card_number} was never issued", field="card_number")
    if receipt_id is not None:
        # Two sales naming one receipt for two cards lock different cards: the receipt too.
        await connection.execute(
            "select pg_advisory_xact_lock(hashtext('ksh-pass-receipt:' || $1))", receipt_id
        )
        first = await _by_receipt(connection, receipt_id, card_number, fare_pass_id)
        if first is not None:
            return first
    await card_desk.refuse_replaced(connection, card_number, "sell or grant it to the card in use")
    await _refuse_replacement_waiting(connection, card_number)
    if price and drawer is None:
        raise RegistryError(
            f"pass {fare_pass_id!r} costs Rp {price:,}: it is sold for cash into the seller's "
            "drawer (source 'drawer')",
            code="not_free",
            field="fare_pass_id",
        )
    if amount_rupiah is not None and amount_rupiah != price:
        raise Conflict(
            f"pass {fare_pass_id!r} costs Rp {price:,}, not Rp {amount_rupiah:,}",
            code="price_changed",
        )
    if price:
        operator_id = await _revenue_owner(connection, operator_id)
        await _refuse_denied(connection, card_number)
    await _refuse_clash(connection, card_number, fare_pass_id, tariff, now)
    await _refuse_other_pass(connection, card_number, fare_pass_id, tariff, now)
    row = await connection.fetchrow(
        "insert into pending_passes (pass_sale_id, card_number, fare_pass_id, amount_rupiah, "
        "sold_by, reason, sold_at, receipt_id, drawer, operator_id) "
        "values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) returning *",
        f"pass-{secrets.token_hex(5)}",
        card_number,
        fare_pass_id,
        price,
        username,
        reason.strip(),
        now,
        receipt_id,
        drawer if price else None,
        operator_id if price else None,
    )
    sold = _pending(row)
    if price:
        await _book_sale(connection, sold, now=now)
    return sold


async def _by_receipt(
    connection: asyncpg.Connection, receipt_id: str, card_number: str, fare_pass_id: str
) -> PendingPass | None:
    """The sale a receipt made before (a repeat), if any; a receipt of another sale is refused."""
    row = await connection.fetchrow(
        "select * from pending_passes where receipt_id = $1", receipt_id
    )
    if row is None:
        return None
    sold_to = {row["card_number"], row["sold_for_card"]}  # a sale moved to a replacement too
    if card_number not in sold_to or row["fare_pass_id"] != fare_pass_id:
        raise Conflict(
            f"receipt {receipt_id} is the sale of {row['fare_pass_id']!r} to card "
            f"{row['card_number']} ({row['pass_sale_id']})",
            code="receipt_used",
            field="receipt_id",
        )
    return _pending(row, created=False)


async def _refuse_replacement_waiting(connection: asyncpg.Connection, card_number: str) -> None:
    """A card that replaces one whose balance has not moved yet takes no pass until then: the
    old card's passes (waiting, or running on its chip) move to it with the balance, and a card
    holds one pass."""
    waiting = await connection.fetchrow(
        "select old_card_number from card_replacements "
        "where new_card_number = $1 and moved_at is null",
        card_number,
    )
    if waiting is not None:
        raise Conflict(
            f"card {card_number} replaces card {waiting['old_card_number']}, whose balance and "
            "passes move to it when the wait is over (or at the desk's move): sell or grant a "
            "pass after that",
            code="replacement_waiting",
        )


async def _revenue_owner(connection: asyncpg.Connection, operator_id: str | None) -> str:
    """The operator a sale is revenue of: the one named, else the only active one."""
    rows = await connection.fetch(
        "select operator_id from operators where status = 'active' order by operator_id"
    )
    active = [row["operator_id"] for row in rows]
    if operator_id is None and len(active) == 1:
        return str(active[0])
    if operator_id is not None and operator_id in active:
        return operator_id
    if operator_id is not None:
        raise NotRegistered(f"no active operator {operator_id!r}", field="operator_id")
    raise RegistryError(
        "name the operator whose pass this is (operator_id): "
        + (", ".join(active) or "none is registered"),
        field="operator_id",
    )


async def _refuse_denied(connection: asyncpg.Connection, card_number: str) -> None:
    denied = await connection.fetchval(
        "select reason from deny_list where card_number = $1", card_number
    )
    if denied is not None:
        raise Conflict(f"card {card_number} is on the deny list ({denied})", code="card_denied")


async def _refuse_clash(
    connection: asyncpg.Connection,
    card_number: str,
    fare_pass_id: str,
    tariff: Tariff,
    now: dt.datetime,
) -> None:
    # Validators tell a sale already on the card by its day (`bus_terminals.validator.
    # with_pending_pass`): the same pass again only once the last one is on the card, and
    # from the day after it was activated. A carried pass that ran out before the card tapped
    # is no longer written (`waiting_carried_passes`): it is no clash.
    clash = await connection.fetchval(
        "select activated_at is null from pending_passes where card_number = $1 "
        "and fare_pass_id = $2 and cancelled_at is null and (activated_at is null or "
        "(activated_at at time zone $3)::date >= ($4::timestamptz at time zone $3)::date) "
        "and not (activated_at is null and from_day is not null "
        "and from_day + $5::int - 1 < ($4::timestamptz at time zone $3)::date) "
        "limit 1",
        card_number,
        fare_pass_id,
        tariff.timezone_name,
        now,
        tariff.passes[tariff.pass_index[fare_pass_id]].validity_days,
    )
    if clash is not None:
        raise Conflict(
            f"card {card_number} has pass {fare_pass_id!r} "
            + ("waiting for its next tap" if clash else "activated today: renew from tomorrow"),
            code="pass_waiting",
        )


async def _refuse_other_pass(
    connection: asyncpg.Connection,
    card_number: str,
    fare_pass_id: str,
    tariff: Tariff,
    now: dt.datetime,
) -> None:
    """A card holds one pass: another product waiting or running would be replaced by this
    one when the card takes it (or replace it), and its days lost. And a validator takes a
    sale for written when the card's pass lasts at least as long as one activated on the
    sale's day: with a renewal already running on from it, a third sale now would never be
    written."""
    today = now.astimezone(ZoneInfo(tariff.timezone_name)).date()
    last_days = []  # of this product on the card
    for held in passes_on_card(await passes_of(connection, card_number), tariff):
        if held.fare_pass_id == fare_pass_id:
            if held.last_day is not None:
                last_days.append(held.last_day)
            continue
        waiting = held.activated_on is None and held.last_day is None  # its days not yet known
        if waiting or (held.last_day is not None and held.last_day >= today):
            until = (
                "waiting for its next tap" if held.last_day is None else f"until {held.last_day}"
            )
            raise Conflict(
                f"card {card_number} has pass {held.fare_pass_id!r} {until}: a card holds one "
                f"pass, and {fare_pass_id!r} would replace it",
                code="other_pass",
            )
    validity = dt.timedelta(days=tariff.passes[tariff.pass_index[fare_pass_id]].validity_days)
    if last_days and today + validity - dt.timedelta(days=1) <= max(last_days):
        from_day = max(last_days) - validity + dt.timedelta(days=2)
        raise Conflict(
            f"card {card_number} has pass {fare_pass_id!r} until {max(last_days)}: a renewal "
            f"is sold from {from_day}",
            code="pass_waiting",
        )


def sale_transfer_id(pass_sale_id: str) -> uuid.UUID:
    return derive_id("pass-sale", pass_sale_id)


def cancel_transfer_id(pass_sale_id: str) -> uuid.UUID:
    return derive_id("pass-sale-cancel", pass_sale_id)


async def _book_sale(
    connection: asyncpg.Connection, sold: PendingPass, *, now: dt.datetime, cancel: str = ""
) -> None:
    """The sale's cash: its drawer -> the operator's revenue; `cancel` (the canceller): the
    operator's revenue -> the canceller's drawer, which pays the cash back."""
    assert sold.drawer is not None, sold
    assert sold.operator_id is not None, sold
    revenue = registry.operator_revenue_account_id(sold.operator_id)
    drawer_code = counter.drawer_code(cancel) if cancel else sold.drawer
    drawer = bank_clearing_account_id(drawer_code)
    await books.ensure_accounts(
        connection, [Account(drawer, AccountKind.bank_clearing, drawer_code)]
    )
    debit, credit = (revenue, drawer) if cancel else (drawer, revenue)
    metadata = {"pass_sale_id": sold.pass_sale_id, "fare_pass_id": sold.fare_pass_id}
    metadata |= {"cancelled_by": cancel} if cancel else {"sold_by": sold.sold_by}
    transfer = Transfer(
        cancel_transfer_id(sold.pass_sale_id) if cancel else sale_transfer_id(sold.pass_sale_id),
        debit,
        credit,
        sold.amount_rupiah,
        TransferCode.pass_sale,
        card_number=sold.card_number,
        bank_reference=sold.receipt_id,
        metadata=json.dumps(metadata),
    )
    outcomes = await books.create_transfers(connection, [transfer], now=now)
    assert outcomes[0].result in booked_results, outcomes


async def cancel_pass(
    connection: asyncpg.Connection,
    pass_sale_id: str,
    *,
    member: StaffMember,
    reason: str,
    now: dt.datetime,
) -> PendingPass:
    """Withdraw a pass no card has activated; a sale's cash goes back out of the canceller's
    drawer (operator revenue -> drawer). A sale is cancelled by the one who sold it or by a
    supervisor: a clerk paying out of their drawer for a colleague's sale could pocket cash
    their drawer never took. A repeat answers the first cancellation."""
    if not reason.strip():
        raise RegistryError("a cancellation needs a reason", field="reason")
    # The ledger before the sale's row, as ingest (activations) and a replacement's move
    # (passes following the balance) take them: no deadlock with either.
    await books.lock_ledger(connection)
    row = await connection.fetchrow(
        "select * from pending_passes where pass_sale_id = $1 for update", pass_sale_id
    )
    if row is None:
        raise NotRegistered(f"no pass sale {pass_sale_id!r}", field="pass_sale_id")
    if row["cancelled_at"] is not None:
        return _pending(row, created=False)
    if row["carried_from"] is not None and member.role is not Role.supervisor:
        raise Conflict(
            f"pass sale {pass_sale_id} carries a pass the rider had on a lost card: a "
            "supervisor cancels it",
            code="not_your_sale",
        )
    if (
        row["amount_rupiah"]
        and member.username != row["sold_by"]
        and member.role is not Role.supervisor
    ):
        raise Conflict(
            f"pass sale {pass_sale_id} was sold by {row['sold_by']}: they or a supervisor "
            "cancel it",
            code="not_your_sale",
        )
    username = member.username
    if row["activated_at"] is not None:
        raise Conflict(
            f"pass sale {pass_sale_id} is on card {row['card_number']} since "
            f"{row['activated_at'].isoformat()}: a pass on a card is not cancelled",
            code="pass_activated",
        )
    held = await connection.fetchval(
        "select q.terminal_id || '/' || q.sequence from quarantined_records q "
        "join card_records r using (terminal_id, sequence) where q.state not in "
        "('released', 'written_off') and r.fare_detail like '% activates ' || $1 limit 1",
        pass_sale_id,
    )
    if held is not None:
        raise Conflict(
            f"pass sale {pass_sale_id} was written on a card in a fare the quarantine holds "
            f"({held}): supervisors resolve it first (ksh quarantine)",
            code="pass_activated",
        )
    row = await connection.fetchrow(
        "update pending_passes set cancelled_at = $2, cancelled_by = $3, cancel_reason = $4 "
        "where pass_sale_id = $1 returning *",
        pass_sale_id,
        now,
        username,
        reason.strip(),
    )
    cancelled = _pending(row)
    if cancelled.amount_rupiah:
        await _book_sale(connection, cancelled, now=now, cancel=username)
    return cancelled


def _pending(row: asyncpg.Record, *, created: bool = True) -> PendingPass:
    return PendingPass(
        row["pass_sale_id"],
        row["card_number"],
        row["fare_pass_id"],
        row["amount_rupiah"],
        row["sold_by"],
        row["reason"],
        row["sold_at"],
        row["activated_terminal_id"],
        row["activated_at"],
        row["receipt_id"],
        row["drawer"],
        row["operator_id"],
        row["cancelled_at"],
        row["cancelled_by"],
        created,
        row["carried_from"],
        row["from_day"],
    )


async def passes_of(connection: asyncpg.Connection, card_number: str) -> list[PendingPass]:
    rows = await connection.fetch(
        "select * from pending_passes where card_number = $1 order by sold_at, pass_sale_id",
        card_number,
    )
    return [_pending(row) for row in rows]


@dataclass(frozen=True, slots=True)
class PassOnCard:
    """A pass as the rider sees it: waiting for the card's next tap, or activated and running
    to `last_day` (None: a product the feed no longer has, or waiting to be written for as many
    days as the tap's day gives it). A carried pass has its days before its tap: the validator
    writes it to run to the old chip's last day, however late the new card taps."""

    fare_pass_id: str
    sold_on: dt.date
    activated_on: dt.date | None
    last_day: dt.date | None
    pass_sale_id: str = ""
    first_day: dt.date | None = None  # activated: the day it runs from


def passes_on_card(found: Iterable[PendingPass], tariff: Tariff) -> list[PassOnCard]:
    """Days in the feed's time zone: an activated pass runs `validity_days` from its day of
    activation; a renewal of the pass still running on the card runs on from the day after it
    (as the validator writes it, `bus_terminals.validator.with_pending_pass`). A carried pass
    waiting for its tap runs from its first day on the old card. A cancelled pass only if a
    card took it all the same."""
    zone = ZoneInfo(tariff.timezone_name)
    shown = []
    running: tuple[str, dt.date] | None = None  # the card holds one pass: (product, last day)
    ordered = sorted(found, key=lambda p: (p.activated_at is None, p.activated_at or p.sold_at))
    for sale in ordered:
        if sale.activated_at is None and sale.cancelled_at is not None:
            continue
        activated_on = (
            None if sale.activated_at is None else sale.activated_at.astimezone(zone).date()
        )
        last_day = start = None
        position = tariff.pass_index.get(sale.fare_pass_id)
        if activated_on is not None and position is not None:
            start = sale.from_day or activated_on  # a carried pass runs from its old first day
            if running is not None and running[0] == sale.fare_pass_id and running[1] >= start:
                start = running[1] + dt.timedelta(days=1)
            last_day = _last_day(tariff, position, start)
            running = (sale.fare_pass_id, last_day)
        elif sale.from_day is not None and position is not None:  # carried, waiting for its tap
            start = sale.from_day
            last_day = _last_day(tariff, position, start)
        sold_on = sale.sold_at.astimezone(zone).date()
        shown.append(
            PassOnCard(sale.fare_pass_id, sold_on, activated_on, last_day, sale.pass_sale_id, start)
        )
    return shown


def _last_day(tariff: Tariff, position: int, first_day: dt.date) -> dt.date:
    return first_day + dt.timedelta(days=tariff.passes[position].validity_days - 1)


async def carry_running_passes(
    connection: asyncpg.Connection, old: str, new: str, *, now: dt.datetime
) -> list[PendingPass]:
    """The passes on a lost card's chip still running today, carried to its replacement (in
    the balance's move, `card_desk._move_balance`): each a Rp 0 sale naming the one it carries
    and its first day, waiting for the new card's next tap, which writes it to run to the same
    last day. The original sale's day keeps their order among the card's waiting passes (a
    renewal bought before the loss follows on from the carried one). Cancelled sales a card
    took are not carried: their money went back."""
    tariff = await sale_tariff(connection, now)
    today = now.astimezone(ZoneInfo(tariff.timezone_name)).date()
    on_old = await passes_of(connection, old)
    sales = {sale.pass_sale_id: sale for sale in on_old}
    carried = []
    for held in passes_on_card(on_old, tariff):
        sale = sales[held.pass_sale_id]
        if held.activated_on is None:  # still waiting: it moved with the balance
            continue
        if held.last_day is None or held.last_day < today or sale.cancelled_at is not None:
            continue
        row = await connection.fetchrow(
            "insert into pending_passes (pass_sale_id, card_number, fare_pass_id, amount_rupiah, "
            "sold_by, reason, sold_at, sold_for_card, carried_from, from_day) "
            "values ($1, $2, $3, 0, $4, $5, $6, $7, $8, $9) returning *",
            "pass-" + derive_id("pass-carry", sale.pass_sale_id, new).hex[:10],
            new,
            sale.fare_pass_id,
            carrier,
            f"carried from sale {sale.pass_sale_id} of card {old}, on its chip from "
            f"{held.first_day} to {held.last_day}",
            sale.sold_at,
            old,
            sale.pass_sale_id,
            held.first_day,
        )
        carried.append(_pending(row))
    return carried


carrier = "card-replacement"  # who "sold" a carried pass: the replacement, not a person


async def waiting_passes(connection: asyncpg.Connection) -> list[list[object]]:
    """What terminals download: [sale id, card, fare_pass_id, sold at in Unix ms], oldest first;
    carried passes not among them (`waiting_carried_passes`)."""
    rows = await connection.fetch(
        "select pass_sale_id, card_number, fare_pass_id, "
        "(extract(epoch from sold_at) * 1000)::bigint as sold_ms from pending_passes "
        "where activated_at is null and cancelled_at is null and carried_from is null "
        "order by sold_at limit $1",
        pending_passes_download_max,
    )
    return [list(row.values()) for row in rows]


async def waiting_carried_passes(
    connection: asyncpg.Connection, *, now: dt.datetime
) -> list[list[object]]:
    """What terminals download of the carried passes (the sync answer's `carried_passes`): as
    `waiting_passes`, and the moment each runs from (Unix ms, noon of its first day on the old
    card in the feed's time zone), oldest first. Under a key of their own: a terminal that
    knows nothing of it would write a fresh period, and a renewal waiting behind would look
    written already. Not one that ran out before the new card tapped (its last day, as on the
    old chip, is past): written, it would be no use to the rider."""
    rows = await connection.fetch(
        "select pass_sale_id, card_number, fare_pass_id, "
        "(extract(epoch from sold_at) * 1000)::bigint as sold_ms, from_day from pending_passes "
        "where activated_at is null and cancelled_at is null and carried_from is not null "
        "order by sold_at limit $1",
        pending_passes_download_max,
    )
    if not rows:
        return []
    tariff = await sale_tariff(connection, now)
    zone = ZoneInfo(tariff.timezone_name)
    today = now.astimezone(zone).date()
    return [
        [
            *list(row.values())[:4],
            int(dt.datetime.combine(row["from_day"], dt.time(12), tzinfo=zone).timestamp() * 1000),
        ]
        for row in rows
        if not _carried_ran_out(tariff, row["fare_pass_id"], row["from_day"], today)
    ]


def ran_out_before_tap(
    sales: Iterable[PendingPass], tariff: Tariff, now: dt.datetime
) -> frozenset[str]:
    """The carried passes still waiting whose last day is past (staff see them so): no
    terminal writes them any more (`waiting_carried_passes`, the validator)."""
    today = now.astimezone(ZoneInfo(tariff.timezone_name)).date()
    return frozenset(
        sale.pass_sale_id
        for sale in sales
        if sale.from_day is not None
        and sale.activated_at is None
        and sale.cancelled_at is None
        and _carried_ran_out(tariff, sale.fare_pass_id, sale.from_day, today)
    )


def _carried_ran_out(tariff: Tariff, fare_pass_id: str, from_day: dt.date, today: dt.date) -> bool:
    """A carried pass's last day (as on the old chip) is past: a product the feed still has."""
    position = tariff.pass_index.get(fare_pass_id)
    return position is not None and _last_day(tariff, position, from_day) < today


async def record_activations(
    connection: asyncpg.Connection, booked: Iterable[UploadRecord]
) -> list[CardFlag]:
    """The fare records (booked: committed on the card) that name a pass sale they activated;
    the first one wins. Trust the card: a cancelled sale a terminal still wrote is activated
    too, and its card flagged `pass_cancelled_activated`; a sale that moved to a replacement
    and was written on a card of its replacement chain other than the one in use, or on a
    second card, is flagged too (returned, for the caller to store). A sale of a card outside
    the activating card's chain is no activation (a terminal naming another card's sale)."""
    found = [
        (match.group(1), record)
        for record in booked
        if record.kind == UploadKind.fare_debit
        and (match := pass_activation_pattern.search(record.fare_detail))
    ]
    flags: list[CardFlag] = []
    if not found:
        return flags
    # The ledger before the sales' rows, as a cancellation and a replacement's move take them
    # (this upload books last, and would take it then anyway).
    await books.lock_ledger(connection)
    for sale_id, record in found:
        row = await connection.fetchrow(
            "select card_number, activated_terminal_id, activated_sequence, amount_rupiah, "
            "cancelled_by, cancelled_at is not null as cancelled, carried_from "
            "from pending_passes where pass_sale_id = $1 for update",
            sale_id,
        )
        if row is None or not await _same_chain(connection, record.card_number, row):
            continue
        if row["carried_from"] is not None and record.card_number != row["card_number"]:
            # No honest terminal lists a carried pass for another card than the one it was
            # carried to: that card keeps it.
            detail = f"pass sale {sale_id} was carried to card {row['card_number']}, not this card"
            flags.append(CardFlag.of(record, carried_pass_elsewhere, detail))
            continue
        if row["activated_terminal_id"] is not None:
            first_card = await connection.fetchval(
                "select card_number from card_records where terminal_id = $1 and sequence = $2",
                row["activated_terminal_id"],
                row["activated_sequence"],
            )
            if first_card is not None and first_card != record.card_number:
                detail = (
                    f"pass sale {sale_id} is on card {first_card} already "
                    f"(terminal {row['activated_terminal_id']}): now on this card too"
                )
                flags.append(CardFlag.of(record, pass_on_two_cards, detail))
            continue
        await connection.execute(
            "update pending_passes set activated_terminal_id = $2, activated_sequence = $3, "
            "activated_at = to_timestamp($4::bigint / 1000.0) where pass_sale_id = $1",
            sale_id,
            record.terminal_id,
            record.sequence,
            record.time_ms,
        )
        if row["cancelled"]:
            detail = (
                f"pass sale {sale_id} was cancelled by {row['cancelled_by']} "
                f"(Rp {row['amount_rupiah']:,} given back) and is on the card"
            )
            flags.append(CardFlag.of(record, pass_cancelled_activated, detail))
        if record.card_number != row["card_number"]:
            detail = (
                f"pass sale {sale_id} moved to card {row['card_number']} with the balance and "
                "was written on this replaced card: the card in use does not get it"
            )
            flags.append(CardFlag.of(record, pass_on_replaced_card, detail))
    return flags


async def _same_chain(
    connection: asyncpg.Connection, card_number: str, sale: asyncpg.Record
) -> bool:
    """Whether `card_number` is the sale's card or one it replaced (a sale follows the balance
    to the card in use: `card_desk._move_balance`)."""
    if card_number == sale["card_number"]:
        return True
    in_use = card_desk.card_in_use
    return await in_use(connection, card_number) == await in_use(connection, sale["card_number"])


pass_on_two_cards = "pass_on_two_cards"
carried_pass_elsewhere = "carried_pass_elsewhere"
pass_on_replaced_card = "pass_on_replaced_card"
pass_cancelled_activated = "pass_cancelled_activated"


async def free_passes(connection: asyncpg.Connection, *, now: dt.datetime) -> list[str]:
    """The passes of the validators' feed that are granted, not sold: those priced Rp 0."""
    tariff = await sale_tariff(connection, now)
    return [rule.pass_id for rule in tariff.passes if rule.amount == 0]
