"""A bank that speaks SNAP BI, for tests, demos and `ksh bank-sim`.

`create_bank_app(settings)` builds the aiohttp application; `app[bank_key]` is its books and
`app[simulator_key]` its behaviour (`pay_va`, trouble in `bank.trouble`).
"""

from gateways.bank_simulator.app import (
    BankSettings,
    Simulator,
    bank_key,
    create_bank_app,
    serve_bank,
    simulator_key,
)
from gateways.bank_simulator.bank import Bank, Trouble, VaPayment
from gateways.bank_simulator.statements import BankLine, Statement, write_csv, write_mt940

__all__ = [
    "Bank",
    "BankLine",
    "BankSettings",
    "Simulator",
    "Statement",
    "Trouble",
    "VaPayment",
    "bank_key",
    "create_bank_app",
    "serve_bank",
    "simulator_key",
    "write_csv",
    "write_mt940",
]
