"""`ksh partner`: banks registered as SNAP partners, and our own signing key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ksh.cli import UserError
from ksh.database import run_with_database


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "partner",
        help="register banks as SNAP BI partners; generate or show our signing key",
        description="Banks that call our SNAP endpoints (VA top-ups) and that we call (payouts). "
        "Uses DATABASE_URL or the embedded PostgreSQL.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="register a bank (or replace its settings)")
    add.add_argument(
        "--id", required=True, help="the bank's partner id (X-PARTNER-ID, X-CLIENT-KEY)"
    )
    add.add_argument("--name", default="", help="display name (default: the id)")
    add.add_argument(
        "--client-secret", required=True, help="HMAC-SHA512 key, at least 16 characters"
    )
    add.add_argument(
        "--public-key", required=True, type=Path, help="the bank's RSA public key (PEM file)"
    )
    add.add_argument("--channel", required=True, help="CHANNEL-ID the bank sends (up to 5)")
    add.add_argument(
        "--company-code", required=True, help="the bank's VA prefix for our cards (up to 8 digits)"
    )
    add.add_argument("--bank-code", default="", help="Bank Indonesia bank code, e.g. 009 (BNI)")
    add.add_argument(
        "--on-us",
        action="store_true",
        help="the bank is the card's issuing bank (on-us fee cap: free up to Rp 200,000, then Rp 750)",
    )
    add.add_argument(
        "--top-up-fee",
        type=int,
        default=0,
        help="the channel's top-up fee in rupiah (capped: Rp 750 on-us, Rp 1,500 off-us)",
    )
    add.add_argument(
        "--base-url", default="", help="where we call the bank, e.g. https://bank/snap"
    )
    add.add_argument("--source-account", default="", help="our account at the bank (payouts)")
    add.set_defaults(handler=run_add)

    listing = actions.add_parser("list", help="list registered banks")
    listing.set_defaults(handler=run_list)

    holder = actions.add_parser("card-holder", help="the name a VA inquiry shows for a card")
    holder.add_argument("--card", required=True)
    holder.add_argument("--name", required=True)
    holder.set_defaults(handler=run_card_holder)

    own = actions.add_parser(
        "own-key", help="generate or load our RSA key; print the public key to give to banks"
    )
    own.add_argument(
        "--out", type=Path, required=True, help="the private key file (PEM; folders are made)"
    )
    own.add_argument("--generate", action="store_true", help="create a new key at --out")
    own.set_defaults(handler=run_own_key)


def run_add(arguments: argparse.Namespace) -> int:
    from gateways.snap.partners import Partner, check_partner, save_partner

    try:
        public_key_pem = arguments.public_key.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the public key {arguments.public_key}: {error}") from None
    partner = Partner(
        partner_id=arguments.id,
        name=arguments.name or arguments.id,
        client_secret=arguments.client_secret,
        public_key_pem=public_key_pem,
        channel_id=arguments.channel,
        company_code=arguments.company_code,
        bank_code=arguments.bank_code,
        on_us=arguments.on_us,
        top_up_fee_rupiah=arguments.top_up_fee,
        base_url=arguments.base_url,
        source_account_no=arguments.source_account,
    )
    problems = check_partner(partner)
    if problems:
        raise UserError("; ".join(problems))

    async def work(connection: Any) -> None:
        import asyncpg

        try:
            await save_partner(connection, partner)
        except asyncpg.UniqueViolationError:  # company_code: one VA prefix, one bank
            raise UserError(
                f"company code {partner.company_code} is already another partner's"
            ) from None

    run_with_database(work)
    print(
        f"partner {partner.partner_id} registered; VA numbers start with '{partner.partner_service_id}'"
    )
    return 0


def run_list(arguments: argparse.Namespace) -> int:
    from gateways.snap.partners import list_partners

    partners = run_with_database(list_partners)
    for partner in partners:
        print(
            f"{partner.partner_id}\t{partner.name}\tchannel {partner.channel_id}\t"
            f"VA prefix {partner.company_code}\tbank {partner.bank_code or '-'}\t"
            f"{'on-us' if partner.on_us else 'off-us'} fee Rp {partner.top_up_fee_rupiah}"
        )
    if not partners:
        print("no partners registered")
    return 0


def run_card_holder(arguments: argparse.Namespace) -> int:
    from gateways.snap.partners import set_card_holder

    if not (arguments.card.isdigit() and len(arguments.card) <= 20):
        raise UserError("card number must be up to 20 digits")
    if not 1 <= len(arguments.name) <= 255:
        raise UserError("name must be 1 to 255 characters")

    async def work(connection: Any) -> None:
        await set_card_holder(connection, arguments.card, arguments.name)

    run_with_database(work)
    return 0


def run_own_key(arguments: argparse.Namespace) -> int:
    from gateways.snap.partners import generate_own_key, load_own_key

    path: Path = arguments.out
    if arguments.generate:
        if path.exists():
            raise UserError(f"{path} exists; refusing to overwrite a signing key")
        public = generate_own_key(path)
    else:
        try:
            public = load_own_key(path)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the private key {path}: {error}") from None
    print(public.decode(), end="")
    return 0
