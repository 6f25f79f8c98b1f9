"""Calling a bank over SNAP BI: the access token (cached, refreshed), signed requests, and the
services we use as a client: intrabank (17) and interbank (18) transfers for payouts, transfer
status (36) and balance inquiry (11).

Retrying a transfer is safe because every attempt carries the same `partnerReferenceNo` and the
same body bytes; the bank books a reference once. When no attempt gets an answer, the outcome
is `unknown`: the caller resolves it with `transfer_status`, never by paying again under a new
reference. `not_found` from a status inquiry means the bank never saw the reference, so sending
the same instruction again (same reference) is safe.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateways.snap import signature
from gateways.snap.bodies import read_whole
from gateways.snap.codes import Service, parse_response_code
from gateways.snap.fields import format_amount, parse_amount_text
from ledger.clock import Clock, system_clock

logger = logging.getLogger("ksh.snap.client")

access_token_refresh_margin_seconds = 60  # refresh a little before the bank's expiry
response_body_bytes_max = 64 * 1024
attempts_max_default = 3
timeout_ms_default = 10_000
retry_backoff_ms = 200


class BankUnreachable(Exception):
    """No usable answer from the bank (connection refused, timeout, garbage)."""


@dataclass(frozen=True, slots=True)
class BankConnection:
    """Everything needed to call one bank as a SNAP client."""

    base_url: str  # e.g. "http://127.0.0.1:8091/snap"; paths "/v1.0/..." are appended
    client_key: str  # our client id at the bank: X-CLIENT-KEY and X-PARTNER-ID
    client_secret: str  # HMAC key for transaction signatures
    private_key_pem: bytes  # our RSA key: signs the access-token request
    channel_id: str
    timeout_ms: int = timeout_ms_default
    attempts_max: int = attempts_max_default
    clock: Clock = system_clock  # X-TIMESTAMP and the token's lifetime

    def __post_init__(self) -> None:
        assert self.attempts_max >= 1
        assert self.timeout_ms > 0


@dataclass(frozen=True, slots=True)
class SnapResponse:
    http_status: int
    body: dict[str, Any]

    @property
    def response_code(self) -> str:
        return str(self.body.get("responseCode", ""))

    @property
    def case_code(self) -> str:
        parsed = parse_response_code(self.response_code)
        return parsed[2] if parsed else ""

    @property
    def response_message(self) -> str:
        return str(self.body.get("responseMessage", ""))


class _ExternalIds:
    """X-EXTERNAL-ID: numeric, unique per day; a random 18-digit prefix per session plus a
    counter (the clock is no source of uniqueness: a test's clock may stand still)."""

    def __init__(self) -> None:
        self._prefix = secrets.randbelow(10**18)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix:018d}{next(self._counter):09d}"


class SnapSession:
    """Signed SNAP requests to one counterparty, with its access token cached and refreshed.

    Used by our payout client and by the bank simulator when it calls us.
    """

    def __init__(self, connection: BankConnection, http: aiohttp.ClientSession) -> None:
        self.connection = connection
        self.http = http
        self._private_key = signature.load_private_key(connection.private_key_pem)
        self._token: str | None = None
        self._token_expires_monotonic = 0.0
        self._token_lock = asyncio.Lock()
        self._external_ids = _ExternalIds()
        self.token_requests = 0  # how many tokens we asked for (tests check the cache)

    def _url(self, path: str) -> str:
        return self.connection.base_url.rstrip("/") + path

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.connection.timeout_ms / 1000)

    async def _read(self, response: aiohttp.ClientResponse) -> SnapResponse:
        raw = await read_whole(response.content, response_body_bytes_max)
        if raw is None:
            raise BankUnreachable(f"response larger than {response_body_bytes_max} bytes")
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as error:
            raise BankUnreachable(f"response is not JSON: {error}") from error
        if not isinstance(body, dict):
            raise BankUnreachable("response is not a JSON object")
        return SnapResponse(response.status, body)

    async def access_token(self, *, refresh: bool = False) -> str:
        async with self._token_lock:
            fresh = self.connection.clock.monotonic() < self._token_expires_monotonic
            if self._token is not None and fresh and not refresh:
                return self._token
            timestamp = signature.format_timestamp(self.connection.clock.now())
            headers = {
                "Content-Type": "application/json",
                "X-TIMESTAMP": timestamp,
                "X-CLIENT-KEY": self.connection.client_key,
                "X-SIGNATURE": signature.sign_access_token(
                    self._private_key, self.connection.client_key, timestamp
                ),
            }
            body = signature.minified_json({"grantType": "client_credentials"})
            self.token_requests += 1
            try:
                async with self.http.post(
                    self._url("/v1.0/access-token/b2b"),
                    data=body,
                    headers=headers,
                    timeout=self._timeout(),
                ) as response:
                    answer = await self._read(response)
            except (aiohttp.ClientError, TimeoutError) as error:
                raise BankUnreachable(f"access token: {error!r}") from error
            token = answer.body.get("accessToken")
            if answer.http_status != 200 or not isinstance(token, str) or not token:
                raise BankUnreachable(
                    f"access token refused: {answer.response_code} {answer.response_message}"
                )
            try:
                expires_in_seconds = int(answer.body.get("expiresIn", 900))
            except (TypeError, ValueError):
                expires_in_seconds = 900
            self._token = token
            self._token_expires_monotonic = (
                self.connection.clock.monotonic()
                + expires_in_seconds
                - access_token_refresh_margin_seconds
            )
            return token

    async def post(self, path: str, payload: dict[str, Any]) -> SnapResponse:
        """One signed POST (a new X-EXTERNAL-ID each time); refresh the token once if refused.

        Raises BankUnreachable when there is no answer within the timeout.
        """
        body = signature.minified_json(payload)
        response = await self._post_once(path, body, await self.access_token())
        if response.http_status == 401 and response.case_code in ("01", "03"):
            response = await self._post_once(path, body, await self.access_token(refresh=True))
        return response

    async def _post_once(self, path: str, body: bytes, token: str) -> SnapResponse:
        url = self._url(path)
        signed_path = urlsplit(url).path
        timestamp = signature.format_timestamp(self.connection.clock.now())
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
            "X-TIMESTAMP": timestamp,
            "X-SIGNATURE": signature.sign_transaction(
                self.connection.client_secret, "POST", signed_path, token, body, timestamp
            ),
            "X-PARTNER-ID": self.connection.client_key,
            "X-EXTERNAL-ID": self._external_ids.next(),
            "CHANNEL-ID": self.connection.channel_id,
        }
        try:
            async with self.http.post(
                url, data=body, headers=headers, timeout=self._timeout()
            ) as response:
                return await self._read(response)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise BankUnreachable(f"POST {signed_path}: {error!r}") from error


# ---------------------------------------------------------------------------- payouts


class PayoutState(enum.Enum):
    """Where a payout stands at the bank, as its answers tell."""

    succeeded = "succeeded"  # the bank moved the money
    in_progress = "in_progress"  # accepted, not final yet: ask again with transfer_status
    failed = "failed"  # refused for good (bad account, funds, format): nothing moved
    unknown = "unknown"  # no answer: resolve with transfer_status, never by paying again
    not_found = "not_found"  # status says the bank never saw it: resending (same ref) is safe


@dataclass(frozen=True, slots=True)
class Payout:
    """One instruction: pay `amount_rupiah` from our account to a beneficiary."""

    partner_reference_no: str  # our stable id for this payout; the bank books it once
    source_account_no: str
    beneficiary_account_no: str
    amount_rupiah: int
    transaction_date: datetime
    beneficiary_bank_code: str = ""  # empty: same bank (intrabank); else interbank
    beneficiary_account_name: str = ""
    remark: str = ""

    def __post_init__(self) -> None:
        assert self.amount_rupiah > 0, "a payout moves a positive amount"
        assert 1 <= len(self.partner_reference_no) <= 64

    @property
    def service(self) -> Service:
        if self.beneficiary_bank_code:
            return Service.transfer_interbank
        return Service.transfer_intrabank

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "partnerReferenceNo": self.partner_reference_no,
            "amount": format_amount(self.amount_rupiah),
            "beneficiaryAccountNo": self.beneficiary_account_no,
            "sourceAccountNo": self.source_account_no,
            "transactionDate": signature.format_timestamp(self.transaction_date),
            "remark": self.remark[:50],
        }
        if self.beneficiary_bank_code:
            body["beneficiaryBankCode"] = self.beneficiary_bank_code
            body["beneficiaryAccountName"] = self.beneficiary_account_name
        return body


@dataclass(frozen=True, slots=True)
class PayoutOutcome:
    """What came of sending a payout (or asking the bank about it)."""

    partner_reference_no: str
    state: PayoutState
    response_code: str = ""
    response_message: str = ""
    bank_reference_no: str = ""
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class AccountBalance:
    account_no: str
    available_rupiah: int
    ledger_rupiah: int


transfer_paths = {
    Service.transfer_intrabank: "/v1.0/transfer-intrabank",
    Service.transfer_interbank: "/v1.0/transfer-interbank",
}
transfer_status_path = "/v1.0/transfer/status"
balance_inquiry_path = "/v1.0/balance-inquiry"

# Answers after which retrying the same request cannot help; anything else 5xx is retried.
_final_failure_statuses = frozenset({400, 401, 403, 404})


def classify_transfer_answer(response: SnapResponse) -> PayoutState:
    if response.http_status == 200:
        return PayoutState.succeeded
    if response.http_status == 202:
        return PayoutState.in_progress
    if response.http_status == 409 and response.case_code == "01":
        # Duplicate partnerReferenceNo: an earlier attempt reached the bank; ask its status.
        return PayoutState.unknown
    if response.http_status in _final_failure_statuses:
        return PayoutState.failed
    return PayoutState.unknown


def status_from_inquiry(response: SnapResponse) -> PayoutState:
    if response.http_status == 404 and response.case_code == "01":
        return PayoutState.not_found
    if response.http_status != 200:
        return PayoutState.unknown
    latest = str(response.body.get("latestTransactionStatus", ""))
    return {
        "00": PayoutState.succeeded,
        "01": PayoutState.in_progress,  # initiated
        "02": PayoutState.in_progress,  # paying
        "03": PayoutState.in_progress,  # pending
        "04": PayoutState.failed,  # refunded
        "05": PayoutState.failed,  # cancelled
        "06": PayoutState.failed,  # failed
        "07": PayoutState.not_found,
    }.get(latest, PayoutState.unknown)


@dataclass
class BankClient:
    """Our payouts, status and balance calls to one bank."""

    session: SnapSession
    sleep: Any = field(default=asyncio.sleep)  # injectable for tests of the backoff

    @classmethod
    def open(cls, connection: BankConnection, http: aiohttp.ClientSession) -> BankClient:
        return cls(SnapSession(connection, http))

    async def transfer(self, payout: Payout) -> PayoutOutcome:
        """Send the payout, retrying (same reference, same body) while there is no answer."""
        path = transfer_paths[payout.service]
        body = payout.body()
        attempts_max = self.session.connection.attempts_max
        last_error = ""
        for attempt in range(1, attempts_max + 1):
            try:
                response = await self.session.post(path, body)
            except BankUnreachable as error:
                last_error = str(error)
                logger.warning(
                    "payout %s attempt %d: %s", payout.partner_reference_no, attempt, error
                )
                if attempt < attempts_max:
                    await self.sleep(retry_backoff_ms * attempt / 1000)
                continue
            state = classify_transfer_answer(response)
            if (
                state is PayoutState.unknown
                and response.http_status >= 500
                and attempt < attempts_max
            ):
                await self.sleep(retry_backoff_ms * attempt / 1000)
                continue
            if state is PayoutState.failed and attempt > 1:
                # An earlier attempt went unanswered (or got a 5xx) and may have moved the
                # money; a refusal of the repeat says nothing about it. Only the status
                # inquiry may call this payout failed (and so let staff pay it again).
                state = PayoutState.unknown
            return PayoutOutcome(
                payout.partner_reference_no,
                state,
                response.response_code,
                response.response_message,
                str(response.body.get("referenceNo", "")),
                attempt,
            )
        return PayoutOutcome(
            payout.partner_reference_no, PayoutState.unknown, "", last_error, "", attempts_max
        )

    async def transfer_status(self, payout: Payout) -> PayoutOutcome:
        """What the bank knows of the payout's reference (resolves `unknown`)."""
        body = {
            "originalPartnerReferenceNo": payout.partner_reference_no,
            "serviceCode": f"{payout.service.value:02d}",
            "transactionDate": signature.format_timestamp(payout.transaction_date),
        }
        try:
            response = await self.session.post(transfer_status_path, body)
        except BankUnreachable as error:
            return PayoutOutcome(payout.partner_reference_no, PayoutState.unknown, "", str(error))
        return PayoutOutcome(
            payout.partner_reference_no,
            status_from_inquiry(response),
            response.response_code,
            response.response_message,
            str(response.body.get("originalReferenceNo", "")),
            1,
        )

    async def pay(self, payout: Payout, *, status_checks_max: int = 3) -> PayoutOutcome:
        """Transfer, and if the outcome is unknown or in progress, ask the status (never re-pay
        under another reference). `not_found` after an unanswered send: send again, same body."""
        outcome = await self.transfer(payout)
        for _ in range(status_checks_max):
            if outcome.state not in (PayoutState.unknown, PayoutState.in_progress):
                return outcome
            status = await self.transfer_status(payout)
            if status.state is PayoutState.not_found:
                outcome = await self.transfer(payout)
                continue
            outcome = status
            if outcome.state is PayoutState.in_progress:
                await self.sleep(retry_backoff_ms / 1000)
        return outcome

    async def balance(self, account_no: str, partner_reference_no: str) -> AccountBalance:
        body = {"partnerReferenceNo": partner_reference_no, "accountNo": account_no}
        response = await self.session.post(balance_inquiry_path, body)
        if response.http_status != 200:
            raise BankUnreachable(
                f"balance inquiry refused: {response.response_code} {response.response_message}"
            )
        infos = response.body.get("accountInfos") or [{}]
        info = infos[0] if isinstance(infos, list) and infos and isinstance(infos[0], dict) else {}
        available = parse_amount_text(info.get("availableBalance"))
        ledger = parse_amount_text(info.get("ledgerBalance"))
        if available is None or ledger is None:
            raise BankUnreachable("balance inquiry answer has no readable balances")
        return AccountBalance(account_no, available, ledger)
