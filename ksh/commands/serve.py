"""`ksh serve`: the back office HTTP service (terminals, SNAP BI, finance pages) on one port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import logging
import os
import time
from pathlib import Path
from typing import Any

from ksh import argtypes, signals
from ksh.cli import UserError
from ksh.signals import stop_on_signals

# Extensions mounted when their module exists: (module, attribute holding an Extension).
optional_extensions: tuple[tuple[str, str], ...] = (
    ("gateways.snap.server", "install"),
    ("gateways.terminal_api.qris_sales", "install"),  # POS sales by QRIS
    ("settlement.pages", "install"),
    ("settlement.metrics", "install"),  # payouts and open exceptions on /metrics
    ("gateways.service_desk.citizen", "install"),  # the public card page; complaints gauges
    ("settlement.complaint_pages", "install"),  # the service desk's complaint pages
    ("settlement.desk_pages", "install"),  # the service desk's card, deny list, counter pages
    ("settlement.refund_sweep", "install"),  # pending top-ups no card took, given back hourly
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the back office: terminal uploads and sync, SNAP BI, finance pages",
        description="Serve the back office over HTTP. Uses DATABASE_URL, or the embedded "
        "PostgreSQL. The admin API takes each person's staff token (ksh settle staff USER "
        "--issue-token). Expired ledger holds are voided every KSH_EXPIRY_SWEEP_INTERVAL_S "
        "seconds (default 60, 0: never). Logs are JSON lines on stderr. The finance pages' "
        "cookies are Secure and pages send HSTS unless --host is a loopback address (HTTPS "
        "is then expected in front, e.g. a reverse proxy); --insecure-cookies turns that off.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=argtypes.port, default=8080, help="port to listen on")
    parser.add_argument(
        "--tariff-version", default="trans-semarang", help="tariff version sync hands terminals"
    )
    parser.add_argument(
        "--workers",
        type=argtypes.integer(1, workers_max),
        default=1,
        help="processes serving the same port (SO_REUSEPORT)",
    )
    parser.add_argument(
        "--insecure-cookies",
        action="store_true",
        help="finance cookies without Secure and no HSTS, even off loopback (plain HTTP on a "
        "trusted network only)",
    )
    parser.add_argument(
        "--client-address-header",
        default="",
        metavar="HEADER",
        help="behind a reverse proxy: the header it sets with the client's address (e.g. "
        "X-Forwarded-For; the last entry is used) for the per-address login limit. Without "
        "it every login counts against the proxy's address. Never set it without such a proxy",
    )
    parser.add_argument(
        "--password-checks",
        type=argtypes.integer(1, password_checks_max),
        default=2,
        metavar="N",
        help="password checks (scrypt, on worker threads) running at once per process",
    )
    parser.add_argument(
        "--quarantined-per-day",
        type=int,
        default=None,
        metavar="N",
        help="suspend a terminal with more than N records quarantined in 24 hours (default 3)",
    )
    masters = parser.add_mutually_exclusive_group()
    masters.add_argument(
        "--keystore",
        type=argtypes.existing_file,
        metavar="FILE",
        help="the issuer's sealed key store (passphrase from KSH_KEYSTORE_PASSPHRASE or a "
        "prompt): its Transaction MAC masters verify what each card committed. Without it "
        "(or --tmac-token-dir), the transactions of cards issued with a Transaction MAC are "
        "quarantined, unverified",
    )
    masters.add_argument(
        "--tmac-token-dir",
        type=Path,
        metavar="DIR",
        help="the back office's HSM instead: a token holding the tmac role only (ksh card "
        "token-load --roles tmac; PIN from KSH_TOKEN_PIN or a prompt)",
    )
    parser.add_argument(
        "--tmac-token-label", default="ksh", metavar="LABEL", help="its label (default ksh)"
    )
    parser.add_argument(
        "--snap-key",
        type=Path,
        metavar="FILE",
        help="the back office's RSA private key (PEM) for calling banks over SNAP: QRIS codes "
        "for POS sales are asked of the merchant's acquirer with it. Without it, QRIS sales "
        "are refused (503 qris_unavailable)",
    )
    parser.add_argument(
        "--replacement-wait-days",
        type=float,
        default=3.0,
        metavar="DAYS",
        help="how long a blocked card's balance waits for offline taps still on their way "
        "before it moves to its replacement, and an expired top-up before it is given back "
        "(default 3)",
    )
    parser.add_argument(
        "--top-up-expiry-days",
        type=argtypes.integer(1, 3_650, "days"),
        default=90,
        metavar="DAYS",
        help="how long a pending top-up waits for its card before it leaves the terminals' "
        "list and, --replacement-wait-days later, is given back to its payer; checked hourly "
        "(default 90; ksh cards expire-top-ups)",
    )
    parser.set_defaults(handler=run)


def secure_cookies(host: str, insecure: bool) -> bool:
    """Secure cookies and HSTS unless told otherwise or served on plain loopback (a browser
    on the same machine, over HTTP)."""
    if insecure:
        return False
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reached over HTTPS
        return True


def settings_of(arguments: argparse.Namespace) -> dict[str, Any]:
    """The back office settings `ksh serve` hands to every serving process (plain values:
    they cross to the worker processes)."""
    if not 0 <= arguments.replacement_wait_days <= 365:
        raise UserError("--replacement-wait-days must be 0 to 365")
    if not 1 <= arguments.password_checks <= password_checks_max:
        raise UserError(f"--password-checks must be 1 to {password_checks_max}")
    from gateways.terminal_api.suspension import quarantined_per_day_max_default

    quarantined = arguments.quarantined_per_day
    if quarantined is None:
        quarantined = quarantined_per_day_max_default
    if not 0 <= quarantined <= quarantined_per_day_limit:
        raise UserError(f"--quarantined-per-day must be 0 to {quarantined_per_day_limit}")
    return {
        "terminal_quarantined_per_day_max": quarantined,
        "tariff_version": arguments.tariff_version,
        "expiry_sweep_interval_s": expiry_sweep_interval_s(),
        "secure_cookies": secure_cookies(arguments.host, arguments.insecure_cookies),
        "client_address_header": arguments.client_address_header,
        "password_checks_concurrent_max": arguments.password_checks,
        "upload_booking_timeout_ms": upload_booking_timeout_ms(),
        "tmac_master_keys": transaction_mac_masters(arguments.keystore),
        "snap_private_key_pem": snap_private_key(arguments.snap_key),
        "replacement_wait_days": arguments.replacement_wait_days,
        "top_up_expiry_days": arguments.top_up_expiry_days,
        # The same wait for offline taps on their way: an expired top-up a terminal downloaded
        # before it left the list may still be written to its card meanwhile.
        "top_up_withdrawal_wait_days": arguments.replacement_wait_days,
        "tmac_token": transaction_mac_token(arguments.tmac_token_dir, arguments.tmac_token_label),
    }


def snap_private_key(path: Path | None) -> str | None:
    if path is None:
        return None
    from gateways.snap.signature import load_private_key

    try:
        pem = path.read_bytes()
        load_private_key(pem)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(
            f"--snap-key {path}: not a readable RSA private key (PEM): {error}"
        ) from error
    return pem.decode()


quarantined_per_day_limit = 1_000_000  # past this, suspension would never happen: say so


def transaction_mac_masters(keystore: Path | None) -> tuple[bytes, ...]:
    """The issuer's Transaction MAC master keys, current version first (none without a store)."""
    if keystore is None:
        return ()
    from card_reader.keys import KeyRole, KeyStoreError
    from ksh.commands.card import load_keystore

    try:
        return load_keystore(keystore).accepted_master_keys(KeyRole.TMAC)
    except KeyStoreError as error:
        raise UserError(f"{keystore}: {error}") from error


def transaction_mac_token(folder: Path | None, label: str) -> dict[str, str] | None:
    """Where each serving process finds the TMAC token: opened here once to check that it holds
    the tmac role and no other (a back office needs no terminal's key)."""
    if folder is None:
        return None
    from card_reader.keys import KeyRole
    from card_reader.token_keys import TokenError, open_token
    from ksh.commands.card_keys import check_roles, read_token_pin

    pin = read_token_pin()
    try:
        token = open_token(folder, label, pin)
    except TokenError as error:
        raise UserError(str(error)) from error
    try:
        tmac_only = frozenset({KeyRole.TMAC})
        check_roles(f"token {label!r}", token.roles, "back office", tmac_only, tmac_only)
    finally:
        token.close()
    return {"dir": str(folder.resolve()), "label": label, "pin": pin}


def extensions() -> list[Any]:
    """The terminal side, the service desk's card API and the sweep of expired holds always; SNAP and the finance pages
    when installed."""
    from gateways.backoffice import hold_expiry
    from gateways.terminal_api.card_desk_routes import card_desk_extension
    from gateways.terminal_api.routes import terminal_extension

    mounted: list[Any] = [terminal_extension, card_desk_extension, hold_expiry]
    for module_name, attribute in optional_extensions:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        extension = getattr(module, attribute, None)
        if extension is None:
            logging.getLogger("ksh.serve").warning(
                "%s has no %s: not mounted", module_name, attribute
            )
            continue
        mounted.append(extension)
    return mounted


def run(arguments: argparse.Namespace) -> int:
    import multiprocessing

    from gateways.backoffice import log_as_json_lines
    from ksh.database import connect
    from ksh.schema import migrate_all
    from ledger.database import server_url

    log_as_json_lines()
    settings = settings_of(arguments)
    if not 1 <= arguments.workers <= workers_max:
        raise UserError(f"--workers must be 1 to {workers_max}")
    refuse_port_in_use(arguments.host, arguments.port)
    if arguments.workers > 1:
        from gateways.observability import prepare_multiprocess_folder

        # Before any worker starts: /metrics from any of them adds up every process's counts.
        prepare_multiprocess_folder()
    # SIGINT or SIGTERM, even one that comes while the database starts or migrates (or SIGINT
    # inherited ignored), stops the service cleanly: the workers, then the embedded server.
    with stop_on_signals() as stop, server_url() as url:

        async def migrate() -> None:
            connection = await connect(url)
            try:
                await migrate_all(connection)
            finally:
                await connection.close()

        try:
            asyncio.run(migrate())  # not cancelled by a signal: a migration runs to its end
        except OSError as error:
            raise UserError(f"cannot reach the database: {error}") from error
        if stop.requested:
            return 0
        context = multiprocessing.get_context("spawn")
        # One process sweeps the expired holds: the others would find nothing left to do.
        others_settings = {
            **settings,
            "expiry_sweep_interval_s": 0,
            "replacement_sweep_interval_s": 0,
            "top_up_expiry_sweep_interval_s": 0,
        }
        others = [
            context.Process(
                target=serve_process,
                args=(url, others_settings, arguments.host, arguments.port),
                daemon=True,
            )
            for _ in range(arguments.workers - 1)
        ]
        for process in others:
            process.start()
        try:
            serve_process(url, settings, arguments.host, arguments.port, stop)
        except OSError as error:
            raise UserError(
                f"cannot listen on {arguments.host}:{arguments.port}: {error}"
            ) from error
        finally:
            stop_workers(others)
    return 0


def stop_workers(workers: list[Any]) -> None:
    """SIGTERM to every worker (each finishes its requests and closes its pool), then wait;
    one still running after `worker_stop_timeout_s` is killed."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    deadline = time.monotonic() + worker_stop_timeout_s
    for worker in workers:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join()
    from gateways.observability import process_ended

    for worker in workers:
        process_ended(worker.pid)


workers_max = 16
password_checks_max = 64
worker_stop_timeout_s = 70  # aiohttp gives requests under way 60 s to finish
keepalive_timeout_s = 75  # as aiohttp's run_app


def expiry_sweep_interval_s() -> float:
    """KSH_EXPIRY_SWEEP_INTERVAL_S: seconds between sweeps of the ledger's expired holds
    (default 60; 0 turns the sweep off, say where cron runs `ksh ledger expire`)."""
    from gateways.backoffice import expiry_sweep_interval_s as default

    given = os.environ.get("KSH_EXPIRY_SWEEP_INTERVAL_S", "")
    try:
        interval = float(given) if given else default
    except ValueError:
        interval = -1.0
    if not 0 <= interval <= 86_400:
        raise UserError(f"KSH_EXPIRY_SWEEP_INTERVAL_S must be 0 to 86400 seconds, not {given!r}")
    return interval


def upload_booking_timeout_ms() -> int:
    """KSH_UPLOAD_BOOKING_TIMEOUT_MS: how long an upload may wait to be booked and replicated
    before it is answered 503 (default 10000; below the terminals' 15 s request timeout)."""
    from gateways.terminal_api.routes import upload_booking_timeout_ms as default

    given = os.environ.get("KSH_UPLOAD_BOOKING_TIMEOUT_MS", "")
    timeout_ms = int(given) if given.isdigit() else (default if not given else -1)
    if not 100 <= timeout_ms <= 14_000:
        raise UserError(f"KSH_UPLOAD_BOOKING_TIMEOUT_MS must be 100 to 14000 ms, not {given!r}")
    return timeout_ms


def serve_process(
    database_url: str,
    settings: dict[str, Any],
    host: str,
    port: int,
    stop: signals.Stop | None = None,
) -> None:
    """One serving process: the whole app, its own pool, on the shared port, until SIGINT or
    SIGTERM (handled explicitly, whatever the process inherited) or, in a worker, until the
    process that started it is gone."""
    import multiprocessing

    from gateways.backoffice import log_as_json_lines

    log_as_json_lines()
    app = backoffice_app(database_url, settings)
    parent = multiprocessing.parent_process()
    parent_sentinel = parent.sentinel if parent is not None else None
    with contextlib.suppress(signals.Stopped):
        signals.run(serve_app(app, host, port, parent_sentinel), stop)


def refuse_port_in_use(host: str, port: int) -> None:
    """Refuse to start beside another server on the port (`ksh serve`, `ksh bank-sim serve`).
    The serving processes share it with
    SO_REUSEPORT, which would also let a second `ksh serve` bind it and take half the
    requests; a probe bound without that option fails while anyone listens there."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UserError(f"--host {host}: {error.strerror}") from error
    family, kind, protocol, _, address = infos[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind(address)
        except OSError as error:
            raise UserError(
                f"cannot listen on {host}:{port}: {error.strerror} (is another server "
                "running there? give another --port)"
            ) from error


def banner(host: str, port: int) -> str:
    """What `ksh serve` prints on stdout once it listens: where people and programs go."""
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    return (
        f"ksh serve: back office on {base}: finance pages {base}/finance/ ; API docs "
        f"{base}/openapi.json (terminals, admin) and {base}/snap/openapi.json (SNAP BI); "
        f"health {base}/health, metrics {base}/metrics"
    )


def backoffice_app(database_url: str, settings: dict[str, Any]) -> Any:
    """The application each serving process runs: every extension, these settings."""
    from gateways.backoffice import BackofficeConfig, create_app

    return create_app(BackofficeConfig(database_url, settings=settings), extensions())


async def serve_app(app: Any, host: str, port: int, parent_sentinel: int | None) -> None:
    """Serve `app` until cancelled (a stop signal) or `parent_sentinel` becomes readable (the
    parent process ended, even killed); then finish the requests under way and clean up."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=True)
        await site.start()
        logging.getLogger("ksh.serve").info("serving on http://%s:%d", host, port)
        if parent_sentinel is None:  # the first process: say where to go, once
            print(banner(host, port), flush=True)
        parent_gone = asyncio.Event()
        if parent_sentinel is not None:
            asyncio.get_running_loop().add_reader(parent_sentinel, parent_gone.set)
        await parent_gone.wait()
        logging.getLogger("ksh.serve").warning("the serving process's parent ended: stopping")
    finally:
        await runner.cleanup()
