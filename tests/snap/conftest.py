"""Fixtures for SNAP tests: RSA keys, the back office with the SNAP extension on loopback, a
registered bank partner, a card with a purse account, and the bank simulator wired to it."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import pytest

from bus_terminals.qris import QrisMerchant
from gateways.backoffice import BackofficeConfig, create_app
from gateways.bank_simulator import BankSettings, Simulator, serve_bank
from gateways.bank_simulator.bank import Bank
from gateways.snap import signature
from gateways.snap.client import BankConnection, SnapSession
from gateways.snap.partners import Partner, save_partner
from gateways.snap.server import SnapServerSettings, extension
from gateways.terminal_api import registry
from ksh.commands.demo import start
from ledger.clock import ManualClock, jakarta
from ledger.records import (
    Account,
    AccountKind,
    Transfer,
    TransferCode,
    derive_id,
)
from ledger.store import create_accounts, create_transfers

partner_id = "BNI-SNAP-01"
client_secret = "s3cret-for-hmac-sha512-tests"
company_code = "88001"
channel_id = "95221"
card_number = "6013500000000017"
card_holder = "SRI WAHYUNI"
merchant_account_no = "0987654321"
payer_account_no = "0811223344"  # a citizen's account at the bank (a VA top-up's payer)
issuer_account_no = "1350012345678"


# The QRIS merchant the bank acquires for us (the public Demak sample's merchant, at this bank).
qris_warung = QrisMerchant(
    name="Warung Sayur Bu Sugeng",
    city="Semarang",
    mcc="5812",
    nmid="ID1020017611473",
    criteria="UMI",
    acquirer_guid="ID.CO.BNI.WWW",
    merchant_pan="936000090225914810",
    merchant_id="022591481",
    postal_code="50132",
)

# Trans Semarang (a BLU) as the same bank acquires it, for rides sold by QR on the buses.
qris_trans_semarang = QrisMerchant(
    name="Trans Semarang",
    city="Semarang",
    mcc="4111",
    nmid="ID1020099900001",
    criteria="UBE",
    acquirer_guid="ID.CO.BNI.WWW",
    merchant_pan="936000090990000001",
    merchant_id="TS0000001",
    postal_code="50132",
)

harness_time = dt.datetime(2026, 11, 24, 10, 0, tzinfo=jakarta)  # what the harness's clock reads


def va_number(card: str = card_number) -> str:
    return company_code.rjust(8) + card


@pytest.fixture(scope="session")
def bank_private_pem() -> bytes:
    return signature.private_key_pem(signature.generate_private_key())


@pytest.fixture(scope="session")
def own_private_pem() -> bytes:
    return signature.private_key_pem(signature.generate_private_key())


def public_pem(private_pem: bytes) -> bytes:
    return signature.public_key_pem(signature.load_private_key(private_pem).public_key())


async def open_card(url: str, card: str, purse_rupiah: int) -> None:
    """A card as issuance leaves it (registered, with its accounts), loaded at a kiosk."""
    connection = await asyncpg.connect(url)
    try:
        accounts = await registry.register_card(connection, card)
        kiosk = Account(derive_id("test-kiosk"), AccountKind.bank_account, "kiosk")
        await create_accounts(connection, [kiosk])
        if purse_rupiah:
            [outcome] = await create_transfers(
                connection,
                [
                    Transfer(
                        derive_id("test-load", card),
                        kiosk.id,
                        accounts.purse_account_id,
                        purse_rupiah,
                        TransferCode.top_up,
                    )
                ],
                now=harness_time,  # on the harness's day: its bookings never go back before it
            )
            assert outcome.result.value == "created"
    finally:
        await connection.close()


@dataclass
class Harness:
    database_url: str
    base_url: str  # the back office, e.g. http://127.0.0.1:PORT
    bank_base_url: str  # the simulator
    session: SnapSession  # the bank's signed session to us (as the simulator uses it)
    http: aiohttp.ClientSession
    simulator: Simulator
    own_private_pem: bytes
    clock: ManualClock

    @property
    def bank(self) -> Bank:
        return self.simulator.bank

    def our_connection(self, **overrides: object) -> BankConnection:
        settings: dict[str, object] = {
            "base_url": self.bank_base_url + "/snap",
            "client_key": partner_id,
            "client_secret": client_secret,
            "private_key_pem": self.own_private_pem,
            "channel_id": channel_id,
            "timeout_ms": 2000,
            "clock": self.clock,
        }
        settings.update(overrides)
        return BankConnection(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def harness(
    database_url: str, bank_private_pem: bytes, own_private_pem: bytes
) -> AsyncIterator[Harness]:
    connection = await asyncpg.connect(database_url)
    try:
        await save_partner(
            connection,
            Partner(
                partner_id=partner_id,
                name="BNI",
                client_secret=client_secret,
                public_key_pem=public_pem(bank_private_pem).decode(),
                channel_id=channel_id,
                company_code=company_code,
                bank_code="009",
                on_us=True,
                top_up_fee_rupiah=750,
            ),
        )
    finally:
        await connection.close()
    await open_card(database_url, card_number, 1_500_000)
    # One clock for the back office, the bank and both clients: a test's day never ends while
    # it runs (a run across midnight in Jakarta would split the statement otherwise).
    clock = ManualClock(harness_time)
    backoffice = create_app(
        BackofficeConfig(database_url, pool_connections_min=1, pool_connections_max=4, clock=clock),
        [extension(SnapServerSettings(timestamp_tolerance_seconds=120))],
    )
    backoffice_runner, base_url = await start(backoffice)
    settings = BankSettings(
        partner_id=partner_id,
        client_secret=client_secret,
        issuer_public_key_pem=public_pem(own_private_pem),
        bank_private_key_pem=bank_private_pem,
        company_code=company_code,
        channel_id=channel_id,
        issuer_base_url=base_url + "/snap",
        issuer_account_no=issuer_account_no,
        issuer_account_opening_rupiah=10_000_000,
        accounts=((merchant_account_no, "WARUNG BU SUGENG", 0), (payer_account_no, "SRI", 0)),
        qris_merchants=(qris_warung, qris_trans_semarang),
    )
    async with (
        serve_bank(settings, clock=clock) as (bank_base_url, simulator),
        aiohttp.ClientSession() as http,
    ):
        session = SnapSession(
            BankConnection(
                base_url=base_url + "/snap",
                client_key=partner_id,
                client_secret=client_secret,
                private_key_pem=bank_private_pem,
                channel_id=channel_id,
                timeout_ms=5000,
                attempts_max=1,
                clock=clock,
            ),
            http,
        )
        yield Harness(
            database_url, base_url, bank_base_url, session, http, simulator, own_private_pem, clock
        )
    await backoffice_runner.cleanup()
