"""Upload ingest: signed batches from many terminals over HTTP on loopback, booked into PostgreSQL.

Figures: `taps_per_s` (end to end: HTTP, signature check per batch, parse, ledger booking,
card monitoring, all in the back office's real code path against a fresh database),
and `tap_ms_median` / `tap_ms_p99` (a validator's whole tap: card read, fare, journal write
ahead with fsync, debit and commit on an in-process emulated card).

`--replicated` measures the same ingest again, in the same run, against a primary with a
synchronous standby (`ledger.replication`: the same binaries and memory settings, on loopback
TCP), where every commit returns only once the standby has flushed it:
`replicated_taps_per_s` beside the single server's `taps_per_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ksh import signals
from ksh.signals import stop_on_signals

operator_id = "TRANS-SEMARANG"
first_card_number = 6032_9840_0000_0000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taps", type=int, default=200_000, help="taps uploaded (default 200000)")
    parser.add_argument("--terminals", type=int, default=16)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--batch-records", type=int, default=4_000)
    parser.add_argument("--concurrency", type=int, default=6, help="uploads in flight")
    parser.add_argument("--tap-samples", type=int, default=300, help="validator taps timed")
    parser.add_argument("--deny-list-cards", type=int, default=5_000_000)
    parser.add_argument(
        "--server-processes", type=int, default=2, help="back office processes (one port)"
    )
    parser.add_argument(
        "--no-transaction-mac",
        dest="transaction_mac",
        action="store_false",
        help="cards without a Transaction MAC (the back office verifies none): to see its cost",
    )
    parser.add_argument(
        "--replicated",
        action="store_true",
        help="also ingest into a primary with a synchronous standby, side by side",
    )


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    from ledger.database import server_url

    # SIGINT or SIGTERM (even SIGINT inherited ignored) cancels the run; the server processes,
    # the scratch database and the embedded server are cleaned up on the way out.
    with stop_on_signals() as stop:
        with server_url() as url:
            stop.check()
            figures = signals.run(_ingest(url, arguments), stop)
        if getattr(arguments, "replicated", False):
            stop.check()
            figures.update(replicated_figures(arguments, figures["taps_per_s"], stop))
        stop.check()
        figures.update(tap_latency(arguments.tap_samples))
        stop.check()
        figures.update(deny_list_figures(arguments.deny_list_cards))
    return figures


def replicated_figures(
    arguments: argparse.Namespace, single_taps_per_s: int, stop: signals.Stop
) -> dict[str, Any]:
    """The same ingest into a primary whose commits wait for a synchronous standby."""
    import contextlib
    import shutil

    from ledger import replication

    folder = Path(tempfile.mkdtemp(prefix="ksh-bench-replicated-"))
    servers: list[replication.Server] = []
    try:
        primary = replication.start_primary(folder / "primary", _free_port())
        servers.append(primary)
        standby = signals.run(
            replication.start_standby(primary.url, folder / "standby", _free_port()), stop
        )
        servers.append(standby)
        figures = signals.run(_ingest(primary.url, arguments), stop)
        standbys = signals.run(_standby_states(primary.url), stop)
    finally:
        for server in reversed(servers):
            with contextlib.suppress(replication.ReplicationError):
                replication.stop(server.folder, "immediate")
        shutil.rmtree(folder, ignore_errors=True)
    assert standbys == ["sync"], f"the standby was not synchronous throughout: {standbys}"
    return {
        "replicated_taps_per_s": figures["taps_per_s"],
        "replicated_ingest_seconds": figures["ingest_seconds"],
        "replicated_ledger_direct_transfers_per_s": figures["ledger_direct_transfers_per_s"],
        "replicated_to_single_ratio": round(figures["taps_per_s"] / single_taps_per_s, 3),
    }


async def _standby_states(url: str) -> list[str]:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("select sync_state from pg_stat_replication")
    finally:
        await connection.close()
    return [row["sync_state"] for row in rows]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await asyncio.sleep(1.0)  # let every worker bind
        return
    raise OSError(f"back office processes did not listen on {port}")


def _serve_process(
    database_url: str, port: int, connections_max: int, ready: Any, masters: tuple[bytes, ...]
) -> None:
    from aiohttp import web

    from gateways.backoffice import BackofficeConfig, create_app
    from gateways.terminal_api.routes import terminal_extension

    app = create_app(
        BackofficeConfig(
            database_url,
            pool_connections_max=connections_max,
            settings={"tmac_master_keys": masters},
        ),
        [terminal_extension],
    )
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)


def deny_list_figures(cards: int) -> dict[str, Any]:
    """The terminal's deny list at `cards` entries against a plain set of ints, side by side."""
    import sys

    from bus_terminals.deny_list import DenyList

    if cards <= 0:
        return {}
    generator = random.Random(5)
    numbers = [generator.randrange(10**15, 10**16) for _ in range(cards)]
    deny = DenyList(numbers, version=1)
    plain = set(numbers)
    probes = [str(generator.randrange(10**15, 10**16)) for _ in range(100_000)]
    # Every other probe a listed card (cycling through the list when it is short).
    probes[::2] = [str(numbers[index % cards]) for index in range(len(probes[::2]))]
    started = time.perf_counter()
    hits = sum(1 for probe in probes if probe in deny)
    deny_us = (time.perf_counter() - started) / len(probes) * 1e6
    started = time.perf_counter()
    plain_hits = sum(1 for probe in probes if int(probe) in plain)
    set_us = (time.perf_counter() - started) / len(probes) * 1e6
    assert hits == plain_hits
    sampled = numbers[:1000]
    set_bytes = sys.getsizeof(plain) + sum(map(sys.getsizeof, sampled)) * len(numbers) // len(
        sampled
    )
    return {
        "deny_list_cards": len(deny),
        "deny_list_bytes": deny.values.itemsize * len(deny.values),
        "deny_list_lookup_us": round(deny_us, 3),
        "int_set_bytes": set_bytes,
        "int_set_lookup_us": round(set_us, 3),
    }


async def _ingest(server: str, arguments: argparse.Namespace) -> dict[str, Any]:
    from ksh.database import scratch_database

    async with scratch_database(server, "ksh_bench") as (_, url):
        return await _ingest_into(url, arguments)


async def _ingest_into(url: str, arguments: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import asyncpg
    from aiohttp import web

    from bus_terminals.wire import (
        RecordStatus,
        UploadBatch,
        UploadKind,
        UploadRecord,
        card_log_fields,
        card_terminal_number,
        encode_batch,
        public_key_text,
        sign,
        signature_header,
        terminal_header,
    )
    from card_reader import tmac
    from gateways.backoffice import BackofficeConfig, create_app
    from gateways.terminal_api import registry
    from gateways.terminal_api.registry import TerminalRole
    from gateways.terminal_api.routes import terminal_extension
    from ledger import store
    from ledger.records import Account, AccountKind, Transfer, TransferCode, derive_id

    runner = None
    workers: list[Any] = []
    try:
        connection = await asyncpg.connect(url)
        await registry.register_operator(connection, operator_id)
        keys = {}
        for index in range(arguments.terminals):
            terminal_id = f"BUS-{index:04d}"
            keys[terminal_id] = Ed25519PrivateKey.generate()
            await registry.register_terminal(
                connection,
                terminal_id,
                public_key_text(keys[terminal_id].public_key()),
                TerminalRole.validator,
                operator_id=operator_id,
            )
        cards = [str(first_card_number + index) for index in range(arguments.cards)]
        opening_rupiah = 500_000
        clearing = derive_id("bank-clearing", "bench")
        await store.create_accounts(
            connection, [Account(clearing, AccountKind.bank_clearing, "bench")]
        )
        for start in range(0, len(cards), 4_000):
            chunk = cards[start : start + 4_000]
            await registry.register_cards(connection, chunk)
            await store.create_transfers(
                connection,
                [
                    Transfer(
                        derive_id("bench-opening", number),
                        clearing,
                        registry.purse_account_id(number),
                        opening_rupiah,
                        TransferCode.top_up,
                    )
                    for number in chunk
                ],
            )
        # Cards issued with a Transaction MAC (their UIDs registered): every tap carries the
        # card's own proof, which the back office verifies (the TMVs are made here, untimed).
        masters: tuple[bytes, ...] = ()
        uids: dict[str, bytes] = {}
        if arguments.transaction_mac:
            masters = (random.Random(11).randbytes(16),)
            uids = {number: bytes.fromhex(f"04{index:012x}") for index, number in enumerate(cards)}
            for start in range(0, len(cards), 4_000):
                chunk = cards[start : start + 4_000]
                await registry.register_card_uids(connection, {n: uids[n] for n in chunk})
        await connection.close()
        card_keys = {number: tmac.card_key(masters[0], uid) for number, uid in uids.items()}

        # The taps: each card rides in turn on random buses; counters and balances chain.
        generator = random.Random(2026)
        per_terminal: dict[str, list[UploadRecord]] = {terminal: [] for terminal in keys}
        card_state = {number: (0, 0, opening_rupiah) for number in cards}
        terminal_ids = list(keys)
        for index in range(arguments.taps):
            number = cards[index % len(cards)]
            counter, last_terminal, balance = card_state[number]
            fare = 3_500 if generator.random() < 0.8 else 1_000
            terminal = generator.choice(terminal_ids)
            records = per_terminal[terminal]
            record = UploadRecord(
                terminal,
                len(records) + 1,
                UploadKind.fare_debit,
                RecordStatus.committed,
                number,
                counter + 1,
                fare,
                0,
                "",
                balance - fare,
                1_763_942_400_000 + index,
                "K1",
                "",
                "full",
                counter,
                last_terminal,
                balance if counter else 0,
            )
            if uids:
                transaction = tmac.CardTransaction.of_log_fields(*card_log_fields(record))
                mac = tmac.transaction_mac_value(
                    card_keys[number],
                    uids[number],
                    counter + 2,
                    tmac.transaction_input(transaction),
                )  # the card's counter: its issue was its first MACed transaction
                record = record._replace(tmac_counter=counter + 2, tmac_value=mac.hex())
            records.append(record)
            card_state[number] = (counter + 1, card_terminal_number(terminal), balance - fare)
        bodies: dict[str, list[tuple[bytes, str]]] = {}
        for terminal, terminal_records in per_terminal.items():
            bodies[terminal] = []
            for batch_sequence, start in enumerate(
                range(0, len(terminal_records), arguments.batch_records), 1
            ):
                batch_records = tuple(terminal_records[start : start + arguments.batch_records])
                body = encode_batch(UploadBatch(terminal, batch_sequence, batch_records))
                bodies[terminal].append((body, sign(keys[terminal], body)))

        if arguments.server_processes > 1:
            # Several back office processes on one port (SO_REUSEPORT), as `ksh serve` could run.
            port = _free_port()
            context = multiprocessing.get_context("spawn")
            ready = context.Event()
            for _ in range(arguments.server_processes):
                worker = context.Process(
                    target=_serve_process,
                    args=(url, port, arguments.concurrency + 1, ready, masters),
                    daemon=True,
                )
                worker.start()
                workers.append(worker)
            await _wait_for_port(port)
        else:
            app = create_app(
                BackofficeConfig(
                    url,
                    pool_connections_max=arguments.concurrency + 1,
                    settings={"tmac_master_keys": masters},
                ),
                [terminal_extension],
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base_url = f"http://127.0.0.1:{port}"
        semaphore = asyncio.Semaphore(arguments.concurrency)
        failures = 0

        async def upload_terminal(session: aiohttp.ClientSession, terminal: str) -> None:
            nonlocal failures
            for body, signature in bodies[terminal]:
                async with (
                    semaphore,
                    session.post(
                        f"{base_url}/terminal/v1/uploads",
                        data=body,
                        headers={terminal_header: terminal, signature_header: signature},
                    ) as response,
                ):
                    if response.status != 200:
                        failures += 1
                        raise RuntimeError(await response.text())
                    await response.read()

        started = time.perf_counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await asyncio.gather(*(upload_terminal(session, t) for t in terminal_ids))
        elapsed = time.perf_counter() - started
        stop_workers(workers)

        check = await asyncpg.connect(url)
        booked = await check.fetchval("select count(*) from ledger_transfers where code = $1", 1)
        # Side by side: the same fares booked straight into the ledger (no HTTP, no signature,
        # no records, no monitoring), one batch at a time: the ceiling ingest works under.
        revenue = registry.operator_revenue_account_id(operator_id)
        direct = [
            Transfer(
                derive_id("bench-direct", index),
                registry.purse_account_id(cards[index % len(cards)]),
                revenue,
                1,
                TransferCode.fare,
                terminal_id="BENCH-DIRECT",  # the same references a tap's transfer carries
                terminal_sequence=index + 1,
                card_number=cards[index % len(cards)],
                card_counter=1_000_000 + index,
            )
            for index in range(arguments.taps)
        ]
        direct_started = time.perf_counter()
        for start in range(0, len(direct), arguments.batch_records):
            await store.create_transfers(check, direct[start : start + arguments.batch_records])
        direct_elapsed = time.perf_counter() - direct_started
        total = await check.fetchval(
            "select sum(credits_posted - debits_posted) from ledger_accounts"
        )
        flags = await check.fetchval("select count(*) from card_flags")
        await check.close()
        assert booked == arguments.taps, f"booked {booked} of {arguments.taps}"
        assert total == 0
        return {
            "taps": arguments.taps,
            "terminals": arguments.terminals,
            "batch_records": arguments.batch_records,
            "concurrency": arguments.concurrency,
            "server_processes": arguments.server_processes,
            "ingest_seconds": round(elapsed, 3),
            "taps_per_s": round(arguments.taps / elapsed),
            "ledger_direct_transfers_per_s": round(arguments.taps / direct_elapsed),
            "ingest_to_ledger_direct_ratio": round(direct_elapsed / elapsed, 3),
            "card_flags": flags,
            "upload_failures": failures,
            "transaction_mac_verified": bool(masters),  # every tap proved by its card
        }
    finally:
        stop_workers(workers)  # also when stopped by a signal: before the database is dropped
        if runner is not None:
            await runner.cleanup()


def stop_workers(workers: list[Any]) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # its run_app stops on SIGTERM, whatever it inherited
    for worker in workers:
        worker.join(timeout=10)
        if worker.is_alive():
            worker.kill()
            worker.join()
    workers.clear()


def tap_latency(samples: int) -> dict[str, Any]:
    """A validator's whole tap, in-process emulated card, journal on a temporary folder."""
    if samples <= 0:
        return {}
    from bus_terminals.simulator import timed_validator_taps

    with tempfile.TemporaryDirectory() as folder:
        durations_ms = timed_validator_taps(Path(folder), samples)
    if not durations_ms:
        return {}
    durations_ms.sort()
    return {
        "tap_samples": len(durations_ms),
        "tap_ms_median": round(statistics.median(durations_ms), 3),
        "tap_ms_p99": round(
            durations_ms[min(len(durations_ms) - 1, int(len(durations_ms) * 0.99))], 3
        ),
    }
