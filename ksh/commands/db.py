"""`ksh db`: the back office's PostgreSQL (DATABASE_URL, or the embedded server)."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from ksh import argtypes
from ksh.cli import UserError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "db",
        help="migrate the back office database (DATABASE_URL or the embedded PostgreSQL)",
        description="Apply pending schema migrations. Uses DATABASE_URL when set, otherwise "
        "the embedded PostgreSQL in KSH_DATA_DIR (default ./.ksh-data).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate_parser = actions.add_parser("migrate", help="apply pending migrations")
    migrate_parser.set_defaults(handler=run_migrate)
    register_replication(actions)


def register_replication(actions: Any) -> None:
    """The replicated pair (`ledger.replication`): primary, synchronous standby, promotion."""
    primary = actions.add_parser(
        "primary",
        help="initialise (first time) and start a primary ready for a synchronous standby",
        description="A PostgreSQL server (pgserver's binaries) in DIR listening on HOST:PORT, "
        "with WAL for a physical standby. It commits alone until `ksh db standby` gives it "
        "a synchronous standby.",
    )
    primary.add_argument(
        "--data", type=argtypes.folder, required=True, metavar="DIR", help="its data folder"
    )
    primary.add_argument("--host", default="127.0.0.1", help="address to listen on")
    primary.add_argument("--port", type=argtypes.port, default=5433, help="port to listen on")
    primary.set_defaults(handler=run_primary)
    standby = actions.add_parser(
        "standby",
        help="make a synchronous standby of a running primary and start it",
        description="pg_basebackup of the primary at URL into DIR (through a replication "
        "slot named after the standby), start it on HOST:PORT, wait until it streams, then "
        "make it the primary's synchronous standby: from then on a commit the back office "
        "acknowledges is on both servers.",
    )
    standby.add_argument("--from", dest="primary_url", required=True, metavar="URL")
    standby.add_argument(
        "--data", type=argtypes.folder, required=True, metavar="DIR", help="its data folder"
    )
    standby.add_argument("--host", default="127.0.0.1", help="address to listen on")
    standby.add_argument("--port", type=argtypes.port, default=5434, help="port to listen on")
    standby.add_argument("--name", default="ksh_standby", help="its application_name and slot")
    standby.add_argument(
        "--asynchronous", action="store_true", help="stream, but let the primary not wait"
    )
    standby.set_defaults(handler=run_standby)
    promote = actions.add_parser(
        "promote",
        help="promote the standby in DIR to primary (after the primary is lost)",
        description="pg_ctl promote. Make sure the old primary is down and stays down (fence "
        "it): two primaries would each acknowledge uploads the other never sees.",
    )
    promote.add_argument(
        "--data", type=argtypes.folder, required=True, metavar="DIR", help="its data folder"
    )
    promote.set_defaults(handler=run_promote)
    degrade = actions.add_parser(
        "degrade-async",
        help="let the primary acknowledge commits without its standby (risks losing them)",
        description="Empty synchronous_standby_names on the primary at URL (default "
        "DATABASE_URL). Uploads are then acknowledged once on the primary's disk alone: if "
        "the primary's host is lost before a standby has copied them, those acknowledged "
        "uploads are lost. Undo with `ksh db standby` (a new standby) once one can run.",
    )
    degrade.add_argument("--on", dest="primary_url", metavar="URL")
    degrade.add_argument(
        "--yes", action="store_true", help="I accept the risk (otherwise only explained)"
    )
    degrade.set_defaults(handler=run_degrade)


def run_migrate(arguments: argparse.Namespace) -> int:
    from ksh.database import run_with_database

    async def versions(connection: Any) -> list[str]:
        rows = await connection.fetch(
            "select component, max(version) as version from schema_migrations "
            "group by component order by component"
        )
        return [f"{row['component']}: version {row['version']}" for row in rows]

    # run_with_database applies whatever is pending before it runs `versions`
    print("\n".join(run_with_database(versions)))
    return 0


def run_primary(arguments: argparse.Namespace) -> int:
    from ledger import replication

    try:
        server = replication.start_primary(arguments.data, arguments.port, arguments.host)
    except replication.ReplicationError as error:
        raise UserError(str(error)) from error
    print(f"primary running: {server.url}  (log: {server.log})")
    return 0


def run_standby(arguments: argparse.Namespace) -> int:
    from ledger import replication

    try:
        server = asyncio.run(
            replication.start_standby(
                arguments.primary_url,
                arguments.data,
                arguments.port,
                host=arguments.host,
                name=arguments.name,
                synchronous=not arguments.asynchronous,
            )
        )
    except (replication.ReplicationError, OSError) as error:
        raise UserError(str(error)) from error
    mode = "asynchronous" if arguments.asynchronous else "synchronous"
    print(f"{mode} standby {arguments.name!r} streaming: {server.url}  (log: {server.log})")
    return 0


def run_promote(arguments: argparse.Namespace) -> int:
    from ledger import replication

    try:
        replication.promote(arguments.data)
    except replication.ReplicationError as error:
        raise UserError(str(error)) from error
    print(
        f"{arguments.data} is now a primary, alone: it acknowledges commits without a standby "
        "until `ksh db standby --from` it makes one. Do not start the old primary as a "
        "primary again: rebuild it as a standby of this one."
    )
    return 0


degrade_risk = (
    "Degrading to asynchronous commits: the primary will acknowledge uploads that exist on "
    "its own disk only. If its host is lost before a standby has copied them, uploads the "
    "terminals were told are booked are lost (the terminals have already let them go)."
)


def run_degrade(arguments: argparse.Namespace) -> int:
    from ksh.database import connect
    from ledger import replication

    url = arguments.primary_url or os.environ.get("DATABASE_URL", "")
    if not url:
        raise UserError("name the primary with --on URL (or DATABASE_URL)")
    print(degrade_risk)
    if not arguments.yes:
        print("Nothing changed: run again with --yes to accept that risk.")
        return 1

    async def degrade() -> str:
        connection = await connect(url)
        try:
            return await replication.degrade_to_asynchronous(connection)
        finally:
            await connection.close()

    try:
        previous = asyncio.run(degrade())
    except OSError as error:
        raise UserError(f"cannot reach the primary: {error}") from error
    print(f"synchronous_standby_names was {previous!r}, now empty: commits no longer wait.")
    return 0
