"""/metrics of `ksh serve --workers 2` adds up every worker's counts (prometheus-client's
multiprocess mode): a scrape that reaches one worker still sees every request. And the figures
read from the database: whether it is the primary, its synchronous standbys, terminals not
heard from, and /health/live and /health/ready."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.wire import public_key_text
from gateways.terminal_api import registry
from gateways.terminal_api.registry import TerminalRole
from tests.ha.conftest import free_port
from tests.waiting import wait_until_async

project_root = Path(__file__).resolve().parents[2]
requests_count = 40


@pytest.mark.timeout(120)
async def test_metrics_add_up_across_worker_processes(database_url: str, tmp_path: Path) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await registry.register_operator(connection, "TRANS-SEMARANG", "Trans Semarang")
        await registry.register_terminal(
            connection,
            "BUS-QUIET",
            public_key_text(Ed25519PrivateKey.generate().public_key()),
            TerminalRole.validator,
            operator_id="TRANS-SEMARANG",
        )
    finally:
        await connection.close()
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ksh", "serve", "--port", str(port), "--workers", "2"],
            env=environment,
            cwd=project_root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def live() -> bool:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    async with session.get(url + "/health/live") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until_async(live, "ksh serve answers", within_s=60)
            before = await _health_count(session, url)
            for _ in range(requests_count):
                # A new connection each time: SO_REUSEPORT spreads them over the workers.
                async with aiohttp.ClientSession() as fresh, fresh.get(url + "/health") as answer:
                    assert answer.status == 200
            after = await _health_count(session, url)
            assert after - before >= requests_count
            async with session.get(url + "/metrics") as response:
                text = await response.text()
            assert "ksh_database_primary 1" in text
            assert "ksh_database_synchronous_standbys 0" in text
            assert 'ksh_terminals_not_heard_from{role="validator"} 1' in text
            assert "ksh_settlement_payout_unsettled_seconds 0" in text
            assert "# TYPE ksh_reconciliation_exceptions_open gauge" in text
            async with session.get(url + "/health/ready") as response:
                assert response.status == 200, await response.text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


async def _health_count(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    found = re.search(
        r'^ksh_http_request_duration_seconds_count\{area="health",status="200"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0
