"""The bank simulator as an aiohttp application: the bank's SNAP endpoints (we are its
client), its control endpoints (a citizen paying a VA, statements, trouble), and its own SNAP
client that calls the issuer's VA endpoints with correct signatures.

    app = create_bank_app(settings)
    bank = app[bank_key]                         # the books: accounts, transfers, trouble
    simulator = app[simulator_key]
    await simulator.pay_va("   88001" + card_number, 50_000)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bus_terminals.qris import QrisMerchant
from gateways.bank_simulator.acquirer import (
    Acquirer,
    QrisRefused,
    QrOrder,
    unsettled_on,
)
from gateways.bank_simulator.bank import Bank, VaPayment
from gateways.bank_simulator.statements import BankLine, Direction, write_csv, write_mt940
from gateways.snap import signature
from gateways.snap.bodies import read_whole
from gateways.snap.client import BankConnection, BankUnreachable, SnapSession
from gateways.snap.codes import Cases, Service, SnapError, response_code
from gateways.snap.fields import format_amount, parse_amount_value, require_text
from gateways.snap.qris import settlement_reference
from ledger.clock import Clock, system_clock

request_body_bytes_max = 16 * 1024
snap_prefix = "/snap"


@dataclass(frozen=True, slots=True)
class BankSettings:
    """One simulated bank and its relation with the issuer (the KSH back office)."""

    partner_id: str  # the issuer's id at the bank, and the bank's id at the issuer
    client_secret: str  # HMAC key, both directions
    issuer_public_key_pem: bytes  # verifies the issuer's access-token requests
    bank_private_key_pem: bytes  # signs the bank's access-token requests to the issuer
    company_code: str = "88001"  # VA prefix (partnerServiceId, padded with spaces to 8)
    channel_id: str = "95221"
    name: str = "BANK SIMULATOR"
    bank_code: str = "009"
    issuer_base_url: str = ""  # e.g. "http://127.0.0.1:8080/snap"; may be set later
    issuer_account_no: str = "1350012345678"
    issuer_account_opening_rupiah: int = 0
    # Other accounts at this bank: (account number, holder name, opening balance).
    accounts: tuple[tuple[str, str, int], ...] = ()
    intrabank_fee_rupiah: int = 0
    interbank_fee_rupiah: int = 2_500  # BI-FAST's customer fee cap
    timestamp_tolerance_seconds: int = signature.timestamp_tolerance_seconds_default
    access_token_ttl_seconds: int = 900
    issuer_timeout_ms: int = 10_000
    # The merchants this bank acquires QRIS for (their `merchant_id` is the bank's id for them).
    qris_merchants: tuple[QrisMerchant, ...] = ()


@dataclass
class _Tokens:
    expiry_by_token: dict[str, float] = field(default_factory=dict)
    external_ids: set[tuple[dt.date, str]] = field(default_factory=set)


class Simulator:
    """The bank's behaviour: answer SNAP calls, and pay VAs by calling the issuer."""

    def __init__(self, settings: BankSettings, bank: Bank) -> None:
        self.settings = settings
        self.bank = bank
        self.issuer_base_url = settings.issuer_base_url
        self.tokens = _Tokens()
        self.http: aiohttp.ClientSession | None = None
        self._session: SnapSession | None = None
        self._payment_ids = itertools.count(1)
        self._public_key = signature.load_public_key(settings.issuer_public_key_pem)
        self.acquirer = Acquirer(settings.qris_merchants, bank.clock)

    # -------------------------------------------------------------- calling the issuer

    def _issuer(self) -> SnapSession:
        assert self.http is not None, "the simulator's app is not running"
        if not self.issuer_base_url:
            raise BankUnreachable("the issuer's base URL is not set")
        if self._session is None or self._session.connection.base_url != self.issuer_base_url:
            connection = BankConnection(
                base_url=self.issuer_base_url,
                client_key=self.settings.partner_id,
                client_secret=self.settings.client_secret,
                private_key_pem=self.settings.bank_private_key_pem,
                channel_id=self.settings.channel_id,
                timeout_ms=self.settings.issuer_timeout_ms,
                attempts_max=1,
                clock=self.bank.clock,
            )
            self._session = SnapSession(connection, self.http)
        return self._session

    def new_payment_request_id(self) -> str:
        # Short enough (16) to survive as the MT940 :61: customer reference.
        return f"PR{self.bank.today():%y%m%d}{next(self._payment_ids):08d}"

    async def pay_va(
        self,
        virtual_account_no: str,
        amount_rupiah: int,
        *,
        payment_request_id: str | None = None,
        payer_name: str = "NASABAH",
        payer_account_no: str = "",
        credit_even_if_refused: bool = False,
    ) -> VaPayment:
        """A citizen pays `amount_rupiah` into a VA from the bank's app: inquiry, then payment.

        The issuer's account is credited when the issuer accepts the payment.
        `credit_even_if_refused` is trouble: the bank books the money anyway (a VA for no known
        card), so reconciliation sees a collection the ledger does not explain.
        `payer_account_no` is sent as additionalInfo.sourceAccountNo: the issuer can pay an
        expired top-up back to it.
        """
        assert amount_rupiah > 0
        session = self._issuer()
        company = self.settings.company_code.rjust(8)
        customer_no = virtual_account_no[8:] if len(virtual_account_no) > 8 else ""
        request_id = payment_request_id or self.new_payment_request_id()
        inquiry = await session.post(
            "/v1.0/transfer-va/inquiry",
            {
                "partnerServiceId": company,
                "customerNo": customer_no,
                "virtualAccountNo": virtual_account_no,
                "trxDateInit": signature.format_timestamp(self.bank.clock.local_now()),
                "channelCode": 6011,
                "language": "ID",
                "amount": format_amount(amount_rupiah),
                "inquiryRequestId": f"IQ{request_id}",
            },
        )
        answer: dict[str, Any] = inquiry.body
        payment_code = ""
        accepted = False
        if inquiry.http_status == 200:
            payment = await session.post(
                "/v1.0/transfer-va/payment",
                {
                    "partnerServiceId": company,
                    "customerNo": customer_no,
                    "virtualAccountNo": virtual_account_no,
                    "virtualAccountName": payer_name,
                    "paymentRequestId": request_id,
                    "channelCode": 6011,
                    "paidAmount": format_amount(amount_rupiah),
                    "totalAmount": format_amount(amount_rupiah),
                    "trxDateTime": signature.format_timestamp(self.bank.clock.local_now()),
                    "referenceNo": request_id,
                    "flagAdvise": "N",
                    **(
                        {"additionalInfo": {"sourceAccountNo": payer_account_no}}
                        if payer_account_no
                        else {}
                    ),
                },
            )
            answer = payment.body
            payment_code = payment.response_code
            accepted = payment.http_status == 200
        already = any(
            earlier.payment_request_id == request_id and earlier.credited
            for earlier in self.bank.va_payments
        )
        credited = (accepted or credit_even_if_refused) and not already
        if credited:
            self.bank.credit_collection(
                amount_rupiah, request_id, f"VA PAYMENT {virtual_account_no.strip()} {payer_name}"
            )
        record = VaPayment(
            request_id,
            virtual_account_no,
            amount_rupiah,
            inquiry.response_code,
            payment_code,
            credited,
            answer,
        )
        self.bank.va_payments.append(record)
        return record

    async def pay_qr(self, qr_content: str, *, notify_amount_rupiah: int | None = None) -> QrOrder:
        """A rider's app pays a dynamic QRIS code; the bank then notifies the issuer (unless the
        notification is lost: `trouble.lose_next_notifications`). `QrisRefused` when the code
        cannot be paid (expired, paid, not ours)."""
        order = self.acquirer.pay(qr_content)
        trouble = self.bank.trouble
        if trouble.lose_next_notifications > 0:
            trouble.lose_next_notifications -= 1
            return order
        await self.notify_qr(order, amount_rupiah=notify_amount_rupiah)
        return order

    async def notify_qr(self, order: QrOrder, *, amount_rupiah: int | None = None) -> str:
        """Tell the issuer an order was paid (again, when a test repeats it); its answer code."""
        answer = await self._issuer().post(
            "/v1.0/qr/qr-mpm-notify", self.acquirer.notification(order, amount_rupiah=amount_rupiah)
        )
        return answer.response_code

    def settle_qris(self, day: dt.date) -> int:
        """Pay the issuer the QRIS payments of `day`, net of MDR, in one credit; the amount."""
        orders = unsettled_on(list(self.acquirer.orders.values()), day)
        total = sum(self.acquirer.net_rupiah(order) for order in orders)
        if total:
            self.bank.post(
                self.settings.issuer_account_no,
                BankLine(
                    self.bank.today(),
                    Direction.credit,
                    total,
                    settlement_reference(day),
                    self.bank.next_reference("QS"),
                    "NTRF",
                    f"QRIS SETTLEMENT {day:%d%m%y} {len(orders)} TRX",
                ),
            )
        for order in orders:
            order.settled = True
        return total

    def write_statements(self, folder: Path, day: dt.date) -> list[Path]:
        """Each account's statement of `day` as `<account>-<YYYYMMDD>.sta` (MT940) and `.csv`,
        for the accounts that moved that day."""
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for account_no, account in self.bank.accounts.items():
            if not any(line.value_date == day for line in account.lines):
                continue
            statement = self.bank.statement(account_no, day)
            stem = folder / f"{account_no}-{day:%Y%m%d}"
            for suffix, text in ((".sta", write_mt940(statement)), (".csv", write_csv(statement))):
                path = stem.with_suffix(suffix)
                path.write_text(text, encoding="utf-8")
                written.append(path)
        return written

    def days_with_movements(self) -> list[dt.date]:
        days = {
            line.value_date for account in self.bank.accounts.values() for line in account.lines
        }
        return sorted(days)

    # -------------------------------------------------------------- being called

    def authenticate(self, request: web.Request, raw: bytes) -> None:
        headers = request.headers
        for name in (
            "X-TIMESTAMP",
            "X-SIGNATURE",
            "X-PARTNER-ID",
            "X-EXTERNAL-ID",
            "CHANNEL-ID",
            "Authorization",
        ):
            if not headers.get(name):
                raise SnapError(Cases.invalid_mandatory_field, name)
        moment = signature.parse_timestamp(headers["X-TIMESTAMP"])
        if moment is None:
            raise SnapError(Cases.invalid_field_format, "X-TIMESTAMP")
        if headers["X-PARTNER-ID"] != self.settings.partner_id:
            raise SnapError(Cases.unauthorized, "unknown X-PARTNER-ID")
        token = headers["Authorization"].removeprefix("Bearer ").strip()
        expiry = self.tokens.expiry_by_token.get(token)
        if expiry is None:
            raise SnapError(Cases.token_not_found)
        if expiry < self.bank.clock.monotonic():
            raise SnapError(Cases.invalid_token, "token expired")
        if not signature.verify_transaction(
            self.settings.client_secret,
            request.method,
            request.rel_url.raw_path,
            token,
            raw,
            headers["X-TIMESTAMP"],
            headers["X-SIGNATURE"],
        ):
            raise SnapError(Cases.unauthorized, "Signature")
        now = self.bank.clock.now()
        if not signature.timestamp_is_fresh(moment, now, self.settings.timestamp_tolerance_seconds):
            raise SnapError(Cases.unauthorized, "X-TIMESTAMP is outside the allowed window")
        key = (now.astimezone(signature.jakarta_timezone).date(), headers["X-EXTERNAL-ID"])
        if key in self.tokens.external_ids:
            raise SnapError(
                Cases.external_id_conflict, "Cannot use the same X-EXTERNAL-ID in the same day"
            )
        self.tokens.external_ids.add(key)

    def issue_token(self, request: web.Request) -> dict[str, Any]:
        headers = request.headers
        for name in ("X-TIMESTAMP", "X-CLIENT-KEY", "X-SIGNATURE"):
            if not headers.get(name):
                raise SnapError(Cases.invalid_mandatory_field, name)
        if headers["X-CLIENT-KEY"] != self.settings.partner_id:
            raise SnapError(Cases.unauthorized, "unknown X-CLIENT-KEY")
        if not signature.verify_access_token(
            self._public_key,
            headers["X-CLIENT-KEY"],
            headers["X-TIMESTAMP"],
            headers["X-SIGNATURE"],
        ):
            raise SnapError(Cases.unauthorized, "Signature")
        moment = signature.parse_timestamp(headers["X-TIMESTAMP"])
        if moment is None or not signature.timestamp_is_fresh(
            moment, self.bank.clock.now(), self.settings.timestamp_tolerance_seconds
        ):
            raise SnapError(Cases.unauthorized, "X-TIMESTAMP is outside the allowed window")
        token = secrets.token_urlsafe(24)
        self.tokens.expiry_by_token[token] = (
            self.bank.clock.monotonic() + self.settings.access_token_ttl_seconds
        )
        return {
            "accessToken": token,
            "tokenType": "Bearer",
            "expiresIn": str(self.settings.access_token_ttl_seconds),
        }

    def transfer(self, service: Service, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        reference = require_text(body, "partnerReferenceNo", length_max=64)
        amount = parse_amount_value(body.get("amount"), "amount")
        beneficiary = require_text(body, "beneficiaryAccountNo", length_max=34)
        source = require_text(body, "sourceAccountNo", length_max=34)
        bank_code = ""
        if service is Service.transfer_interbank:
            bank_code = require_text(body, "beneficiaryBankCode", length_max=8)
        if amount == 0:
            raise SnapError(Cases.invalid_amount, "amount must be positive")
        if reference in self.bank.transfers:
            raise SnapError(Cases.duplicate_reference)
        trouble = self.bank.trouble
        if trouble.fail_next_transfers > 0:
            trouble.fail_next_transfers -= 1
            raise SnapError(Cases.external_error, "core banking unavailable")
        fee = (
            self.settings.intrabank_fee_rupiah
            if service is Service.transfer_intrabank
            else self.settings.interbank_fee_rupiah
        )
        record = self.bank.transfer(
            f"{service.value:02d}", reference, source, beneficiary, bank_code, amount, fee
        )
        if record.status != "00":
            raise _Refusal(record.response_code, record.response_message)
        return Cases.success, {
            "referenceNo": record.reference_no,
            "partnerReferenceNo": reference,
            "amount": format_amount(amount),
            "beneficiaryAccountNo": beneficiary,
            "sourceAccountNo": source,
            "transactionDate": signature.format_timestamp(record.booked_at),
        }

    def transfer_status(self, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        reference = require_text(body, "originalPartnerReferenceNo", length_max=64)
        record = self.bank.transfers.get(reference)
        if record is None:
            raise SnapError(Cases.transaction_not_found)
        return Cases.success, {
            "originalPartnerReferenceNo": reference,
            "originalReferenceNo": record.reference_no,
            "serviceCode": record.service_code,
            "amount": format_amount(record.amount_rupiah),
            "latestTransactionStatus": record.status,
            "transactionStatusDesc": "SUCCESS"
            if record.status == "00"
            else record.response_message,
        }

    def balance(self, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        account_no = require_text(body, "accountNo", length_max=34)
        account = self.bank.accounts.get(account_no)
        if account is None:
            raise SnapError(Cases.invalid_account)
        amount = format_amount(max(0, account.balance_rupiah))
        return Cases.success, {
            "referenceNo": self.bank.next_reference("BI"),
            "partnerReferenceNo": body.get("partnerReferenceNo", ""),
            "accountNo": account_no,
            "name": account.name,
            "accountInfos": [
                {
                    "balanceType": "Cash",
                    "amount": amount,
                    "availableBalance": amount,
                    "ledgerBalance": amount,
                    "holdAmount": format_amount(0),
                }
            ],
        }


class _Refusal(Exception):
    """A transfer the bank looked at and refused, with the code it recorded."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


bank_key = web.AppKey("bank", Bank)
simulator_key = web.AppKey("bank_simulator", Simulator)


def _snap_handler(
    service: Service, action: Callable[[Simulator, dict[str, Any]], tuple[Any, dict[str, Any]]]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        simulator = request.app[simulator_key]
        trouble = simulator.bank.trouble
        if trouble.response_delay_ms:
            await asyncio.sleep(trouble.response_delay_ms / 1000)
        whole = await read_whole(request.content, request_body_bytes_max)
        try:
            if whole is None:
                raise SnapError(Cases.bad_request, "body too large")
            raw = whole
            simulator.authenticate(request, raw)
            try:
                body = json.loads(raw)
            except ValueError as error:
                raise SnapError(Cases.bad_request, "body is not JSON") from error
            if not isinstance(body, dict):
                raise SnapError(Cases.bad_request, "body is not a JSON object")
            case, answer = action(simulator, body)
        except SnapError as error:
            return web.json_response(error.body(service), status=error.case.http_status)
        except _Refusal as refusal:
            return web.json_response(
                {"responseCode": refusal.code, "responseMessage": refusal.message},
                status=int(refusal.code[:3]),
            )
        if trouble.lose_next_answers > 0 and service in (
            Service.transfer_intrabank,
            Service.transfer_interbank,
        ):
            trouble.lose_next_answers -= 1
            assert request.transport is not None
            request.transport.close()  # booked, but the caller never hears so
            return web.Response(status=500)
        return web.json_response(
            {
                "responseCode": response_code(case, service),
                "responseMessage": case.message,
                **answer,
            },
            status=case.http_status,
        )

    return handle


async def _access_token(request: web.Request) -> web.Response:
    simulator = request.app[simulator_key]
    try:
        answer = simulator.issue_token(request)
    except SnapError as error:
        return web.json_response(error.body(Service.access_token), status=error.case.http_status)
    return web.json_response({"responseCode": "2007300", "responseMessage": "Successful", **answer})


# ---------------------------------------------------------------------------- control


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body is not a JSON object")
    return body


async def _control_pay_va(request: web.Request) -> web.Response:
    simulator = request.app[simulator_key]
    body = await _json_object(request)
    try:
        amount = int(body["amount"])
        va_number = str(body["virtualAccountNo"])
    except (KeyError, TypeError, ValueError):
        raise web.HTTPBadRequest(text="need virtualAccountNo and integer amount") from None
    if amount <= 0:
        raise web.HTTPBadRequest(text="amount must be positive")
    try:
        payment = await simulator.pay_va(
            va_number,
            amount,
            payment_request_id=body.get("paymentRequestId"),
            payer_name=str(body.get("payerName", "NASABAH")),
            credit_even_if_refused=bool(body.get("creditEvenIfRefused", False)),
        )
    except BankUnreachable as error:
        raise web.HTTPBadGateway(text=str(error)) from None
    return web.json_response(
        {
            "paymentRequestId": payment.payment_request_id,
            "inquiryResponseCode": payment.inquiry_code,
            "paymentResponseCode": payment.payment_code,
            "credited": payment.credited,
            "answer": payment.answer,
        }
    )


async def _control_pay_qr(request: web.Request) -> web.Response:
    """A rider's app pays the dynamic QRIS code in `qrContent`."""
    simulator = request.app[simulator_key]
    body = await _json_object(request)
    content = body.get("qrContent")
    if not isinstance(content, str):
        raise web.HTTPBadRequest(text="need qrContent")
    try:
        order = await simulator.pay_qr(content)
    except QrisRefused as error:
        raise web.HTTPUnprocessableEntity(text=str(error)) from None
    except BankUnreachable as error:
        raise web.HTTPBadGateway(text=str(error)) from None
    return web.json_response({"referenceNo": order.reference_no, "paid": True})


async def _control_statement(request: web.Request) -> web.Response:
    bank = request.app[bank_key]
    account_no = request.match_info["account"]
    if account_no not in bank.accounts:
        raise web.HTTPNotFound(text=f"no account {account_no}")
    try:
        day = dt.date.fromisoformat(request.match_info["day"])
    except ValueError:
        raise web.HTTPBadRequest(text="day must be YYYY-MM-DD") from None
    statement = bank.statement(account_no, day)
    if request.match_info["format"] == "mt940":
        return web.Response(text=write_mt940(statement), content_type="text/plain")
    return web.Response(text=write_csv(statement), content_type="text/csv")


async def _control_accounts(request: web.Request) -> web.Response:
    bank = request.app[bank_key]
    return web.json_response(
        {
            number: {"name": account.name, "balance": account.balance_rupiah}
            for number, account in bank.accounts.items()
        }
    )


trouble_fields = {
    "rejectAccounts": "reject_accounts",
    "failNextTransfers": "fail_next_transfers",
    "loseNextAnswers": "lose_next_answers",
    "duplicateNextStatementLines": "duplicate_next_statement_lines",
    "unexpectedFeeRupiah": "unexpected_fee_rupiah",
    "responseDelayMs": "response_delay_ms",
    "loseNextNotifications": "lose_next_notifications",
}


async def _control_trouble(request: web.Request) -> web.Response:
    trouble = request.app[bank_key].trouble
    body = await _json_object(request)
    if not set(body) <= set(trouble_fields):
        raise web.HTTPBadRequest(text=f"fields: {', '.join(trouble_fields)}")
    try:  # read everything first: a bad value changes nothing
        values = {
            trouble_fields[name]: (
                {str(account) for account in value}
                if trouble_fields[name] == "reject_accounts"
                else int(value)
            )
            for name, value in body.items()
        }
    except (TypeError, ValueError):
        raise web.HTTPBadRequest(text="rejectAccounts is a list, the others are integers") from None
    for attribute, value in values.items():
        setattr(trouble, attribute, value)
    return web.json_response({"ok": True})


def create_bank_app(settings: BankSettings, clock: Clock = system_clock) -> web.Application:
    accounts = {
        settings.issuer_account_no: ("PEMKOT SEMARANG KSH", settings.issuer_account_opening_rupiah)
    }
    for number, holder, opening in settings.accounts:
        accounts[number] = (holder, opening)
    bank = Bank(settings.name, settings.bank_code, settings.issuer_account_no, accounts, clock)
    simulator = Simulator(settings, bank)
    app = web.Application(client_max_size=request_body_bytes_max * 4)
    app[bank_key] = bank
    app[simulator_key] = simulator

    async def http_client(app: web.Application) -> AsyncIterator[None]:
        simulator.http = aiohttp.ClientSession()
        yield
        await simulator.http.close()

    app.cleanup_ctx.append(http_client)
    prefix = f"{snap_prefix}/v1.0"
    app.router.add_post(f"{prefix}/access-token/b2b", _access_token)
    app.router.add_post(
        f"{prefix}/transfer-intrabank",
        _snap_handler(
            Service.transfer_intrabank, lambda s, b: s.transfer(Service.transfer_intrabank, b)
        ),
    )
    app.router.add_post(
        f"{prefix}/transfer-interbank",
        _snap_handler(
            Service.transfer_interbank, lambda s, b: s.transfer(Service.transfer_interbank, b)
        ),
    )
    app.router.add_post(
        f"{prefix}/transfer/status",
        _snap_handler(Service.transfer_status, lambda s, b: s.transfer_status(b)),
    )
    app.router.add_post(
        f"{prefix}/balance-inquiry",
        _snap_handler(Service.balance_inquiry, lambda s, b: s.balance(b)),
    )
    app.router.add_post(
        f"{prefix}/qr/qr-mpm-generate",
        _snap_handler(Service.qr_mpm_generate, lambda s, b: s.acquirer.generate(b)),
    )
    app.router.add_post(
        f"{prefix}/qr/qr-mpm-query",
        _snap_handler(Service.qr_mpm_query, lambda s, b: s.acquirer.query(b)),
    )
    app.router.add_post("/sim/va-payments", _control_pay_va)
    app.router.add_post("/sim/qris-payments", _control_pay_qr)
    app.router.add_get("/sim/accounts", _control_accounts)
    app.router.add_post("/sim/trouble", _control_trouble)
    app.router.add_get(r"/sim/statements/{account}/{day}.{format:mt940|csv}", _control_statement)
    return app


@contextlib.asynccontextmanager
async def serve_bank(
    settings: BankSettings, host: str = "127.0.0.1", port: int = 0, clock: Clock = system_clock
) -> AsyncIterator[tuple[str, Simulator]]:
    """Run a simulated bank in this event loop; yield its base URL and its simulator.

    Our client's `BankConnection.base_url` is the yielded URL + "/snap". `clock` is the bank's
    time: give it the back office's, so both agree on the day.
    """
    app = create_bank_app(settings, clock)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or ()
    bound_port = sockets[0].getsockname()[1] if sockets else port
    try:
        yield f"http://{host}:{bound_port}", app[simulator_key]
    finally:
        await runner.cleanup()
