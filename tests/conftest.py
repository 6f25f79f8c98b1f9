"""Shared fixtures: Hypothesis profiles, a fresh migrated PostgreSQL database per test, and the
PC/SC stack (pcscd with vsmartcard's vpcd driver).

Under CI=true, a fixture that cannot provide its real part fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from ksh.schema import migrate_all
from ledger.database import database_url_for, embedded_server

running_in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if running_in_ci else "dev"))


def unavailable(reason: str, how_to_enable: str) -> None:
    """Skip (on a developer's machine) or fail (in CI) a test whose real part is missing."""
    message = f"{reason}; {how_to_enable}"
    if running_in_ci:
        pytest.fail(message)
    pytest.skip(message)


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The server tests create their databases on: DATABASE_URL, or a private embedded one.

    The embedded server lives in its own temporary folder, not under pytest's basetemp: pytest
    prunes old basetemps, and a second pytest run at the same time would delete a running server.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="ksh-test-postgres-"))
    try:
        with embedded_server(folder) as embedded_url:
            yield embedded_url
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_template(postgres_server_url: str) -> Iterator[str]:
    """A database with every migration applied, used as the template of each test's database."""
    import asyncio

    name = f"ksh_template_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(postgres_server_url)
        try:
            await admin.execute(f'create database "{name}"')
        finally:
            await admin.close()
        connection = await asyncpg.connect(database_url_for(postgres_server_url, name))
        try:
            await migrate_all(connection)
        finally:
            await connection.close()

    async def drop() -> None:
        admin = await asyncpg.connect(postgres_server_url)
        try:
            await admin.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await admin.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop())


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, template: str) -> AsyncIterator[str]:
    """A new database made from `template`, dropped when the block ends."""
    name = f"ksh_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'create database "{name}" template "{template}"')
    finally:
        await admin.close()
    yield database_url_for(server_url, name)
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(postgres_server_url: str, migrated_template: str) -> AsyncIterator[str]:
    """A fresh database with the whole schema, dropped after the test."""
    async with fresh_database(postgres_server_url, migrated_template) as url:
        yield url


# ---------------------------------------------------------------------------- PC/SC

pcsc_enable_hint = (
    "run the tests as root with Debian's pcscd and vsmartcard-vpcd installed "
    "(scripts/test installs them), or start pcscd yourself"
)


@pytest.fixture(scope="session")
def pcsc_reader_name() -> Iterator[str]:
    """Make sure pcscd runs with the vpcd driver; yield the virtual reader's name.

    A card emulator connecting to 127.0.0.1:35963 (vpcd slot 0) appears in this reader.
    pcscd is started (as our child) only when none answers; one that already runs is reused.
    """
    try:
        from card_reader.pcsc import list_reader_names, start_pcscd_if_needed, stop_pcscd
        from card_reader.port import ReaderError
    except ImportError as error:  # pragma: no cover - depends on the machine
        unavailable(f"pyscard cannot be imported ({error})", pcsc_enable_hint)
        return
    if not Path("/etc/reader.conf.d/vpcd").exists():
        unavailable("the vpcd driver is not installed", pcsc_enable_hint)
    try:
        started = start_pcscd_if_needed("Virtual PCD")
    except ReaderError as error:
        unavailable(str(error), pcsc_enable_hint)
        return
    names = [name for name in list_reader_names() if "Virtual PCD" in name]
    yield sorted(names)[0]
    if started is not None:
        stop_pcscd(started)
