"""Many writers on the same hot accounts; the writer killed mid-batch; PostgreSQL itself
killed mid-batch. Afterwards nothing is half-booked or lost, and a retry answers `exists`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from ledger import (
    CreateTransferResult,
    Transfer,
    TransferCode,
    create_accounts,
    create_transfers,
)
from ledger.audit import check_ledger
from tests.ledger import writer
from tests.waiting import next_line, wait_until_async

R = CreateTransferResult
project_root = Path(__file__).resolve().parents[2]


async def prepare(connection: asyncpg.Connection) -> None:
    await create_accounts(connection, writer.accounts())
    await create_transfers(connection, writer.top_ups())


async def revenue_credits(connection: asyncpg.Connection) -> int:
    return await connection.fetchval(
        "select credits_posted from ledger_accounts where id = $1", writer.revenue
    )


async def test_many_writers_on_hot_accounts(database_url: str) -> None:
    """16 writers, every transfer crediting one revenue account, overlapping ids between
    writers: no deadlock, no lost update, every transfer booked exactly once."""
    setup = await asyncpg.connect(database_url)
    await prepare(setup)
    writers_count, batches_each, size = 16, 4, 300

    async def write(number: int) -> list[R]:
        connection = await asyncpg.connect(database_url)
        try:
            results = []
            for step in range(batches_each):
                # Writers pair up on the same batch numbers: each id is sent twice.
                batch = writer.batch((number // 2) * batches_each + step, size)
                if number % 2:
                    batch.reverse()
                results += [o.result for o in await create_transfers(connection, batch)]
            return results
        finally:
            await connection.close()

    all_results = await asyncio.wait_for(
        asyncio.gather(*(write(n) for n in range(writers_count))), timeout=90
    )
    flat = [result for results in all_results for result in results]
    distinct = writers_count // 2 * batches_each * size
    assert flat.count(R.created) == distinct
    assert flat.count(R.exists) == distinct
    assert await revenue_credits(setup) == distinct * writer.fare_rupiah
    assert await check_ledger(setup) == []
    await setup.close()


async def test_concurrent_account_creation_is_idempotent(database_url: str) -> None:
    async def create() -> list:
        connection = await asyncpg.connect(database_url)
        try:
            return await create_accounts(connection, writer.accounts())
        finally:
            await connection.close()

    results = await asyncio.gather(*(create() for _ in range(4)))
    created = [sum(r.value == "created" for r in column) for column in zip(*results)]
    assert created == [1] * len(writer.accounts())


def start_writer(
    url: str, first: int, batches: int, size: int, *mode: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.ledger.writer",
            url,
            str(first),
            str(batches),
            str(size),
            *mode,
        ],
        cwd=project_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], wanted: str, within_s: float = 60) -> None:
    """Read what the writer says until it says `wanted`; fail if it ends first, or if it
    says nothing for `within_s` seconds (the caller kills it)."""
    assert process.stdout is not None
    what = f"the writer says its next line on the way to {wanted!r}"
    while line := next_line(process.stdout, what, within_s=within_s):
        if line.strip() == wanted:
            return
    raise AssertionError(
        f"writer ended before {wanted!r}: {process.stderr.read() if process.stderr else ''}"
    )


async def until_a_batch_is_copying(url: str) -> None:
    """Returns once the writer's COPY is running: killed now, it dies mid-batch (its rows
    partly sent, nothing committed). (The COPY may yet end first: the checks still hold.)"""
    connection = await asyncpg.connect(url)
    try:
        await wait_until_async(
            lambda: connection.fetchval(
                "select pg_stat_clear_snapshot(), exists (select 1 from pg_stat_activity"
                " where datname = current_database() and query like 'COPY%' and state = 'active')",
                column=1,
            ),
            "the writer copies a batch",
            within_s=30,
            every_s=0.001,
        )
    finally:
        await connection.close()


async def assert_whole_and_retry(url: str, batches: int, size: int, acknowledged: int) -> None:
    """The `acknowledged` first batches (the writer said they were done) are all in the
    books; each batch is booked wholly or not at all; retrying all of them books the missing
    ones and answers `exists` for the rest; the books check out."""
    connection = await asyncpg.connect(url)
    try:
        assert await check_ledger(connection) == []
        acknowledged_ids = [t.id for n in range(acknowledged) for t in writer.batch(n, size)]
        kept = await connection.fetchval(
            "select count(*) from ledger_transfers where id = any($1::uuid[])", acknowledged_ids
        )
        assert kept == len(acknowledged_ids), "a batch acknowledged before the crash was lost"
        booked_before = await connection.fetchval(
            "select count(*) from ledger_transfers where code = $1", int(TransferCode.fare)
        )
        assert booked_before % size == 0, "a batch was half-booked"
        exists = 0
        for number in range(batches):
            results = {
                o.result for o in await create_transfers(connection, writer.batch(number, size))
            }
            assert len(results) == 1, results
            assert results <= {R.created, R.exists}
            exists += size if results == {R.exists} else 0
        assert exists == booked_before
        assert await revenue_credits(connection) == batches * size * writer.fare_rupiah
        assert await check_ledger(connection) == []
    finally:
        await connection.close()


async def test_writer_killed_mid_batch(database_url: str) -> None:
    batches, size = 6, 4000
    process = start_writer(database_url, 0, batches, size)
    await kill_while_copying(process, database_url, "done 1", "begin 3")  # 0, 1, 2 are done
    await assert_whole_and_retry(database_url, batches, size, acknowledged=3)


async def kill_while_copying(process: subprocess.Popen[str], url: str, *after: str) -> None:
    """Once the writer has said each line of `after`, SIGKILL it while it copies a batch."""
    try:
        for line in after:
            wait_for_line(process, line)
        await until_a_batch_is_copying(url)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


async def test_pipelined_writer_killed_with_batches_in_flight(database_url: str) -> None:
    """Through a `TransferPipeline`: killed while one batch streams its rows in and the one
    before may be applying its totals or committing. Every batch it said was done is kept;
    the others are whole or absent."""
    batches, size = 10, 4000
    process = start_writer(database_url, 0, batches, size, "pipelined")
    await kill_while_copying(process, database_url, "done 1")
    assert process.stdout is not None
    said = process.stdout.read().split()  # what it printed before it died
    done = 2 + sum(word == "done" for word in said)  # (in order: 0 and 1 were read above)
    assert done < batches, "the kill came after the last batch"
    await assert_whole_and_retry(database_url, batches, size, acknowledged=done)


@pytest.fixture
def server_folder() -> Iterator[Path]:
    """A folder outside pytest's basetemp: as root, pgserver runs PostgreSQL as its own user,
    which cannot reach into /tmp/pytest-of-root (mode 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="ksh-test-crash-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_postgres_killed_mid_batch(server_folder: Path) -> None:
    """A private embedded server, killed with SIGKILL (postmaster and every backend) while a
    batch is being written, then started again: crash recovery keeps exactly what committed."""
    import pgserver
    import psutil  # type: ignore[import-untyped]

    server = pgserver.get_server(str(server_folder / "pgdata"), cleanup_mode="stop")
    try:
        url = server.get_uri()
        from ksh.schema import migrate_all

        connection = await asyncpg.connect(url)
        await migrate_all(connection)
        await connection.close()
        batches, size = 6, 4000
        process = start_writer(url, 0, batches, size)
        try:
            wait_for_line(process, "done 1")
            wait_for_line(process, "begin 3")  # batches 0, 1 and 2 are done
            await until_a_batch_is_copying(url)
            postmaster = psutil.Process(server.get_pid())
            for victim in [postmaster, *postmaster.children(recursive=True)]:
                os.kill(victim.pid, signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            process.kill()
            process.wait(timeout=30)
        assert process.returncode != 0  # the writer lost its server mid-batch
        psutil.wait_procs([postmaster], timeout=10)
        server.ensure_postgres_running()
        await assert_whole_and_retry(server.get_uri(), batches, size, acknowledged=3)
    finally:
        server.cleanup()


async def test_a_connection_never_books_on_stale_accounts(database_url: str) -> None:
    """Each connection keeps the accounts it loaded; a write by another connection (a batch,
    or closing an account) must make it load them again."""
    from ledger import close_account

    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    try:
        await prepare(first)
        purse = writer.purses[0]

        def fare(name: str, amount: int) -> list[Transfer]:
            return [
                Transfer(uuid.uuid5(uuid.NAMESPACE_OID, name), purse, writer.revenue, amount, 1)
            ]

        assert [o.result for o in await create_transfers(first, fare("a", 1_500_000))] == [
            R.created
        ]
        assert [o.result for o in await create_transfers(second, fare("b", 400_000))] == [R.created]
        # 2,000,000 - 1,500,000 - 400,000 = 100,000 left: the first connection must know.
        assert [o.result for o in await create_transfers(first, fare("c", 100_001))] == [
            R.exceeds_credits
        ]
        assert await close_account(second, purse)
        assert [o.result for o in await create_transfers(first, fare("d", 1))] == [
            R.debit_account_closed
        ]
        assert await check_ledger(first) == []
    finally:
        await first.close()
        await second.close()


async def test_a_caller_cancelled_mid_copy_leaves_nothing_and_a_usable_connection(
    connection, monkeypatch
) -> None:
    """The plain path streams rows to COPY from a task of its own; cancelling the caller while
    rows are still being decided (a narrow socket buffer keeps the COPY waiting on the server)
    ends the COPY before the transaction rolls back."""
    import socket

    import ledger.store as store
    from ledger.booking import decide_batch

    await prepare(connection)
    booked_before = await connection.fetchval("select count(*) from ledger_transfers")

    def narrow(connection: asyncpg.Connection) -> None:
        transport = connection._transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=1024)

    parts = 0
    caller: asyncio.Task | None = None

    def decide_then_cancel(*arguments, **keywords):
        nonlocal parts
        parts += 1
        if parts == 3:
            assert caller is not None
            caller.cancel()
        return decide_batch(*arguments, **keywords)

    monkeypatch.setattr(store, "widen_send_buffer", narrow)
    monkeypatch.setattr(store, "decide_batch", decide_then_cancel)
    fares = writer.batch(999, 8_190)
    caller = asyncio.ensure_future(create_transfers(connection, fares))
    try:
        await caller
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the booking was not cancelled")
    monkeypatch.undo()
    assert not connection.is_in_transaction()
    assert await connection.fetchval("select count(*) from ledger_transfers") == booked_before
    outcomes = await create_transfers(connection, fares[:3])
    assert [outcome.result for outcome in outcomes] == [R.created] * 3
    assert await check_ledger(connection) == []
