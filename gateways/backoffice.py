"""The back office HTTP service: one aiohttp application that terminals, banks and staff talk to.

`create_app(config, extensions)` builds it. The pool lives in `cleanup_ctx`; handlers reach it
through `pool_key`. Each extension is a callable that adds its routes (and its own cleanup
contexts) to the application: the terminal endpoints, the SNAP BI endpoints (`gateways.snap`),
and the finance pages (`settlement`) are mounted this way by `ksh serve`, the composition root,
which also mounts `hold_expiry`: the ledger's holds past their timeout voided every minute.

Errors leave as JSON problem bodies (RFC 9457 shape) from one middleware; a handler raises
`Problem` for an outcome the caller must see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web

from ledger.clock import Clock, system_clock

logger = logging.getLogger("ksh.backoffice")

request_body_bytes_max = 4 * 1024 * 1024  # the largest upload batch fits well inside this


@dataclass(frozen=True, slots=True)
class BackofficeConfig:
    database_url: str
    pool_connections_min: int = 2
    pool_connections_max: int = 10
    settings: dict[str, Any] = field(default_factory=dict)
    clock: Clock = system_clock  # business time for every handler (`ledger.clock`)


config_key = web.AppKey("config", BackofficeConfig)
pool_key = web.AppKey("pool", asyncpg.Pool)
#: What an extension adds to `/health` beside the database: awaited with the application and a
#: connection, it returns fields of the answer (e.g. the days left on the validators' feeds).
HealthCheck = Callable[[web.Application, asyncpg.Connection], Awaitable[dict[str, Any]]]
health_checks_key: web.AppKey[list[HealthCheck]] = web.AppKey("health_checks")

Extension = Callable[[web.Application], None]


class Problem(Exception):
    """An outcome the caller must see: HTTP status, a stable code, and a human sentence."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "detail": self.detail, **self.extra}


def problem_response(problem: Problem) -> web.Response:
    return web.json_response(
        problem.body(), status=problem.status, content_type="application/problem+json"
    )


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem)
    except web.HTTPRequestEntityTooLarge:
        return problem_response(Problem(413, "body_too_large", "request body is too large"))
    except json.JSONDecodeError as error:
        return problem_response(Problem(400, "malformed_json", f"body is not JSON: {error}"))
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(500, "internal_error", "internal error, logged"))


class JsonLineFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message, and any `extra` fields."""

    standard = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self.standard:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_as_json_lines(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


async def database_pool(app: web.Application) -> AsyncIterator[None]:
    config = app[config_key]
    pool = await asyncpg.create_pool(
        config.database_url,
        min_size=config.pool_connections_min,
        max_size=config.pool_connections_max,
    )
    assert pool is not None
    app[pool_key] = pool
    yield
    await pool.close()


async def health(request: web.Request) -> web.Response:
    fields: dict[str, Any] = {}
    async with request.app[pool_key].acquire() as connection:
        await connection.fetchval("select 1")
        for check in request.app[health_checks_key]:
            fields.update(await check(request.app, connection))
    return web.json_response({"status": "ok", **fields})


def create_app(config: BackofficeConfig, extensions: Iterable[Extension] = ()) -> web.Application:
    app = web.Application(middlewares=[problem_middleware], client_max_size=request_body_bytes_max)
    app[config_key] = config
    app[health_checks_key] = []
    app.cleanup_ctx.append(database_pool)
    app.router.add_get("/health", health)
    for extension in extensions:
        extension(app)
    return app


# ------------------------------------------------------------------------- hold expiry

expiry_sweep_interval_s = 60.0  # setting `expiry_sweep_interval_s`; 0: no sweep here
sweep_lock_timeout_ms = 10_000


def hold_expiry(app: web.Application) -> None:
    """Void the ledger's holds booked with a timeout once it has passed, at startup and then
    every minute, so that what they hold is released without anyone running `ksh ledger
    expire`. (The system's own flows set no timeout yet: pending top-ups are an account of
    their own, and payouts wait for the bank's answer; holds with a timeout come from other
    users of the ledger.) Each void has a fixed id: two processes sweeping at once book each
    expiry once (`ksh serve` sweeps in its first process only)."""
    app.cleanup_ctx.append(_sweeping_expired_holds)


async def _sweeping_expired_holds(app: web.Application) -> AsyncIterator[None]:
    interval = float(
        app[config_key].settings.get("expiry_sweep_interval_s", expiry_sweep_interval_s)
    )
    sweeping = asyncio.create_task(_sweep_expired_holds(app, interval)) if interval > 0 else None
    yield
    if sweeping is not None:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping


async def _sweep_expired_holds(app: web.Application, interval_s: float) -> None:
    from ledger import expire_due_holds

    sweeps = logging.getLogger("ksh.ledger.expiry")
    while True:
        try:
            async with app[pool_key].acquire() as connection:
                # A long transaction elsewhere holding the ledger's head must not stall the
                # sweeps: give up after a while (logged below) and try again next time.
                await connection.execute(f"set lock_timeout = '{sweep_lock_timeout_ms}ms'")
                try:
                    sweep = await expire_due_holds(connection)
                finally:
                    await connection.execute("reset lock_timeout")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            sweeps.warning("sweep failed, tried again in %.0f s: %s", interval_s, error)
        except Exception:  # a bug: logged whole, and the service goes on (as the sweeper does)
            sweeps.exception("sweep failed, tried again in %.0f s", interval_s)
        else:
            if sweep.voided:
                sweeps.info("%d hold(s) past their timeout voided", sweep.voided)
            for result, count in sweep.refused:
                sweeps.warning("%d void(s) of expired holds refused: %s", count, result)
        await asyncio.sleep(interval_s)
