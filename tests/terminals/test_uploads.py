"""The upload endpoint over real HTTP into real PostgreSQL: booked once, in-doubt settled by the
card's log, anomalies flagged, and every bad upload refused with nothing booked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import aiohttp

from bus_terminals.wire import (
    RecordStatus,
    UploadBatch,
    UploadKind,
    encode_batch,
    sign,
    signature_header,
    terminal_header,
    upload_body_bytes_max,
)
from gateways.terminal_api import registry
from tests.terminals.conftest import Backoffice, admin_token, merchant_id
from tests.terminals.helpers import books_snapshot, post_batch, purse_balance, record

card = "6032984000000001"


async def top_up(backoffice: Backoffice, card_number: str, amount: int, top_up_id: str) -> None:
    async with backoffice.pool.acquire() as connection:
        await registry.pay_pending_top_up(
            connection, top_up_id, card_number, amount, paid_at=backoffice.clock.now()
        )


async def test_a_tap_is_booked_once_however_often_it_is_uploaded(backoffice: Backoffice) -> None:
    key = await backoffice.register_validator("V1")
    await top_up(backoffice, card, 20_000, "T-1")
    taps = [
        record(
            "V1",
            1,
            card,
            1,
            0,
            20_000,
            kind=UploadKind.topup_credit,
            top_up=20_000,
            top_up_id="T-1",
        ),
        record("V1", 2, card, 2, 3_500, 16_500, previous=(1, "V1", 20_000)),
    ]
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "V1", 1, taps)
        assert status == 200, answer
        assert answer["result"] == "accepted"
        assert answer["records"] == [[1, "committed"], [2, "committed"]]
        booked = await books_snapshot(backoffice.pool)
        status, again = await post_batch(session, backoffice.url, key, "V1", 1, taps)
        assert status == 200
        assert again["result"] == "exists"
        assert await books_snapshot(backoffice.pool) == booked
    count, total = booked
    assert total == 0
    assert count == 3  # bank → pending, pending → purse, purse → revenue
    assert await purse_balance(backoffice.pool, card) == 16_500
    async with backoffice.pool.acquire() as connection:
        view = await registry.card_view(connection, card)
        taken = await connection.fetchval(
            "select taken_terminal_id from pending_top_ups where top_up_id = 'T-1'"
        )
    assert view is not None
    assert view["shadow_balance_rupiah"] == 16_500
    assert view["last_counter"] == 2
    assert taken == "V1"


async def test_the_cards_transaction_mac_is_stored_with_its_record(backoffice: Backoffice) -> None:
    """What the back office verifies later (`card_reader.tmac.verify`) is kept as uploaded; a
    batch from a terminal older than the Transaction MAC still books, without one."""
    key = await backoffice.register_validator("VT")
    await top_up(backoffice, card, 20_000, "T-9")
    credit = record(
        "VT", 1, card, 1, 0, 20_000, kind=UploadKind.topup_credit, top_up=20_000, top_up_id="T-9"
    )._replace(tmac_counter=2, tmac_value="00112233aabbccdd")
    fare = record("VT", 2, card, 2, 3_500, 16_500, previous=(1, "VT", 20_000))
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "VT", 1, [credit, fare])
        assert status == 200, answer
        older = record("VT", 3, card, 3, 3_500, 13_000, previous=(2, "VT", 16_500))
        document = json.loads(encode_batch(UploadBatch("VT", 2, (older,))))
        document["fields"] = document["fields"][:-2]
        document["records"] = [row[:-2] for row in document["records"]]
        body = json.dumps(document, separators=(",", ":")).encode()
        status, answer = await post_batch(session, backoffice.url, key, "VT", 2, [], body=body)
        assert status == 200, answer
    async with backoffice.pool.acquire() as connection:
        rows = await connection.fetch(
            "select sequence, tmac_counter, tmac_value, outcome from card_records "
            "where terminal_id = 'VT' order by sequence"
        )
    assert [tuple(row.values()) for row in rows] == [
        (1, 2, "00112233aabbccdd", "booked"),
        (2, 0, "", "booked"),
        (3, 0, "", "booked"),
    ]
    assert await purse_balance(backoffice.pool, card) == 13_000


async def test_in_doubt_tap_is_settled_by_the_next_tap_elsewhere(backoffice: Backoffice) -> None:
    key_a = await backoffice.register_validator("VA")
    key_b = await backoffice.register_validator("VB")
    await top_up(backoffice, card, 10_000, "T-2")
    async with aiohttp.ClientSession() as session:
        first = record(
            "VA",
            1,
            card,
            1,
            0,
            10_000,
            kind=UploadKind.topup_credit,
            top_up=10_000,
            top_up_id="T-2",
        )
        doubtful = record(
            "VA", 2, card, 2, 3_500, 6_500, status=RecordStatus.in_doubt, previous=(1, "VA", 10_000)
        )
        status, answer = await post_batch(
            session, backoffice.url, key_a, "VA", 1, [first, doubtful]
        )
        assert status == 200, answer
        assert await purse_balance(backoffice.pool, card) == 10_000  # held, not booked
        # The card did commit: at VB its last log entry is VA's tap (counter 2).
        later = record("VB", 1, card, 3, 3_500, 3_000, previous=(2, "VA", 6_500))
        status, answer = await post_batch(session, backoffice.url, key_b, "VB", 1, [later])
        assert status == 200, answer
        assert await purse_balance(backoffice.pool, card) == 3_000
        # VA learns the outcome from the card too and uploads the resolution: nothing new.
        booked = await books_snapshot(backoffice.pool)
        resolved = record("VA", 2, card, 2, 3_500, 6_500, previous=(1, "VA", 10_000))
        status, answer = await post_batch(session, backoffice.url, key_a, "VA", 2, [resolved])
        assert status == 200, answer
        assert await books_snapshot(backoffice.pool) == booked
    assert booked[1] == 0


async def test_in_doubt_tap_that_never_happened_is_void(backoffice: Backoffice) -> None:
    key_a = await backoffice.register_validator("VA")
    key_b = await backoffice.register_validator("VB")
    await top_up(backoffice, card, 10_000, "T-3")
    async with aiohttp.ClientSession() as session:
        first = record(
            "VA",
            1,
            card,
            1,
            0,
            10_000,
            kind=UploadKind.topup_credit,
            top_up=10_000,
            top_up_id="T-3",
        )
        doubtful = record(
            "VA", 2, card, 2, 3_500, 6_500, status=RecordStatus.in_doubt, previous=(1, "VA", 10_000)
        )
        await post_batch(session, backoffice.url, key_a, "VA", 1, [first, doubtful])
        # The card was pulled before commit: at VB its counter 2 is VB's own tap.
        other = record("VB", 1, card, 2, 3_500, 6_500, previous=(1, "VA", 10_000))
        status, answer = await post_batch(session, backoffice.url, key_b, "VB", 1, [other])
        assert status == 200, answer
    assert await purse_balance(backoffice.pool, card) == 6_500
    async with backoffice.pool.acquire() as connection:
        outcome = await connection.fetchval(
            "select outcome from card_records where terminal_id = 'VA' and sequence = 2"
        )
    assert outcome == "void"


async def test_counter_gaps_show_until_the_missing_tap_arrives(backoffice: Backoffice) -> None:
    key_a = await backoffice.register_validator("VA")
    key_b = await backoffice.register_validator("VB")
    async with backoffice.pool.acquire() as connection:
        await registry.issue_cards(connection, {card: 10_000}, now=backoffice.clock.now())
    async with aiohttp.ClientSession() as session:
        late = record("VB", 1, card, 2, 3_500, 3_000, previous=(1, "VA", 6_500))
        await post_batch(session, backoffice.url, key_b, "VB", 1, [late])
        async with backoffice.pool.acquire() as connection:
            assert await registry.cards_with_counter_gaps(connection) == [(card, 2, 1)]
        async with session.get(
            backoffice.url + "/admin/v1/monitoring/counter-gaps",
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as response:
            assert await response.json() == [
                {"card_number": card, "highest_counter": 2, "missing": 1}
            ]
        first = record("VA", 3, card, 1, 3_500, 6_500)  # VA's records 1 and 2 never came
        await post_batch(session, backoffice.url, key_a, "VA", 1, [first])
    async with backoffice.pool.acquire() as connection:
        assert await registry.cards_with_counter_gaps(connection) == []
        assert await registry.terminals_with_record_gaps(connection) == [("VA", 3, 2)]
    assert await purse_balance(backoffice.pool, card) == 3_000


async def test_clone_is_booked_to_suspense_and_denied(backoffice: Backoffice) -> None:
    key_a = await backoffice.register_validator("VA")
    key_b = await backoffice.register_validator("VB")
    await top_up(backoffice, card, 10_000, "T-4")
    async with aiohttp.ClientSession() as session:
        first = record(
            "VA",
            1,
            card,
            1,
            0,
            10_000,
            kind=UploadKind.topup_credit,
            top_up=10_000,
            top_up_id="T-4",
        )
        tap = record("VA", 2, card, 2, 3_500, 6_500, previous=(1, "VA", 10_000))
        await post_batch(session, backoffice.url, key_a, "VA", 1, [first, tap])
        clone = record("VB", 1, card, 2, 4_000, 6_000, previous=(1, "VA", 10_000))
        status, answer = await post_batch(session, backoffice.url, key_b, "VB", 1, [clone])
        assert status == 200, answer
        _, total = await books_snapshot(backoffice.pool)
        assert total == 0
    assert await purse_balance(backoffice.pool, card) == 6_500  # the clone's ride is not the card's
    async with backoffice.pool.acquire() as connection:
        denied = await connection.fetchval(
            "select reason from deny_list where card_number = $1", card
        )
        suspense = await connection.fetchval(
            "select debits_posted from ledger_accounts where id = $1", registry.suspense_account_id
        )
    assert denied == "counter_repeat"
    assert suspense == 4_000


async def test_a_purse_overdrawn_offline_is_still_booked_and_flagged(
    backoffice: Backoffice,
) -> None:
    key = await backoffice.register_validator("V1")
    await backoffice.issue_cards({card: 0})
    async with aiohttp.ClientSession() as session:
        tap = record("V1", 1, card, 1, 3_500, 0)
        status, answer = await post_batch(session, backoffice.url, key, "V1", 1, [tap])
        assert status == 200, answer
    assert await purse_balance(backoffice.pool, card) == -3_500
    async with backoffice.pool.acquire() as connection:
        reasons = await connection.fetch(
            "select reason from card_flags where card_number = $1", card
        )
    assert "purse_negative" in {row["reason"] for row in reasons}


async def test_bad_uploads_are_refused_and_book_nothing(backoffice: Backoffice) -> None:
    key = await backoffice.register_validator("V1")
    await backoffice.issue_cards({card: 0})
    other_key = await backoffice.register_validator("V2")
    tap = record("V1", 1, card, 1, 3_500, 6_500)
    body = encode_batch(UploadBatch("V1", 1, (tap,)))
    before = await books_snapshot(backoffice.pool)

    async def send(body: bytes, signature: str, terminal_id: str = "V1") -> tuple[int, str]:
        async with session.post(
            f"{backoffice.url}/terminal/v1/uploads",
            data=body,
            headers={terminal_header: terminal_id, signature_header: signature},
        ) as response:
            answer = await response.json()
            return response.status, answer.get("code") or answer["result"]

    async with aiohttp.ClientSession() as session:
        assert await send(body, sign(other_key, body)) == (401, "signature_invalid")
        altered = body.replace(b"3500", b"350")
        assert await send(altered, sign(key, body)) == (401, "signature_invalid")
        assert await send(body, sign(key, body), "V9") == (401, "unknown_terminal")
        assert await send(body, "not base64!") == (401, "signature_invalid")
        later = encode_batch(UploadBatch("V1", 2, (tap,)))
        assert await send(later, sign(key, later)) == (409, "batch_out_of_order")
        malformed = json.dumps({"version": 1}).encode()
        status, code = await send(malformed, sign(key, malformed))
        assert (status, code) == (400, "malformed")
        wrong_field = body.replace(b'"fare_debit"', b'"free_ride"')
        status, code = await send(wrong_field, sign(key, wrong_field))
        assert (status, code) == (400, "malformed")
        not_json = b"\x00\x01garbage"
        assert await send(not_json, sign(key, not_json)) == (400, "malformed")
        huge = b" " * (upload_body_bytes_max + 1)
        assert (await send(huge, sign(key, huge)))[0] == 413
        assert await books_snapshot(backoffice.pool) == before
        # The genuine batch goes through; a different batch 1 afterwards is a conflict.
        assert (await send(body, sign(key, body)))[0] == 200
        other = encode_batch(UploadBatch("V1", 1, (record("V1", 1, card, 1, 1_000, 9_000),)))
        assert await send(other, sign(key, other)) == (409, "batch_conflict")
        async with backoffice.pool.acquire() as connection:
            await registry.revoke_terminal(connection, "V1")
        again = encode_batch(UploadBatch("V1", 2, (record("V1", 2, card, 2, 3_500, 3_000),)))
        assert await send(again, sign(key, again)) == (403, "terminal_revoked")
    count, total = await books_snapshot(backoffice.pool)
    assert count == before[0] + 1
    assert total == 0


async def test_a_record_reported_again_with_other_content_is_flagged_not_booked(
    backoffice: Backoffice,
) -> None:
    key = await backoffice.register_validator("V1")
    await backoffice.issue_cards({card: 0})
    async with aiohttp.ClientSession() as session:
        first = record("V1", 1, card, 1, 3_500, 6_500)
        await post_batch(session, backoffice.url, key, "V1", 1, [first])
        booked = await books_snapshot(backoffice.pool)
        changed = record("V1", 1, card, 1, 1_000, 9_000)
        status, answer = await post_batch(session, backoffice.url, key, "V1", 2, [changed])
        assert status == 200, answer
        assert answer["records"] == [[1, "committed"]]
    assert await books_snapshot(backoffice.pool) == booked
    async with backoffice.pool.acquire() as connection:
        reasons = await connection.fetch(
            "select reason from card_flags where card_number = $1", card
        )
        amount = await connection.fetchval(
            "select amount_rupiah from card_records where terminal_id = 'V1' and sequence = 1"
        )
    assert [row["reason"] for row in reasons] == ["record_conflict", "purse_negative"] or [
        row["reason"] for row in reasons
    ] == ["purse_negative", "record_conflict"]
    assert amount == 3_500


async def test_a_full_batch_of_cards_never_issued_is_quarantined_and_books_nothing(
    backoffice: Backoffice,
) -> None:
    """Card numbers the back office never issued are not registered on the spot (a terminal
    could otherwise invent cards and the sales on them): every record is quarantined, nothing
    is booked, and the batch is acknowledged so the terminal's later records flow."""
    from bus_terminals.wire import upload_records_max

    key = await backoffice.register_validator("V1")
    taps = [
        record("V1", index + 1, str(6032986000000000 + index), 1, 3_500, 16_500)
        for index in range(upload_records_max)
    ]
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "V1", 1, taps)
    assert status == 200, answer
    assert await books_snapshot(backoffice.pool) == (0, 0)
    async with backoffice.pool.acquire() as connection:
        reasons = await connection.fetch(
            "select reason, count(*) from quarantined_records group by reason"
        )
        registered = await connection.fetchval("select count(*) from cards")
    assert [tuple(row) for row in reasons] == [("unknown_card", upload_records_max)]
    assert registered == 0


async def test_a_broken_balance_chain_is_flagged_whichever_tap_arrives_first(
    backoffice: Backoffice,
) -> None:
    """Counters 1 → 2 → 3 of one card, each a Rp 3,500 fare; 2 and 3 each claim Rp 500 too
    much. 3 and 1 arrive first (no neighbours yet); when 2 arrives, both of its pairs are
    checked: (1, 2) with 2 as the later tap, (2, 3) with 2 as the earlier one."""
    key_a = await backoffice.register_validator("VA")
    key_b = await backoffice.register_validator("VB")
    key_c = await backoffice.register_validator("VC")
    async with backoffice.pool.acquire() as connection:
        await registry.issue_cards(connection, {card: 10_500}, now=backoffice.clock.now())
    async with aiohttp.ClientSession() as session:
        third = record("VC", 1, card, 3, 3_500, 1_000, previous=(2, "VB", 4_000))
        first = record("VA", 1, card, 1, 3_500, 7_000)
        second = record("VB", 1, card, 2, 3_500, 4_000, previous=(1, "VA", 7_000))
        for key, terminal, tap in [(key_c, "VC", third), (key_a, "VA", first)]:
            status, answer = await post_batch(session, backoffice.url, key, terminal, 1, [tap])
            assert status == 200, answer
        async with backoffice.pool.acquire() as connection:
            assert await connection.fetchval("select count(*) from card_flags") == 0
        status, answer = await post_batch(session, backoffice.url, key_b, "VB", 1, [second])
        assert status == 200, answer
    async with backoffice.pool.acquire() as connection:
        flags = await connection.fetch(
            "select reason, terminal_id, card_counter from card_flags order by card_counter"
        )
        denied = await connection.fetchval(
            "select reason from deny_list where card_number = $1", card
        )
    assert [tuple(flag) for flag in flags] == [
        ("balance_mismatch", "VB", 2),  # 7,000 - 3,500 is not 4,000
        ("balance_mismatch", "VC", 3),  # 4,000 - 3,500 is not 1,000
    ]
    assert denied == "balance_mismatch"


async def test_the_process_remembers_issued_cards_and_looks_up_only_the_others(
    backoffice: Backoffice,
) -> None:
    """Cards seen in the cards table are remembered and not looked up again (an upload writes
    no card, so what it reads is committed); a card issued later is found on the next upload."""
    from gateways.terminal_api.ingest import KnownCards, issued_cards

    issued, later = "6032984000000101", "6032984000000102"
    known = KnownCards()
    await backoffice.issue_cards({issued: 0})
    async with backoffice.pool.acquire() as connection:
        assert await issued_cards(connection, [issued, later], known) == {issued}
        assert known.numbers == {issued}
        await connection.execute("delete from cards where card_number = $1", issued)
        # remembered: not looked up again (a card is never removed in service)
        assert await issued_cards(connection, [issued], known) == {issued}
    await backoffice.issue_cards({later: 0})
    async with backoffice.pool.acquire() as connection:
        assert await issued_cards(connection, [issued, later], known) == {issued, later}


async def test_a_broken_pair_within_one_upload_is_flagged_once(backoffice: Backoffice) -> None:
    """Both records of a pair that does not chain arrive in one upload: found from both ends
    (the batch's records are stored before the check), flagged once."""
    key = await backoffice.register_validator("VP")
    async with backoffice.pool.acquire() as connection:
        await registry.issue_cards(connection, {card: 10_500}, now=backoffice.clock.now())
    first = record("VP", 1, card, 1, 3_500, 7_000)
    second = record("VP", 2, card, 2, 3_500, 4_000, previous=(1, "VP", 7_000))
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "VP", 1, [first, second])
        assert status == 200, answer
    async with backoffice.pool.acquire() as connection:
        flags = await connection.fetch("select reason, terminal_id, sequence from card_flags")
    assert [tuple(flag) for flag in flags] == [("balance_mismatch", "VP", 2)]


async def test_a_record_not_for_the_terminals_role_is_quarantined_and_later_records_flow(
    backoffice: Backoffice,
) -> None:
    """A POS started with another merchant's id debits the card: that sale is not its
    terminal's to report. Refusing the batch would block every later sale of the POS behind it
    for ever; instead the record is quarantined (stored, listed, its money in suspense, never
    paid to either merchant) and the POS's next, correct sale is booked."""
    key = await backoffice.register_pos("P1")
    card = "6032984000000077"
    async with backoffice.pool.acquire() as connection:
        await registry.issue_cards(connection, {card: 50_000}, now=backoffice.clock.now())
    wrong = record("P1", 1, card, 1, 20_000, 30_000, kind=UploadKind.sale)._replace(
        merchant_id="WARUNG-99"
    )
    right = record("P1", 2, card, 2, 5_000, 25_000, kind=UploadKind.sale)._replace(
        merchant_id=merchant_id, previous_counter=1, previous_balance_rupiah=30_000
    )
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "P1", 1, [wrong])
        assert status == 200, answer
        assert answer["records"] == [[1, "committed"]]
        status, answer = await post_batch(session, backoffice.url, key, "P1", 2, [right])
        assert status == 200, answer
    async with backoffice.pool.acquire() as connection:
        quarantined = await connection.fetch(
            "select terminal_id, sequence, reason, detail from quarantined_records"
        )
        outcomes = dict(
            await connection.fetch("select sequence, outcome from card_records order by 1")
        )
        suspense = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1",
            registry.suspense_account_id,
        )
        payable = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1",
            registry.merchant_payable_account_id(merchant_id),
        )
    assert [(r["terminal_id"], r["sequence"], r["reason"]) for r in quarantined] == [
        ("P1", 1, "record_not_for_role")
    ]
    assert "WARUNG-99" in quarantined[0]["detail"]
    assert outcomes == {1: "quarantined", 2: "booked"}
    assert suspense == 20_000  # what the card paid in the quarantined sale
    assert payable == 5_000 - 50  # only the right sale, less the merchant's 1 % fee
    assert await purse_balance(backoffice.pool, card) == 25_000  # equal to the card
    total = (await books_snapshot(backoffice.pool))[1]
    assert total == 0
    # Staff see it from the command line.
    listed = subprocess.run(
        [sys.executable, "-m", "ksh", "quarantine", "list", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": backoffice.database_url},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    [shown] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (shown["terminal_id"], shown["sequence"], shown["amount_rupiah"]) == ("P1", 1, 20_000)
    assert shown["reason"] == "record_not_for_role"
