"""The ledger's vocabulary: accounts, transfers, their flags and codes, results, limits, ids.

Money is integer rupiah. Ids are 128-bit `uuid.UUID`s made by the client (see `derive_id`).
An account has four running totals, as in TigerBeetle: debits and credits, each pending (held
by a two-phase transfer) and posted. A card purse is a liability of the issuer, so topping up
credits it and a fare debits it; its spendable balance is `credits_posted - debits_posted -
debits_pending`.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

currency_default = "IDR"
transfers_per_batch_max_default = 8190
accounts_per_batch_max = 8190
# Amounts and running totals are PostgreSQL bigint.
amount_max = 2**63 - 1
code_max = 2**31 - 1  # stored as integer (int4)
timeout_s_max = 2**31 - 1  # stored as integer (int4)
reference_number_max = 2**63 - 1  # terminal_sequence, card_counter: bigint, not negative
id_zero = uuid.UUID(int=0)
id_max = uuid.UUID(int=2**128 - 1)
owner_reference_length_max = 200
reference_length_max = 100
metadata_length_max = 2000


class AccountKind(enum.StrEnum):
    card_purse = "card_purse"  # one per card: the issuer owes the cardholder its balance
    pending_top_up = "pending_top_up"  # paid at the bank, not yet written to the card
    bank_clearing = "bank_clearing"  # one per bank: collections and payouts in flight there
    operator_revenue = "operator_revenue"  # fares earned by the bus operator
    operator_payable = "operator_payable"  # what the issuer owes the operator, closed at EOD
    merchant_payable = "merchant_payable"  # one per merchant: sales owed to the merchant
    fee_income = "fee_income"  # the issuer's fees (merchant discount, top-up fees)
    fee_expense = "fee_expense"  # fees banks charge the issuer
    settlement_in_transit = "settlement_in_transit"  # paid out, not yet on the statement
    bank_account = "bank_account"  # the issuer's own account(s) at a bank
    suspense = "suspense"  # what reconciliation or a flagged card cannot explain yet
    card_deposit = "card_deposit"  # card issuance fees / deposits held
    equity = "equity"  # opening balances and write-offs decided by finance
    refund_payable = "refund_payable"  # owed back to a payer (a pending top-up never taken)


class AccountFlags(enum.IntFlag):
    none = 0
    debits_must_not_exceed_credits = 1 << 0  # card purses: never below zero
    credits_must_not_exceed_debits = 1 << 1
    closed = 1 << 2  # no transfer may touch it, except voiding a pending one


class TransferFlags(enum.IntFlag):
    none = 0
    linked = 1 << 0  # books together with the next transfer of the batch, or none do
    pending = 1 << 1  # a hold: moves the amount into the pending totals
    post_pending = 1 << 2  # posts a pending transfer (whole, or part with `amount`)
    void_pending = 1 << 3  # releases a pending transfer
    # Book even past a must-not-exceed limit: for facts already committed elsewhere (a tap the
    # card committed offline). The outcome reports `over_limit` so the caller can flag the card.
    force = 1 << 4


# The SQL (migrations, audit, export, expiry) spells these bits as numbers: keep them.
assert TransferFlags.pending == 2
assert TransferFlags.post_pending == 4
assert TransferFlags.void_pending == 8
all_transfer_flags = TransferFlags(sum(TransferFlags))
two_phase_flags = TransferFlags.pending | TransferFlags.post_pending | TransferFlags.void_pending
resolve_flags = TransferFlags.post_pending | TransferFlags.void_pending


class TransferCode(enum.IntEnum):
    """Why money moved. Callers may use other positive codes; these are the ones we name."""

    fare = 1  # card purse -> operator revenue (a tap)
    merchant_sale = 2  # card purse -> merchant payable (a POS sale)
    merchant_fee = 3  # merchant payable -> fee income (linked with its sale)
    top_up = 4  # bank clearing / bank account -> card purse (kiosk, online)
    pending_top_up = 5  # bank clearing -> pending top-up (virtual account paid)
    top_up_delivery = 6  # pending top-up -> card purse (written to the card at a reader)
    payout = 7  # payable -> settlement in transit (payout instructed)
    payout_settled = 8  # settlement in transit -> bank account / clearing (seen on statement)
    bank_fee = 9  # bank account -> fee expense
    refund = 10  # revenue / payable -> card purse
    correction = 11  # staff correction (a new transfer, never an edit)
    suspense = 12  # anything -> suspense or back
    operator_settlement = 13  # operator revenue -> operator payable (end of day)
    card_issue = 14  # card sale / deposit
    expiry = 15  # booked by the ledger when a pending transfer expires (void)
    qris_payment = 16  # acquirer's QRIS clearing -> merchant payable (a QRIS sale confirmed)
    qris_mdr = 17  # merchant payable -> acquirer's QRIS clearing (the MDR it keeps)
    card_replacement = 18  # a lost card's purse / pending top-ups -> its replacement's pending
    cash_handover = 19  # a cashier's counted drawer -> the cash office (end of shift)
    top_up_expiry = 20  # an expired pending top-up -> refund payable (given back to its payer)
    pass_sale = 21  # a seller's drawer -> operator revenue (a pass sold); reversed if cancelled


class CreateAccountResult(enum.Enum):
    """Checked in this order; the first that applies is the account's result."""

    created = "created"
    batch_too_large = "batch_too_large"
    id_must_not_be_zero = "id_must_not_be_zero"
    id_must_not_be_max = "id_must_not_be_max"
    flags_are_mutually_exclusive = "flags_are_mutually_exclusive"
    kind_must_be_an_account_kind = "kind_must_be_an_account_kind"
    currency_must_be_three_letters = "currency_must_be_three_letters"  # ISO 4217: A-Z
    owner_reference_too_long = "owner_reference_too_long"
    exists_with_different_kind = "exists_with_different_kind"
    exists_with_different_flags = "exists_with_different_flags"
    exists_with_different_currency = "exists_with_different_currency"
    exists_with_different_owner_reference = "exists_with_different_owner_reference"
    exists = "exists"


class CreateTransferResult(enum.Enum):
    """Checked in the order listed (after `created`); the first that applies wins.

    Validation of the transfer itself comes first, then idempotency (`exists*` compares the
    repeat with what was booked), then what depends on the state of the books.
    """

    created = "created"
    batch_too_large = "batch_too_large"
    linked_event_failed = "linked_event_failed"
    linked_event_chain_open = "linked_event_chain_open"
    id_must_not_be_zero = "id_must_not_be_zero"
    id_must_not_be_max = "id_must_not_be_max"
    reserved_flag = "reserved_flag"  # a flag bit the ledger does not define
    flags_are_mutually_exclusive = "flags_are_mutually_exclusive"
    debit_account_id_must_not_be_zero = "debit_account_id_must_not_be_zero"
    credit_account_id_must_not_be_zero = "credit_account_id_must_not_be_zero"
    accounts_must_be_different = "accounts_must_be_different"
    pending_id_must_be_zero = "pending_id_must_be_zero"
    pending_id_must_not_be_zero = "pending_id_must_not_be_zero"
    pending_id_must_be_different = "pending_id_must_be_different"
    timeout_reserved_for_pending_transfer = "timeout_reserved_for_pending_transfer"
    timeout_must_not_be_negative = "timeout_must_not_be_negative"
    timeout_too_large = "timeout_too_large"
    amount_must_be_positive = "amount_must_be_positive"
    amount_too_large = "amount_too_large"
    code_must_be_positive = "code_must_be_positive"
    code_too_large = "code_too_large"
    reference_too_long = "reference_too_long"
    reference_must_be_text = "reference_must_be_text"  # UTF-8 without NUL (PostgreSQL text)
    reference_out_of_range = "reference_out_of_range"  # terminal sequence, card counter
    metadata_too_long = "metadata_too_long"
    metadata_must_be_json = "metadata_must_be_json"  # JSON text jsonb takes (no \u0000)
    exists_with_different_flags = "exists_with_different_flags"
    exists_with_different_pending_id = "exists_with_different_pending_id"
    exists_with_different_timeout = "exists_with_different_timeout"
    exists_with_different_debit_account_id = "exists_with_different_debit_account_id"
    exists_with_different_credit_account_id = "exists_with_different_credit_account_id"
    exists_with_different_amount = "exists_with_different_amount"
    exists_with_different_code = "exists_with_different_code"
    exists_with_different_references = "exists_with_different_references"
    exists_with_different_metadata = "exists_with_different_metadata"
    exists = "exists"
    debit_account_not_found = "debit_account_not_found"
    credit_account_not_found = "credit_account_not_found"
    accounts_must_have_the_same_currency = "accounts_must_have_the_same_currency"
    pending_transfer_not_found = "pending_transfer_not_found"
    pending_transfer_not_pending = "pending_transfer_not_pending"
    pending_transfer_has_different_debit_account_id = (
        "pending_transfer_has_different_debit_account_id"
    )
    pending_transfer_has_different_credit_account_id = (
        "pending_transfer_has_different_credit_account_id"
    )
    pending_transfer_has_different_code = "pending_transfer_has_different_code"
    exceeds_pending_transfer_amount = "exceeds_pending_transfer_amount"
    pending_transfer_has_different_amount = "pending_transfer_has_different_amount"
    pending_transfer_already_posted = "pending_transfer_already_posted"
    pending_transfer_already_voided = "pending_transfer_already_voided"
    pending_transfer_expired = "pending_transfer_expired"
    debit_account_closed = "debit_account_closed"
    credit_account_closed = "credit_account_closed"
    overflows_debits = "overflows_debits"
    overflows_credits = "overflows_credits"
    exceeds_credits = "exceeds_credits"
    exceeds_debits = "exceeds_debits"


booked_results = frozenset({CreateTransferResult.created, CreateTransferResult.exists})


@dataclass(frozen=True, slots=True)
class Account:
    id: uuid.UUID
    kind: AccountKind
    owner_reference: str = ""  # who or what it belongs to: card number, merchant id, bank code
    flags: AccountFlags = AccountFlags.none
    currency: str = currency_default


@dataclass(frozen=True, slots=True)
class Balances:
    """An account's running totals, in rupiah."""

    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    @property
    def credit_balance(self) -> int:
        """Posted credits minus posted debits: the balance of a liability such as a purse."""
        return self.credits_posted - self.debits_posted

    @property
    def debit_balance(self) -> int:
        """Posted debits minus posted credits: the balance of an asset such as a bank account."""
        return self.debits_posted - self.credits_posted

    @property
    def available_credit_balance(self) -> int:
        """What a purse can still spend: posted credits minus posted and held debits."""
        return self.credits_posted - self.debits_posted - self.debits_pending


@dataclass(frozen=True, slots=True)
class BookedAccount:
    account: Account
    created_at: datetime
    balances: Balances


class Transfer(NamedTuple):
    """One movement of `amount` rupiah from the debit account to the credit account.

    For `post_pending`/`void_pending`, the accounts and code may be left out (taken from the
    pending transfer); a post's `amount` may be left out too (the whole pending amount).
    The references say where the transfer came from; all are optional.

    A named tuple rather than a dataclass: batches make tens of thousands of these, and a
    tuple is built several times faster than a frozen dataclass.
    """

    id: uuid.UUID
    debit_account_id: uuid.UUID | None
    credit_account_id: uuid.UUID | None
    amount: int | None
    code: int
    flags: TransferFlags = TransferFlags.none
    pending_id: uuid.UUID | None = None
    timeout_s: int = 0  # pending only: expires this many seconds after booking (0: never)
    terminal_id: str | None = None
    terminal_sequence: int | None = None
    card_number: str | None = None
    card_counter: int | None = None
    bank_reference: str | None = None
    settlement_batch: str | None = None
    metadata: str | None = None  # JSON text, stored as jsonb


class TransferOutcome(NamedTuple):
    """The result for one transfer of a batch; for `created`/`exists`, where it was booked.
    (A named tuple, like `Transfer`: one is made per transfer booked.)"""

    id: uuid.UUID
    result: CreateTransferResult
    sequence: int | None = None  # booking order, strictly increasing, gapless
    booked_at: datetime | None = None
    over_limit: bool = False  # booked with `force` past the debit or credit account's limit


@dataclass(frozen=True, slots=True)
class BookedTransfer:
    """A transfer as booked: post/void fields resolved, plus when and the balances after."""

    transfer: Transfer
    sequence: int
    batch_number: int
    booked_at: datetime
    debit_balances_after: Balances
    credit_balances_after: Balances


@dataclass(frozen=True, slots=True)
class AccountStatementLine:
    """One line of an account's statement (`account_statement`): one transfer as seen from
    the account, with the account's totals after it. (Not a bank statement's line.)"""

    sequence: int
    booked_at: datetime
    transfer_id: uuid.UUID
    code: int
    flags: TransferFlags
    amount: int
    side: str  # "debit" or "credit"
    other_account_id: uuid.UUID
    balances_after: Balances


def derive_id(namespace: str, *parts: str | int | bytes) -> uuid.UUID:
    """A stable 128-bit id from a namespace and parts: BLAKE2b-128 over a length-prefixed
    encoding, so ("ab", "c") and ("a", "bc") differ. Example: derive_id("card-tap",
    card_number, card_counter) names a tap wherever it is uploaded from.
    """
    digest = hashlib.blake2b(digest_size=16, person=b"ksh-ledger-id")
    for part in (namespace, *parts):
        if isinstance(part, bytes):
            encoded = b"b" + part
        elif isinstance(part, bool):
            raise TypeError("derive_id parts must be str, int or bytes, not bool")
        elif isinstance(part, int):
            encoded = b"i" + str(part).encode()
        else:
            encoded = b"s" + part.encode("utf-8")
        digest.update(len(encoded).to_bytes(4, "big") + encoded)
    derived = uuid.UUID(bytes=digest.digest())
    assert derived != id_zero
    assert derived != id_max
    return derived
