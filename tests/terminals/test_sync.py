"""Downloads: deny list (delta and whole binary list), pending top-ups, versions; requests that
are unsigned, signed by another key, or too old are refused. A stored batch is resent byte for
byte until acknowledged."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from bus_terminals.journal import Journal
from bus_terminals.sync import SyncClient, SyncState, UploadStatus
from bus_terminals.wire import (
    RecordStatus,
    UploadKind,
    UploadRecord,
    WaitingPass,
    sign,
    signature_header,
    terminal_header,
)
from gateways.terminal_api import registry
from gateways.terminal_api.routes import deny_delta_entries_max
from tests.terminals.conftest import Backoffice
from tests.terminals.helpers import books_snapshot


async def test_downloads_and_their_authentication(backoffice: Backoffice, tmp_path: Path) -> None:
    key = await backoffice.register_validator("V1")
    async with backoffice.pool.acquire() as connection:
        await registry.deny_cards(
            connection, ["6032984000000007"], "lost", now=backoffice.clock.now()
        )
        await registry.pay_pending_top_up(
            connection, "VA-1", "6032984000000001", 25_000, paid_at=backoffice.clock.now()
        )
    state = SyncState()
    journal = Journal(tmp_path / "journal.db", "V1")
    async with aiohttp.ClientSession() as session:
        client = SyncClient(
            backoffice.url,
            "V1",
            key,
            journal,
            state,
            session=session,
            now_ms=backoffice.clock.unix_ms,
        )
        assert await client.download()
        assert "6032984000000007" in state.deny_list
        first_version = state.deny_list.version
        assert [(t[0], t[1]) for t in state.top_ups_for("6032984000000001")] == [("VA-1", 25_000)]
        # Many more denials than a delta carries: the whole list comes as one binary download.
        many = [str(6032985000000000 + index) for index in range(deny_delta_entries_max + 5)]
        many += ["9999999999999999999", "0000000000000042"]  # past int8; leading zeros
        async with backoffice.pool.acquire() as connection:
            await registry.deny_cards(connection, many, "batch", now=backoffice.clock.now())
        assert await client.download()
        assert len(state.deny_list) == len(many) + 1
        assert "9999999999999999999" in state.deny_list
        assert "42000000" not in state.deny_list
        assert "0000000000000042" in state.deny_list
        assert state.deny_list.version > first_version
        assert many[-1] in state.deny_list
        state.save(tmp_path)
        assert SyncState.load(tmp_path).deny_list.values == state.deny_list.values

        path = "/terminal/v1/sync?deny_since=0"
        now = str(backoffice.clock.unix_ms())
        other = await backoffice.register_validator("V2")
        for headers, code in [
            ({}, "unauthenticated"),
            ({terminal_header: "V1", signature_header: sign(other, b"x"), "X-KSH-Timestamp": now}, "signature_invalid"),
            ({terminal_header: "V1", signature_header: sign(key, f"GET\n{path}\n1000".encode()), "X-KSH-Timestamp": "1000"}, "stale_request"),
            ({terminal_header: "V9", signature_header: sign(key, b"x"), "X-KSH-Timestamp": now}, "unknown_terminal"),
        ]:  # fmt: skip
            async with session.get(backoffice.url + path, headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["code"] == code
    journal.close()


async def test_a_lost_answer_resends_the_same_bytes(backoffice: Backoffice, tmp_path: Path) -> None:
    key = await backoffice.register_validator("V1")
    journal = Journal(tmp_path / "journal.db", "V1")
    record = journal.intend(
        UploadRecord(
            "V1", 0, UploadKind.fare_debit, RecordStatus.in_doubt, "6032984000000001", 1, 3_500,
            0, "", 16_500, 1_795_478_400_000, "K1", "", "full", 0, 0, 0,
        )
    )  # fmt: skip
    journal.commit(record.sequence)
    async with aiohttp.ClientSession() as session:
        client = SyncClient(
            backoffice.url,
            "V1",
            key,
            journal,
            SyncState(),
            session=session,
            now_ms=backoffice.clock.unix_ms,
        )
        client.lose_answer = lambda: True
        assert await client.upload_once() == UploadStatus.offline
        stored = journal.pending_batch()
        assert stored is not None
        booked = await books_snapshot(backoffice.pool)
        client.lose_answer = lambda: False
        assert await client.upload_once() == UploadStatus.acknowledged
        assert journal.pending_batch() is None
        assert await books_snapshot(backoffice.pool) == booked  # the repeat booked nothing
        assert await client.upload_once() == UploadStatus.nothing_to_send
    journal.close()


def test_damaged_sync_state_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sync-state.json"
    for damaged in ("{}", "[]", "{not json", '{"pending_top_ups": {"1": [[1]]}}'):
        path.write_text(damaged)
        with pytest.raises(ValueError, match=r"sync-state\.json: damaged sync state"):
            SyncState.load(tmp_path)


def test_passes_granted_survive_a_reboot_and_an_older_state_file_has_none(
    tmp_path: Path,
) -> None:
    state = SyncState()
    carried = WaitingPass("pass-0123456789", "student_ecard_pelajar", 7, 1_790_000_000_000)
    state.pending_passes = {"6032984000000001": [carried]}
    state.save(tmp_path)
    loaded = SyncState.load(tmp_path)
    assert loaded.passes_for("6032984000000001") == [carried]
    saved = json.loads((tmp_path / "sync-state.json").read_text())
    # Written before carried passes: three fields each, running from the activating tap.
    saved["pending_passes"] = {"6032984000000001": [["pass-0123456789", "monthly", 7]]}
    (tmp_path / "sync-state.json").write_text(json.dumps(saved))
    assert SyncState.load(tmp_path).passes_for("6032984000000001") == [
        WaitingPass("pass-0123456789", "monthly", 7, 0)
    ]
    del saved["pending_passes"]  # written before passes
    (tmp_path / "sync-state.json").write_text(json.dumps(saved))
    assert SyncState.load(tmp_path).pending_passes == {}
