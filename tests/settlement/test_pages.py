"""The finance pages in a real headless Chromium: login, roles enforced, CSRF, and working an
exception end to end (a clerk's write-off above the limit, approved by a supervisor)."""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateways.backoffice import BackofficeConfig, create_app
from gateways.snap.client import BankClient
from ksh.commands.demo import start
from ledger.clock import ManualClock
from settlement import end_of_day, logins, pages, reconciliation
from settlement.actions import Role
from settlement.statements import Direction, StatementLine, write_mt940
from tests.settlement.conftest import BankHarness, operator_account
from tests.settlement.day import bank, book_day, closing_time, our_account, service_day

passwords = {
    "ani": "clerk-password-1",
    "budi": "supervisor-password-1",
    "citra": "auditor-password-1",
}
screenshots = Path(os.environ.get("KSH_SCREENSHOTS", "/tmp/ksh-screenshots"))


@pytest.fixture
async def finance(
    database_url: str, tmp_path: Path, bank_harness: BankHarness
) -> AsyncIterator[str]:
    """The back office with the finance pages, staff in three roles, and a day with three
    exceptions: the operator's payout refused by the bank, a small unexpected fee on the
    statement, and a large VA payment for no card."""
    connection = await asyncpg.connect(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        for username, role in (
            ("ani", Role.clerk),
            ("budi", Role.supervisor),
            ("citra", Role.auditor),
        ):
            await pages.add_staff(connection, username, passwords[username], role)
        day = await book_day(connection)
        config = end_of_day.EndOfDayConfig(source_bank=bank, source_account_no=our_account)
        await end_of_day.close_day(connection, service_day, config, now=closing_time)
        await end_of_day.register_parties(
            connection,
            [("operator", "trans-semarang", "BLU UPTD Trans Semarang", "", operator_account)]
            + [("merchant", f"M{n:03d}", f"Toko {n}", "", f"77{n:08d}") for n in range(1, 3)]
            + [("merchant", "M000", "Toko 0", "113", "0987654321")],
        )
        bank_harness.bank.trouble.reject_accounts = {operator_account}
        now = bank_harness.clock.local_now()
        await end_of_day.pay_day(pool, service_day, bank_harness.client, config, "eod", now)
        bank_harness.bank.trouble.reject_accounts = set()
        lines = [
            StatementLine(
                bank,
                our_account,
                service_day,
                amount,
                Direction.credit,
                request_id,
                f"B{n}",
                "NTRF",
                f"VA PAYMENT {request_id}",
                "s.sta",
                n + 1,
            )
            for n, (request_id, amount) in enumerate(day.collections)
        ]
        lines.append(
            StatementLine(
                bank,
                our_account,
                service_day,
                6_500,
                Direction.debit,
                "",
                "B90",
                "NCHG",
                "BIAYA ADMIN BULANAN",
                "s.sta",
                90,
            )
        )
        lines.append(
            StatementLine(
                bank,
                our_account,
                service_day,
                2_000_000,
                Direction.credit,
                "PR99999999",
                "B91",
                "NTRF",
                "VA PAYMENT 8800199999",
                "s.sta",
                91,
            )
        )
        path = tmp_path / "statement.sta"
        path.write_text(write_mt940(lines, our_account, "S1", 0))
        await reconciliation.import_statement(connection, path, bank, "ani")
        start_at = dt.datetime.combine(service_day, dt.time(0), tzinfo=end_of_day.jakarta)
        await reconciliation.expect_collections(
            connection,
            start_at,
            end_of_day.cutoff_at(service_day, config),
            service_day,
            {},
            our_account,
        )
        await reconciliation.reconcile(connection, now=closing_time)
    finally:
        await pool.close()
        await connection.close()

    def payer_factory(http: aiohttp.ClientSession) -> end_of_day.PayoutPort:
        return BankClient.open(bank_harness.connection, http)

    settings = pages.PagesSettings(
        end_of_day=config, write_off_limit_rupiah=1_000_000, payer_factory=payer_factory
    )
    app = create_app(
        BackofficeConfig(database_url, pool_connections_min=1, pool_connections_max=4),
        [pages.extension(settings)],
    )
    runner, base_url = await start(app)
    try:
        yield base_url
    finally:
        await runner.cleanup()


async def log_in(browser: object, base_url: str, username: str) -> object:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = await context.new_page()
    await page.goto(base_url + "/finance")
    assert page.url.startswith(base_url + "/finance/login")
    await page.fill("#username", username)
    await page.fill("#password", passwords[username])
    await page.click("button[type=submit]")
    await page.wait_for_url(base_url + "/finance")
    return page


@pytest.mark.browser
async def test_login_roles_and_working_an_exception(finance: str, browser: object) -> None:
    screenshots.mkdir(parents=True, exist_ok=True)
    # A wrong password gets nowhere.
    context = await browser.new_context()  # type: ignore[attr-defined]
    page = await context.new_page()
    await page.goto(finance + "/finance/login")
    await page.fill("#username", "ani")
    await page.fill("#password", "not-her-password")
    await page.click("button[type=submit]")
    assert "wrong user name or password" in await page.content()
    await context.close()

    # The auditor reads everything and has no buttons; a forged POST is refused.
    auditor = await log_in(browser, finance, "citra")
    await auditor.screenshot(path=str(screenshots / "overview.png"), full_page=True)
    await auditor.goto(finance + "/finance/exceptions")
    rows = auditor.locator("tr[data-exception]")
    assert await rows.count() == 3
    assert await auditor.locator("button.action:has-text('Write off')").count() == 0
    forged = await auditor.request.post(
        finance + "/finance/exceptions/action",
        form={"exception_id": "x", "action": "write-off", "note": "n", "csrf": "x"},
    )
    assert forged.status == 403

    # The clerk writes off the small fee at once; the big unknown VA waits for a supervisor.
    clerk = await log_in(browser, finance, "ani")
    await clerk.goto(finance + "/finance/exceptions")
    fee_row = clerk.locator("tr[data-exception]", has_text="unexpected_fee")
    await fee_row.locator("input[name=note]").fill("monthly admin fee; claimed from the bank")
    await fee_row.locator("button:has-text('Write off')").click()
    await clerk.wait_for_load_state()
    assert "done" in await clerk.locator(".message").inner_text()
    unknown_row = clerk.locator("tr[data-exception]", has_text="unknown_reference")
    await unknown_row.locator("input[name=note]").fill("no card for this VA; refund to payer")
    await unknown_row.locator("button:has-text('Write off')").click()
    await clerk.wait_for_load_state()
    assert "supervisor must approve" in await clerk.locator(".message").inner_text()
    assert await clerk.locator("button:has-text('Approve')").count() == 0
    # Without the CSRF token, even the clerk's own session is refused.
    no_csrf = await clerk.request.post(
        finance + "/finance/exceptions/action", form={"exception_id": "x", "action": "approve"}
    )
    assert no_csrf.status == 403

    # The clerk re-initiates the refused payout (the operator's account was reactivated).
    payout_row = clerk.locator("tr[data-exception]", has_text="payout_rejected")
    await payout_row.locator("input[name=note]").fill("operator reactivated its account")
    await payout_row.locator("button:has-text('Re-initiate')").click()
    await clerk.wait_for_load_state()
    assert "done" in await clerk.locator(".message").inner_text()

    supervisor = await log_in(browser, finance, "budi")
    await supervisor.goto(finance + "/finance/exceptions")
    await supervisor.screenshot(path=str(screenshots / "exceptions.png"), full_page=True)
    await supervisor.locator("button:has-text('Approve write-off')").click()
    await supervisor.wait_for_load_state()
    assert "done" in await supervisor.locator(".message").inner_text()
    assert "Nothing to work on" in await supervisor.content()
    await supervisor.goto(finance + "/finance/exceptions?all=1")
    assert "approved by budi" in await supervisor.content()
    assert "new attempt P" in await supervisor.content()

    # Batches, exports and the overview render for the day.
    await supervisor.goto(finance + f"/finance/batches?day={service_day.isoformat()}")
    batches_html = await supervisor.content()
    assert "B261123" in batches_html
    assert "01 failed, P" in batches_html and "02 succeeded" in batches_html  # paid on attempt 2
    assert "held in quarantine: nothing" in batches_html  # no upload was held that day
    await supervisor.screenshot(path=str(screenshots / "batches.png"), full_page=True)
    csv_export = await supervisor.request.get(
        finance + f"/finance/batches.csv?day={service_day.isoformat()}"
    )
    assert (await csv_export.text()).startswith("batch_id,")
    pdf_export = await supervisor.request.get(
        finance + f"/finance/batches.pdf?day={service_day.isoformat()}"
    )
    assert (await pdf_export.body()).startswith(b"%PDF")
    await supervisor.goto(finance + f"/finance?day={service_day.isoformat()}")
    assert await supervisor.locator("svg.chart").count() == 2

    # Logging out ends the session.
    await supervisor.click("header button:has-text('Log out')")
    await supervisor.goto(finance + "/finance/exceptions")
    assert "/finance/login" in supervisor.url


async def test_pages_need_login(finance: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(finance + "/finance/exceptions", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith("/finance/login")
        async with http.post(
            finance + "/finance/login",
            data={"username": "ani", "password": "x"},
            allow_redirects=False,
        ) as response:
            assert response.status == 403  # no login CSRF cookie


def test_password_hashing() -> None:
    stored = pages.hash_password("correct horse battery")
    assert stored.startswith("scrypt$")
    assert pages.verify_password("correct horse battery", stored)
    assert not pages.verify_password("correct horse battery!", stored)
    assert not pages.verify_password("x", "md5$abc")


def test_exports_do_not_carry_formulas() -> None:
    assert (
        pages.spreadsheet_safe('=HYPERLINK("http://x","pay")') == '\'=HYPERLINK("http://x","pay")'
    )
    assert pages.spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)"
    assert pages.spreadsheet_safe("VA PAYMENT 8800161") == "VA PAYMENT 8800161"
    assert pages.spreadsheet_safe(150_000) == 150_000
    response = pages.csv_response(("detail",), [{"detail": "+62 811"}], "x.csv")  # type: ignore[list-item]
    assert response.text == "detail\n'+62 811\n"


def test_passwords_are_salted_scrypt_and_damaged_hashes_refuse() -> None:
    stored = pages.hash_password("clerk-password-1")
    assert stored.startswith("scrypt$")
    assert stored != pages.hash_password("clerk-password-1")  # salted
    assert pages.verify_password("clerk-password-1", stored)
    assert not pages.verify_password("clerk-password-2", stored)
    for damaged in ("", "scrypt$16384$8$1$not-hex$00", "scrypt$x$8$1$00$00", "md5$1$2$3$4$5"):
        assert not pages.verify_password("clerk-password-1", damaged)


async def test_guessing_a_password_locks_the_user_name(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await pages.add_staff(connection, "ani", passwords["ani"], Role.clerk)
    finally:
        await connection.close()
    clock = ManualClock(closing_time)
    app = create_app(
        BackofficeConfig(database_url, pool_connections_min=1, pool_connections_max=2, clock=clock),
        [pages.extension(pages.PagesSettings())],
    )
    runner, base_url = await start(app)
    try:
        # unsafe: keep cookies from an IP address (the server is on 127.0.0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:

            async def log_in(password: str) -> str:
                async with http.get(base_url + "/finance/login") as form:
                    text = await form.text()
                token = text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
                async with http.post(
                    base_url + "/finance/login",
                    data={"csrf": token, "username": "ani", "password": password},
                    allow_redirects=False,
                ) as answer:
                    assert answer.status == 303
                    return urllib.parse.unquote(answer.headers["Location"])

            assert (await log_in(passwords["ani"])) == "/finance"
            limits = logins.LoginLimits()
            for _ in range(limits.user_attempts_max):
                assert "wrong user name or password" in await log_in("guess-guess-guess")
            assert "too many wrong passwords" in await log_in(passwords["ani"])
            clock.advance(limits.window_seconds - 1)
            assert "too many wrong passwords" in await log_in(passwords["ani"])
            clock.advance(1)  # the failures are now as old as the window: forgotten
            assert (await log_in(passwords["ani"])) == "/finance"
    finally:
        await runner.cleanup()
