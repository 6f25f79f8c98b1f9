"""A validator on the real PC/SC stack: pcscd with vpcd's "Virtual PCD" reader (slot 1), the
card emulator behind it. Taps, a card pulled mid-tap and tapped again, then the upload: the card's
balance equals its purse account and nothing is booked twice. Then a staff block reaches the
validator at its sync, and the card's next tap writes it onto the chip through pcscd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bus_terminals.fare.feed import load_feed
from bus_terminals.journal import Journal
from bus_terminals.sync import SyncClient, SyncState, UploadStatus
from bus_terminals.terminal import Reason, Terminal, Verdict
from bus_terminals.validator import fare_decider
from card_reader.deck import make_ksh_deck
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard
from card_reader.vpcd import VpcdAddress, VpcdBridge
from gateways.terminal_api import card_desk, registry
from tests.terminals.conftest import Backoffice
from tests.terminals.helpers import books_snapshot, purse_balance

slot_port = 35964  # vpcd slot 1: the card_reader tests use slot 0
card_timeout_ms = 5_000
start_ms = 1_795_478_400_000  # 2026-11-24 07:00 WIB


@pytest.fixture
def slot_one(pcsc_reader_name: str) -> Iterator[tuple[str, VpcdBridge]]:
    from card_reader.pcsc import PcscReader

    name = pcsc_reader_name[:-1] + "1"  # "Virtual PCD 00 01"
    bridge = VpcdBridge(None, VpcdAddress(port=slot_port)).start()
    with PcscReader(name) as reader:
        assert reader.wait_for_removal(card_timeout_ms)
    yield name, bridge
    bridge.stop()


async def test_validator_through_pcscd_and_vpcd(
    backoffice: Backoffice, slot_one: tuple[str, VpcdBridge], tmp_path: Path
) -> None:
    from card_reader.pcsc import PcscReader

    name, bridge = slot_one
    store = demo_key_store()
    keys = store.view(KeyRole.DEBIT, KeyRole.CREDIT)
    cards = make_ksh_deck(store, [20_000, 20_000], seed="pcsc")
    numbers = ["6032900000000001", "6032900000000002"]
    async with backoffice.pool.acquire() as connection:
        await registry.issue_cards(
            connection, dict.fromkeys(numbers, 20_000), now=backoffice.clock.now()
        )
        # Their UIDs: the back office checks each card's own Transaction MAC.
        await registry.register_card_uids(
            connection, {number: card.uid for number, card in zip(numbers, cards)}
        )
    key = await backoffice.register_validator("PCSC-BUS")
    journal = Journal(tmp_path / "journal.db", "PCSC-BUS")
    terminal = Terminal("PCSC-BUS", journal, SyncState(), route="K1")
    decide = fare_decider(load_feed(), "K1")
    verdicts = []

    def tap(card: int, pull_at: int | None, time_ms: int) -> None:
        with PcscReader(name) as reader:
            cards[card].fail_after_exchanges(pull_at)
            bridge.insert(cards[card])
            assert reader.wait_for_card(card_timeout_ms)
            feedback = terminal.tap(KshCard(reader, keys), time_ms, decide)
            verdicts.append((feedback.verdict, feedback.reason))
            cards[card].fail_after_exchanges(None)
            bridge.remove()
            assert reader.wait_for_removal(card_timeout_ms)

    for index, (card, pull_at) in enumerate([(0, None), (1, 7), (1, None), (0, None)]):
        tap(card, pull_at, start_ms + index * 3_600_000)
    assert verdicts[0] == (Verdict.accepted, Reason.none)
    assert verdicts[1][0] == Verdict.tap_again
    assert verdicts[2][0] == Verdict.accepted
    async with aiohttp.ClientSession() as session:
        sync = SyncClient(
            backoffice.url,
            "PCSC-BUS",
            key,
            journal,
            terminal.sync_state,
            session=session,
            now_ms=backoffice.clock.unix_ms,
        )
        assert await sync.upload_all() == UploadStatus.nothing_to_send
        async with backoffice.pool.acquire() as connection:
            await card_desk.block_card(
                connection,
                numbers[1],
                card_desk.BlockCause.lost,
                "lost on K1",
                username="clerk-ani",
                now=backoffice.clock.now(),
            )
        assert await sync.download()
        tap(1, None, start_ms + 5 * 3_600_000)
        assert verdicts[-1] == (Verdict.denied, Reason.card_blocked)
        assert await sync.upload_all() == UploadStatus.nothing_to_send
    async with backoffice.pool.acquire() as connection:
        blocked = await registry.chip_block_of(connection, numbers[1])
        flags = await connection.fetchval("select count(*) from card_flags")
    assert blocked is not None and blocked["terminal_id"] == "PCSC-BUS"
    assert flags == 0
    journal.close()
    from card_reader.emulator import EmulatedReader

    for number, emulated in zip(numbers, cards):
        inspection = EmulatedReader("inspection")
        inspection.insert(emulated)
        balance = KshCard(inspection, store.view(KeyRole.READ)).read_state().balance_rupiah
        assert await purse_balance(backoffice.pool, number) == balance
    assert (await books_snapshot(backoffice.pool))[1] == 0
