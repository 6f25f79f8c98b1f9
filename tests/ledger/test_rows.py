"""The one encoding of a stored transfer row (`ledger.chain`): what the booking sends by binary
COPY, what the chain hashes, and what `ksh ledger check` recomputes from the stored rows."""

from __future__ import annotations

import json
import uuid

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import (
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    create_transfers,
    derive_id,
)
from ledger.audit import check_ledger
from ledger.chain import _int4, _int8, _length_16, _null, _optional_fields, _text
from ledger.records import reference_length_max
from tests.ledger.books import bank, open_books, purses, revenue

references = st.none() | st.text(max_size=reference_length_max)
counters = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)  # 1e+16, -0.0, 5e-324: jsonb rewrites
    | st.text(max_size=6)
)
metadata = st.none() | st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
).map(json.dumps)


def _generic(*fields: object) -> bytes:
    """The optional fields composed one by one (the encoder's fast paths must agree)."""
    pending_id, timeout_s, terminal_id, terminal_sequence, card_number, card_counter = fields[:6]
    bank_reference, settlement_batch, metadata_text = fields[6:]
    assert metadata_text is None
    return b"".join(
        (
            _null if pending_id is None else _length_16 + pending_id.bytes,  # type: ignore[attr-defined]
            _int4.pack(4, timeout_s),
            _text(terminal_id),  # type: ignore[arg-type]
            _null if terminal_sequence is None else _int8.pack(8, terminal_sequence),
            _text(card_number),  # type: ignore[arg-type]
            _null if card_counter is None else _int8.pack(8, card_counter),
            _text(bank_reference),  # type: ignore[arg-type]
            _text(settlement_batch),  # type: ignore[arg-type]
            _null,
        )
    )


@given(
    pending_id=st.none() | st.uuids(),
    terminal_id=references,
    terminal_sequence=counters,
    card_number=references,
    card_counter=counters,
    bank_reference=references,
)
def test_the_fast_paths_encode_as_the_field_by_field_form(
    pending_id: uuid.UUID | None,
    terminal_id: str | None,
    terminal_sequence: int | None,
    card_number: str | None,
    card_counter: int | None,
    bank_reference: str | None,
) -> None:
    fields = (pending_id, 0, terminal_id, terminal_sequence, card_number, card_counter)
    fields += (bank_reference, None, None)
    assert _optional_fields(*fields) == _generic(*fields)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(references, counters, references, counters, references, references, metadata),
        min_size=1,
        max_size=12,
    )
)
async def test_stored_rows_encode_back_to_what_was_booked(
    database_url: str, rows: list[tuple]
) -> None:
    """Any references and metadata (unicode, empty, absent) survive the binary COPY and the
    check's re-encoding: the chain verifies. Text PostgreSQL cannot store (a NUL) is refused
    with its own result, and the rest of the batch books."""
    connection = await asyncpg.connect(database_url)
    try:
        if not await connection.fetchval("select count(*) from ledger_accounts"):
            await open_books(connection)  # (the examples share one database)
        top_up = Transfer(derive_id("rows", "top-up"), bank, purses[0], 10**9, TransferCode.top_up)
        transfers = [top_up] + [
            Transfer(
                derive_id("rows", str(uuid.uuid4())),
                purses[0],
                revenue,
                1 + index,
                TransferCode.fare,
                TransferFlags.none,
                None,
                0,
                *fields,
            )
            for index, fields in enumerate(rows)
        ]
        outcomes = await create_transfers(connection, transfers)
        for outcome, fields in zip(outcomes[1:], rows):
            texts = [fields[0], fields[2], fields[4], fields[5]]
            if any(text is not None and "\x00" in text for text in texts):
                expected = CreateTransferResult.reference_must_be_text
            elif fields[6] is not None and "\\u0000" in fields[6]:
                expected = CreateTransferResult.metadata_must_be_json
            else:
                expected = CreateTransferResult.created
            assert outcome.result is expected, (outcome, fields)
        assert await check_ledger(connection) == []
    finally:
        await connection.close()


async def test_a_repeat_with_metadata_is_recognised_whatever_jsonb_made_of_it(
    connection: asyncpg.Connection,
) -> None:
    """jsonb gives metadata back reformatted ({"x": 1.5, "a": 1e2}); a repeat compares the
    canonical forms, so a retried settlement transfer answers `exists`."""
    await open_books(connection)
    first = Transfer(
        derive_id("rows", "with-metadata"),
        bank,
        purses[1],
        5_000,
        TransferCode.top_up,
        metadata='{"x":1.5,"a":1e2}',
    )
    booked = await create_transfers(connection, [first])
    assert booked[0].result is CreateTransferResult.created
    again = await create_transfers(
        connection,
        [
            first,
            first._replace(metadata='{"a": 100, "x": 1.5}'),
            first._replace(metadata='{"a": 100, "x": 1.6}'),
        ],
    )
    assert [outcome.result for outcome in again] == [
        CreateTransferResult.exists,
        CreateTransferResult.exists,
        CreateTransferResult.exists_with_different_metadata,
    ]
