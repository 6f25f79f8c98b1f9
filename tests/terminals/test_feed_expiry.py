"""A validator whose fare feed has run out, through the real back office: each tap is charged the
full fare with the reason on its record, the back office raises the alarm (a warning log line
and `ksh_taps_charged_without_service_total`), and the days left on every validator's feed,
reported on its signed sync, show on /health and /metrics against the back office's clock."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import aiohttp
import pytest

from bus_terminals.simulator import Bus
from bus_terminals.sync import UploadStatus
from bus_terminals.terminal import Verdict
from bus_terminals.validator import fare_decider
from bus_terminals.wire import sign, signature_header, terminal_header
from card_reader.deck import first_card_number, make_ksh_deck
from card_reader.keys import KeyRole, demo_key_store
from gateways.terminal_api import registry
from tests.fare.feeds import trans_semarang_ending
from tests.terminals.conftest import Backoffice, test_day_start
from tests.terminals.helpers import books_snapshot, purse_balance

store = demo_key_store()
keys = store.view(KeyRole.DEBIT, KeyRole.CREDIT)
stale_end = dt.date(2026, 6, 30)  # the tests' day is 2026-11-24: 147 days after it
fresh_end = dt.date(2030, 12, 31)


async def metrics_and_health(
    session: aiohttp.ClientSession, backoffice: Backoffice
) -> tuple[str, dict[str, object]]:
    async with session.get(backoffice.url + "/metrics") as response:
        text = await response.text()
    async with session.get(backoffice.url + "/health") as response:
        assert response.status == 200
        health = await response.json()
    return text, health


async def test_a_stale_feed_charges_the_full_fare_and_the_back_office_raises_the_alarm(
    backoffice: Backoffice, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    card = make_ksh_deck(store, [25_000], seed="stale-feed")[0]
    number = str(first_card_number)
    async with backoffice.pool.acquire() as connection:
        await registry.issue_cards(connection, {number: 25_000}, now=backoffice.clock.now())
    stale_key = await backoffice.register_validator("BUS-STALE")
    fresh_key = await backoffice.register_validator("BUS-FRESH")
    revoked_key = await backoffice.register_validator("BUS-GONE")
    caplog.set_level(logging.WARNING, logger="ksh.terminals")
    async with aiohttp.ClientSession() as session:
        text, health = await metrics_and_health(session, backoffice)
        assert health["validator_feeds"] == {
            "today": "2026-11-24",
            "reporting": 0,
            "days_left_min": None,
            "terminal": None,
            "ended": 0,
        }
        assert "# TYPE ksh_terminal_feed_days_left gauge" in text

        buses = {
            terminal_id: Bus(
                terminal_id,
                "K1",
                tmp_path,
                keys,
                backoffice.url,
                session,
                key,
                now_ms=backoffice.clock.unix_ms,
                feed_service_end=end,
            )
            for terminal_id, key, end in (
                ("BUS-STALE", stale_key, stale_end),
                ("BUS-FRESH", fresh_key, fresh_end),
                ("BUS-GONE", revoked_key, stale_end - dt.timedelta(days=400)),
            )
        }
        for bus in buses.values():
            assert await bus.sync.download()  # each reports its feed's last day
        async with backoffice.pool.acquire() as connection:
            assert await registry.revoke_terminal(connection, "BUS-GONE")

        # A tap on the bus whose feed ran out: charged, not refused, and the record says why.
        stale = buses["BUS-STALE"]
        seven_am_ms = int((test_day_start + dt.timedelta(hours=1)).timestamp() * 1000)
        feedback = stale.tap(
            card, seven_am_ms, fare_decider(trans_semarang_ending("20260630"), "K1")
        )
        assert (feedback.verdict, feedback.amount_rupiah) == (Verdict.accepted, 3_500)
        assert feedback.detail == "full_fare_no_service general_fare"
        assert await stale.sync.upload_once() == UploadStatus.acknowledged
        assert await purse_balance(backoffice.pool, number) == 25_000 - 3_500
        assert (await books_snapshot(backoffice.pool))[1] == 0
        async with backoffice.pool.acquire() as connection:
            record = await connection.fetchrow(
                "select fare_detail, outcome from card_records where terminal_id = 'BUS-STALE'"
            )
        assert dict(record) == {
            "fare_detail": "full_fare_no_service general_fare",
            "outcome": "booked",
        }
        alarms = [r for r in caplog.records if "without fare service" in r.getMessage()]
        assert [(r.levelname, r.terminal_id, r.count) for r in alarms] == [  # type: ignore[attr-defined]
            ("WARNING", "BUS-STALE", 1)
        ]

        text, health = await metrics_and_health(session, backoffice)
        lines = set(text.splitlines())
        assert 'ksh_taps_charged_without_service_total{terminal="BUS-STALE"} 1.0' in lines
        assert 'ksh_terminal_feed_days_left{terminal="BUS-STALE"} -147' in lines
        fresh_days = (fresh_end - dt.date(2026, 11, 24)).days
        assert f'ksh_terminal_feed_days_left{{terminal="BUS-FRESH"}} {fresh_days}' in lines
        assert not any("BUS-GONE" in line for line in lines)  # revoked: not a validator in use
        assert health == {
            "status": "ok",
            "validator_feeds": {
                "today": "2026-11-24",
                "reporting": 2,
                "days_left_min": -147,
                "terminal": "BUS-STALE",
                "ended": 1,
            },
        }

        # The days left follow the back office's clock, and the feed a validator reports next.
        backoffice.clock.advance(86_400)
        stale.sync.feed_service_end = fresh_end + dt.timedelta(days=365)
        assert await stale.sync.download()
        text, health = await metrics_and_health(session, backoffice)
        assert f'ksh_terminal_feed_days_left{{terminal="BUS-FRESH"}} {fresh_days - 1}' in text
        assert health["validator_feeds"] == {
            "today": "2026-11-25",
            "reporting": 2,
            "days_left_min": fresh_days - 1,
            "terminal": "BUS-FRESH",
            "ended": 0,
        }
    for bus in buses.values():
        bus.close()


async def test_the_reported_feed_is_part_of_the_signed_request(backoffice: Backoffice) -> None:
    key = await backoffice.register_validator("V1")
    now = str(backoffice.clock.unix_ms())
    signed_path = "/terminal/v1/sync?deny_since=0&feed_service_end=20301231"
    async with aiohttp.ClientSession() as session:

        async def get(path: str, signed: str) -> tuple[int, dict[str, object]]:
            headers = {
                terminal_header: "V1",
                signature_header: sign(key, f"GET\n{signed}\n{now}".encode()),
                "X-KSH-Timestamp": now,
            }
            async with session.get(backoffice.url + path, headers=headers) as response:
                return response.status, await response.json()

        # Changed on the way: the signature no longer matches, nothing is stored.
        tampered = signed_path.replace("20301231", "20991231")
        status, problem = await get(tampered, signed_path)
        assert (status, problem["code"]) == (401, "signature_invalid")
        for bad in ("2030-12-31", "20301331", "1" * 30):
            path = f"/terminal/v1/sync?deny_since=0&feed_service_end={bad}"
            status, problem = await get(path, path)
            assert (status, problem["code"]) == (400, "bad_query"), bad
        assert (await get(signed_path, signed_path))[0] == 200
    async with backoffice.pool.acquire() as connection:
        stored = await connection.fetchval(
            "select feed_service_end from terminals where terminal_id = 'V1'"
        )
    assert stored == dt.date(2030, 12, 31)
