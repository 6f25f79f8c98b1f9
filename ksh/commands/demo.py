"""`ksh demo`: a whole simulated service day, end to end, on the embedded database.

Everything real runs in this process on loopback: the back office (terminal uploads, SNAP BI
endpoints, finance pages), a bank simulator that speaks SNAP BI, and the fleet simulator's
buses with emulated cards. The day: cards issued, buses tapping all day (flaky network, power
losses, cards pulled mid-tap), citizens topping up through the bank's virtual accounts, end of
day closing every payable into a settlement batch and paying it out host-to-host, the bank's
MT940 statement imported and reconciled, and a finance clerk and supervisor working the
exceptions. Trouble is injected on purpose: a payout the bank refuses, an answer lost, a
statement line the bank lists twice, a fee nobody announced, a VA payment for no known card.

At the end: a summary (stdout, or --json), an HTML report with charts, and exit status 1 if any
invariant fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksh import argtypes, demo_desk, signals
from ksh.cli import UserError
from ksh.signals import stop_on_signals
from ledger.clock import Clock

if TYPE_CHECKING:
    from ksh.demo_desk import BusinessClock

phases_total = 9
upload_rounds_max = 1_000  # a till uploads batch after batch until nothing is left
# MT940 writes years in two digits (2000 to 2099), and the desk's VA payments are that old.
first_demo_day = dt.date(2000, 1, 1) + dt.timedelta(days=demo_desk.paid_days_ago)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a whole simulated service day end to end and report on it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--buses", type=argtypes.integer(1, 300), default=16, help="buses in service, 1 to 300"
    )
    parser.add_argument(
        "--cards",
        type=argtypes.integer(10, 5_000),
        default=200,
        help="cards in circulation, 10 to 5000",
    )
    parser.add_argument(
        "--merchants",
        type=argtypes.integer(0, 100),
        default=6,
        help="merchants with a point of sale, 0 to 100",
    )
    parser.add_argument(
        "--shoppers",
        type=argtypes.integer(0, 2_000),
        default=40,
        help="cards that shop at merchants, 0 to 2000",
    )
    parser.add_argument("--seed", type=int, default=2026, help="seed of the day's randomness")
    parser.add_argument(
        "--day",
        type=parse_day,
        help="the service day to run, YYYY-MM-DD (default: today in Semarang); every part of the "
        "demo (cards, tariff, holidays, bank) runs on that day, at the time of day it is now",
    )
    parser.add_argument(
        "--reports",
        type=argtypes.folder,
        default=Path("reports"),
        help="folder for the HTML report",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--keep-database", action="store_true", help="keep the demo's database")
    parser.set_defaults(handler=run)


def parse_day(text: str) -> dt.date:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None
    # Terminals' clocks are Unix time; the bank's MT940 statements write years in two digits
    # (2000 to 2099), and the service desk's scene has VA payments 100 days before the day.
    if not first_demo_day <= day <= dt.date(2099, 12, 31):
        raise argparse.ArgumentTypeError(f"{text}: a day from {first_demo_day} to 2099-12-31")
    return day


def run(arguments: argparse.Namespace) -> int:
    from ledger.clock import SystemClock
    from ledger.database import server_url

    clock = SystemClock.on_day(arguments.day) if arguments.day else SystemClock()
    try:  # SIGINT or SIGTERM, even inherited ignored: cleaned up (database dropped, server left)
        with stop_on_signals() as stop, server_url() as url:
            summary = signals.run(demo(url, arguments, clock), stop)
    except OSError as error:
        raise UserError(f"cannot reach the database or a loopback port: {error}") from error
    if arguments.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        print_summary(summary)
    return 0 if all(summary["invariants"].values()) else 1


# What the demo waits for in each phase, in order: the progress line names the one under way.
phase_waits = (
    "the back office and the bank simulator to start, and the days before (old VA payments)",
    "the fleet and the shops to run the day (taps, sales, uploads)",
    "citizens' VA top-ups through the bank",
    "QRIS sales and rides, and the service desk (a lost card, a complaint, old top-ups)",
    "end of day to close the settlement batches",
    "the bank to answer the payouts (SNAP BI)",
    "the bank's statements to be imported and reconciled",
    "finance to work the exceptions",
    "the invariants and the report",
)
assert len(phase_waits) == phases_total


class Progress:
    """A progress line on stderr, redrawn in place: how many phases of the day are done, the
    last one's outcome, and what the demo waits for now. A note (trouble injected) is a line
    of its own above it."""

    def __init__(self) -> None:
        self.done = 0
        self.last = "starting"
        self.started = time.perf_counter()
        # Warnings logged meanwhile (a payout retried) are notes too, not text glued to the bar.
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = lambda record: self.note(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger().addHandler(self.handler)
        self.draw()

    def draw(self) -> None:
        filled = round(30 * self.done / phases_total)
        elapsed = time.perf_counter() - self.started
        waiting = f"waiting for {phase_waits[self.done]}" if self.done < phases_total else "done"
        line = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{phases_total} "
            f"{elapsed:5.1f}s {self.last}; {waiting}"
        )
        if not sys.stderr.isatty():  # a log file: one line per state, no control codes
            print(line, file=sys.stderr, flush=True)
            return
        end = "" if self.done < phases_total else "\n"
        print(f"\r\033[K{line}", end=end, file=sys.stderr, flush=True)

    def step(self, label: str) -> None:
        self.done += 1
        self.last = label
        self.draw()
        if self.done == phases_total:
            logging.getLogger().removeHandler(self.handler)

    def note(self, text: str) -> None:
        if not sys.stderr.isatty():
            print(f"ksh demo: {text}", file=sys.stderr, flush=True)
            return
        print(f"\r\033[Kksh demo: {text}", file=sys.stderr, flush=True)
        self.draw()  # the progress line again, below the note


def inject_payout_trouble(bank: Any, payee_accounts: list[Any], progress: Progress) -> None:
    """The bank refuses the first payout (the payee's account is inactive), loses its answer
    to the next, and charges a fee no one agreed; each said on a line of its own."""
    bank.trouble.reject_accounts = {account for _, account in payee_accounts[:1]}
    bank.trouble.lose_next_answers = 1
    bank.trouble.unexpected_fee_rupiah = 4_000
    for account in sorted(bank.trouble.reject_accounts):
        progress.note(f"trouble injected: the bank refuses payouts to account {account}")
    progress.note("trouble injected: the bank loses its answer to the next payout")
    progress.note("trouble injected: the bank charges an unexpected fee of Rp 4,000")


async def start(app: Any) -> tuple[Any, str]:
    from aiohttp import web

    runner = web.AppRunner(app, shutdown_timeout=1, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def demo(server: str, arguments: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    import secrets

    from ksh.database import scratch_database
    from ksh.demo_desk import BusinessClock

    # The service day is fixed once, at the start: a run that crosses midnight stays on its day.
    service_day = clock.today()
    name = f"ksh_demo_{service_day:%Y%m%d}_{secrets.token_hex(4)}"
    async with scratch_database(server, name, keep=arguments.keep_database) as (name, url):
        summary = await run_day(url, arguments, BusinessClock(clock), service_day)
    summary["database"] = name if arguments.keep_database else f"{name} (dropped)"
    return summary


async def run_day(
    url: str, arguments: argparse.Namespace, clock: BusinessClock, today: dt.date
) -> dict[str, Any]:
    """The day on `clock`: the back office, the bank and the terminals all read it (a scene
    sets it back to play what happened before the day)."""
    import secrets

    import aiohttp
    import asyncpg

    from gateways.bank_simulator import BankSettings, bank_key, create_bank_app, simulator_key
    from gateways.snap import signature
    from gateways.snap.client import BankClient, BankConnection
    from gateways.snap.partners import Partner, save_partner
    from ksh.demo_desk import before_the_day, desk_lines, run_desk
    from ksh.demo_qris import run_qris
    from settlement import actions, end_of_day
    from settlement.actions import Role, Staff

    progress = Progress()
    partner_id, client_secret, channel_id, company_code = (
        "BNI-KSH",
        secrets.token_hex(16),
        "95221",
        "88001",
    )
    bank_code, issuer_account = "009", "1350012345678"
    operator_account, other_bank_code = "1350099990001", "113"
    bank_private = signature.private_key_pem(signature.generate_private_key())
    own_private = signature.private_key_pem(signature.generate_private_key())

    def public(private_pem: bytes) -> bytes:
        return signature.public_key_pem(signature.load_private_key(private_pem).public_key())

    config = end_of_day.EndOfDayConfig(source_bank=bank_code, source_account_no=issuer_account)
    connection = await asyncpg.connect(url)
    try:
        await save_partner(
            connection,
            Partner(
                partner_id=partner_id,
                name="BNI",
                client_secret=client_secret,
                public_key_pem=public(bank_private).decode(),
                channel_id=channel_id,
                company_code=company_code,
                bank_code=bank_code,
                on_us=True,
                top_up_fee_rupiah=0,
                source_account_no=issuer_account,
            ),
        )
        staff_token = await add_demo_staff(connection, clock)
    finally:
        await connection.close()

    def payer_factory(http: aiohttp.ClientSession) -> end_of_day.PayoutPort:
        return BankClient.open(bank_connection, http)

    backoffice = demo_backoffice(url, clock, config, payer_factory, own_private)
    backoffice_runner, backoffice_url = await start(backoffice)
    bank_app = create_bank_app(
        BankSettings(
            partner_id=partner_id,
            client_secret=client_secret,
            issuer_public_key_pem=public(own_private),
            bank_private_key_pem=bank_private,
            company_code=company_code,
            channel_id=channel_id,
            bank_code=bank_code,
            issuer_base_url=backoffice_url + "/snap",
            issuer_account_no=issuer_account,
            issuer_account_opening_rupiah=500_000_000,
            accounts=((operator_account, "BLU UPTD TRANS SEMARANG", 0),),
        ),
        clock,
    )
    bank_runner, bank_url = await start(bank_app)
    bank_connection = BankConnection(
        base_url=bank_url + "/snap",
        client_key=partner_id,
        client_secret=client_secret,
        private_key_pem=own_private,
        channel_id=channel_id,
        timeout_ms=3_000,
        clock=clock,
    )
    bank = bank_app[bank_key]
    simulator = bank_app[simulator_key]
    story: dict[str, Any] = {"service_day": today.isoformat(), "missing_pieces": []}
    exceptions_found: list[dict[str, Any]] = []
    try:
        pool = backoffice_pool(backoffice)
        async with pool.acquire() as connection:  # first: the ledger's time only runs forward
            old_cards = await before_the_day(
                connection, backoffice, backoffice_url, clock, today, simulator
            )
        progress.step("back office and bank simulator up, the days before played")

        # 1. The fleet: cards issued, buses tapping all day, uploads.
        simulation = await run_fleet(arguments, clock, today, backoffice_url, staff_token, story)
        story["merchant_sales"] = await run_shops(
            arguments, clock, today, backoffice_url, staff_token
        )
        progress.step("fleet and shops simulated (taps, sales, uploads)")

        # 2. Citizens top up through the bank's virtual accounts; one pays a VA of no card,
        #    and the bank lists one collection twice on its statement.
        connection = await asyncpg.connect(url)
        try:
            cards = [
                row["card_number"]
                for row in await connection.fetch(
                    "select card_number from cards order by card_number"
                )
            ]
            top_ups = await pay_virtual_accounts(
                simulator, bank, cards, company_code, arguments.seed
            )
            story.update(top_ups)
            progress.step(f"{story.get('va_top_ups', 0)} VA top-ups through the bank")

            # 3. Merchants' sales (the fleet simulator books validators; sales come from POS
            #    terminals when it drives them, otherwise none).
            payee_accounts = await register_parties(
                connection, bank, operator_account, other_bank_code
            )
            if not any(party == "merchant" for party, _ in payee_accounts):
                story["missing_pieces"].append(
                    "merchant sales: the fleet simulator drove no POS terminal"
                )
            story.update(
                await run_qris(connection, simulator, bank_url, backoffice_url, clock, partner_id)
            )
            story["desk"] = await run_desk(
                connection, backoffice, backoffice_url, clock, today, simulator, bank_url, old_cards
            )
            story["service_desk"] = desk_lines(story["desk"])
            progress.step(f"QRIS and the service desk: {len(story['service_desk'])} desk scenes")

            # 4. End of day: close and pay out, with a refusal, a lost answer and an odd fee.
            batches = await end_of_day.close_day(connection, today, config, now=clock.now())
            story["settlement_batches"] = len(batches)
            story["settlement_net_rupiah"] = sum(b.net_rupiah for b in batches)
            progress.step(f"end of day: {len(batches)} batches closed")
            inject_payout_trouble(bank, payee_accounts, progress)
            now = clock.local_now()
            async with aiohttp.ClientSession() as http:
                client = BankClient.open(bank_connection, http)
                paid = await end_of_day.pay_day(pool, today, client, config, "end-of-day", now)
                story["payouts"] = {result.value: count for result, count in paid.items()}
                # The clerk sees the refusal, the merchant fixes the account, the clerk re-initiates.
                bank.trouble.reject_accounts = set()
                clerk = Staff("ani", Role.clerk)
                for row in await connection.fetch(
                    "select exception_id, reason, detail, amount_rupiah from settlement_exceptions where subject_kind = 'payout' and resolved_at is null"
                ):
                    exceptions_found.append(dict(row))
                    result = await actions.reinitiate_payout(
                        connection,
                        row["exception_id"],
                        clerk,
                        "payee reactivated the account at the bank",
                        client,
                        config,
                        clock.local_now(),
                    )
                    story.setdefault("staff_actions", []).append(
                        f"re-initiate {row['exception_id']}: {result.value}"
                    )
            progress.step(f"payouts sent: {payouts_text(story['payouts'])}")

            # 5. The bank's statements, imported and reconciled.
            folder = arguments.reports
            folder.mkdir(parents=True, exist_ok=True)
            story.update(
                await reconcile_statements(
                    connection, simulator, clock, today, config, bank_code, issuer_account, folder
                )
            )
            progress.step(
                f"{story['statement_lines']} statement lines, "
                f"{story['statement_lines_matched']} matched"
            )

            # 6. Finance works the exceptions: write-offs to suspense, the big one approved.
            await work_exceptions(connection, clock, exceptions_found, story)
            progress.step(f"{len(exceptions_found)} exceptions found and worked by finance")

            # 7. Invariants and the report.
            invariants, figures = await check_invariants(
                connection, today, bank, issuer_account, bank_code, simulation, story
            )
            story.update(figures)
            story["invariants"] = invariants
            story["exceptions"] = [
                {"reason": e["reason"], "amount_rupiah": e["amount_rupiah"], "detail": e["detail"]}
                for e in exceptions_found
            ]
            story["report"] = str(
                await write_report(connection, today, config, story, arguments.reports)
            )
            progress.step("invariants checked, report written")
        finally:
            await connection.close()
    finally:
        await backoffice_runner.cleanup()
        await bank_runner.cleanup()
    return story


async def reconcile_statements(
    connection: Any,
    simulator: Any,
    clock: Clock,
    today: dt.date,
    config: Any,
    bank_code: str,
    issuer_account: str,
    folder: Path,
) -> dict[str, Any]:
    """The bank's statements, one per bank day with movements from the first to now (a run
    that crosses midnight in Jakarta has two for the service day and the next; the service
    desk's VA payments of 100 days ago have theirs), each imported twice, the collections
    and QRIS credits expected, and reconciled twice. What happened, for the summary."""
    from settlement import end_of_day, reconciliation

    bank = simulator.bank
    story: dict[str, Any] = {}
    story["qris_settled_rupiah"] = sum(  # the acquirer pays each calendar day's QRIS
        simulator.settle_qris(today + dt.timedelta(days=n))
        for n in range((bank.today() - today).days + 1)
    )
    earlier_days = await days_with_collections(
        connection, {line.value_date for line in bank.accounts[issuer_account].lines}, today
    )
    first_day = earlier_days[0] if earlier_days else today
    imported_lines = reimported_lines = 0
    for statement_path in write_statements(bank, issuer_account, first_day, folder):
        imported = await reconciliation.import_statement(
            connection, statement_path, bank_code, "ani"
        )
        again = await reconciliation.import_statement(connection, statement_path, bank_code, "ani")
        imported_lines += imported.lines_in_file
        reimported_lines += again.lines_new
    accounts = ({bank_code: issuer_account}, issuer_account)
    for day in earlier_days:  # whole days before the service day
        start = dt.datetime.combine(day, dt.time(0), tzinfo=end_of_day.jakarta)
        await reconciliation.expect_collections(
            connection, start, start + dt.timedelta(days=1), day, *accounts
        )
    start_of_day = dt.datetime.combine(today, dt.time(0), tzinfo=end_of_day.jakarta)
    expected = (start_of_day, end_of_day.cutoff_at(today, config), today)
    await reconciliation.expect_collections(connection, *expected, *accounts)
    await reconciliation.expect_qris_settlements(connection, *expected[:2], *accounts)
    report = await reconciliation.reconcile(
        connection, now=clock.now(), statement_through=bank.today()
    )
    rerun = await reconciliation.reconcile(
        connection, now=clock.now(), statement_through=bank.today()
    )
    story["statement_lines"] = imported_lines
    story["statement_lines_reimported"] = reimported_lines
    story["statement_lines_matched"] = report.lines_matched
    story["reconcile_rerun_new_matches"] = rerun.matches_new
    return story


async def work_exceptions(
    connection: Any, clock: Clock, exceptions_found: list[dict[str, Any]], story: dict[str, Any]
) -> None:
    """The clerk writes each open exception off to suspense; the supervisor approves a big one."""
    from settlement import actions
    from settlement.actions import Role, Staff

    clerk, supervisor = Staff("ani", Role.clerk), Staff("budi", Role.supervisor)
    open_rows = await connection.fetch(
        "select exception_id, reason, detail, amount_rupiah from settlement_exceptions "
        "where resolved_at is null order by exception_id"
    )
    for row in open_rows:
        exceptions_found.append(dict(row))
        note = {
            "duplicate_line": "bank listed the collection twice; claim raised with the bank",
            "unexpected_fee": "fee not in the tariff agreed with the bank; disputed",
            "unknown_reference": "VA paid for no issued card; refund to the payer requested",
        }.get(row["reason"], "investigated")
        result = await actions.write_off(
            connection, row["exception_id"], clerk, note, now=clock.now()
        )
        if result is actions.ActionResult.awaiting_approval:
            result = await actions.approve_write_off(
                connection, row["exception_id"], supervisor, now=clock.now()
            )
        story.setdefault("staff_actions", []).append(f"write off {row['reason']}: {result.value}")


async def add_demo_staff(connection: Any, clock: Clock) -> str:
    """Finance staff in three roles, and the staff token the demo registers parties, cards and
    terminals with through the admin API (a named supervisor of its own: each call is in
    staff_actions)."""
    import secrets

    from gateways import staff
    from settlement import pages
    from settlement.actions import Role

    for username, role in (("ani", Role.clerk), ("budi", Role.supervisor), ("citra", Role.auditor)):
        await pages.add_staff(connection, username, secrets.token_urlsafe(12), role)
    return await staff.issue_token(
        connection,
        staff.StaffMember("demo", Role.supervisor),
        issued_by="ksh demo",
        now=clock.now(),
        label="the demo's fleet and shops",
    )


def demo_backoffice(
    url: str, clock: Clock, config: Any, payer_factory: Any, snap_key_pem: bytes
) -> Any:
    """The back office with the terminal API, the SNAP endpoints, QRIS sales and the finance
    pages, holding the issuer's Transaction MAC masters (the demo's cards prove their own
    transactions) and its SNAP key (it asks the acquirer for QRIS codes)."""
    from card_reader.keys import KeyRole, demo_key_store
    from gateways.backoffice import BackofficeConfig, create_app
    from gateways.snap.server import SnapServerSettings
    from gateways.snap.server import extension as snap_extension
    from gateways.terminal_api import qris_sales
    from gateways.terminal_api.card_desk_routes import card_desk_extension
    from gateways.terminal_api.routes import terminal_extension
    from ksh.demo_desk import replacement_wait_days
    from settlement import pages

    return create_app(
        BackofficeConfig(
            url,
            pool_connections_min=1,
            pool_connections_max=6,
            clock=clock,
            settings={
                "tmac_master_keys": demo_key_store().accepted_master_keys(KeyRole.TMAC),
                "snap_private_key_pem": snap_key_pem.decode(),
                # The desk moves a lost card's balance at once (see ksh.demo_desk), at its
                # request: no hourly sweep of its own.
                "replacement_wait_days": replacement_wait_days,
                "replacement_sweep_interval_s": 0,
            },
        ),
        [
            terminal_extension,
            card_desk_extension,
            qris_sales.install,
            snap_extension(SnapServerSettings()),
            pages.extension(pages.PagesSettings(end_of_day=config, payer_factory=payer_factory)),
        ],
    )


def issue_body(card: Any, store: Any, opening_rupiah: int) -> dict[str, Any]:
    """What the issuing counter tells the back office of a card it sold: its number (read from
    the card), its opening balance and its UID (its Transaction MACs are verified with it)."""
    from card_reader.emulator import EmulatedReader
    from card_reader.keys import KeyRole
    from card_reader.ksh_card import KshCard

    reader = EmulatedReader("issuing counter")
    reader.insert(card)
    number = str(KshCard(reader, store.view(KeyRole.READ)).read_state().profile.card_number)
    reader.remove()
    return {"card_number": number, "opening_balance_rupiah": opening_rupiah, "uid": card.uid.hex()}


async def days_with_collections(
    connection: Any, statement_days: set[dt.date], today: dt.date
) -> list[dt.date]:
    """The days before `today` whose VA collections must be expected: a day a statement line
    is dated, or a day the books took a VA payment on. The two differ when a payment crosses
    midnight between the bank's booking and ours (the demo's clock runs thirty times fast
    across it); both days are expected, and matching allows the day between them."""
    from ledger.records import TransferCode

    booked = await connection.fetch(
        """select distinct (t.booked_at at time zone 'Asia/Jakarta')::date as day
             from ledger_transfers t join ledger_accounts a on a.id = t.debit_account_id
            where t.code = $1 and a.kind = 'bank_clearing'
              and a.owner_reference not like 'drawer:%' and t.flags & (2 | 8) = 0""",
        int(TransferCode.pending_top_up),
    )  # as `reconciliation.expect_collections` picks them: not cash at a counter, not voided
    return sorted(day for day in statement_days | {row["day"] for row in booked} if day < today)


def backoffice_pool(app: Any) -> Any:
    from gateways.backoffice import pool_key

    return app[pool_key]


def write_statements(bank: Any, account: str, first_day: dt.date, folder: Path) -> list[Path]:
    """The bank's MT940 statement of `account` for each day from `first_day` to the bank's
    today that has movements, written to `folder`."""
    from gateways.bank_simulator import write_mt940

    paths = []
    day = first_day
    while day <= bank.today():
        statement = bank.statement(account, day)
        if statement.lines:  # a day without movements has nothing to reconcile
            path = folder / f"statement-{account}-{day:%Y%m%d}.sta"
            path.write_text(write_mt940(statement))
            paths.append(path)
        day += dt.timedelta(days=1)
    return paths


async def run_fleet(
    arguments: argparse.Namespace,
    clock: Clock,
    today: dt.date,
    backoffice_url: str,
    staff_token: str,
    story: dict[str, Any],
) -> Any:
    try:
        from bus_terminals.simulator import SimulationSettings, simulate_day
    except ModuleNotFoundError as error:
        story["missing_pieces"].append(f"fleet simulator ({error.name}): no taps")
        return None
    settings = SimulationSettings(
        buses=arguments.buses,
        cards=arguments.cards,
        seed=arguments.seed,
        service_date=today,
        staff_token=staff_token,
        top_up_rate=0.0,  # top-ups come through the bank simulator's virtual accounts instead
        progress=False,
    )
    summary = await simulate_day(settings, backoffice_url, clock.unix_ms)
    story["fleet"] = summary.to_dict()
    return summary


async def run_shops(
    arguments: argparse.Namespace,
    clock: Clock,
    today: dt.date,
    backoffice_url: str,
    staff_token: str,
) -> dict[str, int]:
    """Merchants' points of sale: shoppers' cards (numbers after the fleet's) buy things through
    the real card protocol; each POS journals and uploads its signed batches."""
    import random
    import tempfile

    import aiohttp

    from bus_terminals.point_of_sale import sale_decider
    from bus_terminals.simulator import Bus, validator_keys
    from bus_terminals.sync import UploadStatus
    from bus_terminals.terminal import Verdict
    from bus_terminals.wire import public_key_text
    from card_reader.deck import make_ksh_deck
    from card_reader.keys import demo_key_store

    if arguments.merchants == 0 or arguments.shoppers == 0:
        return {"sales": 0, "sales_rupiah": 0}
    generator = random.Random(arguments.seed + 1)
    store = demo_key_store()
    opening_rupiah = 300_000
    deck = make_ksh_deck(
        store,
        [opening_rupiah] * (arguments.cards + arguments.shoppers),
        seed=f"shops-{arguments.seed}",
    )
    shoppers = deck[arguments.cards :]  # the fleet's riders hold the first card numbers
    sales = 0
    sales_rupiah = 0
    headers = {"Authorization": f"Bearer {staff_token}"}
    midnight_ms = int(
        dt.datetime.combine(today, dt.time(), tzinfo=dt.timezone(dt.timedelta(hours=7))).timestamp()
        * 1000
    )
    with tempfile.TemporaryDirectory(prefix="ksh-shops-") as folder:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def admin(path: str, body: dict[str, Any]) -> None:
                why = {"reason": "demo: the day's shops"}
                async with http.post(
                    backoffice_url + path, json={**why, **body}, headers=headers
                ) as response:
                    if response.status >= 300:
                        raise RuntimeError(f"{path}: {response.status} {await response.text()}")

            for card in shoppers:
                await admin("/admin/v1/cards", issue_body(card, store, opening_rupiah))
            tills = []
            for index in range(arguments.merchants):
                merchant = f"WARUNG-{index + 1:02d}"
                await admin(
                    "/admin/v1/merchants",
                    {
                        "merchant_id": merchant,
                        "name": f"Warung {index + 1}",
                        "fee_basis_points": 100,
                    },
                )
                till = Bus(
                    f"POS-{index + 1:03d}",
                    "",
                    Path(folder),
                    validator_keys(store),
                    backoffice_url,
                    http,
                    now_ms=clock.unix_ms,
                )
                till.terminal.merchant_id = merchant
                await admin(
                    "/admin/v1/terminals",
                    {
                        "terminal_id": till.terminal_id,
                        "public_key": public_key_text(till.private_key.public_key()),
                        "role": "pos",
                        "merchant_id": merchant,
                    },
                )
                tills.append(till)
            for shopper_index, card in enumerate(shoppers):
                for purchase in range(generator.randint(1, 4)):
                    till = generator.choice(tills)
                    amount = generator.choice((5_000, 12_000, 18_500, 25_000, 40_000))
                    moment = (
                        midnight_ms
                        + (7 * 3600 + generator.randint(0, 13 * 3600)) * 1000
                        + shopper_index * 10
                        + purchase
                    )
                    feedback = till.tap(card, moment, sale_decider(amount, "demo purchase"))
                    if feedback.verdict is Verdict.accepted:
                        sales += 1
                        sales_rupiah += amount
            for till in tills:
                for _ in range(upload_rounds_max):
                    if await till.sync.upload_once() is not UploadStatus.acknowledged:
                        break
                till.close()
    return {"sales": sales, "sales_rupiah": sales_rupiah}


async def pay_virtual_accounts(
    simulator: Any, bank: Any, cards: list[str], company_code: str, seed: int
) -> dict[str, Any]:
    import random

    generator = random.Random(seed)
    chosen = generator.sample(cards, max(1, len(cards) // 6)) if cards else []
    credited = 0
    rupiah = 0
    for index, card in enumerate(chosen):
        amount = generator.choice((20_000, 50_000, 100_000))
        if index == 1:
            bank.trouble.duplicate_next_statement_lines = 1
        payment = await simulator.pay_va(company_code.rjust(8) + card, amount)
        if payment.credited:
            credited += 1
            rupiah += amount
    unknown = await simulator.pay_va(
        company_code.rjust(8) + "6099999999999999", 250_000, credit_even_if_refused=True
    )
    return {
        "va_top_ups": credited,
        "va_top_ups_rupiah": rupiah,
        "va_payment_for_no_card_credited_by_bank": unknown.credited,
    }


async def register_parties(
    connection: Any, bank: Any, operator_account: str, other_bank_code: str
) -> list[tuple[str, str]]:
    """Where each party with a payable is paid: the operator and all but one merchant at the
    same bank (intrabank), one merchant elsewhere (interbank, BI-FAST fee). Returns
    (party kind, account) with merchants first."""
    from gateways.bank_simulator.bank import BankAccount
    from settlement import end_of_day

    rows = await connection.fetch(
        """select distinct kind, owner_reference from ledger_accounts
            where kind in ('merchant_payable', 'operator_revenue') order by kind, owner_reference"""
    )
    parties = []
    payees = []
    for index, row in enumerate(r for r in rows if r["kind"] == "merchant_payable"):
        account = f"77{index:08d}"
        other_bank = index == 0
        if not other_bank:
            bank.accounts[account] = BankAccount(account, f"TOKO {row['owner_reference']}", 0)
        parties.append(
            (
                "merchant",
                row["owner_reference"],
                f"TOKO {row['owner_reference']}",
                other_bank_code if other_bank else "",
                account,
            )
        )
        payees.append(("merchant", account))
    for row in rows:
        if row["kind"] == "operator_revenue":
            parties.append(
                (
                    "operator",
                    row["owner_reference"],
                    "BLU UPTD Trans Semarang",
                    "",
                    operator_account,
                )
            )
            payees.append(("operator", operator_account))
    await end_of_day.register_parties(connection, parties)
    return payees


async def check_invariants(
    connection: Any,
    day: dt.date,
    bank: Any,
    issuer_account: str,
    bank_code: str,
    simulation: Any,
    story: dict[str, Any],
) -> tuple[dict[str, bool], dict[str, Any]]:
    from ksh.demo_desk import desk_invariants
    from ledger.audit import check_ledger
    from ledger.records import TransferCode
    from settlement import actions

    # Through the bank's today: a run that crossed midnight has statement lines of the next day.
    close = await actions.day_close(connection, max(day, bank.today()))
    problems = await check_ledger(connection)
    kinds = {
        row["kind"]: int(row["balance"])
        for row in await connection.fetch(
            "select kind, sum(credits_posted - debits_posted) as balance from ledger_accounts group by kind"
        )
    }
    clearing = await connection.fetchval(
        "select coalesce(sum(debits_posted - credits_posted), 0) from ledger_accounts where kind = 'bank_clearing' and owner_reference = $1",
        bank_code,
    )
    books_bank = await connection.fetchval(
        "select coalesce(sum(debits_posted - credits_posted), 0) from ledger_accounts where kind = 'bank_account' and owner_reference = $1",
        f"{bank_code}:{issuer_account}",
    )
    account = bank.accounts[issuer_account]
    bank_movement = account.balance_rupiah - account.opening_rupiah
    taps = await connection.fetchval("select count(*) from ledger_transfers where code = 1")
    moved = await connection.fetchval(
        "select coalesce(sum(amount), 0) from ledger_transfers where flags & 2 = 0"
    )
    qris = await connection.fetchrow(
        """select (select count(*) from qris_orders where state = 'paid') as paid,
                  (select count(*) from ledger_transfers where code = $1) as booked,
                  (select coalesce(sum(debits_posted - credits_posted), 0) from ledger_accounts
                    where kind = 'bank_clearing' and owner_reference like 'qris:%') as owed""",
        int(TransferCode.qris_payment),
    )
    invariants = {
        "ledger_audit_clean": not problems,
        "qris_paid_once_each": qris["paid"]
        == qris["booked"]
        == story.get("qris_sales", 0) + story.get("qris_rides", 0),
        "qris_acquirer_settled": int(qris["owed"]) == 0,
        "books_sum_to_zero": sum(kinds.values()) == 0,
        "day_closed_zero_unexplained": close.closed,
        "bank_and_books_agree": int(books_bank) == bank_movement,
        "bank_clearing_settled": int(clearing) == 0,
        "nothing_left_in_transit": kinds.get("settlement_in_transit", 0) == 0,
        "statement_reimport_adds_nothing": story.get("statement_lines_reimported") == 0,
        "reconcile_rerun_changes_nothing": story.get("reconcile_rerun_new_matches") == 0,
    }
    if simulation is not None:
        invariants["cards_equal_their_purse_accounts"] = not simulation.cards_mismatched
    if story.get("desk"):
        invariants.update(await desk_invariants(connection, story["desk"]))
    figures = {
        "taps_booked": int(taps),
        "rupiah_moved": int(moved),
        "ledger_problems": [str(problem) for problem in problems[:10]],
        "suspense_rupiah": kinds.get("suspense", 0),
        "unexplained_rupiah": close.unexplained_rupiah,
        "exceptions_open_at_close": close.exceptions_open,
    }
    return invariants, figures


async def write_report(
    connection: Any, day: dt.date, config: Any, story: dict[str, Any], folder: Path
) -> Path:
    from settlement import charts, views
    from settlement.reports import demo_report_html

    fares = await views.day_fares(connection, day, config)
    hours, corridors = fares.per_hour, fares.per_corridor
    batches = [
        {
            "batch": row["batch_id"],
            "party": f"{row['party_kind']} {row['party_id']}",
            "gross_rupiah": int(row["gross_rupiah"]),
            "fees_rupiah": int(row["fees_rupiah"]),
            "net_rupiah": int(row["net_rupiah"]),
            "attempts": row["attempts"] or "",
            "confirmed_by_statement": bool(row["confirmed"]),
        }
        for row in await views.batches(connection, day)
    ]
    exceptions = [
        {
            "reason": row["reason"],
            "amount_rupiah": int(row["amount_rupiah"]),
            "detail": row["detail"],
            "resolution": row["resolution"] or "open",
            "by": row["resolved_by"] or "",
            "approved_by": row["approved_by"] or "",
            "note": row["resolution_note"] or "",
        }
        for row in await views.exceptions(connection, open_only=False)
    ]
    page = demo_report_html(
        {key: value for key, value in story.items() if key not in ("fleet", "exceptions")},
        [
            charts.bar_chart("Taps per hour (WIB)", hours, unit="taps"),
            charts.bar_chart("Fare revenue per corridor (rupiah)", corridors, unit="rupiah"),
        ],
        {
            "The service desk's day": story.get("service_desk", []),
            "Exceptions and what finance did": exceptions,
            "Settlement batches": batches,
        },
    )
    path = folder / f"demo-{day.isoformat()}.html"
    path.write_text(page, encoding="utf-8")
    return path


def payouts_text(payouts: dict[str, int]) -> str:
    """The payouts by outcome, as the progress line and the summary both say them."""
    return ", ".join(f"{count} {outcome}" for outcome, count in sorted(payouts.items())) or "none"


def print_summary(summary: dict[str, Any]) -> None:
    fleet = summary.get("fleet") or {}
    print(f"KSH demo, service day {summary['service_day']}")
    print(f"  taps booked           {summary.get('taps_booked', 0):,}")
    print(f"  rupiah moved          {summary.get('rupiah_moved', 0):,}")
    if fleet:
        print(
            f"  cards checked         {fleet.get('cards_checked', 0)} (matching their purse accounts: {fleet.get('cards_matching', 0)})"
        )
    print(
        f"  VA top-ups            {summary.get('va_top_ups', 0)} (Rp {summary.get('va_top_ups_rupiah', 0):,})"
    )
    print(
        f"  settlement batches    {summary.get('settlement_batches', 0)} (net Rp {summary.get('settlement_net_rupiah', 0):,})"
    )
    print(
        f"  statement lines       {summary.get('statement_lines', 0)} ({summary.get('statement_lines_matched', 0)} matched)"
    )
    print(f"  payouts               {payouts_text(summary.get('payouts', {}))}")
    print(f"  exceptions found      {len(summary.get('exceptions', []))}")
    for found in summary.get("exceptions", []):
        print(f"    - {found['reason']}: Rp {found['amount_rupiah']:,} ({found['detail']})")
    for action in summary.get("staff_actions", []):
        print(f"  staff: {action}")
    for scene in summary.get("service_desk", []):
        print(f"  desk: {scene['scene']} (Rp {scene['rupiah']:,}): {scene['what_happened']}")
    print("  invariants:")
    for name, holds in summary["invariants"].items():
        print(f"    {'ok  ' if holds else 'FAIL'} {name.replace('_', ' ')}")
    for missing in summary.get("missing_pieces", []):
        print(f"  missing: {missing}")
    print(f"  report: {summary.get('report')}")
