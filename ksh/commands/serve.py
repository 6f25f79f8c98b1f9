"""`ksh serve`: the back office HTTP service (terminals, SNAP BI, finance pages) on one port."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from typing import Any

from ksh.cli import UserError

# Extensions mounted when their module exists: (module, attribute holding an Extension).
optional_extensions: tuple[tuple[str, str], ...] = (
    ("gateways.snap.server", "install"),
    ("settlement.pages", "install"),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the back office: terminal uploads and sync, SNAP BI, finance pages",
        description="Serve the back office over HTTP. Uses DATABASE_URL, or the embedded "
        "PostgreSQL. Staff endpoints need KSH_ADMIN_TOKEN. Expired ledger holds are voided "
        "every KSH_EXPIRY_SWEEP_INTERVAL_S seconds (default 60, 0: never). Logs are JSON "
        "lines on stderr.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--tariff-version", default="trans-semarang")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes serving the same port (SO_REUSEPORT)"
    )
    parser.set_defaults(handler=run)


def extensions() -> list[Any]:
    """The terminal side and the sweep of expired holds always; SNAP and the finance pages
    when installed."""
    from gateways.backoffice import hold_expiry
    from gateways.terminal_api.routes import terminal_extension

    mounted: list[Any] = [terminal_extension, hold_expiry]
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
    import asyncio

    from gateways.backoffice import log_as_json_lines
    from ksh.database import connect
    from ksh.schema import migrate_all
    from ledger.database import server_url

    log_as_json_lines()
    settings = {
        "admin_token": os.environ.get("KSH_ADMIN_TOKEN", ""),
        "tariff_version": arguments.tariff_version,
        "expiry_sweep_interval_s": expiry_sweep_interval_s(),
    }
    if not 1 <= arguments.workers <= workers_max:
        raise UserError(f"--workers must be 1 to {workers_max}")
    with server_url() as url:

        async def migrate() -> None:
            connection = await connect(url)
            try:
                await migrate_all(connection)
            finally:
                await connection.close()

        try:
            asyncio.run(migrate())
        except OSError as error:
            raise UserError(f"cannot reach the database: {error}") from error
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        # One process sweeps the expired holds: the others would find nothing left to do.
        others_settings = {**settings, "expiry_sweep_interval_s": 0}
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
            serve_process(url, settings, arguments.host, arguments.port)
        except OSError as error:
            raise UserError(
                f"cannot listen on {arguments.host}:{arguments.port}: {error}"
            ) from error
        finally:
            for process in others:
                process.terminate()
                process.join(timeout=10)
    return 0


workers_max = 16


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


def serve_process(database_url: str, settings: dict[str, Any], host: str, port: int) -> None:
    """One serving process: the whole app, its own pool, on the shared port."""
    from aiohttp import web

    from gateways.backoffice import BackofficeConfig, create_app, log_as_json_lines

    log_as_json_lines()
    app = create_app(BackofficeConfig(database_url, settings=settings), extensions())
    web.run_app(app, host=host, port=port, access_log=None, reuse_port=True)
