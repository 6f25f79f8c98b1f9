"""The finance pages in a real headless Chromium: login, roles enforced, CSRF, working an
exception end to end (a clerk's write-off above the limit, approved by a supervisor), the
pages in Indonesian and English, and a manual match picked from the lists."""

from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
import zlib
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

    settings = pages.PagesSettings(end_of_day=config, payer_factory=payer_factory)
    app = create_app(
        BackofficeConfig(database_url, pool_connections_min=1, pool_connections_max=4),
        [pages.extension(settings)],
    )
    runner, base_url = await start(app)
    try:
        yield base_url
    finally:
        await runner.cleanup()


async def log_in(browser: object, base_url: str, username: str, locale: str = "en-US") -> object:
    """A new browser whose Accept-Language is `locale`, logged in as `username`."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, locale=locale)  # type: ignore[attr-defined]
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
    fee_row = clerk.locator("tr[data-exception]:has([data-reason=unexpected_fee])")
    await fee_row.locator("input[name=note]").fill("monthly admin fee; claimed from the bank")
    await fee_row.locator("button:has-text('Write off')").click()
    await clerk.wait_for_load_state()
    assert "done" in await clerk.locator(".message").inner_text()
    unknown_row = clerk.locator("tr[data-exception]:has([data-reason=unknown_reference])")
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
    payout_row = clerk.locator("tr[data-exception]:has([data-reason=payout_rejected])")
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
    # A bare request (no Accept-Language, no language cookie) gets the default: Indonesian.
    assert (await csv_export.text()).startswith("Batch,Hari layanan,Jenis pihak,")
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


def chart_values(svg: str) -> list[int]:
    """The values of a chart's bars, from their tooltips ("09: 24 tap")."""
    return [
        int(title.split(": ", 1)[1].split(" ")[0].replace(".", "").replace(",", ""))
        for title in re.findall(r"<title>([^<]*)</title>", svg)
    ]


def pdf_text(pdf: bytes) -> str:
    """The page content of a PDF as fpdf2 writes it (zlib streams of text operators)."""
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S)
    return b"".join(zlib.decompress(stream) for stream in streams).decode("latin-1")


@pytest.mark.browser
async def test_indonesian_by_default_english_by_choice(finance: str, browser: object) -> None:
    # A browser asking for Indonesian: every page, message and heading in Indonesian.
    context = await browser.new_context(locale="id-ID")  # type: ignore[attr-defined]
    page = await context.new_page()
    await page.goto(finance + "/finance/login")
    assert await page.locator("html").get_attribute("lang") == "id"
    assert await page.locator("button[type=submit]").inner_text() == "Masuk"
    await page.fill("#username", "budi")
    await page.fill("#password", "not-his-password")
    await page.click("button[type=submit]")
    assert "nama pengguna atau kata sandi salah" in await page.locator(".message").inner_text()
    await context.close()

    page = await log_in(browser, finance, "budi", locale="id-ID")
    await page.goto(finance + f"/finance?day={service_day.isoformat()}")
    assert await page.locator("h1").inner_text() == "Ikhtisar 23 Nov 2026"
    assert await page.locator("header").get_by_text("Pengecualian").count() == 1
    # The chart beside the tiles counts the same fares (the test day has no terminal records;
    # the chart once said "no data" beside 24 taps).
    assert await page.locator("[data-tile=taps] .value").inner_text() == "24"
    fares = await page.locator("[data-tile=fare-revenue] .value").inner_text()
    assert fares == "Rp 84.000"
    taps_chart, corridors_chart = [
        await chart.evaluate("node => node.outerHTML")
        for chart in await page.locator("svg.chart").all()
    ]
    assert 'aria-label="Tap per jam"' in taps_chart and "tidak ada data" not in taps_chart
    assert sum(chart_values(taps_chart)) == 24
    assert sum(chart_values(corridors_chart)) == 84_000
    await page.screenshot(path=str(screenshots / "overview-id.png"), full_page=True)
    await page.goto(finance + "/finance/exceptions")
    assert await page.locator("h1").inner_text() == "Pengecualian"
    assert "Pencocokan manual" in await page.content()
    assert (
        "Rp 2.000.000"
        in await page.locator(
            "tr[data-exception]:has([data-reason=unknown_reference])"
        ).inner_text()
    )
    export = await page.request.get(finance + f"/finance/batches.csv?day={service_day.isoformat()}")
    assert (await export.text()).startswith("Batch,Hari layanan,")
    report = await page.request.get(finance + f"/finance/batches.pdf?day={service_day.isoformat()}")
    text = pdf_text(await report.body())
    assert "batch penyelesaian, hari layanan 23 Nov 2026" in text and "(Bruto)" in text

    # The switch on the page: English, remembered (the browser still asks for Indonesian).
    await page.click("header [data-language=en]")
    await page.wait_for_url(finance + "/finance/exceptions")
    assert await page.locator("h1").inner_text() == "Exceptions"
    assert (
        "Rp 2,000,000"
        in await page.locator(
            "tr[data-exception]:has([data-reason=unknown_reference])"
        ).inner_text()
    )
    await page.goto(finance + f"/finance?day={service_day.isoformat()}")
    assert await page.locator("h1").inner_text() == "Overview 23 Nov 2026"
    assert await page.locator("[data-tile=fare-revenue] .value").inner_text() == "Rp 84,000"
    export = await page.request.get(finance + f"/finance/batches.csv?day={service_day.isoformat()}")
    assert (await export.text()).startswith("Batch,Service day,Party kind,")
    report = await page.request.get(finance + f"/finance/batches.pdf?day={service_day.isoformat()}")
    text = pdf_text(await report.body())
    assert "settlement batches, service day 23 Nov 2026" in text and "(Gross)" in text
    await page.click("header button:has-text('Log out')")
    assert "logged out" in await page.locator(".message").inner_text()
    # And back to Indonesian.
    await page.click("header [data-language=id]")
    await page.wait_for_url("**/finance/login*")
    assert await page.locator("button[type=submit]").inner_text() == "Masuk"


@pytest.fixture
async def unmatched(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """The back office with a clerk, and a day whose statement has two collections the bank
    credited under garbled references: 110.000 (the movement expected for VAPAY00000001) and
    109.000 (nothing expected). Yields (base URL, database URL)."""
    connection = await asyncpg.connect(database_url)
    try:
        await pages.add_staff(connection, "ani", passwords["ani"], Role.clerk)
        day = await book_day(connection, cards=2, merchants=1)
        (first_id, first_amount), (_, second_amount) = day.collections
        lines = [
            StatementLine(
                bank,
                our_account,
                service_day,
                amount,
                Direction.credit,
                reference,
                f"B{n}",
                "NTRF",
                description,
                "g.sta",
                n,
            )
            for n, (amount, reference, description) in enumerate(
                [
                    (first_amount, first_id, "VA"),
                    (second_amount, "GARBLED", "VA ???"),
                    (second_amount - 1_000, "TYPO", "VA ?!"),
                ],
                start=1,
            )
        ]
        path = tmp_path / "g.sta"
        path.write_text(write_mt940(lines, our_account, "G", 0))
        await reconciliation.import_statement(connection, path, bank, "ani")
        config = end_of_day.EndOfDayConfig(source_bank=bank, source_account_no=our_account)
        await reconciliation.expect_collections(
            connection,
            dt.datetime.combine(service_day, dt.time(0), tzinfo=end_of_day.jakarta),
            end_of_day.cutoff_at(service_day, config),
            service_day,
            {},
            our_account,
        )
        await reconciliation.reconcile(connection, now=closing_time)
    finally:
        await connection.close()
    app = create_app(
        BackofficeConfig(database_url, pool_connections_min=1, pool_connections_max=2),
        [pages.extension(pages.PagesSettings())],
    )
    runner, base_url = await start(app)
    try:
        yield base_url, database_url
    finally:
        await runner.cleanup()


@pytest.mark.browser
async def test_a_manual_match_picked_from_the_lists(
    unmatched: tuple[str, str], browser: object
) -> None:
    base_url, database_url = unmatched
    clerk = await log_in(browser, base_url, "ani", locale="id-ID")
    await clerk.goto(base_url + "/finance/exceptions")
    lines = clerk.locator("form[data-form=manual-match] tr[data-line]")
    movements = clerk.locator("form[data-form=manual-match] tr[data-movement]")
    assert await lines.count() == 2 and await movements.count() == 1
    typo_key = await lines.filter(has_text="TYPO").get_attribute("data-line")
    assert typo_key
    # The wrong line first: the page says by how much the sides differ and offers no confirm.
    await lines.filter(has_text="TYPO").locator("input[type=checkbox]").check()
    await movements.first.locator("input[type=checkbox]").check()
    await clerk.screenshot(path=str(screenshots / "manual-match-lists.png"), full_page=True)
    await clerk.click("[data-action=review-match]")
    await clerk.wait_for_url(base_url + "/finance/match")
    assert await clerk.locator(".message.warning").inner_text() == (
        "jumlah berselisih Rp 1.000: mutasi yang diharapkan lebih besar"
    )
    assert await clerk.locator("[data-action=confirm-match]").count() == 0
    # Back to the lists with the picks kept; the right line instead.
    await clerk.click("text=Kembali ke daftar")
    assert await lines.filter(has_text="TYPO").locator("input").is_checked()
    await lines.filter(has_text="TYPO").locator("input[type=checkbox]").uncheck()
    await lines.filter(has_text="GARBLED").locator("input[type=checkbox]").check()
    await clerk.click("[data-action=review-match]")
    await clerk.wait_for_url(base_url + "/finance/match")
    assert await clerk.locator(".message").count() == 0
    assert await clerk.locator("[data-total=lines]").inner_text() == "Rp 110.000"
    assert await clerk.locator("[data-total=movements]").inner_text() == "Rp 110.000"
    await clerk.screenshot(path=str(screenshots / "manual-match.png"), full_page=True)

    # A confirm forged with the wrong line is checked again on the server: nothing matched.
    form = {
        "csrf": await clerk.locator("form[data-form=confirm-match] input[name=csrf]").get_attribute(
            "value"
        ),
        "step": "confirm",
        "note": "forged",
        "line_keys": typo_key,
        "movement_ids": await clerk.locator(
            "form[data-form=confirm-match] input[name=movement_ids]"
        ).get_attribute("value"),
    }
    forged = await clerk.request.post(base_url + "/finance/match", form=form)
    assert "jumlah berselisih Rp 1.000" in await forged.text()

    await clerk.fill("input[name=note]", "bank garbled the VA reference; paid by card 1")
    await clerk.click("[data-action=confirm-match]")
    await clerk.wait_for_url("**/finance/exceptions?*")
    assert await clerk.locator(".message").inner_text() == "selesai"
    assert await lines.count() == 1 and await movements.count() == 0
    connection = await asyncpg.connect(database_url)
    try:
        matched = await connection.fetch(
            """select l.reference, m.kind, m.matched_by from settlement_matches m
                 join settlement_match_lines ml using (match_id)
                 join settlement_statement_lines l using (line_key) where m.kind = 'manual'"""
        )
        assert [tuple(row) for row in matched] == [("GARBLED", "manual", "ani")]
    finally:
        await connection.close()


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
    response = pages.csv_response((("detail", "Detail"),), [{"detail": "+62 811"}], "x.csv")  # type: ignore[list-item]
    assert response.text == "Detail\n'+62 811\n"


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
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Accept-Language": "en"}
        ) as http:

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
