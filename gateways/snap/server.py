"""Our SNAP BI endpoints (the bank calls us): the B2B access token, virtual-account
inquiry (24) and payment (25) for top-ups, the QRIS payment notification (52, `qris`), plus the
OpenAPI description.

Mounted into the back office with `install` (defaults) or `extension(settings)`:

    create_app(config, [gateways.snap.server.install])

Every request is checked in a fixed order, and the first failure is the answer: body size,
mandatory headers, timestamp format, partner, token, signature, timestamp freshness, channel,
JSON, fields; then, in one database transaction, the X-EXTERNAL-ID (unique per partner per
Jakarta day) and the business step. Nothing is booked unless every check passed.

Every answer under the prefix, success or error (even a 404 or 405 from the router), carries
`X-TIMESTAMP` from the back office's clock, as SNAP requires of responses. An access-token
request is answered once: the digest of what its signature covers is claimed atomically in
`snap_used_token_signatures` for as long as its timestamp is in the window, so a captured
request sent again gets 401, not a fresh token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from gateways.backoffice import Extension, config_key, pool_key
from gateways.snap import qris, signature, top_ups
from gateways.snap.bodies import read_whole
from gateways.snap.codes import Cases, Service, SnapError, response_code
from gateways.snap.partners import Partner, load_partner

logger = logging.getLogger("ksh.snap.server")

openapi_path = Path(__file__).parent / "openapi.json"


@dataclass(frozen=True, slots=True)
class SnapServerSettings:
    prefix: str = "/snap"
    timestamp_tolerance_seconds: int = signature.timestamp_tolerance_seconds_default
    access_token_ttl_seconds: int = 900
    request_body_bytes_max: int = 16 * 1024  # a VA payment is well under 2 KiB
    purse_cap_rupiah: int = top_ups.purse_cap_rupiah_default

    def __post_init__(self) -> None:
        assert self.timestamp_tolerance_seconds > 0
        assert 60 <= self.access_token_ttl_seconds <= 99_999  # expiresIn is at most 5 digits
        assert self.request_body_bytes_max >= 2048


settings_key = web.AppKey("snap_settings", SnapServerSettings)

mandatory_transaction_headers = (
    "X-TIMESTAMP",
    "X-SIGNATURE",
    "X-PARTNER-ID",
    "X-EXTERNAL-ID",
    "CHANNEL-ID",
    "Authorization",
)
external_id_length_max = 36
external_ids_kept_days = 3  # unique per day: yesterday's still matter around midnight


def snap_response(
    service: Service, body: dict[str, Any], case: Any = Cases.success
) -> web.Response:
    answer = {"responseCode": response_code(case, service), "responseMessage": case.message, **body}
    return web.json_response(answer, status=case.http_status)


def error_response(error: SnapError, service: Service) -> web.Response:
    return web.json_response(error.body(service), status=error.case.http_status)


async def read_body(request: web.Request, settings: SnapServerSettings) -> bytes:
    limit = settings.request_body_bytes_max
    if request.content_length is not None and request.content_length > limit:
        raise SnapError(Cases.bad_request, f"body larger than {limit} bytes")
    body = await read_whole(request.content, limit)
    if body is None:
        raise SnapError(Cases.bad_request, f"body larger than {limit} bytes")
    return body


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise SnapError(Cases.bad_request, "body is not JSON") from error
    if not isinstance(value, dict):
        raise SnapError(Cases.bad_request, "body is not a JSON object")
    return value


def check_timestamp(text: str, settings: SnapServerSettings, now: datetime) -> None:
    moment = signature.parse_timestamp(text)
    if moment is None:
        raise SnapError(Cases.invalid_field_format, "X-TIMESTAMP")
    if not signature.timestamp_is_fresh(moment, now, settings.timestamp_tolerance_seconds):
        raise SnapError(Cases.unauthorized, "X-TIMESTAMP is outside the allowed window")


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def claim_token_signature(
    connection: asyncpg.Connection,
    partner_id: str,
    client_key: str,
    timestamp: str,
    settings: SnapServerSettings,
    now: datetime,
) -> None:
    """Refuse an access-token request whose signature was answered before. The key is the
    string the signature covers (RSA PKCS#1 v1.5 signs it the same way every time), so another
    encoding of the same signature is the same request too."""
    moment = signature.parse_timestamp(timestamp)
    assert moment is not None, "checked before"
    claimed = await connection.fetchval(
        """
        insert into snap_used_token_signatures (signed_sha256, partner_id, usable_until)
        values ($1, $2, $3)
        on conflict do nothing
        returning true
        """,
        hashlib.sha256(signature.access_token_string(client_key, timestamp)).digest(),
        partner_id,
        moment + timedelta(seconds=settings.timestamp_tolerance_seconds),
    )
    if not claimed:
        raise SnapError(Cases.unauthorized, "this signed request was already answered")
    await connection.execute(
        "delete from snap_used_token_signatures where usable_until < $1",
        now - timedelta(seconds=settings.timestamp_tolerance_seconds),
    )


# ---------------------------------------------------------------------------- access token


async def access_token(request: web.Request) -> web.Response:
    service = Service.access_token
    settings = request.app[settings_key]
    try:
        body = await read_body(request, settings)
        for name in ("X-TIMESTAMP", "X-CLIENT-KEY", "X-SIGNATURE"):
            if not request.headers.get(name):
                raise SnapError(Cases.invalid_mandatory_field, name)
        timestamp = request.headers["X-TIMESTAMP"]
        client_key = request.headers["X-CLIENT-KEY"]
        now = request.app[config_key].clock.now()
        if signature.parse_timestamp(timestamp) is None:
            raise SnapError(Cases.invalid_field_format, "X-TIMESTAMP")
        async with request.app[pool_key].acquire() as connection:
            partner = await load_partner(connection, client_key)
            if partner is None:
                raise SnapError(Cases.unauthorized, "unknown X-CLIENT-KEY")
            public_key = signature.load_public_key(partner.public_key_pem.encode())
            if not signature.verify_access_token(
                public_key, client_key, timestamp, request.headers["X-SIGNATURE"]
            ):
                raise SnapError(Cases.unauthorized, "Signature")
            check_timestamp(timestamp, settings, now)
            grant_type = parse_json_object(body).get("grantType")
            if grant_type is None:
                raise SnapError(Cases.invalid_mandatory_field, "grantType")
            if grant_type != "client_credentials":
                raise SnapError(Cases.invalid_field_format, "grantType")
            token = secrets.token_urlsafe(32)
            async with connection.transaction():
                await claim_token_signature(
                    connection, partner.partner_id, client_key, timestamp, settings, now
                )
                await connection.execute(
                    """
                    insert into snap_access_tokens
                        (token_sha256, partner_id, issued_at, expires_at)
                    values ($1, $2, $3, $4)
                    """,
                    token_digest(token),
                    partner.partner_id,
                    now,
                    now + timedelta(seconds=settings.access_token_ttl_seconds),
                )
            # Forget long-expired tokens and old days' external ids as we go (a token is asked
            # for every few minutes per bank), so both tables stay small.
            await connection.execute(
                "delete from snap_access_tokens where expires_at < $1", now - timedelta(days=1)
            )
            await connection.execute(
                "delete from snap_external_ids where day < $1",
                (now - timedelta(days=external_ids_kept_days)).date(),
            )
    except SnapError as error:
        return error_response(error, service)
    return snap_response(
        service,
        {
            "accessToken": token,
            "tokenType": "Bearer",
            "expiresIn": str(settings.access_token_ttl_seconds),
        },
    )


# ---------------------------------------------------------------------------- transactions


@dataclass(frozen=True, slots=True)
class SignedRequest:
    partner: Partner
    external_id: str
    body: dict[str, Any]
    received_at: datetime


async def authenticate(
    request: web.Request, connection: asyncpg.Connection, settings: SnapServerSettings
) -> SignedRequest:
    """Check a transaction request's headers, token and signature; return what it says."""
    raw = await read_body(request, settings)
    headers = request.headers
    for name in mandatory_transaction_headers:
        if not headers.get(name):
            raise SnapError(Cases.invalid_mandatory_field, name)
    timestamp = headers["X-TIMESTAMP"]
    now = request.app[config_key].clock.now()
    if signature.parse_timestamp(timestamp) is None:
        raise SnapError(Cases.invalid_field_format, "X-TIMESTAMP")
    external_id = headers["X-EXTERNAL-ID"]
    if len(external_id) > external_id_length_max or not external_id.isdigit():
        raise SnapError(Cases.invalid_field_format, "X-EXTERNAL-ID")
    partner = await load_partner(connection, headers["X-PARTNER-ID"])
    if partner is None:
        raise SnapError(Cases.unauthorized, "unknown X-PARTNER-ID")
    scheme, _, token = headers["Authorization"].partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise SnapError(Cases.invalid_token, "Authorization must be 'Bearer <token>'")
    row = await connection.fetchrow(
        "select partner_id, expires_at from snap_access_tokens where token_sha256 = $1",
        token_digest(token),
    )
    if row is None:
        raise SnapError(Cases.token_not_found)
    if row["partner_id"] != partner.partner_id:
        raise SnapError(Cases.invalid_token, "token belongs to another partner")
    if row["expires_at"] <= now:
        raise SnapError(Cases.invalid_token, "token expired")
    if not signature.verify_transaction(
        partner.client_secret,
        request.method,
        request.rel_url.raw_path,
        token,
        raw,
        timestamp,
        headers["X-SIGNATURE"],
    ):
        raise SnapError(Cases.unauthorized, "Signature")
    check_timestamp(timestamp, settings, now)
    if headers["CHANNEL-ID"] != partner.channel_id:
        raise SnapError(Cases.unauthorized, "CHANNEL-ID does not match the partner")
    return SignedRequest(partner, external_id, parse_json_object(raw), now)


async def claim_external_id(
    connection: asyncpg.Connection, signed: SignedRequest, path: str
) -> None:
    day = signed.received_at.astimezone(signature.jakarta_timezone).date()
    claimed = await connection.fetchval(
        """
        insert into snap_external_ids (partner_id, day, external_id, path)
        values ($1, $2, $3, $4)
        on conflict do nothing
        returning true
        """,
        signed.partner.partner_id,
        day,
        signed.external_id,
        path,
    )
    if not claimed:
        raise SnapError(
            Cases.external_id_conflict, "Cannot use the same X-EXTERNAL-ID in the same day"
        )


Business = Callable[
    [asyncpg.Connection, SignedRequest, SnapServerSettings], Awaitable[dict[str, Any]]
]
#: Called in the request's transaction after the business step (with its refusal, or None),
#: outside the business step's savepoint: a refusal is kept too.
Recorder = Callable[[asyncpg.Connection, SignedRequest, SnapError | None], Awaitable[None]]


def transaction_handler(
    service: Service, business: Business, record: Recorder | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        settings = request.app[settings_key]
        try:
            async with request.app[pool_key].acquire() as connection:
                signed = await authenticate(request, connection, settings)
                async with connection.transaction():
                    await claim_external_id(connection, signed, request.path)
                    try:
                        async with connection.transaction():  # savepoint: a refusal books nothing
                            answer = await business(connection, signed, settings)
                    except SnapError as refusal:
                        logger.info(
                            "refused %s for %s: %s",
                            request.path,
                            signed.partner.partner_id,
                            refusal,
                        )
                        if record is not None:
                            await record(connection, signed, refusal)
                        return error_response(refusal, service)
                    if record is not None:
                        await record(connection, signed, None)
        except SnapError as error:
            return error_response(error, service)
        except Exception:
            # The edge towards the bank: whatever failed, everything of this request was
            # rolled back, the bank gets a SNAP answer and may retry.
            logger.exception("failed %s", request.path)
            return error_response(SnapError(Cases.internal_error), service)
        return snap_response(service, answer)

    return handle


async def va_inquiry(
    connection: asyncpg.Connection, signed: SignedRequest, settings: SnapServerSettings
) -> dict[str, Any]:
    return await top_ups.inquire(connection, signed.partner, signed.body, settings.purse_cap_rupiah)


async def va_payment(
    connection: asyncpg.Connection, signed: SignedRequest, settings: SnapServerSettings
) -> dict[str, Any]:
    return await top_ups.pay(
        connection, signed.partner, signed.body, settings.purse_cap_rupiah, signed.received_at
    )


async def qr_notify(
    connection: asyncpg.Connection, signed: SignedRequest, settings: SnapServerSettings
) -> dict[str, Any]:
    return await qris.notified(
        connection, signed.partner.partner_id, signed.body, signed.received_at
    )


async def record_qr_notification(
    connection: asyncpg.Connection, signed: SignedRequest, refusal: SnapError | None
) -> None:
    status = signed.body.get("latestTransactionStatus")
    outcome = (
        refusal.message()
        if refusal is not None
        else "booked"
        if status == "00"
        else f"status {str(status)[:2]}: not paid, nothing booked"
    )
    await qris.record_notification(
        connection,
        signed.partner.partner_id,
        signed.external_id,
        signed.body,
        signed.received_at,
        outcome,
    )


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_path.read_bytes(), content_type="application/json")


def extension(settings: SnapServerSettings | None = None) -> Extension:
    """An extension for `create_app` that mounts the SNAP endpoints with these settings."""
    chosen = settings or SnapServerSettings()

    def install_with_settings(app: web.Application) -> None:
        app[settings_key] = chosen
        prefix = chosen.prefix

        async def stamp(request: web.Request, response: web.StreamResponse) -> None:
            if request.path.startswith(prefix + "/") and "X-TIMESTAMP" not in response.headers:
                now = request.app[config_key].clock.now()
                response.headers["X-TIMESTAMP"] = signature.format_timestamp(now)

        app.on_response_prepare.append(stamp)
        app.router.add_post(f"{prefix}/v1.0/access-token/b2b", access_token)
        app.router.add_post(
            f"{prefix}/v1.0/transfer-va/inquiry",
            transaction_handler(Service.va_inquiry, va_inquiry),
        )
        app.router.add_post(
            f"{prefix}/v1.0/transfer-va/payment",
            transaction_handler(Service.va_payment, va_payment),
        )
        app.router.add_post(
            f"{prefix}/v1.0/qr/qr-mpm-notify",
            transaction_handler(Service.qr_mpm_notify, qr_notify, record_qr_notification),
        )
        app.router.add_get(f"{prefix}/openapi.json", openapi)

    return install_with_settings


def settings_from(values: dict[str, Any]) -> SnapServerSettings:
    """Our settings from the back office's `BackofficeConfig.settings`: the keys
    `snap_timestamp_tolerance_seconds`, `snap_access_token_ttl_seconds` and
    `snap_purse_cap_rupiah` override the defaults."""
    default = SnapServerSettings()
    return SnapServerSettings(
        timestamp_tolerance_seconds=int(
            values.get("snap_timestamp_tolerance_seconds", default.timestamp_tolerance_seconds)
        ),
        access_token_ttl_seconds=int(
            values.get("snap_access_token_ttl_seconds", default.access_token_ttl_seconds)
        ),
        purse_cap_rupiah=int(values.get("snap_purse_cap_rupiah", default.purse_cap_rupiah)),
    )


def install(app: web.Application) -> None:
    """Mount the SNAP endpoints with settings from the back office config (or defaults)."""
    extension(settings_from(app[config_key].settings))(app)
