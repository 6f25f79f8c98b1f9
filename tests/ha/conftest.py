"""A primary and a synchronous standby of PostgreSQL 16 (pgserver's binaries, `ledger.replication`)
on loopback TCP ports, in a temporary folder of their own, stopped and removed afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger import replication

database_name = "ksh"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class Pair:
    folder: Path
    primary: replication.Server
    standby: replication.Server

    def url(self, database: str = database_name, attributes: str = "read-write") -> str:
        """Both servers, for clients that follow the primary (asyncpg's multi-host URL)."""
        hosts = f"{self.primary.host}:{self.primary.port},{self.standby.host}:{self.standby.port}"
        return f"postgresql://{replication.superuser}@{hosts}/{database}?target_session_attrs={attributes}"

    def primary_url(self, database: str = database_name) -> str:
        return f"postgresql://{replication.superuser}@{self.primary.host}:{self.primary.port}/{database}"


@pytest.fixture
async def replicated_pair() -> AsyncIterator[Pair]:
    # Not under pytest's basetemp: pytest prunes old ones, with servers running in them.
    folder = Path(tempfile.mkdtemp(prefix="ksh-ha-"))
    servers: list[replication.Server] = []
    try:
        primary = replication.start_primary(folder / "primary", free_port())
        servers.append(primary)
        standby = await replication.start_standby(primary.url, folder / "standby", free_port())
        servers.append(standby)
        yield Pair(folder, primary, standby)
    finally:
        for server in reversed(servers):
            if replication.postmaster_pid(server.folder) is not None:
                with contextlib.suppress(replication.ReplicationError):
                    replication.stop(server.folder, "immediate")
        shutil.rmtree(folder, ignore_errors=True)
