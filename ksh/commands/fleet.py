"""`ksh fleet`: signed packages for every terminal (fare feed, key version, deny list, settings),
published with an effective time; which version each terminal runs, and which lag.

`ksh fleet key` makes the fleet signing key (once) and prints its public half, which each
terminal is given (`ksh validator --fleet-key`). `publish` signs the next version of a kind with
that key and stores it; terminals take it on their next sync, check it, stage it and switch at
its effective time. The key stays with whoever publishes: `ksh serve` never holds it. Uses
DATABASE_URL or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from ksh import acting
from ksh.cli import UserError
from ksh.commands.operator import supervisors_may
from ksh.database import run_with_database
from ksh.tables import print_json_lines, print_table
from ledger.clock import jakarta, system_clock

settings_file_bytes_max = 64 * 1024


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fleet",
        help="fleet packages: publish a fare feed, key version, deny list or settings to "
        "every terminal; see which terminals lag",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    key = actions.add_parser(
        "key", help="create the fleet signing key (once) and print its public key"
    )
    add_signing_key_argument(key)
    key.set_defaults(handler=run_key)

    publish = actions.add_parser(
        "publish", help="sign and publish the next version of one kind of package"
    )
    what = publish.add_mutually_exclusive_group(required=True)
    what.add_argument("--feed", type=Path, metavar="DIR", help="a fare feed folder")
    what.add_argument(
        "--key-version",
        metavar="ROLE=N[,ROLE=N]",
        help="the card key version terminals use as current, per role (debit, credit, read); "
        "never key material",
    )
    what.add_argument("--deny-list", action="store_true", help="the whole deny list as it is now")
    what.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="terminal settings, a JSON object: sync_interval_s, records_per_batch",
    )
    publish.add_argument(
        "--effective",
        metavar="TIME",
        help="when terminals switch to it, ISO 8601 with its offset, e.g. "
        "2027-01-01T03:00+07:00 (default: now)",
    )
    publish.add_argument("--label", default="", help="a note shown in the list (default none)")
    add_signing_key_argument(publish)
    acting.add_arguments(publish, supervisors_may)
    publish.set_defaults(handler=run_publish)

    listing = actions.add_parser("list", help="every package published, by kind and version")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)

    status = actions.add_parser(
        "status",
        help="per active terminal and kind: the version it runs, has staged, refused; who lags",
    )
    status.add_argument("--lagging", action="store_true", help="only the terminals that lag")
    status.add_argument("--json", action="store_true", help="one JSON object per line")
    status.set_defaults(handler=run_status)


def add_signing_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--signing-key",
        type=Path,
        metavar="FILE",
        help="the fleet signing key (default: fleet-signing-key in the data folder)",
    )


def signing_key_path(arguments: argparse.Namespace) -> Path:
    from ledger.database import data_dir

    return arguments.signing_key or data_dir() / "fleet-signing-key"


def run_key(arguments: argparse.Namespace) -> int:
    from bus_terminals.sync import load_private_key, save_new_private_key
    from bus_terminals.wire import public_key_text

    path = signing_key_path(arguments)
    try:
        if path.exists():
            key = load_private_key(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            key = save_new_private_key(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: {error}") from None
    print(public_key_text(key.public_key()))
    return 0


def effective_time(text: str | None) -> dt.datetime:
    if text is None:
        return system_clock.now()
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--effective {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise UserError(f"--effective {text!r} needs its offset (e.g. +07:00)")
    return moment


def package_content(arguments: argparse.Namespace) -> tuple[Any, bytes | None]:
    """(kind, content); content None for the deny list (read from the database)."""
    import json

    from bus_terminals.fare.feed import read_feed_texts
    from bus_terminals.packages import PackageKind, feed_content, key_roles

    if arguments.feed is not None:
        try:
            return PackageKind.fare_feed, feed_content(read_feed_texts(arguments.feed))
        except (OSError, ValueError) as error:  # FeedError is a ValueError
            raise UserError(f"--feed {arguments.feed}: {error}") from None
    if arguments.settings is not None:
        try:
            if arguments.settings.stat().st_size > settings_file_bytes_max:
                raise UserError(
                    f"--settings {arguments.settings}: over {settings_file_bytes_max} bytes"
                )
            return PackageKind.settings, arguments.settings.read_bytes()
        except OSError as error:
            raise UserError(f"--settings {arguments.settings}: {error.strerror}") from None
    if arguments.key_version is not None:
        versions: dict[str, int] = {}
        for item in arguments.key_version.split(","):
            role, _, number = item.partition("=")
            if role.strip() not in key_roles or not number.strip().isdigit():
                raise UserError(
                    f"--key-version {item!r}: ROLE=N with ROLE one of {', '.join(key_roles)}"
                )
            versions[role.strip()] = int(number)
        return PackageKind.key_version, json.dumps(versions, sort_keys=True).encode()
    return PackageKind.deny_list, None


def run_publish(arguments: argparse.Namespace) -> int:
    from bus_terminals.packages import PackageError
    from bus_terminals.sync import load_private_key
    from gateways.staff import party_roles
    from gateways.terminal_api import fleet

    reason = acting.reason_of(arguments)
    effective_at = effective_time(arguments.effective)
    kind, content = package_content(arguments)
    path = signing_key_path(arguments)
    if not path.exists():
        raise UserError(f"no fleet signing key {path} (create it with ksh fleet key)")
    try:
        key = load_private_key(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not a fleet signing key ({error})") from None

    async def work(connection: Any) -> Any:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, party_roles)
            body = content if content is not None else await fleet.deny_list_snapshot(connection)
            try:
                signed = await fleet.publish(
                    connection,
                    key,
                    kind,
                    body,
                    effective_at=effective_at,
                    now=system_clock.now(),
                    published_by=member.username,
                    label=arguments.label,
                )
            except PackageError as error:
                raise UserError(str(error)) from None
            manifest = signed.manifest
            await acting.record(
                connection,
                member,
                "publish_fleet_package",
                f"{kind.value} {manifest.version}",
                reason,
                effective_at=effective_at.isoformat(),
                content_sha256=manifest.content_sha256,
            )
            return manifest

    manifest = run_with_database(work)
    print(
        f"{manifest.kind.value} version {manifest.version} published, effective "
        f"{effective_at.astimezone(jakarta):%Y-%m-%d %H:%M} WIB "
        f"(sha256 {manifest.content_sha256[:16]}, {manifest.content_bytes:,} bytes)"
    )
    return 0


def run_list(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import fleet

    found = run_with_database(fleet.packages)
    if arguments.json:
        print_json_lines(found)
        return 0
    if not found:
        print("no fleet packages published (see ksh fleet publish)")
        return 0
    print_table(
        ["KIND", "VERSION", "EFFECTIVE (WIB)", "PUBLISHED BY", "BYTES", "SHA256", "LABEL"],
        (
            [
                p.kind.value,
                p.version,
                f"{p.effective_at.astimezone(jakarta):%Y-%m-%d %H:%M}",
                p.published_by,
                p.content_bytes,
                p.content_sha256[:16],
                p.label or None,
            ]
            for p in found
        ),
    )
    return 0


def run_status(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import fleet

    async def work(connection: Any) -> list[fleet.FleetStatus]:
        return await fleet.fleet_status(connection, system_clock.now())

    found = [s for s in run_with_database(work) if s.lags or not arguments.lagging]
    if arguments.json:
        print_json_lines(found)
        return 0
    if not found:
        print("no terminal lags" if arguments.lagging else "no packages or no active terminals")
        return 0
    print_table(
        ["TERMINAL", "ROLE", "KIND", "RUNS", "STAGED", "SHOULD RUN", "NEWEST", "REFUSED", "LAGS"],
        (
            [
                s.terminal_id,
                s.role,
                s.kind.value,
                s.running_version,
                s.staged_version or None,
                s.newest_effective_version,
                s.newest_version,
                f"{s.refused_version} {s.refused_reason}" if s.refused_version else None,
                "LAGS" if s.lags else "",
            ]
            for s in found
        ),
    )
    return 0
