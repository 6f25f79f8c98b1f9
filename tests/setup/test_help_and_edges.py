"""Help that answers, and the edges of running `ksh` as a user does: every option says its
default; the help of `bank-sim serve`, `settle status` and `reconcile run`; the serve banner
and a second serve on the same port; a closed pipe; `ksh simulate`'s summary."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksh.cli import build_parser
from tests.waiting import wait_until

ksh = [sys.executable, "-m", "ksh"]
sample = Path(__file__).parents[2] / "bus_terminals" / "fare" / "data" / "journey_sample.json"


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def option_blocks(help_text: str) -> dict[str, str]:
    """Each option's entry in a --help text: from its line to the next option's."""
    options = help_text.split("\noptions:\n", 1)[1]
    blocks = re.split(r"\n(?=  -)", options)
    return {block.split()[0].rstrip(","): " ".join(block.split()) for block in blocks if block}


def test_every_option_says_its_default() -> None:
    """Through the parser `ksh` runs: in every command's --help, an option with a value to
    take says its default (or is required); flags need not."""
    checked = 0
    for parser in parsers(build_parser()):
        blocks = option_blocks(parser.format_help())
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue
            block = blocks[action.option_strings[0]]
            assert "default" in block.lower(), (parser.prog, block)
            checked += 1
    assert checked > 100


def test_help_names_the_default_it_uses() -> None:
    text = subprocess.run(
        [*ksh, "simulate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    blocks = option_blocks(text)
    assert "(default: 24)" in blocks["--buses"]
    assert "1 to 300" in blocks["--buses"]
    assert "(default: 0.2)" in blocks["--network-loss"]
    assert "(default: none)" in blocks["--cards-out"]
    token = subprocess.run(
        [*ksh, "simulate", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KSH_STAFF_TOKEN": "s3cret-token"},
    ).stdout
    assert "s3cret-token" not in token  # a secret's value is never printed
    assert "(default: from the environment)" in option_blocks(token)["--staff-token"]


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("bank-sim serve", ("simulated bank", "pay-va", "ksh partner add", "(default: 8091)")),
        ("settle status", ("never closed", "Exit status 0 when the day is closed", "yesterday")),
        ("reconcile run", ("--amount-tolerance", "exception", "(default: 2)", "(default 02:00)")),
    ],
)
def test_help_of_commands_that_had_none(command: str, says: tuple[str, ...]) -> None:
    text = subprocess.run(
        [*ksh, *command.split(), "--help"], capture_output=True, text=True, check=True
    ).stdout
    description = text.split("\n\n")[1]
    assert len(description) > 150, text  # a paragraph, not a usage line
    for phrase in says:
        assert phrase in " ".join(text.split()), (phrase, text)
    for option, block in option_blocks(text).items():
        assert len(block) > len(option) + 8, (option, block)  # every option has words


def test_fare_price_help_shows_a_sample_journey_that_prices() -> None:
    text = subprocess.run(
        [*ksh, "fare", "price", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert str(sample) in " ".join(text.split()).replace(" ", "") or str(sample) in text
    priced = subprocess.run(
        [*ksh, "fare", "price", "--journey", str(sample)], capture_output=True, text=True
    )
    assert priced.returncode == 0, priced.stderr
    assert json.loads(priced.stdout)["total"] == "3500.00"  # the second leg is a free transfer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_banner_a_wrong_staff_token_and_a_second_serve_on_the_same_port(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url}
    first = subprocess.Popen(
        [*ksh, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert first.stdout is not None
        banner = first.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        assert banner.startswith(f"ksh serve: back office on {base}: finance pages {base}/finance/")
        assert f"{base}/openapi.json" in banner and f"{base}/snap/openapi.json" in banner
        with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as answer:
            assert "paths" in json.loads(answer.read())
        wrong = subprocess.run(
            [*ksh, "simulate", "--backoffice", base, "--staff-token", "not-a-token"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert (wrong.returncode, wrong.stderr) == (
            2,
            "ksh simulate: error: --staff-token refused by the back office: "
            "/admin/v1/operators: 401 a staff bearer token of your own is needed\n",
        )
        second = subprocess.run(
            [*ksh, "serve", "--port", str(port)], env=env, capture_output=True, text=True
        )
        bank = subprocess.run(
            [
                *ksh,
                "bank-sim",
                "serve",
                "--port",
                str(port),
                "--partner-id",
                "b",
                "--client-secret",
                "s",
                "--issuer-public-key",
                __file__,
                "--bank-key",
                str(tmp_path / "bank.pem"),
            ],
            capture_output=True,
            text=True,
        )
        assert (bank.returncode, bank.stderr) == (
            2,
            f"ksh bank-sim: error: cannot listen on 127.0.0.1:{port}: Address already in use "
            "(is another server running there? give another --port)\n",
        )
        assert second.returncode == 2
        assert second.stderr == (
            f"ksh serve: error: cannot listen on 127.0.0.1:{port}: Address already in use (is "
            "another server running there? give another --port)\n"
        )
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)


def test_a_closed_pipe_ends_quietly() -> None:
    """`ksh ... | head -1`: the reader is gone before ksh writes; no traceback, no message."""
    reading, writing = os.pipe()
    os.close(reading)  # the reader has gone before ksh writes a byte
    try:
        done = subprocess.run(
            [*ksh, "fare", "price", "--journey", str(sample)],
            stdout=writing,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(writing)
    assert done.stderr == ""
    assert done.returncode == 141


def test_a_listing_into_a_closed_pipe_is_not_blamed_on_the_database(database_url: str) -> None:
    """`ksh ledger accounts | head -1`: the write fails inside the database work; still no
    traceback, and no 'cannot reach the database'."""
    reading, writing = os.pipe()
    os.close(reading)
    try:
        done = subprocess.run(
            [*ksh, "ledger", "accounts"],
            env={**os.environ, "DATABASE_URL": database_url},
            stdout=writing,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(writing)
    assert (done.returncode, done.stderr) == (141, "")


def test_help_into_a_closed_pipe_ends_quietly() -> None:
    reading, writing = os.pipe()
    os.close(reading)
    try:
        done = subprocess.run(
            [*ksh, "--help"], stdout=writing, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(writing)
    assert "Traceback" not in done.stderr and done.stderr == ""


def test_simulate_prints_a_readable_summary_or_json(postgres_server_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": postgres_server_url}
    argv = [*ksh, "simulate", "--buses", "1", "--cards", "4", "--seed", "7"]
    readable = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert readable.returncode == 0, readable.stderr
    lines = readable.stdout.splitlines()
    assert lines[0].startswith("ksh simulate: a service day of 1 bus(es) and 4 cards (seed 7)")
    fields = {line.split()[0]: " ".join(line.split()[1:]) for line in lines[1:]}
    assert list(fields) == ["taps", "reasons", "fares", "trouble", "uploads", "VA", "cards"]
    assert re.fullmatch(r"[\d,]+ \((accepted [\d,]+.*)\)", fields["taps"]), fields
    assert re.fullmatch(r"Rp [\d,]+", fields["fares"]), fields
    assert fields["cards"] == "vs books 4 checked, 4 matching their purse accounts"
    assert "{" not in readable.stdout  # no raw dictionaries
    as_json = subprocess.run(
        [*argv, "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert (summary["cards_checked"], summary["cards_mismatched"]) == (4, [])


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_command_leaves_the_embedded_database_clean(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """`ksh simulate` stopped mid-day (SIGTERM, or SIGINT inherited ignored as a background job
    of a script has it): its scratch database is dropped, and the embedded server it started is
    left, so it stops: no pid in its handle file, no postmaster.pid, no database but the three
    PostgreSQL makes."""
    env = {**os.environ, "KSH_DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    progress = tmp_path / "stderr.txt"
    with progress.open("w") as stderr:
        day = subprocess.Popen(
            [*ksh, "simulate", "--buses", "5", "--cards", "300"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        try:
            wait_until(lambda: "taps" in progress.read_text(), "the day is under way", within_s=120)
            day.send_signal(stop)
            assert day.wait(timeout=120) == 130, progress.read_text()[-3000:]
        finally:
            day.kill()
    assert progress.read_text().endswith("ksh simulate: interrupted\n")
    pgdata = tmp_path / "pgdata"
    assert not (pgdata / "postmaster.pid").exists()
    handle = pgdata / ".handle_pids.json"
    assert not handle.exists() or json.loads(handle.read_text()) == []
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, asyncpg\n"
            "from ledger.database import server_url\n"
            "async def names(url):\n"
            "    c = await asyncpg.connect(url)\n"
            "    print(sorted(r[0] for r in await c.fetch('select datname from pg_database')))\n"
            "    await c.close()\n"
            "with server_url() as url:\n"
            "    asyncio.run(names(url))\n",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.stdout == "['postgres', 'template0', 'template1']\n", listed.stderr


def test_demo_progress_says_what_it_waits_for_and_agrees_with_the_summary(
    postgres_server_url: str, tmp_path: Path
) -> None:
    """`ksh demo` with stderr not a terminal: one progress line per state, each saying what
    the demo waits for; the trouble it injects on lines of their own; the counts the progress
    lines give are those of the summary."""
    from ksh.commands.demo import payouts_text, phases_total

    small = ["--buses", "1", "--cards", "10", "--merchants", "1", "--shoppers", "2"]
    done = subprocess.run(
        [*ksh, "demo", *small, "--json", "--reports", str(tmp_path)],
        env={**os.environ, "DATABASE_URL": postgres_server_url},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert "\r" not in done.stderr and "\033" not in done.stderr
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == phases_total + 1  # the start, then one per phase
    assert all("; waiting for " in line for line in progress[:-1]), progress
    assert progress[-1].endswith("; done")
    notes = [line for line in lines if not line.startswith("[")]
    trouble = [line for line in notes if line.startswith("ksh demo: trouble injected: ")]
    assert len(trouble) == 3, notes
    said = " | ".join(progress)
    assert f"] 3/{phases_total}" in said and f" {summary['va_top_ups']} VA top-ups" in said
    assert f"payouts sent: {payouts_text(summary['payouts'])};" in said
    assert (
        f" {summary['statement_lines']} statement lines, "
        f"{summary['statement_lines_matched']} matched;" in said
    )
    assert f" {len(summary['exceptions'])} exceptions found and worked" in said
