"""The journal keeps every tap through kill -9 at any point, without duplicates, and its upload
bookkeeping (stored batches, acknowledgements, pruning) keeps records until the back office has them."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from bus_terminals.journal import Journal, JournalState
from bus_terminals.wire import (
    RecordStatus,
    UploadBatch,
    UploadKind,
    UploadRecord,
    WireError,
    encode_batch,
)
from tests.waiting import next_line

worker = Path(__file__).with_name("journal_worker.py")


def test_kill_minus_nine_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    generator = random.Random(7)
    printed: dict[int, str] = {}
    counters: dict[int, int] = {}
    next_counter = 1
    for _ in range(6):
        process = subprocess.Popen(
            [sys.executable, str(worker), str(path), str(next_counter)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        assert process.stdout is not None
        try:
            lines = generator.randint(1, 120)
            for _ in range(lines):
                line = next_line(process.stdout, "the worker journals its next tap")
                if not line:
                    break
                words = line.split()
                printed[int(words[1])] = words[0]
                if words[0] == "intended":
                    counters[int(words[1])] = int(words[2])
            time.sleep(generator.random() / 200)  # land somewhere inside the next write
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        journal = Journal(path, "V1")
        rows = journal.records()
        journal.close()
        sequences = [record.sequence for record, _ in rows]
        assert sequences == list(range(1, len(sequences) + 1)), "gap or duplicate"
        by_sequence = {record.sequence: (record, state) for record, state in rows}
        for sequence, what in printed.items():
            assert sequence in by_sequence, f"record {sequence} printed as {what} but lost"
            record, state = by_sequence[sequence]
            assert record.card_counter == counters[sequence]
            if what == "committed":
                assert state == JournalState.committed
            else:
                # intended (maybe committed after the print) or in doubt; never still intended
                assert state in (JournalState.in_doubt, JournalState.committed)
        assert all(state != JournalState.intended for _, state in rows)
        next_counter = max(record.card_counter for record, _ in rows) + 1 if rows else 1
    assert len(printed) > 50, "the worker must have journalled taps before its kills"
    assert "committed" in printed.values()
    assert "in_doubt" in printed.values() or "intended" in printed.values()


def tap(counter: int) -> UploadRecord:
    return UploadRecord(
        "V1", 0, UploadKind.fare_debit, RecordStatus.committed, "6032984000000001", counter,
        3_500, 0, "", 10_000, 1_763_942_400_000, "K1", "", "full", 0, 0, 0,
    )  # fmt: skip


def test_upload_bookkeeping_and_pruning(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db", "V1")
    for counter in range(1, 6):
        record = journal.intend(tap(counter))
        if counter == 5:
            journal.mark_in_doubt(record.sequence)
        else:
            journal.commit(record.sequence)
    records = journal.records_to_upload()
    assert [r.sequence for r in records] == [1, 2, 3, 4, 5]
    assert records[4].status == RecordStatus.in_doubt
    body = encode_batch(UploadBatch("V1", 1, tuple(records)))
    journal.store_batch(1, records, body, "signature")
    assert journal.records_to_upload() == []  # waiting in batch 1
    stored = journal.pending_batch()
    assert stored is not None
    assert stored.body == body
    journal.acknowledge_batch(1, {r.sequence: r.status.value for r in records})
    assert journal.pending_batch() is None
    assert journal.records_to_upload() == []
    # The in-doubt tap is resolved later: its new status goes up again.
    journal.commit(5)
    again = journal.records_to_upload()
    assert [(r.sequence, r.status) for r in again] == [(5, RecordStatus.committed)]
    assert journal.prune(keep=0) == 4  # acknowledged and final; 5 is not acknowledged yet
    assert [r.sequence for r, _ in journal.records()] == [5]
    assert journal.next_sequence() == 6
    journal.close()


def test_a_full_journal_refuses_taps_until_uploaded(tmp_path: Path, monkeypatch: object) -> None:
    import bus_terminals.journal as journal_module

    monkeypatch.setattr(journal_module, "records_max", 3)  # type: ignore[attr-defined]
    journal = Journal(tmp_path / "journal.db", "V1")
    for counter in range(1, 4):
        journal.commit(journal.intend(tap(counter)).sequence)
    try:
        journal.intend(tap(4))
        raise AssertionError("a full journal took a tap")
    except journal_module.JournalFull:
        pass
    records = journal.records_to_upload()
    journal.store_batch(1, records, b"{}", "signature")
    journal.acknowledge_batch(1, {r.sequence: r.status.value for r in records})
    monkeypatch.setattr(journal_module, "records_kept_after_upload", 0)  # type: ignore[attr-defined]
    assert journal.intend(tap(4)).sequence == 4  # room again: uploaded records were pruned
    journal.close()


def test_commit_keeps_the_cards_transaction_mac_and_only_there(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db", "V1")
    answered = journal.intend(tap(1))
    journal.commit(answered.sequence, 2, "0011223344556677")
    lost = journal.intend(tap(2))
    journal.mark_in_doubt(lost.sequence)
    for bad in ((3, ""), (0, "0011223344556677"), (3, "00112233445566"), (3, "001122334455667G")):
        try:
            journal.commit(lost.sequence, *bad)
            raise AssertionError(f"a Transaction MAC {bad} was kept")
        except WireError:
            pass
    journal.commit(lost.sequence)  # settled from the card's log later: no MAC
    uploaded = {r.sequence: (r.tmac_counter, r.tmac_value) for r in journal.records_to_upload()}
    assert uploaded == {answered.sequence: (2, "0011223344556677"), lost.sequence: (0, "")}
    journal.close()


def test_a_journal_from_before_the_transaction_mac_gains_its_columns(tmp_path: Path) -> None:
    """A validator updated in the field opens its old journal: the records it holds keep
    uploading (without a Transaction MAC) and new ones carry it."""
    import sqlite3

    import bus_terminals.journal as journal_module

    path = tmp_path / "journal.db"
    before = journal_module._schema.replace(  # the schema as the first terminals wrote it
        "batch_sequence integer,  -- the batch it is waiting in, if any\n"
        "    tmac_counter integer not null default 0,  -- the card's Transaction MAC, once committed\n"
        "    tmac_value text not null default ''\n",
        "batch_sequence integer  -- the batch it is waiting in, if any\n",
    )
    assert "tmac" not in before
    old = sqlite3.connect(path)
    old.executescript(before)
    old.execute(
        "insert into records (terminal_id, sequence, kind, status, card_number, card_counter, "
        "amount_rupiah, topup_rupiah, pending_topup_id, balance_after_rupiah, time_ms, route, "
        "merchant_id, fare_detail, previous_counter, previous_terminal_number, "
        "previous_balance_rupiah) values ('V1', 1, 'fare_debit', 'committed', "
        "'6032984000000001', 1, 3500, 0, '', 16500, 1763942400001, 'K1', '', 'full', 0, 0, 0)"
    )
    old.execute("update meta set value = 2 where key = 'next_sequence'")
    old.commit()
    old.close()
    journal = Journal(path, "V1")
    journal.commit(journal.intend(tap(2)).sequence, 3, "8899aabbccddeeff")
    uploaded = [(r.sequence, r.tmac_counter, r.tmac_value) for r in journal.records_to_upload()]
    assert uploaded == [(1, 0, ""), (2, 3, "8899aabbccddeeff")]
    journal.close()
    Journal(path, "V1").close()  # a second opening changes nothing
