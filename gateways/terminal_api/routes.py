"""HTTP endpoints of the terminal side, mounted on the back office by `terminal_extension`.

Terminals (Ed25519 signatures, one key per terminal):
    POST /terminal/v1/uploads        a signed batch (body = `bus_terminals.wire` bytes)
    GET  /terminal/v1/sync           deny list delta, pending top-ups, tariff and key versions
    GET  /terminal/v1/deny-list      the whole deny list (binary, little-endian u64, sorted)
    GET  /terminal/v1/chip-block-list  the denied cards a tap blocks on the chip (same form)
    GET  /terminal/v1/packages/{kind}/{version}  a fleet package's content (`fleet`)
Staff, each with a bearer token of their own (`gateways.staff`; `ksh settle staff USER
--issue-token`), in the role it was issued for:
    POST /admin/v1/cards | pending-top-ups           clerk or supervisor (they create money);
                                 a top-up's source "drawer": cash taken at the caller's counter
    POST /admin/v1/operators | merchants | terminals  supervisor (they change parties)
    POST /admin/v1/terminals/{terminal_id}/revoke     supervisor
    POST /admin/v1/terminals/{terminal_id}/resume     supervisor: lift a suspension
    POST /admin/v1/quarantine/{terminal_id}/{sequence}/release | write-off
                                                      supervisor; a second one confirms
    GET  /admin/v1/cards/{card_number}  shadow balance, purse, flags, counter gaps
    GET  /admin/v1/monitoring/counter-gaps  cards whose counters skip (unreported transactions)
    GET  /admin/v1/monitoring/record-gaps   terminals whose journal sequences skip
  Reads take any role. Every POST names why (`reason`) and is written to `staff_actions` with
  who, in what role, what and on what, in the transaction that makes the change.
Everyone: GET /metrics (Prometheus text), GET /openapi.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sys
import time
from array import array
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
from aiohttp import web

from bus_terminals.packages import PackageKind
from bus_terminals.wire import (
    deny_list_version_header,
    request_signing_bytes,
    signature_header,
    signature_valid,
    terminal_header,
    timestamp_header,
    upload_body_bytes_max,
)
from gateways import observability, staff
from gateways.backoffice import (
    Problem,
    config_key,
    database_unavailable_errors,
    forget_demoted_primary,
    health_checks_key,
    pool_key,
)
from gateways.staff import Role, StaffMember, any_role, money_roles, party_roles
from gateways.terminal_api import (
    books,
    counter,
    feeds,
    fleet,
    passes,
    quarantine,
    registry,
    suspension,
)
from gateways.terminal_api.acceptance import public_key, suspended_detail
from gateways.terminal_api.ingest import KnownCards, ProofKeys, ingest_upload
from gateways.terminal_api.metrics import TerminalMetrics
from gateways.terminal_api.openapi import openapi_document
from gateways.terminal_api.planning import UploadAnswer, UploadResult, refusal_status
from gateways.terminal_api.registry import TerminalRole, TerminalStatus

logger = logging.getLogger("ksh.terminals")
metrics_key = web.AppKey("terminal_metrics", TerminalMetrics)
# Batches book one at a time through the ledger's lock, and a batch's own Python work (decode,
# transfers, the ledger's decide step) runs on this process's one event loop: a second batch in
# the same process only steals the core from the one holding the lock. So each process books
# one batch at a time (others wait here, before taking a database connection), and more
# processes, not more batches per process, give the overlap.
uploads_booking_per_process_max = 1
booking_slots_key = web.AppKey("upload_booking_slots", asyncio.Semaphore)
known_cards_key = web.AppKey("known_cards", KnownCards)
# The back office's Transaction MAC masters: setting `tmac_master_keys` (current version first),
# put there by the composition root from the back office's key store, never by a terminal; or
# setting `tmac_token` ({"dir", "label", "pin"}), the token that holds them (each process opens it).
proof_keys_key = web.AppKey("proof_keys", ProofKeys)
request_clock_skew_ms_max = 300_000
deny_delta_entries_max = 10_000  # more than this: the terminal downloads the whole list
pending_top_ups_download_max = 50_000
admin_body_bytes_max = 64 * 1024
# An upload is answered within this (setting `upload_booking_timeout_ms`), booked or not: a
# commit waits for the synchronous standby, and with the standby gone it would wait for ever.
# 503 then; the terminal keeps the batch and sends the same bytes again. Below the terminal's
# own request timeout (`bus_terminals.sync.request_timeout_ms`, 15 s).
upload_booking_timeout_ms = 10_000
# The database went away under the booking (a failover): the same batch again, on a new
# connection, this many times in all, within the same timeout.
upload_database_attempts_max = 3
upload_database_retry_pause_s = 0.5


def terminal_extension(app: web.Application) -> None:
    app[metrics_key] = TerminalMetrics(observability.install(app))
    app[health_checks_key].append(feeds.feed_health)
    app[booking_slots_key] = asyncio.Semaphore(uploads_booking_per_process_max)
    app[known_cards_key] = KnownCards()
    settings = app[config_key].settings
    app[proof_keys_key] = ProofKeys(
        tuple(settings.get("tmac_master_keys", ())), settings.get("tmac_token")
    )
    app.router.add_post("/terminal/v1/uploads", upload)
    app.router.add_get("/terminal/v1/sync", sync)
    app.router.add_get("/terminal/v1/deny-list", deny_list)
    app.router.add_get("/terminal/v1/chip-block-list", chip_block_list)
    app.router.add_get("/terminal/v1/packages/{kind}/{version}", package_content)
    app.router.add_post("/admin/v1/operators", add_operator)
    app.router.add_post("/admin/v1/merchants", add_merchant)
    app.router.add_post("/admin/v1/terminals", add_terminal)
    app.router.add_post("/admin/v1/terminals/{terminal_id}/revoke", revoke_terminal)
    app.router.add_post("/admin/v1/terminals/{terminal_id}/resume", resume_terminal)
    app.router.add_post(
        "/admin/v1/quarantine/{terminal_id}/{sequence:[0-9]{1,18}}/{action:release|write-off}",
        resolve_quarantined,
    )
    app.router.add_post("/admin/v1/cards", add_card)
    app.router.add_get("/admin/v1/cards/{card_number}", card_view)
    app.router.add_post("/admin/v1/pending-top-ups", add_pending_top_up)
    app.router.add_get("/admin/v1/monitoring/counter-gaps", counter_gaps)
    app.router.add_get("/admin/v1/monitoring/record-gaps", record_gaps)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)


# ------------------------------------------------------------------------------ terminals


async def upload(request: web.Request) -> web.Response:
    started = time.perf_counter()
    metrics = request.app[metrics_key]
    if request.content_length is not None and request.content_length > upload_body_bytes_max:
        metrics.uploads.increment("body_too_large")
        raise Problem(413, "body_too_large", f"an upload is at most {upload_body_bytes_max} bytes")
    terminal_id = request.headers.get(terminal_header, "")
    signature = request.headers.get(signature_header, "")
    if not terminal_id or not signature:
        metrics.uploads.increment("unauthenticated")
        raise Problem(401, "unauthenticated", f"{terminal_header} and {signature_header} needed")
    body = await _read_bounded(request, upload_body_bytes_max)
    answer = await _book_upload(request, terminal_id, signature, body)
    elapsed_s = time.perf_counter() - started
    metrics.observe_upload(answer.result.value, elapsed_s)
    logger.info(
        "upload",
        extra={
            "terminal_id": terminal_id,
            "result": answer.result.value,
            "batch_sequence": answer.acknowledgement.get("batch_sequence"),
            "records": dict(answer.records_by_outcome),
            "duration_ms": round(elapsed_s * 1000, 1),
            "detail": answer.detail,
        },
    )
    for outcome, count in answer.records_by_outcome.items():
        metrics.records.increment(outcome, count)
    for reason, count in answer.flags_by_reason.items():
        metrics.card_flags.increment(reason, count)
    for stale_terminal, count in answer.charged_without_service.items():
        metrics.charged_without_service.increment(stale_terminal, count)
    if answer.result in refusal_status:
        raise Problem(
            refusal_status[answer.result],
            answer.result.value,
            answer.detail,
            **answer.acknowledgement,
        )
    acknowledgement = dict(answer.acknowledgement)
    acknowledgement["result"] = answer.result.value
    return web.json_response(acknowledgement)


async def _book_upload(
    request: web.Request, terminal_id: str, signature: str, body: bytes
) -> UploadAnswer:
    """Book the batch; retried on a new connection when the database goes away under it (safe:
    a batch is booked once per terminal and batch sequence). Answered as 503 when no
    acknowledged answer comes within the booking timeout: nothing the terminal was told is
    booked is ever missing from the standby."""
    metrics = request.app[metrics_key]
    settings = request.app[config_key].settings
    timeout_ms = int(settings.get("upload_booking_timeout_ms", upload_booking_timeout_ms))
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            for attempt in range(1, upload_database_attempts_max + 1):
                try:
                    async with (
                        request.app[booking_slots_key],
                        request.app[pool_key].acquire() as connection,
                    ):
                        answer = await ingest_upload(
                            connection,
                            terminal_id,
                            signature,
                            body,
                            request.app[known_cards_key],
                            now=request.app[config_key].clock.now(),
                            proof_keys=request.app[proof_keys_key],
                            quarantined_per_day_max=int(
                                settings.get(
                                    "terminal_quarantined_per_day_max",
                                    suspension.quarantined_per_day_max_default,
                                )
                            ),
                        )
                        # A replay's answer too comes from a transaction that wrote (it
                        # locks the terminal's row), so its commit waits for the standby:
                        # a batch first committed on the primary alone is not acknowledged
                        # before the standby has it.
                        return answer
                except TimeoutError:
                    raise
                except database_unavailable_errors as error:
                    if attempt == upload_database_attempts_max:
                        metrics.uploads.increment("database_unavailable")
                        raise
                    logger.warning("upload of %s retried: %r", terminal_id, error)
                    await forget_demoted_primary(request.app, error)
                    await asyncio.sleep(upload_database_retry_pause_s * attempt)
    except TimeoutError:
        metrics.uploads.increment("not_acknowledged_in_time")
        raise Problem(
            503,
            "booking_not_acknowledged",
            f"the batch was not booked and replicated within {timeout_ms} ms (the database "
            "waits for its synchronous standby, or is overloaded): send it again later",
        ) from None
    raise AssertionError("unreachable")


async def _read_bounded(request: web.Request, bytes_max: int) -> bytes:
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > bytes_max:
            raise Problem(413, "body_too_large", f"the body is at most {bytes_max} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def authenticated_terminal(request: web.Request) -> registry.TerminalRow:
    terminal_id = request.headers.get(terminal_header, "")
    signature = request.headers.get(signature_header, "")
    timestamp = request.headers.get(timestamp_header, "")
    if not terminal_id or not signature or not timestamp.isdigit():
        raise Problem(401, "unauthenticated", "terminal, signature and timestamp headers needed")
    now_ms = request.app[config_key].clock.unix_ms()
    if abs(int(timestamp) - now_ms) > request_clock_skew_ms_max:
        raise Problem(401, "stale_request", "the request's timestamp is too far from our clock")
    async with request.app[pool_key].acquire() as connection:
        terminal = await registry.terminal(connection, terminal_id)
    if terminal is None:
        raise Problem(401, UploadResult.unknown_terminal.value, f"terminal {terminal_id!r}")
    if terminal.status == TerminalStatus.suspended:
        raise Problem(403, UploadResult.terminal_suspended.value, suspended_detail(terminal_id))
    if terminal.status != TerminalStatus.active:
        raise Problem(403, UploadResult.terminal_revoked.value, f"terminal {terminal_id}")
    signed = request_signing_bytes(request.method, request.path_qs, timestamp)
    if not signature_valid(public_key(terminal.public_key), signed, signature):
        raise Problem(401, UploadResult.signature_invalid.value, "request signature is wrong")
    return terminal


async def sync(request: web.Request) -> web.Response:
    terminal = await authenticated_terminal(request)
    deny_since = _query_int(request, "deny_since", 0)
    # Absent from an older terminal's request: it gets no chip-block list.
    chip_block_since = (
        _query_int(request, "chip_block_since", 0) if "chip_block_since" in request.query else None
    )
    service_end = _query_feed_service_end(request)
    report = _query_fleet_report(request)
    settings = request.app[config_key].settings
    now = request.app[config_key].clock.now()
    async with request.app[pool_key].acquire() as connection:
        if service_end is not None:  # signed with the path: the terminal's own word
            await feeds.record_feed_service_end(connection, terminal.terminal_id, service_end)
        refusals = await fleet.record_report(
            connection, terminal.terminal_id, terminal.role.value, report, now
        )
        running = {kind: reported.running_version for kind, reported in report.items()}
        packages = await fleet.offers(connection, terminal.role.value, running, now)
        version = await registry.deny_list_version(connection)
        # Each card changed since the terminal's version, as it stands now: on the list
        # (added), or off it (lifted). A card added and lifted meanwhile is simply lifted.
        changed = await connection.fetch(
            "select c.card_number, exists (select 1 from deny_list d "
            "where d.card_number = c.card_number) as denied from (select distinct card_number "
            "from deny_list_changes where change_id > $1 and change in ('added', 'lifted') "
            "limit $2) c",
            deny_since,
            deny_delta_entries_max + 1,
        )
        top_ups = await connection.fetch(
            "select top_up_id, card_number, amount_rupiah, "
            "(extract(epoch from created_at) * 1000)::bigint as paid_ms from pending_top_ups "
            "where taken_terminal_id is null and withdrawn_at is null order by created_at limit $1",
            pending_top_ups_download_max,
        )
        waiting_passes = await passes.waiting_passes(connection)
        carried_passes = await passes.waiting_carried_passes(connection, now=now)
        chip_blocks = (
            None
            if chip_block_since is None
            else await registry.chip_block_changes(
                connection, chip_block_since, deny_delta_entries_max + 1
            )
        )
    for _, refused in refusals:
        request.app[metrics_key].fleet_refusals.increment(refused.refused_reason)
    denials = [(row["card_number"], row["denied"]) for row in changed]
    return web.json_response(
        {
            "server_time_ms": request.app[config_key].clock.unix_ms(),
            **_list_delta("deny_list", version, denials),
            # Nothing for a terminal from before the chip-block list.
            **({} if chip_blocks is None else _list_delta("chip_block", version, chip_blocks)),
            "pending_top_ups": [
                [row["top_up_id"], row["card_number"], row["amount_rupiah"], row["paid_ms"]]
                for row in top_ups
            ],
            "pending_passes": waiting_passes,
            "carried_passes": carried_passes,  # as pending_passes, and the Unix ms they run from
            "tariff_version": settings.get("tariff_version", ""),
            "key_versions": settings.get("key_versions", {}),
            "packages": packages,
        }
    )


def _list_delta(prefix: str, version: int, changes: list[tuple[str, bool]]) -> dict[str, Any]:
    """The sync answer's part for a card list (`prefix` "deny_list" or "chip_block"): the cards
    added and lifted since the terminal's version, or (too many) a full download."""
    full_needed = len(changes) > deny_delta_entries_max
    return {
        f"{prefix}_version": version,
        f"{prefix}_full_download": full_needed,
        f"{prefix}_added": [] if full_needed else sorted(n for n, listed in changes if listed),
        f"{prefix}_lifted": [] if full_needed else sorted(n for n, listed in changes if not listed),
    }


async def deny_list(request: web.Request) -> web.Response:
    return await _card_list(request, "true")


async def chip_block_list(request: web.Request) -> web.Response:
    return await _card_list(request, registry.chip_block_condition)


async def _card_list(request: web.Request, condition: str) -> web.Response:
    """The deny list's cards that meet `condition` (on its row `d`), whole, at its version."""
    await authenticated_terminal(request)
    async with (
        request.app[pool_key].acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        version = await registry.deny_list_version(connection)
        # Sorted and packed by PostgreSQL (big-endian int8s): millions of cards in one value.
        # Numbers past the int8 range (19 digits above 2^63-1) come separately, and sort last.
        packed = await connection.fetchval(
            "select coalesce(string_agg(int8send(number), ''::bytea order by number), ''::bytea) "
            "from (select distinct card_number::int8 as number from deny_list d "
            f"where (length(card_number) < 19 or card_number <= '9223372036854775807') "
            f"and {condition}) fitting"
        )
        beyond = await connection.fetch(
            "select card_number from deny_list d where length(card_number) = 19 "
            f"and card_number > '9223372036854775807' and {condition}"
        )
    values = array("Q")
    values.frombytes(packed)
    if sys.byteorder == "little":
        values.byteswap()  # int8send is network order; the list travels little-endian
    values.extend(sorted({int(row["card_number"]) for row in beyond}))
    if sys.byteorder != "little":
        values.byteswap()
    return web.Response(
        body=values.tobytes(),
        content_type="application/octet-stream",
        headers={deny_list_version_header: str(version)},
    )


def _query_feed_service_end(request: web.Request) -> dt.date | None:
    """A validator's fare feed: its last service day (`feeds.feed_service_end_query`)."""
    text = request.query.get(feeds.feed_service_end_query)
    if text is None:
        return None
    try:
        return feeds.parse_feed_service_end(text)
    except ValueError as error:
        raise Problem(400, "bad_query", str(error)) from None


def _query_fleet_report(request: web.Request) -> dict[PackageKind, fleet.TerminalReport]:
    """What the terminal runs, has staged and refused (`bus_terminals.fleet.Fleet.report_query`),
    signed with the path like the rest of the query."""
    try:
        return fleet.parse_report(
            request.query.get("running", ""),
            request.query.get("staged", ""),
            request.query.get("refused", ""),
        )
    except ValueError as error:
        raise Problem(400, "bad_query", str(error)) from None


async def package_content(request: web.Request) -> web.Response:
    """A fleet package's content, as published (the terminal checks it against the signed
    manifest the sync offered)."""
    terminal = await authenticated_terminal(request)
    kind_text, version_text = request.match_info["kind"], request.match_info["version"]
    if kind_text not in fleet.kinds_by_role[terminal.role.value] or not version_text.isdigit():
        raise Problem(404, "package_not_found", f"no package {kind_text} {version_text[:20]}")
    async with request.app[pool_key].acquire() as connection:
        found = await fleet.content(connection, PackageKind(kind_text), int(version_text[:18]))
    if found is None:
        raise Problem(404, "package_not_found", f"no package {kind_text} {version_text[:20]}")
    return web.Response(body=found, content_type="application/octet-stream")


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 18:
        raise Problem(400, "bad_query", f"query {name!r} must be a non-negative integer")
    return int(text)


# ------------------------------------------------------------------------------ staff


# Who may call what: gateways.staff (money_roles, party_roles, any_role), shared with `ksh`.


async def _admin_body(request: web.Request, roles: tuple[Role, ...]) -> dict[str, Any]:
    """The caller's staff token must be live and its role one of `roles`; the JSON body."""
    member = await _staff_member(request)
    if member.role not in roles:
        raise Problem(
            403,
            "forbidden",
            f"a {member.role.value} may not do this (needs "
            + " or ".join(role.value for role in roles)
            + ")",
        )
    request[staff_member_key] = member
    if request.method == "GET":
        return {}
    import json

    raw = await _read_bounded(request, admin_body_bytes_max)
    body = json.loads(raw or b"{}")
    if not isinstance(body, dict):
        raise Problem(400, "malformed_body", "the body must be a JSON object")
    return body


staff_member_key = web.RequestKey("staff_member", StaffMember)


async def _staff_member(request: web.Request) -> StaffMember:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    member = None
    if scheme.lower() == "bearer" and token:
        async with request.app[pool_key].acquire() as connection:
            member = await staff.member_of_token(connection, token)
    if member is None:
        raise Problem(401, "unauthorised", "a staff bearer token of your own is needed")
    return member


def _reason(body: dict[str, Any]) -> str:
    """Why the caller does this: said in every change, and logged with it."""
    reason = _field(body, "reason", str)
    problem = staff.reason_problem(reason)
    if problem:
        raise Problem(400, "bad_field", problem, field="reason")
    return str(reason.strip())


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The registry's refusals as the admin API answers them: 404 for what is not registered,
    409 for a clash with what is, 400 for a bad field (the rules live in the registry)."""
    try:
        yield
    except registry.RegistryError as error:
        status = (
            404
            if isinstance(error, registry.NotRegistered)
            else 409
            if isinstance(error, registry.Conflict)
            else 400
        )
        extra = {} if error.field is None else {"field": error.field}
        raise Problem(status, error.code, str(error), **extra) from None


@contextlib.asynccontextmanager
async def staff_change(
    request: web.Request,
) -> AsyncIterator[tuple[asyncpg.Connection, StaffMember, dt.datetime]]:
    """One change a staff member makes through the admin API: a connection in a transaction
    (the change and its staff action commit together), the acting member and the business
    time; the registry's refusals answered as problems, with nothing written."""
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        with _refusals():
            yield connection, request[staff_member_key], request.app[config_key].clock.now()


async def _record(
    request: web.Request,
    connection: asyncpg.Connection,
    action: str,
    subject: str,
    reason: str,
    **detail: Any,
) -> None:
    member = request[staff_member_key]
    await staff.record_action(
        connection,
        username=member.username,
        role=member.role.value,
        action=action,
        subject=subject,
        reason=reason,
        now=request.app[config_key].clock.now(),
        detail=detail,
    )


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    value = body.get(name, default)
    if value is ...:
        raise Problem(400, "missing_field", f"field {name!r} is required", field=name)
    if value is not None and (type(value) is not kind):
        raise Problem(400, "bad_field", f"field {name!r} must be {kind.__name__}", field=name)
    return value


def _reference_field(body: dict[str, Any], name: str, default: Any = ...) -> str:
    """An operator, merchant or top-up id: printable, 1 to 64 characters (what the wire and
    the ledger's references hold)."""
    value = _field(body, name, str, default)
    with _refusals():
        return registry.check_reference(name, value)


def _card_number_field(body: dict[str, Any]) -> str:
    number = _field(body, "card_number", str)
    with _refusals():
        return registry.check_card_number(number)


async def add_operator(request: web.Request) -> web.Response:
    body = await _admin_body(request, party_roles)
    operator_id = _field(body, "operator_id", str)
    name = _field(body, "name", str, "")
    reason = _reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        with _refusals():
            await registry.register_operator(connection, operator_id, name)
        await _record(request, connection, "register_operator", operator_id, reason, name=name)
    return web.json_response({"operator_id": operator_id}, status=201)


async def add_merchant(request: web.Request) -> web.Response:
    body = await _admin_body(request, party_roles)
    merchant_id = _field(body, "merchant_id", str)
    fee = _field(body, "fee_basis_points", int, 0)
    name = _field(body, "name", str, "")
    reason = _reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        with _refusals():
            await registry.register_merchant(connection, merchant_id, name, fee)
        await _record(
            request,
            connection,
            "register_merchant",
            merchant_id,
            reason,
            name=name,
            fee_basis_points=fee,
        )
    return web.json_response({"merchant_id": merchant_id}, status=201)


async def add_terminal(request: web.Request) -> web.Response:
    body = await _admin_body(request, party_roles)
    terminal_id = _field(body, "terminal_id", str)
    public_key = _field(body, "public_key", str)
    role_text = _field(body, "role", str)
    if role_text not in TerminalRole.__members__:
        raise Problem(400, "bad_field", "role is validator or pos", field="role")
    role = TerminalRole(role_text)
    operator_id = _field(body, "operator_id", str, None)
    merchant_id = _field(body, "merchant_id", str, None)
    reason = _reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        with _refusals():
            await registry.register_terminal(
                connection,
                terminal_id,
                public_key,
                role,
                operator_id=operator_id,
                merchant_id=merchant_id,
            )
        await _record(
            request,
            connection,
            "register_terminal",
            terminal_id,
            reason,
            role=role.value,
            owner=operator_id or merchant_id,
        )
    return web.json_response({"terminal_id": terminal_id}, status=201)


async def revoke_terminal(request: web.Request) -> web.Response:
    body = await _admin_body(request, party_roles)
    terminal_id = request.match_info["terminal_id"]
    reason = _reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        if not await registry.revoke_terminal(connection, terminal_id):
            raise Problem(404, "terminal_not_found", f"terminal {terminal_id!r}")
        await _record(request, connection, "revoke_terminal", terminal_id, reason)
    return web.json_response({"terminal_id": terminal_id, "status": "revoked"})


async def resume_terminal(request: web.Request) -> web.Response:
    body = await _admin_body(request, party_roles)
    terminal_id = request.match_info["terminal_id"]
    reason = _reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        if not await suspension.resume(connection, terminal_id):
            raise Problem(404, "not_suspended", f"terminal {terminal_id!r} is not suspended")
        await _record(request, connection, "resume_terminal", terminal_id, reason)
    return web.json_response({"terminal_id": terminal_id, "status": "active"})


_resolve_status = {
    quarantine.ResolveResult.done: 200,
    quarantine.ResolveResult.awaiting_second: 202,
    quarantine.ResolveResult.not_found: 404,
    quarantine.ResolveResult.not_allowed: 403,
    quarantine.ResolveResult.note_required: 400,
}


async def resolve_quarantined(request: web.Request) -> web.Response:
    """Ask for, or confirm, the release or write-off of a quarantined record
    (`gateways.terminal_api.quarantine`): 202 asked, 200 booked, 409 refused (resolved
    already, the same person, another request waiting, nothing to release)."""
    body = await _admin_body(request, party_roles)
    key = quarantine.EntryKey(
        request.match_info["terminal_id"], int(request.match_info["sequence"])
    )
    resolution = (
        quarantine.Resolution.release
        if request.match_info["action"] == "release"
        else quarantine.Resolution.write_off
    )
    reason = _reason(body)
    async with request.app[pool_key].acquire() as connection:
        resolved = await quarantine.resolve(
            connection,
            key,
            resolution,
            request[staff_member_key],
            reason,
            now=request.app[config_key].clock.now(),
        )
    status = _resolve_status.get(resolved.result, 409)
    if status >= 400:
        raise Problem(status, resolved.result.value, resolved.detail)
    return web.json_response(
        {
            "terminal_id": key.terminal_id,
            "sequence": key.sequence,
            "result": resolved.result.value,
            "rupiah": resolved.rupiah,
            "requested_by": resolved.requested_by,
            "transfer_ids": resolved.transfer_ids,
        },
        status=status,
    )


async def add_card(request: web.Request) -> web.Response:
    body = await _admin_body(request, money_roles)
    number = _card_number_field(body)
    opening = _field(body, "opening_balance_rupiah", int, 0)
    with _refusals():
        registry.check_opening_balance(opening)
    uid_text = _field(body, "uid", str, "")  # hex, from the card at issuance
    try:
        uid = bytes.fromhex(uid_text)
    except ValueError:
        raise Problem(400, "bad_field", "uid is hexadecimal", field="uid") from None
    reason = _reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        with _refusals():
            await registry.issue_cards(
                connection, {number: opening}, now=request.app[config_key].clock.now()
            )
            if uid:
                await registry.register_card_uids(connection, {number: uid})
        accounts = registry.card_accounts(number)
        await _record(
            request, connection, "issue_card", number, reason, opening_balance_rupiah=opening
        )
    return web.json_response(
        {
            "card_number": number,
            "purse_account_id": str(accounts.purse_account_id),
            "pending_top_up_account_id": str(accounts.pending_top_up_account_id),
        },
        status=201,
    )


async def add_pending_top_up(request: web.Request) -> web.Response:
    body = await _admin_body(request, money_roles)
    number = _card_number_field(body)
    top_up_id = _reference_field(body, "top_up_id")
    amount = _field(body, "amount_rupiah", int)
    if not 0 < amount <= 2_000_000:
        raise Problem(400, "bad_field", "amount_rupiah is 1..2,000,000", field="amount_rupiah")
    source = _reference_field(body, "source", "counter")
    if source.startswith(counter.drawer_prefix):
        raise Problem(400, "bad_field", "source 'drawer' is your own cash drawer", field="source")
    if source == "drawer":  # cash taken at a counter: out of the caller's own drawer
        source = counter.drawer_code(request[staff_member_key].username)
    paid_at_ms = _field(body, "paid_at_ms", int, None)
    paid_at = request.app[config_key].clock.now()
    if paid_at_ms is not None:
        try:
            paid_at = dt.datetime.fromtimestamp(paid_at_ms / 1000, dt.UTC)
        except (OverflowError, ValueError, OSError):
            raise Problem(
                400, "bad_field", "paid_at_ms is not a time", field="paid_at_ms"
            ) from None
    reason = _reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        await _refuse_past_cap(connection, number, top_up_id, amount)
        created = await registry.pay_pending_top_up(
            connection, top_up_id, number, amount, paid_at=paid_at, bank_code=source
        )
        await _record(
            request,
            connection,
            "pending_top_up",
            number,
            reason,
            top_up_id=top_up_id,
            amount_rupiah=amount,
            source=source,
            created=created,
        )
    return web.json_response({"top_up_id": top_up_id, "created": created}, status=201)


async def _refuse_past_cap(
    connection: asyncpg.Connection, card_number: str, top_up_id: str, amount_rupiah: int
) -> None:
    """A new top-up must keep the card within its cap (Rp 20,000,000 registered, 2,000,000
    not: `card_desk`); a denied card takes none. A repeat of a booked top-up passes."""
    from gateways.terminal_api import card_desk

    if await connection.fetchval("select 1 from pending_top_ups where top_up_id = $1", top_up_id):
        return
    denied = await connection.fetchval(
        "select reason from deny_list where card_number = $1", card_number
    )
    if denied is not None:
        raise Problem(409, "card_denied", f"card {card_number} is on the deny list ({denied})")
    room = await card_desk.top_up_room_rupiah(connection, card_number)
    if amount_rupiah > room:
        cap = await card_desk.purse_cap_rupiah(connection, card_number)
        raise Problem(
            409,
            "purse_cap",
            f"card {card_number} may take Rp {room:,} more (its cap is Rp {cap:,})",
        )


async def card_view(request: web.Request) -> web.Response:
    await _admin_body(request, any_role)
    number = request.match_info["card_number"]
    async with request.app[pool_key].acquire() as connection:
        view = await registry.card_view(connection, number)
        if view is None:
            raise Problem(404, "card_not_found", f"card {number!r} is not registered")
        purse = await books.balances(connection, [registry.purse_account_id(number)])
    balance = purse.get(registry.purse_account_id(number))
    view["purse_balance_rupiah"] = balance.credit_balance if balance else 0
    return web.json_response(view)


async def counter_gaps(request: web.Request) -> web.Response:
    await _admin_body(request, any_role)
    async with request.app[pool_key].acquire() as connection:
        gaps = await registry.cards_with_counter_gaps(connection)
    return web.json_response(
        [
            {"card_number": card, "highest_counter": high, "missing": missing}
            for card, high, missing in gaps
        ]
    )


async def record_gaps(request: web.Request) -> web.Response:
    await _admin_body(request, any_role)
    async with request.app[pool_key].acquire() as connection:
        gaps = await registry.terminals_with_record_gaps(connection)
    return web.json_response(
        [
            {"terminal_id": terminal, "highest_sequence": high, "missing": missing}
            for terminal, high, missing in gaps
        ]
    )


async def metrics(request: web.Request) -> web.Response:
    today = feeds.backoffice_clock(request.app).today()
    async with request.app[pool_key].acquire() as connection:
        days_left = await feeds.validator_feed_days_left(connection, today)
        gauges = await observability.database_metrics(request.app, connection)
        now = request.app[config_key].clock.now()
        statuses = await fleet.fleet_status(connection, now)
        held = await suspension.quarantined_recently(connection, now=now)
        suspended = await suspension.suspended_terminals(connection)
    text = (
        request.app[metrics_key].render()
        + feeds.render_days_left(days_left)
        + fleet.render_metrics(statuses)
        + suspension.render_metrics(held, suspended)
        + gauges
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


# The seams other admin modules (`card_desk_routes`) build their handlers on: the caller's
# token and body, a field, the reason, the registry's refusals as problems, the staff action.
admin_body = _admin_body
body_field = _field
staff_reason = _reason
registry_refusals = _refusals
record_staff_action = _record
