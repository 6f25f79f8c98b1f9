"""SNAP response codes: HTTP status (3) + service code (2) + case code (2), and their messages.

One table of the cases we answer or understand; `SnapError` carries one of them to the edge,
where it becomes ``{"responseCode", "responseMessage"}`` with the matching HTTP status.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Service(enum.IntEnum):
    balance_inquiry = 11
    transfer_intrabank = 17
    transfer_interbank = 18
    va_inquiry = 24
    va_payment = 25
    transfer_status = 36
    qr_mpm_generate = 47
    qr_mpm_query = 51
    qr_mpm_notify = 52
    access_token = 73


@dataclass(frozen=True, slots=True)
class Case:
    http_status: int
    case_code: str
    message: str


class Cases:
    success = Case(200, "00", "Successful")
    in_progress = Case(202, "00", "Request In Progress")
    bad_request = Case(400, "00", "Bad Request")
    invalid_field_format = Case(400, "01", "Invalid Field Format")
    invalid_mandatory_field = Case(400, "02", "Invalid Mandatory Field")
    unauthorized = Case(401, "00", "Unauthorized")
    invalid_token = Case(401, "01", "Invalid Token (B2B)")
    token_not_found = Case(401, "03", "Token Not Found (B2B)")
    transaction_expired = Case(403, "00", "Transaction Expired")
    insufficient_funds = Case(403, "14", "Insufficient Funds")
    inactive_account = Case(403, "18", "Inactive Card/Account/Customer")
    transaction_not_found = Case(404, "01", "Transaction Not Found")
    invalid_account = Case(404, "11", "Invalid Card/Account/Customer/Virtual Account")
    invalid_bill = Case(404, "12", "Invalid Bill/Virtual Account")
    invalid_amount = Case(404, "13", "Invalid Amount")
    paid_bill = Case(404, "14", "Bill has been paid")
    external_id_conflict = Case(409, "00", "Conflict")
    duplicate_reference = Case(409, "01", "Duplicate partnerReferenceNo")
    general_error = Case(500, "00", "General Error")
    internal_error = Case(500, "01", "Internal Server Error")
    external_error = Case(500, "02", "External Server Error")
    timeout = Case(504, "00", "Timeout")


def response_code(case: Case, service: Service) -> str:
    return f"{case.http_status}{service.value:02d}{case.case_code}"


def parse_response_code(code: str) -> tuple[int, int, str] | None:
    """(HTTP status, service, case) of a 7-digit code; None when it is not one."""
    if len(code) != 7 or not code.isdigit():
        return None
    return int(code[:3]), int(code[3:5]), code[5:]


class SnapError(Exception):
    """A request we answer with an error code: the case, and the detail that names the cause."""

    def __init__(self, case: Case, detail: str = "") -> None:
        super().__init__(f"{case.message} {detail}".strip())
        self.case = case
        self.detail = detail

    def message(self) -> str:
        text = f"{self.case.message} {self.detail}".strip() if self.detail else self.case.message
        return text[:150]  # responseMessage is at most 150 characters

    def body(self, service: Service) -> dict[str, str]:
        return {
            "responseCode": response_code(self.case, service),
            "responseMessage": self.message(),
        }
