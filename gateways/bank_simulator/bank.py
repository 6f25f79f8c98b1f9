"""The simulated bank's books and rules, apart from HTTP: accounts, transfers, VA collections,
statements, and the trouble a test can inject. Time comes from `clock` (`ledger.clock`), the
same clock as the back office's, so a test or the demo pins the day for both.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from typing import Any

from gateways.bank_simulator.statements import BankLine, Direction, Statement
from ledger.clock import Clock, system_clock

account_lines_max = 10_000_000  # a simulator's lifetime of movements on one account
transfer_amount_max_rupiah = 250_000_000  # BI-FAST's per-transaction limit, for every route


@dataclass
class BankAccount:
    account_no: str
    name: str
    opening_rupiah: int
    lines: list[BankLine] = field(default_factory=list)

    @property
    def balance_rupiah(self) -> int:
        return self.opening_rupiah + sum(line.signed_rupiah for line in self.lines)


@dataclass
class Trouble:
    """Faults a test switches on; each `*_next_*` counter is used up one event at a time."""

    reject_accounts: set[str] = field(default_factory=set)  # beneficiary refused (inactive)
    fail_next_transfers: int = 0  # answered 500, nothing moves
    lose_next_answers: int = 0  # the transfer is booked, the answer never arrives
    duplicate_next_statement_lines: int = 0  # the bank lists a movement twice
    unexpected_fee_rupiah: int = 0  # charged once, on the next transfer
    response_delay_ms: int = 0  # every SNAP answer waits this long
    lose_next_notifications: int = 0  # a QRIS payment is made, the issuer never hears of it


@dataclass(frozen=True, slots=True)
class TransferRecord:
    partner_reference_no: str
    reference_no: str
    service_code: str
    source_account_no: str
    beneficiary_account_no: str
    beneficiary_bank_code: str
    amount_rupiah: int
    fee_rupiah: int
    status: str  # "00" success, "06" failed (SNAP latestTransactionStatus)
    response_code: str
    response_message: str
    booked_at: dt.datetime


@dataclass(frozen=True, slots=True)
class VaPayment:
    """One VA payment the bank tried to make to the issuer, and how it ended."""

    payment_request_id: str
    virtual_account_no: str
    amount_rupiah: int
    inquiry_code: str
    payment_code: str
    credited: bool  # the issuer's account was credited
    answer: dict[str, Any]


class Bank:
    """Accounts keyed by number; the issuer's account collects VA payments and pays payouts."""

    def __init__(
        self,
        name: str,
        bank_code: str,
        issuer_account_no: str,
        accounts: dict[str, tuple[str, int]],
        clock: Clock = system_clock,
    ) -> None:
        assert issuer_account_no in accounts, "the issuer's account must be one of the accounts"
        self.name = name
        self.bank_code = bank_code
        self.issuer_account_no = issuer_account_no
        self.accounts = {
            number: BankAccount(number, holder, opening)
            for number, (holder, opening) in accounts.items()
        }
        self.clock = clock
        self.trouble = Trouble()
        self.transfers: dict[str, TransferRecord] = {}
        self.va_payments: list[VaPayment] = []
        self.outgoing_interbank: list[TransferRecord] = []
        self._references = itertools.count(1)

    def today(self) -> dt.date:
        return self.clock.today()

    def next_reference(self, prefix: str) -> str:
        return f"{prefix}{self.today():%y%m%d}{next(self._references):06d}"

    def post(self, account_no: str, line: BankLine) -> None:
        account = self.accounts[account_no]
        account.lines.append(line)
        if self.trouble.duplicate_next_statement_lines > 0:
            self.trouble.duplicate_next_statement_lines -= 1
            account.lines.append(line)  # the statement shows it twice; the balance too
        assert len(account.lines) <= account_lines_max

    def credit_collection(self, amount_rupiah: int, reference: str, description: str) -> str:
        bank_reference = self.next_reference("VA")
        self.post(
            self.issuer_account_no,
            BankLine(
                self.today(),
                Direction.credit,
                amount_rupiah,
                reference,
                bank_reference,
                "NTRF",
                description,
            ),
        )
        return bank_reference

    def statement(self, account_no: str, day: dt.date) -> Statement:
        """The account's movements on `day` (Jakarta), opening from all earlier days."""
        account = self.accounts[account_no]
        earlier = sum(line.signed_rupiah for line in account.lines if line.value_date < day)
        lines = tuple(line for line in account.lines if line.value_date == day)
        days_with_lines = sorted(
            {line.value_date for line in account.lines if line.value_date <= day}
        )
        number = len(days_with_lines) or 1
        return Statement(account_no, day, number, account.opening_rupiah + earlier, lines)

    def transfer(
        self,
        service_code: str,
        partner_reference_no: str,
        source_account_no: str,
        beneficiary_account_no: str,
        beneficiary_bank_code: str,
        amount_rupiah: int,
        fee_rupiah: int,
    ) -> TransferRecord:
        """Execute a transfer once per partnerReferenceNo (the caller checks repeats first)."""
        assert partner_reference_no not in self.transfers
        now = self.clock.local_now()
        reference_no = self.next_reference("TF")

        def record(status: str, code: str, message: str, fee: int = 0) -> TransferRecord:
            result = TransferRecord(
                partner_reference_no,
                reference_no,
                service_code,
                source_account_no,
                beneficiary_account_no,
                beneficiary_bank_code,
                amount_rupiah,
                fee,
                status,
                code,
                message,
                now,
            )
            self.transfers[partner_reference_no] = result
            return result

        intrabank = service_code == "17"
        source = self.accounts.get(source_account_no)
        if source is None:
            return record("06", "4041711" if intrabank else "4041811", "Invalid Account")
        if beneficiary_account_no in self.trouble.reject_accounts:
            return record("06", f"403{service_code}18", "Inactive Card/Account/Customer")
        if intrabank and beneficiary_account_no not in self.accounts:
            return record("06", "4041711", "Invalid Card/Account/Customer/Virtual Account")
        if amount_rupiah > transfer_amount_max_rupiah:
            return record("06", f"404{service_code}13", "Invalid Amount")
        extra_fee = self.trouble.unexpected_fee_rupiah
        if source.balance_rupiah < amount_rupiah + fee_rupiah + extra_fee:
            return record("06", f"403{service_code}14", "Insufficient Funds")
        self.trouble.unexpected_fee_rupiah = 0
        today = self.today()
        description = f"TRANSFER KE {beneficiary_account_no} {partner_reference_no}"
        self.post(
            source_account_no,
            BankLine(
                today,
                Direction.debit,
                amount_rupiah,
                partner_reference_no,
                reference_no,
                "NTRF",
                description,
            ),
        )
        for fee, label in ((fee_rupiah, "BIAYA TRANSFER"), (extra_fee, "BIAYA LAIN-LAIN")):
            if fee > 0:
                self.post(
                    source_account_no,
                    BankLine(
                        today,
                        Direction.debit,
                        fee,
                        partner_reference_no,
                        reference_no,
                        "NCHG",
                        f"{label} {partner_reference_no}",
                    ),
                )
        if intrabank:
            self.post(
                beneficiary_account_no,
                BankLine(
                    today,
                    Direction.credit,
                    amount_rupiah,
                    partner_reference_no,
                    reference_no,
                    "NTRF",
                    f"TRANSFER DARI {source_account_no} {partner_reference_no}",
                ),
            )
        result = record("00", f"200{service_code}00", "Successful", fee_rupiah + extra_fee)
        if not intrabank:
            self.outgoing_interbank.append(result)
        return result
