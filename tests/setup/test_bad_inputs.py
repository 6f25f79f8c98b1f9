"""A table of inputs a new user gets wrong, each run as `ksh` is run (a subprocess, stdin
closed, no terminal): one line on stderr, `ksh COMMAND: error: ...` naming what is wrong, a
non-zero exit, no traceback, and the books as they were.

One database, set up once for the module (a supervisor, an operator, a merchant, a terminal,
a card), serves every case; the cases run a few at a time in threads and are checked one by
one, and a last test compares a digest of every table before and after them all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from ledger.database import database_url_for
from tests.setup.helpers import new_public_key, staff_password

ksh = [sys.executable, "-m", "ksh"]
sample = Path(__file__).parents[2] / "bus_terminals" / "fare" / "data" / "journey_sample.json"
card = "6032900000000042"
why = "--as budi --reason test"
pelajar = "student_ecard_pelajar"  # the fare feed's pass priced Rp 0
threads = 4


@dataclass(frozen=True)
class Case:
    argv: str  # as typed in a shell; {dir} is the module's scratch folder, {file} a file in it
    fragment: str  # what the one line must say (the input it names)
    env: tuple[tuple[str, str], ...] = ()  # variables set (or, with the value "", removed)


def case(argv: str, fragment: str, **env: str) -> Case:
    return Case(argv, fragment, tuple(env.items()))


def journey(**changes: object) -> str:
    """The sample journey with legs[0] or top-level fields changed, as JSON text."""
    data = json.loads(sample.read_text())
    for key, value in changes.items():
        target = data["legs"][0] if key.startswith("leg0_") else data
        name = key.removeprefix("leg0_")
        if value is None:
            target.pop(name)
        else:
            target[name] = value
    return json.dumps(data, indent=2)


journeys = {
    "reversed": json.dumps(
        {**json.loads(sample.read_text()), "legs": json.loads(sample.read_text())["legs"][::-1]}
    ),
    "overlap": journey().replace("2026-03-03T08:05", "2026-03-03T07:45"),
    "date_only": journey(leg0_departure="2026-03-03"),
    "renamed": journey(leg0_route_id=None, leg0_route="K1"),
    "no_arrival": journey(leg0_arrival=None),
    "arrives_first": journey(leg0_arrival="2026-03-03T07:00"),
    "category": journey(rider_category_id="student"),
    "medium": journey(fare_media_id="gold_card"),
    "route": journey(leg0_route_id="K99"),
    "stop": journey(leg0_from_stop_id="atlantis"),
    "top_key": journey(rider="general"),
    "no_legs": journey(legs=[]),
    "not_object": "[1, 2]",
    "not_json": "{legs: ",
}

cases: tuple[Case, ...] = (
    # ports, workers and other sizes beyond their stated limits
    case("serve --port 70000", "argument --port: 70,000 is outside the limits: from 1 to 65,535"),
    case("serve --port 0", "argument --port: 0 is outside"),
    case("serve --port -1", "argument --port"),
    case("serve --port http", "argument --port: not a whole number: 'http'"),
    case("serve --workers 100000", "argument --workers: 100,000 is outside the limits"),
    case("serve --workers 0", "argument --workers"),
    case("serve --password-checks 0", "argument --password-checks"),
    case("serve --keystore {dir}/none.json", "argument --keystore: {dir}/none.json: no such file"),
    case("serve --keystore {dir}", "argument --keystore: {dir} is a folder, not a file"),
    case("serve", "KSH_EXPIRY_SWEEP_INTERVAL_S", KSH_EXPIRY_SWEEP_INTERVAL_S="soon"),
    case("serve", "KSH_EXPIRY_SWEEP_INTERVAL_S", KSH_EXPIRY_SWEEP_INTERVAL_S="-5"),
    case("serve", "KSH_UPLOAD_BOOKING_TIMEOUT_MS", KSH_UPLOAD_BOOKING_TIMEOUT_MS="1"),
    case(
        "bank-sim serve --port 99999 --partner-id b --client-secret s "
        "--issuer-public-key {file} --bank-key {dir}/bank.pem",
        "argument --port",
    ),
    case(
        "bank-sim serve --partner-id b --client-secret s --issuer-public-key {dir}/no.pem "
        "--bank-key {dir}/bank.pem",
        "argument --issuer-public-key",
    ),
    case(
        "bank-sim serve --partner-id b --client-secret s --issuer-public-key {file} "
        "--bank-key {dir}/bank.pem --statements-dir {file}",
        "argument --statements-dir: {file} is a file, not a folder",
    ),
    case(
        "bank-sim serve --partner-id b --client-secret s --issuer-public-key {file} "
        "--bank-key {dir}/bank.pem --interbank-fee -1",
        "argument --interbank-fee",
    ),
    case("bank-sim pay-va --va 880016032900000000042 --amount 0", "argument --amount"),
    case("bank-sim pay-va --va 880016032900000000042 --amount -5", "argument --amount"),
    case("bank-sim trouble --fail-next-transfers -1", "argument --fail-next-transfers"),
    case("bank-sim trouble --response-delay-ms 99999999", "argument --response-delay-ms"),
    case("bank-sim statement --account 1 --day 2026-01-01 --out {dir}", "is a folder, not a file"),
    case("db primary --data {file}", "argument --data: {file} is a file, not a folder"),
    case("db primary --data {dir}/pg --port 65536", "argument --port"),
    case("db standby --from postgresql://x/y --data {dir}/sb --port 0", "argument --port"),
    case("db promote --data {file}", "argument --data"),
    case("demo --buses 100000", "argument --buses: 100,000 is outside the limits: from 1 to 300"),
    case("demo --buses 0", "argument --buses"),
    case("demo --cards 5", "argument --cards: 5 is outside the limits: from 10 to 5,000"),
    case("demo --merchants -1", "argument --merchants"),
    case("demo --shoppers 1000000", "argument --shoppers"),
    case("demo --day 2026-02-30", "argument --day"),
    case("demo --reports {file}", "argument --reports: {file} is a file, not a folder"),
    case("simulate --buses 100000", "argument --buses: 100,000 is outside the limits"),
    case("simulate --cards 0", "argument --cards"),
    case("simulate --cards 10001", "argument --cards"),
    case("simulate --network-loss 2", "argument --network-loss: 2 is not a rate from 0"),
    case("simulate --network-loss nan", "argument --network-loss"),
    case("simulate --power-loss -0.1", "argument --power-loss"),
    case("simulate --card-pull one", "argument --card-pull: not a number"),
    case("simulate --folder {file}", "argument --folder: {file} is a file, not a folder"),
    case("simulate --cards-out {dir}", "argument --cards-out: {dir} is a folder, not a file"),
    case("simulate --cards-out {dir}/no/such/deck.json", "argument --cards-out"),
    case("simulate --backoffice http://127.0.0.1:9", "--backoffice needs --staff-token"),
    case("simulate --backoffice notaurl --staff-token x", "'notaurl' is not an http://"),
    case("simulate --backoffice http://a:99999 --staff-token x", "Port out of range"),
    case("validator --terminal-id BUS-01 --backoffice 127.0.0.1:8080", "argument --backoffice"),
    case("bank-sim pay-va --url ftp://bank --va 1 --amount 5", "argument --url"),
    # terminals: ids become folder names
    case(
        "validator --terminal-id ../../etc --emulated {file} --demo-keys --init",
        "argument --terminal-id: '../../etc' must not contain /",
    ),
    case("validator --terminal-id .hidden --init", "argument --terminal-id"),
    case("validator --terminal-id a/b --init", "argument --terminal-id"),
    case("validator --terminal-id " + "B" * 33 + " --init", "argument --terminal-id"),
    case("validator --terminal-id BUS-01 --state {file} --init", "argument --state"),
    case("validator --terminal-id BUS-01 --sync-interval-s 0", "argument --sync-interval-s"),
    case("validator --terminal-id BUS-01 --sync-interval-s -3", "argument --sync-interval-s"),
    case(
        "validator --terminal-id BUS-01 --route K1 --emulated {dir}/no.json",
        "give --token-dir DIR, --keystore FILE (or --demo-keys for emulated demo decks)",
    ),
    case("validator --terminal-id BUS-01", "--route is required"),
    case("pos --terminal-id ../POS --init", "argument --terminal-id"),
    case("pos --terminal-id POS-01 --merchant warung --amount -5", "argument --amount"),
    case("pos --terminal-id POS-01 --merchant warung --amount 0", "argument --amount"),
    case("pos --terminal-id POS-01 --merchant warung --amount 2000001", "argument --amount"),
    case("pos --terminal-id POS-01 --emulated {file}", "--merchant is required"),
    # cards and decks
    case("card deck-new --out {dir}", "argument --out"),
    case("card deck-new --out {dir}/no/such/deck.json", "argument --out"),
    case("card deck-new --out {dir}/deck.json --cards 100000", "--cards"),
    case("card deck-new --out {dir}/deck.json --balance -5", "--balance"),
    case("card deck-new --out {dir}/deck.json --balance 2000001", "--balance"),
    case("card keystore-new --out {dir}/keys.json", "passphrase"),
    case("card emulate --deck {dir}/none.json", "none.json"),
    case("card issue --category student --keystore {file}", "argument --category"),
    # fares: a journey file as a user writes one
    case("fare price --journey {dir}/none.json", "none.json: No such file or directory"),
    case("fare price --journey {dir}", "Is a directory"),
    case("fare price", "--journey"),
    case("fare price --journey {j_reversed}", "legs[1].departure: before legs[0] arrives"),
    case("fare price --journey {j_overlap}", "legs[1].departure: before legs[0] arrives"),
    case("fare price --journey {j_date_only}", "legs[0].departure: not a local ISO date and time"),
    case("fare price --journey {j_renamed}", "legs[0].route: unknown field"),
    case("fare price --journey {j_no_arrival}", "legs[0].arrival: missing"),
    case("fare price --journey {j_arrives_first}", "legs[0].arrival: before departure"),
    case("fare price --journey {j_category}", "'student' is not in rider_categories.txt"),
    case("fare price --journey {j_medium}", "'gold_card' is not in fare_media.txt"),
    case("fare price --journey {j_route}", "'K99' is not in routes.txt"),
    case("fare price --journey {j_stop}", "'atlantis' is not in stops.txt"),
    case("fare price --journey {j_top_key}", "rider: unknown field"),
    case("fare price --journey {j_no_legs}", "a non-empty list of legs is required"),
    case("fare price --journey {j_not_object}", "expected a JSON object"),
    case("fare price --journey {j_not_json}", "(json)"),
    case("fare price --journey {sample} --gtfs {dir}/nofeed", "nofeed"),
    case("fare check --gtfs {file}", "{file}"),
    case("fare check --today 2026-13-01", "argument --today: not a date"),
    case("fare check --gtfs {feed_renamed}", "no column amount (the header has"),
    case("fare check --gtfs {feed_negative}", "is negative: an amount here cannot be"),
    # the books: owners, days and files
    case("ledger balance nonsense", "nonsense"),
    case("ledger balance --owner card_purse:1", "no card_purse account of '1'"),
    case("ledger balance --owner nobody", "--owner"),
    case("ledger accounts --limit 0", "--limit"),
    case("ledger export --format csv --out {dir}", "argument --out: {dir} is a folder, not a file"),
    case("ledger export --format csv --out {dir}/no/such/books.csv", "argument --out"),
    case("settle status --day 2026-02-30", "argument --day"),
    case("settle close --day 2026-01-01 --cutoff 25:00", "argument --cutoff"),
    case("settle pay --partner nope --key {dir}/none.pem", "argument --key"),
    case("settle pay --partner nope --key {file}", "cannot load our private key {file}"),
    case("settle export --out {dir}", "argument --out: {dir} is a folder, not a file"),
    case("settle staff newbie --role clerk", "no password for newbie: set KSH_STAFF_PASSWORD"),
    case("settle staff newbie --role emperor", "argument --role"),
    case("reconcile import {dir}/none.sta --bank 009", "{dir}/none.sta: no such file"),
    case("reconcile import {dir} --bank 009", "is a folder, not a file"),
    case("reconcile import {file} --bank 009", "neither MT940 nor the KSH statement CSV"),
    case("reconcile run --amount-tolerance -5", "argument --amount-tolerance"),
    case("reconcile run --date-tolerance 100000", "argument --date-tolerance"),
    case("reconcile run --day yesterday", "argument --day"),
    case("partner own-key --out {dir}", "{dir}"),
    case(
        "partner add --id b --client-secret s --channel 1 --company-code 88001 "
        "--public-key {dir}/none.pem",
        "none.pem",
    ),
    # onboarding with a wrong staff member or a wrong id
    case("operator add --id trans-semarang --name X " + why, "trans-semarang"),
    case("operator add --id x --name X --as nobody --reason r", "nobody"),
    case("operator add --id x --name X --as budi --reason ''", "reason"),
    case("operator show nobody", "nobody"),
    case("operator suspend nobody " + why, "nobody"),
    case("merchant add --id warung --name X " + why, "warung"),
    case(
        "terminal add --id ../up --public-key {key} --role validator --operator trans-semarang "
        + why,
        "terminal_id must not contain /",
    ),
    case(
        "terminal add --id BUS-02 --public-key nonsense --role validator "
        "--operator trans-semarang " + why,
        "public",
    ),
    case(
        "terminal add --id BUS-02 --public-key {key} --role validator --operator nobody " + why,
        "nobody",
    ),
    case("terminal show NOPE", "NOPE"),
    case("cards issue --number 12 --opening-balance 0 " + why, "card_number must be 8 to 19"),
    case("cards issue --number " + card + " --opening-balance -1 " + why, "opening"),
    case("cards issue --number 6032900000000099 --opening-balance 3000000 " + why, "2,000,000"),
    case("cards issue --number " + card + " --opening-balance 0 " + why, card),
    case(f"cards pass --card {card} --product monthly " + why, "no pass 'monthly' in the fare"),
    case("cards pass --card 6032900000000099 --product " + pelajar + " " + why, "never issued"),
    case(f"cards pass --card {card} --product {pelajar} --receipt '' " + why, "--receipt: ''"),
    case("cards pass-cancel pass-0000000000 " + why, "no pass sale 'pass-0000000000'"),
    case("party set --operator nobody --bank 113 --account 12 --holder X " + why, "nobody"),
    # environment a user can get wrong
    case("ledger accounts", "cannot reach the database", DATABASE_URL="postgres://nowhere:bad"),
    case("ledger accounts", "cannot reach the database", DATABASE_URL="not a url"),
    case(
        "ledger accounts",
        "the data folder {file} (KSH_DATA_DIR) is a file",
        DATABASE_URL="",
        KSH_DATA_DIR="{file}",
    ),
    case(
        "simulate --backoffice http://127.0.0.1:9 --staff-token x",
        "back office unreachable",
    ),
    case("nonexistent", "invalid choice: 'nonexistent'"),
    case("ledger check --help-me", "unrecognized arguments: --help-me"),
    case("quarantine list --bogus", "unrecognized arguments: --bogus"),
    case("fare price --journey {sample} extra", "unrecognized arguments: extra"),
    case("bench ingest --terminals 0", "argument --terminals: 0 is outside the limits"),
    case("bench ingest --terminals 100000000", "argument --terminals"),
    case("bench ledger --transfers -5", "argument --transfers"),
    case("card info --reader x --wait nan", "argument --wait"),
    case("card info --reader x --wait -5", "argument --wait"),
    case("demo --day 1900-01-01", "a day from 2000-04-10 to 2099-12-31"),
    case("fare", "the following arguments are required: ACTION"),
)


def substituted(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


@dataclass(frozen=True)
class Ran:
    argv: list[str]
    status: int
    err: str
    seconds: float


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ksh, *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def books_digest(url: str) -> str:
    """Row counts of every table, and the ledger's totals, as one hash: a refused command
    that wrote anything at all changes it."""
    connection = await asyncpg.connect(url)
    try:
        tables = await connection.fetch(
            "select tablename from pg_tables where schemaname = 'public' order by tablename"
        )
        counts = {
            row["tablename"]: await connection.fetchval(
                f'select count(*) from "{row["tablename"]}"'
            )
            for row in tables
        }
        totals = await connection.fetch(
            "select id, debits_posted, credits_posted from ledger_accounts order by id"
        )
        text = json.dumps([counts, [tuple(map(str, row)) for row in totals]], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def books(
    postgres_server_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, object]]:
    """A database set up as a new operator would, the scratch files the cases name, and the
    digest of the books before any case ran."""
    name = f"ksh_test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(postgres_server_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'create database "{name}" template "{migrated_template}"'))
    url = database_url_for(postgres_server_url, name)
    folder = tmp_path_factory.mktemp("bad-inputs")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "KSH_DATA_DIR": str(folder / "data"),
        "KSH_STAFF_PASSWORD": staff_password,
    }
    env.pop("KSH_KEYSTORE_PASSPHRASE", None)
    key = new_public_key()
    for setup in (
        "settle staff budi --role supervisor",
        "operator add --id trans-semarang --name Trans-Semarang " + why,
        "merchant add --id warung --name Warung " + why,
        f"terminal add --id BUS-01 --public-key {key} --role validator "
        "--operator trans-semarang " + why,
        f"cards issue --number {card} --opening-balance 50000 " + why,
    ):
        done = run(shlex.split(setup), env)
        assert done.returncode == 0, (setup, done.stderr)
    env.pop("KSH_STAFF_PASSWORD")
    (folder / "file.txt").write_text("not what any option wants\n")
    values = {"dir": str(folder), "file": str(folder / "file.txt"), "key": key}
    values["sample"] = str(sample)
    for label, text in journeys.items():
        path = folder / f"journey-{label}.json"
        path.write_text(text)
        values[f"j_{label}"] = str(path)
    feed = Path(__file__).parents[2] / "bus_terminals" / "fare" / "data" / "trans_semarang"
    for label, change in (
        ("renamed", lambda text: text.replace("amount,", "price,", 1)),
        ("negative", lambda text: text.replace(",0.00,IDR", ",-1000.00,IDR", 1)),
    ):
        copy = folder / f"feed-{label}"
        copy.mkdir()
        for source in feed.iterdir():
            copy.joinpath(source.name).write_text(source.read_text())
        products = copy / ("fare_products.txt" if label == "renamed" else "fare_passes.txt")
        products.write_text(change(products.read_text()))
        values[f"feed_{label}"] = str(copy)
    before = asyncio.run(books_digest(url))
    yield {"url": url, "env": env, "values": values, "before": before}
    asyncio.run(admin(f'drop database if exists "{name}" with (force)'))


@pytest.fixture(scope="module")
def ran(books: dict[str, object]) -> dict[Case, Ran]:
    """Every case, `threads` at a time."""
    values = books["values"]
    assert isinstance(values, dict)

    def one(item: Case) -> Ran:
        env = dict(books["env"])  # type: ignore[call-overload]
        for name, value in item.env:
            if value:
                env[name] = substituted(value, values)
            else:
                env.pop(name, None)
        argv = shlex.split(substituted(item.argv, values))
        started = time.monotonic()
        done = run(argv, env)
        return Ran(argv, done.returncode, done.stderr, time.monotonic() - started)

    with ThreadPoolExecutor(threads) as pool:
        results = dict(zip(cases, pool.map(one, cases), strict=True))
    if os.environ.get("KSH_SLOWEST"):
        for result in sorted(results.values(), key=lambda r: -r.seconds)[:15]:
            print(f"{result.seconds:6.2f} {' '.join(result.argv)[:100]}")
    return results


def test_the_table_is_large() -> None:
    assert len(cases) >= 100
    assert len(set(cases)) == len(cases)


@pytest.mark.parametrize("item", cases, ids=[item.argv[:60] for item in cases])
def test_one_line_error(item: Case, ran: dict[Case, Ran], books: dict[str, object]) -> None:
    result = ran[item]
    values = books["values"]
    assert isinstance(values, dict)
    command = result.argv[0] if result.argv and not result.argv[0].startswith("-") else ""
    assert result.status != 0, result
    assert "Traceback" not in result.err, result.err
    assert result.err.count("\n") == 1 and result.err.endswith("\n"), result.err
    prefix = "ksh: error: " if item.argv == "nonexistent" else f"ksh {command}"
    assert result.err.startswith(prefix), result.err
    assert ": error: " in result.err, result.err
    assert substituted(item.fragment, values) in result.err, result.err


def test_the_books_did_not_change(ran: dict[Case, Ran], books: dict[str, object]) -> None:
    assert len(ran) == len(cases)
    assert asyncio.run(books_digest(str(books["url"]))) == books["before"]
