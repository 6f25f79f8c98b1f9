"""Settlement's door to the ledger: the accounts it uses and the transfers it books.

Everything settlement books goes through `book`, so each movement is a balanced ledger
transfer with a stable id derived from what caused it (a batch, a payout attempt, a statement
line, a staff action). Booking the same thing twice is `exists`, never a second movement.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from ledger import store
from ledger.records import (
    Account,
    AccountKind,
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferOutcome,
    booked_results,
    derive_id,
    transfers_per_batch_max_default,
)


class SettlementCode(enum.IntEnum):
    """Transfer codes settlement adds to the ledger's named ones (`TransferCode`)."""

    collection_settled = 101  # bank clearing -> our bank account (statement shows the money)
    write_off = 102  # bank account <-> suspense (a line staff cannot explain yet)
    tolerance_difference = 103  # a match within tolerance: the difference to suspense


codes_used = (
    TransferCode.merchant_fee,
    TransferCode.operator_settlement,
    TransferCode.payout,
    TransferCode.payout_settled,
    TransferCode.bank_fee,
)


class BookingRefused(Exception):
    """The ledger refused a transfer settlement needed (a programming or data error)."""

    def __init__(self, outcomes: Sequence[TransferOutcome]) -> None:
        refused = [o for o in outcomes if o.result not in booked_results]
        super().__init__(", ".join(f"{o.id}: {o.result.value}" for o in refused[:5]))
        self.outcomes = tuple(outcomes)


def account_id(kind: AccountKind, owner_reference: str) -> uuid.UUID:
    return derive_id("settlement-account", kind.value, owner_reference)


def bank_account_owner(bank: str, account_no: str) -> str:
    return f"{bank}:{account_no}"


async def ensure_account(
    connection: asyncpg.Connection, kind: AccountKind, owner_reference: str
) -> uuid.UUID:
    """The ledger account of this kind and owner, created on first use."""
    found = await connection.fetchval(
        "select id from ledger_accounts where kind = $1 and owner_reference = $2 order by created_at limit 1",
        kind.value,
        owner_reference,
    )
    if found is not None:
        return uuid.UUID(str(found))
    new = Account(account_id(kind, owner_reference), kind, owner_reference)
    await store.create_accounts(connection, [new])
    return new.id


async def book(
    connection: asyncpg.Connection, transfers: Sequence[Transfer], *, now: dt.datetime
) -> list[TransferOutcome]:
    """Book `transfers` at business time `now` (any number; the ledger's batch limit is
    respected); all must book."""
    outcomes: list[TransferOutcome] = []
    step = transfers_per_batch_max_default
    for start in range(0, len(transfers), step):
        outcomes += await store.create_transfers(
            connection, list(transfers[start : start + step]), now=now
        )
    if any(o.result not in booked_results for o in outcomes):
        raise BookingRefused(outcomes)
    return outcomes


def metadata(**fields: Any) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)


def created(outcome: TransferOutcome) -> bool:
    return outcome.result is CreateTransferResult.created


def hold_id_for(batch_id: str) -> uuid.UUID:
    """The pending transfer holding a settlement batch's payout (end of day books it,
    reconciliation posts it)."""
    return derive_id("settlement-hold", batch_id)
