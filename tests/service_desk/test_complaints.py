"""Complaints on the real database and HTTP: the ten-day clock (overdue by the business clock,
listed first, counted on /metrics), a refund booked once from whoever was paid and delivered
to the card at its next tap, never more than the named taps paid, four eyes above the limit,
and the monthly report's figures."""

from __future__ import annotations

import datetime as dt
import json

import aiohttp
import pytest

from gateways.service_desk import check_codes, complaints
from gateways.service_desk.complaints import ComplaintError, Resolution, State, TapRef
from gateways.staff import Role, StaffMember
from gateways.terminal_api import registry
from ledger.clock import jakarta
from tests.service_desk.conftest import Desk, operator_id, refund_limit_rupiah, set_refund_limit
from tests.setup.helpers import Ksh

ani = StaffMember("ani", Role.clerk)
budi = StaffMember("budi", Role.supervisor)
dewi = StaffMember("dewi", Role.supervisor)
citra = StaffMember("citra", Role.auditor)


async def first_tap(desk: Desk) -> TapRef:
    async with desk.pool.acquire() as connection:
        row = await connection.fetchrow(
            "select terminal_id, sequence from card_records where card_number = $1 "
            "and kind = 'fare_debit' order by card_counter limit 1",
            desk.number,
        )
    return TapRef(row["terminal_id"], row["sequence"])


async def add(desk: Desk, taps: list[TapRef], channel: str = "counter") -> int:
    async with desk.pool.acquire() as connection:
        return await complaints.add_complaint(
            connection,
            card_number=desk.number,
            channel=channel,
            description="charged twice on K1",
            taps=taps,
            received_by="ani",
            now=desk.clock.now(),
        )


async def metrics(desk: Desk) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(desk.url + "/metrics") as response:
        text = await response.text()
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("ksh_complaints_")
    }


async def test_a_complaint_is_due_in_ten_days_and_overdue_after_by_the_clock(desk: Desk) -> None:
    late = await add(desk, [], channel="lapor_hendi")
    desk.clock.advance(3 * 86_400)
    recent = await add(desk, [await first_tap(desk)], channel="phone")
    async with desk.pool.acquire() as connection:
        await complaints.investigate(
            connection, late, ani, "asked the operator", now=desk.clock.now()
        )
        found = await complaints.complaint(connection, late)
    assert found is not None
    assert (found.state, found.due_on) == (State.investigating, dt.date(2026, 12, 11))
    assert [event.state for event in found.events] == [State.received, State.investigating]
    assert await metrics(desk) == {
        'ksh_complaints_open{state="investigating"}': 1,
        'ksh_complaints_open{state="received"}': 1,
        "ksh_complaints_overdue": 0,
    }
    # 11 December, 23:59 in Semarang: the last day it is due; the next minute it is overdue.
    desk.clock.set(dt.datetime(2026, 12, 11, 23, 59, tzinfo=jakarta))
    assert (await metrics(desk))["ksh_complaints_overdue"] == 0
    desk.clock.advance(60)
    assert (await metrics(desk))["ksh_complaints_overdue"] == 1
    async with desk.pool.acquire() as connection:
        listed = await complaints.complaints(connection, today=desk.clock.today())
        assert [c.complaint_id for c in listed] == [late, recent]  # overdue first
        with pytest.raises(ComplaintError, match="only a clerk or supervisor"):
            await complaints.reject(connection, late, citra, "no", now=desk.clock.now())
        await complaints.reject(connection, late, ani, "no fault found", now=desk.clock.now())
        with pytest.raises(ComplaintError, match="answered already") as refused:
            await complaints.resolve(
                connection, late, ani, "again", refund_rupiah=0, now=desk.clock.now()
            )
        assert refused.value.code == "already_answered"
        answered = await complaints.complaint(connection, late)
    assert answered is not None and answered.overdue(desk.clock.today())  # answered late
    assert await metrics(desk) == {
        'ksh_complaints_open{state="investigating"}': 0,
        'ksh_complaints_open{state="received"}': 1,
        "ksh_complaints_overdue": 0,
    }


async def test_a_refund_is_booked_once_and_reaches_the_card_at_its_next_tap(desk: Desk) -> None:
    tap = await first_tap(desk)
    fare = await desk.fetchval(
        "select amount_rupiah from card_records where terminal_id = $1 and sequence = $2",
        tap.terminal_id,
        tap.sequence,
    )
    assert fare > 0
    first = await add(desk, [tap])
    booked_before = await desk.books()
    async with desk.pool.acquire() as connection:
        with pytest.raises(ComplaintError, match=f"at most Rp {fare:,}") as refused:
            await complaints.resolve(
                connection, first, ani, "refund", refund_rupiah=fare + 1, now=desk.clock.now()
            )
        assert refused.value.code == "over_refund"
        assert await desk.books() == booked_before  # refused: nothing booked
        outcome = await complaints.resolve(
            connection,
            first,
            ani,
            "double charge confirmed",
            refund_rupiah=fare,
            now=desk.clock.now(),
        )
        assert outcome is Resolution.done
        with pytest.raises(ComplaintError, match="answered already"):
            await complaints.resolve(
                connection, first, ani, "twice", refund_rupiah=fare, now=desk.clock.now()
            )
    count, total = await desk.books()
    assert (count, total) == (booked_before[0] + 1, 0)  # one correction transfer, balanced
    async with desk.pool.acquire() as connection:
        transfer = await connection.fetchrow(
            "select * from ledger_transfers where id = $1",
            complaints.refund_transfer_id(first, 1),
        )
        pending = await connection.fetchrow(
            "select * from pending_top_ups where top_up_id = $1", complaints.refund_top_up_id(first)
        )
    assert transfer["debit_account_id"] == registry.operator_revenue_account_id(operator_id)
    assert transfer["credit_account_id"] == registry.pending_top_up_account_id(desk.number)
    assert (transfer["amount"], transfer["code"]) == (fare, 11)  # TransferCode.correction
    assert (pending["amount_rupiah"], pending["taken_terminal_id"]) == (fare, None)
    # The same tap again, in a second complaint: it gave back all it paid already.
    second = await add(desk, [tap])
    async with desk.pool.acquire() as connection:
        with pytest.raises(ComplaintError, match="at most Rp 0"):
            await complaints.resolve(
                connection, second, budi, "again", refund_rupiah=1, now=desk.clock.now()
            )
    assert await desk.books() == (count, 0)

    # The bus learns of it at its next sync; the card takes it at its next tap.
    assert await desk.bus.sync.download()
    desk.clock.advance(3 * 3600)  # past any fare transfer window: a full fare again
    on_card_before = desk.card_balance()
    second_fare = desk.tap()
    assert desk.card_balance() == on_card_before + fare - second_fare
    await desk.upload()
    taken = await desk.fetchval(
        "select taken_terminal_id from pending_top_ups where top_up_id = $1",
        complaints.refund_top_up_id(first),
    )
    assert taken == desk.bus.terminal_id
    assert await desk.purse() == desk.card_balance()
    assert (await desk.books())[1] == 0
    revenue = await desk.fetchval(
        "select credits_posted - debits_posted from ledger_accounts where id = $1",
        registry.operator_revenue_account_id(operator_id),
    )
    assert revenue == fare + second_fare - fare


async def test_a_refund_above_the_limit_needs_a_second_supervisor(desk: Desk) -> None:
    # A fare is below the service's limit: the bar is lowered below it for this complaint.
    tap = await first_tap(desk)
    fare = await desk.fetchval(
        "select amount_rupiah from card_records where terminal_id = $1 and sequence = $2",
        tap.terminal_id,
        tap.sequence,
    )
    number = await add(desk, [tap])
    booked_before = await desk.books()
    async with desk.pool.acquire() as connection:
        if fare <= refund_limit_rupiah:
            await set_refund_limit(connection, fare - 1, desk.clock.now())

        async def resolve(member: StaffMember) -> Resolution:
            return await complaints.resolve(
                connection,
                number,
                member,
                "refund the fare",
                refund_rupiah=fare,
                now=desk.clock.now(),
            )

        assert await resolve(budi) is Resolution.awaiting_approval
        assert await desk.books() == booked_before
        with pytest.raises(ComplaintError, match="someone other"):
            await complaints.approve_refund(connection, number, budi, now=desk.clock.now())
        with pytest.raises(ComplaintError, match="only a supervisor"):
            await complaints.approve_refund(connection, number, ani, now=desk.clock.now())
        with pytest.raises(ComplaintError, match="waiting for approval"):
            await resolve(dewi)
        await complaints.approve_refund(connection, number, dewi, now=desk.clock.now())
        found = await complaints.complaint(connection, number)
        metadata = await connection.fetchval(
            "select metadata from ledger_transfers where id = $1",
            complaints.refund_transfer_id(number, 1),
        )
    assert found is not None
    assert (found.state, found.answered_by, found.approved_by) == (
        State.resolved_refund,
        "budi",
        "dewi",
    )
    assert json.loads(metadata) == {
        "approved_by": "dewi",
        "complaint": number,
        "requested_by": "budi",
    }
    logged = await desk.fetchval(
        "select username || ' ' || role || ' ' || subject || ' ' || (detail->>'amount_rupiah') "
        "from staff_actions where action = 'complaint_refund'"
    )
    assert logged == f"dewi supervisor {desk.number} {fare}"
    assert await desk.books() == (booked_before[0] + 1, 0)


async def test_the_monthly_report_counts_states_channels_days_and_overdue(desk: Desk) -> None:
    """Five complaints received in November 2026 (one at 23:30 on the 30th in Semarang, which
    is still November) and one at 00:30 on 1 December (not in November's report)."""

    def at(day: int, hour: int, minute: int = 0, month: int = 11) -> dt.datetime:
        return dt.datetime(2026, month, day, hour, minute, tzinfo=jakarta)

    async with desk.pool.acquire() as connection:

        async def complaint(channel: str, received: dt.datetime) -> int:
            return await complaints.add_complaint(
                connection,
                card_number=desk.number,
                channel=channel,
                description="report test",
                taps=[],
                received_by="ani",
                now=received,
            )

        a = await complaint("counter", at(2, 9))
        b = await complaint("phone", at(5, 10))
        c = await complaint("lapor_hendi", at(10, 11))
        d = await complaint("counter", at(20, 12))
        e = await complaint("web", at(30, 23, 30))
        f = await complaint("web", at(1, 0, 30, month=12))
        await complaints.reject(connection, a, ani, "not ours", now=at(4, 9))  # 2 days
        await complaints.resolve(
            connection, b, ani, "explained", refund_rupiah=0, now=at(11, 9)
        )  # 6 days
        await complaints.investigate(connection, c, ani, "looking", now=at(12, 9))
        await complaints.resolve(
            connection, c, budi, "late answer", refund_rupiah=0, now=at(22, 9)
        )  # 12 days: late
        await complaints.investigate(connection, f, ani, "looking", now=at(1, 9, month=12))
        report = await complaints.monthly_report(
            connection, dt.date(2026, 11, 1), today=dt.date(2026, 12, 3)
        )
    assert (d, e) == (a + 3, a + 4)
    assert report.as_json() == {
        "month": "2026-11",
        "as_of": "2026-12-03",
        "received": 5,
        "by_state": {
            "received": 2,
            "investigating": 0,
            "resolved_refund": 0,
            "resolved_no_refund": 2,
            "rejected": 1,
        },
        "by_channel": {"counter": 2, "phone": 1, "web": 1, "lapor_hendi": 1},
        "answered": 3,
        "median_days_to_answer": 6.0,
        "overdue": 2,  # c answered on day 12; d due 30 November, still open on 3 December
        "refunded_rupiah": 0,
    }


async def test_ksh_complaint_from_intake_to_refund_and_report(
    desk: Desk, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", desk.database_url)
    ksh = Ksh(capsys)
    tap = await first_tap(desk)
    fare = await desk.fetchval(
        "select amount_rupiah from card_records where terminal_id = $1 and sequence = $2",
        tap.terminal_id,
        tap.sequence,
    )
    taken = await ksh.ok(
        "complaint", "add", "--card", desk.number, "--channel", "counter",
        "--description", "the validator beeped twice", "--tap", f"{tap.terminal_id}/{tap.sequence}",
        "--as", "ani",
    )  # fmt: skip
    assert taken.out.startswith("complaint 1 taken: answer due by ")
    refused = await ksh("complaint", "add", "--card", desk.number, "--channel", "fax",
                        "--description", "x", "--as", "ani")  # fmt: skip
    assert (refused.status, refused.err.strip()) == (
        2,
        "ksh complaint: error: channel is one of counter, phone, web, lapor_hendi",
    )
    auditor = await ksh("complaint", "investigate", "1", "--note", "x", "--as", "citra")
    assert auditor.status == 2 and "only a clerk or supervisor" in auditor.err
    await ksh.ok("complaint", "investigate", "1", "--note", "asking the operator", "--as", "ani")
    shown = json.loads((await ksh.ok("complaint", "show", "1", "--json")).out)
    assert shown["state"] == "investigating"
    assert shown["taps"][0]["refundable_rupiah"] == fare
    assert f"{tap.terminal_id}/{tap.sequence}" in [row["tap"] for row in shown["card_history"]]
    before = await desk.books()
    too_much = await ksh(
        "complaint", "resolve", "1", "--answer", "sorry", "--refund", str(fare * 2), "--as", "ani"
    )
    assert too_much.status == 2 and f"at most Rp {fare:,}" in too_much.err
    assert await desk.books() == before
    done = await ksh.ok(
        "complaint", "resolve", "1", "--answer", "sorry", "--refund", str(fare), "--as", "ani"
    )
    assert "pending top-up complaint-1" in done.out
    assert (await desk.books())[0] == before[0] + 1
    listed = await ksh.ok("complaint", "list", "--all", "--json")
    assert [line["state"] for line in listed.json_lines()] == ["resolved_refund"]
    received_at = dt.datetime.fromisoformat(json.loads(listed.out)["received_at"])
    month = received_at.astimezone(jakarta).strftime("%Y-%m")  # the month in Semarang
    report = json.loads((await ksh.ok("complaint", "report", "--month", month, "--json")).out)
    assert (report["received"], report["refunded_rupiah"]) == (1, fare)
    bad = await ksh("complaint", "report", "--month", "2026-13")
    assert bad.err.strip() == "ksh complaint: error: a month is YYYY-MM, not '2026-13'"
    issued = await ksh.ok(
        "cards", "issue", "--number", "6032911100000001", "--opening-balance", "0",
        "--as", "ani", "--reason", "sold at the counter",
    )  # fmt: skip
    async with desk.pool.acquire() as connection:
        codes = await check_codes.check_codes(connection, ["6032911100000001"])
    assert issued.out.splitlines()[-1] == (
        f"check code {codes['6032911100000001']} (print it on the card)"
    )


def test_a_check_code_is_keyed_and_forgives_how_it_is_typed() -> None:
    secret, other = b"k" * 32, b"o" * 32
    code = check_codes.check_code(secret, "6032984000000001")
    assert len(code) == 9 and code[4] == "-"
    assert code != check_codes.check_code(other, "6032984000000001")
    assert code != check_codes.check_code(secret, "6032984000000002")
    typed = code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    assert check_codes.matches(secret, "6032984000000001", typed)
    assert not check_codes.matches(secret, "6032984000000002", code)
    assert not check_codes.matches(secret, "6032984000000001", "")
    assert check_codes.normalised("UUUU-UUUU") is None  # U is not in the alphabet


async def test_random_complaints_never_give_back_more_than_the_taps_paid(desk: Desk) -> None:
    """A random walk of complaints over four fares (some named by several complaints), each
    answered with a random refund, rejected, or left open, against a plain model: a refund is
    refused exactly when it exceeds what its taps have left, every refund is booked once, no
    tap gives back more than it paid, and the books balance after every step."""
    import random

    for _ in range(3):
        desk.clock.advance(3 * 3600)  # past the fare transfer window: a full fare each
        desk.tap()
    await desk.upload()
    async with desk.pool.acquire() as connection:
        rows = await connection.fetch(
            "select terminal_id, sequence, card_counter, amount_rupiah from card_records "
            "where card_number = $1 and outcome = 'booked' order by card_counter",
            desk.number,
        )
    paid = {row["card_counter"]: int(row["amount_rupiah"]) for row in rows}
    refs = {row["card_counter"]: TapRef(row["terminal_id"], row["sequence"]) for row in rows}
    assert len(paid) == 4 and all(paid.values())
    left = dict(paid)  # the model: what each tap may still give back
    chance = random.Random(17)
    corrections = 0
    for step in range(24):
        named = sorted(chance.sample(sorted(paid), chance.randint(0, 3)))
        number = await add(desk, [refs[counter] for counter in named])
        can = sum(left[counter] for counter in named)
        choice = chance.random()
        async with desk.pool.acquire() as connection:
            if choice < 0.15:
                await complaints.reject(connection, number, ani, "no", now=desk.clock.now())
                continue
            if choice < 0.25:
                continue  # left open
            asked = chance.choice([0, 1, can, can + 1, chance.randint(0, can + 5_000)])
            try:
                await complaints.resolve(
                    connection,
                    number,
                    budi,
                    f"step {step}",
                    refund_rupiah=asked,
                    now=desk.clock.now(),
                )
            except ComplaintError as error:
                assert (error.code, asked > can) == ("over_refund", True), (step, asked, can)
                continue
            assert asked <= can, (step, asked, can)
            for counter in named:  # oldest first, each up to what it has left
                part = min(asked, left[counter])
                left[counter] -= part
                asked -= part
                corrections += part > 0
            refunded = dict(
                await connection.fetch(
                    "select card_counter, sum(amount_rupiah) from complaint_refunds "
                    "group by card_counter"
                )
            )
        assert {c: paid[c] - refunded.get(c, 0) for c in paid} == left
        assert (await desk.books())[1] == 0
    assert all(0 <= left[counter] <= paid[counter] for counter in paid)
    booked = await desk.fetchval("select count(*) from ledger_transfers where code = 11")
    assert booked == corrections > 0
