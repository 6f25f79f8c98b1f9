"""Where the back office's PostgreSQL is, and how its schema gets there.

`DATABASE_URL` names a server when set. Without it an embedded PostgreSQL (the `pgserver`
package) runs from a data folder of the project (`KSH_DATA_DIR`, default `./.ksh-data`).
`pgserver` keeps a list of the processes using a data folder and stops the server when the
last one exits, so several `ksh` processes share one server.

Migrations are numbered plain SQL files (`0001_accounts.sql`, ...) in a folder per component
(`ledger`, `gateways`, `settlement`). Pending files are applied in order inside one
transaction that holds an advisory lock, so two processes starting at once migrate once.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

data_dir_default = ".ksh-data"
migration_name_pattern = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# pg_advisory_xact_lock key for migrations: any fixed 64-bit number, here "ksh-migr" in ASCII.
migration_lock_key = 0x6B73_682D_6D69_6772


def data_dir() -> Path:
    return Path(os.environ.get("KSH_DATA_DIR", data_dir_default)).resolve()


@contextlib.contextmanager
def embedded_server(folder: Path | None = None) -> Iterator[str]:
    """Start (or join) the embedded PostgreSQL in `folder`; yield its URL; leave it cleanly."""
    pgdata = (folder or data_dir()) / "pgdata"
    if pgdata.parent.exists() and not pgdata.parent.is_dir():
        raise NotADirectoryError(f"the data folder {pgdata.parent} (KSH_DATA_DIR) is a file")
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI); harmless for pgserver.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # imported here: only the embedded path needs its binaries

        server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
        if _tune(server):
            server.cleanup()  # restart, so that the memory settings apply (if no one else uses it)
            server = pgserver.get_server(str(pgdata), cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            server.cleanup()


def embedded_settings() -> dict[str, str]:
    """What the embedded server runs with beyond PostgreSQL's defaults, which suit a small
    shared machine: a quarter of the memory (at most 2 GB) for its buffer cache instead of
    128 MB, which a day's transfer indexes outgrow (evicted index pages then cost the ledger
    a tenth of its throughput); and WAL room for a busy hour between checkpoints instead of
    a checkpoint every few hundred thousand transfers (each is followed by full-page images)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    buffers_mb = max(128, min(memory // 4, 2 << 30) >> 20)
    return {"shared_buffers": f"{buffers_mb}MB", "max_wal_size": "4GB"}


def _tune(server: Any) -> bool:
    """Set `embedded_settings` on the server (ALTER SYSTEM: kept in its data folder); whether
    a restart is needed for them to apply. (Through the server's own psql: this may run
    inside an event loop.)"""
    restart = False
    for name, value in embedded_settings().items():
        configured = server.psql(
            "\\pset tuples_only on\n\\pset format unaligned\n"
            "select coalesce((select setting from pg_file_settings"
            f" where name = '{name}' and applied is not null order by seqno desc limit 1), '')"
        ).strip()
        if configured.splitlines()[-1] != value:
            server.psql(f"alter system set {name} = '{value}'")
            restart = True
    if restart:
        server.psql("select pg_reload_conf()")
    return restart


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    """`DATABASE_URL` when set, else the embedded server for as long as the block runs."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with embedded_server() as embedded_url:
        yield embedded_url


def database_url_for(server_url: str, database: str) -> str:
    """The same server, another database (host:port URLs and socket URLs alike)."""
    base, _, query = server_url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.partition("/")[0]
    return f"{scheme}://{authority}/{database}" + (f"?{query}" if query else "")


@dataclass(frozen=True, slots=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str


def load_migrations(component: str, folder: Path) -> tuple[Migration, ...]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = migration_name_pattern.match(path.name)
        assert match, f"migration file name must look like 0001_name.sql: {path}"
        migrations.append(
            Migration(component, int(match.group(1)), path.stem, path.read_text("utf-8"))
        )
    versions = [migration.version for migration in migrations]
    assert versions == list(range(1, len(versions) + 1)), f"gaps in {folder}: {versions}"
    return tuple(migrations)


async def migrate(connection: asyncpg.Connection, component: str, folder: Path) -> list[str]:
    """Apply the pending migrations of `component`; return the names applied."""
    migrations = load_migrations(component, folder)
    applied: list[str] = []
    async with connection.transaction():
        await connection.execute("select pg_advisory_xact_lock($1)", migration_lock_key)
        await connection.execute(
            """
            create table if not exists schema_migrations (
                component text not null,
                version integer not null,
                name text not null,
                applied_at timestamptz not null default now(),
                primary key (component, version)
            )
            """
        )
        current = await connection.fetchval(
            "select coalesce(max(version), 0) from schema_migrations where component = $1",
            component,
        )
        for migration in migrations:
            if migration.version <= current:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                "insert into schema_migrations (component, version, name) values ($1, $2, $3)",
                component,
                migration.version,
                migration.name,
            )
            applied.append(migration.name)
    return applied


ledger_migrations_folder = Path(__file__).parent / "migrations"
