"""The public card page over HTTP: the card number alone shows nothing, the check code printed
on the card shows the balance in the books, the last transactions, what waits for the card and
the complaints' state (nothing personal); lookups are limited per address by the business
clock, for every process (counted in the database); a complaint can be made on the web."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateways.service_desk import check_codes, complaints
from gateways.staff import Role, StaffMember
from tests.service_desk.conftest import Desk, lookups_max, proxy_header


async def code_of(desk: Desk) -> str:
    async with desk.pool.acquire() as connection:
        return (await check_codes.check_codes(connection, [desk.number]))[desk.number]


async def look_up(
    http: aiohttp.ClientSession, desk: Desk, code: str, address: str, number: str = ""
) -> tuple[int, Any, str]:
    async with http.post(
        desk.url + "/kartu/v1/card",
        json={"card_number": number or desk.number, "check_code": code},
        headers={proxy_header: address},
    ) as response:
        return response.status, await response.json(), response.headers.get("Retry-After", "")


async def test_the_card_shows_with_its_check_code_only_and_lookups_are_limited(
    desk: Desk,
) -> None:
    code = await code_of(desk)
    fare = 50_000 - desk.card_balance()
    async with aiohttp.ClientSession() as http:
        status, answer, _ = await look_up(http, desk, "AAAA-AAAA", "198.51.100.1")
        assert (status, answer["code"]) == (404, "card_not_found")
        unknown = await look_up(http, desk, code, "198.51.100.1", number="6099999999999999")
        assert unknown[:2] == (404, answer)  # a wrong code and an unknown card: the same answer
        status, card, _ = await look_up(http, desk, code.lower().replace("-", ""), "198.51.100.1")
        assert status == 200, card
        assert card["balance_rupiah"] == 50_000 - fare
        assert card["pending_top_ups"] == [] and card["passes"] == []
        assert [(t["kind"], t["amount_rupiah"], t["where"]) for t in card["transactions"]] == [
            ("fare_debit", fare, "K1")
        ]
        assert set(card) == {
            "card_number", "balance_rupiah", "pending_top_ups", "pending_top_ups_rupiah",
            "passes", "transactions", "complaints", "how_to_complain", "blocked",
        }  # fmt: skip
        assert card["blocked"] is False
        assert "Lapor Hendi" in card["how_to_complain"]["id"]
        # The fourth lookup from this address in the window, then the fifth: refused.
        assert (await look_up(http, desk, code, "198.51.100.1"))[0] == 200
        status, problem, retry_after = await look_up(http, desk, code, "198.51.100.1")
        assert (status, problem["code"], retry_after) == (429, "too_many_lookups", "900")
        assert lookups_max == 4
        # Another address is counted apart; the first is let in again when its window ends.
        assert (await look_up(http, desk, code, "198.51.100.2"))[0] == 200
        desk.clock.advance(600)
        assert (await look_up(http, desk, code, "198.51.100.1"))[2] == "300"
        desk.clock.advance(300)
        assert (await look_up(http, desk, code, "198.51.100.1"))[0] == 200


async def test_a_refund_waits_on_the_page_and_a_web_complaint_is_taken(desk: Desk) -> None:
    code = await code_of(desk)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            desk.url + "/kartu/keluhan",
            data={
                "card_number": desk.number,
                "check_code": code,
                "description": "Saya ditagih dua kali",
                "tap": f"{desk.bus.terminal_id}/1",
            },
            headers={proxy_header: "198.51.100.9"},
        ) as response:
            page = await response.text()
            assert response.status == 200, page
        assert "Keluhan Anda diterima dengan nomor 1" in page
        async with desk.pool.acquire() as connection:
            found = await complaints.complaint(connection, 1)
            assert found is not None
            assert (found.channel.value, found.received_by, len(found.taps)) == ("web", "web", 1)
            await complaints.resolve(
                connection,
                1,
                StaffMember("ani", Role.clerk),
                "refunded",
                refund_rupiah=found.taps[0].amount_rupiah,
                now=desk.clock.now(),
            )
        status, card, _ = await look_up(http, desk, code, "198.51.100.9")
        assert status == 200
        assert card["pending_top_ups_rupiah"] == found.taps[0].amount_rupiah
        assert card["complaints"] == [
            {"complaint_id": 1, "state": "resolved_refund", "due_on": "2026-12-11"}
        ]
        assert "Saya ditagih" not in str(card)  # a complaint's text is not shown
        async with http.post(
            desk.url + "/kartu/keluhan",
            data={"card_number": desk.number, "check_code": "AAAA-AAAA", "description": "x"},
            headers={proxy_header: "198.51.100.9"},
        ) as response:
            assert response.status == 404
    assert await desk.fetchval("select count(*) from complaints") == 1


async def test_two_back_office_processes_count_one_limit_and_the_page_says_so(
    desk: Desk,
) -> None:
    """Lookups alternate between two back office applications on the same database: the
    address's fifth lookup is refused wherever it lands, on the HTML page too."""
    from gateways.backoffice import BackofficeConfig, create_app
    from ksh.commands import serve
    from ksh.commands.demo import start

    code = await code_of(desk)
    settings = {"client_address_header": proxy_header, "expiry_sweep_interval_s": 0}
    settings["citizen_lookups_max"] = lookups_max
    other = create_app(
        BackofficeConfig(
            desk.database_url, pool_connections_min=1, settings=settings, clock=desk.clock
        ),
        serve.extensions(),
    )
    runner, other_url = await start(other)
    try:
        async with aiohttp.ClientSession() as http:
            for index in range(lookups_max):
                url = (desk.url, other_url)[index % 2]
                async with http.post(
                    url + "/kartu/v1/card",
                    json={"card_number": desk.number, "check_code": code},
                    headers={proxy_header: "203.0.113.7"},
                ) as response:
                    assert response.status == 200
            async with http.post(
                other_url + "/kartu",
                data={"card_number": desk.number, "check_code": code, "lang": "en"},
                headers={proxy_header: "203.0.113.7"},
            ) as response:
                page = await response.text()
                assert (response.status, response.headers["Retry-After"]) == (429, "900")
        assert "Too many lookups from your address; try again later." in page
        assert "Balance in our books" not in page
    finally:
        await runner.cleanup()


async def test_a_card_blocked_by_staff_says_so_on_the_page(desk: Desk) -> None:
    from gateways.terminal_api import card_desk

    code = await code_of(desk)
    async with desk.pool.acquire() as connection:
        await card_desk.block_card(
            connection,
            desk.number,
            card_desk.BlockCause.lost,
            "lost",
            username="ani",
            now=desk.clock.now(),
        )
    async with aiohttp.ClientSession() as http:
        status, card, _ = await look_up(http, desk, code, "198.51.100.20")
        assert (status, card["blocked"]) == (200, True)
        async with http.post(
            desk.url + "/kartu",
            data={"card_number": desk.number, "check_code": code},
            headers={proxy_header: "198.51.100.20"},
        ) as response:
            page = await response.text()
    assert "Kartu ini diblokir (hilang, dicuri atau rusak)" in page
