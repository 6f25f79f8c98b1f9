"""`ksh db`: the back office's PostgreSQL (DATABASE_URL, or the embedded server)."""

from __future__ import annotations

import argparse
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
