"""Cash counters through the books (`gateways.terminal_api.counter`): the cashier's cash is a
pending top-up paid from their drawer, the counter's reader writes it onto the card in a
journalled card transaction and uploads it, so the card's purse equals the card; the shift's
close compares the counted drawer with the books. A write that fails leaves the top-up pending
for the next validator: not lost, not paid twice."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bus_terminals.fare.feed import load_feed
from bus_terminals.simulator import Bus, validator_keys
from bus_terminals.terminal import Reason, Verdict
from bus_terminals.validator import fare_decider
from bus_terminals.wire import public_key_text
from card_reader.deck import make_ksh_deck
from card_reader.emulator import EmulatedCard, EmulatedReader, load_deck, save_deck
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard
from gateways import staff
from gateways.terminal_api import counter, registry
from gateways.terminal_api.registry import TerminalRole
from ksh.cli import main
from ksh.commands import counter as counter_command
from settlement import reconciliation
from tests.terminals.conftest import Backoffice, operator_id
from tests.terminals.helpers import books_snapshot, purse_balance

store = demo_key_store()
card_number = "6032984000000301"
cashier = "kasir-ani"
cashier_token = "test-cashier-token-01"


class Desk:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.post(
            self.url + path,
            json={"reason": "counter test", **body},
            headers={"Authorization": f"Bearer {cashier_token}"},
        ) as response:
            return response.status, await response.json()

    async def take_cash(self, top_up_id: str, amount: int) -> None:
        status, answer = await self.post(
            "/admin/v1/pending-top-ups",
            {"card_number": card_number, "top_up_id": top_up_id, "amount_rupiah": amount}
            | {"source": "drawer"},
        )
        assert status == 201, answer


def balance(card: EmulatedCard) -> int:
    reader = EmulatedReader("inspection")
    reader.insert(card)
    value = KshCard(reader, store.view(KeyRole.READ)).read_state().balance_rupiah
    reader.remove()
    return value


async def drawer(backoffice: Backoffice) -> int:
    async with backoffice.pool.acquire() as connection:
        return await counter.drawer_rupiah(connection, cashier)


async def counted_bus(backoffice: Backoffice, folder: Path, terminal_id: str) -> Bus:
    """A registered reader (validator role: it may deliver top-ups, of the operator)."""
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
async def counter_desk(backoffice: Backoffice, tmp_path: Path) -> tuple[Bus, EmulatedCard]:
    [card] = make_ksh_deck(store, [10_000], seed="counter", first_number=int(card_number))
    await backoffice.issue_cards({card_number: 10_000})
    async with backoffice.pool.acquire() as connection:
        await registry.register_card_uids(connection, {card_number: card.uid})
        await staff.issue_token(
            connection,
            staff.StaffMember(cashier, staff.Role.clerk),
            issued_by="tests",
            now=backoffice.clock.now(),
            token=cashier_token,
        )
    return await counted_bus(backoffice, tmp_path, "COUNTER-1"), card


async def quarantined(backoffice: Backoffice) -> int:
    async with backoffice.pool.acquire() as connection:
        return int(await connection.fetchval("select count(*) from quarantined_records"))


async def test_cash_at_the_counter_is_on_the_card_and_in_the_books_with_what_waited(
    backoffice: Backoffice, counter_desk: tuple[Bus, EmulatedCard]
) -> None:
    reader, card = counter_desk
    async with backoffice.pool.acquire() as connection:  # paid at a bank the day before
        await registry.pay_pending_top_up(
            connection, "VA-1", card_number, 5_000, paid_at=backoffice.clock.now()
        )
    async with aiohttp.ClientSession() as session:
        desk = Desk(session, backoffice.url)
        await desk.take_cash("CTR-1", 50_000)
        status, problem = await desk.post(
            "/admin/v1/pending-top-ups",
            {"card_number": card_number, "top_up_id": "CTR-X", "amount_rupiah": 1_000}
            | {"source": "drawer:someone-else"},
        )
        assert (status, problem["field"]) == (400, "source")
    await reader.sync_now()
    written = reader.deliver(card, backoffice.clock.unix_ms())
    assert (written.verdict, written.top_up_rupiah) == (Verdict.accepted, 55_000)
    assert written.balance_rupiah == 65_000
    await reader.sync_now()
    assert balance(card) == 65_000
    assert await purse_balance(backoffice.pool, card_number) == 65_000
    assert await drawer(backoffice) == 50_000
    assert await quarantined(backoffice) == 0
    assert (await books_snapshot(backoffice.pool))[1] == 0
    # Nothing more waits for it: the counter writes nothing a second time.
    again = reader.deliver(card, backoffice.clock.unix_ms())
    assert (again.verdict, again.reason) == (Verdict.denied, Reason.nothing_to_top_up)
    assert balance(card) == 65_000
    reader.close()
    await reader.sync.close()


async def test_the_shift_closes_clean_or_books_its_shortage(
    backoffice: Backoffice, counter_desk: tuple[Bus, EmulatedCard]
) -> None:
    reader, _card = counter_desk
    async with aiohttp.ClientSession() as session:
        desk = Desk(session, backoffice.url)
        await desk.take_cash("CTR-1", 50_000)
        status, clean = await desk.post(
            "/admin/v1/counter/close-shift", {"shift_id": "S-1", "counted_rupiah": 50_000}
        )
        assert status == 200, clean
        assert (clean["expected_rupiah"], clean["difference_rupiah"]) == (50_000, 0)
        assert await drawer(backoffice) == 0
        status, repeat = await desk.post(
            "/admin/v1/counter/close-shift", {"shift_id": "S-1", "counted_rupiah": 1}
        )
        assert (status, repeat["counted_rupiah"], repeat["created"]) == (200, 50_000, False)

        await desk.take_cash("CTR-2", 20_000)
        status, short = await desk.post(
            "/admin/v1/counter/close-shift", {"shift_id": "S-2", "counted_rupiah": 15_000}
        )
        assert (short["expected_rupiah"], short["difference_rupiah"]) == (20_000, -5_000)
        status, problem = await desk.post(
            "/admin/v1/counter/close-shift",
            {"shift_id": "S-3", "counted_rupiah": 0, "cashier": "kasir-budi"},
        )
        assert status == 403, problem
    assert await drawer(backoffice) == 0
    async with backoffice.pool.acquire() as connection:
        # Cash is in the drawer, not at a bank: no bank statement line is expected for it.
        day = backoffice.clock.now() - dt.timedelta(hours=1), backoffice.clock.now()
        day_end = day[1] + dt.timedelta(hours=1)
        expected = await reconciliation.expect_collections(
            connection, day[0], day_end, day[1].date(), {}, "OUR-ACCOUNT"
        )
        assert expected == 0
        differences = await connection.fetchval(
            "select debits_posted - credits_posted from ledger_accounts where id = $1",
            counter.differences_account_id,
        )
    assert differences == 5_000
    assert (await books_snapshot(backoffice.pool))[1] == 0
    reader.close()
    await reader.sync.close()


async def test_a_failed_write_leaves_the_top_up_for_the_next_validator(
    backoffice: Backoffice, counter_desk: tuple[Bus, EmulatedCard], tmp_path: Path
) -> None:
    reader, card = counter_desk
    async with aiohttp.ClientSession() as session:
        await Desk(session, backoffice.url).take_cash("CTR-1", 50_000)
    await reader.sync_now()
    for pull_at in range(1, 40):  # the card leaves the counter's reader before the commit
        torn = reader.deliver(card, backoffice.clock.unix_ms(), pull_at)
        if torn.reason == Reason.card_removed:
            break
    assert (torn.verdict, balance(card)) == (Verdict.tap_again, 10_000)
    await reader.sync_now()
    assert await purse_balance(backoffice.pool, card_number) == 10_000
    bus = await counted_bus(backoffice, tmp_path, "V1")
    await bus.sync_now()
    ride = bus.tap(card, backoffice.clock.unix_ms(), fare_decider(load_feed(), "K1"))
    assert (ride.verdict, ride.top_up_rupiah) == (Verdict.accepted, 50_000)
    await bus.sync_now()
    paid = 10_000 + 50_000 - ride.amount_rupiah
    assert balance(card) == paid
    # Back at the counter: its own torn write is settled from the card's log, nothing doubled.
    again = reader.deliver(card, backoffice.clock.unix_ms())
    assert (again.verdict, again.top_up_rupiah) == (Verdict.denied, 0)
    await reader.sync_now()
    assert balance(card) == paid
    assert await purse_balance(backoffice.pool, card_number) == paid
    assert await drawer(backoffice) == 50_000
    assert await quarantined(backoffice) == 0
    reader.close()
    await reader.sync.close()
    bus.close()
    await bus.sync.close()


async def test_the_counter_commands(
    backoffice: Backoffice,
    counter_desk: tuple[Bus, EmulatedCard],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ksh counter top-up` on an emulated card, then `ksh counter close-shift` short."""
    _, card = counter_desk
    deck = tmp_path / "deck.json"
    save_deck([card], deck)
    state = tmp_path / "counter-cli"
    monkeypatch.setenv("KSH_STAFF_TOKEN", cashier_token)
    monkeypatch.setattr(counter_command, "system_clock", backoffice.clock)  # signs its syncs

    def ksh(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    status, public_key, _ = await asyncio.to_thread(
        ksh, "validator", "--init", "--terminal-id", "COUNTER-CLI", "--state", str(state)
    )
    async with backoffice.pool.acquire() as connection:
        await registry.register_terminal(
            connection, "COUNTER-CLI", public_key.strip(), TerminalRole.validator,
            operator_id=operator_id,
        )  # fmt: skip
    where = ["--terminal-id", "COUNTER-CLI", "--state", str(state), "--backoffice", backoffice.url]
    status, out, err = await asyncio.to_thread(
        ksh, "counter", "top-up", "--card", card_number, "--amount", "50000", "--receipt",
        "R-1", "--emulated", str(deck), "--demo-keys", *where,
    )  # fmt: skip
    assert status == 0, err
    assert f"receipt R-1: card {card_number} + Rp 50,000 = Rp 60,000" in out
    [written] = load_deck(deck)
    assert balance(written) == 60_000
    assert await purse_balance(backoffice.pool, card_number) == 60_000
    assert await drawer(backoffice) == 50_000
    status, out, err = await asyncio.to_thread(
        ksh, "counter", "close-shift", "--shift", "S-1", "--counted", "45000",
        "--backoffice", backoffice.url,
    )  # fmt: skip
    assert status == 1, err
    assert "books Rp 50,000, counted Rp 45,000: short Rp 5,000" in out
    status, _, err = await asyncio.to_thread(
        ksh, "card", "topup", "--reader", "none", "--keystore", "none", "--amount", "1"
    )
    assert status != 0
    assert "ksh counter top-up" in err
