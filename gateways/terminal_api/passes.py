"""Passes at the desk (issue 17, item 7): staff grant a product of the fare feed's
fare_passes.txt to a card (the Trans Semarang student subscription is Rp 0); it waits like a
pending top-up, terminals download it at their sync, and the next validator the card taps
writes it into the card's trip state inside that tap's journalled fare transaction
(`bus_terminals.validator`). The uploaded record names the sale (`activates <id>` in its fare
detail) and the upload records the activation here.

A pass with a price is not sold here yet: money taken at a counter needs the cash drawer of
item 6, so only passes priced Rp 0 are granted (a grant books nothing; it is recorded, with who
and why, here and in `staff_actions`).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from bus_terminals.fare.feed import load_feed
from bus_terminals.fare.tariff import Tariff
from bus_terminals.wire import UploadKind, UploadRecord, pass_activation_pattern
from gateways.terminal_api import registry
from gateways.terminal_api.registry import Conflict, NotRegistered, RegistryError

pending_passes_download_max = 50_000


@dataclass(frozen=True, slots=True)
class PendingPass:
    pass_sale_id: str
    card_number: str
    fare_pass_id: str
    amount_rupiah: int
    sold_by: str
    reason: str
    sold_at: dt.datetime
    activated_terminal_id: str | None
    activated_at: dt.datetime | None


def _feed_pass(tariff: Tariff, fare_pass_id: str) -> int:
    """The pass's price in whole rupiah; refuses a pass the feed does not have."""
    position = tariff.pass_index.get(fare_pass_id)
    if position is None:
        known = ", ".join(rule.pass_id for rule in tariff.passes) or "none"
        raise RegistryError(
            f"no pass {fare_pass_id!r} in the fare feed (passes: {known})", field="fare_pass_id"
        )
    return tariff.passes[position].amount // 10**tariff.currency_decimals


async def grant_pass(
    connection: asyncpg.Connection,
    card_number: str,
    fare_pass_id: str,
    *,
    username: str,
    reason: str,
    now: dt.datetime,
    tariff: Tariff | None = None,
) -> PendingPass:
    """Put a pass of the fare feed (default: the shipped Trans Semarang feed) on its way to an
    issued card. Only a pass priced Rp 0 (a grant) is taken: see the module's note."""
    registry.check_card_number(card_number)
    if not await connection.fetchval("select 1 from cards where card_number = $1", card_number):
        raise NotRegistered(f"card {card_number} was never issued", field="card_number")
    tariff = tariff or load_feed()
    price = _feed_pass(tariff, fare_pass_id)
    if price != 0:
        raise RegistryError(
            f"pass {fare_pass_id!r} costs Rp {price:,}: only passes priced Rp 0 are granted "
            "here (a sale needs the counter's cash drawer)",
            code="not_free",
            field="fare_pass_id",
        )
    if not reason.strip():
        raise RegistryError("a grant needs a reason", field="reason")
    # Validators tell a sale already on the card by its day (`bus_terminals.validator.
    # with_pending_pass`): the same pass again only once the last one is on the card, and
    # from the day after it was activated.
    clash = await connection.fetchval(
        "select activated_at is null from pending_passes where card_number = $1 "
        "and fare_pass_id = $2 and (activated_at is null or "
        "(activated_at at time zone $3)::date >= ($4::timestamptz at time zone $3)::date) "
        "limit 1",
        card_number,
        fare_pass_id,
        tariff.timezone_name,
        now,
    )
    if clash is not None:
        raise Conflict(
            f"card {card_number} has pass {fare_pass_id!r} "
            + ("waiting for its next tap" if clash else "activated today: renew from tomorrow"),
            code="pass_waiting",
        )
    row = await connection.fetchrow(
        "insert into pending_passes (pass_sale_id, card_number, fare_pass_id, amount_rupiah, "
        "sold_by, reason, sold_at) values ($1, $2, $3, 0, $4, $5, $6) returning *",
        f"pass-{secrets.token_hex(5)}",
        card_number,
        fare_pass_id,
        username,
        reason.strip(),
        now,
    )
    return _pending(row)


def _pending(row: asyncpg.Record) -> PendingPass:
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
    )


async def passes_of(connection: asyncpg.Connection, card_number: str) -> list[PendingPass]:
    rows = await connection.fetch(
        "select * from pending_passes where card_number = $1 order by sold_at, pass_sale_id",
        card_number,
    )
    return [_pending(row) for row in rows]


async def waiting_passes(connection: asyncpg.Connection) -> list[list[object]]:
    """What terminals download: [sale id, card, fare_pass_id, sold at in Unix ms], oldest first."""
    rows = await connection.fetch(
        "select pass_sale_id, card_number, fare_pass_id, "
        "(extract(epoch from sold_at) * 1000)::bigint as sold_ms from pending_passes "
        "where activated_at is null order by sold_at limit $1",
        pending_passes_download_max,
    )
    return [list(row.values()) for row in rows]


async def record_activations(
    connection: asyncpg.Connection, booked: Iterable[UploadRecord]
) -> None:
    """The fare records (booked: committed on the card) that name a pass sale they activated;
    the first one wins (another validator's later activation of the same sale is a no-op)."""
    found = [
        (match.group(1), record)
        for record in booked
        if record.kind == UploadKind.fare_debit
        and (match := pass_activation_pattern.search(record.fare_detail))
    ]
    if not found:
        return
    await connection.executemany(
        "update pending_passes set activated_terminal_id = $3, activated_sequence = $4, "
        "activated_at = to_timestamp($5::bigint / 1000.0) "
        "where pass_sale_id = $1 and card_number = $2 and activated_at is null",
        [
            (sale_id, record.card_number, record.terminal_id, record.sequence, record.time_ms)
            for sale_id, record in found
        ],
    )


def free_passes(tariff: Tariff | None = None) -> list[str]:
    """The fare feed's passes `grant_pass` takes: those priced Rp 0."""
    tariff = tariff or load_feed()
    return [rule.pass_id for rule in tariff.passes if rule.amount == 0]
