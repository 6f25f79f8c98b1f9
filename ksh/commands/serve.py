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
        "PostgreSQL. Staff endpoints need KSH_ADMIN_TOKEN. Logs are JSON lines on stderr.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--tariff-version", default="trans-semarang")
    parser.set_defaults(handler=run)


def extensions() -> list[Any]:
    """The terminal side always; SNAP and the finance pages when installed."""
    from gateways.terminal_api.routes import terminal_extension

    mounted: list[Any] = [terminal_extension]
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

    import asyncpg
    from aiohttp import web

    from gateways.backoffice import BackofficeConfig, create_app, log_as_json_lines
    from ksh.schema import migrate_all
    from ledger.database import server_url

    log_as_json_lines()
    settings = {
        "admin_token": os.environ.get("KSH_ADMIN_TOKEN", ""),
        "tariff_version": arguments.tariff_version,
    }
    with server_url() as url:

        async def migrate() -> None:
            connection = await asyncpg.connect(url)
            try:
                await migrate_all(connection)
            finally:
                await connection.close()

        try:
            asyncio.run(migrate())
        except OSError as error:
            raise UserError(f"cannot reach the database: {error}") from error
        app = create_app(BackofficeConfig(url, settings=settings), extensions())
        try:
            web.run_app(app, host=arguments.host, port=arguments.port, access_log=None)
        except OSError as error:
            raise UserError(
                f"cannot listen on {arguments.host}:{arguments.port}: {error}"
            ) from error
    return 0
