"""`ksh db`: the back office's PostgreSQL (DATABASE_URL, or the embedded server)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


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


def run_migrate(arguments: argparse.Namespace) -> int:
    import asyncpg

    from ksh.schema import migrate_all
    from ledger.database import server_url

    async def apply(url: str) -> list[str]:
        connection = await asyncpg.connect(url)
        try:
            return await migrate_all(connection)
        finally:
            await connection.close()

    with server_url() as url:
        applied = asyncio.run(apply(url))
    print("\n".join(applied) if applied else "schema is up to date")
    return 0
