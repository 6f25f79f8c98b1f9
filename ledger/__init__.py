"""The double-entry ledger: accounts, transfers, two-phase holds, balances, audit, exports.

It books transfers between accounts and knows nothing about cards or buses. Public API:
the records and enums of `ledger.records`, the async functions of `ledger.store` (each takes
an asyncpg connection), `TransferPipeline` (`ledger.pipeline`: batches back to back on
several connections), `check_ledger` (`ledger.audit`) and the exports (`ledger.export`).
"""

from ledger.audit import AuditProblem, check_ledger
from ledger.export import write_beancount, write_csv
from ledger.pipeline import TransferPipeline
from ledger.records import (
    Account,
    AccountFlags,
    AccountKind,
    AccountStatementLine,
    Balances,
    BookedAccount,
    BookedTransfer,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    TransferOutcome,
    accounts_per_batch_max,
    amount_max,
    booked_results,
    currency_default,
    derive_id,
    transfers_per_batch_max_default,
)
from ledger.store import (
    ExpirySweep,
    account_balances,
    account_statement,
    close_account,
    create_accounts,
    create_transfers,
    expire_due_holds,
    expire_pending_transfers,
    expiry_transfer_id,
    lookup_accounts,
    lookup_transfers,
)

__all__ = [
    "Account",
    "AccountFlags",
    "AccountKind",
    "AccountStatementLine",
    "AuditProblem",
    "Balances",
    "BookedAccount",
    "BookedTransfer",
    "CreateAccountResult",
    "CreateTransferResult",
    "ExpirySweep",
    "Transfer",
    "TransferCode",
    "TransferFlags",
    "TransferOutcome",
    "TransferPipeline",
    "account_balances",
    "account_statement",
    "accounts_per_batch_max",
    "amount_max",
    "booked_results",
    "check_ledger",
    "close_account",
    "create_accounts",
    "create_transfers",
    "currency_default",
    "derive_id",
    "expire_due_holds",
    "expire_pending_transfers",
    "expiry_transfer_id",
    "lookup_accounts",
    "lookup_transfers",
    "transfers_per_batch_max_default",
    "write_beancount",
    "write_csv",
]
