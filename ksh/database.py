"""One way for a command to reach the back office database: connect, migrate, work, close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ksh.cli import UserError

Result = TypeVar("Result")


def run_with_database(work: Callable[[Any], Awaitable[Result]]) -> Result:
    """Run `work(connection)` on DATABASE_URL's server or the embedded one, schema migrated."""

    from ksh.schema import migrate_all
    from ledger.database import server_url

    async def main(url: str) -> Result:
        connection = await connect(url)
        try:
            await migrate_all(connection)
            return await work(connection)
        finally:
            await connection.close()

    try:
        with server_url() as url:
            return asyncio.run(main(url))
    except OSError as error:
        raise UserError(f"cannot reach the database: {error}") from error


async def connect(url: str) -> Any:
    """asyncpg.connect, with what the user can mend (a malformed DATABASE_URL, a refused login,
    no such database) as a one-line UserError rather than a traceback."""
    import asyncpg

    try:
        return await asyncpg.connect(url)
    except (asyncpg.InterfaceError, asyncpg.PostgresError, ValueError) as error:
        raise UserError(f"cannot reach the database: {error}") from error
