"""Every component's migrations, in the order they apply (lower layers first)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from ledger.database import ledger_migrations_folder, migrate

gateways_migrations_folder = Path(__file__).parent.parent / "gateways" / "migrations"
snap_migrations_folder = Path(__file__).parent.parent / "gateways" / "snap" / "migrations"
settlement_migrations_folder = Path(__file__).parent.parent / "settlement" / "migrations"

components: tuple[tuple[str, Path], ...] = (
    ("ledger", ledger_migrations_folder),
    ("snap", snap_migrations_folder),
    ("gateways", gateways_migrations_folder),
    ("settlement", settlement_migrations_folder),
)


async def migrate_all(connection: asyncpg.Connection) -> list[str]:
    applied: list[str] = []
    for component, folder in components:
        applied += await migrate(connection, component, folder)
    return applied
