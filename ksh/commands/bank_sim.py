"""`ksh bank-sim`: a bank that speaks SNAP BI, on loopback, for demos and tests."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from ksh import argtypes


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bank-sim",
        help="run a simulated bank (SNAP BI), pay a VA, fetch statements, inject trouble",
        description="A bank that keeps accounts, pays virtual accounts by calling the issuer's "
        "SNAP endpoints, executes payouts, and writes daily statements (MT940, CSV).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    register_serve(actions)
    register_clients(actions)


def register_serve(actions: Any) -> None:
    serve = actions.add_parser(
        "serve",
        help="run the bank",
        description="Run a simulated bank on HTTP until stopped (Ctrl-C): it calls the issuer's "
        "SNAP BI endpoints when a citizen pays a virtual account (pay-va), executes the payouts "
        "`ksh settle pay` sends it, and writes each day's statements. The issuer registers it "
        "with `ksh partner add` (its --partner-id, --client-secret and the public key of "
        "--bank-key); trouble can be injected while it runs (`ksh bank-sim trouble`).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=argtypes.port, default=8091, help="port to listen on")
    serve.add_argument(
        "--partner-id", required=True, help="the bank's SNAP partner id at the issuer"
    )
    serve.add_argument(
        "--client-secret", required=True, help="the SNAP client secret the issuer gave the bank"
    )
    serve.add_argument(
        "--issuer-public-key",
        type=argtypes.existing_file,
        required=True,
        help="our public key (ksh partner own-key)",
    )
    serve.add_argument(
        "--bank-key",
        type=Path,
        required=True,
        help="the bank's private key (created when missing; give its public key to ksh partner add)",
    )
    serve.add_argument(
        "--issuer-url",
        type=argtypes.http_urls,
        default="http://127.0.0.1:8080/snap",
        help="the issuer's SNAP BI base URL",
    )
    serve.add_argument(
        "--company-code", default="88001", help="virtual account prefix of the issuer"
    )
    serve.add_argument("--channel", default="95221", help="SNAP channel id the bank sends")
    serve.add_argument(
        "--issuer-account", default="1350012345678", help="the issuer's account at this bank"
    )
    serve.add_argument(
        "--issuer-opening",
        type=argtypes.rupiah,
        default=0,
        help="opening balance of the issuer's account (rupiah)",
    )
    serve.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="NUMBER:NAME:OPENING",
        help="another account at this bank (repeatable)",
    )
    serve.add_argument(
        "--interbank-fee",
        type=argtypes.rupiah,
        default=2_500,
        help="fee charged on a transfer to another bank (rupiah)",
    )
    serve.add_argument(
        "--statements-dir",
        type=argtypes.folder,
        help="write each day's statements here (MT940 .sta and .csv per account) at "
        "each day's end and on exit",
    )
    serve.set_defaults(handler=run_serve)


def register_clients(actions: Any) -> None:
    """What runs against a running simulator: a citizen's payment, statements, trouble."""
    pay = actions.add_parser("pay-va", help="a citizen pays a VA from the bank's app")
    pay.add_argument(
        "--url",
        type=argtypes.http_urls,
        default="http://127.0.0.1:8091",
        help="the running bank simulator",
    )
    pay.add_argument("--va", required=True, help="virtual account number (company code + card)")
    pay.add_argument(
        "--amount",
        type=argtypes.integer(1, 2_000_000, "rupiah"),
        required=True,
        help="rupiah the citizen pays (a card holds at most Rp 2,000,000)",
    )
    pay.set_defaults(handler=run_pay)

    statement = actions.add_parser("statement", help="an account's statement for one day")
    statement.add_argument(
        "--url",
        type=argtypes.http_urls,
        default="http://127.0.0.1:8091",
        help="the running bank simulator",
    )
    statement.add_argument("--account", required=True, help="the account number at the bank")
    statement.add_argument("--day", required=True, help="YYYY-MM-DD (Jakarta)")
    statement.add_argument(
        "--format", choices=("mt940", "csv"), default="mt940", help="statement file format"
    )
    statement.add_argument("--out", type=argtypes.new_file, help="file to write (default: stdout)")
    statement.set_defaults(handler=run_statement)

    trouble = actions.add_parser("trouble", help="inject faults into a running simulator")
    trouble.add_argument(
        "--url",
        type=argtypes.http_urls,
        default="http://127.0.0.1:8091",
        help="the running bank simulator",
    )
    trouble.add_argument(
        "--reject-account",
        action="append",
        default=None,
        help="refuse transfers to this account (repeatable)",
    )
    trouble.add_argument(
        "--fail-next-transfers", type=argtypes.integer(0, 1000), help="refuse this many transfers"
    )
    trouble.add_argument(
        "--lose-next-answers",
        type=argtypes.integer(0, 1000),
        help="do the next transfers but drop the connection before answering",
    )
    trouble.add_argument(
        "--duplicate-next-statement-lines",
        type=argtypes.integer(0, 1000),
        help="list this many statement lines twice",
    )
    trouble.add_argument(
        "--unexpected-fee", type=argtypes.rupiah, help="rupiah, charged on the next transfer"
    )
    trouble.add_argument(
        "--response-delay-ms",
        type=argtypes.integer(0, 60_000, "ms"),
        help="answer every request this late",
    )
    trouble.set_defaults(handler=run_trouble)


def _read_or_create_bank_key(path: Path) -> bytes:
    from gateways.snap.partners import generate_own_key

    if not path.exists():
        public_path = path.with_suffix(".pub.pem")
        public_path.write_bytes(generate_own_key(path))
        print(f"bank key created: {path}; its public key: {public_path}")
    return path.read_bytes()


def run_serve(arguments: argparse.Namespace) -> int:
    from aiohttp import web

    from gateways.bank_simulator import BankSettings, create_bank_app
    from gateways.snap import signature
    from ksh.cli import UserError
    from ksh.commands.serve import refuse_port_in_use

    refuse_port_in_use(arguments.host, arguments.port)  # before a bank key is made

    accounts = []
    for text in arguments.account:
        number, _, rest = text.partition(":")
        name, _, opening = rest.partition(":")
        if not number or not name or not opening.isdigit():
            raise UserError(f"--account {text!r} must look like NUMBER:NAME:OPENING")
        accounts.append((number, name, int(opening)))
    try:
        issuer_public = arguments.issuer_public_key.read_bytes()
        signature.load_public_key(issuer_public)
        bank_private = _read_or_create_bank_key(arguments.bank_key)
        signature.load_private_key(bank_private)
    except (OSError, ValueError) as error:
        raise UserError(f"key: {error}") from None
    settings = BankSettings(
        partner_id=arguments.partner_id,
        client_secret=arguments.client_secret,
        issuer_public_key_pem=issuer_public,
        bank_private_key_pem=bank_private,
        company_code=arguments.company_code,
        channel_id=arguments.channel,
        issuer_base_url=arguments.issuer_url,
        issuer_account_no=arguments.issuer_account,
        issuer_account_opening_rupiah=arguments.issuer_opening,
        accounts=tuple(accounts),
        interbank_fee_rupiah=arguments.interbank_fee,
    )
    app = create_bank_app(settings)
    if arguments.statements_dir:
        app.cleanup_ctx.append(_statement_writer(arguments.statements_dir))
    web.run_app(app, host=arguments.host, port=arguments.port)
    return 0


def _statement_writer(folder: Path) -> Any:
    """Write the statements of every finished day as it ends, and of all days on exit."""
    import contextlib

    from gateways.bank_simulator import simulator_key

    async def writer(app: Any) -> Any:
        simulator = app[simulator_key]
        written: set[Any] = set()

        async def each_day_end() -> None:
            while True:
                await asyncio.sleep(60)
                today = simulator.bank.today()
                for day in simulator.days_with_movements():
                    if day < today and day not in written:
                        simulator.write_statements(folder, day)
                        written.add(day)

        task = asyncio.create_task(each_day_end())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for day in simulator.days_with_movements():
            simulator.write_statements(folder, day)

    return writer


async def _request(method: str, url: str, payload: Any = None) -> tuple[int, str]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, url, json=payload, timeout=aiohttp.ClientTimeout(total=30)
        ) as response,
    ):
        return response.status, await response.text()


def _call(method: str, url: str, payload: Any = None) -> str:
    import aiohttp

    from ksh.cli import UserError

    try:
        status, text = asyncio.run(_request(method, url, payload))
    except (aiohttp.ClientError, TimeoutError) as error:
        raise UserError(f"bank simulator at {url} is not reachable: {error}") from None
    if status != 200:
        raise UserError(f"bank simulator answered {status}: {text.strip()[:200]}")
    return text


def run_pay(arguments: argparse.Namespace) -> int:
    text = _call(
        "POST",
        arguments.url.rstrip("/") + "/sim/va-payments",
        {"virtualAccountNo": arguments.va, "amount": arguments.amount},
    )
    answer = json.loads(text)
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("credited") else 1


def run_statement(arguments: argparse.Namespace) -> int:
    url = (
        f"{arguments.url.rstrip('/')}/sim/statements/{arguments.account}/"
        f"{arguments.day}.{arguments.format}"
    )
    text = _call("GET", url)
    if arguments.out:
        arguments.out.write_text(text)
    else:
        print(text, end="")
    return 0


def run_trouble(arguments: argparse.Namespace) -> int:
    from ksh.cli import UserError

    payload: dict[str, Any] = {}
    if arguments.reject_account is not None:
        payload["rejectAccounts"] = arguments.reject_account
    for option, field in (
        ("fail_next_transfers", "failNextTransfers"),
        ("lose_next_answers", "loseNextAnswers"),
        ("duplicate_next_statement_lines", "duplicateNextStatementLines"),
        ("unexpected_fee", "unexpectedFeeRupiah"),
        ("response_delay_ms", "responseDelayMs"),
    ):
        value = getattr(arguments, option)
        if value is not None:
            payload[field] = value
    if not payload:
        raise UserError("name at least one kind of trouble")
    _call("POST", arguments.url.rstrip("/") + "/sim/trouble", payload)
    return 0
