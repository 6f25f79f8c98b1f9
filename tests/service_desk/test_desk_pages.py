"""The service desk's card pages in a real headless Chromium, checked against the books: a clerk
looks a card up, registers it, blocks it as lost and replaces it (the balance moves only once
the wait is over); on the deny list she asks to lift an automatic fraud entry, which only a
second person, a supervisor, lifts; at the counter she closes her shift with cash missing.
Then, over plain HTTP, what is refused changes nothing: an auditor, a bad card number, a form
without its CSRF token, a change without a reason."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import aiohttp

from gateways import staff
from gateways.terminal_api import counter, registry
from ledger.records import AccountFlags, TransferCode
from settlement import top_up_refunds
from settlement.formatting import rupiah
from tests.service_desk.conftest import Desk, passwords, proxy_header
from tests.settlement.conftest import browser as browser  # the headless Chromium fixture

new_card = "6032984000000902"
suspect_card = "6032984000000903"
nik = "3374012345678901"
ani_token = "desk-pages-token-ani-0001"


async def log_in(browser: Any, url: str, username: str, locale: str = "en-US") -> Any:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900},
        locale=locale,
        extra_http_headers={proxy_header: "192.0.2.50"},
    )
    page = await context.new_page()
    await page.goto(url + "/finance/login")
    await page.fill("#username", username)
    await page.fill("#password", passwords[username])
    await page.click("button[type=submit]")
    await page.wait_for_url(url + "/finance")
    return page


async def message(page: Any) -> str:
    return str(await page.locator("[role=status]").inner_text())


async def balance(desk: Desk, account_id: Any) -> int:
    found = await desk.fetchval(
        "select credits_posted - debits_posted from ledger_accounts where id = $1", account_id
    )
    return 0 if found is None else int(found)


async def staff_actions(desk: Desk, action: str) -> list[tuple[str, str]]:
    async with desk.pool.acquire() as connection:
        rows = await connection.fetch(
            "select username, subject from staff_actions where action = $1 "
            "and detail->>'via' = 'pages' order by action_id",
            action,
        )
    return [(row["username"], row["subject"]) for row in rows]


async def look_up(page: Any, url: str, number: str) -> None:
    await page.click("header a[href='/finance/cards']")
    await page.fill("input[name=number]", number)
    await page.click("button:has-text('Look up')")
    await page.wait_for_url(f"**/finance/cards?number={number}*")


async def test_a_clerk_registers_blocks_and_replaces_a_card(desk: Desk, browser: Any) -> None:
    async with desk.pool.acquire() as connection:
        await registry.issue_cards(connection, {new_card: 0}, now=desk.clock.now())
    purse = await desk.purse()
    assert 0 < purse < 50_000
    page = await log_in(browser, desk.url, "ani")
    await look_up(page, desk.url, desk.number)
    assert await page.locator("[data-tile=holder] .value").inner_text() == "not registered"
    assert await page.locator("[data-tile=cap] .value").inner_text() == rupiah(2_000_000, "en")
    assert await page.locator("[data-tile=books-balance] .value").inner_text() == rupiah(
        purse, "en"
    )

    form = page.locator("[data-form=register]")
    await form.locator("input[name=name]").fill("Siti Rahayu")
    await form.locator("input[name=nik]").fill(nik)
    await form.locator("input[name=phone]").fill("0812 3456 7890")
    await form.locator("input[name=reason]").fill("registered at the counter, KTP seen")
    await form.locator("[data-action=register]").click()
    await page.wait_for_url("**/finance/cards?number=*")
    assert "registered to Siti Rahayu" in await message(page)
    holder = await page.locator("[data-tile=holder] .value").inner_text()
    assert holder == "Siti Rahayu (NIK ****8901)"
    assert await page.locator("[data-tile=cap] .value").inner_text() == rupiah(20_000_000, "en")
    assert (
        await desk.fetchval(
            "select nik_last4 from card_holders where card_number = $1", desk.number
        )
        == "8901"
    )
    assert nik not in await page.content()

    form = page.locator("[data-form=block]")
    await form.locator("select[name=cause]").select_option("lost")
    await form.locator("input[name=reason]").fill("lost on the bus, rider called")
    await form.locator("[data-action=block]").click()
    await page.wait_for_url("**/finance/cards?number=*")
    assert "blocked" in await message(page)
    entry = await desk.fetchval(
        "select row(reason, source, added_by)::text from deny_list where card_number = $1",
        desk.number,
    )
    assert entry == "(lost,staff,ani)"
    assert "lost" in await page.locator("[data-table=deny-history]").inner_text()

    # The new card is issued; the old card's taps may still be on their way for 3 days.
    form = page.locator("[data-form=replace]")
    await form.locator("input[name=new_card_number]").fill(new_card)
    await form.locator("input[name=reason]").fill("replacement for the lost card")
    await form.locator("[data-action=replace]").click()
    await page.wait_for_url("**/finance/cards?number=*")
    assert "its balance moves on 4 Dec 2026 08:00" in await message(page)
    assert await page.locator("[data-action=move-due]").count() == 0
    assert await desk.purse() == purse
    moved = "select count(*) from ledger_transfers where code = $1"
    assert await desk.fetchval(moved, TransferCode.card_replacement) == 0
    await page.screenshot(path="/tmp/ksh-screenshots/desk-card.png", full_page=True)

    desk.clock.advance(3 * 24 * 3600)  # three days later (a new session: 8 hours at most)
    page = await log_in(browser, desk.url, "ani")
    await look_up(page, desk.url, desk.number)
    await page.locator("[data-action=move-due]").click()
    await page.wait_for_url("**/finance/cards?number=*")
    assert f"moved to {new_card}" in await message(page)
    shown = await page.locator("[data-field=replacement]").inner_text()
    assert f"{rupiah(purse, 'en')} from the purse" in shown
    assert await desk.fetchval(moved, TransferCode.card_replacement) == 1
    assert await desk.purse() == 0
    new_pending = registry.pending_top_up_account_id(new_card)
    assert await balance(desk, new_pending) == purse
    flags = await desk.fetchval(
        "select flags from ledger_accounts where id = $1", registry.purse_account_id(desk.number)
    )
    assert flags & AccountFlags.closed
    assert (await desk.books())[1] == 0
    assert [a for a, _ in await staff_actions(desk, "register_card")] == ["ani"]
    for action in ("block_card", "replace_card", "move_card_balance"):
        assert await staff_actions(desk, action) == [("ani", desk.number)], action

    # The new card's page says whom it replaces; the holder came with it.
    await look_up(page, desk.url, new_card)
    assert desk.number in await page.locator("[data-tile=replacement] .value").inner_text()
    assert "Siti Rahayu" in await page.locator("[data-tile=holder] .value").inner_text()


async def test_a_fraud_lift_takes_a_second_person_and_a_shift_closes_short(
    desk: Desk, browser: Any
) -> None:
    async with desk.pool.acquire() as connection:
        await registry.issue_cards(connection, {new_card: 0, suspect_card: 0}, now=desk.clock.now())
        await registry.deny_cards(
            connection,
            [desk.number],
            "lost",
            source=registry.DenySource.staff,
            username="budi",
            note="lost",
            now=desk.clock.now(),
        )
        desk.clock.advance(300)
        await registry.deny_cards(
            connection, [suspect_card], "counter_repeat", now=desk.clock.now()
        )
        desk.clock.advance(300)
        await registry.deny_cards(connection, [new_card], "balance_mismatch", now=desk.clock.now())
        await connection.execute(
            "insert into deny_list_changes (card_number, change, reason, source, username, note, at) "
            "values ($1, 'reviewed', 'balance_mismatch', 'staff', 'budi', 'seen', $2)",
            new_card,
            desk.clock.now(),
        )
    page = await log_in(browser, desk.url, "ani")
    await page.click("header a[href='/finance/deny-list']")
    rows = page.locator("[data-table=deny-list] tbody tr")
    # The automatic entry nobody reviewed first, though the other two are newer or older.
    assert await rows.nth(0).get_attribute("data-card") == suspect_card
    assert await rows.nth(0).get_attribute("data-unreviewed") == "1"
    assert await rows.count() == 3
    assert await page.locator("[data-unreviewed]").count() == 1

    row = page.locator(f"tr[data-card='{suspect_card}']")
    await row.locator("form:has([data-action=lift]) input[name=reason]").fill(
        "the rider's own second tap"
    )
    assert await row.locator("[data-action=lift]").inner_text() == "Ask to lift"
    await row.locator("[data-action=lift]").click()
    await page.wait_for_url("**/finance/deny-list?*")
    assert "a supervisor other than you lifts it" in await message(page)
    denied = "select count(*) from deny_list where card_number = $1"
    assert await desk.fetchval(denied, suspect_card) == 1
    # Asking twice does not make it two people.
    row = page.locator(f"tr[data-card='{suspect_card}']")
    assert "Lift asked by ani" in await row.inner_text()
    await row.locator("form:has([data-action=lift]) input[name=reason]").fill("really")
    await row.locator("[data-action=lift]").click()
    await page.wait_for_url("**/finance/deny-list?*")
    assert "Refused, nothing was changed" in await message(page)
    assert await desk.fetchval(denied, suspect_card) == 1
    await page.screenshot(path="/tmp/ksh-screenshots/desk-deny-list.png", full_page=True)

    # A supervisor, in Bahasa Indonesia, lifts it.
    budi = await log_in(browser, desk.url, "budi", locale="id-ID")
    assert await budi.locator("header a[href='/finance/deny-list']").inner_text() == "Daftar tolak"
    await budi.click("header a[href='/finance/deny-list']")
    row = budi.locator(f"tr[data-card='{suspect_card}']")
    await row.locator("form:has([data-action=lift]) input[name=reason]").fill("checked the log")
    await row.locator("[data-action=lift]").click()
    await budi.wait_for_url("**/finance/deny-list?*")
    assert "dicabut" in await message(budi)
    assert await desk.fetchval(denied, suspect_card) == 0
    async with desk.pool.acquire() as connection:
        changes = await connection.fetch(
            "select change, username from deny_list_changes where card_number = $1 "
            "order by change_id",
            suspect_card,
        )
    assert [tuple(change) for change in changes] == [
        ("added", ""),
        ("lift_requested", "ani"),
        ("lifted", "budi"),
    ]

    # Ani took Rp 20,000 in cash for a card (`ksh counter top-up` books it from her drawer).
    async with desk.pool.acquire() as connection:
        await staff.issue_token(
            connection,
            staff.StaffMember("ani", staff.Role.clerk),
            issued_by="tests",
            now=desk.clock.now(),
            token=ani_token,
        )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            desk.url + "/admin/v1/pending-top-ups",
            json={
                "card_number": suspect_card,
                "top_up_id": "CTR-DESK-1",
                "amount_rupiah": 20_000,
                "source": "drawer",
                "reason": "cash at the counter",
            },
            headers={"Authorization": f"Bearer {ani_token}"},
        ) as answer,
    ):
        assert answer.status == 201, await answer.text()
    await page.click("header a[href='/finance/counter']")
    assert await page.locator("[data-tile=drawer] .value").inner_text() == rupiah(20_000, "en")
    movements = await page.locator("[data-table=movements]").inner_text()
    assert "CTR-DESK-1" in movements and "cash top-up for a card" in movements
    form = page.locator("[data-form=close-shift]")
    shift_id = await form.locator("input[name=shift_id]").input_value()
    assert shift_id == "2026-12-01-1"
    await form.locator("input[name=counted_rupiah]").fill("15,000")
    await form.locator("[data-action=close-shift]").click()
    await page.wait_for_url("**/finance/counter?*")
    assert f"short {rupiah(5_000, 'en')}" in await message(page)
    await page.screenshot(path="/tmp/ksh-screenshots/desk-counter.png", full_page=True)
    async with desk.pool.acquire() as connection:
        closed = await connection.fetchrow(
            "select expected_rupiah, counted_rupiah, closed_by from counter_shifts "
            "where cashier = 'ani' and shift_id = $1",
            shift_id,
        )
        drawer = await counter.drawer_rupiah(connection, "ani")
    assert tuple(closed) == (20_000, 15_000, "ani")
    assert drawer == 0
    assert await balance(desk, counter.differences_account_id) == -5_000  # debited: missing
    assert (await desk.books())[1] == 0
    assert await staff_actions(desk, "close_shift") == [("ani", "ani")]
    assert await page.locator("[data-tile=drawer] .value").inner_text() == rupiah(0, "en")
    assert await page.locator("[data-tile=movements] .value").inner_text() == "0"
    next_shift = page.locator("[data-form=close-shift] input[name=shift_id]")
    assert await next_shift.input_value() == "2026-12-01-2"


# ---------------------------------------------------------------------------- refusals


class Staffer:
    """One staff member's own HTTP client, logged in: the session cookie and its CSRF token."""

    def __init__(self, http: aiohttp.ClientSession, url: str, csrf: str) -> None:
        self.http, self.url, self.csrf = http, url, csrf

    async def post(self, path: str, form: dict[str, str], *, csrf: bool = True) -> tuple[int, str]:
        data = {**form, **({"csrf": self.csrf} if csrf else {})}
        async with self.http.post(self.url + path, data=data, allow_redirects=False) as answer:
            where = answer.headers.get("Location", "")
            return answer.status, where if answer.status == 303 else await answer.text()


async def staffer(http: aiohttp.ClientSession, url: str, username: str) -> Staffer:
    async with http.get(url + "/finance/login") as form:
        token = re.search(r'name="csrf" value="([^"]+)"', await form.text())
    assert token is not None
    async with http.post(
        url + "/finance/login",
        data={"csrf": token[1], "username": username, "password": passwords[username]},
        allow_redirects=False,
    ) as answer:
        assert answer.headers["Location"] == "/finance", answer.headers["Location"]
    async with http.get(url + "/finance/counter") as page:
        text = await page.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', text)
    assert csrf is not None
    return Staffer(http, url, csrf[1])


async def unchanged(desk: Desk) -> tuple[Any, ...]:
    return (
        await desk.books(),
        await desk.fetchval("select count(*) from deny_list"),
        await desk.fetchval("select count(*) from deny_list_changes"),
        await desk.fetchval("select count(*) from card_holders"),
        await desk.fetchval("select count(*) from counter_shifts"),
        await desk.fetchval("select count(*) from staff_actions"),
    )


def session_for(url: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        headers={proxy_header: "192.0.2.60", "Accept-Language": "en"},
    )


async def test_what_the_desk_pages_refuse_changes_nothing(desk: Desk) -> None:
    before = await unchanged(desk)
    block = {"card_number": desk.number, "cause": "lost", "reason": "lost"}
    async with session_for(desk.url) as http:
        citra = await staffer(http, desk.url, "citra")
        status, text = await citra.post("/finance/cards/block", block)
        assert status == 403 and "Your role may not do this" in text
        for path in ("/finance/counter/close-shift", "/finance/deny-list/lift"):
            assert (await citra.post(path, {"reason": "x", "counted_rupiah": "0"}))[0] == 403
        async with http.get(desk.url + f"/finance/cards?number={desk.number}") as page:
            read = await page.text()
        assert page.status == 200 and 'action="/finance/cards/' not in read  # reads, no forms
    async with session_for(desk.url) as http:
        ani = await staffer(http, desk.url, "ani")
        status, text = await ani.post("/finance/cards/block", block, csrf=False)
        assert status == 403 and "CSRF token missing" in text
        status, where = await ani.post("/finance/cards/block", {**block, "card_number": "60x2"})
        assert status == 303
        assert "card_number must be 8 to 19 digits" in urllib_unquote(where)
        assert "number=60x2" in where
        status, where = await ani.post("/finance/cards/block", {**block, "cause": "bored"})
        assert "cause is lost | stolen | damaged | fraud" in urllib_unquote(where)
        status, where = await ani.post("/finance/cards/block", {**block, "reason": " "})
        assert "Say why" in urllib_unquote(where)
        status, where = await ani.post(
            "/finance/cards/block", {**block, "card_number": "6032984000009999"}
        )
        assert "was never issued" in urllib_unquote(where)
        for counted in ("12.5", "150.000,50", "-1", "99999999999"):
            status, where = await ani.post(
                "/finance/counter/close-shift",
                {"shift_id": "S-1", "counted_rupiah": counted, "reason": "end"},
            )
            assert "whole rupiah" in urllib_unquote(where), counted
        status, where = await ani.post(
            "/finance/cards/register",
            {
                "card_number": desk.number,
                "name": "Siti",
                "nik": "123",
                "phone": "0812345678",
                "reason": "r",
            },
        )
        assert "nik is the 16-digit national ID number" in urllib_unquote(where)
        status, where = await ani.post(
            "/finance/counter/refund-paid", {"top_up_id": "NOPE", "note": "paid"}
        )
        assert "no refund of top-up NOPE" in urllib_unquote(where)
    assert await unchanged(desk) == before


def urllib_unquote(where: str) -> str:
    import urllib.parse

    return urllib.parse.unquote_plus(where)


async def refund_due(desk: Desk, top_up_id: str, rupiah: int) -> None:
    """A counter top-up of 100 days ago no card took, on the refund-due list now."""
    async with desk.pool.acquire() as connection:
        paid_at = desk.clock.now() - dt.timedelta(days=100)
        await registry.pay_pending_top_up(
            connection, top_up_id, desk.number, rupiah, paid_at=paid_at
        )
        [refund] = await top_up_refunds.expire_top_ups(
            connection,
            now=desk.clock.now(),
            older_than=dt.timedelta(days=90),
            who="budi",
            wait=dt.timedelta(0),
        )
    assert (refund.top_up_id, refund.state) == (top_up_id, "due")


async def test_a_refund_due_is_paid_at_the_counter_once(desk: Desk) -> None:
    """A top-up no card took in 90 days is on the refund-due list; the clerk marks it paid:
    refund payable -> the counter's cash, once."""
    await refund_due(desk, "COUNTER-OLD-1", 7_500)
    cash = counter.drawer_account_id("ani")  # paid out of her drawer: her close expects less
    cash_before = await balance(desk, cash)
    async with session_for(desk.url) as http:
        ani = await staffer(http, desk.url, "ani")
        async with http.get(desk.url + "/finance/counter") as page:
            assert 'data-top-up="COUNTER-OLD-1"' in await page.text()
        paid = {"top_up_id": "COUNTER-OLD-1", "note": "paid to Ibu Sri, receipt 17"}
        _, where = await ani.post("/finance/counter/refund-paid", paid)
        assert "Refund of top-up COUNTER-OLD-1 paid: Rp 7,500" in urllib_unquote(where)
        before = await unchanged(desk)
        _, where = await ani.post("/finance/counter/refund-paid", paid)
        assert "is paid_cash, not due" in urllib_unquote(where)
        assert await unchanged(desk) == before
    assert await balance(desk, cash) == cash_before + 7_500  # out of the drawer
    state = "select row(state, paid_by, note)::text from top_up_refunds where top_up_id = $1"
    assert (
        await desk.fetchval(state, "COUNTER-OLD-1")
        == '(paid_cash,ani,"paid to Ibu Sri, receipt 17")'
    )
    assert await staff_actions(desk, "top_up_refund_paid") == [("ani", "COUNTER-OLD-1")]
    assert (await desk.books())[1] == 0


async def test_a_refund_due_above_the_limit_takes_a_supervisor_and_a_second_person(
    desk: Desk,
) -> None:
    """Above the desk's refund limit (Rp 10,000 here) the counter page says the refund waits,
    offers the approval to a supervisor only, and the supervisor who approved cannot pay it
    out; a clerk then can. Each refusal changes nothing."""
    await refund_due(desk, "COUNTER-BIG-1", 12_500)
    paid = {"top_up_id": "COUNTER-BIG-1", "note": "paid to Ibu Sri, receipt 18"}
    async with session_for(desk.url) as http:
        ani = await staffer(http, desk.url, "ani")
        async with http.get(desk.url + "/finance/counter") as page:
            text = await page.text()
        assert 'data-waits="approval"' in text
        assert 'data-action="refund-approve"' not in text  # a clerk does not approve
        assert 'data-action="refund-paid"' not in text
        before = await unchanged(desk)
        _, where = await ani.post("/finance/counter/refund-paid", paid)
        assert "above the Rp 10,000 limit" in urllib_unquote(where)
        status, _ = await ani.post(
            "/finance/counter/refund-approve", {"top_up_id": "COUNTER-BIG-1", "reason": "ok"}
        )
        assert status == 403
        assert await unchanged(desk) == before
    async with session_for(desk.url) as http:
        budi = await staffer(http, desk.url, "budi")
        async with http.get(desk.url + "/finance/counter") as page:
            assert 'data-action="refund-approve"' in await page.text()
        approval = {"top_up_id": "COUNTER-BIG-1", "reason": "payer's KTP and receipt checked"}
        _, where = await budi.post("/finance/counter/refund-approve", approval)
        assert "approved (Rp 12,500): someone else pays it out" in urllib_unquote(where)
        async with http.get(desk.url + "/finance/counter") as page:
            assert 'data-approved-by="budi"' in await page.text()
        before = await unchanged(desk)
        _, where = await budi.post("/finance/counter/refund-paid", paid)
        assert "budi approved the refund of top-up COUNTER-BIG-1" in urllib_unquote(where)
        assert await unchanged(desk) == before
    async with session_for(desk.url) as http:
        ani = await staffer(http, desk.url, "ani")
        _, where = await ani.post("/finance/counter/refund-paid", paid)
        assert "Refund of top-up COUNTER-BIG-1 paid: Rp 12,500" in urllib_unquote(where)
    assert await staff_actions(desk, "top_up_refund_approved") == [("budi", "COUNTER-BIG-1")]
    assert await staff_actions(desk, "top_up_refund_paid") == [("ani", "COUNTER-BIG-1")]
    assert (await desk.books())[1] == 0


async def test_a_pass_is_granted_and_an_automatic_entry_reviewed(desk: Desk) -> None:
    async with desk.pool.acquire() as connection:
        await registry.deny_cards(
            connection, [suspect_card], "counter_repeat", now=desk.clock.now()
        )
    async with session_for(desk.url) as http:
        ani = await staffer(http, desk.url, "ani")
        async with http.get(desk.url + f"/finance/cards?number={desk.number}") as page:
            options = re.findall(r'<option value="(student_[a-z_]+)"', await page.text())
        assert options == ["student_ecard_pelajar", "student_ecard_mahasiswa"]
        grant = {"card_number": desk.number, "reason": "school letter seen"}
        before = await unchanged(desk)
        _, where = await ani.post("/finance/cards/pass", {**grant, "fare_pass_id": "monthly"})
        assert "no pass 'monthly' in the fare feed" in urllib_unquote(where)
        assert await unchanged(desk) == before
        _, where = await ani.post(
            "/finance/cards/pass", {**grant, "fare_pass_id": "student_ecard_pelajar"}
        )
        assert "Pass student_ecard_pelajar granted" in urllib_unquote(where)
        review = {"card_number": suspect_card, "reason": "two taps at one gate: a clone"}
        _, where = await ani.post("/finance/deny-list/review", review)
        assert "stays on the deny list" in urllib_unquote(where)
    granted = "select row(fare_pass_id, amount_rupiah, sold_by)::text from pending_passes"
    assert await desk.fetchval(granted) == "(student_ecard_pelajar,0,ani)"
    reviewed = "select username from deny_list_changes where change = 'reviewed'"
    assert await desk.fetchval(reviewed) == "ani"
    assert await staff_actions(desk, "grant_pass") == [("ani", desk.number)]
    assert await staff_actions(desk, "review_deny_entry") == [("ani", suspect_card)]
