"""Fleet packages through the real back office (aiohttp on loopback, PostgreSQL) and the real
terminal classes: published with `ksh fleet publish`, taken on sync, verified, staged durably,
switched at their effective time by the terminal's clock, reported, and refused whole when bad."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
from importlib import resources
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.device import Device, fleet_of, initialise
from bus_terminals.fare.feed import feed_file_names, load_feed
from bus_terminals.fleet import Fleet
from bus_terminals.packages import (
    Manifest,
    PackageKind,
    Refusal,
    SignedManifest,
    encode_manifest,
    feed_content,
    sign_package,
)
from bus_terminals.simulator import Bus
from bus_terminals.sync import UploadStatus
from bus_terminals.terminal import Reason, Verdict
from bus_terminals.validator import fare_decider, fleet_fare_decider
from bus_terminals.wire import load_public_key, public_key_text
from card_reader.deck import first_card_number, make_ksh_deck
from card_reader.emulator import EmulatedReader
from card_reader.keys import KeyRole, demo_key_store
from gateways.terminal_api import card_desk, fleet, registry
from gateways.terminal_api.registry import TerminalRole
from tests.setup.helpers import Ksh, assert_user_error, staff_password
from tests.terminals.conftest import Backoffice, operator_id, test_day_start
from tests.waiting import wait_until_async

store = demo_key_store()
keys = store.view(KeyRole.DEBIT, KeyRole.CREDIT)
shipped = load_feed()
eight_am = test_day_start + dt.timedelta(hours=2)  # the new tariff's effective time


def ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def feed_folder(folder: Path, card_fare: str) -> Path:
    """The shipped feed with the card's general fare changed (the shipped one is 3500.00)."""
    shipped_files = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
    folder.mkdir()
    for name in feed_file_names:
        entry = shipped_files.joinpath(name)
        if entry.is_file():
            text = entry.read_text(encoding="utf-8")
            if name == "fare_products.txt":
                assert text.count(",ksh_card,3500.00,") == 1, "the shipped fares changed"
                text = text.replace(",ksh_card,3500.00,", f",ksh_card,{card_fare},")
            (folder / name).write_text(text, encoding="utf-8")
    return folder


async def fleet_cli(
    backoffice: Backoffice, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Ksh:
    """`ksh` on the test's database, with budi the supervisor who publishes."""
    monkeypatch.setenv("DATABASE_URL", backoffice.database_url)
    monkeypatch.setenv("KSH_STAFF_PASSWORD", staff_password)
    ksh = Ksh(capsys)
    await ksh.ok("settle", "staff", "budi", "--role", "supervisor")
    return ksh


async def reported(backoffice: Backoffice, terminal_id: str) -> dict[str, tuple[int, ...]]:
    statuses = await fleet_status(backoffice)
    return {
        s.kind.value: (s.running_version, s.staged_version, s.refused_version)
        for s in statuses
        if s.terminal_id == terminal_id
    }


async def fleet_status(backoffice: Backoffice) -> list[fleet.FleetStatus]:
    async with backoffice.pool.acquire() as connection:
        return await fleet.fleet_status(connection, backoffice.clock.now())


async def test_a_new_tariff_is_staged_then_switched_at_its_time_even_across_a_restart(
    backoffice: Backoffice,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ksh = await fleet_cli(backoffice, capsys, monkeypatch)
    signing_key = tmp_path / "fleet-signing-key"
    public_key = (await ksh.ok("fleet", "key", "--signing-key", str(signing_key))).out.strip()
    assert (await ksh.ok("fleet", "key", "--signing-key", str(signing_key))).out.strip() == (
        public_key
    )  # made once
    cards = make_ksh_deck(store, [20_000, 20_000], seed="fleet-tariff")
    numbers = [str(first_card_number + index) for index in range(2)]
    await backoffice.issue_cards(dict.fromkeys(numbers, 20_000))
    bus_key = await backoffice.register_validator("BUS-NEW")
    late_key = await backoffice.register_validator("BUS-LATE")

    published = await ksh.ok(
        "fleet", "publish", "--feed", str(feed_folder(tmp_path / "feed", "4500.00")),
        "--effective", eight_am.isoformat(), "--label", "tarif 2027",
        "--signing-key", str(signing_key), "--as", "budi", "--reason", "new tariff from 8:00",
    )  # fmt: skip
    assert published.out.startswith("fare_feed version 1 published, effective 2026-11-24 08:00")
    listed = (await ksh.ok("fleet", "list", "--json")).json_lines()
    assert [(p["kind"], p["version"], p["label"]) for p in listed] == [
        ("fare_feed", 1, "tarif 2027")
    ]

    async with aiohttp.ClientSession() as session:

        def bus(terminal_id: str, key: Ed25519PrivateKey) -> Bus:
            return Bus(
                terminal_id, "K1", tmp_path, keys, backoffice.url, session, key,
                now_ms=backoffice.clock.unix_ms, fleet_public_key=load_public_key(public_key),
            )  # fmt: skip

        new, late = bus("BUS-NEW", bus_key), bus("BUS-LATE", late_key)
        assert await late.sync.download()  # syncs once, at 06:00, then goes off the air
        assert await new.sync.download()  # offered, fetched, checked and staged
        assert new.fleet is not None
        assert (new.fleet.running_version(PackageKind.fare_feed), len(new.fleet.staged)) == (0, 1)
        assert await new.sync.download()  # and reported
        assert (await reported(backoffice, "BUS-NEW"))["fare_feed"] == (0, 1, 0)

        # Before its time the shipped tariff prices the tap; a restart keeps what was staged.
        seven_am = ms(test_day_start + dt.timedelta(hours=1))
        before = new.tap(cards[0], seven_am, fleet_fare_decider(new.fleet, shipped, "K1"))
        assert (before.verdict, before.amount_rupiah) == (Verdict.accepted, 3_500)
        new.reboot()
        assert new.fleet is not None
        assert new.fleet.running_version(PackageKind.fare_feed) == 0
        after = new.tap(
            cards[1], ms(eight_am) + 60_000, fleet_fare_decider(new.fleet, shipped, "K1")
        )
        assert (after.verdict, after.amount_rupiah) == (Verdict.accepted, 4_500)
        assert new.fleet.running_version(PackageKind.fare_feed) == 1
        new.reboot()  # the switch was durable too
        assert new.fleet is not None and new.fleet.running_version(PackageKind.fare_feed) == 1

        backoffice.clock.set(eight_am + dt.timedelta(minutes=5))
        assert await new.sync_now() != (None, False)
        assert (await reported(backoffice, "BUS-NEW"))["fare_feed"] == (1, 0, 0)
        async with backoffice.pool.acquire() as connection:
            reported_end = await connection.fetchval(
                "select feed_service_end from terminals where terminal_id = 'BUS-NEW'"
            )
        assert reported_end == dt.date(2030, 12, 31)  # the running feed's, as before

        # BUS-LATE never took it: it lags, in `ksh fleet status` and on /metrics.
        status = (await ksh.ok("fleet", "status", "--lagging", "--json")).json_lines()
        assert [(s["terminal_id"], s["kind"], s["running_version"]) for s in status] == [
            ("BUS-LATE", "fare_feed", 0)
        ]
        async with session.get(backoffice.url + "/metrics") as response:
            metrics = set((await response.text()).splitlines())
        behind = "ksh_fleet_package_versions_behind"
        assert f'{behind}{{terminal="BUS-LATE",kind="fare_feed"}} 1' in metrics
        assert f'{behind}{{terminal="BUS-NEW",kind="fare_feed"}} 0' in metrics
        table = (await ksh.ok("fleet", "status")).out
        assert "BUS-LATE" in table and "LAGS" in table.split("BUS-LATE")[1].splitlines()[0]
    new.close()
    late.close()


async def insert_package(
    backoffice: Backoffice, manifest: bytes, signature: str, content: bytes, version: int
) -> None:
    """A package put straight into the database (a compromised server, or a publisher's bug)."""
    async with backoffice.pool.acquire() as connection:
        await connection.execute(
            "insert into fleet_packages (kind, version, effective_at, published_at, manifest, "
            "signature, content, content_sha256, published_by) "
            "values ('fare_feed', $1, $2, $2, $3, $4, $5, '', 'intruder')",
            version,
            backoffice.clock.now(),
            manifest,
            signature,
            content,
        )


async def test_forged_altered_or_invalid_packages_are_refused_reported_and_never_run(
    backoffice: Backoffice, tmp_path: Path
) -> None:
    fleet_key, rogue_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    cards = make_ksh_deck(store, [50_000] * 4, seed="fleet-bad")
    numbers = [str(first_card_number + index) for index in range(4)]
    await backoffice.issue_cards(dict.fromkeys(numbers, 50_000))
    key = await backoffice.register_validator("BUS-1")
    now = backoffice.clock.now()
    async with backoffice.pool.acquire() as connection:
        await fleet.publish(
            connection, fleet_key, PackageKind.fare_feed, feed_content_of("4000.00"),
            effective_at=now, now=now, published_by="tests",
        )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        bus = Bus(
            "BUS-1", "K1", tmp_path, keys, backoffice.url, session, key,
            now_ms=backoffice.clock.unix_ms, fleet_public_key=fleet_key.public_key(),
        )  # fmt: skip
        assert bus.fleet is not None
        assert await bus.sync.download()
        assert bus.fleet.running_version(PackageKind.fare_feed) == 1  # effective at once

        # Version 2: published, then its content altered in the database.
        async with backoffice.pool.acquire() as connection:
            await fleet.publish(
                connection, fleet_key, PackageKind.fare_feed, feed_content_of("9000.00"),
                effective_at=now, now=now, published_by="tests",
            )  # fmt: skip
            await connection.execute(
                "update fleet_packages set content = $1 where version = 2",
                feed_content_of("9100.00"),
            )
        # Version 3: signed with another key.  Version 4: signed by the fleet key (a
        # publisher's bug) over a feed that fails validation.
        forged = sign_package(
            rogue_key, PackageKind.fare_feed, 3, feed_content_of("9000.00"),
            effective_at_ms=ms(now), published_at_ms=ms(now),
        )  # fmt: skip
        invalid = feed_content_of("3,500")
        manifest = encode_manifest(
            Manifest(
                PackageKind.fare_feed, 4, ms(now), ms(now),
                hashlib.sha256(invalid).hexdigest(), len(invalid), "",
            )
        )  # fmt: skip
        bad = (
            (2, Refusal.hash_mismatch, None),
            (
                3,
                Refusal.signature_invalid,
                (forged.raw, forged.signature, feed_content_of("9000.00")),
            ),
            (4, Refusal.content_invalid, (manifest, sign_text(fleet_key, manifest), invalid)),
        )
        for index, (version, refusal, row) in enumerate(bad):
            if row is not None:
                await insert_package(backoffice, *row, version=version)
            assert await bus.sync.download()  # offered, refused
            assert await bus.sync.download()  # and reported on the next sync
            assert (await reported(backoffice, "BUS-1"))["fare_feed"] == (1, 0, version)
            async with backoffice.pool.acquire() as connection:
                reason = await connection.fetchval(
                    "select refused_reason from terminal_packages where terminal_id = 'BUS-1'"
                )
            assert reason == refusal.value
            # Nothing of it half-applied: version 1 runs and prices the tap.
            assert bus.fleet.running_version(PackageKind.fare_feed) == 1
            assert not bus.fleet.staged.get(PackageKind.fare_feed)
            tap_ms = backoffice.clock.unix_ms() + 60_000 * (index + 1)
            feedback = bus.tap(cards[index], tap_ms, fleet_fare_decider(bus.fleet, shipped, "K1"))
            assert (feedback.verdict, feedback.amount_rupiah) == (Verdict.accepted, 4_000)
        assert not list(bus.fleet.folder.glob("fare_feed-[234].bin"))  # nothing kept of them
        async with session.get(backoffice.url + "/metrics") as response:
            text = await response.text()
        for refusal in (Refusal.hash_mismatch, Refusal.signature_invalid, Refusal.content_invalid):
            assert f'ksh_fleet_package_refusals_total{{reason="{refusal.value}"}} 1.0' in text
        assert 'ksh_fleet_package_refused_version{terminal="BUS-1",kind="fare_feed",' in text
    bus.close()


def feed_content_of(card_fare: str) -> bytes:
    shipped_files = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
    texts = {
        name: shipped_files.joinpath(name).read_text(encoding="utf-8")
        for name in feed_file_names
        if shipped_files.joinpath(name).is_file()
    }
    texts["fare_products.txt"] = texts["fare_products.txt"].replace(
        ",ksh_card,3500.00,", f",ksh_card,{card_fare},"
    )
    return feed_content(texts)


def sign_text(key: Ed25519PrivateKey, raw: bytes) -> str:
    return base64.b64encode(key.sign(raw)).decode()


def test_an_older_version_is_refused_and_the_running_one_stays(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    terminal = Fleet.open(tmp_path / "fleet", key.public_key())

    def settings(version: int, interval_s: int) -> tuple[SignedManifest, bytes]:
        content = json.dumps({"sync_interval_s": interval_s}).encode()
        signed = sign_package(
            key, PackageKind.settings, version, content, effective_at_ms=0, published_at_ms=0
        )
        return signed, content

    newer, newer_content = settings(5, 60)
    assert terminal.stage(newer, newer_content) is None
    assert terminal.switch_due(1) == [PackageKind.settings]
    older, older_content = settings(4, 10)
    assert terminal.stage(older, older_content) is Refusal.stale_version
    reopened = Fleet.open(tmp_path / "fleet", key.public_key())
    assert reopened.settings() == {"sync_interval_s": 60}
    assert reopened.report_query() == "&running=settings:5"  # an older refusal is history
    assert [r.refusal for r in reopened.refused] == [Refusal.stale_version]


async def test_fleet_publish_refuses_bad_inputs_and_changes_nothing(
    backoffice: Backoffice,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ksh = await fleet_cli(backoffice, capsys, monkeypatch)
    signing_key = tmp_path / "key"
    await ksh.ok("fleet", "key", "--signing-key", str(signing_key))
    bad_settings = tmp_path / "settings.json"
    bad_settings.write_text('{"sync_interval_s": 1}')
    acting = ("--signing-key", str(signing_key), "--as", "budi", "--reason", "test")
    for arguments, fragment in (
        (("--feed", str(feed_folder(tmp_path / "bad", "35OO.00"))), "fare feed"),
        (("--feed", str(tmp_path / "missing")), "not a directory"),
        (("--settings", str(bad_settings)), "sync_interval_s must be an integer 5..3600"),
        (("--settings", str(tmp_path / "none.json")), "No such file"),
        (("--key-version", "master=3"), "ROLE=N"),
        (("--deny-list", "--effective", "2027-01-01T03:00"), "needs its offset"),
        (("--deny-list", "--effective", "tomorrow"), "not an ISO 8601 time"),
        (("--deny-list", "--signing-key", str(tmp_path / "nokey")), "create it with ksh fleet key"),
    ):
        ran = await ksh("fleet", "publish", *acting, *arguments)  # the last --signing-key counts
        assert_user_error(ran, "fleet", fragment)
    assert (await ksh.ok("fleet", "list")).out.startswith("no fleet packages published")
    validator = (
        "validator", "--terminal-id", "V9", "--state", str(tmp_path / "v9"), "--route", "K1",
        "--emulated", str(tmp_path / "deck.json"), "--demo-keys",
    )  # fmt: skip
    assert_user_error(await ksh(*validator, "--fleet-key", "not-a-key"), "validator", "--fleet-key")
    # A good one, for contrast: the deny list as it is now.
    ran = await ksh.ok("fleet", "publish", "--deny-list", *acting)
    assert ran.out.startswith("deny_list version 1 published")


async def test_settings_key_versions_and_the_deny_list_run_from_packages(
    backoffice: Backoffice, tmp_path: Path
) -> None:
    fleet_key = Ed25519PrivateKey.generate()
    issuer = demo_key_store()
    cards = make_ksh_deck(issuer, [20_000, 20_000], seed="fleet-kinds")  # debit key version 1
    # The key store brought debit version 2 (current in the store) beside 1; the back office
    # keeps the fleet on 1 until it says otherwise.
    issuer.roll_over(KeyRole.DEBIT, random_bytes=lambda size: bytes(range(size)))
    numbers = [str(first_card_number + index) for index in range(2)]
    await backoffice.issue_cards(dict.fromkeys(numbers, 20_000))
    key = await backoffice.register_validator("BUS-K")
    now = backoffice.clock.now()

    async def publish(kind: PackageKind, content: bytes | None = None) -> None:
        async with backoffice.pool.acquire() as connection:
            if content is None:
                content = await fleet.deny_list_snapshot(connection)
            await fleet.publish(
                connection, fleet_key, kind, content, effective_at=now, now=now,
                published_by="tests",
            )  # fmt: skip

    await publish(PackageKind.settings, b'{"records_per_batch": 1}')
    await publish(PackageKind.key_version, b'{"debit": 1}')
    async with backoffice.pool.acquire() as connection:
        await card_desk.block_card(
            connection,
            numbers[1],
            card_desk.BlockCause.stolen,
            "stolen",
            username="tests",
            now=backoffice.clock.now(),
        )
    await publish(PackageKind.deny_list)
    async with aiohttp.ClientSession() as session:
        bus = Bus(
            "BUS-K", "K1", tmp_path, issuer.view(KeyRole.DEBIT, KeyRole.CREDIT),
            backoffice.url, session, key, now_ms=backoffice.clock.unix_ms,
            fleet_public_key=fleet_key.public_key(),
        )  # fmt: skip
        assert bus.keys.current_versions[KeyRole.DEBIT] == 2
        assert await bus.sync.download()
        assert bus.keys.current_versions[KeyRole.DEBIT] == 1  # as the package says, at once

        # The deny list package runs even on a terminal that lost its synced list (never
        # saved here: a power cut after the sync).
        assert not (bus.folder / "deny-list.bin").exists()
        bus.reboot()
        assert numbers[1] in bus.state.deny_list
        assert numbers[1] in bus.state.chip_block_list  # a staff block: written on the chip
        denied = bus.tap(cards[1], backoffice.clock.unix_ms(), fare_decider(shipped, "K1"))
        assert (denied.verdict, denied.reason) == (Verdict.denied, Reason.card_blocked)

        # Settings: one record per upload batch.
        for minute in (1, 2):
            tap_ms = backoffice.clock.unix_ms() + minute * 3_600_000
            fed = bus.tap(cards[0], tap_ms, fare_decider(shipped, "K1"))
            assert fed.verdict is Verdict.accepted
        assert await bus.sync.upload_all() == UploadStatus.nothing_to_send
        async with backoffice.pool.acquire() as connection:
            records = await connection.fetchval(
                "select count(*) from card_records where terminal_id = 'BUS-K'"
            )
        assert records >= 2
        assert bus.journal.next_batch_sequence() == records + 1  # batches of one record

        # A key version whose material this terminal lacks: refused, reported, 1 stays.
        await publish(PackageKind.key_version, b'{"debit": 3}')
        assert await bus.sync.download()
        assert await bus.sync.download()
        assert (await reported(backoffice, "BUS-K"))["key_version"] == (1, 0, 2)
        assert bus.keys.current_versions[KeyRole.DEBIT] == 1
        assert (await reported(backoffice, "BUS-K"))["settings"] == (1, 0, 0)
    bus.close()


async def test_a_running_validator_device_takes_a_tariff_through_its_sync_thread(
    backoffice: Backoffice, tmp_path: Path
) -> None:
    """`ksh validator`'s device: the sync thread stages, the tap at the effective time runs it."""
    fleet_key = Ed25519PrivateKey.generate()
    folder = tmp_path / "BUS-D"
    async with backoffice.pool.acquire() as connection:
        await registry.register_terminal(
            connection, "BUS-D", initialise(folder), TerminalRole.validator,
            operator_id=operator_id,
        )  # fmt: skip
        await fleet.publish(
            connection, fleet_key, PackageKind.fare_feed, feed_content_of("4500.00"),
            effective_at=eight_am, now=backoffice.clock.now(), published_by="tests",
        )  # fmt: skip
    card = make_ksh_deck(store, [20_000], seed="fleet-device")[0]
    await backoffice.issue_cards({str(first_card_number): 20_000})
    running = fleet_of(folder, public_key_text(fleet_key.public_key()))
    assert running is not None
    device = Device(
        "BUS-D", folder, keys, backoffice.url, now_ms=backoffice.clock.unix_ms, route="K1",
        sync_interval_ms=20, fleet=running,
    )  # fmt: skip
    device.sync.start()
    try:
        await wait_until_async(
            lambda: running.staged.get(PackageKind.fare_feed), "the device staged the feed"
        )
        reader = EmulatedReader("BUS-D reader")
        reader.insert(card)
        tapped = device.tap(
            reader, ms(eight_am) + 60_000, fleet_fare_decider(running, shipped, "K1")
        )
        assert (tapped.verdict, tapped.amount_rupiah) == (Verdict.accepted, 4_500)

        async def reported_running() -> bool:
            return (await reported(backoffice, "BUS-D"))["fare_feed"][0] == 1

        await wait_until_async(reported_running, "the device reported running version 1")
    finally:
        await asyncio.to_thread(device.__exit__, None, None, None)
