"""One hostile person against the back office: guessing staff passwords (at once, across
processes, across a restart, across user names), tying up the event loop with logins, writing
off a large sum alone, riding the shared admin token, replaying a bank's token request; and the
defences staff have (unlock, ending sessions, Secure cookies, the card lookup beside the books).

Every case runs through the real back office on loopback (aiohttp, PostgreSQL), in headless
Chromium where a page is involved, and as `ksh serve` itself where processes and restarts matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateways import staff
from gateways.backoffice import BackofficeConfig, create_app
from gateways.snap import signature
from gateways.snap.partners import Partner, save_partner
from gateways.staff import Role, StaffMember
from ksh.cli import build_parser, main
from ksh.commands import serve
from ksh.commands.demo import start
from ledger.clock import ManualClock
from settlement import formatting, logins, pages, reconciliation
from settlement.statements import Direction, StatementLine, write_mt940
from tests.settlement.day import bank, closing_time, our_account, service_day
from tests.waiting import wait_until, wait_until_async

# These tests read the pages' messages in English (the source language; Indonesian is the
# default, tested in test_pages).
english = {"Accept-Language": "en"}

passwords = {
    "ani": "clerk-password-1",
    "budi": "supervisor-password-1",
    "dewi": "supervisor-password-2",
    "citra": "auditor-password-1",
}
roles = {"ani": Role.clerk, "budi": Role.supervisor, "dewi": Role.supervisor, "citra": Role.auditor}
proxy_header = "X-Forwarded-For"  # the fixture's back office counts clients by it
checked = "wrong user name or password"  # the password was checked, and was wrong
refused = "too many wrong passwords"  # refused before any check
limits = logins.LoginLimits()


@dataclass
class Backoffice:
    url: str
    database_url: str
    clock: ManualClock
    tokens: dict[str, str]  # each person's staff token for the admin API
    app: web.Application


async def add_people(database_url: str, clock: ManualClock) -> dict[str, str]:
    connection = await asyncpg.connect(database_url)
    try:
        tokens = {}
        for username, role in roles.items():
            await pages.add_staff(connection, username, passwords[username], role)
            tokens[username] = await staff.issue_token(
                connection, StaffMember(username, role), issued_by="tests", now=clock.now()
            )
        return tokens
    finally:
        await connection.close()


@pytest.fixture
async def backoffice(database_url: str) -> AsyncIterator[Backoffice]:
    """What `ksh serve` mounts (terminals, SNAP, finance pages), on a clock that stands still,
    counting clients by the proxy header; and, as `ksh serve` used to pass KSH_ADMIN_TOKEN, a
    shared admin token that must open nothing."""
    clock = ManualClock(closing_time)
    tokens = await add_people(database_url, clock)
    settings = {
        "client_address_header": proxy_header,
        "expiry_sweep_interval_s": 0,
        "admin_token": shared_admin_token,
    }
    app = create_app(
        BackofficeConfig(
            database_url,
            pool_connections_min=1,
            pool_connections_max=6,
            settings=settings,
            clock=clock,
        ),
        serve.extensions(),
    )
    runner, url = await start(app)
    try:
        yield Backoffice(url, database_url, clock, tokens, app)
    finally:
        await runner.cleanup()


shared_admin_token = "the-shared-admin-token-of-old"


async def log_in(url: str, username: str, password: str, address: str = "192.0.2.1") -> str:
    """One login by a client of its own (its own cookies and connection) from `address`;
    where the answer sends it: "/finance", or the login page's message."""
    headers = {proxy_header: address}
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), headers=english
    ) as http:
        async with http.get(url + "/finance/login", headers=headers) as form:
            text = await form.text()
        token = text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        async with http.post(
            url + "/finance/login",
            data={"csrf": token, "username": username, "password": password},
            headers=headers,
            allow_redirects=False,
        ) as answer:
            assert answer.status == 303, await answer.text()
            return urllib.parse.unquote(answer.headers["Location"])


# ---------------------------------------------------------------------------- guessing


async def test_25_wrong_passwords_at_once_are_5_checks(backoffice: Backoffice) -> None:
    outcomes = await asyncio.gather(
        *(log_in(backoffice.url, "ani", f"guess-{n:04d}-wrong") for n in range(25))
    )
    assert sum(checked in outcome for outcome in outcomes) == limits.user_attempts_max
    assert sum(refused in outcome for outcome in outcomes) == 25 - limits.user_attempts_max
    assert refused in await log_in(backoffice.url, "ani", passwords["ani"])
    checker = backoffice.app[pages.password_checker_key]
    assert checker.checks_run == limits.user_attempts_max


async def test_guessing_across_user_names_locks_the_address(backoffice: Backoffice) -> None:
    guesser, colleague = "192.0.2.66", "192.0.2.67"
    for n in range(limits.address_attempts_max):
        assert checked in await log_in(backoffice.url, f"nobody{n:02d}", "wrong-pw", guesser)
    # Even a right password is not checked from that address now; from another it is.
    assert refused in await log_in(backoffice.url, "ani", passwords["ani"], guesser)
    assert await log_in(backoffice.url, "ani", passwords["ani"], colleague) == "/finance"
    # A right password gives its attempt back: staff behind one address are not locked out
    # by logging in.
    for _ in range(limits.address_attempts_max + 1):
        assert await log_in(backoffice.url, "budi", passwords["budi"], colleague) == "/finance"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def ksh_serve(database_url: str, log: Path, *arguments: str) -> Iterator[str]:
    """`ksh serve` as its own process(es) on a free loopback port, until the block ends; yields
    its URL once every serving process listens."""
    port = free_port()
    environment = {**os.environ, "DATABASE_URL": database_url, "KSH_EXPIRY_SWEEP_INTERVAL_S": "0"}
    workers = int(arguments[arguments.index("--workers") + 1]) if "--workers" in arguments else 1
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "ksh", "serve", "--port", str(port), *arguments],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: log.read_text().count("serving on") >= workers or process.poll(),
                f"{workers} process(es) of ksh serve listen",
                within_s=60,
            )
            assert process.poll() is None, log.read_text()
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_ksh_serve_workers_share_one_count_and_a_restart_keeps_it(
    database_url: str, tmp_path: Path
) -> None:
    await add_people(database_url, ManualClock(closing_time))
    log = tmp_path / "serve.log"
    with ksh_serve(database_url, log, "--workers", "2") as url:
        # One connection per attempt: the kernel spreads them over both processes.
        outcomes = [await log_in(url, "ani", f"guess-{n:04d}-wrong") for n in range(16)]
        assert sum(checked in outcome for outcome in outcomes) == limits.user_attempts_max
        assert all(refused in outcome for outcome in outcomes[limits.user_attempts_max :])
        assert refused in await log_in(url, "ani", passwords["ani"])
    with ksh_serve(database_url, log) as url:  # restarted: the count is in the database
        assert refused in await log_in(url, "ani", passwords["ani"])
        assert await log_in(url, "budi", passwords["budi"]) == "/finance"


async def test_logins_never_stall_the_event_loop(
    backoffice: Backoffice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty logins at once (names that do not exist, each from its own address) all cost a
    password check, and /health answers while checks are under way: the checks run on worker
    threads. Each check is held at a gate until /health has answered, so nothing here depends
    on how fast the machine is. (A check found on the event loop is not held, or it would hold
    the test too: it is recorded, the checks are never all held, and the test fails saying so.)"""
    gate = threading.Event()
    held_now = 0
    held_lock = threading.Lock()
    checked_on_the_loop: list[bool] = []
    real_check = logins.verify_password

    def held_check(password: str, stored: str) -> bool:
        nonlocal held_now
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: a worker thread
            checked_on_the_loop.append(False)
        else:
            checked_on_the_loop.append(True)
            return real_check(password, stored)
        with held_lock:
            held_now += 1
        gate.wait(timeout=60)  # a safety net only: the test opens the gate itself
        with held_lock:
            held_now -= 1
        return real_check(password, stored)

    monkeypatch.setattr(logins, "verify_password", held_check)
    attempts = [
        asyncio.create_task(log_in(backoffice.url, f"nobody{n:02d}", "wrong-pw", f"192.0.2.{n}"))
        for n in range(30)
    ]
    await wait_until_async(
        lambda: held_now == limits.checks_concurrent_max, "the checks are held on worker threads"
    )
    async with (
        aiohttp.ClientSession(headers=english) as http,
        http.get(backoffice.url + "/health") as response,
    ):
        assert response.status == 200
    assert not gate.is_set() and held_now == limits.checks_concurrent_max, (
        "/health answered only after the held checks ended: they ran on the event loop"
    )
    gate.set()
    outcomes = await asyncio.gather(*attempts)
    assert all(checked in outcome for outcome in outcomes)  # unknown names cost a check too
    assert backoffice.app[pages.password_checker_key].checks_run == 30
    assert checked_on_the_loop == [False] * 30


# ---------------------------------------------------------------------------- unlocking


async def test_a_supervisor_unlocks_a_user_name_and_it_is_logged(
    backoffice: Backoffice,
    browser: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in range(limits.user_attempts_max):
        assert checked in await log_in(backoffice.url, "ani", "not-her-password")
    assert refused in await log_in(backoffice.url, "ani", passwords["ani"])

    supervisor = await browser_log_in(browser, backoffice.url, "budi")
    await supervisor.goto(backoffice.url + "/finance/staff")
    row = supervisor.locator("tr[data-staff=ani]")
    assert "locked" in await row.inner_text()
    await row.locator("input[name=reason]").fill("ani called the desk; identity checked")
    await row.locator("button[data-action=unlock]").click()
    await supervisor.wait_for_load_state()
    assert "done: ani unlocked" in await supervisor.locator(".message").inner_text()
    assert await log_in(backoffice.url, "ani", passwords["ani"]) == "/finance"

    # An auditor sees the staff page without the buttons; a clerk may not unlock.
    auditor = await browser_log_in(browser, backoffice.url, "citra")
    await auditor.goto(backoffice.url + "/finance/staff")
    assert "ani called the desk" in await auditor.content()
    assert await auditor.locator("button[data-action=unlock]").count() == 0
    clerk = await browser_log_in(browser, backoffice.url, "ani")
    csrf = await clerk.locator("header input[name=csrf]").get_attribute("value")
    forged = await clerk.request.post(
        backoffice.url + "/finance/staff/unlock",
        form={"csrf": csrf, "username": "ani", "reason": "myself"},
    )
    assert forged.status == 403

    # The same from the command line, with the OS user's name in the log.
    for _ in range(limits.user_attempts_max):
        await log_in(backoffice.url, "ani", "not-her-password-again")
    assert refused in await log_in(backoffice.url, "ani", passwords["ani"])
    monkeypatch.setenv("DATABASE_URL", backoffice.database_url)
    command = ["settle", "staff", "ani", "--unlock"]
    assert await asyncio.to_thread(main, command) == 2  # no reason given
    assert "--reason" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*command, "--reason", "night shift request"]) == 0
    assert "ani unlocked" in capsys.readouterr().out
    assert await log_in(backoffice.url, "ani", passwords["ani"]) == "/finance"
    logged = await staff_actions(backoffice, "unlock_login")
    assert [(row["username"], row["role"], row["subject"]) for row in logged][:1] == [
        ("budi", "supervisor", "ani")
    ]
    assert logged[1]["role"] == "command line" and logged[1]["reason"] == "night shift request"


async def staff_actions(backoffice: Backoffice, action: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(backoffice.database_url)
    try:
        return list(
            await connection.fetch(
                "select * from staff_actions where action = $1 order by action_id", action
            )
        )
    finally:
        await connection.close()


async def browser_log_in(browser: Any, url: str, username: str) -> Any:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, extra_http_headers={proxy_header: "192.0.2.200"}
    )
    page = await context.new_page()
    await page.goto(url + "/finance/login")
    await page.fill("#username", username)
    await page.fill("#password", passwords[username])
    await page.click("button[type=submit]")
    await page.wait_for_url(url + "/finance")
    return page


# ---------------------------------------------------------------------------- sessions


async def test_sessions_end_everywhere_by_their_owner_or_a_supervisor_and_expire(
    backoffice: Backoffice, browser: Any
) -> None:
    url = backoffice.url
    laptop = await browser_log_in(browser, url, "ani")
    phone = await browser_log_in(browser, url, "ani")
    await laptop.goto(url + "/finance/staff")
    assert "2 sessions open" in await laptop.content()
    await laptop.locator("button[data-action=logout-everywhere]").click()
    await laptop.wait_for_url(url + "/finance/login*")
    assert "logged out everywhere (2 sessions ended)" in await laptop.content()
    await phone.goto(url + "/finance/exceptions")
    assert phone.url.startswith(url + "/finance/login")

    again = await browser_log_in(browser, url, "ani")
    supervisor = await browser_log_in(browser, url, "budi")
    await supervisor.goto(url + "/finance/staff")
    row = supervisor.locator("tr[data-staff=ani]")
    await row.locator("input[name=reason]").fill("laptop reported stolen")
    await row.locator("button[data-action=end-sessions]").click()
    await supervisor.wait_for_load_state()
    assert "1 session(s) of ani ended" in await supervisor.locator(".message").inner_text()
    await again.goto(url + "/finance/exceptions")
    assert again.url.startswith(url + "/finance/login")
    ended = await staff_actions(backoffice, "end_sessions")
    assert [(row["username"], row["subject"], row["reason"]) for row in ended] == [
        ("ani", "ani", "logged out everywhere"),
        ("budi", "ani", "laptop reported stolen"),
    ]

    # A session lasts one shift.
    await supervisor.goto(url + "/finance/exceptions")
    assert supervisor.url == url + "/finance/exceptions"
    backoffice.clock.advance(logins.session_ttl_seconds)
    await supervisor.goto(url + "/finance/exceptions")
    assert supervisor.url.startswith(url + "/finance/login")


async def test_ksh_serve_cookies_are_secure_with_hsts_unless_on_plain_loopback(
    database_url: str,
) -> None:
    await add_people(database_url, ManualClock(closing_time))
    parser = build_parser()
    cases = (
        (["serve", "--host", "0.0.0.0"], True),  # parsed only: the test serves on loopback
        (["serve", "--host", "backoffice.example"], True),
        (["serve", "--host", "0.0.0.0", "--insecure-cookies"], False),
        (["serve"], False),  # 127.0.0.1: a browser on this machine, plain HTTP
    )
    for argv, secure in cases:
        app = serve.backoffice_app(database_url, serve.settings_of(parser.parse_args(argv)))
        runner, url = await start(app)  # served on loopback for the test
        try:
            async with aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), headers=english
            ) as http:
                async with http.get(url + "/finance/login") as form:
                    text = await form.text()
                    login_cookie = form.headers["Set-Cookie"]
                    hsts = form.headers.get("Strict-Transport-Security")
                token = text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
                async with http.post(
                    url + "/finance/login",
                    data={"csrf": token, "username": "ani", "password": passwords["ani"]},
                    headers={"Cookie": f"{pages.login_csrf_cookie}={token}"},
                    allow_redirects=False,
                ) as answer:
                    assert answer.headers["Location"] == "/finance", argv
                    session_cookie = next(
                        value
                        for value in answer.headers.getall("Set-Cookie")
                        if value.startswith(pages.session_cookie + "=")
                    )
            for cookie in (login_cookie, session_cookie):
                attributes = {part.strip().lower() for part in cookie.split(";")}
                assert ("secure" in attributes) is secure, (argv, cookie)
                assert {"httponly", "samesite=strict"} <= attributes, cookie
            assert hsts == (pages.strict_transport_security if secure else None), (argv, hsts)
        finally:
            await runner.cleanup()


# ---------------------------------------------------------------------------- four eyes


async def unexplained_credit(database_url: str, tmp_path: Path, amount_rupiah: int) -> str:
    """A statement line of money in that nothing explains: an exception to write off."""
    line = StatementLine(
        bank,
        our_account,
        service_day,
        amount_rupiah,
        Direction.credit,
        "PR77777777",
        "B77",
        "NTRF",
        "TRANSFER FROM UNKNOWN PAYER",
        "s.sta",
        1,
    )
    path = tmp_path / "statement.sta"
    path.write_text(write_mt940([line], our_account, "S1", 0))
    connection = await asyncpg.connect(database_url)
    try:
        await reconciliation.import_statement(connection, path, bank, "ani")
        await reconciliation.reconcile(connection, now=closing_time)
        exception_id = await connection.fetchval(
            "select exception_id from settlement_exceptions where amount_rupiah = $1",
            amount_rupiah,
        )
    finally:
        await connection.close()
    assert exception_id is not None
    return str(exception_id)


async def test_a_supervisor_cannot_write_off_a_large_sum_alone(
    backoffice: Backoffice, browser: Any, tmp_path: Path
) -> None:
    url = backoffice.url
    exception_id = await unexplained_credit(backoffice.database_url, tmp_path, 7_000_000)
    budi = await browser_log_in(browser, url, "budi")
    await budi.goto(url + "/finance/exceptions")
    row = budi.locator(f"tr[data-exception='{exception_id}']")
    await row.locator("input[name=note]").fill("looks like a refund to us")
    await row.locator("button:has-text('Write off')").click()
    await budi.wait_for_load_state()
    assert "supervisor must approve" in await budi.locator(".message").inner_text()
    assert await row.locator("button:has-text('Approve')").count() == 0
    assert "waiting for another supervisor" in await row.inner_text()
    # Forging the approval with his own session does not help.
    csrf = await budi.locator("header input[name=csrf]").get_attribute("value")
    forged = await budi.request.post(
        url + "/finance/exceptions/action",
        form={"csrf": csrf, "exception_id": exception_id, "action": "approve"},
        headers=english,
    )
    assert "someone other than the requester" in urllib.parse.unquote(forged.url)

    dewi = await browser_log_in(browser, url, "dewi")
    await dewi.goto(url + "/finance/exceptions")
    await dewi.locator(f"tr[data-exception='{exception_id}'] button:has-text('Approve')").click()
    await dewi.wait_for_load_state()
    assert "done" in await dewi.locator(".message").inner_text()
    await dewi.goto(url + "/finance/exceptions?all=1")
    history = await dewi.locator(f"tr[data-exception='{exception_id}']").inner_text()
    assert "by budi approved by dewi" in history
    connection = await asyncpg.connect(backoffice.database_url)
    try:
        metadata = await connection.fetchval(
            "select metadata from ledger_transfers where code = 102 and amount = 7000000"
        )
    finally:
        await connection.close()
    assert '"requested_by": "budi"' in metadata and '"approved_by": "dewi"' in metadata


# ---------------------------------------------------------------------------- the admin API


async def test_money_and_parties_need_a_named_person_with_a_role_and_a_reason(
    backoffice: Backoffice,
) -> None:
    url, tokens = backoffice.url, backoffice.tokens
    card = "6013500000000017"

    async with aiohttp.ClientSession(headers=english) as http:

        async def admin(path: str, body: dict[str, Any], token: str) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(url + path, json=body, headers=headers) as response:
                return response.status, await response.json()

        why = {"reason": "counter top-up, cash received, receipt 0042"}
        assert (await admin("/admin/v1/cards", {"card_number": card, **why}, tokens["ani"]))[
            0
        ] == 201
        top_up = {"card_number": card, "top_up_id": "CTR-1", "amount_rupiah": 2_000_000}
        # The old shared token opens nothing.
        status, problem = await admin("/admin/v1/pending-top-ups", top_up, shared_admin_token)
        assert (status, problem["code"]) == (401, "unauthorised")
        # A person must say why; an auditor may not create money; a clerk may not add parties.
        status, problem = await admin("/admin/v1/pending-top-ups", top_up, tokens["ani"])
        assert (status, problem["field"]) == (400, "reason")
        status, problem = await admin("/admin/v1/pending-top-ups", {**top_up, **why}, "x" * 32)
        assert status == 401
        assert (await admin("/admin/v1/pending-top-ups", {**top_up, **why}, tokens["citra"]))[
            0
        ] == 403
        merchant = {"merchant_id": "WARUNG-9", "reason": "new merchant contract"}
        assert (await admin("/admin/v1/merchants", merchant, tokens["ani"]))[0] == 403
        assert await pending_top_ups(backoffice) == 0
        assert (await admin("/admin/v1/merchants", merchant, tokens["budi"]))[0] == 201
        assert (await admin("/admin/v1/pending-top-ups", {**top_up, **why}, tokens["ani"]))[
            0
        ] == 201
        assert await pending_top_ups(backoffice) == 1
        # Reads take any role.
        async with http.get(
            url + f"/admin/v1/cards/{card}", headers={"Authorization": f"Bearer {tokens['citra']}"}
        ) as response:
            assert response.status == 200
        # A revoked token stops working.
        connection = await asyncpg.connect(backoffice.database_url)
        try:
            assert await staff.revoke_tokens(connection, "ani", now=backoffice.clock.now()) == 1
        finally:
            await connection.close()
        top_up_2 = {**top_up, **why, "top_up_id": "CTR-2"}
        assert (await admin("/admin/v1/pending-top-ups", top_up_2, tokens["ani"]))[0] == 401

    logged = await staff_actions(backoffice, "pending_top_up")
    assert [(row["username"], row["role"], row["subject"], row["reason"]) for row in logged] == [
        ("ani", "clerk", card, why["reason"])
    ]
    assert '"amount_rupiah": 2000000' in logged[0]["detail"]
    assert [row["username"] for row in await staff_actions(backoffice, "register_merchant")] == [
        "budi"
    ]


async def pending_top_ups(backoffice: Backoffice) -> int:
    connection = await asyncpg.connect(backoffice.database_url)
    try:
        return int(await connection.fetchval("select count(*) from pending_top_ups"))
    finally:
        await connection.close()


# ---------------------------------------------------------------------------- the card lookup


async def test_the_card_lookup_sets_the_cards_balance_beside_the_books(
    backoffice: Backoffice, browser: Any, tmp_path: Path
) -> None:
    """A card issued in the books with less than it holds (Rp 20,000 registered, Rp 50,000 on
    the card), then tapped on a bus: the page shows both balances and what lies between."""
    from bus_terminals.fare.feed import load_feed
    from bus_terminals.simulator import Bus, validator_keys
    from bus_terminals.sync import UploadStatus
    from bus_terminals.validator import fare_decider
    from bus_terminals.wire import public_key_text
    from card_reader.deck import make_ksh_deck
    from card_reader.emulator import EmulatedReader
    from card_reader.keys import KeyRole, demo_key_store
    from card_reader.ksh_card import KshCard

    store = demo_key_store()

    def balance_and_number(card: Any) -> tuple[int, str]:
        reader = EmulatedReader("inspection")
        reader.insert(card)
        state = KshCard(reader, store.view(KeyRole.READ)).read_state()
        reader.remove()
        return state.balance_rupiah, str(state.profile.card_number)

    (card,) = make_ksh_deck(store, [50_000], seed="hostile-card-lookup")
    _, number = balance_and_number(card)
    url, tokens = backoffice.url, backoffice.tokens
    async with aiohttp.ClientSession(headers=english) as http:

        async def admin(path: str, body: dict[str, Any], who: str) -> None:
            headers = {"Authorization": f"Bearer {tokens[who]}"}
            sent = {"reason": "card lookup test", **body}
            async with http.post(url + path, json=sent, headers=headers) as response:
                assert response.status == 201, await response.text()

        await admin(
            "/admin/v1/cards", {"card_number": number, "opening_balance_rupiah": 20_000}, "ani"
        )
        await admin("/admin/v1/operators", {"operator_id": "TRANS-SEMARANG"}, "budi")
        bus = Bus(
            "BUS-H01",
            "K1",
            tmp_path,
            validator_keys(store),
            url,
            http,
            now_ms=backoffice.clock.unix_ms,
        )
        try:
            await admin(
                "/admin/v1/terminals",
                {
                    "terminal_id": bus.terminal_id,
                    "public_key": public_key_text(bus.private_key.public_key()),
                    "role": "validator",
                    "operator_id": "TRANS-SEMARANG",
                },
                "budi",
            )
            bus.tap(card, backoffice.clock.unix_ms(), fare_decider(load_feed(), "K1"))
            assert await bus.sync.upload_once() is UploadStatus.acknowledged
        finally:
            bus.close()
    on_card, _ = balance_and_number(card)
    fare = 50_000 - on_card
    assert fare > 0

    page = await browser_log_in(browser, url, "citra")
    await page.goto(url + "/finance/cards")
    await page.fill("input[name=number]", number)
    await page.click("button:has-text('Look up')")
    await page.wait_for_url("**/finance/cards?number=*")
    tiles = {
        name: await page.locator(f"[data-tile={name}] .value").inner_text()
        for name in ("card-balance", "books-balance", "difference")
    }
    assert tiles == {
        "card-balance": formatting.rupiah(on_card, "en"),
        "books-balance": formatting.rupiah(20_000 - fare, "en"),
        "difference": formatting.rupiah(30_000, "en"),
    }
    assert "BUS-H01" in await page.locator("table").last.inner_text()
    await page.goto(url + "/finance/cards?number=6099999999999999")
    assert "No card 6099999999999999 was issued" in await page.content()


# ---------------------------------------------------------------------------- SNAP


async def test_snap_answers_carry_x_timestamp_and_a_token_request_works_once(
    backoffice: Backoffice,
) -> None:
    bank_key = signature.generate_private_key()
    connection = await asyncpg.connect(backoffice.database_url)
    try:
        await save_partner(
            connection,
            Partner(
                partner_id="BNI-HOSTILE",
                name="BNI",
                client_secret="hostile-tests-hmac-secret",
                public_key_pem=signature.public_key_pem(bank_key.public_key()).decode(),
                channel_id="95221",
                company_code="88001",
                bank_code="009",
            ),
        )
    finally:
        await connection.close()
    clock = backoffice.clock
    token_url = backoffice.url + "/snap/v1.0/access-token/b2b"
    body = b'{"grantType":"client_credentials"}'

    def signed_headers() -> dict[str, str]:
        timestamp = signature.format_timestamp(clock.now())
        return {
            "Content-Type": "application/json",
            "X-TIMESTAMP": timestamp,
            "X-CLIENT-KEY": "BNI-HOSTILE",
            "X-SIGNATURE": signature.sign_access_token(bank_key, "BNI-HOSTILE", timestamp),
        }

    async with aiohttp.ClientSession(headers=english) as http:

        async def post(url: str, headers: dict[str, str]) -> tuple[int, str, Any]:
            async with http.post(url, data=body, headers=headers) as response:
                return (
                    response.status,
                    response.headers.get("X-TIMESTAMP", ""),
                    await response.json(),
                )

        captured = signed_headers()
        status, stamp, answer = await post(token_url, captured)
        assert (status, answer["responseCode"]) == (200, "2007300")
        assert stamp == signature.format_timestamp(clock.now())
        clock.advance(30)  # still inside the timestamp window
        status, stamp, answer = await post(token_url, captured)  # the same request, replayed
        assert (status, answer["responseCode"]) == (401, "4017300")
        assert stamp == signature.format_timestamp(clock.now())
        status, _, answer = await post(token_url, signed_headers())  # a fresh request is fine
        assert status == 200
        # Errors carry it too: a missing header, a transaction without a token, a wrong path.
        for url, headers in (
            (token_url, {"X-CLIENT-KEY": "BNI-HOSTILE"}),
            (backoffice.url + "/snap/v1.0/transfer-va/inquiry", {}),
        ):
            status, stamp, _ = await post(url, headers)
            assert status in (400, 401) and stamp == signature.format_timestamp(clock.now())
        async with http.get(backoffice.url + "/snap/v1.0/nothing-here") as response:
            assert response.status == 404
            assert response.headers["X-TIMESTAMP"] == signature.format_timestamp(clock.now())
    connection = await asyncpg.connect(backoffice.database_url)
    try:
        assert await connection.fetchval("select count(*) from snap_access_tokens") == 2
    finally:
        await connection.close()
