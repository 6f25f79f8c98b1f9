"""The terminal's on-device journal: SQLite (WAL, synchronous=FULL), written ahead of the card.

A card transaction goes through the journal like this (DESIGN.md, "A tap, step by step"):

    intended ──commit answered──> committed
        └──────answer lost───────> in_doubt ──card log says──> committed | void

`intend` makes the record durable *before* the card is asked to commit; `commit` or
`mark_in_doubt` follow the card's answer. A process killed between the two leaves an
`intended` record; opening the journal turns it into `in_doubt` (the card may or may not have
committed), and the card's own log settles it the next time that card taps.

Each record is keyed by (terminal id, sequence), carries the card's counter (and, once the card
answered the commit, its Transaction MAC: `commit` stores TMC and TMV), and is uploaded in
signed batches (`bus_terminals.sync`). A batch is stored with its exact bytes before it is sent,
so a retry sends the same bytes (idempotent at the back office). Acknowledged records in a final
state can be pruned; the journal refuses new taps when it holds `records_max` records that cannot
be pruned yet (the bus has been offline too long).
"""

from __future__ import annotations

import enum
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from bus_terminals.wire import RecordStatus, UploadKind, UploadRecord, check_record

records_max = 500_000  # ~ weeks of taps on one bus; then the validator stops taking taps
records_kept_after_upload = 10_000  # kept for audit and the POS "refund last sale"
batch_records_max = 2_000
busy_timeout_ms = 5_000  # the sync thread and the reader loop share the file


class JournalState(enum.StrEnum):
    intended = "intended"
    committed = "committed"
    in_doubt = "in_doubt"
    void = "void"


class JournalFull(Exception):
    """No room for another tap until the journal is uploaded (I/O-like: the bus must go online)."""


@dataclass(frozen=True, slots=True)
class PendingBatch:
    batch_sequence: int
    body: bytes
    signature: str


_columns = (
    "terminal_id, sequence, kind, status, card_number, card_counter, amount_rupiah, "
    "topup_rupiah, pending_topup_id, balance_after_rupiah, time_ms, route, merchant_id, "
    "fare_detail, previous_counter, previous_terminal_number, previous_balance_rupiah, "
    "tmac_counter, tmac_value"
)

_schema = """
create table if not exists meta (
    key text primary key,
    value integer not null
);
create table if not exists records (
    terminal_id text not null,
    sequence integer primary key,
    kind text not null,
    status text not null check (status in ('intended', 'committed', 'in_doubt', 'void')),
    card_number text not null,
    card_counter integer not null,
    amount_rupiah integer not null,
    topup_rupiah integer not null,
    pending_topup_id text not null,
    balance_after_rupiah integer not null,
    time_ms integer not null,
    route text not null,
    merchant_id text not null,
    fare_detail text not null,
    previous_counter integer not null,
    previous_terminal_number integer not null,
    previous_balance_rupiah integer not null,
    uploaded_status text,  -- the status the back office has acknowledged
    batch_sequence integer,  -- the batch it is waiting in, if any
    tmac_counter integer not null default 0,  -- the card's Transaction MAC, once committed
    tmac_value text not null default ''
);
create index if not exists records_card on records (card_number, status);
create index if not exists records_upload on records (batch_sequence, uploaded_status);
create table if not exists batches (
    batch_sequence integer primary key,
    body blob not null,
    signature text not null
);
insert or ignore into meta values ('next_sequence', 1), ('next_batch_sequence', 1);
-- Rides sold by QRIS to riders without a card (`bus_terminals.qris_till.QrisRides`): written
-- before the back office is asked for the code, then each state it reaches. No card moves, so
-- nothing here is uploaded: the back office books the ride from the acquirer's confirmation.
create table if not exists qris_rides (
    sale integer primary key,
    time_ms integer not null,
    route text not null,
    amount_rupiah integer not null,
    fare_detail text not null,
    state text not null check (state in ('asked', 'open', 'paid', 'expired', 'failed')),
    order_id text not null default '',
    qr_content text not null default ''
);
"""
# Columns added after the first journals were written, each with its default: `_migrate` adds
# the missing ones to a journal opened by a newer program (existing records get the default).
_added_columns = (
    ("tmac_counter", "integer not null default 0"),
    ("tmac_value", "text not null default ''"),
)
assert _columns.count(",") + 1 == len(UploadRecord._fields)


class Journal:
    """One terminal's journal. Not thread-safe: one reader loop owns it."""

    def __init__(self, path: Path | str, terminal_id: str, *, recover: bool = True) -> None:
        """Open (or create) the journal. `recover` is for the reader loop's own connection:
        an `intended` record then belongs to a process that died between intend and the
        card's answer, so its outcome is unknown. A second connection (the sync loop in
        another thread) opens with `recover=False`."""
        self.path = Path(path)
        self.terminal_id = terminal_id
        self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.connection.execute(f"pragma busy_timeout = {busy_timeout_ms}")
        self.connection.execute("pragma journal_mode = wal")
        self.connection.execute("pragma synchronous = full")
        # One transaction, so two processes opening a new journal at once create it once.
        self.connection.executescript(f"begin immediate;{_schema}commit;")
        with self._transaction():
            self._migrate()
        if recover:
            self.connection.execute(
                "update records set status = 'in_doubt' where status = 'intended'"
            )

    def close(self) -> None:
        self.connection.close()

    def _migrate(self) -> None:
        """Add the columns a journal written by an older program lacks (one transaction, so
        two processes opening it at once add each once)."""
        present = {row[1] for row in self.connection.execute("pragma table_info(records)")}
        for name, definition in _added_columns:
            if name not in present:
                self.connection.execute(f"alter table records add column {name} {definition}")

    # ---------------------------------------------------------------- the write-ahead path

    def next_sequence(self) -> int:
        row = self.connection.execute("select value from meta where key = 'next_sequence'")
        return int(row.fetchone()[0])

    def intend(self, record: UploadRecord) -> UploadRecord:
        """Durably record a card transaction about to be committed; returns it with its sequence.

        The record's `sequence` is assigned here; `status` is stored as `intended`.
        """
        with self._transaction():
            self._ensure_room()
            sequence = self.next_sequence()
            record = record._replace(terminal_id=self.terminal_id, sequence=sequence)
            check_record(record)
            self._insert(record, JournalState.intended)
            self.connection.execute(
                "update meta set value = ? where key = 'next_sequence'", (sequence + 1,)
            )
        return record

    def append_final(self, record: UploadRecord) -> UploadRecord:
        """Record something already final (a denied tap): one durable write."""
        with self._transaction():
            self._ensure_room()
            sequence = self.next_sequence()
            record = record._replace(terminal_id=self.terminal_id, sequence=sequence)
            check_record(record)
            self._insert(record, JournalState(record.status.value))
            self.connection.execute(
                "update meta set value = ? where key = 'next_sequence'", (sequence + 1,)
            )
        return record

    def commit(self, sequence: int, tmac_counter: int = 0, tmac_value: str = "") -> None:
        """The card committed. With the card's Transaction MAC when its commit answer came
        (`tmac_counter`, `tmac_value`: TMC and TMV in hex); without, when the card's log showed
        it later."""
        record = self.record(sequence)
        assert record is not None, f"no record {sequence}"
        committed = record[0]._replace(
            status=RecordStatus.committed, tmac_counter=tmac_counter, tmac_value=tmac_value
        )
        check_record(committed)  # a Transaction MAC as the wire format accepts it
        cursor = self.connection.execute(
            "update records set status = 'committed', tmac_counter = ?, tmac_value = ? "
            "where sequence = ? and status in ('intended', 'in_doubt')",
            (tmac_counter, tmac_value, sequence),
        )
        assert cursor.rowcount == 1, f"record {sequence} is not intended or in doubt"

    def mark_in_doubt(self, sequence: int) -> None:
        self._move(sequence, (JournalState.intended,), JournalState.in_doubt)

    def void(self, sequence: int) -> None:
        self._move(sequence, (JournalState.in_doubt, JournalState.intended), JournalState.void)

    def _move(self, sequence: int, sources: tuple[JournalState, ...], target: JournalState) -> None:
        placeholders = ", ".join("?" for _ in sources)
        cursor = self.connection.execute(
            f"update records set status = ? where sequence = ? and status in ({placeholders})",
            (target.value, sequence, *(source.value for source in sources)),
        )
        assert cursor.rowcount == 1, f"record {sequence} is not in {sources}"

    # ---------------------------------------------------------------- reads

    def record(self, sequence: int) -> tuple[UploadRecord, JournalState] | None:
        row = self.connection.execute(
            f"select {_columns} from records where sequence = ?", (sequence,)
        ).fetchone()
        return None if row is None else _from_row(row)

    def in_doubt_for_card(self, card_number: str) -> list[UploadRecord]:
        rows = self.connection.execute(
            f"select {_columns} from records where card_number = ? and status = 'in_doubt' "
            "order by sequence",
            (card_number,),
        ).fetchall()
        return [_from_row(row)[0] for row in rows]

    def records(self) -> list[tuple[UploadRecord, JournalState]]:
        rows = self.connection.execute(f"select {_columns} from records order by sequence")
        return [_from_row(row) for row in rows.fetchall()]

    def last_record(self, kind: UploadKind) -> UploadRecord | None:
        row = self.connection.execute(
            f"select {_columns} from records where kind = ? and status = 'committed' "
            "order by sequence desc limit 1",
            (kind.value,),
        ).fetchone()
        return None if row is None else _from_row(row)[0]

    def taken_top_up_ids(self, card_number: str) -> set[str]:
        """Pending top-ups this terminal already put on (or may have put on) the card."""
        rows = self.connection.execute(
            "select pending_topup_id from records where card_number = ? "
            "and pending_topup_id != '' and status != 'void'",
            (card_number,),
        )
        return {row[0] for row in rows.fetchall()}

    def count(self) -> int:
        return int(self.connection.execute("select count(*) from records").fetchone()[0])

    # ---------------------------------------------------------------- upload batches

    def pending_batch(self) -> PendingBatch | None:
        row = self.connection.execute(
            "select batch_sequence, body, signature from batches order by batch_sequence limit 1"
        ).fetchone()
        return None if row is None else PendingBatch(int(row[0]), bytes(row[1]), str(row[2]))

    def records_to_upload(self, limit: int = batch_records_max) -> list[UploadRecord]:
        """Records whose current status the back office has not acknowledged (not intended)."""
        rows = self.connection.execute(
            f"select {_columns} from records where status != 'intended' and batch_sequence is null "
            "and (uploaded_status is null or uploaded_status != status) order by sequence limit ?",
            (limit,),
        ).fetchall()
        records = []
        for row in rows:
            record, state = _from_row(row)
            records.append(record._replace(status=RecordStatus(state.value)))
        return records

    def store_batch(
        self, batch_sequence: int, records: list[UploadRecord], body: bytes, signature: str
    ) -> None:
        """Keep a batch's exact bytes before sending, so every retry is the same request."""
        with self._transaction():
            expected = self.next_batch_sequence()
            assert batch_sequence == expected, f"batch {batch_sequence}, expected {expected}"
            self.connection.execute(
                "insert into batches values (?, ?, ?)", (batch_sequence, body, signature)
            )
            self.connection.executemany(
                "update records set batch_sequence = ?, uploaded_status = null "
                "where sequence = ? and status = ?",
                [(batch_sequence, record.sequence, record.status.value) for record in records],
            )
            self.connection.execute(
                "update meta set value = ? where key = 'next_batch_sequence'",
                (batch_sequence + 1,),
            )

    def next_batch_sequence(self) -> int:
        row = self.connection.execute("select value from meta where key = 'next_batch_sequence'")
        return int(row.fetchone()[0])

    def acknowledge_batch(self, batch_sequence: int, statuses: dict[int, str]) -> None:
        """The back office has the batch: remember which status of each record it holds."""
        with self._transaction():
            self.connection.executemany(
                "update records set uploaded_status = ?, batch_sequence = null "
                "where sequence = ? and batch_sequence = ?",
                [(status, sequence, batch_sequence) for sequence, status in statuses.items()],
            )
            self.connection.execute(
                "update records set batch_sequence = null where batch_sequence = ?",
                (batch_sequence,),
            )
            self.connection.execute(
                "delete from batches where batch_sequence = ?", (batch_sequence,)
            )

    def prune(self, keep: int | None = None) -> int:
        """Delete acknowledged records in a final state, keeping the newest `keep`."""
        with self._transaction():
            return self._prune(keep)

    def _prune(self, keep: int | None = None) -> int:
        cursor = self.connection.execute(
            "delete from records where uploaded_status = status "
            "and status in ('committed', 'void') and batch_sequence is null and sequence <= "
            "(select coalesce(max(sequence), 0) from records) - ?",
            (records_kept_after_upload if keep is None else keep,),
        )
        return cursor.rowcount

    # ---------------------------------------------------------------- helpers

    def _ensure_room(self) -> None:
        # Per tap: first a bound from the sequence key's two ends (two index probes; count(*)
        # walks the table, ~5 ms at 500,000 records); count only when the bound is reached.
        spread = self.connection.execute(
            "select (select max(sequence) from records) - (select min(sequence) from records) + 1"
        ).fetchone()[0]
        if (spread or 0) < records_max:
            return
        if self.count() >= records_max:
            self._prune()
            if self.count() >= records_max:
                raise JournalFull(f"journal holds {records_max} records not yet uploaded")

    # ---------------------------------------------------------------- rides sold by QRIS

    def intend_qris_ride(self, time_ms: int, route: str, amount_rupiah: int, detail: str) -> int:
        """Record a QR ride before its code is asked for; its sale number."""
        with self._transaction():
            row = self.connection.execute("select coalesce(max(sale), 0) + 1 from qris_rides")
            sale = int(row.fetchone()[0])
            self.connection.execute(
                "insert into qris_rides (sale, time_ms, route, amount_rupiah, fare_detail, state) "
                "values (?, ?, ?, ?, ?, 'asked')",
                (sale, time_ms, route, amount_rupiah, detail),
            )
        return sale

    def update_qris_ride(
        self, sale: int, state: str, order_id: str = "", qr_content: str = ""
    ) -> None:
        self.connection.execute(
            "update qris_rides set state = ?, order_id = coalesce(nullif(?, ''), order_id), "
            "qr_content = coalesce(nullif(?, ''), qr_content) where sale = ?",
            (state, order_id, qr_content, sale),
        )

    def qris_rides(self) -> list[dict[str, object]]:
        cursor = self.connection.execute(
            "select sale, time_ms, route, amount_rupiah, fare_detail, state, order_id "
            "from qris_rides order by sale"
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _insert(self, record: UploadRecord, state: JournalState) -> None:
        values = list(record)
        values[3] = state.value
        self.connection.execute(
            f"insert into records ({_columns}) values ({', '.join('?' * len(values))})",
            values,
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self.connection)


class _Transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> None:
        self.connection.execute("begin immediate")

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.connection.execute("commit" if kind is None else "rollback")


def _from_row(row: tuple[object, ...]) -> tuple[UploadRecord, JournalState]:
    values = list(row)
    state = JournalState(str(values[3]))
    values[2] = UploadKind(str(values[2]))
    # An intended record travels nowhere; shown as in doubt if someone asks for its wire form.
    values[3] = RecordStatus(
        RecordStatus.in_doubt.value if state == JournalState.intended else state.value
    )
    return UploadRecord(*values), state  # type: ignore[arg-type]
