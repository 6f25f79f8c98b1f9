"""Accepting an upload batch before anything in it is believed: the terminal, its signature
over the raw body (checked once per batch), the batch sequence and replays. Only then is the
body parsed. What the terminal's role may report becomes a `RoleRule` for the planner: a
record outside it is quarantined, never a reason to refuse the batch (the terminal's later
records would wait behind it for ever).

Inside the caller's transaction, the terminal's row is locked: batches of one terminal are
serial. The next batch sequence is accepted; an earlier one is a replay (same bytes: the stored
acknowledgement again; other bytes: refused); a later one is out of order (refused).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from bus_terminals.wire import (
    UploadBatch,
    UploadKind,
    WireError,
    decode_batch,
    load_public_key,
    signature_valid,
)
from gateways.terminal_api import registry
from gateways.terminal_api.planning import RoleRule, UploadAnswer, UploadResult
from gateways.terminal_api.registry import TerminalRole, TerminalRow, TerminalStatus

public_key_cache_max = 100_000
_keys: dict[str, Any] = {}


def public_key(text: str) -> Any:
    """A terminal's Ed25519 public key from its registered text, parsed once per process."""
    key = _keys.get(text)
    if key is None:
        if len(_keys) >= public_key_cache_max:
            _keys.clear()
        key = _keys[text] = load_public_key(text)
    return key


def suspended_detail(terminal_id: str) -> str:
    return (
        f"terminal {terminal_id} is suspended (see ksh terminal show {terminal_id}); keep the "
        "journal: a supervisor resumes it with ksh terminal resume"
    )


@dataclass(frozen=True, slots=True)
class Accepted:
    terminal: TerminalRow
    batch: UploadBatch
    digest: bytes  # SHA-256 of the body, kept to tell a replay from a conflict
    rule: RoleRule  # what this terminal may report (other records are quarantined)


async def accept(
    connection: asyncpg.Connection, header_terminal_id: str, signature: str, body: bytes
) -> Accepted | UploadAnswer:
    """The batch to book, or the answer that refuses it (or replays an earlier one)."""
    terminal = await registry.terminal(connection, header_terminal_id, for_update=True)
    if terminal is None:
        return UploadAnswer(UploadResult.unknown_terminal, f"terminal {header_terminal_id!r}")
    if terminal.status == TerminalStatus.suspended:
        return UploadAnswer(UploadResult.terminal_suspended, suspended_detail(terminal.terminal_id))
    if terminal.status != TerminalStatus.active:
        return UploadAnswer(UploadResult.terminal_revoked, f"terminal {terminal.terminal_id}")
    if not signature_valid(public_key(terminal.public_key), body, signature):
        return UploadAnswer(UploadResult.signature_invalid, "signature does not match body")
    try:
        batch = decode_batch(body)
    except WireError as error:
        return UploadAnswer(UploadResult.malformed, str(error))
    if batch.terminal_id != terminal.terminal_id:
        return UploadAnswer(UploadResult.terminal_mismatch, "body names another terminal")
    digest = hashlib.sha256(body).digest()
    if batch.batch_sequence < terminal.next_batch_sequence:
        return await _replay(connection, terminal, batch.batch_sequence, digest)
    if batch.batch_sequence > terminal.next_batch_sequence:
        return UploadAnswer(
            UploadResult.batch_out_of_order,
            f"batch {batch.batch_sequence} arrived; expected {terminal.next_batch_sequence}",
            acknowledgement={"expected_batch_sequence": terminal.next_batch_sequence},
        )
    return Accepted(terminal, batch, digest, role_rule(terminal))


async def _replay(
    connection: asyncpg.Connection, terminal: TerminalRow, batch_sequence: int, digest: bytes
) -> UploadAnswer:
    row = await connection.fetchrow(
        "select body_sha256, acknowledgement from upload_batches "
        "where terminal_id = $1 and batch_sequence = $2",
        terminal.terminal_id,
        batch_sequence,
    )
    if row is None or bytes(row["body_sha256"]) != digest:
        return UploadAnswer(
            UploadResult.batch_conflict,
            f"batch {batch_sequence} was already accepted with other content",
        )
    return UploadAnswer(UploadResult.exists, acknowledgement=json.loads(row["acknowledgement"]))


_validator_kinds = frozenset(
    {UploadKind.fare_debit, UploadKind.topup_credit, UploadKind.denied, UploadKind.block}
)
_pos_kinds = frozenset(
    {
        UploadKind.sale,
        UploadKind.refund,
        UploadKind.topup_credit,
        UploadKind.denied,
        UploadKind.block,
    }
)


def role_rule(terminal: TerminalRow) -> RoleRule:
    if terminal.role == TerminalRole.validator:
        return RoleRule(_validator_kinds, None)
    return RoleRule(_pos_kinds, terminal.merchant_id or "")
