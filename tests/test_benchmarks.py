"""Every `ksh bench` runs end to end at a small size and prints the figures the README quotes.
(The figures themselves are never asserted: speed lives in the benchmarks, not in tests.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

project_root = Path(__file__).resolve().parents[1]
# Each small run takes seconds. Under the suite's 300 s a test (pytest-timeout), so that a run
# that hangs fails as the command that timed out, with its name, rather than as a stack dump.
command_timeout_s = 240

small_runs = {
    "ledger": (
        ["--transfers", "20000", "--cards", "2000", "--batch", "1000"],
        {
            "transfers_per_s",
            "raw_copy_transfers_per_s",
            "ratio",
            "one_connection_transfers_per_s",
            "client_cpu_ms_per_batch",
        },
    ),
    "fare": (
        ["--taps", "2000", "--rerate-taps", "5000", "--rerate-cards", "500", "--repeats", "1"],
        {"decisions_per_s", "decisions_per_s_large", "rerate_s"},
    ),
    "ingest": (
        # --replicated: the same again into a primary with a synchronous standby
        [
            "--taps",
            "2000",
            "--terminals",
            "4",
            "--cards",
            "200",
            "--tap-samples",
            "20",
            "--replicated",
        ],
        {
            "taps_per_s",
            "ledger_direct_transfers_per_s",
            "tap_ms_median",
            "deny_list_lookup_us",
            "replicated_taps_per_s",
            "replicated_to_single_ratio",
        },
    ),
    "settle": (
        ["--taps", "5000", "--merchants", "20", "--collections", "50", "--cards", "500"],
        {"seconds", "lines_matched", "statement_lines_per_second"},
    ),
}


@pytest.mark.parametrize("name", sorted(small_runs))
def test_benchmark_runs_small(name: str, postgres_server_url: str) -> None:
    arguments, figures = small_runs[name]
    done = subprocess.run(
        [sys.executable, "-m", "ksh", "bench", name, "--json", *arguments],
        cwd=project_root,
        env={**os.environ, "DATABASE_URL": postgres_server_url},
        capture_output=True,
        text=True,
        timeout=command_timeout_s,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert figures <= printed.keys()
    assert all(printed[figure] > 0 for figure in figures), printed
    assert printed.get("upload_failures", 0) == 0


def test_tap_benchmark_runs_small(pcsc_reader_name: str) -> None:
    """Through the real pcscd and vpcd, as the README's figure is."""
    done = subprocess.run(
        [sys.executable, "-m", "ksh", "bench", "tap", "--json", "--taps", "20"],
        cwd=project_root,
        capture_output=True,
        text=True,
        timeout=command_timeout_s,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert printed["taps"] == 20
    assert printed["pcsc_ms_median"] > 0 and printed["inprocess_ms_median"] > 0, printed
    # the debit master in a SoftHSM 2 token, side by side in the same run
    assert printed["token_pcsc_ms_median"] > 0 and printed["token_inprocess_ms_median"] > 0
