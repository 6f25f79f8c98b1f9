"""Banks registered as SNAP partners, and our own signing key.

A partner is one bank connection, in both directions:

- the bank calls us with ``X-PARTNER-ID``/``X-CLIENT-KEY`` = `partner_id`, signs its token
  request with its RSA key (we verify with `public_key_pem`), and signs transactions with the
  HMAC secret `client_secret`; `company_code` is its VA prefix (`partnerServiceId`).
- we call the bank (payouts) at `base_url` with the same id and secret, signing our token
  request with our own RSA key (`ksh partner own-key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg

from gateways.snap import signature
from gateways.snap.client import BankConnection, attempts_max_default, timeout_ms_default
from ledger.clock import Clock, system_clock

partner_service_id_length = 8
client_secret_length_min = 16
# Bank Indonesia's caps (PADG 19/10/PADG/2017): on-us top-ups up to Rp 200,000 are free and
# cost at most Rp 750 above; off-us (another bank's channel) at most Rp 1,500.
top_up_free_up_to_rupiah = 200_000
top_up_fee_on_us_max_rupiah = 750
top_up_fee_off_us_max_rupiah = 1_500


@dataclass(frozen=True, slots=True)
class Partner:
    partner_id: str
    name: str
    client_secret: str
    public_key_pem: str
    channel_id: str
    company_code: str
    bank_code: str = ""
    on_us: bool = False
    top_up_fee_rupiah: int = 0
    base_url: str = ""
    source_account_no: str = ""

    @property
    def partner_service_id(self) -> str:
        """The company code as it appears in VA numbers: left-padded with spaces to 8."""
        return self.company_code.rjust(partner_service_id_length)


def bank_connection(
    partner: Partner,
    own_private_key_pem: bytes,
    *,
    timeout_ms: int = timeout_ms_default,
    attempts_max: int = attempts_max_default,
    clock: Clock = system_clock,
) -> BankConnection:
    """How we call this bank as a client (payouts, status, balance, QRIS codes)."""
    assert partner.base_url, f"partner {partner.partner_id} has no base URL to call"
    return BankConnection(
        base_url=partner.base_url,
        client_key=partner.partner_id,
        client_secret=partner.client_secret,
        private_key_pem=own_private_key_pem,
        channel_id=partner.channel_id,
        timeout_ms=timeout_ms,
        attempts_max=attempts_max,
        clock=clock,
    )


def top_up_fee_cap_rupiah(amount_rupiah: int, on_us: bool) -> int:
    if on_us:
        return 0 if amount_rupiah <= top_up_free_up_to_rupiah else top_up_fee_on_us_max_rupiah
    return top_up_fee_off_us_max_rupiah


def top_up_fee_rupiah(partner: Partner, amount_rupiah: int) -> int:
    """The channel's fee for a top-up, never above Bank Indonesia's cap."""
    return min(partner.top_up_fee_rupiah, top_up_fee_cap_rupiah(amount_rupiah, partner.on_us))


def check_partner(partner: Partner) -> list[str]:
    """What is wrong with a partner's settings (empty when it can be registered)."""
    problems = []
    if not 1 <= len(partner.partner_id) <= 36:
        problems.append("partner id must be 1 to 36 characters")
    if len(partner.client_secret) < client_secret_length_min:
        problems.append(f"client secret must be at least {client_secret_length_min} characters")
    if not (partner.company_code.isdigit() and len(partner.company_code) <= 8):
        problems.append("company code must be 1 to 8 digits")
    if not (partner.channel_id.isalnum() and 1 <= len(partner.channel_id) <= 5):
        problems.append("channel id must be 1 to 5 letters or digits")
    if partner.bank_code and not (partner.bank_code.isdigit() and len(partner.bank_code) <= 3):
        problems.append("bank code must be up to 3 digits")
    cap = top_up_fee_on_us_max_rupiah if partner.on_us else top_up_fee_off_us_max_rupiah
    if not 0 <= partner.top_up_fee_rupiah <= cap:
        problems.append(f"top-up fee must be between 0 and Rp {cap} (Bank Indonesia cap)")
    try:
        signature.load_public_key(partner.public_key_pem.encode())
    except ValueError as error:
        problems.append(f"public key is not an RSA public key in PEM: {error}")
    return problems


_columns = (
    "partner_id, name, client_secret, public_key_pem, channel_id, company_code, bank_code, "
    "on_us, top_up_fee_rupiah, base_url, source_account_no"
)


def _partner(row: asyncpg.Record) -> Partner:
    return Partner(**dict(row))


async def save_partner(connection: asyncpg.Connection, partner: Partner) -> None:
    """Register a partner, or replace its settings (key rotation, new fee)."""
    problems = check_partner(partner)
    assert not problems, problems
    await connection.execute(
        f"""
        insert into snap_partners ({_columns})
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        on conflict (partner_id) do update set
            name = excluded.name, client_secret = excluded.client_secret,
            public_key_pem = excluded.public_key_pem, channel_id = excluded.channel_id,
            company_code = excluded.company_code, bank_code = excluded.bank_code,
            on_us = excluded.on_us, top_up_fee_rupiah = excluded.top_up_fee_rupiah,
            base_url = excluded.base_url, source_account_no = excluded.source_account_no
        """,
        partner.partner_id,
        partner.name,
        partner.client_secret,
        partner.public_key_pem,
        partner.channel_id,
        partner.company_code,
        partner.bank_code,
        partner.on_us,
        partner.top_up_fee_rupiah,
        partner.base_url,
        partner.source_account_no,
    )


async def load_partner(connection: asyncpg.Connection, partner_id: str) -> Partner | None:
    row = await connection.fetchrow(
        f"select {_columns} from snap_partners where partner_id = $1", partner_id
    )
    return _partner(row) if row else None


async def list_partners(connection: asyncpg.Connection) -> list[Partner]:
    rows = await connection.fetch(f"select {_columns} from snap_partners order by partner_id")
    return [_partner(row) for row in rows]


async def set_card_holder(connection: asyncpg.Connection, card_number: str, name: str) -> None:
    await connection.execute(
        """
        insert into snap_card_holders (card_number, holder_name) values ($1, $2)
        on conflict (card_number) do update set holder_name = excluded.holder_name
        """,
        card_number,
        name,
    )


# ---------------------------------------------------------------------------- our own key


def generate_own_key(path: Path) -> bytes:
    """Write a new RSA-2048 private key (PKCS#8 PEM, mode 0600); return its public key PEM."""
    key = signature.generate_private_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=False)
    path.write_bytes(signature.private_key_pem(key))
    return signature.public_key_pem(key.public_key())


def load_own_key(path: Path) -> bytes:
    """The public key PEM of our private key at `path` (raises ValueError if unreadable)."""
    key = signature.load_private_key(path.read_bytes())
    return signature.public_key_pem(key.public_key())
