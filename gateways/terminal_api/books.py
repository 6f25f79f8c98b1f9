"""The terminal side's only door into the ledger: create accounts, book transfers, read balances.

Kept to five functions so that the ledger's API can move without touching the ingest logic.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from ledger import store
from ledger.records import (
    Account,
    Balances,
    CreateAccountResult,
    Transfer,
    TransferFlags,
    TransferOutcome,
    accounts_per_batch_max,
    transfers_per_batch_max_default,
)

_account_ok = frozenset({CreateAccountResult.created, CreateAccountResult.exists})


async def ensure_accounts(connection: asyncpg.Connection, accounts: Sequence[Account]) -> None:
    """Create accounts that do not exist yet; an identical existing account is fine."""
    for start in range(0, len(accounts), accounts_per_batch_max):
        chunk = list(accounts[start : start + accounts_per_batch_max])
        results = await store.create_accounts(connection, chunk)
        problems = [r for r in results if r not in _account_ok]
        assert not problems, f"accounts refused: {problems[:3]}"


async def create_transfers(
    connection: asyncpg.Connection, transfers: Sequence[Transfer], *, now: datetime
) -> list[TransferOutcome]:
    """Book at business time `now`, in ledger batches of at most the ledger's limit, never
    splitting a linked chain."""
    outcomes: list[TransferOutcome] = []
    start = 0
    while start < len(transfers):
        end = min(start + transfers_per_batch_max_default, len(transfers))
        while end < len(transfers) and transfers[end - 1].flags & TransferFlags.linked:
            end -= 1
        assert end > start
        outcomes += await store.create_transfers(connection, transfers[start:end], now=now)
        start = end
    return outcomes


async def balances(
    connection: asyncpg.Connection, account_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Balances]:
    booked = await store.lookup_accounts(connection, list(account_ids))
    return {account_id: account.balances for account_id, account in booked.items()}


async def close_account(connection: asyncpg.Connection, account_id: uuid.UUID) -> None:
    """No transfer may touch the account from now on (a replaced card's purse)."""
    closed = await store.close_account(connection, account_id)
    assert closed, f"no account {account_id}"


async def lock_ledger(connection: asyncpg.Connection) -> None:
    """Nothing books until the caller's transaction ends (`ledger.store.lock_head`)."""
    await store.lock_head(connection)
