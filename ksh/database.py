"""One way for a command to reach the back office database: connect, migrate, work, close."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ksh.cli import UserError

Result = TypeVar("Result")


def run_with_database(work: Callable[[Any], Awaitable[Result]], url: str | None = None) -> Result:
    """Run `work(connection)` on DATABASE_URL's server or the embedded one (or on `url` when
    given), schema migrated."""
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
        with contextlib.nullcontext(url) if url else server_url() as chosen:
            return asyncio.run(main(chosen))
    except BrokenPipeError:
        raise  # the reader of our output went away (`| head`): not the database
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


@contextlib.asynccontextmanager
async def scratch_database(
    server: str, prefix: str, *, keep: bool = False
) -> AsyncIterator[tuple[str, str]]:
    """A new database on `server` (named `prefix_<random>`), with the whole schema, dropped
    when the block ends unless `keep`: yields (name, URL). For the demo, the simulator and
    the benchmarks, which each work in a database of their own."""
    from ksh.schema import migrate_all
    from ledger.database import database_url_for

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await connect(server)
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    url = database_url_for(server, name)
    try:
        connection = await connect(url)
        try:
            await migrate_all(connection)
        finally:
            await connection.close()
        yield name, url
    finally:
        if not keep:
            await _drop(server, name)


async def _drop(server: str, name: str) -> None:
    """Drop a scratch database; once more on a fresh connection if the first is lost (seen
    when a stop signal lands while the server is busy), so that none is left behind."""
    import asyncpg

    for attempt in (1, 2):
        admin = await connect(server)
        try:
            await admin.execute(f'drop database if exists "{name}" with (force)')
            return
        # A lost connection is a PostgresConnectionError (ConnectionDoesNotExistError), not an
        # InterfaceError: the first version retried neither (a CI run under load left one).
        except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
            if attempt == 2:
                raise
        finally:
            admin.terminate()  # closing a lost connection could wait on it
