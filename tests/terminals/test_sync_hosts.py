"""A terminal given several back office URLs moves to the next on a connection failure, and
one URL (or a comma-separated list, as `--backoffice` takes it) still works."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp

from bus_terminals.journal import Journal
from bus_terminals.sync import SyncClient, SyncState, UploadStatus
from tests.terminals.conftest import Backoffice
from tests.terminals.helpers import record


def closed_port_url() -> str:
    """An address on loopback where nothing listens (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_a_dead_back_office_host_is_skipped(backoffice: Backoffice, tmp_path: Path) -> None:
    key = await backoffice.register_validator("V1")
    await backoffice.issue_cards({"6032984000000001": 50_000})
    journal = Journal(tmp_path / "journal.db", "V1")
    dead = closed_port_url()
    async with aiohttp.ClientSession() as session:
        for base_url in ([dead, backoffice.url], f"{dead},{backoffice.url}", backoffice.url):
            client = SyncClient(
                base_url,
                "V1",
                key,
                journal,
                SyncState(),
                session=session,
                now_ms=backoffice.clock.unix_ms,
            )
            counter = journal.next_sequence()
            journal.append_final(
                record("V1", 0, "6032984000000001", counter, 3_500, 50_000 - 3_500 * counter)
            )
            assert await client.upload_once() == UploadStatus.acknowledged
            assert client.base_url == backoffice.url
            assert await client.download()
        # Every host dead: offline, and the batch waits in the journal.
        client = SyncClient(
            [dead, closed_port_url()],
            "V1",
            key,
            journal,
            SyncState(),
            session=session,
            now_ms=backoffice.clock.unix_ms,
        )
        journal.append_final(record("V1", 0, "6032984000000001", 4, 3_500, 36_000))
        assert await client.upload_once() == UploadStatus.offline
        assert journal.pending_batch() is not None
    journal.close()
