"""Shared helpers of the terminal tests: records, signed uploads, and the invariants of the books."""

from __future__ import annotations

import aiohttp
import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.wire import (
    RecordStatus,
    UploadBatch,
    UploadKind,
    UploadRecord,
    card_terminal_number,
    encode_batch,
    sign,
    signature_header,
    terminal_header,
)
from gateways.terminal_api import registry


def record(
    terminal_id: str,
    sequence: int,
    card_number: str,
    counter: int,
    amount: int,
    balance_after: int,
    *,
    kind: UploadKind = UploadKind.fare_debit,
    status: RecordStatus = RecordStatus.committed,
    previous: tuple[int, str, int] = (0, "", 0),
    top_up: int = 0,
    top_up_id: str = "",
    merchant_id: str = "",
) -> UploadRecord:
    return UploadRecord(
        terminal_id,
        sequence,
        kind,
        status,
        card_number,
        counter,
        amount,
        top_up,
        top_up_id,
        balance_after,
        1_763_942_400_000 + sequence,
        "K1" if not merchant_id else "",
        merchant_id,
        "full",
        previous[0],
        card_terminal_number(previous[1]) if previous[1] else 0,
        previous[2],
    )


async def post_batch(
    session: aiohttp.ClientSession,
    url: str,
    key: Ed25519PrivateKey,
    terminal_id: str,
    batch_sequence: int,
    records: list[UploadRecord],
    *,
    body: bytes | None = None,
) -> tuple[int, dict[str, object]]:
    body = (
        body
        if body is not None
        else encode_batch(UploadBatch(terminal_id, batch_sequence, tuple(records)))
    )
    async with session.post(
        f"{url}/terminal/v1/uploads",
        data=body,
        headers={terminal_header: terminal_id, signature_header: sign(key, body)},
    ) as response:
        return response.status, await response.json()


async def books_snapshot(pool: asyncpg.Pool) -> tuple[int, int]:
    """(number of transfers booked, sum of all account balances: must be 0)."""
    async with pool.acquire() as connection:
        count = await connection.fetchval("select count(*) from ledger_transfers")
        total = await connection.fetchval(
            "select coalesce(sum(credits_posted - debits_posted), 0) from ledger_accounts"
        )
    return int(count), int(total)


async def purse_balance(pool: asyncpg.Pool, card_number: str) -> int:
    async with pool.acquire() as connection:
        row = await connection.fetchrow(
            "select credits_posted - debits_posted as balance from ledger_accounts where id = $1",
            registry.purse_account_id(card_number),
        )
    return 0 if row is None else int(row["balance"])
