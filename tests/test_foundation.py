"""The foundation: the embedded database default, migrations, and the command line."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from ksh.cli import build_parser, command_modules, main
from ledger.database import embedded_server, load_migrations, migrate

project_root = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_folder() -> Iterator[Path]:
    """A folder outside pytest's basetemp, which a concurrent pytest run may prune."""
    folder = Path(tempfile.mkdtemp(prefix="ksh-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_migrations(folder: Path, *sqls: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, sql in enumerate(sqls, start=1):
        (folder / f"{number:04d}_step.sql").write_text(sql)


def test_embedded_postgres_start_migrate_write_read_stop(private_folder: Path) -> None:
    """No DATABASE_URL: the embedded server starts, migrates, stores, and stops cleanly."""
    tmp_path = private_folder
    migrations = tmp_path / "migrations"
    write_migrations(
        migrations,
        "create table note (id integer primary key, body text not null);",
        "alter table note add column author text not null default 'clerk';",
    )

    async def scenario(url: str) -> tuple[list[str], list[str], str]:
        connection = await asyncpg.connect(url)
        try:
            first = await migrate(connection, "example", migrations)
            second = await migrate(connection, "example", migrations)
            await connection.execute("insert into note (id, body) values (1, 'halo')")
            row = await connection.fetchrow("select body, author from note where id = 1")
            return first, second, f"{row['body']}/{row['author']}"
        finally:
            await connection.close()

    with embedded_server(tmp_path / "data") as url:
        first, second, stored = asyncio.run(scenario(url))
    assert first == ["0001_step", "0002_step"]
    assert second == []
    assert stored == "halo/clerk"
    # stopped: the server's postmaster.pid is gone once the last user left
    assert not (tmp_path / "data" / "pgdata" / "postmaster.pid").exists()
    # and the data survived the stop
    with embedded_server(tmp_path / "data") as url:

        async def read_back() -> str:
            connection = await asyncpg.connect(url)
            try:
                return str(await connection.fetchval("select body from note"))
            finally:
                await connection.close()

        assert asyncio.run(read_back()) == "halo"


async def test_concurrent_migrations_apply_once(postgres_server_url: str, tmp_path: Path) -> None:
    """Two processes starting at once: the advisory lock makes exactly one of them migrate."""
    from ledger.database import database_url_for

    migrations = tmp_path / "migrations"
    write_migrations(migrations, "create table once (id integer primary key);")
    name = f"ksh_concurrent_migrations_{uuid.uuid4().hex[:8]}"  # a shared server may hold others
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f'create database "{name}"')
    await admin.close()
    url = database_url_for(postgres_server_url, name)
    try:
        connections = [await asyncpg.connect(url) for _ in range(4)]
        results = await asyncio.gather(
            *(migrate(connection, "example", migrations) for connection in connections)
        )
        for connection in connections:
            await connection.close()
        assert sorted(len(result) for result in results) == [0, 0, 0, 1]
    finally:
        admin = await asyncpg.connect(postgres_server_url)
        await admin.execute(f'drop database "{name}" with (force)')
        await admin.close()


def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("select 1;")
    (tmp_path / "0003_c.sql").write_text("select 1;")
    with pytest.raises(AssertionError, match="gaps"):
        load_migrations("example", tmp_path)


def test_broken_migration_applies_nothing(tmp_path: Path, postgres_server_url: str) -> None:
    from ledger.database import database_url_for

    migrations = tmp_path / "migrations"
    write_migrations(migrations, "create table fine (id integer);", "this is not sql;")

    name = f"ksh_broken_migration_{uuid.uuid4().hex[:8]}"

    async def scenario() -> bool:
        admin = await asyncpg.connect(postgres_server_url)
        await admin.execute(f'create database "{name}"')
        await admin.close()
        url = database_url_for(postgres_server_url, name)
        connection = await asyncpg.connect(url)
        try:
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await migrate(connection, "example", migrations)
            return bool(await connection.fetchval("select to_regclass('fine') is not null"))
        finally:
            await connection.close()
            admin = await asyncpg.connect(postgres_server_url)
            await admin.execute(f'drop database "{name}" with (force)')
            await admin.close()

    assert asyncio.run(scenario()) is False


def test_help_lists_every_built_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    help_text = parser.format_help()
    built = [
        name
        for name in command_modules
        if (project_root / "ksh" / "commands" / f"{name}.py").exists()
    ]
    assert "db" in built
    for name in built:
        assert name.replace("_", "-") in help_text
        with pytest.raises(SystemExit) as exit_info:
            main([name.replace("_", "-"), "--help"])
        assert exit_info.value.code == 0


def test_user_error_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        # reaches a handler that raises UserError (argparse's own errors never get that far)
        [sys.executable, "-m", "ksh", "fare", "price", "--journey", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_pcscd_runs_with_the_virtual_reader(pcsc_reader_name: str) -> None:
    assert pcsc_reader_name.startswith("Virtual PCD")
