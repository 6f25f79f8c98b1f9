"""Fleet packages on the back office: publish (signed by the publisher's fleet key), offer on
sync, keep what each terminal reports, and show which terminals lag.

The package format and its checks are `bus_terminals.packages` (shared with the terminals).
Publishing signs: the key is the publisher's (`ksh fleet publish --signing-key`); the HTTP
service stores nothing secret and serves the signed bytes as they are. A terminal *lags* on a
kind when it runs an older version than the newest one whose effective time has passed by the
back office's clock (a terminal that never reported runs version 0).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.packages import (
    PackageKind,
    Refusal,
    SignedManifest,
    deny_list_content,
    sign_package,
    version_max,
)
from gateways.terminal_api import registry

logger = logging.getLogger("ksh.fleet")

offered_per_kind_max = 4  # the newest effective version and the next few ahead of it
# What each role takes: a point of sale prices nothing, so it takes no fare feed.
kinds_by_role = {
    "validator": tuple(PackageKind),
    "pos": tuple(kind for kind in PackageKind if kind is not PackageKind.fare_feed),
}


def _unix_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


async def publish(
    connection: asyncpg.Connection,
    key: Ed25519PrivateKey,
    kind: PackageKind,
    content: bytes,
    *,
    effective_at: dt.datetime,
    now: dt.datetime,
    published_by: str,
    label: str = "",
) -> SignedManifest:
    """Sign and store the next version of `kind` (PackageError if the content is invalid)."""
    async with connection.transaction():
        # One publisher at a time: versions of a kind follow one another without gaps.
        await connection.execute("lock table fleet_packages in share row exclusive mode")
        version = await connection.fetchval(
            "select coalesce(max(version), 0) + 1 from fleet_packages where kind = $1", kind.value
        )
        assert version <= version_max
        signed = sign_package(
            key,
            kind,
            version,
            content,
            effective_at_ms=_unix_ms(effective_at),
            published_at_ms=_unix_ms(now),
            label=label,
        )
        await connection.execute(
            "insert into fleet_packages (kind, version, effective_at, published_at, manifest, "
            "signature, content, content_sha256, label, published_by) "
            "values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            kind.value,
            version,
            effective_at,
            now,
            signed.raw,
            signed.signature,
            content,
            signed.manifest.content_sha256,
            signed.manifest.label,
            published_by,
        )
    return signed


async def deny_list_snapshot(connection: asyncpg.Connection) -> bytes:
    """The whole deny list and its chip-block list as a package's content, with the version it
    is complete up to: the last change (addition, review, lift) of `deny_list_changes`, as the
    sync's deltas count."""
    row = await connection.fetchrow(  # one statement: one snapshot of the list and its version
        "select (select coalesce(max(change_id), 0) from deny_list_changes) as version, "
        "coalesce(array_agg(distinct card_number), '{}') as numbers, "
        "coalesce(array_agg(distinct card_number) "
        f"filter (where {registry.chip_block_condition}), '{{}}') as chip_blocked "
        "from deny_list d"
    )
    return deny_list_content(
        row["version"],
        [int(number) for number in row["numbers"]],
        [int(number) for number in row["chip_blocked"]],
    )


@dataclass(frozen=True, slots=True)
class PackageRow:
    kind: PackageKind
    version: int
    effective_at: dt.datetime
    published_at: dt.datetime
    content_bytes: int
    content_sha256: str
    label: str
    published_by: str


async def packages(connection: asyncpg.Connection) -> list[PackageRow]:
    rows = await connection.fetch(
        "select kind, version, effective_at, published_at, length(content) as content_bytes, "
        "content_sha256, label, published_by from fleet_packages order by kind, version"
    )
    return [
        PackageRow(
            PackageKind(row["kind"]),
            row["version"],
            row["effective_at"],
            row["published_at"],
            row["content_bytes"],
            row["content_sha256"],
            row["label"],
            row["published_by"],
        )
        for row in rows
    ]


async def content(connection: asyncpg.Connection, kind: PackageKind, version: int) -> bytes | None:
    value = await connection.fetchval(
        "select content from fleet_packages where kind = $1 and version = $2", kind.value, version
    )
    return None if value is None else bytes(value)


async def offers(
    connection: asyncpg.Connection,
    role: str,
    running: dict[PackageKind, int],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """For each kind the role takes: the newest version effective by `now` and the next ones
    published ahead of it, when newer than what the terminal runs; oldest first."""
    kinds = [kind.value for kind in kinds_by_role[role]]
    rows = await connection.fetch(
        """select kind, version, manifest, signature from fleet_packages p
            where kind = any($1::text[])
              and version > coalesce(($2::jsonb ->> kind)::bigint, 0)
              and version >= (select coalesce(max(version), 0) from fleet_packages e
                               where e.kind = p.kind and e.effective_at <= $3)
            order by kind, version""",
        kinds,
        json.dumps({kind.value: version for kind, version in running.items()}),
        now,
    )
    taken: dict[str, int] = {}
    offered = []
    for row in rows:
        taken[row["kind"]] = taken.get(row["kind"], 0) + 1
        if taken[row["kind"]] <= offered_per_kind_max:
            offered.append(
                {
                    "kind": row["kind"],
                    "version": row["version"],
                    "manifest": base64.b64encode(row["manifest"]).decode(),
                    "signature": row["signature"],
                }
            )
    return offered


# ------------------------------------------------------------------------------ reports


@dataclass(frozen=True, slots=True)
class TerminalReport:
    """What a terminal says of one kind on sync (0: none)."""

    running_version: int = 0
    staged_version: int = 0
    refused_version: int = 0
    refused_reason: str = ""


def parse_report(running: str, staged: str, refused: str) -> dict[PackageKind, TerminalReport]:
    """The sync query's `running=kind:N,...`, `staged=kind:N,...`, `refused=kind:N:reason,...`
    (`bus_terminals.fleet.Fleet.report_query`); ValueError names what is wrong."""
    fields: dict[PackageKind, dict[str, Any]] = {}
    for name, text, parts_wanted in (
        ("running", running, 2),
        ("staged", staged, 2),
        ("refused", refused, 3),
    ):
        for item in filter(None, text.split(",")):
            parts = item.split(":")
            if len(parts) != parts_wanted or parts[0] not in PackageKind.__members__:
                raise ValueError(
                    f"{name}: {item[:40]!r} is not kind:version"
                    + (":reason" if parts_wanted == 3 else "")
                )
            if not parts[1].isdigit() or not 0 < int(parts[1]) <= version_max:
                raise ValueError(f"{name}: {parts[1][:20]!r} is not a version")
            if name == "refused" and parts[2] not in Refusal.__members__:
                raise ValueError(f"refused: {parts[2][:40]!r} is not a reason")
            kind = PackageKind(parts[0])
            if name == "refused":
                fields.setdefault(kind, {}).update(
                    refused_version=int(parts[1]), refused_reason=parts[2]
                )
            else:
                fields.setdefault(kind, {})[f"{name}_version"] = int(parts[1])
    return {kind: TerminalReport(**values) for kind, values in fields.items()}


async def record_report(
    connection: asyncpg.Connection,
    terminal_id: str,
    role: str,
    report: dict[PackageKind, TerminalReport],
    now: dt.datetime,
) -> list[tuple[PackageKind, TerminalReport]]:
    """Keep what the terminal reported, per kind its role takes (a write only when it changed);
    returns the refusals new since its last report (logged as warnings)."""
    stored = {
        PackageKind(row["kind"]): TerminalReport(
            row["running_version"],
            row["staged_version"],
            row["refused_version"],
            row["refused_reason"],
        )
        for row in await connection.fetch(
            "select kind, running_version, staged_version, refused_version, refused_reason "
            "from terminal_packages where terminal_id = $1",
            terminal_id,
        )
    }
    changed = {
        kind: report.get(kind, TerminalReport())
        for kind in kinds_by_role[role]
        if stored.get(kind) != report.get(kind, TerminalReport())
    }
    if changed:
        await connection.executemany(
            "insert into terminal_packages (terminal_id, kind, running_version, staged_version, "
            "refused_version, refused_reason, reported_at) values ($1, $2, $3, $4, $5, $6, $7) "
            "on conflict (terminal_id, kind) do update set running_version = excluded.running_version, "
            "staged_version = excluded.staged_version, refused_version = excluded.refused_version, "
            "refused_reason = excluded.refused_reason, reported_at = excluded.reported_at",
            [
                (
                    terminal_id,
                    kind.value,
                    r.running_version,
                    r.staged_version,
                    r.refused_version,
                    r.refused_reason,
                    now,
                )
                for kind, r in changed.items()
            ],
        )
    refusals = [
        (kind, r)
        for kind, r in changed.items()
        if r.refused_version
        and (r.refused_version, r.refused_reason)
        != (
            stored.get(kind, TerminalReport()).refused_version,
            stored.get(kind, TerminalReport()).refused_reason,
        )
    ]
    for kind, r in refusals:
        logger.warning(
            "terminal refused a fleet package",
            extra={
                "terminal_id": terminal_id,
                "kind": kind.value,
                "version": r.refused_version,
                "reason": r.refused_reason,
            },
        )
    return refusals


# ------------------------------------------------------------------------------ status


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """One active terminal and one kind of package its role takes, of those published."""

    terminal_id: str
    role: str
    kind: PackageKind
    running_version: int
    staged_version: int
    newest_effective_version: int  # the version it should run by now (0: none effective yet)
    newest_version: int  # the newest published, effective or not
    refused_version: int
    refused_reason: str
    lags: bool


async def fleet_status(connection: asyncpg.Connection, now: dt.datetime) -> list[FleetStatus]:
    rows = await connection.fetch(
        """select t.terminal_id, t.role, k.kind,
                  coalesce(r.running_version, 0) as running_version,
                  coalesce(r.staged_version, 0) as staged_version,
                  coalesce(r.refused_version, 0) as refused_version,
                  coalesce(r.refused_reason, '') as refused_reason,
                  k.newest_version, k.newest_effective_version
             from terminals t
             cross join (select kind, max(version) as newest_version,
                                coalesce(max(version) filter (where effective_at <= $1), 0)
                                    as newest_effective_version
                           from fleet_packages group by kind) k
             left join terminal_packages r on r.terminal_id = t.terminal_id and r.kind = k.kind
            where t.status = 'active' and (t.role = 'validator' or k.kind <> 'fare_feed')
            order by t.terminal_id, k.kind""",
        now,
    )
    return [
        FleetStatus(
            row["terminal_id"],
            row["role"],
            PackageKind(row["kind"]),
            row["running_version"],
            row["staged_version"],
            row["newest_effective_version"],
            row["newest_version"],
            row["refused_version"],
            row["refused_reason"],
            row["running_version"] < row["newest_effective_version"],
        )
        for row in rows
    ]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(statuses: list[FleetStatus]) -> str:
    """`ksh_fleet_package_versions_behind{terminal,kind}` and the newest refusal per terminal."""
    behind = "ksh_fleet_package_versions_behind"
    refused = "ksh_fleet_package_refused_version"
    lines = [
        f"# HELP {behind} Versions between the fleet package each active terminal runs and the "
        "newest one effective by the back office's clock (0: up to date).",
        f"# TYPE {behind} gauge",
    ]
    lines += [
        f'{behind}{{terminal="{_label(s.terminal_id)}",kind="{s.kind.value}"}} '
        f"{max(s.newest_effective_version - s.running_version, 0)}"
        for s in statuses
    ]
    lines += [
        f"# HELP {refused} The newest fleet package version each terminal refused, by reason.",
        f"# TYPE {refused} gauge",
    ]
    lines += [
        f'{refused}{{terminal="{_label(s.terminal_id)}",kind="{s.kind.value}",'
        f'reason="{_label(s.refused_reason)}"}} {s.refused_version}'
        for s in statuses
        if s.refused_version
    ]
    return "\n".join(lines) + "\n"
