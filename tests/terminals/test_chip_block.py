"""Blocking on the chip (issue 17, item 2): a staff block final for the plastic (lost, stolen,
damaged) reaches the terminals as a chip-block list beside the deny list; the next terminal
that sees the card writes "blocked" onto it in a journalled card transaction, uploads it, and
the back office takes it (the card's Transaction MAC proves it) and books nothing. A terminal
that has not synced is then refused by the card itself. An automatic deny entry is never
written onto a chip; a block nobody asked for flags its terminal and the card. Real PostgreSQL,
aiohttp on loopback, emulated cards (the real card protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bus_terminals.fare.feed import load_feed
from bus_terminals.simulator import Bus, validator_keys
from bus_terminals.terminal import Decide, Reason, Verdict
from bus_terminals.validator import fare_decider
from bus_terminals.wire import public_key_text
from card_reader.deck import make_ksh_deck
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import CardState, CardStatus, KshCard
from gateways import staff
from gateways.staff import Role, StaffMember
from gateways.terminal_api import card_desk, quarantine, registry, suspension
from gateways.terminal_api.registry import TerminalRole
from tests.setup.helpers import Ksh
from tests.terminals.conftest import Backoffice, operator_id
from tests.terminals.helpers import books_snapshot, purse_balance

store = demo_key_store()
lost_card = "6032984000000501"
suspect_card = "6032984000000502"  # denied by an automatic rule (staff may lift it)
honest_card = "6032984000000503"


def read(card: EmulatedCard) -> CardState:
    reader = EmulatedReader("inspection")
    reader.insert(card)
    try:
        return KshCard(reader, store.view(KeyRole.READ)).read_state()
    finally:
        reader.remove()


async def bus_of(backoffice: Backoffice, folder: Path, terminal_id: str) -> Bus:
    bus = Bus(
        terminal_id, "K1", folder, validator_keys(store), backoffice.url,
        now_ms=backoffice.clock.unix_ms,
    )  # fmt: skip
    async with backoffice.pool.acquire() as connection:
        await registry.register_terminal(
            connection,
            terminal_id,
            public_key_text(bus.private_key.public_key()),
            TerminalRole.validator,
            operator_id=operator_id,
        )
    return bus


@pytest.fixture
async def cards(backoffice: Backoffice) -> dict[str, EmulatedCard]:
    numbers = [lost_card, suspect_card, honest_card]
    deck = make_ksh_deck(store, [20_000] * 3, seed="chip-block", first_number=int(lost_card))
    await backoffice.issue_cards(dict.fromkeys(numbers, 20_000))
    async with backoffice.pool.acquire() as connection:
        await registry.register_card_uids(
            connection, {number: card.uid for number, card in zip(numbers, deck)}
        )
    return dict(zip(numbers, deck))


async def block_lost_card(
    connection: Any, backoffice: Backoffice, cause: card_desk.BlockCause, note: str
) -> None:
    """Clerk Ani blocks the lost card (a cause final for the plastic: it goes on the chip)."""
    await card_desk.block_card(
        connection, lost_card, cause, note, username="clerk-ani", now=backoffice.clock.now()
    )


async def desk_unblock(backoffice: Backoffice, card: EmulatedCard) -> None:
    """An issuing desk unblocks the card on its chip as `ksh card unblock` does: the staff
    action names the card's newest counter, then the profile is written active."""
    from card_reader.ksh_card import desk_profile, unblock

    desk = EmulatedReader("desk")
    desk.insert(card)
    try:
        found, last_counter = desk_profile(desk, store.view(*KeyRole))
        async with backoffice.pool.acquire() as connection:
            await staff.record_action(
                connection,
                username="clerk-ani",
                role="clerk",
                action=registry.chip_unblock_action,
                subject=str(found.card_number),
                reason="found again",
                now=backoffice.clock.now(),
                detail={"card_counter": last_counter},
            )
        assert unblock(desk, store.view(*KeyRole)) is not None
    finally:
        desk.remove()


def fare() -> Decide:
    return fare_decider(load_feed(), "K1")


async def card_records(backoffice: Backoffice, number: str) -> list[tuple[str, str, int]]:
    async with backoffice.pool.acquire() as connection:
        rows = await connection.fetch(
            "select kind, outcome, card_counter from card_records where card_number = $1 "
            "and kind <> 'denied' order by card_counter",
            number,
        )
    return [(row["kind"], row["outcome"], row["card_counter"]) for row in rows]


async def test_a_staff_block_is_written_on_the_chip_and_a_stale_terminal_is_refused_by_it(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    synced = await bus_of(backoffice, tmp_path, "V1")
    stale = await bus_of(backoffice, tmp_path, "V2")
    await stale.sync_now()  # before the block: its lists stay empty
    async with backoffice.pool.acquire() as connection:
        await block_lost_card(
            connection, backoffice, card_desk.BlockCause.lost, "lost on the K1 bus"
        )
        await registry.deny_cards(
            connection, [suspect_card], "balance_mismatch", now=backoffice.clock.now()
        )
    await synced.sync_now()
    assert lost_card in synced.state.chip_block_list
    assert suspect_card in synced.state.deny_list
    assert suspect_card not in synced.state.chip_block_list
    before = await books_snapshot(backoffice.pool)

    blocked = synced.tap(cards[lost_card], backoffice.clock.unix_ms(), fare())
    assert (blocked.verdict, blocked.reason) == (Verdict.denied, Reason.card_blocked)
    on_card = read(cards[lost_card])
    assert on_card.profile.status is CardStatus.BLOCKED
    assert (on_card.balance_rupiah, on_card.counter) == (20_000, 1)
    # An automatic entry is refused at the terminal, and the chip is left as it was.
    denied = synced.tap(cards[suspect_card], backoffice.clock.unix_ms(), fare())
    assert (denied.verdict, denied.reason) == (Verdict.denied, Reason.card_denied)
    assert (read(cards[suspect_card]).profile.status, read(cards[suspect_card]).counter) == (
        CardStatus.ACTIVE,
        0,
    )
    # Tapped again: refused by the chip's own status, nothing more written.
    again = synced.tap(cards[lost_card], backoffice.clock.unix_ms(), fare())
    assert again.verdict == Verdict.denied
    assert read(cards[lost_card]).counter == 1
    await synced.sync_now()
    # Taken: stored, the card's counter continues, nothing booked, nothing flagged.
    assert await card_records(backoffice, lost_card) == [("block", "booked", 1)]
    assert await books_snapshot(backoffice.pool) == before
    assert await purse_balance(backoffice.pool, lost_card) == 20_000
    async with backoffice.pool.acquire() as connection:
        view = await registry.card_view(connection, lost_card)
        quarantined = await connection.fetchval("select count(*) from quarantined_records")
    assert view is not None
    assert (view["counter_gaps"], view["flags"], quarantined) == ([], [], 0)
    assert view["chip_block"]["terminal_id"] == "V1"

    # The terminal that has not synced: its deny list does not know the card, the card does.
    refused = stale.tap(cards[lost_card], backoffice.clock.unix_ms(), fare())
    assert (refused.verdict, refused.reason) == (Verdict.denied, Reason.card_blocked)
    assert read(cards[lost_card]).counter == 1
    ride = stale.tap(cards[suspect_card], backoffice.clock.unix_ms(), fare())
    assert ride.verdict == Verdict.accepted  # the automatic entry was never on the chip
    for bus in (synced, stale):
        bus.close()
        await bus.sync.close()


async def test_a_block_nobody_asked_for_flags_the_terminal_and_the_card(
    backoffice: Backoffice,
    cards: dict[str, EmulatedCard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hostile = await bus_of(backoffice, tmp_path, "V-HOSTILE")
    await hostile.sync_now()
    hostile.state.chip_block_list.add([honest_card], hostile.state.chip_block_list.version)
    hostile.state.deny_list.add([honest_card], hostile.state.deny_list.version)
    blocked = hostile.tap(cards[honest_card], backoffice.clock.unix_ms(), fare())
    assert blocked.reason == Reason.card_blocked
    await hostile.sync_now()
    # The card did block itself (its MAC proves it): taken, so its counter continues.
    assert await card_records(backoffice, honest_card) == [("block", "booked", 1)]
    async with backoffice.pool.acquire() as connection:
        view = await registry.card_view(connection, honest_card)
        recent = await suspension.quarantined_recently(
            connection, now=backoffice.clock.now(), terminal_id="V-HOSTILE"
        )
    assert view is not None
    assert [flag["reason"] for flag in view["flags"]] == ["unrequested_block"]
    assert recent == {"V-HOSTILE": {"unrequested_block": 1}}
    async with backoffice.pool.acquire() as connection:
        closed = await quarantine.resolve(
            connection,
            quarantine.EntryKey("V-HOSTILE", blocked.sequence),
            quarantine.Resolution.write_off,
            StaffMember("supervisor-budi", Role.supervisor),
            "terminal sent for inspection; card unblocked at the desk",
            now=backoffice.clock.now(),
        )
    assert (closed.result, closed.rupiah) == (quarantine.ResolveResult.done, 0)
    monkeypatch.setenv("DATABASE_URL", backoffice.database_url)
    shown = (await Ksh(capsys).ok("cards", "show", honest_card)).out
    assert "blocked on the chip by V-HOSTILE at 2026-11-24 06:00 WIB" in shown
    assert "unrequested_block: the back office never asked to block it" in shown
    hostile.close()
    await hostile.sync.close()


async def test_a_torn_block_is_settled_from_the_cards_log_with_its_proof(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    bus = await bus_of(backoffice, tmp_path, "V1")
    async with backoffice.pool.acquire() as connection:
        await block_lost_card(
            connection, backoffice, card_desk.BlockCause.stolen, "stolen at Simpang Lima"
        )
    await bus.sync_now()
    outcomes = set()
    for pull_at in range(1, 40):  # the card leaves before the commit, or before its answer
        torn = bus.tap(cards[lost_card], backoffice.clock.unix_ms(), fare(), pull_at)
        if torn.reason != Reason.card_removed:
            continue
        outcomes.add(read(cards[lost_card]).profile.status)
        if read(cards[lost_card]).profile.status is CardStatus.BLOCKED:
            break
    assert outcomes == {CardStatus.ACTIVE, CardStatus.BLOCKED}  # both sides of the commit
    await bus.sync.close()
    bus.reboot()  # the journal keeps the torn one in doubt
    settled = bus.tap(cards[lost_card], backoffice.clock.unix_ms(), fare())
    assert settled.verdict == Verdict.denied
    assert read(cards[lost_card]).counter == 1  # written once
    await bus.sync_now()
    # Booked on the card's own proof, read from its TransactionMAC file: not held in doubt;
    # the tries pulled away before the commit are void.
    stored = await card_records(backoffice, lost_card)
    assert [r for r in stored if r[1] != "void"] == [("block", "booked", 1)]
    assert len(stored) > 1
    bus.close()
    await bus.sync.close()


async def test_a_terminal_from_before_the_chip_block_list_downloads_it_whole(
    backoffice: Backoffice,
    cards: dict[str, EmulatedCard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A state saved before the chip-block list loads (the list empty), and its next sync
    downloads it whole (the fleet's package: `test_fleet`)."""
    from bus_terminals.sync import SyncState

    async with backoffice.pool.acquire() as connection:
        await block_lost_card(connection, backoffice, card_desk.BlockCause.damaged, "cracked")
        await registry.deny_cards(
            connection, [suspect_card], "counter_repeat", now=backoffice.clock.now()
        )
    bus = await bus_of(backoffice, tmp_path, "V1")
    await bus.sync_now()
    (bus.folder / "chip-block-list.bin").unlink()  # as an older program saved it
    old = SyncState.load(bus.folder)
    assert (len(old.chip_block_list), old.chip_block_list.version) == (0, 0)
    assert old.deny_list.version > 0
    await bus.sync.close()
    bus.reboot()
    from gateways.terminal_api import routes

    monkeypatch.setattr(routes, "deny_delta_entries_max", 0)  # any change: the whole list
    await bus.sync_now()
    assert lost_card in bus.state.chip_block_list
    assert suspect_card not in bus.state.chip_block_list
    bus.close()
    await bus.sync.close()


def test_who_is_flagged_for_a_block_depends_on_what_the_back_office_asked() -> None:
    """Asked and still asked: nothing. Asked, then lifted by staff: the card is flagged (it
    refuses itself until a desk unblocks it), the terminal is not, whatever the terminal's clock
    says of when it wrote the block. Never asked: both. A tap refused by a chip that says
    blocked flags the card unless the back office still asks for the block (a terminal may have
    blocked it and kept the record to itself)."""
    from bus_terminals.wire import UploadKind
    from gateways.terminal_api.planning import judge_blocks
    from tests.terminals.helpers import record

    def block(number: str) -> object:
        made = record("V1", 1, number, 1, 0, 20_000, previous=(0, "", 20_000))
        return made._replace(kind=UploadKind.block)

    def refused(number: str) -> object:
        made = record("V2", 1, number, 0, 0, 20_000, previous=(1, "", 20_000))
        return made._replace(kind=UploadKind.denied, fare_detail="card_blocked")

    backdated = "6032984000000504"
    records = [block(lost_card), block(suspect_card), block(honest_card), block(backdated)]
    fare_record = record("V1", 2, honest_card, 2, 4_000, 16_000, previous=(1, "", 20_000))
    written_ms = records[0].time_ms  # type: ignore[attr-defined]
    asked = {lost_card: None, suspect_card: written_ms, backdated: written_ms + 1}
    denied = [refused(lost_card), refused("6032984000000505")]
    quarantined, flags = judge_blocks([*records, fare_record], denied, asked)  # type: ignore[arg-type]
    assert [(q.record.card_number, q.reason) for q in quarantined] == [
        (honest_card, "unrequested_block")
    ]
    assert [(f.card_number, f.reason) for f in flags] == [
        (suspect_card, "unrequested_block"),
        (honest_card, "unrequested_block"),
        (backdated, "unrequested_block"),
        ("6032984000000505", "unrequested_block"),
    ]


async def test_a_card_found_again_is_unblocked_at_the_desk_and_rides_after_the_lift(
    backoffice: Backoffice,
    cards: dict[str, EmulatedCard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bus = await bus_of(backoffice, tmp_path, "V1")
    async with backoffice.pool.acquire() as connection:
        await block_lost_card(connection, backoffice, card_desk.BlockCause.lost, "lost")
    await bus.sync_now()
    assert bus.tap(cards[lost_card], backoffice.clock.unix_ms(), fare()).reason == (
        Reason.card_blocked
    )
    # Found again: the desk unblocks the chip, but until staff lift the entry, the next
    # terminal blocks it again.
    await desk_unblock(backoffice, cards[lost_card])
    assert bus.tap(cards[lost_card], backoffice.clock.unix_ms(), fare()).reason == (
        Reason.card_blocked
    )
    await desk_unblock(backoffice, cards[lost_card])
    backoffice.clock.advance(600)  # the rider walks to the desk
    async with backoffice.pool.acquire() as connection:
        lifted = await card_desk.lift_entry(
            connection,
            lost_card,
            "found in the bus",
            StaffMember("clerk-ani", Role.clerk),
            now=backoffice.clock.now(),
        )
    assert lifted is card_desk.LiftOutcome.lifted
    await bus.sync_now()
    assert lost_card not in bus.state.chip_block_list
    ride = bus.tap(cards[lost_card], backoffice.clock.unix_ms(), fare())
    assert ride.verdict == Verdict.accepted
    await bus.sync_now()
    stored = await card_records(backoffice, lost_card)
    assert [kind for kind, outcome, _ in stored] == ["block", "block", "fare_debit"]
    assert {outcome for _, outcome, _ in stored} == {"booked"}
    async with backoffice.pool.acquire() as connection:
        view = await registry.card_view(connection, lost_card)
    assert view is not None
    # The second block reached the back office after the lift, before the ride that shows the
    # desk had unblocked the card: flagged then (the card, not the terminal); the desk's view
    # no longer calls for attention once the card is active again.
    assert view["counter_gaps"] == []
    assert [(f["reason"], f["card_counter"]) for f in view["flags"]] == [("unrequested_block", 2)]
    monkeypatch.setenv("DATABASE_URL", backoffice.database_url)
    shown = (await Ksh(capsys).ok("cards", "show", lost_card)).out
    assert "active again (unblocked at a desk): its card counter 3 followed" in shown
    assert "attention" not in shown
    bus.close()
    await bus.sync.close()
