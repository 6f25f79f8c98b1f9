"""Deny list lookups and merges; the wire format's round trip and its field-naming errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus_terminals.deny_list import DenyList
from bus_terminals.wire import (
    RecordStatus,
    UploadBatch,
    UploadKind,
    UploadRecord,
    WireError,
    decode_batch,
    encode_batch,
)


def test_deny_list_lookup_merge_and_file_round_trip(tmp_path: Path) -> None:
    generator = random.Random(1)
    numbers = {generator.randrange(10**15, 10**16) for _ in range(50_000)}
    deny = DenyList(numbers, version=3)
    sample = sorted(numbers)[::997]
    assert all(str(number) in deny for number in sample)
    assert str(10**16 + 1) not in deny
    deny.add(["6032984000000001", "6032984000000002"], version=5)
    assert "6032984000000001" in deny
    assert deny.version == 5
    assert len(deny) == len(numbers) + 2
    deny.save(tmp_path / "deny.bin")
    loaded = DenyList.load(tmp_path / "deny.bin")
    assert loaded.version == 5
    assert loaded.values == deny.values
    with pytest.raises(ValueError, match="sorted"):
        DenyList.from_bytes(deny.values[::-1].tobytes(), 1)


@given(st.sets(st.integers(0, 10**19 - 1), max_size=200), st.lists(st.integers(0, 10**19 - 1)))
def test_deny_list_is_a_set(members: set[int], probes: list[int]) -> None:
    deny = DenyList()
    deny.add([str(number) for number in members], version=1)
    for probe in [*probes, *members]:
        assert (str(probe) in deny) == (probe in members)


@given(
    st.sets(st.integers(0, 10**19 - 1), max_size=200),
    st.sets(st.integers(0, 10**19 - 1), max_size=50),
)
def test_deny_list_lifts_take_cards_off(members: set[int], lifted: set[int]) -> None:
    """A lift from the back office (staff took the entry off) is a set difference; the list
    stays sorted, so it saves and loads as before."""
    deny = DenyList()
    deny.add([str(number) for number in members], version=1)
    deny.remove([str(number) for number in lifted | set(list(members)[:3])])
    kept = members - lifted - set(list(members)[:3])
    assert list(deny.values) == sorted(kept)
    assert DenyList.from_bytes(deny.to_bytes(), 2).values == deny.values


def _record(tmac: tuple[int, str] = (0, ""), **changes: object) -> UploadRecord:
    """A record; `tmac` (counter, value) is kept only where the format allows it (committed)."""
    base = UploadRecord(
        "V1", 1, UploadKind.fare_debit, RecordStatus.committed, "6032984000000001", 7, 3_500,
        0, "", 16_500, 1_763_942_400_000, "K1", "", "full", 6, 17, 3_500,
    )  # fmt: skip
    record = base._replace(**changes)  # type: ignore[arg-type]
    if record.kind == UploadKind.block:  # a block moves no money (a property test below)
        record = record._replace(amount_rupiah=0, topup_rupiah=0, pending_topup_id="")
    if record.status == RecordStatus.committed:
        record = record._replace(tmac_counter=tmac[0], tmac_value=tmac[1])
    return record


tmacs = st.one_of(
    st.just((0, "")),
    st.tuples(st.integers(1, 2**32 - 1), st.binary(min_size=8, max_size=8).map(bytes.hex)),
)
records = st.builds(
    _record,
    sequence=st.integers(1, 2**40),
    kind=st.sampled_from([k for k in UploadKind if k != UploadKind.denied]),
    status=st.sampled_from(list(RecordStatus)),
    card_counter=st.integers(1, 2**32 - 1),
    amount_rupiah=st.integers(0, 2_000_000),
    route=st.text(max_size=64).filter(str.isprintable),
    tmac=tmacs,
)


@given(st.lists(records, max_size=20, unique_by=lambda r: r.sequence))
def test_batches_round_trip(batch_records: list[UploadRecord]) -> None:
    batch = UploadBatch("V1", 9, tuple(batch_records))
    assert decode_batch(encode_batch(batch)) == batch


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (b'"fare_debit"', b'"free_ride"', "kind"),
        (b'"6032984000000001"', b'"60329840000000AB"', "card_number"),
        (b",3500,", b",-3500,", "amount_rupiah"),
        (b",3500,", b",3500.0,", "amount_rupiah"),
        (b",3500,", b",2000001,", "amount_rupiah"),  # more than any purse can hold
        (b'"batch_sequence":1', b'"batch_sequence":0', "batch_sequence"),
        (b'"version":1', b'"version":2', "version"),
        (b'2,"00112233aabbccdd"]', b'2,"00112233AABBCCDD"]', "tmac_value"),  # lowercase hex
        (b'2,"00112233aabbccdd"]', b'2,"00112233aabbcc"]', "tmac_value"),
        (b'2,"00112233aabbccdd"]', b'2,""]', "tmac_counter"),  # both or neither
        (b'2,"00112233aabbccdd"]', b'0,"00112233aabbccdd"]', "tmac_counter"),
        (b'"committed"', b'"in_doubt"', "tmac_counter"),  # only a committed one carries it
        (b'"fare_debit"', b'"block"', "amount_rupiah"),  # a block moves no money
    ],
)
def test_parse_errors_name_the_field(old: bytes, new: bytes, field: str) -> None:
    body = encode_batch(UploadBatch("V1", 1, (_record(tmac=(2, "00112233aabbccdd")),)))
    assert old in body
    with pytest.raises(WireError) as caught:
        decode_batch(body.replace(old, new, 1))
    assert caught.value.field == field
    assert field in str(caught.value)


def test_a_batch_from_before_the_transaction_mac_is_read_without_one() -> None:
    """Terminals upgraded after the back office still upload: the fields list of the first
    terminals (no tmac_counter, tmac_value) is accepted, its records carry no Transaction MAC."""
    from bus_terminals.wire import fields_before_tmac

    record = _record()
    document = json.loads(encode_batch(UploadBatch("V1", 1, (record,))))
    assert document["fields"][-2:] == ["tmac_counter", "tmac_value"]
    document["fields"] = fields_before_tmac
    document["records"] = [row[:-2] for row in document["records"]]
    assert decode_batch(json.dumps(document).encode()).records == (record,)
    document["records"] = [[*row, 0, ""] for row in document["records"]]
    with pytest.raises(WireError, match="list of 17"):
        decode_batch(json.dumps(document).encode())


def test_card_log_fields_are_the_log_record_the_card_writes() -> None:
    from bus_terminals.terminal import intended_log_record
    from bus_terminals.wire import card_log_fields, card_terminal_number
    from card_reader import tmac
    from card_reader.ksh_card import RecordKind

    for kind, top_up, card_kind in (
        (UploadKind.fare_debit, 0, RecordKind.DEBIT),
        (UploadKind.topup_credit, 5_000, RecordKind.CREDIT),
        (UploadKind.block, 0, RecordKind.BLOCK),
    ):
        record = _record(kind=kind, topup_rupiah=top_up)
        if kind == UploadKind.block:
            record = record._replace(amount_rupiah=0)
        fields = card_log_fields(record)
        assert fields.kind == card_kind
        assert fields.amount_rupiah == (top_up or record.amount_rupiah)
        assert fields.terminal_number == card_terminal_number("V1")
        assert fields.time_unix_seconds == record.time_ms // 1000
        assert tmac.CardTransaction.of_log_fields(*fields) == tmac.CardTransaction.of(
            intended_log_record(record)
        )


def test_records_of_another_terminal_or_repeated_are_refused() -> None:
    body = encode_batch(UploadBatch("V1", 1, (_record(), _record(sequence=2))))
    with pytest.raises(WireError, match="batch's terminal"):
        decode_batch(body.replace(b'["V1",2', b'["V2",2'))
    with pytest.raises(WireError, match="repeats"):
        decode_batch(body.replace(b'["V1",2', b'["V1",1'))


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=70),
    st.sampled_from(["fare_debit", "denied", "in_doubt", "committed", "6032984000000001", "V1"]),
    st.sampled_from(["", "0123456789abcdef", "0123456789ABCDEF", "0123456789abcde"]),
)


@given(records, st.integers(0, 18), json_values)
def test_the_fast_record_check_agrees_with_the_field_table(
    record: UploadRecord, position: int, value: object
) -> None:
    from bus_terminals.wire import _check_values, _row_valid

    row = json.loads(json.dumps(list(record)))  # as a decoded upload holds it
    row[position] = value
    try:
        _check_values(row, "")
        slow = row[0] == "V1"
    except WireError:
        slow = False
    assert _row_valid(row, "V1") == slow


@given(
    st.text(alphabet="0123456789", min_size=8, max_size=19),
    st.integers(0, 2**32),
    st.sampled_from(["fare", "sale", "fee", "top-up", "refund"]),
)
def test_card_transfer_ids_are_the_ledgers_derived_ids(number: str, counter: int, leg: str) -> None:
    from gateways.terminal_api.accounts import card_transfer_id
    from ledger.records import derive_id

    assert card_transfer_id(number, counter, leg) == derive_id(
        "card-transaction", number, counter, leg
    )


def test_no_record_moves_more_than_a_purse_holds() -> None:
    """The wire's bound is the card's: an upload claiming a sale of Rp 2,000,001 (or a balance
    the purse cannot hold) is refused, not booked."""
    from bus_terminals import wire
    from card_reader import ksh_card

    assert wire.rupiah_max == ksh_card.balance_max_rupiah
    # And the log record kinds the wire names are the card's.
    assert wire.card_log_debit == ksh_card.RecordKind.DEBIT
    assert wire.card_log_credit == ksh_card.RecordKind.CREDIT
    assert wire.card_log_block == ksh_card.RecordKind.BLOCK


def test_a_deny_list_package_replaces_the_list_only_when_it_is_as_new() -> None:
    """A fleet deny-list package is the whole list as of a change id: a newer one replaces the
    terminal's list (a card lifted since is off it); an older one is ignored, so a card staff
    lifted after it was published does not come back."""
    from types import SimpleNamespace

    from bus_terminals.deny_list import DenyList
    from bus_terminals.packages import deny_list_content
    from bus_terminals.sync import SyncClient, SyncState

    state = SyncState(deny_list=DenyList([111, 222], version=5))
    client = SimpleNamespace(state=state)
    SyncClient._apply_deny_list(client, deny_list_content(4, [111, 222, 333]))  # type: ignore[arg-type]
    assert "333" not in state.deny_list and state.deny_list.version == 5
    SyncClient._apply_deny_list(client, deny_list_content(7, [222]))  # type: ignore[arg-type]
    assert "111" not in state.deny_list and "222" in state.deny_list
    assert state.deny_list.version == 7


def test_a_deny_list_package_carries_the_chip_block_list_after_its_marker() -> None:
    """The chip-block list follows the denied numbers after the marker; a package from before
    it (no marker) leaves the terminal's chip-block list as it is; an older terminal's check
    (numbers sorted) refuses a package with the marker rather than deny the marker."""
    from types import SimpleNamespace

    from bus_terminals.deny_list import DenyList
    from bus_terminals.packages import (
        PackageKind,
        chip_block_marker,
        content_problem,
        deny_list_content,
        deny_list_numbers,
    )
    from bus_terminals.sync import SyncClient, SyncState

    content = deny_list_content(9, [333, 111, 222], [222])
    assert deny_list_numbers(content) == (9, [111, 222, 333], [222])
    assert content_problem(PackageKind.deny_list, content) == ""
    assert int.from_bytes(content[32:40], "little") == chip_block_marker
    assert deny_list_numbers(deny_list_content(9, [111])) == (9, [111], None)
    state = SyncState(chip_block_list=DenyList([444], version=3))
    client = SimpleNamespace(state=state)
    SyncClient._apply_deny_list(client, deny_list_content(8, [111, 444]))  # type: ignore[arg-type]
    assert "444" in state.chip_block_list  # a package without the list says nothing of it
    SyncClient._apply_deny_list(client, content)  # type: ignore[arg-type]
    assert "222" in state.chip_block_list and "444" not in state.chip_block_list
    assert state.chip_block_list.version == 9
    unsorted = content + (100).to_bytes(8, "little")
    assert "not sorted" in content_problem(PackageKind.deny_list, unsorted)
    # What an older terminal checks (every number after the version ascending) fails.
    numbers = [int.from_bytes(content[at : at + 8], "little") for at in range(8, len(content), 8)]
    assert numbers != sorted(set(numbers))
