"""One terminal is hostile: it holds its own valid signing key and uploads what it likes, through
the real HTTP API into a real database. Whatever it sends, no rupiah it invents reaches a
merchant's or the operator's payable (so no payout), no honest card is denied, and the books
stay clean (`ledger.audit.check_ledger`). Each case names what the back office believed before.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.point_of_sale import sale_decider
from bus_terminals.simulator import Bus, validator_keys
from bus_terminals.terminal import Verdict
from bus_terminals.wire import (
    RecordStatus,
    UploadBatch,
    UploadKind,
    UploadRecord,
    encode_batch,
    public_key_text,
)
from card_reader.deck import make_ksh_deck
from card_reader.emulator import EmulatedCard
from card_reader.keys import demo_key_store
from gateways.terminal_api import registry
from gateways.terminal_api.registry import TerminalRole
from ledger.audit import check_ledger
from tests.terminals.conftest import Backoffice, merchant_id, operator_id
from tests.terminals.helpers import books_snapshot, post_batch, purse_balance, record

honest_card = "6032984000000501"
never_issued = "6032984000000999"


async def payables_rupiah(pool: asyncpg.Pool) -> int:
    """What the operator and the merchant are owed: what a payout would pay."""
    async with pool.acquire() as connection:
        owed = await connection.fetchval(
            "select coalesce(sum(credits_posted - debits_posted), 0) from ledger_accounts "
            "where id = any($1::uuid[])",
            [
                registry.merchant_payable_account_id(merchant_id),
                registry.operator_revenue_account_id(operator_id),
            ],
        )
    return int(owed)


async def denied_cards(pool: asyncpg.Pool) -> set[str]:
    async with pool.acquire() as connection:
        rows = await connection.fetch("select card_number from deny_list")
    return {row["card_number"] for row in rows}


async def books_are_clean(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        assert await check_ledger(connection) == []
    assert (await books_snapshot(pool))[1] == 0


@pytest.fixture
async def rogue_pos(backoffice: Backoffice) -> tuple[Backoffice, Ed25519PrivateKey]:
    key = await backoffice.register_pos("ROGUE-POS")
    await backoffice.issue_cards({honest_card: 50_000})
    return backoffice, key


async def test_a_sale_bigger_than_any_purse_is_refused(
    rogue_pos: tuple[Backoffice, Ed25519PrivateKey],
) -> None:
    """Before: one record could carry Rp 100,000,000; a POS sold Rp 1,500,000 on a card
    holding Rp 50,000 and its merchant was paid."""
    backoffice, key = rogue_pos
    sale = record(
        "ROGUE-POS", 1, honest_card, 1, 1_500_000, 0, kind=UploadKind.sale, merchant_id=merchant_id
    )
    body = encode_batch(UploadBatch("ROGUE-POS", 1, (sale,))).replace(b",1500000,", b",5000000,")
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(
            session, backoffice.url, key, "ROGUE-POS", 1, [], body=body
        )
    assert (status, answer["code"]) == (400, "malformed")
    assert await payables_rupiah(backoffice.pool) == 0
    assert await denied_cards(backoffice.pool) == set()
    await books_are_clean(backoffice.pool)


async def test_a_sale_on_a_card_never_issued_pays_nobody(
    rogue_pos: tuple[Backoffice, Ed25519PrivateKey],
) -> None:
    """Before: the card number was registered on the spot and the merchant paid Rp 2,000,000."""
    backoffice, key = rogue_pos
    forged = record(
        "ROGUE-POS", 1, never_issued, 1, 2_000_000, 0, kind=UploadKind.sale, merchant_id=merchant_id
    )
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "ROGUE-POS", 1, [forged])
    assert status == 200, answer
    assert await payables_rupiah(backoffice.pool) == 0
    async with backoffice.pool.acquire() as connection:
        reason = await connection.fetchval("select reason from quarantined_records")
        registered = await connection.fetchval(
            "select count(*) from cards where card_number = $1", never_issued
        )
    assert (reason, registered) == ("unknown_card", 0)
    await books_are_clean(backoffice.pool)


@pytest.mark.parametrize(
    ("top_up_id", "paid_rupiah", "credited_rupiah", "why"),
    [
        ("", 0, 1_000_000, "no top-up id"),
        ("INVENTED-1", 0, 900_000, "never announced"),
        ("VA-1", 50_000, 500_000, "is Rp 50,000"),
    ],
)
async def test_a_credit_no_one_paid_for_comes_from_suspense(
    backoffice: Backoffice, top_up_id: str, paid_rupiah: int, credited_rupiah: int, why: str
) -> None:
    """Before: a validator credited Rp 1,000,000 with an empty top-up id and Rp 900,000 with an
    invented one, and the card's pending top-up account went to -Rp 1,880,000."""
    key = await backoffice.register_validator("ROGUE-V")
    await backoffice.issue_cards({honest_card: 10_000})
    if paid_rupiah:
        async with backoffice.pool.acquire() as connection:
            await registry.pay_pending_top_up(
                connection, top_up_id, honest_card, paid_rupiah, paid_at=backoffice.clock.now()
            )
    credit = record(
        "ROGUE-V",
        1,
        honest_card,
        1,
        0,
        10_000 + credited_rupiah,
        kind=UploadKind.topup_credit,
        top_up=credited_rupiah,
        top_up_id=top_up_id,
    )
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "ROGUE-V", 1, [credit])
    assert status == 200, answer
    async with backoffice.pool.acquire() as connection:
        pending = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1",
            registry.pending_top_up_account_id(honest_card),
        )
        quarantined = await connection.fetch("select reason, detail from quarantined_records")
    assert pending == paid_rupiah  # nothing left the pending account that was not paid in
    assert [row["reason"] for row in quarantined] == ["top_up_not_delivered"]
    assert why in quarantined[0]["detail"]
    # The card holds the credit; its purse account says so (suspense holds the loss).
    assert await purse_balance(backoffice.pool, honest_card) == 10_000 + credited_rupiah
    assert await payables_rupiah(backoffice.pool) == 0
    assert await denied_cards(backoffice.pool) == set()
    await books_are_clean(backoffice.pool)


async def test_a_pos_reporting_another_merchants_sale_pays_neither(
    rogue_pos: tuple[Backoffice, Ed25519PrivateKey],
) -> None:
    backoffice, key = rogue_pos
    elsewhere = record(
        "ROGUE-POS", 1, honest_card, 1, 20_000, 30_000, kind=UploadKind.sale, merchant_id="OTHER"
    )
    fare = record("ROGUE-POS", 2, honest_card, 2, 3_500, 26_500, previous=(1, "ROGUE-POS", 30_000))
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(
            session, backoffice.url, key, "ROGUE-POS", 1, [elsewhere, fare]
        )
    assert status == 200, answer
    async with backoffice.pool.acquire() as connection:
        reasons = [
            r["reason"] for r in await connection.fetch("select reason from quarantined_records")
        ]
    assert reasons == ["record_not_for_role", "record_not_for_role"]  # a POS makes no fares
    assert await payables_rupiah(backoffice.pool) == 0
    assert await denied_cards(backoffice.pool) == set()
    await books_are_clean(backoffice.pool)


async def test_a_replayed_batch_books_nothing_again(
    rogue_pos: tuple[Backoffice, Ed25519PrivateKey],
) -> None:
    backoffice, key = rogue_pos
    sale = record(
        "ROGUE-POS",
        1,
        honest_card,
        1,
        20_000,
        30_000,
        kind=UploadKind.sale,
        merchant_id=merchant_id,
    )
    async with aiohttp.ClientSession() as session:
        first = await post_batch(session, backoffice.url, key, "ROGUE-POS", 1, [sale])
        booked = await books_snapshot(backoffice.pool)
        again = await post_batch(session, backoffice.url, key, "ROGUE-POS", 1, [sale])
    assert first[0] == again[0] == 200
    assert again[1]["result"] == "exists"
    assert await books_snapshot(backoffice.pool) == booked
    await books_are_clean(backoffice.pool)


# ------------------------------------------------------------- the card's own proof (TMAC)

card_a = "6032984000000601"
card_b = "6032984000000602"


@pytest.fixture
async def cards_that_prove(
    backoffice: Backoffice, tmp_path: Path
) -> tuple[Backoffice, Bus, Ed25519PrivateKey, list[EmulatedCard]]:
    """Two cards issued with their UIDs (so every committed transaction of theirs must carry
    the card's own Transaction MAC), an honest point of sale and a rogue one of the same
    merchant, each with its own valid signing key."""
    store = demo_key_store()
    cards = make_ksh_deck(store, [50_000, 50_000], seed="compromised", first_number=int(card_a))
    await backoffice.issue_cards({card_a: 50_000, card_b: 50_000})
    async with backoffice.pool.acquire() as connection:
        await registry.register_card_uids(connection, {card_a: cards[0].uid, card_b: cards[1].uid})
    honest = Bus(
        "HONEST-POS", "", tmp_path, validator_keys(store), backoffice.url,
        now_ms=backoffice.clock.unix_ms,
    )  # fmt: skip
    honest.terminal.merchant_id = merchant_id
    rogue_key = await backoffice.register_pos("ROGUE-POS")
    async with backoffice.pool.acquire() as connection:
        await registry.register_terminal(
            connection,
            honest.terminal_id,
            public_key_text(honest.private_key.public_key()),
            TerminalRole.pos,
            merchant_id=merchant_id,
        )
    return backoffice, honest, rogue_key, cards


def honest_sale(till: Bus, card: EmulatedCard, amount: int) -> UploadRecord:
    feedback = till.tap(card, 1_795_478_400_000 + amount, sale_decider(amount, "honest"))
    assert feedback.verdict == Verdict.accepted, feedback
    [sale] = [r for r in till.journal.records_to_upload() if r.card_number == feedback.card_number]
    assert sale.tmac_value  # the card proved it
    return sale


async def quarantine_reasons(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as connection:
        rows = await connection.fetch("select reason from quarantined_records order by sequence")
    return [row["reason"] for row in rows]


@pytest.mark.parametrize("forgery", ["made_up", "no_mac", "altered", "other_card"])
async def test_a_card_transaction_the_card_did_not_prove_pays_nobody(
    cards_that_prove: tuple[Backoffice, Bus, Ed25519PrivateKey, list[EmulatedCard]],
    forgery: str,
) -> None:
    """With its own valid key, a terminal uploads a sale the card never made (an invented MAC,
    or none), alters a real one (Rp 5,000 became Rp 50,000), or reports a real one as another
    card's. Before: every one was booked and the merchant paid. Now the card's Transaction MAC
    does not prove it: quarantined, nothing booked, the card's purse and status untouched."""
    backoffice, honest, rogue_key, cards = cards_that_prove
    real = honest_sale(honest, cards[0], 5_000)
    claimed = {
        "made_up": real._replace(terminal_id="ROGUE-POS", tmac_value="00" * 8),
        "no_mac": real._replace(terminal_id="ROGUE-POS", tmac_counter=0, tmac_value=""),
        "altered": real._replace(
            terminal_id="ROGUE-POS", amount_rupiah=50_000, balance_after_rupiah=0
        ),
        "other_card": real._replace(terminal_id="ROGUE-POS", card_number=card_b),
    }[forgery]._replace(sequence=1)
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(
            session, backoffice.url, rogue_key, "ROGUE-POS", 1, [claimed]
        )
    assert status == 200, answer
    if forgery == "no_mac":
        # Without the card's MAC it is only a claim: held like an in-doubt transaction, which
        # the card's own log (in its later, MACed taps) settles; nothing is booked meanwhile.
        async with backoffice.pool.acquire() as connection:
            outcome = await connection.fetchval(
                "select outcome from card_records where terminal_id = 'ROGUE-POS'"
            )
        assert outcome == "held"
        assert await quarantine_reasons(backoffice.pool) == []
    else:
        assert await quarantine_reasons(backoffice.pool) == ["tmac_invalid"]
    assert await payables_rupiah(backoffice.pool) == 0
    assert await purse_balance(backoffice.pool, card_a) == 50_000
    assert await purse_balance(backoffice.pool, card_b) == 50_000
    assert await denied_cards(backoffice.pool) == set()
    await books_are_clean(backoffice.pool)


async def test_a_second_terminal_reusing_an_honest_cards_counter_is_the_terminals_fraud(
    cards_that_prove: tuple[Backoffice, Bus, Ed25519PrivateKey, list[EmulatedCard]],
) -> None:
    """Before: a second POS uploaded a different sale on a card counter the first POS had
    already used; its merchant was paid from suspense and the honest card was denied for
    counter_repeat. Now the record whose Transaction MAC verifies is the card's; the other is
    quarantined, and the honest card is not denied."""
    backoffice, honest, rogue_key, cards = cards_that_prove
    real = honest_sale(honest, cards[0], 5_000)
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(
            session, backoffice.url, honest.private_key, honest.terminal_id, 1, [real]
        )
        assert status == 200, answer
        reused = real._replace(
            terminal_id="ROGUE-POS", sequence=1, amount_rupiah=30_000, balance_after_rupiah=20_000
        )
        status, answer = await post_batch(
            session, backoffice.url, rogue_key, "ROGUE-POS", 1, [reused]
        )
        assert status == 200, answer
    assert await quarantine_reasons(backoffice.pool) == ["tmac_invalid"]
    assert await payables_rupiah(backoffice.pool) == 5_000 - 50  # the honest sale, less its fee
    assert await purse_balance(backoffice.pool, card_a) == 45_000  # equal to the card
    assert await denied_cards(backoffice.pool) == set()
    await books_are_clean(backoffice.pool)


@pytest.mark.parametrize("witness", ["made_up_mac", "no_mac"])
async def test_an_in_doubt_sale_is_not_booked_on_a_terminals_word(
    cards_that_prove: tuple[Backoffice, Bus, Ed25519PrivateKey, list[EmulatedCard]],
    witness: str,
) -> None:
    """A terminal reports a sale in doubt (no MAC is due then), re-reports it as committed with
    a MAC the card never made (a changed record: flagged, the first report kept), and adds a
    later 'tap' (with an invented MAC, or none) whose card log shows the sale. Before: that
    later report's word confirmed the in-doubt sale and the merchant was paid, no MAC ever
    checked. Now only a report the card proved settles an in-doubt one: the sale stays held,
    nothing is booked, the card untouched."""
    backoffice, _, rogue_key, _ = cards_that_prove
    sale = record(
        "ROGUE-POS", 1, card_a, 1, 20_000, 30_000, kind=UploadKind.sale, merchant_id=merchant_id,
        status=RecordStatus.in_doubt,
    )  # fmt: skip
    claimed = sale._replace(status=RecordStatus.committed, tmac_counter=1, tmac_value="00" * 8)
    later = record(
        "ROGUE-POS", 2, card_a, 2, 5_000, 25_000, kind=UploadKind.sale, merchant_id=merchant_id,
        previous=(1, "ROGUE-POS", 30_000),
    )  # fmt: skip
    if witness == "made_up_mac":
        later = later._replace(tmac_counter=2, tmac_value="11" * 8)
    async with aiohttp.ClientSession() as session:
        first = await post_batch(session, backoffice.url, rogue_key, "ROGUE-POS", 1, [sale])
        second = await post_batch(
            session, backoffice.url, rogue_key, "ROGUE-POS", 2, [claimed, later]
        )
    assert first[0] == second[0] == 200, (first, second)
    assert await payables_rupiah(backoffice.pool) == 0
    assert await purse_balance(backoffice.pool, card_a) == 50_000
    reasons = await quarantine_reasons(backoffice.pool)
    assert reasons == (["tmac_invalid"] if witness == "made_up_mac" else [])
    async with backoffice.pool.acquire() as connection:
        outcome = await connection.fetchval(
            "select outcome from card_records where terminal_id = 'ROGUE-POS' and sequence = 1"
        )
    assert outcome == "held"
    assert await denied_cards(backoffice.pool) == set()
    await books_are_clean(backoffice.pool)


async def test_a_held_apart_record_reported_again_as_committed_stays_apart(
    backoffice: Backoffice,
) -> None:
    """A validator reports a sale (not its role) in doubt: quarantined, no money moved. Before:
    the same record re-reported as committed was booked to the operator, as if the first
    report had never been held apart. Now a quarantined record waits for staff, whatever its
    terminal reports of it later."""
    key = await backoffice.register_validator("ROGUE-V")
    await backoffice.issue_cards({honest_card: 50_000})
    sale = record(
        "ROGUE-V", 1, honest_card, 1, 20_000, 30_000, kind=UploadKind.sale,
        status=RecordStatus.in_doubt,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        first = await post_batch(session, backoffice.url, key, "ROGUE-V", 1, [sale])
        committed = sale._replace(status=RecordStatus.committed)
        second = await post_batch(session, backoffice.url, key, "ROGUE-V", 2, [committed])
    assert first[0] == second[0] == 200, (first, second)
    assert await payables_rupiah(backoffice.pool) == 0
    assert await purse_balance(backoffice.pool, honest_card) == 50_000
    assert await quarantine_reasons(backoffice.pool) == ["record_not_for_role"]
    await books_are_clean(backoffice.pool)
