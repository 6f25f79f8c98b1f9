"""A pass sold for cash at the counter, end to end on the real back office (HTTP, database) and
an emulated card on a validator: the price is the fleet's fare feed's, the cash is booked from
the seller's own drawer to the operator's revenue once per receipt, the shift's close counts it,
the next tap activates the pass and rides free; a sale not yet activated is cancelled with its
cash given back, and a terminal that still writes a cancelled pass leaves it on the card and
flags the card."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.fare.feed import compile_feed, read_feed_texts
from bus_terminals.fare.tariff import Tariff
from bus_terminals.packages import PackageKind, feed_content
from bus_terminals.validator import fare_decider
from gateways import staff
from gateways.terminal_api import counter, fleet, passes, registry
from ledger.records import TransferCode, derive_id
from tests.service_desk.conftest import Desk, operator_id
from tests.service_desk.test_citizen_page import code_of, look_up
from tests.service_desk.test_passes import call, student_pass
from tests.setup.helpers import Ksh

monthly = "umum_bulanan"
monthly_rupiah = 150_000
budi_token = "test-pass-supervisor-token-1"


def priced_feed() -> dict[str, str]:
    """The shipped feed with a priced monthly pass for any rider on the network."""
    from importlib import resources

    texts = read_feed_texts(
        str(resources.files("bus_terminals.fare").joinpath("data", "trans_semarang"))
    )
    texts["fare_passes.txt"] += (
        f"{monthly},Pass bulanan umum,,trans_semarang,30,{monthly_rupiah}.00,IDR,test\n"
    )
    return texts


async def publish_priced_feed(desk: Desk) -> Tariff:
    """The fleet's fare feed, effective now, priced as the validators will price."""
    texts = priced_feed()
    async with desk.pool.acquire() as connection:
        for username, token, role in (
            ("ani", "test-pass-clerk-token-1", staff.Role.clerk),
            ("budi", budi_token, staff.Role.supervisor),
        ):
            await staff.issue_token(
                connection,
                staff.StaffMember(username, role),
                issued_by="tests",
                now=desk.clock.now(),
                token=token,
            )
        await fleet.publish(
            connection,
            Ed25519PrivateKey.generate(),
            PackageKind.fare_feed,
            feed_content(texts),
            effective_at=desk.clock.now() - dt.timedelta(hours=1),
            now=desk.clock.now(),
            published_by="budi",
        )
    return compile_feed(texts)


def tap(desk: Desk, tariff: Tariff) -> int:
    before = desk.card_balance()
    decide = fare_decider(tariff, "K1", pending_passes=desk.bus.state.passes_for)
    feedback = desk.bus.tap(desk.card, desk.clock.unix_ms(), decide)
    assert feedback.verdict.value == "accepted", feedback
    return before - desk.card_balance()


async def fetch_transfer(desk: Desk, transfer_id: Any) -> Any:
    async with desk.pool.acquire() as connection:
        return await connection.fetchrow(
            "select * from ledger_transfers where id = $1", transfer_id
        )


async def drawer_rupiah(desk: Desk, cashier: str) -> int:
    async with desk.pool.acquire() as connection:
        return await counter.drawer_rupiah(connection, cashier)


def sale(receipt: str, **more: Any) -> dict[str, Any]:
    body = {"fare_pass_id": monthly, "source": "drawer", "receipt_id": receipt}
    return body | {"reason": "paid cash at the counter"} | more


async def test_a_pass_sold_for_cash_is_booked_once_counted_at_the_close_and_rides_free(
    desk: Desk,
) -> None:
    tariff = await publish_priced_feed(desk)
    path = f"/admin/v1/cards/{desk.number}/passes"
    books_before = await desk.books()
    status, problem = await call(desk, "POST", path, {"fare_pass_id": monthly, "reason": "x"})
    assert (status, problem["code"], problem["field"]) == (
        400,
        "not_free",
        "fare_pass_id",
    ), problem
    assert "costs Rp 150,000" in problem["detail"]
    for bad, field in (
        ({"source": "drawer:budi"}, "source"),  # never another's drawer
        ({"source": "budi"}, "source"),
        ({"receipt_id": None}, "receipt_id"),
        ({"fare_pass_id": "weekly"}, "fare_pass_id"),
        ({"operator_id": "NOBODY"}, "operator_id"),
    ):
        status, problem = await call(desk, "POST", path, {**sale("R-1"), **bad})
        assert (status // 100, problem.get("field")) == (4, field), (bad, problem)
    status, problem = await call(desk, "POST", path, sale("R-1", amount_rupiah=100_000))
    assert (status, problem["detail"]) == (
        409,
        f"pass '{monthly}' costs Rp 150,000, not Rp 100,000",
    )
    assert await desk.books() == books_before

    # A pass priced Rp 0 still goes the grant path: the drawer takes nothing. A card holds one
    # pass, so no other is sold while it waits; cancelled, it books nothing either.
    status, granted = await call(desk, "POST", path, sale("R-0", fare_pass_id=student_pass))
    assert (status, granted["amount_rupiah"], granted["drawer"]) == (201, 0, None), granted
    assert await desk.books() == books_before
    status, problem = await call(desk, "POST", path, sale("R-1"))
    assert (status, problem["code"]) == (409, "other_pass"), problem
    assert problem["detail"] == (
        f"card {desk.number} has pass '{student_pass}' waiting for its next tap: a card holds "
        f"one pass, and '{monthly}' would replace it"
    )
    cancel_grant = f"/admin/v1/passes/{granted['pass_sale_id']}/cancel"
    status, cancelled = await call(desk, "POST", cancel_grant, {"reason": "not a student"})
    assert (status, cancelled["cancelled_by"]) == (201, "ani"), cancelled
    assert await desk.books() == books_before

    status, sold = await call(desk, "POST", path, sale("R-1", amount_rupiah=monthly_rupiah))
    assert status == 201, sold
    assert (sold["amount_rupiah"], sold["drawer"], sold["operator_id"], sold["receipt_id"]) == (
        monthly_rupiah,
        "drawer:ani",
        operator_id,
        "R-1",
    )
    transfer = await fetch_transfer(desk, derive_id("pass-sale", sold["pass_sale_id"]))
    assert (transfer["code"], transfer["amount"]) == (TransferCode.pass_sale, monthly_rupiah)
    assert transfer["debit_account_id"] == counter.drawer_account_id("ani")
    assert transfer["credit_account_id"] == registry.operator_revenue_account_id(operator_id)
    assert (transfer["card_number"], transfer["bank_reference"]) == (desk.number, "R-1")
    books_sold = await desk.books()
    assert books_sold == (books_before[0] + 1, 0)
    # A repeat (the answer was lost) answers the first sale and books nothing.
    status, again = await call(desk, "POST", path, sale("R-1"))
    assert (status, again["pass_sale_id"]) == (200, sold["pass_sale_id"])
    assert await desk.books() == books_sold
    status, problem = await call(desk, "POST", path, sale("R-1", fare_pass_id=student_pass))
    assert (status, problem["field"]) == (409, "receipt_id"), problem
    status, problem = await call(desk, "POST", path, sale("R-2"))
    assert (status, problem["detail"]) == (
        409,
        f"card {desk.number} has pass '{monthly}' waiting for its next tap",
    )
    actions = "select count(*) from staff_actions where action = 'sell_pass' and subject = $1"
    assert await desk.fetchval(actions, desk.number) == 1
    code = await code_of(desk)
    async with aiohttp.ClientSession() as http:
        status, card, _ = await look_up(http, desk, code, "198.51.100.7")
    assert card["passes"] == [
        {"fare_pass_id": monthly, "sold_on": "2026-12-01", "activated_on": None,
         "valid_until": None}
    ]  # fmt: skip

    # The shift's close expects the pass's cash in ani's drawer.
    assert await drawer_rupiah(desk, "ani") == monthly_rupiah
    shift = {"shift_id": "2026-12-01-pagi", "counted_rupiah": monthly_rupiah, "reason": "end"}
    status, closed = await call(desk, "POST", "/admin/v1/counter/close-shift", shift)
    assert status == 200, closed
    assert (closed["expected_rupiah"], closed["difference_rupiah"]) == (monthly_rupiah, 0)
    assert await drawer_rupiah(desk, "ani") == 0

    # The bus hears of it at its sync; the next tap activates it and rides free.
    assert await desk.bus.sync.download()
    assert [held.pass_id for held in desk.bus.state.passes_for(desk.number)] == [monthly]
    desk.clock.advance(3600)
    assert tap(desk, tariff) == 0
    await desk.upload()
    status, listed = await call(desk, "GET", path)
    activated = {p["pass_sale_id"]: p["activated_terminal_id"] for p in listed}
    assert activated[sold["pass_sale_id"]] == desk.bus.terminal_id
    status, problem = await call(desk, "POST", f"/admin/v1/passes/{sold['pass_sale_id']}/cancel",
                                 {"reason": "changed their mind"})  # fmt: skip
    assert (status, problem["code"]) == (409, "pass_activated"), problem
    assert await desk.purse() == desk.card_balance()
    assert (await desk.books())[1] == 0

    # The rider sees it on the public card page: 30 days from the day of activation (the page
    # itself in Chromium: test_pages).
    async with aiohttp.ClientSession() as http:
        status, card, _ = await look_up(http, desk, code, "198.51.100.7")
    assert [(p["fare_pass_id"], p["activated_on"], p["valid_until"]) for p in card["passes"]] == [
        (monthly, "2026-12-01", "2026-12-30")
    ]


async def test_a_cancelled_sale_gives_the_cash_back_and_a_terminal_that_still_writes_it_is_trusted(
    desk: Desk,
) -> None:
    tariff = await publish_priced_feed(desk)
    path = f"/admin/v1/cards/{desk.number}/passes"
    status, sold = await call(desk, "POST", path, sale("R-10"))
    assert status == 201, sold
    assert await desk.bus.sync.download()  # this bus has it before the cancellation
    cancel = f"/admin/v1/passes/{sold['pass_sale_id']}/cancel"
    books_sold = await desk.books()
    # Another clerk would pay it out of a drawer that never took the cash: refused.
    async with desk.pool.acquire() as connection:
        await staff.issue_token(
            connection,
            staff.StaffMember("eko", staff.Role.clerk),
            issued_by="tests",
            now=desk.clock.now(),
            token="test-pass-clerk-token-2",
        )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            desk.url + cancel,
            json={"reason": "mine now"},
            headers={"Authorization": "Bearer test-pass-clerk-token-2"},
        ) as response,
    ):
        assert (response.status, (await response.json())["code"]) == (409, "not_your_sale")
    assert await desk.books() == books_sold
    status, cancelled = await call(desk, "POST", cancel, {"reason": "bought by mistake"})
    assert (status, cancelled["cancelled_by"]) == (201, "ani"), cancelled
    transfer = await fetch_transfer(desk, derive_id("pass-sale-cancel", sold["pass_sale_id"]))
    assert (transfer["code"], transfer["amount"]) == (TransferCode.pass_sale, monthly_rupiah)
    assert transfer["debit_account_id"] == registry.operator_revenue_account_id(operator_id)
    assert transfer["credit_account_id"] == counter.drawer_account_id("ani")
    assert await drawer_rupiah(desk, "ani") == 0  # the cash went back to the rider
    status, again = await call(desk, "POST", cancel, {"reason": "again"})
    assert (status, again["cancelled_at"]) == (200, cancelled["cancelled_at"])
    assert await desk.books() == (books_sold[0] + 1, 0)
    async with desk.pool.acquire() as connection:
        assert await passes.waiting_passes(connection) == []
    status, problem = await call(desk, "POST", "/admin/v1/passes/pass-0000000000/cancel",
                                 {"reason": "x"})  # fmt: skip
    assert status == 404, problem

    # The bus did not sync since: it writes the pass. The card has it, so it rides with it.
    desk.clock.advance(3600)
    assert tap(desk, tariff) == 0
    await desk.upload()
    flag = await desk.fetchval(
        "select detail from card_flags where card_number = $1 and reason = $2",
        desk.number,
        passes.pass_cancelled_activated,
    )
    assert flag == (
        f"pass sale {sold['pass_sale_id']} was cancelled by ani (Rp 150,000 given back) "
        "and is on the card"
    )
    status, listed = await call(desk, "GET", path)
    (shown,) = listed
    assert (shown["activated_terminal_id"], shown["cancelled_by"]) == (desk.bus.terminal_id, "ani")
    assert await desk.bus.sync.download()
    assert desk.bus.state.passes_for(desk.number) == []
    assert await desk.purse() == desk.card_balance()
    assert (await desk.books())[1] == 0


async def test_ksh_cards_pass_shows_the_price_sells_from_your_own_drawer_and_cancels(
    desk: Desk, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await publish_priced_feed(desk)
    monkeypatch.setenv("DATABASE_URL", desk.database_url)
    ksh = Ksh(capsys)
    who = ("--as", "ani", "--reason", "paid cash")
    sell = ("cards", "pass", "--card", desk.number, "--product", monthly, *who)
    price = await ksh(*sell)
    assert price.status == 2
    assert price.err.strip() == (
        f"ksh cards: error: pass {monthly} costs Rp 150,000: take the cash, then run again "
        "with --drawer ani (your drawer); nothing was sold"
    )
    no_receipt = await ksh(*sell, "--drawer", "ani")
    assert no_receipt.status == 2
    assert "a sale needs --receipt ID" in no_receipt.err
    other = await ksh(*sell, "--drawer", "budi", "--receipt", "KWT-7")
    assert other.status == 2
    assert "--drawer is your own drawer (ani)" in other.err
    assert await desk.fetchval("select count(*) from pending_passes") == 0
    sold = await ksh.ok(*sell, "--drawer", "ani", "--receipt", "KWT-7")
    assert sold.out.startswith(
        f"receipt KWT-7: pass {monthly} sold to card {desk.number} for Rp 150,000 into "
        "drawer:ani (pass-"
    )
    again = await ksh.ok(*sell, "--drawer", "ani", "--receipt", "KWT-7")
    assert "(sold before: nothing booked again)" in again.out
    assert await drawer_rupiah(desk, "ani") == monthly_rupiah
    sale_id = await desk.fetchval("select pass_sale_id from pending_passes")
    shown = (await ksh.ok("cards", "show", desk.number)).out
    assert f"{sale_id} {monthly} Rp 150,000 waiting" in shown
    cancelled = await ksh.ok("cards", "pass-cancel", sale_id, "--as", "ani", "--reason", "mistake")
    assert cancelled.out.strip().endswith("give the rider Rp 150,000 from your drawer")
    assert await drawer_rupiah(desk, "ani") == 0
    shown = (await ksh.ok("cards", "show", desk.number)).out
    assert f"{sale_id} {monthly} Rp 150,000 waiting, cancelled by ani" in shown
    staff_rows = await desk.fetchval(
        "select json_agg(action order by action_id) from staff_actions where subject in ($1, $2)",
        desk.number,
        sale_id,
    )
    assert json.loads(staff_rows) == ["sell_pass", "cancel_pass"]
