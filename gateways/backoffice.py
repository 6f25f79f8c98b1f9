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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web

from ledger.clock import Clock, system_clock

logger = logging.getLogger("ksh.backoffice")

request_body_bytes_max = 4 * 1024 * 1024  # the largest upload batch fits well inside this
database_connect_timeout_s = 5.0  # per host of DATABASE_URL (asyncpg's default is 60 s)
database_retry_after_s = 5  # what a 503 tells the caller while the database is unreachable
ready_write_timeout_ms = 2_000

# The database is unreachable, restarting, or not (any more) the primary: nothing the request
# did is lost (its transaction did not commit, or an idempotent retry finds it), so the answer
# is 503 and the caller tries again later (a terminal's sync does on any status >= 500).
# (TimeoutError is an OSError.)
database_unavailable_errors: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.TargetServerAttributeNotMatched,
)


@dataclass(frozen=True, slots=True)
class BackofficeConfig:
    database_url: str
    pool_connections_min: int = 2
    pool_connections_max: int = 10
    settings: dict[str, Any] = field(default_factory=dict)
    clock: Clock = system_clock  # business time for every handler (`ledger.clock`)


config_key = web.AppKey("config", BackofficeConfig)
pool_key = web.AppKey("pool", asyncpg.Pool)
# Reports and exports (finance pages): a standby when DATABASE_URL names one, else `pool_key`'s.
reporting_pool_key = web.AppKey("reporting_pool", asyncpg.Pool)
reporting_pool_connections_max = 4
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
    response = web.json_response(
        problem.body(), status=problem.status, content_type="application/problem+json"
    )
    if problem.status == 503:
        response.headers["Retry-After"] = str(database_retry_after_s)
    return response


async def forget_demoted_primary(app: web.Application, error: BaseException) -> None:
    """A write refused as read-only: the server our pooled connections reach was demoted (a
    standby now). Every connection is replaced on its next use, each reaching whichever
    server is the primary now (`target_session_attrs=read-write`)."""
    if isinstance(error, asyncpg.ReadOnlySQLTransactionError) and pool_key in app:
        await app[pool_key].expire_connections()


def database_unavailable(error: BaseException) -> Problem:
    return Problem(
        503,
        "database_unavailable",
        f"the database cannot take this now ({type(error).__name__}); try again later",
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
    except database_unavailable_errors as error:
        logger.warning("database unavailable on %s %s: %r", request.method, request.path, error)
        await forget_demoted_primary(request.app, error)
        return problem_response(database_unavailable(error))
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(500, "internal_error", "internal error, logged"))


@web.middleware
async def timing_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every request's duration by area and status (`gateways.observability`)."""
    from gateways import observability

    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        area = observability.request_area(request.path)
        request.app[observability.registry_key].requests.labels(area, str(status)).observe(
            time.perf_counter() - started
        )


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


def reporting_url(database_url: str) -> str:
    """The same servers, a standby first (`target_session_attrs=prefer-standby`), when the URL
    asks for the primary among several; otherwise the URL itself. For reads that may be a
    moment behind (reports, exports): they then cost the primary nothing."""
    attribute = "target_session_attrs=read-write"
    if attribute not in database_url:
        return database_url
    return database_url.replace(attribute, "target_session_attrs=prefer-standby")


async def database_pool(app: web.Application) -> AsyncIterator[None]:
    config = app[config_key]
    pool = await asyncpg.create_pool(
        config.database_url,
        min_size=config.pool_connections_min,
        max_size=config.pool_connections_max,
        timeout=database_connect_timeout_s,
    )
    assert pool is not None
    app[pool_key] = pool
    reporting = pool
    if reporting_url(config.database_url) != config.database_url:
        reporting = await asyncpg.create_pool(
            reporting_url(config.database_url),
            min_size=0,
            max_size=reporting_pool_connections_max,
            timeout=database_connect_timeout_s,
        )
        assert reporting is not None
    app[reporting_pool_key] = reporting
    yield
    if reporting is not pool:
        await reporting.close()
    await pool.close()


async def health(request: web.Request) -> web.Response:
    fields: dict[str, Any] = {}
    async with request.app[pool_key].acquire() as connection:
        await connection.fetchval("select 1")
        for check in request.app[health_checks_key]:
            fields.update(await check(request.app, connection))
    return web.json_response({"status": "ok", **fields})


async def health_live(request: web.Request) -> web.Response:
    """The process answers (asks nothing of the database): restart it when this fails."""
    return web.json_response({"status": "live"})


async def health_ready(request: web.Request) -> web.Response:
    """Whether this instance can take uploads now: its pool reaches the primary (not a server
    in recovery) and a write is acknowledged within `ready_write_timeout_ms` (with a
    synchronous standby named, only once the standby has it: a lost standby makes every
    instance unready until an operator runs `ksh db degrade-async`)."""
    try:
        async with (
            asyncio.timeout(ready_write_timeout_ms / 1000),
            request.app[pool_key].acquire() as connection,
        ):
            if await connection.fetchval("select pg_is_in_recovery()"):
                raise Problem(503, "not_primary", "the database is a standby")
            async with connection.transaction():
                # A row lock is a write (WAL, a transaction id): the commit waits for the
                # synchronous standby. (FOR KEY SHARE conflicts with no other probe.)
                await connection.execute("select 1 from schema_migrations limit 1 for key share")
    except TimeoutError:
        raise Problem(
            503,
            "writes_not_acknowledged",
            f"a write was not acknowledged within {ready_write_timeout_ms} ms (no synchronous "
            "standby, or the database is overloaded)",
        ) from None
    leadership = request.app.get(leadership_key)
    return web.json_response(
        {"status": "ready", "singleton_jobs": bool(leadership and leadership.leading)}
    )


def create_app(config: BackofficeConfig, extensions: Iterable[Extension] = ()) -> web.Application:
    from gateways import observability

    app = web.Application(
        middlewares=[timing_middleware, problem_middleware],
        client_max_size=request_body_bytes_max,
    )
    app[config_key] = config
    observability.install(app)
    app[health_checks_key] = []
    app.cleanup_ctx.append(database_pool)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", health_live)
    app.router.add_get("/health/ready", health_ready)
    for extension in extensions:
        extension(app)
    return app


# ------------------------------------------------------------------------- singleton jobs

# pg_try_advisory_lock key of the singleton jobs: "ksh-jobs" in ASCII.
singleton_lock_key = 0x6B73_682D_6A6F_6273
leadership_poll_s = 1.0  # a follower tries for the lock this often; a leader checks its hold


class Leadership:
    """Whether this process runs the singleton jobs (the expiry sweep) of all the back office
    instances on one database: it does while it holds a session-level advisory lock on a
    connection of its own. The lock goes with that connection (the process dies, the host
    is lost, the database fails over) and another instance takes it within
    `leadership_poll_s`."""

    def __init__(self) -> None:
        self.leading = False
        self.terms = 0  # how many times this process became the leader


leadership_key = web.AppKey("leadership", Leadership)


def singleton_jobs(app: web.Application) -> Leadership:
    """This app's `Leadership`, installed (once) with the task that contends for the lock."""
    if leadership_key not in app:
        app[leadership_key] = Leadership()
        app.cleanup_ctx.append(_contending_for_leadership)
    return app[leadership_key]


async def _contending_for_leadership(app: web.Application) -> AsyncIterator[None]:
    contending = asyncio.create_task(_contend_for_leadership(app))
    yield
    contending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await contending


async def _contend_for_leadership(app: web.Application) -> None:
    leadership = app[leadership_key]
    log = logging.getLogger("ksh.backoffice.leadership")
    while True:
        connection = None
        try:
            connection = await asyncpg.connect(
                app[config_key].database_url, timeout=database_connect_timeout_s
            )
            while True:
                async with asyncio.timeout(database_connect_timeout_s):
                    if leadership.leading:
                        await connection.fetchval("select 1")  # still connected: still held
                    elif await connection.fetchval(
                        "select pg_try_advisory_lock($1)", singleton_lock_key
                    ):
                        leadership.leading = True
                        leadership.terms += 1
                        log.info("this instance runs the singleton jobs now")
                await asyncio.sleep(leadership_poll_s)
        except (
            *database_unavailable_errors,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as error:
            if leadership.leading:
                log.warning("singleton jobs given up (connection lost): %r", error)
        except Exception:  # a bug: logged whole; contending goes on (it must not end silently)
            log.exception("singleton jobs given up")
        finally:
            leadership.leading = False
            if connection is not None:
                connection.terminate()  # the lock, if held, goes with the session
        await asyncio.sleep(leadership_poll_s)


# ------------------------------------------------------------------------- hold expiry

expiry_sweep_interval_s = 60.0  # setting `expiry_sweep_interval_s`; 0: no sweep here
sweep_lock_timeout_ms = 10_000


def hold_expiry(app: web.Application) -> None:
    """Void the ledger's holds booked with a timeout once it has passed, at startup and then
    every minute, so that what they hold is released without anyone running `ksh ledger
    expire`. (The system's own flows set no timeout yet: pending top-ups are an account of
    their own, and payouts wait for the bank's answer; holds with a timeout come from other
    users of the ledger.) Only the instance that holds the singleton jobs' lock sweeps
    (`singleton_jobs`); each void has a fixed id, so two sweeps at once would still book each
    expiry once."""
    # Only a process that would sweep contends for the lock (`ksh serve` gives its other
    # workers an interval of 0): a winner that never sweeps would leave every host unswept.
    if _expiry_interval_s(app) > 0:
        singleton_jobs(app)
    app.cleanup_ctx.append(_sweeping_expired_holds)


def _expiry_interval_s(app: web.Application) -> float:
    settings = app[config_key].settings
    return float(settings.get("expiry_sweep_interval_s", expiry_sweep_interval_s))


async def _sweeping_expired_holds(app: web.Application) -> AsyncIterator[None]:
    interval = _expiry_interval_s(app)
    sweeping = asyncio.create_task(_sweep_expired_holds(app, interval)) if interval > 0 else None
    yield
    if sweeping is not None:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping


async def _sweep_expired_holds(app: web.Application, interval_s: float) -> None:
    from ledger import expire_due_holds

    sweeps = logging.getLogger("ksh.ledger.expiry")
    leadership = app[leadership_key]
    while True:
        if not leadership.leading:
            await asyncio.sleep(leadership_poll_s / 4)
            continue
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
