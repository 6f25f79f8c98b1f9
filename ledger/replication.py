"""A primary and a synchronous standby, on PostgreSQL's own streaming replication.

The servers are the same PostgreSQL 16 the embedded server runs (the binaries inside the
`pgserver` package), each in a data folder of its own, listening on a loopback TCP address:

- `start_primary(folder, port)`: initdb (first time), the replication settings, start;
- `start_standby(primary_url, folder, port)`: a physical replication slot on the primary,
  `pg_basebackup` of it, the standby's own settings, start, wait until it streams, then make
  it the primary's synchronous standby: from then on a commit returns only once its WAL is
  flushed on both servers (`synchronous_commit = on`, `synchronous_standby_names`);
- `promote(folder)`: the standby becomes a primary (it then runs alone, asynchronously, until a
  new standby is made of it);
- `degrade_to_asynchronous(connection)`: the operator's deliberate choice, when the standby is
  lost, to let the primary acknowledge commits it cannot replicate.

Nothing here decides *when* to fail over: an operator does (`ksh db promote`), or Patroni does
for a deployment (`docs/high-availability.md`, `docs/patroni.yml`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ledger.database import embedded_settings

superuser = "postgres"
standby_name_default = "ksh_standby"
server_start_timeout_s = 60
streaming_wait_s_max = 60
pg_command_timeout_s = 600  # a base backup of a big primary takes a while
# pg_ctl runs as this user when we are root (PostgreSQL refuses root), as pgserver does.
system_user_when_root = "pgserver"


def binaries_folder() -> Path:
    """pgserver's PostgreSQL binaries (initdb, pg_ctl, pg_basebackup, postgres)."""
    with _quiet_pgserver_import():
        from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@contextlib.contextmanager
def _quiet_pgserver_import() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        yield


def replication_settings(host: str, port: int) -> dict[str, str]:
    """A server of the pair (primary or standby: either may become the primary): loopback TCP
    only, WAL for a physical standby, and commits that wait for the synchronous standby once
    one is named (`synchronous_standby_names` starts empty: a primary alone would otherwise
    wait for ever)."""
    return {
        **embedded_settings(),
        "listen_addresses": f"'{host}'",
        "port": str(port),
        "unix_socket_directories": "''",
        "wal_level": "replica",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        "wal_keep_size": "'1GB'",  # beside the slot: a standby rebuilt from a backup catches up
        "hot_standby": "on",
        "synchronous_commit": "on",  # with a named standby: flushed on both before COMMIT returns
        "synchronous_standby_names": "''",
        "wal_sender_timeout": "'10s'",  # a dead standby is noticed in seconds, not a minute
        "wal_receiver_timeout": "'10s'",
        "logging_collector": "off",
    }


# Connections and replication from loopback only; trust, as the embedded server's initdb does.
# A deployment across hosts uses scram-sha-256 and its own networks (docs/high-availability.md, docs/patroni.yml).
hba_lines = (
    "host all all 127.0.0.0/8 trust",
    "host replication all 127.0.0.0/8 trust",
)


@dataclass(frozen=True, slots=True)
class Server:
    folder: Path  # the data folder (PGDATA)
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{superuser}@{self.host}:{self.port}/postgres"

    @property
    def log(self) -> Path:
        return self.folder.parent / f"{self.folder.name}.log"


def _run_as() -> dict[str, Any]:
    """subprocess.run's user, when we are root (PostgreSQL's binaries refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    with _quiet_pgserver_import():
        from pgserver.utils import ensure_user_exists

    ensure_user_exists(system_user_when_root)
    return {"user": system_user_when_root}


def _own(folder: Path) -> None:
    """Let the server's user own `folder` and reach it (when we are root)."""
    folder.chmod(0o700)  # PostgreSQL refuses a data folder others can read
    if os.geteuid() != 0:
        return
    import pwd

    _run_as()  # on a fresh machine the server's user does not exist yet

    with _quiet_pgserver_import():
        from pgserver.utils import ensure_prefix_permissions

    entry = pwd.getpwnam(system_user_when_root)
    ensure_prefix_permissions(folder)
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _own_file(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        _run_as()  # on a fresh machine the server's user does not exist yet

        entry = pwd.getpwnam(system_user_when_root)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _pg(program: str, *arguments: str, timeout_s: float = pg_command_timeout_s) -> str:
    """Run one of the PostgreSQL binaries; its stderr becomes the error's message."""
    command = [str(binaries_folder() / program), *arguments]
    try:
        finished = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            **_run_as(),
        )
    except subprocess.CalledProcessError as error:
        raise ReplicationError(
            f"{program} failed ({error.returncode}): {error.stderr.strip() or error.stdout}"
        ) from error
    except subprocess.TimeoutExpired as error:
        raise ReplicationError(f"{program} did not finish within {timeout_s:g} s") from error
    return finished.stdout


class ReplicationError(Exception):
    """A server of the pair could not be made, started, stopped or promoted."""


def _append_settings(folder: Path, settings: dict[str, str]) -> None:
    """Into postgresql.auto.conf (read last, so these win over postgresql.conf)."""
    path = folder / "postgresql.auto.conf"
    lines = [f"{name} = {value}" for name, value in settings.items()]
    with path.open("a", encoding="utf-8") as file:
        file.write("\n# ksh: a server of the replicated pair\n" + "\n".join(lines) + "\n")


def start_primary(folder: Path, port: int, host: str = "127.0.0.1") -> Server:
    """Initialise `folder` (unless it holds a cluster already) as a primary ready for a
    synchronous standby, start it and return it."""
    server = Server(folder.resolve(), host, port)
    if not (server.folder / "PG_VERSION").exists():
        server.folder.mkdir(parents=True, exist_ok=True)
        _own(server.folder)
        _pg(
            "initdb",
            "-D",
            str(server.folder),
            "-U",
            superuser,
            "--auth=trust",
            "--encoding=utf8",
            "--no-instructions",
        )
        with (server.folder / "pg_hba.conf").open("a", encoding="utf-8") as file:
            file.write("\n" + "\n".join(hba_lines) + "\n")
        _append_settings(server.folder, replication_settings(host, port))
    start(server)
    return server


def start(server: Server) -> None:
    """pg_ctl start, waiting until the server accepts connections (or, for a standby, until
    it has reached a consistent state)."""
    if not server.log.exists():
        server.log.touch()
        _own_file(server.log)
    _pg(
        "pg_ctl",
        "start",
        "-w",
        "-t",
        str(server_start_timeout_s),
        "-D",
        str(server.folder),
        "-l",
        str(server.log),
        "-o",
        f"-p {server.port}",
        timeout_s=server_start_timeout_s + 10,
    )


def stop(folder: Path, mode: str = "fast") -> None:
    """pg_ctl stop (`fast`: roll back sessions, checkpoint; `immediate`: like a crash)."""
    _pg("pg_ctl", "stop", "-w", "-m", mode, "-D", str(folder), timeout_s=120)


def postmaster_pid(folder: Path) -> int | None:
    """The running postmaster's process id (first line of postmaster.pid), if any."""
    try:
        return int((folder / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None


def kill_postmaster(folder: Path) -> int:
    """SIGKILL to the postmaster: the host is lost (its backends notice and exit)."""
    pid = postmaster_pid(folder)
    if pid is None:
        raise ReplicationError(f"no postmaster runs in {folder}")
    os.kill(pid, signal.SIGKILL)
    return pid


def parse_server_url(url: str) -> tuple[str, int]:
    """(host, port) of a single-host postgresql:// URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or "," in parts.netloc:
        raise ReplicationError(f"a single-host postgresql://host:port URL is needed, not {url!r}")
    return parts.hostname, parts.port or 5432


async def start_standby(
    primary_url: str,
    folder: Path,
    port: int,
    *,
    host: str = "127.0.0.1",
    name: str = standby_name_default,
    synchronous: bool = True,
) -> Server:
    """Make `folder` a standby of the primary at `primary_url` and start it; once it streams,
    make it the primary's synchronous standby (unless `synchronous` is False)."""
    server = Server(folder.resolve(), host, port)
    if (server.folder / "PG_VERSION").exists():
        raise ReplicationError(f"{server.folder} already holds a cluster: choose an empty folder")
    primary_host, primary_port = parse_server_url(primary_url)
    primary = await asyncpg.connect(primary_url)
    try:
        await primary.execute(
            "select pg_create_physical_replication_slot($1) where not exists "
            "(select 1 from pg_replication_slots where slot_name = $1)",
            name,
        )
    finally:
        await primary.close()
    server.folder.mkdir(parents=True, exist_ok=True)
    _own(server.folder)
    _pg(
        "pg_basebackup",
        "-h",
        primary_host,
        "-p",
        str(primary_port),
        "-U",
        superuser,
        "-D",
        str(server.folder),
        "-X",
        "stream",
        "-S",
        name,
        "-R",  # standby.signal and the primary's connection
        "--checkpoint=fast",
    )
    _append_settings(
        server.folder,
        {
            **replication_settings(host, port),
            "primary_conninfo": f"'host={primary_host} port={primary_port} user={superuser} "
            f"application_name={name}'",
            "primary_slot_name": f"'{name}'",
        },
    )
    start(server)
    await wait_until_streaming(primary_url, name)
    if synchronous:
        await require_synchronous_standby(primary_url, name)
    return server


async def wait_until_streaming(primary_url: str, name: str) -> None:
    deadline = time.monotonic() + streaming_wait_s_max
    primary = await asyncpg.connect(primary_url)
    try:
        while True:
            state = await primary.fetchval(
                "select state from pg_stat_replication where application_name = $1", name
            )
            if state == "streaming":
                return
            if time.monotonic() > deadline:
                raise ReplicationError(
                    f"standby {name!r} does not stream after {streaming_wait_s_max} s "
                    f"(state {state!r})"
                )
            await _pause(0.1)
    finally:
        await primary.close()


async def _pause(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def require_synchronous_standby(primary_url: str, name: str) -> None:
    """From now on the primary acknowledges a commit only once `name` has flushed it."""
    primary = await asyncpg.connect(primary_url)
    try:
        await primary.execute(f"alter system set synchronous_standby_names = '\"{name}\"'")
        await primary.execute("alter system set synchronous_commit = 'on'")
        await primary.execute("select pg_reload_conf()")
    finally:
        await primary.close()


async def degrade_to_asynchronous(connection: asyncpg.Connection) -> str:
    """No synchronous standby any more: commits (and the ones waiting now) are acknowledged
    once on this server's disk. Returns the standby names given up."""
    previous = await connection.fetchval("show synchronous_standby_names")
    await connection.execute("alter system set synchronous_standby_names = ''")
    await connection.execute("select pg_reload_conf()")
    return str(previous)


def promote(folder: Path) -> None:
    """The standby in `folder` becomes a primary (pg_ctl promote, waiting until it is)."""
    if not (folder / "standby.signal").exists():
        raise ReplicationError(f"{folder} is not a standby (no standby.signal)")
    _pg("pg_ctl", "promote", "-w", "-t", str(server_start_timeout_s), "-D", str(folder))


@dataclass(frozen=True, slots=True)
class StandbyLag:
    name: str
    state: str
    sync_state: str
    replay_lag_bytes: int
    replay_lag_s: float


async def standby_lag(connection: asyncpg.Connection) -> list[StandbyLag]:
    """The primary's view of its standbys (`pg_stat_replication`); empty on a standby or alone."""
    rows = await connection.fetch(
        "select application_name, state, sync_state, "
        "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint as lag_bytes, "
        "coalesce(extract(epoch from replay_lag), 0)::float8 as lag_s "
        "from pg_stat_replication where not pg_is_in_recovery() order by application_name"
    )
    return [
        StandbyLag(
            row["application_name"],
            row["state"],
            row["sync_state"],
            row["lag_bytes"],
            row["lag_s"],
        )
        for row in rows
    ]
