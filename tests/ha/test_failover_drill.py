"""The failover drill: the fleet keeps tapping through the loss of a host, and nothing it was
told is booked goes missing.

A primary and its synchronous standby (real PostgreSQL, `ledger.replication`), two back
office instances (`ksh serve` on 127.0.0.2 and 127.0.0.3, DATABASE_URL naming both servers
with target_session_attrs=read-write), and a fleet of validators tapping emulated KSH cards
through the real card protocol, each uploading to both back office URLs (`SyncClient`). While
they tap and upload, the primary's postmaster is killed (SIGKILL) and the standby promoted;
later the back office instance running the singleton jobs is killed. Afterwards every record a
terminal was told was accepted is in the books exactly once, every card equals its purse
account, and the ledger's own audit is clean. The seconds during which uploads were refused
are printed.

The second scenario stops the standby: the primary must not acknowledge uploads it cannot
replicate (503 after the booking timeout; the terminal keeps its journal; /health/ready says
so) until an operator runs `ksh db degrade-async`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from bus_terminals import sync as sync_module
from bus_terminals.fare.feed import load_feed
from bus_terminals.simulator import Bus, validator_keys
from bus_terminals.sync import UploadStatus
from bus_terminals.terminal import Verdict
from bus_terminals.validator import fare_decider
from bus_terminals.wire import public_key_text
from card_reader.deck import first_card_number, make_ksh_deck
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard
from gateways.backoffice import BackofficeConfig, create_app, pool_key, reporting_pool_key
from gateways.terminal_api import registry
from gateways.terminal_api.registry import TerminalRole
from ksh.commands.serve import extensions
from ksh.schema import migrate_all
from ledger import replication
from ledger.audit import check_ledger
from ledger.clock import jakarta, system_clock
from ledger.records import TransferCode
from tests.ha.conftest import Pair, database_name, free_port
from tests.waiting import wait_until_async

project_root = Path(__file__).resolve().parents[2]
operator_id = "TRANS-SEMARANG"
buses_count = 6
cards_count = 60
opening_balance_rupiah = 500_000
tap_day = dt.datetime(2026, 11, 24, 6, 0, tzinfo=jakarta)
uploads_per_phase_min = 30  # acknowledged uploads seen before the next blow
upload_pause_s = 0.05  # between one bus's upload attempts
booking_timeout_ms = 2_000  # the back office's KSH_UPLOAD_BOOKING_TIMEOUT_MS in the drill
phase_within_s = 60.0
# Seconds between the primary's death and the promotion: what Patroni takes to notice (its
# ttl, 30 s in docs/patroni.yml) shortened, but longer than the back office's own retries,
# so the terminals meet refusals (503) and come back.
failover_detection_s = 3.0


# ------------------------------------------------------------------------------ the fleet


@dataclass
class Attempt:
    terminal_id: str
    started_s: float  # time.monotonic()
    ended_s: float
    status: UploadStatus


@dataclass
class Fleet:
    """Buses that tap a random card, then upload, again and again, each on its own."""

    buses: list[Bus]
    cards: list[EmulatedCard]
    attempts: list[Attempt] = field(default_factory=list)
    taps: int = 0

    def __post_init__(self) -> None:
        tariff = load_feed()
        self.deciders = {bus.route: fare_decider(tariff, bus.route) for bus in self.buses}
        self.generator = random.Random(18)
        self.tap_ms = int(tap_day.timestamp() * 1000)

    def tap(self, bus: Bus) -> None:
        self.tap_ms += 61_000  # a minute apart: no two taps of a card look like one
        card = self.cards[self.generator.randrange(len(self.cards))]
        feedback = bus.tap(card, self.tap_ms, self.deciders[bus.route])
        assert feedback.verdict == Verdict.accepted, feedback
        self.taps += 1

    async def run(self, bus: Bus, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.tap(bus)
            started = time.monotonic()
            status = await bus.sync.upload_once()
            self.attempts.append(Attempt(bus.terminal_id, started, time.monotonic(), status))
            await asyncio.sleep(upload_pause_s)

    async def close(self) -> None:
        for bus in self.buses:
            await bus.sync.close()
            bus.close()

    def acknowledged_since(self, moment_s: float) -> int:
        return sum(
            1
            for attempt in self.attempts
            if attempt.started_s >= moment_s and attempt.status == UploadStatus.acknowledged
        )

    def slowest_s(self, event_s: float, within_s: float = 10.0) -> float:
        """The longest upload attempt under way in the `within_s` after a blow."""
        return max(
            attempt.ended_s - attempt.started_s
            for attempt in self.attempts
            if attempt.ended_s >= event_s and attempt.started_s <= event_s + within_s
        )

    def outage(self, event_s: float) -> tuple[float, float, int]:
        """After a blow at `event_s`: seconds until an upload that started after the blow was
        acknowledged, seconds between the first and the last refusal, refusals."""
        after = [attempt for attempt in self.attempts if attempt.started_s >= event_s]
        refused = [attempt for attempt in after if attempt.status != UploadStatus.acknowledged]
        first_refusal_s = min((attempt.started_s for attempt in refused), default=event_s)
        recovered_s = min(
            attempt.ended_s
            for attempt in after
            if attempt.status == UploadStatus.acknowledged and attempt.started_s >= first_refusal_s
        )
        last_refusal_s = max((attempt.ended_s for attempt in refused), default=event_s)
        return recovered_s - event_s, last_refusal_s - first_refusal_s, len(refused)


async def upload_everything(buses: list[Bus], within_s: float = 60.0) -> None:
    async def drained() -> bool:
        statuses = [await bus.sync.upload_all() for bus in buses]
        return all(status == UploadStatus.nothing_to_send for status in statuses)

    await wait_until_async(drained, "every bus has uploaded its journal", within_s=within_s)


# ------------------------------------------------------------------------------ the books


def acknowledged_records(bus: Bus) -> list[tuple[str, int, str, int, int]]:
    """(terminal, sequence, card, counter, fare) of each record the back office acknowledged."""
    rows = bus.journal.connection.execute(
        "select terminal_id, sequence, card_number, card_counter, amount_rupiah from records "
        "where uploaded_status is not null"
    ).fetchall()
    return [(str(row[0]), int(row[1]), str(row[2]), int(row[3]), int(row[4])) for row in rows]


def card_balance(card: EmulatedCard) -> int:
    reader = EmulatedReader("inspection")
    reader.insert(card)
    try:
        return KshCard(reader, demo_key_store().view(KeyRole.READ)).read_state().balance_rupiah
    finally:
        reader.remove()


async def check_books(url: str, fleet: Fleet) -> None:
    """Every acknowledged record booked exactly once, every card equal to its purse account,
    the ledger's audit clean."""
    acknowledged = [row for bus in fleet.buses for row in acknowledged_records(bus)]
    assert len(acknowledged) == fleet.taps, "every tap acknowledged in the end"
    connection = await asyncpg.connect(url)
    try:
        stored = {
            (row["terminal_id"], row["sequence"]): row["outcome"]
            for row in await connection.fetch(
                "select terminal_id, sequence, outcome from card_records"
            )
        }
        missing = [row for row in acknowledged if (row[0], row[1]) not in stored]
        assert not missing, f"acknowledged but not in the books: {missing[:5]}"
        assert {stored[(row[0], row[1])] for row in acknowledged} == {"booked"}
        fares = await connection.fetch(
            "select card_number, card_counter, count(*) as times from ledger_transfers "
            "where code = $1 group by card_number, card_counter",
            int(TransferCode.fare),
        )
        booked = {(row["card_number"], row["card_counter"]): row["times"] for row in fares}
        assert max(booked.values()) == 1, "a card transaction booked twice"
        # A fare transfer within a journey costs nothing: no ledger transfer.
        assert {(row[2], row[3]) for row in acknowledged if row[4]} == set(booked)
        mismatched = []
        for index, card in enumerate(fleet.cards):
            number = str(first_card_number + index)
            purse = await connection.fetchval(
                "select credits_posted - debits_posted from ledger_accounts where id = $1",
                registry.purse_account_id(number),
            )
            if purse != card_balance(card):
                mismatched.append((number, purse, card_balance(card)))
        assert not mismatched, f"cards unequal to their purse accounts: {mismatched[:5]}"
        problems = await check_ledger(connection)
        assert not problems, problems[:5]
    finally:
        await connection.close()


# ------------------------------------------------------------------------------ set-up


async def prepare_database(pair: Pair) -> None:
    """The database on the primary, migrated, with the operator (and its accounts)."""
    admin = await asyncpg.connect(pair.primary.url)
    try:
        await admin.execute(f'create database "{database_name}"')
    finally:
        await admin.close()
    connection = await asyncpg.connect(pair.primary_url())
    try:
        await migrate_all(connection)
        await registry.register_operator(connection, operator_id, "Trans Semarang")
    finally:
        await connection.close()


async def make_fleet(url: str, folder: Path, backoffice_urls: list[str]) -> Fleet:
    store = demo_key_store()
    cards = make_ksh_deck(store, [opening_balance_rupiah] * cards_count, seed="ha-drill")
    buses = []
    connection = await asyncpg.connect(url)
    try:
        await registry.issue_cards(
            connection,
            {str(first_card_number + index): opening_balance_rupiah for index in range(len(cards))},
            now=system_clock.now(),
        )
        for index in range(buses_count):
            bus = Bus(
                f"BUS-HA-{index:02d}",
                ("K1", "K2", "K3")[index % 3],
                folder,
                validator_keys(store),
                "http://unused",
                now_ms=system_clock.unix_ms,
            )
            bus.sync = sync_module.SyncClient(
                backoffice_urls,
                bus.terminal_id,
                bus.private_key,
                bus.journal,
                bus.state,
                now_ms=system_clock.unix_ms,
            )
            await registry.register_terminal(
                connection,
                bus.terminal_id,
                public_key_text(bus.private_key.public_key()),
                TerminalRole.validator,
                operator_id=operator_id,
            )
            buses.append(bus)
    finally:
        await connection.close()
    return Fleet(buses, cards)


@dataclass
class Instance:
    """One `ksh serve`: a back office host."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    last_ready: str = ""  # what /health/ready said last

    def __str__(self) -> str:
        return f"{self.url} (ready: {self.last_ready}; log: ...{self.log.read_text()[-2000:]})"

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


async def start_instance(host: str, database_url: str, folder: Path) -> Instance:
    port = free_port(host)
    log = folder / f"serve-{host}.log"
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KSH_UPLOAD_BOOKING_TIMEOUT_MS": str(booking_timeout_ms),
        "KSH_EXPIRY_SWEEP_INTERVAL_S": "1",
        "KSH_DATA_DIR": str(folder / "unused-embedded"),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "ksh", "serve", "--host", host, "--port", str(port)],
            env=environment,
            cwd=project_root,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Instance(f"http://{host}:{port}", process, log)


async def ready(session: aiohttp.ClientSession, instance: Instance) -> dict[str, object] | None:
    """/health/ready's answer when 200, else None."""
    if instance.process.poll() is not None:
        raise AssertionError(f"{instance.url} ended: {instance.log.read_text()[-3000:]}")
    try:
        async with session.get(instance.url + "/health/ready") as response:
            answer = dict(await response.json())
            instance.last_ready = f"{response.status} {answer}"
            return answer if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError) as error:
        instance.last_ready = repr(error)
        return None


async def leaders(session: aiohttp.ClientSession, instances: list[Instance]) -> list[Instance]:
    answers = [await ready(session, instance) for instance in instances]
    return [
        instance
        for instance, answer in zip(instances, answers)
        if answer is not None and answer.get("singleton_jobs")
    ]


@pytest.fixture
async def instances(replicated_pair: Pair) -> AsyncIterator[list[Instance]]:
    await prepare_database(replicated_pair)
    started = [
        await start_instance(host, replicated_pair.url(), replicated_pair.folder)
        for host in ("127.0.0.2", "127.0.0.3")
    ]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for instance in started:

                async def answers(instance: Instance = instance) -> bool:
                    return await ready(session, instance) is not None

                await wait_until_async(answers, f"{instance.url} is ready", within_s=60)
        yield started
    finally:
        for instance in started:
            instance.stop()


# ------------------------------------------------------------------------------ the drill


@pytest.mark.timeout(240)
async def test_the_fleet_keeps_tapping_through_the_loss_of_the_database_host_and_a_back_office(
    replicated_pair: Pair, instances: list[Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Acknowledged records stay in the journals, so the test can list them at the end.
    monkeypatch.setattr(sync_module, "prune_every_batches", 10**9)
    fleet = await make_fleet(
        replicated_pair.primary_url(),
        replicated_pair.folder / "buses",
        [instance.url for instance in instances],
    )
    stop = asyncio.Event()
    running = [asyncio.create_task(fleet.run(bus, stop)) for bus in fleet.buses]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    try:
        begun_s = time.monotonic()
        await wait_until_async(
            lambda: fleet.acknowledged_since(begun_s) >= uploads_per_phase_min,
            "the fleet uploads through the primary",
            within_s=phase_within_s,
        )
        assert len(await leaders(session, instances)) == 1, "one instance runs the singleton jobs"

        # The database host is lost; the standby is promoted once that is noticed.
        database_lost_s = time.monotonic()
        replication.kill_postmaster(replicated_pair.primary.folder)
        await asyncio.sleep(failover_detection_s)
        await asyncio.to_thread(replication.promote, replicated_pair.standby.folder)
        promoted_s = time.monotonic()
        await wait_until_async(
            lambda: fleet.acknowledged_since(promoted_s) >= uploads_per_phase_min,
            "the fleet uploads through the promoted standby",
            within_s=phase_within_s,
        )

        # The back office host running the singleton jobs is lost.
        await wait_until_async(
            lambda: _one_leader(session, instances),
            f"one instance leads: {[str(instance) for instance in instances]}",
            within_s=30,
        )
        leader = (await leaders(session, instances))[0]
        survivor = next(instance for instance in instances if instance is not leader)
        backoffice_lost_s = time.monotonic()
        leader.kill()
        await wait_until_async(
            lambda: fleet.acknowledged_since(backoffice_lost_s) >= uploads_per_phase_min,
            "the fleet uploads through the other back office",
            within_s=phase_within_s,
        )
        await wait_until_async(
            lambda: _leads(session, survivor), "the survivor runs the singleton jobs", within_s=30
        )
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        await session.close()
    for task in running:
        task.result()  # a failed tap or upload loop fails the drill
    await upload_everything(fleet.buses)

    database_s, database_refusing_s, database_refusals = fleet.outage(database_lost_s)
    backoffice_s, backoffice_refusing_s, backoffice_refusals = fleet.outage(backoffice_lost_s)
    print(
        f"\nfailover drill: {fleet.taps} taps, {len(fleet.attempts)} upload attempts by "
        f"{len(fleet.buses)} buses\n"
        f"  database host lost: uploads acknowledged again {database_s:.2f} s after the kill "
        f"(promoted {promoted_s - database_lost_s:.2f} s after it); refusals for "
        f"{database_refusing_s:.2f} s ({database_refusals} attempts); slowest upload "
        f"{fleet.slowest_s(database_lost_s):.2f} s\n"
        f"  back office host lost: uploads acknowledged again {backoffice_s:.2f} s after the "
        f"kill; refusals for {backoffice_refusing_s:.2f} s ({backoffice_refusals} attempts); "
        f"slowest upload {fleet.slowest_s(backoffice_lost_s):.2f} s"
    )
    try:
        await check_books(replicated_pair.url(), fleet)
    finally:
        await fleet.close()


async def _one_leader(session: aiohttp.ClientSession, instances: list[Instance]) -> bool:
    return len(await leaders(session, instances)) == 1


async def _leads(session: aiohttp.ClientSession, instance: Instance) -> bool:
    return await leaders(session, [instance]) == [instance]


# ------------------------------------------------------------------------------ no standby


@pytest.mark.timeout(180)
async def test_without_its_standby_the_primary_acknowledges_no_upload_until_degraded(
    replicated_pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "prune_every_batches", 10**9)
    await prepare_database(replicated_pair)
    url = replicated_pair.url()
    settings = {"upload_booking_timeout_ms": booking_timeout_ms, "expiry_sweep_interval_s": 0}
    app = create_app(BackofficeConfig(url, settings=settings), extensions())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backoffice_url = f"http://127.0.0.1:{port}"
    fleet = await make_fleet(url, replicated_pair.folder / "buses", [backoffice_url])
    bus = fleet.buses[0]
    try:
        # Finance reports and exports read from the standby; everything else from the primary.
        async with app[reporting_pool_key].acquire() as connection:
            assert await connection.fetchval("select pg_is_in_recovery()")
        async with app[pool_key].acquire() as connection:
            assert not await connection.fetchval("select pg_is_in_recovery()")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            fleet.tap(bus)
            assert await bus.sync.upload_once() == UploadStatus.acknowledged

            replication.stop(replicated_pair.standby.folder, "immediate")
            fleet.tap(bus)
            fleet.tap(bus)
            started = time.monotonic()
            assert await bus.sync.upload_once() == UploadStatus.offline
            waited_s = time.monotonic() - started
            assert waited_s >= booking_timeout_ms / 1000 * 0.9, "it waited for the standby"
            assert bus.journal.pending_batch() is not None, "the terminal keeps its batch"
            # Sent again (the first try committed on the primary alone): still not acknowledged.
            assert await bus.sync.upload_once() == UploadStatus.offline
            async with session.get(backoffice_url + "/health/ready") as response:
                assert response.status == 503
                assert (await response.json())["code"] == "writes_not_acknowledged"
            async with session.get(backoffice_url + "/health/live") as response:
                assert response.status == 200
            assert len(acknowledged_records(bus)) == 1

            # The operator accepts the risk, deliberately.
            command = [sys.executable, "-m", "ksh", "db", "degrade-async"]
            command += ["--on", replicated_pair.primary_url()]
            explained = subprocess.run(
                command, capture_output=True, text=True, timeout=60, cwd=project_root
            )
            assert explained.returncode == 1, explained.stderr
            assert "lost" in explained.stdout
            degraded = subprocess.run(
                [*command, "--yes"], capture_output=True, text=True, timeout=60, cwd=project_root
            )
            assert degraded.returncode == 0, degraded.stderr
            assert "no longer wait" in degraded.stdout
            assert await bus.sync.upload_once() == UploadStatus.acknowledged
            assert len(acknowledged_records(bus)) == 3
            async with session.get(backoffice_url + "/health/ready") as response:
                assert response.status == 200
        await check_books(url, fleet)
    finally:
        await runner.cleanup()
        await fleet.close()
