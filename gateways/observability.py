"""What `/metrics` says, for the whole service rather than the one process a scrape reached.

Two kinds of figures:

- **counted in the processes** (uploads, records, requests and their latencies): prometheus
  client counters and histograms. `ksh serve --workers N` runs them in prometheus-client's
  multiprocess mode (`prepare_multiprocess_folder`, called before any worker starts): each
  process writes its values to a file in one folder, and a scrape of any worker adds them up.
  Without that folder (tests, one process) each application has a registry of its own.
- **read from the database at scrape time** (`MetricSource`s: the standby's replication lag,
  terminals not heard from, days left on the validators' fare feeds, payouts and open
  reconciliation exceptions): the same whichever process answers, so never added up.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

multiprocess_folder_variable = "PROMETHEUS_MULTIPROC_DIR"
labels_max = 1_000  # a metric refuses new label values past this: bounded memory and files
# An active terminal with no upload for this long counts as not heard from (setting
# `terminal_silence_s`): a bus uploads every 15 minutes while in service.
terminal_silence_s_default = 3_600
request_duration_buckets_s = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)

#: Gauges read from the database at scrape time: awaited with the application and a
#: connection, each returns text in the exposition format.
MetricSource = Callable[[web.Application, asyncpg.Connection], Awaitable[str]]
metric_sources_key: web.AppKey[list[MetricSource]] = web.AppKey("metric_sources")


def prepare_multiprocess_folder() -> Path:
    """Before the serving processes start (and before prometheus_client is imported, which
    reads the variable once): a folder for every process's values, emptied of an earlier
    run's. PROMETHEUS_MULTIPROC_DIR when set, else a new temporary folder."""
    given = os.environ.get(multiprocess_folder_variable)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="ksh-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ[multiprocess_folder_variable] = str(folder)
    return folder


def multiprocess() -> bool:
    return bool(os.environ.get(multiprocess_folder_variable))


def process_ended(pid: int) -> None:
    """A serving process stopped: drop its live gauges (its counters stay counted)."""
    if multiprocess():
        from prometheus_client import multiprocess as prometheus_multiprocess

        prometheus_multiprocess.mark_process_dead(pid)


class Registry:
    """One application's counters and histograms, rendered across processes when they run in
    multiprocess mode."""

    def __init__(self) -> None:
        import prometheus_client

        prometheus_client.disable_created_metrics()  # no *_created series beside each counter
        self.own = prometheus_client.CollectorRegistry()
        self.requests = self.histogram(
            "ksh_http_request_duration_seconds",
            "HTTP requests by area (terminal, snap, finance, admin, health, metrics, kartu) and "
            "status.",
            ("area", "status"),
            request_duration_buckets_s,
        )

    def counter(self, name: str, help_text: str, labels: tuple[str, ...]) -> Any:
        from prometheus_client import Counter

        return Counter(name, help_text, labels, registry=self.own)

    def histogram(
        self, name: str, help_text: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Any:
        from prometheus_client import Histogram

        return Histogram(name, help_text, labels, registry=self.own, buckets=buckets)

    def render(self) -> str:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client import multiprocess as prometheus_multiprocess

        if not multiprocess():
            return generate_latest(self.own).decode()
        combined = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(combined)
        return generate_latest(combined).decode()


registry_key = web.AppKey("metrics_registry", Registry)


def install(app: web.Application) -> Registry:
    """The application's registry and metric sources, with the request timing middleware's
    state; idempotent."""
    if registry_key not in app:
        app[registry_key] = Registry()
        sources: list[MetricSource] = [replication_metrics, silent_terminal_metrics]
        app[metric_sources_key] = sources
    return app[registry_key]


request_areas = frozenset(
    {"terminal", "snap", "finance", "admin", "health", "metrics", "kartu"}  # kartu: the card page
)


def request_area(path: str) -> str:
    """The first segment of the path, when it is one of ours (bounded labels)."""
    first = path.lstrip("/").split("/", 1)[0]
    return first if first in request_areas else "other"


def escape_label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def gauge_text(name: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, value in samples:
        if labels:
            inner = ",".join(f'{key}="{escape_label(text)}"' for key, text in labels.items())
            lines.append(f"{name}{{{inner}}} {value:g}")
        else:
            lines.append(f"{name} {value:g}")
    return "\n".join(lines) + "\n"


async def replication_metrics(app: web.Application, connection: asyncpg.Connection) -> str:
    """Whether the database answering is the primary, and each standby's lag as the primary
    sees it (`pg_stat_replication`)."""
    from ledger.replication import standby_lag

    in_recovery = bool(await connection.fetchval("select pg_is_in_recovery()"))
    standbys = await standby_lag(connection)
    text = gauge_text(
        "ksh_database_primary",
        "1 when the database the back office writes to is a primary (not in recovery).",
        [({}, 0 if in_recovery else 1)],
    )
    text += gauge_text(
        "ksh_database_synchronous_standbys",
        "Standbys a commit waits for now (0: commits are acknowledged on the primary alone).",
        [({}, sum(1 for standby in standbys if standby.sync_state in ("sync", "quorum")))],
    )
    text += gauge_text(
        "ksh_database_standby_replay_lag_bytes",
        "WAL the standby has not replayed yet, by standby.",
        [({"standby": s.name, "state": s.state}, s.replay_lag_bytes) for s in standbys],
    )
    text += gauge_text(
        "ksh_database_standby_replay_lag_seconds",
        "Time between a commit on the primary and its replay on the standby, by standby.",
        [({"standby": s.name, "state": s.state}, s.replay_lag_s) for s in standbys],
    )
    return text


async def silent_terminal_metrics(app: web.Application, connection: asyncpg.Connection) -> str:
    """Active terminals with no upload for `terminal_silence_s` (by role)."""
    from gateways.backoffice import config_key

    config = app[config_key]
    silence_s = int(config.settings.get("terminal_silence_s", terminal_silence_s_default))
    since = config.clock.now() - dt.timedelta(seconds=silence_s)
    rows = await connection.fetch(
        "select role, count(*) as silent from terminals t where status = 'active' and not "
        "exists (select 1 from upload_batches b where b.terminal_id = t.terminal_id "
        "and b.received_at >= $1) group by role order by role",
        since,
    )
    return gauge_text(
        "ksh_terminals_not_heard_from",
        f"Active terminals with no upload in the last {silence_s} s, by role.",
        [({"role": str(row["role"])}, row["silent"]) for row in rows],
    )


async def database_metrics(app: web.Application, connection: asyncpg.Connection) -> str:
    return "".join([await source(app, connection) for source in app[metric_sources_key]])
