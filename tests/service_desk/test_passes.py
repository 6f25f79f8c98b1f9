"""A pass granted at the desk, end to end on the real back office (HTTP, database) and an
emulated student card on a validator: the grant waits, the bus downloads it at its sync, the
next tap writes it onto the card in its fare transaction and rides free, the upload records the
activation, and the pass runs out by the clock after its 183 days."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from bus_terminals.fare.feed import load_feed
from bus_terminals.fare.trip_state import decode_trip_state
from bus_terminals.validator import fare_decider
from card_reader.deck import make_ksh_deck
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard, RiderCategory
from gateways import staff
from ledger.clock import jakarta
from tests.service_desk.conftest import Desk, opening_rupiah
from tests.service_desk.test_desk_pages import session_for, staffer
from tests.setup.helpers import Ksh

clerk_token = "test-pass-clerk-token-1"
student_pass = "student_ecard_pelajar"
student_fare_rupiah = 1_000


@pytest.fixture
def card_deck() -> Iterator[tuple[Any, EmulatedCard, str]]:
    """The desk's card is a school student's (the pass is for Pelajar)."""
    store = demo_key_store()
    (card,) = make_ksh_deck(
        store,
        [opening_rupiah],
        seed="student-pass",
        rider_categories=[RiderCategory.SCHOOL_STUDENT],
    )
    reader = EmulatedReader("numbering")
    reader.insert(card)
    number = str(KshCard(reader, store.view(KeyRole.READ)).read_state().profile.card_number)
    reader.remove()
    yield store, card, number


def tap(desk: Desk) -> int:
    """The card taps the bus, whose validator activates the passes its sync brought."""
    before = desk.card_balance()
    decide = fare_decider(load_feed(), "K1", pending_passes=desk.bus.state.passes_for)
    feedback = desk.bus.tap(desk.card, desk.clock.unix_ms(), decide)
    assert feedback.verdict.value == "accepted", feedback
    return before - desk.card_balance()


def trip_state(desk: Desk, card: EmulatedCard | None = None) -> Any:
    """The trip state on `card` (default: the desk's card), read as an inspector would."""
    reader = EmulatedReader("desk inspection")
    reader.insert(card or desk.card)
    try:
        raw = KshCard(reader, desk.store.view(KeyRole.READ)).read_state().trip_state
    finally:
        reader.remove()
    return decode_trip_state(raw)


async def call(desk: Desk, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            desk.url + path,
            json=body,
            headers={"Authorization": f"Bearer {clerk_token}"},
        ) as response,
    ):
        return response.status, await response.json()


async def test_a_student_subscription_is_activated_at_the_next_tap_rides_free_and_runs_out(
    desk: Desk,
) -> None:
    async with desk.pool.acquire() as connection:
        await staff.issue_token(
            connection,
            staff.StaffMember("ani", staff.Role.clerk),
            issued_by="tests",
            now=desk.clock.now(),
            token=clerk_token,
        )
    path = f"/admin/v1/cards/{desk.number}/passes"
    books_before = await desk.books()
    status, problem = await call(
        desk, "POST", path, {"fare_pass_id": "monthly", "reason": "student ID shown"}
    )
    assert (status, problem["field"]) == (400, "fare_pass_id"), problem
    assert "no pass 'monthly' in the fare feed" in problem["detail"]
    status, problem = await call(desk, "POST", "/admin/v1/cards/99999999999/passes",
                                 {"fare_pass_id": student_pass, "reason": "x"})  # fmt: skip
    assert status == 404, problem
    status, granted = await call(
        desk, "POST", path, {"fare_pass_id": student_pass, "reason": "student ID seen at desk"}
    )
    assert status == 201, granted
    assert (granted["amount_rupiah"], granted["sold_by"]) == (0, "ani")
    assert await desk.books() == books_before  # a grant at Rp 0 books nothing
    grant = {"fare_pass_id": student_pass, "reason": "again"}
    status, problem = await call(desk, "POST", path, grant)
    assert (status, problem["detail"]) == (
        409,
        f"card {desk.number} has pass '{student_pass}' waiting for its next tap",
    )
    assert (
        await desk.fetchval(
            "select count(*) from staff_actions where action = 'grant_pass' and subject = $1",
            desk.number,
        )
        == 1
    )

    # Before the bus has synced, the student pays the student fare.
    desk.clock.advance(3 * 3600)
    assert tap(desk) == student_fare_rupiah
    assert trip_state(desk).pass_index == 0
    assert await desk.bus.sync.download()
    waiting = desk.bus.state.passes_for(desk.number)
    assert [(held.sale_id, held.pass_id) for held in waiting] == [
        (granted["pass_sale_id"], student_pass)
    ]
    desk.clock.advance(3 * 3600)
    assert tap(desk) == 0  # activated in this tap's card transaction, and priced with it
    on_card = trip_state(desk)
    assert on_card.pass_index == load_feed().pass_index[student_pass] + 1
    await desk.upload()
    detail = await desk.fetchval(
        "select fare_detail from card_records where card_number = $1 order by time_ms desc limit 1",
        desk.number,
    )
    assert detail == f"pass {student_pass} activates {granted['pass_sale_id']}"
    status, listed = await call(desk, "GET", path)
    assert status == 200
    assert [(p["pass_sale_id"], p["activated_terminal_id"]) for p in listed] == [
        (granted["pass_sale_id"], desk.bus.terminal_id)
    ]
    status, problem = await call(desk, "POST", path, grant)  # validators could not tell it apart
    assert (status, problem["detail"]) == (
        409,
        f"card {desk.number} has pass '{student_pass}' activated today: renew from tomorrow",
    )
    # Activated once: the next taps (before and after the bus hears) leave the card as it is.
    desk.clock.advance(86_400)
    assert tap(desk) == 0
    assert trip_state(desk).pass_last_day == on_card.pass_last_day
    assert await desk.bus.sync.download()
    assert desk.bus.state.passes_for(desk.number) == []

    # 183 days from the day of activation (Tuesday 1 December 2026): free on the last day,
    # the student fare the day after (a Wednesday, not a holiday).
    desk.clock.set(dt.datetime(2027, 6, 1, 18, 0, tzinfo=jakarta))
    assert tap(desk) == 0
    desk.clock.set(dt.datetime(2027, 6, 2, 8, 0, tzinfo=jakarta))
    assert tap(desk) == student_fare_rupiah
    await desk.upload()
    assert await desk.purse() == desk.card_balance()
    assert (await desk.books())[1] == 0


async def test_ksh_cards_pass_grants_and_refuses_in_one_line(
    desk: Desk, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", desk.database_url)
    ksh = Ksh(capsys)
    granted = await ksh.ok("cards", "pass", "--card", desk.number, "--product", student_pass,
                           "--as", "ani", "--reason", "student ID seen")  # fmt: skip
    assert granted.out.startswith(f"pass {student_pass} granted to card {desk.number} (pass-")
    refused = await ksh("cards", "pass", "--card", desk.number, "--product", "nope",
                        "--as", "ani", "--reason", "student ID seen")  # fmt: skip
    assert refused.status == 2
    assert refused.err.strip().startswith("ksh cards: error: no pass 'nope' in the fare feed")
    auditor = await ksh("cards", "pass", "--card", desk.number, "--product", student_pass,
                        "--as", "citra", "--reason", "student ID seen")  # fmt: skip
    assert auditor.status == 2
    assert await desk.fetchval("select count(*) from pending_passes") == 1


def new_student_card(desk: Desk) -> tuple[EmulatedCard, str]:
    """The replacement: another school student's card, numbered after the desk's."""
    (card,) = make_ksh_deck(
        desk.store,
        [0],
        seed="student-pass-replacement",
        rider_categories=[RiderCategory.SCHOOL_STUDENT],
        first_number=int(desk.number) + 1,
    )
    return card, str(int(desk.number) + 1)


async def lose_and_replace(
    desk: Desk,
    old_number: str,
    new_number: str,
    *,
    wait: dt.timedelta = dt.timedelta(0),
    register: bool = True,
) -> Any:
    """Card `old_number`, registered to the rider (unless it is already: a replacement is
    registered with the card it replaces), is blocked as lost and replaced by a new card issued
    empty; with the default `wait` of 0 its balance and passes move at once. Returns the
    replacement (`card_desk.Replacement`)."""
    from gateways.terminal_api import card_desk, registry

    now = desk.clock.now()
    async with desk.pool.acquire() as connection:
        if register:
            await card_desk.register_holder(
                connection, old_number, "Sri Wahyuni", "3374010101900001", "081234567890",
                username="ani", now=now,
            )  # fmt: skip
        await card_desk.block_card(
            connection, old_number, card_desk.BlockCause.lost, "lost", username="ani", now=now
        )
        await registry.issue_cards(connection, {new_number: 0}, now=now)
        return await card_desk.request_replacement(
            connection, old_number, new_number, username="ani", now=now, wait=wait
        )


async def grant_then_replace(
    desk: Desk, new_number: str, before_the_move: Any = None, *, carried_only: bool = False
) -> str:
    """A student pass granted to the desk's card (unless `carried_only`), which is then lost
    and replaced (wait 0: its balance and passes move at once); `before_the_move` runs between
    the grant and the block. Returns the sale's id ("": none granted)."""
    from gateways.terminal_api import passes

    now = desk.clock.now()
    sale = ""
    if not carried_only:  # else: the card's pass is on its chip already
        async with desk.pool.acquire() as connection:
            granted = await passes.grant_pass(
                connection, desk.number, student_pass, username="ani", reason="student ID", now=now
            )
        sale = granted.pass_sale_id
    if before_the_move is not None:
        await before_the_move()
    replaced = await lose_and_replace(desk, desk.number, new_number)
    assert replaced.moved_at is not None
    return sale


def tap_with_passes(desk: Desk, bus: Any, card: EmulatedCard) -> int:
    """`card` taps `bus`, whose validator activates the passes its last sync brought; the
    pass on the card after it (0: none)."""
    decide = fare_decider(load_feed(), "K1", pending_passes=bus.state.passes_for)
    desk.clock.advance(600)
    ride = bus.tap(card, desk.clock.unix_ms(), decide)
    assert ride.verdict.value == "accepted", ride
    return int(trip_state(desk, card).pass_index)


async def ride_with_a_granted_pass(desk: Desk) -> Any:
    """The student pass granted to the desk's card, written on its chip at its next tap (as
    the bus's sync brought it) and uploaded; the sale (`passes.PendingPass`)."""
    from gateways.terminal_api import passes

    async with desk.pool.acquire() as connection:
        granted = await passes.grant_pass(
            connection, desk.number, student_pass, username="ani", reason="student ID",
            now=desk.clock.now(),
        )  # fmt: skip
    assert await desk.bus.sync.download()
    assert tap_with_passes(desk, desk.bus, desk.card) == load_feed().pass_index[student_pass] + 1
    await desk.upload()
    return granted


async def test_a_pass_still_waiting_when_its_card_is_lost_goes_to_the_replacement(
    desk: Desk,
) -> None:
    """A student's pass granted but not yet on the chip when the card is lost moves with the
    balance to the new card, whose next tap activates it; the sale keeps its id and says which
    card it was sold for. The lost card's number takes no more passes."""
    from gateways.terminal_api import passes
    from gateways.terminal_api.registry import Conflict

    new_card, new_number = new_student_card(desk)
    sale = await grant_then_replace(desk, new_number)
    async with desk.pool.acquire() as connection:
        waiting = await passes.waiting_passes(connection)
        with pytest.raises(Conflict, match=f"replaced by {new_number}: sell or grant it"):
            await passes.grant_pass(
                connection, desk.number, student_pass, username="ani", reason="again",
                now=desk.clock.now(),
            )  # fmt: skip
    assert [(sale_id, card, pass_id) for sale_id, card, pass_id, _ in waiting] == [
        (sale, new_number, student_pass)
    ]
    sold_for = "select sold_for_card from pending_passes where pass_sale_id = $1"
    assert await desk.fetchval(sold_for, sale) == desk.number

    assert await desk.bus.sync.download()
    assert desk.bus.state.passes_for(desk.number) == []
    pass_index = load_feed().pass_index[student_pass] + 1
    assert tap_with_passes(desk, desk.bus, new_card) == pass_index
    await desk.upload()
    activated = "select activated_terminal_id from pending_passes where pass_sale_id = $1"
    assert await desk.fetchval(activated, sale) == desk.bus.terminal_id
    assert (await desk.books())[1] == 0


@pytest.mark.parametrize("first", ["lost card", "new card"])
async def test_a_stale_terminal_that_writes_a_moved_pass_on_the_lost_card_is_seen(
    desk: Desk, tmp_path: Any, first: str
) -> None:
    """A bus that downloaded the pass for the lost card before the block, and has not synced
    since, still writes it there. Trust the card: the first activation wins, and the lost card
    is flagged (`pass_on_replaced_card` when it was first, and the new card does not get the
    pass; `pass_on_two_cards` when the new card had it already)."""
    from bus_terminals.simulator import Bus, validator_keys
    from bus_terminals.sync import UploadStatus
    from bus_terminals.wire import public_key_text
    from gateways.terminal_api import registry
    from gateways.terminal_api.registry import TerminalRole

    new_card, new_number = new_student_card(desk)
    pass_index = load_feed().pass_index[student_pass] + 1
    async with aiohttp.ClientSession() as http:
        stale = Bus(
            "BUS-D2", "K1", tmp_path / "stale", validator_keys(desk.store), desk.url, http,
            now_ms=desk.clock.unix_ms,
        )  # fmt: skip
        try:
            async with desk.pool.acquire() as connection:
                await registry.register_terminal(
                    connection,
                    stale.terminal_id,
                    public_key_text(stale.private_key.public_key()),
                    TerminalRole.validator,
                    operator_id="TRANS-SEMARANG",
                )

            async def stale_bus_downloads() -> None:
                assert await stale.sync.download()
                assert stale.state.passes_for(desk.number) != []

            sale = await grant_then_replace(desk, new_number, stale_bus_downloads)
            if first == "new card":
                assert await desk.bus.sync.download()
                assert tap_with_passes(desk, desk.bus, new_card) == pass_index
                await desk.upload()
            assert tap_with_passes(desk, stale, desk.card) == pass_index  # the stale bus
            assert await stale.sync.upload_once() is UploadStatus.acknowledged
            if first == "lost card":
                assert await desk.bus.sync.download()
                assert desk.bus.state.passes_for(new_number) == []  # activated, on the lost card
        finally:
            stale.close()
    flags = await desk.fetchval(
        "select array_agg(reason order by flag_id) from card_flags where card_number = $1",
        desk.number,
    )
    expected = "pass_on_replaced_card" if first == "lost card" else "pass_on_two_cards"
    assert expected in flags, flags
    on = "select activated_terminal_id from pending_passes where pass_sale_id = $1"
    assert await desk.fetchval(on, sale) == (
        stale.terminal_id if first == "lost card" else desk.bus.terminal_id
    )
    assert (await desk.books())[1] == 0


async def test_a_pass_on_a_lost_cards_chip_is_carried_to_the_new_card_to_the_same_last_day(
    desk: Desk,
) -> None:
    """A student pass activated on the card, lost 20 days later: the replacement takes the
    pass, and its next tap writes it to run to the same last day as on the old chip (not 183
    days from that tap); the rider's view says so. A pass that has run out is not carried."""
    from gateways.service_desk import check_codes, citizen
    from gateways.terminal_api import passes

    granted = await ride_with_a_granted_pass(desk)
    on_old_chip = trip_state(desk).pass_last_day
    pass_index = load_feed().pass_index[student_pass] + 1

    desk.clock.advance(20 * 86_400)
    new_card, new_number = new_student_card(desk)
    await lose_and_replace(desk, desk.number, new_number)
    async with desk.pool.acquire() as connection:
        [carried] = await passes.passes_of(connection, new_number)
    assert (carried.carried_from, carried.amount_rupiah) == (granted.pass_sale_id, 0)
    assert carried.from_day == dt.date(2026, 12, 1)  # the day the old card first rode with it

    assert await desk.bus.sync.download()
    [waiting] = desk.bus.state.passes_for(new_number)
    assert (waiting.sale_id, waiting.from_ms > 0) == (carried.pass_sale_id, True)
    assert tap_with_passes(desk, desk.bus, new_card) == pass_index
    assert trip_state(desk, new_card).pass_last_day == on_old_chip  # not 183 days from today
    await desk.upload()
    async with desk.pool.acquire() as connection:
        tariff = await passes.sale_tariff(connection, desk.clock.now())
        [shown] = passes.passes_on_card(await passes.passes_of(connection, new_number), tariff)
        secret = await check_codes.check_code_secret(connection)
        code = check_codes.check_code(secret, new_number)
        view = await citizen.citizen_card(connection, new_number, code, now=desk.clock.now())
    assert shown.last_day == dt.date(2026, 12, 1) + dt.timedelta(days=182)
    assert view is not None
    assert [p.last_day for p in view.passes] == [shown.last_day]
    assert (await desk.books())[1] == 0


async def test_a_pass_that_ran_out_is_not_carried(desk: Desk) -> None:
    from gateways.terminal_api import passes

    await ride_with_a_granted_pass(desk)
    desk.clock.advance(200 * 86_400)  # 183 days and more
    _, new_number = new_student_card(desk)
    async with desk.pool.acquire() as connection:
        carried = await passes.carry_running_passes(
            connection, desk.number, new_number, now=desk.clock.now()
        )
    assert carried == []


async def test_a_carried_pass_that_runs_out_before_the_new_card_taps_stops_waiting(
    desk: Desk,
) -> None:
    """Carried with 13 days left, then the new card is not used for 20 days: its rider sees the
    carried pass's last day before the tap, terminals stop listing it once that day is past
    (written, it would be a pass already run out), and the card can have a new pass, which
    the next tap writes to run its full length from that day."""
    from gateways.service_desk import check_codes, citizen
    from gateways.terminal_api import passes
    from gateways.terminal_api.registry import Conflict

    async def rider_sees() -> list[dt.date | None]:
        async with desk.pool.acquire() as connection:
            secret = await check_codes.check_code_secret(connection)
            code = check_codes.check_code(secret, new_number)
            view = await citizen.citizen_card(connection, new_number, code, now=desk.clock.now())
        assert view is not None
        return [held.last_day for held in view.passes]

    async def staff_see_it_ran_out() -> bool:
        async with session_for(desk.url) as http:
            await staffer(http, desk.url, "ani")
            async with http.get(desk.url + f"/finance/cards?number={new_number}") as page:
                return 'data-pass="ran-out"' in await page.text()

    await ride_with_a_granted_pass(desk)
    pass_index = load_feed().pass_index[student_pass] + 1
    last_day = dt.date(2026, 12, 1) + dt.timedelta(days=182)

    desk.clock.advance(170 * 86_400)
    new_card, new_number = new_student_card(desk)
    await lose_and_replace(desk, desk.number, new_number)
    assert await rider_sees() == [last_day]
    assert await desk.bus.sync.download()
    assert [p.sale_id for p in desk.bus.state.passes_for(new_number)] != []
    grant = {"username": "ani", "reason": "student ID again"}
    async with desk.pool.acquire() as connection:
        with pytest.raises(Conflict, match="waiting for its next tap"):
            await passes.grant_pass(
                connection, new_number, student_pass, now=desk.clock.now(), **grant
            )

    assert not await staff_see_it_ran_out()
    desk.clock.advance(20 * 86_400)  # past the old chip's last day, the new card never used
    assert await rider_sees() == []
    assert await staff_see_it_ran_out()
    assert await desk.bus.sync.download()
    assert desk.bus.state.passes_for(new_number) == []
    async with desk.pool.acquire() as connection:
        granted = await passes.grant_pass(
            connection, new_number, student_pass, now=desk.clock.now(), **grant
        )
    assert await desk.bus.sync.download()
    assert [p.sale_id for p in desk.bus.state.passes_for(new_number)] == [granted.pass_sale_id]
    assert tap_with_passes(desk, desk.bus, new_card) == pass_index
    today = desk.clock.now().astimezone(jakarta).date()
    assert (
        trip_state(desk, new_card).pass_last_day
        == (today + dt.timedelta(days=182) - dt.date(1970, 1, 1)).days
    )
    assert (await desk.books())[1] == 0


async def test_a_replacement_card_takes_no_pass_until_the_old_cards_passes_have_moved(
    desk: Desk,
) -> None:
    """During the wait for offline taps the new card takes no pass (the old card's move would
    bring a second one); after the move it does."""
    from gateways.terminal_api import card_desk, passes
    from gateways.terminal_api.registry import Conflict

    _, new_number = new_student_card(desk)
    await lose_and_replace(desk, desk.number, new_number, wait=card_desk.replacement_wait_default)
    now = desk.clock.now()
    async with desk.pool.acquire() as connection:
        grant = {"username": "ani", "reason": "student ID", "now": now}
        with pytest.raises(Conflict, match=f"replaces card {desk.number}, whose balance"):
            await passes.grant_pass(connection, new_number, student_pass, **grant)
        assert await passes.passes_of(connection, new_number) == []
        later = now + dt.timedelta(days=3)
        assert await card_desk.move_due_balances(connection, now=later)
        granted = await passes.grant_pass(connection, new_number, student_pass, **grant)
    assert granted.card_number == new_number


async def test_a_terminal_that_writes_a_carried_pass_on_the_lost_card_does_not_take_it_away(
    desk: Desk,
) -> None:
    """A hostile (or broken) validator lists the pass carried to the new card under the lost
    card, whose chip it writes: the card is flagged, and the carried pass still waits for the
    new card."""
    from bus_terminals.wire import WaitingPass
    from gateways.terminal_api import passes

    await ride_with_a_granted_pass(desk)
    desk.clock.advance(86_400)
    _, new_number = new_student_card(desk)
    await grant_then_replace(desk, new_number, carried_only=True)
    async with desk.pool.acquire() as connection:
        [carried] = await passes.passes_of(connection, new_number)
    assert carried.carried_from is not None
    # The bus has not synced since the block: it still lets the lost card ride.
    wrong = WaitingPass(carried.pass_sale_id, student_pass, desk.clock.unix_ms(), 0)
    desk.bus.state.pending_passes[desk.number] = [wrong]
    desk.clock.advance(600)
    feedback = desk.bus.tap(
        desk.card,
        desk.clock.unix_ms(),
        fare_decider(load_feed(), "K1", pending_passes=desk.bus.state.passes_for),
    )
    assert feedback.verdict.value == "accepted", feedback
    await desk.upload()
    flags = await desk.fetchval(
        "select array_agg(reason) from card_flags where card_number = $1", desk.number
    )
    assert "carried_pass_elsewhere" in flags, flags
    async with desk.pool.acquire() as connection:
        waiting = await passes.waiting_carried_passes(connection, now=desk.clock.now())
    assert [row[:2] for row in waiting] == [[carried.pass_sale_id, new_number]]


async def test_a_third_pass_is_sold_only_when_a_validator_would_write_it(desk: Desk) -> None:
    """A pass running, and a renewal running on from it: a third sale the day after would look
    written already to every validator (the card lasts longer than a pass activated that day),
    so it is refused and says from when it is sold; from that day it is written, and follows."""
    from gateways.terminal_api import passes
    from gateways.terminal_api.registry import Conflict

    pass_index = load_feed().pass_index[student_pass] + 1

    async def grant() -> passes.PendingPass:
        async with desk.pool.acquire() as connection:
            return await passes.grant_pass(
                connection, desk.number, student_pass, username="ani", reason="student ID",
                now=desk.clock.now(),
            )  # fmt: skip

    for _ in range(2):  # the pass, then its renewal the next day
        await grant()
        assert await desk.bus.sync.download()
        assert tap_with_passes(desk, desk.bus, desk.card) == pass_index
        await desk.upload()
        desk.clock.advance(86_400)
    last_day = trip_state(desk).pass_last_day
    first = dt.date(2026, 12, 1)
    assert dt.date(1970, 1, 1) + dt.timedelta(days=last_day) == first + dt.timedelta(days=365)
    with pytest.raises(Conflict, match=f"until {first + dt.timedelta(days=365)}: a renewal is"):
        await grant()
    desk.clock.set(dt.datetime.combine(first + dt.timedelta(days=184), dt.time(8), jakarta))
    await grant()
    assert await desk.bus.sync.download()
    assert tap_with_passes(desk, desk.bus, desk.card) == pass_index
    assert trip_state(desk).pass_last_day == last_day + 183


async def test_a_carried_pass_is_carried_again_when_the_new_card_is_lost_too(desk: Desk) -> None:
    """Card A's pass is carried to B, which rides with it, then B is lost too: C takes it, and
    writes it to end on A's last day still."""
    from gateways.terminal_api import passes

    pass_index = load_feed().pass_index[student_pass] + 1
    await ride_with_a_granted_pass(desk)
    last_day_on_a = trip_state(desk).pass_last_day
    numbers = [desk.number]
    for step in (1, 2):  # A -> B, then B -> C, ten days apart
        desk.clock.advance(10 * 86_400)
        (card,) = make_ksh_deck(
            desk.store, [0], seed=f"carried-{step}",
            rider_categories=[RiderCategory.SCHOOL_STUDENT],
            first_number=int(desk.number) + step,
        )  # fmt: skip
        number = str(int(desk.number) + step)
        await lose_and_replace(desk, numbers[-1], number, register=step == 1)
        numbers.append(number)
        assert await desk.bus.sync.download()
        assert tap_with_passes(desk, desk.bus, card) == pass_index
        reader = EmulatedReader("desk inspection")
        reader.insert(card)
        raw = KshCard(reader, desk.store.view(KeyRole.READ)).read_state().trip_state
        reader.remove()
        assert decode_trip_state(raw).pass_last_day == last_day_on_a, step
        await desk.upload()
    async with desk.pool.acquire() as connection:
        on_c = await passes.passes_of(connection, numbers[2])
    assert [(p.from_day, p.activated_terminal_id is not None) for p in on_c] == [
        (dt.date(2026, 12, 1), True)
    ]
    assert (await desk.books())[1] == 0
