"""The service desk in a real headless Chromium: a clerk takes a complaint at the counter,
picking the tap from the card's history, investigates and answers it with a refund; the list
shows an overdue complaint first; the citizen finds the refund waiting on the public card page
(Bahasa Indonesia first, English on request)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateways.service_desk import check_codes, complaints
from ledger.clock import jakarta
from settlement.formatting import rupiah
from tests.service_desk.conftest import Desk, passwords, proxy_header
from tests.service_desk.test_pass_sales import monthly, publish_priced_feed, sale, tap
from tests.service_desk.test_passes import call
from tests.settlement.conftest import browser as browser  # the headless Chromium fixture


async def log_in(browser: Any, url: str, username: str) -> Any:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, extra_http_headers={proxy_header: "192.0.2.50"}
    )
    page = await context.new_page()
    await page.goto(url + "/finance/login")
    await page.fill("#username", username)
    await page.fill("#password", passwords[username])
    await page.click("button[type=submit]")
    await page.wait_for_url(url + "/finance")
    return page


async def test_a_clerk_answers_a_complaint_with_a_refund_the_citizen_sees(
    desk: Desk, browser: Any
) -> None:
    fare = 50_000 - desk.card_balance()
    async with desk.pool.acquire() as connection:  # received 12 days ago, never answered
        old = await complaints.add_complaint(
            connection,
            card_number=desk.number,
            channel="lapor_hendi",
            description="the card was refused at the gate",
            taps=[],
            received_by="budi",
            now=desk.clock.now() - dt.timedelta(days=12),
        )
        code = (await check_codes.check_codes(connection, [desk.number]))[desk.number]
    page = await log_in(browser, desk.url, "ani")
    await page.click("a[href='/finance/complaints']")
    await page.click("[data-action=new-complaint]")
    await page.fill("input[name=card]", desk.number)
    await page.click('button:has-text("Show the card\'s history")')
    assert await page.locator("[data-field=check-code]").inner_text() == code
    await page.select_option("select[name=channel]", "counter")
    await page.fill("textarea[name=description]", "charged the full fare on a free transfer")
    await page.check("input[name=tap][data-counter='1']")
    await page.screenshot(path="/tmp/ksh-screenshots/complaint-intake.png", full_page=True)
    await page.click("[data-action=take]")
    await page.wait_for_url("**/finance/complaints/*")
    number = int(page.url.split("/")[-1].split("?")[0])
    assert await page.locator("[data-field=state]").inner_text() == "received"
    assert await page.locator("[data-field=due]").inner_text() == "2026-12-11"
    # The staff pages follow the browser's language (English here); the citizen page is
    # Indonesian first.
    assert rupiah(fare, "en") in await page.locator("[data-table=taps]").inner_text()
    await page.fill("input[name=note] >> nth=0", "checking the validator's log")
    await page.click("[data-action=investigate]")
    await page.wait_for_url("**/finance/complaints/*")
    assert await page.locator("[data-field=state]").inner_text() == "investigating"
    await page.fill("form:has([data-action=resolve]) input[name=note]", "refunded, sorry")
    await page.fill("input[name=refund_rupiah]", str(fare + 1))
    await page.click("[data-action=resolve]")
    await page.wait_for_url("**/finance/complaints/*")
    assert "can give back at most" in await page.locator("[role=status]").inner_text()
    await page.fill("form:has([data-action=resolve]) input[name=note]", "refunded, sorry")
    await page.fill("input[name=refund_rupiah]", str(fare))
    await page.click("[data-action=resolve]")
    await page.wait_for_url("**/finance/complaints/*")
    assert await page.locator("[data-field=state]").inner_text() == "resolved_refund"
    assert await page.locator("[data-field=refund]").inner_text() == rupiah(fare, "en")
    await page.screenshot(path="/tmp/ksh-screenshots/complaint.png", full_page=True)

    await page.goto(desk.url + "/finance/complaints?all=1")
    rows = page.locator("[data-table=complaints] tbody tr")
    assert await rows.nth(0).get_attribute("data-complaint") == str(old)  # overdue first
    assert await rows.nth(0).locator("[data-overdue]").count() == 1
    assert await rows.nth(1).get_attribute("data-complaint") == str(number)
    await page.screenshot(path="/tmp/ksh-screenshots/complaints.png", full_page=True)
    await page.goto(desk.url + "/finance/complaints/report?month=2026-12")
    assert await page.locator("[data-tile=received] .value").inner_text() == "1"
    assert await page.locator("[data-tile=refunded] .value").inner_text() == rupiah(fare, "en")

    # The citizen, on the public page: no login, the number and the code from the card.
    citizen = await (await browser.new_context(locale="id-ID")).new_page()
    await citizen.goto(desk.url + "/kartu")
    assert await citizen.locator("h1").inner_text() == "Kartu KSH Anda"
    await citizen.fill("#card_number", desk.number)
    await citizen.fill("#check_code", code.lower())
    await citizen.click("#show")
    await citizen.wait_for_selector("[data-field=balance]")
    balance = await citizen.locator("[data-field=balance]").inner_text()
    assert balance == rupiah(50_000 - fare)
    assert rupiah(fare) in await citizen.locator("[data-table=pending]").inner_text()
    assert "Menunggu kartu Anda" in await citizen.content()
    assert (
        "selesai, dana dikembalikan"
        in await citizen.locator("[data-table=complaints]").inner_text()
    )
    await citizen.screenshot(path="/tmp/ksh-screenshots/kartu.png", full_page=True)
    await citizen.click("a[lang=en]")
    await citizen.fill("#card_number", desk.number)
    await citizen.fill("#check_code", code)
    await citizen.click("#show")
    await citizen.wait_for_selector("[data-field=balance]")
    assert "Waiting for your card" in await citizen.content()
    await citizen.fill("#check_code", "AAAA-AAAA")
    await citizen.click("#show")
    assert "No card with this number and check code." in await citizen.content()
    assert desk.clock.now().astimezone(jakarta).date() == dt.date(2026, 12, 1)


async def test_the_citizen_sees_a_pass_sold_at_the_counter_waiting_then_running(
    desk: Desk, browser: Any
) -> None:
    tariff = await publish_priced_feed(desk)
    status, sold = await call(desk, "POST", f"/admin/v1/cards/{desk.number}/passes", sale("R-1"))
    assert status == 201, sold
    async with desk.pool.acquire() as connection:
        code = (await check_codes.check_codes(connection, [desk.number]))[desk.number]
    citizen = await (await browser.new_context(locale="id-ID")).new_page()

    async def passes_shown() -> list[str]:
        await citizen.goto(desk.url + "/kartu")
        await citizen.fill("#card_number", desk.number)
        await citizen.fill("#check_code", code)
        await citizen.click("#show")
        return await citizen.locator("[data-table=passes] tbody tr td").all_inner_texts()

    assert await passes_shown() == [monthly, "2026-12-01", "Pada tap berikutnya di validator bus"]
    assert await desk.bus.sync.download()
    desk.clock.advance(3600)
    assert tap(desk, tariff) == 0
    await desk.upload()
    assert await passes_shown() == [monthly, "2026-12-01", "2026-12-30"]
    await citizen.screenshot(path="/tmp/ksh-screenshots/kartu-pass.png", full_page=True)
