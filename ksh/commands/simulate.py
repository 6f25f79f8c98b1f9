"""`ksh simulate`: a service day of Trans Semarang through the real card protocol and back office."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from ksh import argtypes, signals
from ksh.cli import UserError
from ksh.signals import stop_on_signals
from ledger.clock import system_clock


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a service day: buses, riders, emulated cards, flaky network, back office",
        description="Run a day of taps on emulated KSH cards through validators (journal, fare "
        "core, card protocol) with a flaky network, validator power losses and cards pulled "
        "mid-tap, against the back office and PostgreSQL. Without --backoffice, a back office "
        "runs in-process on loopback over a fresh database (DATABASE_URL's server, or the "
        "embedded one). Prints a summary; --json prints it as one JSON object.",
    )
    parser.add_argument(
        "--buses", type=argtypes.integer(1, 300), default=24, help="buses in service, 1 to 300"
    )
    parser.add_argument(
        "--cards", type=argtypes.integer(1, 10_000), default=300, help="cards, 1 to 10000"
    )
    parser.add_argument("--seed", type=int, default=2026, help="seed of the day's randomness")
    parser.add_argument(
        "--backoffice",
        type=argtypes.http_urls,
        metavar="URL[,URL]",
        help="a running back office (fresh!); several hosts of it separated by commas",
    )
    parser.add_argument(
        "--staff-token",
        default=os.environ.get("KSH_STAFF_TOKEN", ""),
        help="with --backoffice: a supervisor's staff token (ksh settle staff USER "
        "--issue-token), or KSH_STAFF_TOKEN",
    )
    parser.add_argument(
        "--network-loss", type=argtypes.fraction, default=0.2, help="per request (0 to below 1)"
    )
    parser.add_argument(
        "--power-loss", type=argtypes.fraction, default=0.003, help="per tap (0 to below 1)"
    )
    parser.add_argument(
        "--card-pull", type=argtypes.fraction, default=0.03, help="per tap (0 to below 1)"
    )
    parser.add_argument(
        "--folder", type=argtypes.folder, help="keep journals here (default: temporary)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--cards-out",
        type=argtypes.new_file,
        metavar="FILE",
        help="write every card's final state as a card deck (ksh card emulate --deck reads it), "
        "so the day can be audited from outside: the cards against the books",
    )
    parser.add_argument(
        "--keep-database",
        action="store_true",
        help="without --backoffice: keep the day's database and print its URL (on stderr)",
    )
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from bus_terminals.simulator import SimulationSettings, StaffTokenRefused, simulate_day

    if arguments.backoffice and not arguments.staff_token:
        raise UserError("--backoffice needs --staff-token (or KSH_STAFF_TOKEN)")
    if arguments.folder is not None:
        arguments.folder.mkdir(parents=True, exist_ok=True)

    async def simulate(url: str, token: str) -> Any:
        settings = SimulationSettings(
            buses=arguments.buses,
            cards=arguments.cards,
            seed=arguments.seed,
            folder=arguments.folder,
            staff_token=token,
            network_loss_rate=arguments.network_loss,
            power_loss_rate=arguments.power_loss,
            card_pull_rate=arguments.card_pull,
            progress=sys.stderr.isatty() or not arguments.json,
            cards_out=arguments.cards_out,
        )
        return await simulate_day(settings, url, system_clock.unix_ms)

    async def main() -> Any:
        if arguments.backoffice:
            return await simulate(arguments.backoffice, arguments.staff_token)
        async with local_backoffice(keep_database=arguments.keep_database) as (url, token, db):
            if arguments.keep_database:
                print(f"ksh simulate: the day's database is kept: {db}", file=sys.stderr)
            return await simulate(url, token)

    try:  # SIGINT or SIGTERM, even inherited ignored: cleaned up (database dropped, server left)
        with stop_on_signals() as stop:
            summary = signals.run(main(), stop)
    except OSError as error:
        raise UserError(f"back office unreachable: {error}") from error
    except StaffTokenRefused as error:
        raise UserError(f"--staff-token refused by the back office: {error}") from error
    document = summary.to_dict()
    if arguments.json:
        print(json.dumps(document, sort_keys=True))
    else:
        print(readable(document, arguments))
    return 0 if not summary.cards_mismatched else 1


def readable(summary: dict[str, Any], arguments: argparse.Namespace) -> str:
    """The summary as people read it: what happened to the taps, the uploads, the top-ups,
    and whether every card agrees with the books (the same figures as --json)."""

    def counted(counts: dict[str, int]) -> str:
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{name.replace('_', ' ')} {count:,}" for name, count in ordered)

    mismatched = summary["cards_mismatched"]
    reasons = {name: count for name, count in summary["reasons"].items() if name != "none"}
    lines = [
        f"ksh simulate: a service day of {arguments.buses} bus(es) and {arguments.cards} cards "
        f"(seed {arguments.seed}) in {summary['seconds']:.1f} s",
        f"  taps                  {summary['taps']:,} ({counted(summary['verdicts']) or 'none'})",
        f"  reasons               {counted(reasons) or 'none'}",
        f"  fares                 Rp {summary['fares_rupiah']:,}",
        f"  trouble               {summary['cards_pulled']:,} cards pulled mid-tap, "
        f"{summary['power_losses']:,} validator power losses",
        f"  uploads               {summary['uploads_acknowledged']:,} acknowledged, "
        f"{summary['uploads_lost']:,} lost on the network (sent again)",
        f"  VA top-ups            {summary['top_ups_paid']:,} paid at the bank, "
        f"{summary['top_ups_delivered']:,} taken onto cards",
        f"  cards vs books        {summary['cards_checked']:,} checked, "
        f"{summary['cards_matching']:,} matching their purse accounts",
    ]
    if mismatched:
        lines.append(f"  MISMATCHED            {', '.join(mismatched)}")
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def local_backoffice(
    pool_connections_max: int = 10, *, keep_database: bool = False
) -> AsyncIterator[tuple[str, str, str]]:
    """A back office on loopback over a fresh, migrated database that is dropped afterwards.
    Yields (url, a supervisor's staff token for the simulator, database url)."""
    from aiohttp import web

    from card_reader.keys import KeyRole, demo_key_store
    from gateways import staff
    from gateways.backoffice import BackofficeConfig, create_app
    from ksh.commands.serve import extensions
    from ksh.database import connect, scratch_database
    from ledger.database import server_url

    with server_url() as server:
        async with scratch_database(server, "ksh_run", keep=keep_database) as (_, url):
            runner = None
            try:
                connection = await connect(url)
                try:
                    token = await staff.issue_token(
                        connection,
                        staff.StaffMember("simulator", staff.Role.supervisor),
                        issued_by="ksh simulate",
                        now=system_clock.now(),
                        label="the simulator's own back office",
                    )
                finally:
                    await connection.close()
                config = BackofficeConfig(
                    url,
                    pool_connections_max=pool_connections_max,
                    # The simulator's cards are personalised from the demo key store: the back
                    # office verifies their Transaction MACs with its TMAC masters.
                    settings={
                        "tmac_master_keys": demo_key_store().accepted_master_keys(KeyRole.TMAC)
                    },
                )
                runner = web.AppRunner(create_app(config, extensions()), access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                yield f"http://127.0.0.1:{port}", token, url
            finally:
                if runner is not None:
                    await runner.cleanup()
