"""Fixtures for settlement tests: the SNAP bank simulator on loopback, our client to it, and a
real headless Chromium (Debian's, driven by Playwright) for the finance pages."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from gateways.bank_simulator import BankSettings, serve_bank
from gateways.bank_simulator.bank import Bank
from gateways.snap import signature
from gateways.snap.client import BankClient, BankConnection
from ledger.clock import ManualClock
from tests.conftest import unavailable
from tests.settlement.day import bank_code, closing_time, our_account

partner_id = "BNI-KSH-TEST"
client_secret = "settlement-tests-hmac-secret"
channel_id = "95221"
operator_account = "1350099990001"
chromium_path = "/usr/bin/chromium"
chromium_args = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class BankHarness:
    bank: Bank
    client: BankClient
    connection: BankConnection
    clock: ManualClock  # the bank's and our client's: it is the service day's evening


def public_pem(private_pem: bytes) -> bytes:
    return signature.public_key_pem(signature.load_private_key(private_pem).public_key())


@pytest.fixture(scope="session")
def own_private_pem() -> bytes:
    return signature.private_key_pem(signature.generate_private_key())


@pytest.fixture
async def bank_harness(own_private_pem: bytes) -> AsyncIterator[BankHarness]:
    settings = BankSettings(
        partner_id=partner_id,
        client_secret=client_secret,
        issuer_public_key_pem=public_pem(own_private_pem),
        bank_private_key_pem=signature.private_key_pem(signature.generate_private_key()),
        channel_id=channel_id,
        bank_code=bank_code,
        issuer_account_no=our_account,
        issuer_account_opening_rupiah=100_000_000,
        accounts=(
            (operator_account, "BLU UPTD TRANS SEMARANG", 0),
            *((f"77{n:08d}", f"TOKO M{n:03d}", 0) for n in range(1, 3)),
        ),
    )
    clock = ManualClock(closing_time)
    async with (
        serve_bank(settings, clock=clock) as (bank_url, simulator),
        aiohttp.ClientSession() as http,
    ):
        connection = BankConnection(
            base_url=f"{bank_url}/snap",
            client_key=partner_id,
            client_secret=client_secret,
            private_key_pem=own_private_pem,
            channel_id=channel_id,
            timeout_ms=2_000,
            clock=clock,
        )
        yield BankHarness(simulator.bank, BankClient.open(connection, http), connection, clock)


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("playwright is not installed", "pip install playwright")
    if shutil.which(chromium_path) is None:
        unavailable("Debian's chromium is not installed", "apt-get install -y chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path, args=chromium_args
        )
        try:
            yield launched
        finally:
            await launched.close()
