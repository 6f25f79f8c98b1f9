"""A Hypothesis state machine over the whole path: tap (card pulled at exchange k or not), kill
a validator (memory gone, journal reopened), upload with the request or the answer lost, upload
again, pay a pending top-up. The back office runs on loopback in a thread, on PostgreSQL.

After every step: the books balance; every card transaction booked is one the card committed,
with its amount, booked once. After a clean upload of every validator: each card's purse
account equals the card's own balance, minus what is still held in doubt at the back office.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import threading
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bus_terminals.fare.feed import load_feed
from bus_terminals.simulator import Bus, validator_keys
from bus_terminals.sync import UploadStatus
from bus_terminals.terminal import Verdict
from bus_terminals.validator import fare_decider
from bus_terminals.wire import (
    RecordStatus,
    UploadKind,
    UploadRecord,
    card_terminal_number,
    public_key_text,
)
from card_reader.deck import make_ksh_deck
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard, LogRecord
from card_reader.ksh_card import RecordKind as CardRecordKind
from gateways.backoffice import BackofficeConfig, create_app
from gateways.terminal_api import registry
from gateways.terminal_api.registry import TerminalRole
from gateways.terminal_api.routes import terminal_extension
from ledger.clock import Clock, ManualClock
from ledger.database import database_url_for
from tests.terminals.helpers import post_batch

operator_id = "TRANS-SEMARANG"
store = demo_key_store()
keys = validator_keys(store)
read_keys = store.view(KeyRole.READ)
tariff = load_feed()
decide = fare_decider(tariff, "K1")
start_ms = 1_795_478_400_000  # 2026-11-24 07:00 WIB
examples = itertools.count()
T = TypeVar("T")


class BackofficeThread:
    """The back office (aiohttp + asyncpg) on its own event loop in a thread."""

    def __init__(self, database_url: str, clock: Clock) -> None:
        self.database_url = database_url
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url, self.pool = self.run(self._start())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    async def _start(self) -> tuple[str, asyncpg.Pool]:
        app = create_app(
            BackofficeConfig(
                self.database_url,
                clock=self.clock,
                # The issuer's Transaction MAC masters: the cards prove their transactions.
                settings={"tmac_master_keys": store.accepted_master_keys(KeyRole.TMAC)},
            ),
            [terminal_extension],
        )
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        assert pool is not None
        async with pool.acquire() as connection:
            await registry.register_operator(connection, operator_id)
        return f"http://127.0.0.1:{port}", pool

    async def _stop(self) -> None:
        await self.pool.close()
        await self.runner.cleanup()

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class Databases:
    """A fresh database per example (card numbers repeat from one example to the next)."""

    def __init__(self, server_url: str, template: str) -> None:
        self.server_url = server_url
        self.template = template
        self.names: list[str] = []

    async def _admin(self, statement: str) -> None:
        connection = await asyncpg.connect(self.server_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    def create(self) -> str:
        name = f"ksh_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(self._admin(f'create database "{name}" template "{self.template}"'))
        self.names.append(name)
        return database_url_for(self.server_url, name)

    def drop(self, url: str) -> None:
        name = url.rpartition("/")[2].partition("?")[0]
        asyncio.run(self._admin(f'drop database if exists "{name}" with (force)'))


@pytest.fixture
def databases(postgres_server_url: str, migrated_template: str) -> Databases:
    return Databases(postgres_server_url, migrated_template)


def card_balance_and_log(card: EmulatedCard) -> tuple[int, tuple[LogRecord, ...]]:
    reader = EmulatedReader("inspection")
    reader.insert(card)
    session = KshCard(reader, read_keys)
    balance = session.read_state().balance_rupiah
    log = session.read_log()
    reader.remove()
    return balance, log


def test_tap_pull_kill_upload_state_machine(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> None:
    class TapMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            example = next(examples)
            folder = tmp_path_factory.mktemp(f"machine-{example}")
            self.database_url = databases.create()
            # The back office's clock follows the taps: a top-up is paid at the time of the
            # last tap, so a later tap may or may not have delivered it already.
            self.clock = ManualClock(dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC))
            self.office = BackofficeThread(self.database_url, self.clock)
            self.cards = make_ksh_deck(store, [20_000, 3_000, 50_000], seed=f"machine-{example}")
            self.numbers = [str(card_reader_number(card)) for card in self.cards]
            self.history: dict[str, dict[int, LogRecord]] = {n: {} for n in self.numbers}
            self.buses = []
            for index in range(2):
                bus = Bus(
                    f"M{example}-{index}",
                    "K1",
                    Path(folder),
                    keys,
                    self.office.url,
                    now_ms=self.clock.unix_ms,
                )
                self.office.run(self._register(bus))
                self.buses.append(bus)
            self.office.run(self._issue())
            # A hostile validator of the same operator, with its own valid key.
            self.rogue = Ed25519PrivateKey.generate()
            self.rogue_id = f"ROGUE-{example}"
            self.rogue_sequence = 0
            self.office.run(self._register_rogue())
            self.time_ms = start_ms
            self.top_ups = 0
            for number, card in zip(self.numbers, self.cards):
                self._remember(number, card)

        async def _register(self, bus: Bus) -> None:
            async with self.office.pool.acquire() as connection:
                await registry.register_terminal(
                    connection,
                    bus.terminal_id,
                    public_key_text(bus.private_key.public_key()),
                    TerminalRole.validator,
                    operator_id=operator_id,
                )

        async def _issue(self) -> None:
            async with self.office.pool.acquire() as connection:
                await registry.issue_cards(
                    connection,
                    {n: card_balance_and_log(c)[0] for n, c in zip(self.numbers, self.cards)},
                    now=self.clock.now(),
                )
                await registry.register_card_uids(
                    connection, {n: c.uid for n, c in zip(self.numbers, self.cards)}
                )

        async def _register_rogue(self) -> None:
            async with self.office.pool.acquire() as connection:
                await registry.register_terminal(
                    connection,
                    self.rogue_id,
                    public_key_text(self.rogue.public_key()),
                    TerminalRole.validator,
                    operator_id=operator_id,
                )

        def _remember(self, number: str, card: EmulatedCard) -> None:
            _, log = card_balance_and_log(card)
            for record in log:
                self.history[number][record.counter] = record

        def _sync(self, bus: Bus) -> tuple[UploadStatus, bool]:
            async def go() -> tuple[UploadStatus, bool]:
                try:
                    status = await bus.sync.upload_once()
                    downloaded = await bus.sync.download()
                    return status, downloaded
                finally:
                    await bus.sync.close()

            return asyncio.run(go())

        # ---------------------------------------------------------------- rules

        @rule(
            card=st.integers(0, 2),
            bus=st.integers(0, 1),
            pull_at=st.none() | st.integers(1, 14),
            minutes=st.integers(1, 200),
        )
        def tap(self, card: int, bus: int, pull_at: int | None, minutes: int) -> None:
            self.time_ms += minutes * 60_000
            self.clock.set(dt.datetime.fromtimestamp(self.time_ms / 1000, dt.UTC))
            feedback = self.buses[bus].tap(self.cards[card], self.time_ms, decide, pull_at)
            if pull_at is None:
                assert feedback.verdict != Verdict.tap_again, feedback
            self._remember(self.numbers[card], self.cards[card])

        @rule(
            card=st.integers(0, 2),
            forgery=st.sampled_from(["made_up_mac", "no_mac", "reused_counter", "copied"]),
            amount=st.sampled_from([1_000, 3_500, 50_000]),
        )
        def rogue_uploads(self, card: int, forgery: str, amount: int) -> None:
            """The hostile validator reports a fare the card never paid (the next counter, or
            one the card already used), with an invented MAC, none, or an honest record's MAC
            copied. The invariants after every step: it is never booked, no card is denied.
            Past a few quarantined records it is suspended (automatic): refused from then on."""
            number = self.numbers[card]
            counters = sorted(self.history[number])
            reuse = forgery == "reused_counter" and len(counters) > 1
            counter = counters[-1] if reuse else counters[-1] + 1
            latest = self.history[number][counters[-2] if reuse else counters[-1]]
            self.rogue_sequence += 1
            mac = {"made_up_mac": (counter + 1, "5a" * 8), "no_mac": (0, "")}.get(
                forgery, (counter + 1, "00" * 8)
            )
            if forgery == "copied":
                stored = self.office.run(self._a_mac_of(number))
                mac = stored or mac
            claimed = UploadRecord(
                self.rogue_id, self.rogue_sequence, UploadKind.fare_debit,
                RecordStatus.committed, number, counter, amount, 0, "",
                max(latest.balance_after_rupiah - amount, 0), self.time_ms, "K1", "",
                "full", latest.counter, latest.terminal_id, latest.balance_after_rupiah, *mac,
            )  # fmt: skip

            async def send() -> tuple[int, object]:
                async with aiohttp.ClientSession() as session:
                    status, answer = await post_batch(
                        session, self.office.url, self.rogue, self.rogue_id,
                        self.rogue_sequence, [claimed],
                    )  # fmt: skip
                    return status, answer.get("code")

            status, code = asyncio.run(send())
            if status == 403:
                assert code == "terminal_suspended", code
                assert self.office.run(self._suspended()) == {self.rogue_id: "automatic"}
                self.rogue_sequence -= 1  # refused: the batch sequence is still the next one
            else:
                assert status == 200, (status, code)

        async def _suspended(self) -> dict[str, str]:
            async with self.office.pool.acquire() as connection:
                rows = await connection.fetch(
                    "select terminal_id, suspended_by from terminals where status = 'suspended'"
                )
            return {row["terminal_id"]: row["suspended_by"] for row in rows}

        async def _a_mac_of(self, number: str) -> tuple[int, str] | None:
            """A MAC some honest terminal uploaded for this card (a replay's raw material)."""
            async with self.office.pool.acquire() as connection:
                row = await connection.fetchrow(
                    "select tmac_counter, tmac_value from card_records "
                    "where card_number = $1 and tmac_value <> '' limit 1",
                    number,
                )
            return None if row is None else (row["tmac_counter"], row["tmac_value"])

        @rule(bus=st.integers(0, 1))
        def kill_validator(self, bus: int) -> None:
            self.buses[bus].reboot()

        @rule(bus=st.integers(0, 1), lose_request=st.booleans(), lose_answer=st.booleans())
        def upload(self, bus: int, lose_request: bool, lose_answer: bool) -> None:
            sync = self.buses[bus].sync
            sync.lose_request = lambda: lose_request
            sync.lose_answer = lambda: lose_answer
            self._sync(self.buses[bus])
            sync.lose_request = sync.lose_answer = lambda: False

        @precondition(lambda self: self.top_ups < 3)
        @rule(card=st.integers(0, 2))
        def pay_top_up(self, card: int) -> None:
            self.top_ups += 1
            top_up_id = f"{self.buses[0].terminal_id}-top-up-{self.top_ups}"

            async def pay() -> None:
                async with self.office.pool.acquire() as connection:
                    await registry.pay_pending_top_up(
                        connection, top_up_id, self.numbers[card], 10_000, paid_at=self.clock.now()
                    )

            self.office.run(pay())

        @rule()
        def upload_everything(self) -> None:
            for bus in self.buses:
                for _ in range(20):
                    status, _ = self._sync(bus)
                    assert status != UploadStatus.refused
                    if status == UploadStatus.nothing_to_send:
                        break
            held = self.office.run(self._held())
            for number, card in zip(self.numbers, self.cards):
                balance, _ = card_balance_and_log(card)
                still_held = sum(held.get(number, []))
                assert self.office.run(self._purse(number)) == balance - still_held, number

        # ---------------------------------------------------------------- invariants

        async def _purse(self, number: str) -> int:
            async with self.office.pool.acquire() as connection:
                value = await connection.fetchval(
                    "select credits_posted - debits_posted from ledger_accounts where id = $1",
                    registry.purse_account_id(number),
                )
            return int(value)

        async def _held(self) -> dict[str, list[int]]:
            """Balance changes of card transactions held in doubt that the card did commit."""
            async with self.office.pool.acquire() as connection:
                rows = await connection.fetch(
                    "select card_number, card_counter, amount_rupiah, topup_rupiah, terminal_id, "
                    "balance_after_rupiah "
                    "from card_records where outcome = 'held' and card_number = any($1::text[])",
                    self.numbers,
                )
            held: dict[str, list[int]] = {}
            for row in rows:
                committed = self.history[row["card_number"]].get(row["card_counter"])
                if (
                    committed is not None
                    and committed.terminal_id == card_terminal_number(row["terminal_id"])
                    and committed.balance_after_rupiah == row["balance_after_rupiah"]
                ):
                    change = row["topup_rupiah"] - row["amount_rupiah"]
                    held.setdefault(row["card_number"], []).append(change)
            return held

        async def _booked(self) -> list[asyncpg.Record]:
            async with self.office.pool.acquire() as connection:
                return await connection.fetch(
                    "select card_number, card_counter, code, amount, count(*) over "
                    "(partition by card_number, card_counter, code) as copies "
                    "from ledger_transfers where card_number = any($1::text[]) "
                    "and card_counter is not null",
                    self.numbers,
                )

        @invariant()
        def books_balance_and_book_only_what_cards_did(self) -> None:
            async def total() -> int:
                async with self.office.pool.acquire() as connection:
                    return int(
                        await connection.fetchval(
                            "select sum(credits_posted - debits_posted) from ledger_accounts"
                        )
                    )

            assert self.office.run(total()) == 0
            for row in self.office.run(self._booked()):
                assert row["copies"] == 1, dict(row)
                record = self.history[row["card_number"]].get(row["card_counter"])
                assert record is not None, f"booked but never committed on the card: {dict(row)}"
                kind = CardRecordKind.DEBIT if row["code"] == 1 else CardRecordKind.CREDIT
                assert record.kind is kind, (dict(row), record)
                assert record.amount_rupiah == row["amount"], (dict(row), record)

        @invariant()
        def the_rogue_is_never_believed_and_no_honest_card_is_denied(self) -> None:
            async def look() -> tuple[int, int]:
                async with self.office.pool.acquire() as connection:
                    booked = await connection.fetchval(
                        "select count(*) from ledger_transfers where terminal_id = $1",
                        self.rogue_id,
                    )
                    denied = await connection.fetchval("select count(*) from deny_list")
                return int(booked), int(denied)

            assert self.office.run(look()) == (0, 0)
            # Only the rogue's quarantined records may suspend a terminal: never an honest bus.
            assert set(self.office.run(self._suspended())) <= {self.rogue_id}

        def teardown(self) -> None:
            for bus in self.buses:
                bus.close()
            self.office.stop()
            databases.drop(self.database_url)

    run_state_machine_as_test(
        TapMachine, settings=settings(max_examples=12, stateful_step_count=18, deadline=None)
    )


def card_reader_number(card: EmulatedCard) -> int:
    reader = EmulatedReader("number")
    reader.insert(card)
    number = KshCard(reader, read_keys).read_state().profile.card_number
    reader.remove()
    return number
