"""The demo's service desk: three riders' stories of the day, told through the desk's own code
(the admin API the counter's staff use, the complaint rules, `ksh serve`'s hourly refund job)
against the demo's back office and bank simulator, with a bus of the desk's own.

1. **A lost card replaced.** Sri's registered card rides in the morning, then at noon on a
   feeder bus out of network reach, and is lost; clerk Ani blocks it (cause lost) and replaces
   it with a new card registered to Sri. The balance the books know moves to the new card as a
   pending top-up, and the new card's evening tap on the bus takes it. The feeder's tap
   arrives after the move: booked from suspense, the card flagged `purse_closed` (what a
   replacement wait of 0 days lets through; never paid twice).
2. **A complaint refunded within its clock.** Rudi complains through Lapor Hendi about his
   morning fare (the bus broke down two stops on); Ani investigates and answers with a refund
   of that fare, which his card takes at its evening tap.
3. **Expired pending top-ups given back.** 100 days before the service day Dewi paid Rp 150,000
   into a new card from her bank account, and someone paid Rp 75,000 into another through an
   ATM (no payer account); neither card ever tapped. The refund job ran 4 days ago (withdrawn)
   and runs now (expired): Dewi's money goes back to her account by a SNAP transfer, reconciled
   on the statement as a payout; the other waits on the refund-due list for the counter.

`ksh demo` calls `before_the_day` first (the ledger's time only runs forward, so what happened
100 days ago is played before anything of the service day is booked), `run_desk` after the
QRIS sales and before end of day (the fare taken back from the operator and the SNAP refund are
in the day's close and statement), and `desk_invariants` with its other invariants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.clock import Clock, jakarta

# The demo's desk runs with a replacement wait of 0 days (`ksh serve --replacement-wait-days 0`),
# and its summary says so. The wait is for offline taps of the lost card still on their way; the
# demo's service day is one day, and setting the business clock three days forward would put
# the new card's evening tap and the day's close on another day than the fleet's. So the balance
# the books know moves at once, and the one tap still on its way (the feeder bus's) shows what
# the wait guards against: it arrives after the move and is paid from suspense, not twice.
replacement_wait_days = 0
paid_days_ago = 100  # the old VA payments: more than the 90 days a top-up waits for its card
swept_days_ago = 4  # the refund job's earlier run: withdrawn then, the 3-day wait over now
# The desk's buses: one on the network all day, and a feeder bus with no network out on its
# route, which uploads at the depot in the evening.
desk_terminal_id, feeder_terminal_id = "BUS-DESK-01", "BUS-DESK-02"
payer_account_no = "1350077770001"  # Dewi's account at the demo's bank
lost_opening_rupiah, complainer_opening_rupiah = 50_000, 30_000
old_top_ups_rupiah = (150_000, 75_000)  # Dewi's (from her account), the ATM's (no account)
morning, feeder_ride, evening = dt.time(7, 10), dt.time(12, 30), dt.time(17, 40)
# The desk's stock of new cards: numbers far above the fleet's and the shops' decks.
desk_first_card_number = 6_032_900_008_000_001


class BusinessClock(Clock):
    """The demo's business clock: the day's clock, set back while a scene plays what happened
    before the service day (a VA payment 100 days ago, the refund job's run 4 days ago). The
    back office and the bank read it as their only clock, so what they record then is as old
    as it says; monotonic time is the day's (durations never run backwards)."""

    def __init__(self, day: Clock) -> None:
        self.day = day
        self.back = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return self.day.now() - self.back

    def monotonic(self) -> float:
        return self.day.monotonic()

    @contextlib.contextmanager
    def set_back(self, by: dt.timedelta) -> Iterator[None]:
        self.back = by
        try:
            yield
        finally:
            self.back = dt.timedelta(0)


@dataclass
class Desk:
    """What the scenes share: the database, the back office's admin API in clerk Ani's name,
    the desk's two buses and the service day."""

    connection: Any
    http: Any
    office_url: str
    token: str
    clock: BusinessClock
    today: dt.date
    bus: Any
    feeder: Any  # the bus with no network until the evening
    decide: Any
    store: Any

    async def admin(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await admin(self.http, self.office_url, self.token, path, body)

    async def issue(self, card: Any, opening_rupiah: int) -> str:
        return await issue(self.http, self.office_url, self.token, card, opening_rupiah)

    def tap(self, card: Any, at: dt.time, second: int = 0, bus: Any = None) -> Any:
        moment = dt.datetime.combine(self.today, at, jakarta) + dt.timedelta(seconds=second)
        return (bus or self.bus).tap(card, int(moment.timestamp() * 1000), self.decide)

    def chip_rupiah(self, card: Any) -> int:
        from card_reader.emulator import EmulatedReader
        from card_reader.keys import KeyRole
        from card_reader.ksh_card import KshCard

        reader = EmulatedReader("desk inspection")
        reader.insert(card)
        balance = KshCard(reader, self.store.view(KeyRole.READ)).read_state().balance_rupiah
        reader.remove()
        return int(balance)


async def admin(
    http: Any, office_url: str, token: str, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    """A call of the back office's admin API in the name of the token's staff member."""
    async with http.post(
        office_url + path,
        json={"reason": "demo: the service desk", **body},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        answer = await response.json()
        if response.status >= 300:
            raise RuntimeError(f"{path}: {response.status} {answer}")
        return dict(answer)


async def issue(http: Any, office_url: str, token: str, card: Any, opening_rupiah: int) -> str:
    """The counter sells a new card: issued through the admin API with its UID."""
    from card_reader.keys import demo_key_store
    from ksh.commands.demo import issue_body

    body = issue_body(card, demo_key_store(), opening_rupiah)
    await admin(http, office_url, token, "/admin/v1/cards", body)
    return str(body["card_number"])


def desk_deck(today: dt.date) -> list[Any]:
    """The desk's five cards, the same on every call: Sri's lost one and its replacement,
    Rudi's, and the two that got the old VA payments. Sold at the counter in the days before
    `today`, valid for five years (whatever day the demo plays)."""
    from card_reader.deck import make_ksh_deck
    from card_reader.keys import demo_key_store

    return make_ksh_deck(
        demo_key_store(),
        [lost_opening_rupiah, 0, complainer_opening_rupiah, 0, 0],
        seed=f"desk-{today}",
        issue_date=today - dt.timedelta(days=paid_days_ago),
        expiry_date=today + dt.timedelta(days=5 * 365),
        first_number=desk_first_card_number,
    )


async def clerk_token(connection: Any, clock: Clock) -> str:
    from gateways import staff
    from gateways.staff import Role

    return await staff.issue_token(
        connection,
        staff.StaffMember("ani", Role.clerk),
        issued_by="ksh demo",
        now=clock.now(),
        label="the demo's service desk",
    )


async def before_the_day(
    connection: Any,
    app: Any,
    office_url: str,
    clock: BusinessClock,
    today: dt.date,
    simulator: Any,
) -> list[str]:
    """What happened before the service day, played first: 100 days ago two new cards are
    sold and paid into by VA (Dewi from her account, the other at an ATM), and never tap; 4
    days ago `ksh serve`'s refund job withdraws both from the terminals' list. Returns the
    two cards' numbers."""
    import aiohttp

    from gateways.bank_simulator.bank import BankAccount
    from settlement import refund_sweep

    bank = simulator.bank
    bank.accounts.setdefault(payer_account_no, BankAccount(payer_account_no, "DEWI LESTARI", 0))
    company_code = simulator.settings.company_code
    numbers = []
    with clock.set_back(dt.timedelta(days=paid_days_ago)):
        token = await clerk_token(connection, clock)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for card, rupiah in zip(desk_deck(today)[3:], old_top_ups_rupiah, strict=True):
                numbers.append(await issue(http, office_url, token, card, 0))
                dewi = len(numbers) == 1
                paid = await simulator.pay_va(
                    company_code.rjust(8) + numbers[-1],
                    rupiah,
                    payer_name="DEWI LESTARI" if dewi else "NASABAH ATM",
                    payer_account_no=payer_account_no if dewi else "",
                )
                assert paid.credited, paid
    with clock.set_back(dt.timedelta(days=swept_days_ago)):
        await refund_sweep.sweep_once(app)  # withdrawn from the terminals' list
    return numbers


async def run_desk(
    connection: Any,
    app: Any,
    office_url: str,
    clock: BusinessClock,
    today: dt.date,
    simulator: Any,
    bank_url: str,
    old_cards: list[str],
) -> dict[str, Any]:
    """Scenes 1 and 2, and the end of 3 (`old_cards`: `before_the_day`'s); what happened
    (JSON), for the summary and `desk_invariants`."""
    import aiohttp

    from bus_terminals.fare.feed import load_feed, service_end_date
    from bus_terminals.simulator import Bus, corridors, validator_keys
    from bus_terminals.validator import fare_decider
    from card_reader.keys import demo_key_store
    from ksh.demo_qris import register_terminal

    operator = await connection.fetchval(
        "select operator_id from operators order by operator_id limit 1"
    )
    if operator is None:
        return {}
    store = demo_key_store()
    cards = desk_deck(today)
    token = await clerk_token(connection, clock)
    keys = {
        terminal_id: await register_terminal(connection, terminal_id, operator=operator)
        for terminal_id in (desk_terminal_id, feeder_terminal_id)
    }
    tariff = load_feed()
    with tempfile.TemporaryDirectory(prefix="ksh-demo-desk-") as folder:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            bus, feeder = (
                Bus(
                    terminal_id,
                    corridors[0],
                    Path(folder),
                    validator_keys(store),
                    office_url,
                    http,
                    key,
                    now_ms=clock.unix_ms,
                    feed_service_end=service_end_date(tariff),
                )
                for terminal_id, key in keys.items()
            )
            desk = Desk(
                connection,
                http,
                office_url,
                token,
                clock,
                today,
                bus,
                feeder,
                fare_decider(tariff, corridors[0]),
                store,
            )
            try:
                story = await ride_and_ask(desk, cards[:3])
                story["expired_top_ups"] = await give_back_old_top_ups(
                    desk, app, simulator, bank_url, old_cards
                )
            finally:
                bus.close()
                feeder.close()
    return story


async def ride_and_ask(desk: Desk, cards: list[Any]) -> dict[str, Any]:
    """Scenes 1 and 2: the morning's rides, the lost card blocked and replaced, the complaint
    answered with a refund, and the evening's taps that take both."""
    lost, new, complainer = cards
    lost_number = await desk.issue(lost, lost_opening_rupiah)
    new_number = await desk.issue(new, 0)
    complainer_number = await desk.issue(complainer, complainer_opening_rupiah)
    holder = {"name": "Sri Wahyuni", "nik": "3374014107850002", "phone": "081225550123"}
    await desk.admin(f"/admin/v1/cards/{lost_number}/holder", holder)
    for bus in (desk.bus, desk.feeder):
        await bus.sync_now()  # at the depot before the day's first trip
    desk.tap(lost, morning)
    desk.tap(complainer, morning, 60)
    late = desk.tap(lost, feeder_ride, bus=desk.feeder)  # the feeder has no network
    await desk.bus.sync_now()  # the networked bus's taps uploaded before the desk acts
    old_chip = desk.chip_rupiah(lost)
    await desk.admin(
        f"/admin/v1/cards/{lost_number}/block",
        {"cause": "lost", "reason": "Sri lost her card on her way back from lunch"},
    )
    moved = await desk.admin(
        f"/admin/v1/cards/{lost_number}/replace",
        {"new_card_number": new_number, "reason": "Sri's lost card replaced at the counter"},
    )
    complaint = await refund_a_fare(desk, complainer_number)
    await desk.bus.sync_now()  # the bus learns of the block and the two pending top-ups
    collected = desk.tap(new, evening)
    refunded = desk.tap(complainer, evening, 60)
    for bus in (desk.bus, desk.feeder):
        await bus.sync_now()  # the feeder at the depot: its noon tap of the old card arrives
    return {
        "replacement_wait_days": replacement_wait_days,
        "lost_card": {
            "old_card": lost_number,
            "new_card": new_number,
            "holder": holder["name"],
            "old_chip_rupiah": old_chip,
            "late_tap_rupiah": late.amount_rupiah,
            "moved_rupiah": int(moved["purse_rupiah"] or 0) + int(moved["pending_rupiah"] or 0),
            "collected_rupiah": collected.top_up_rupiah,
            "new_chip_rupiah": desk.chip_rupiah(new),
        },
        "complaint": {
            **complaint,
            "delivered_rupiah": refunded.top_up_rupiah,
            "chip_rupiah": desk.chip_rupiah(complainer),
        },
    }


async def refund_a_fare(desk: Desk, card_number: str) -> dict[str, Any]:
    """Rudi's complaint about his morning fare, through Lapor Hendi: taken, investigated and
    answered with a refund of what that tap paid, all by clerk Ani."""
    from gateways.service_desk import complaints
    from gateways.staff import Role, StaffMember

    tap = await desk.connection.fetchrow(
        "select terminal_id, sequence, amount_rupiah from card_records where card_number = $1 "
        "and outcome = 'booked' and kind = 'fare_debit' order by time_ms limit 1",
        card_number,
    )
    assert tap is not None, f"card {card_number}'s morning fare was not booked"
    clerk = StaffMember("ani", Role.clerk)
    complaint_id = await complaints.add_complaint(
        desk.connection,
        card_number=card_number,
        channel=complaints.Channel.lapor_hendi,
        description="The bus broke down two stops after I got on; I paid the full fare.",
        taps=[complaints.TapRef(tap["terminal_id"], tap["sequence"])],
        received_by=clerk.username,
        now=desk.clock.now(),
    )
    await complaints.investigate(
        desk.connection,
        complaint_id,
        clerk,
        "the operator's log shows the bus out of service at 07:25",
        now=desk.clock.now(),
    )
    await complaints.resolve(
        desk.connection,
        complaint_id,
        clerk,
        "fare refunded: the ride was not given",
        refund_rupiah=int(tap["amount_rupiah"]),
        now=desk.clock.now(),
    )
    found = await complaints.complaint(desk.connection, complaint_id)
    assert found is not None and found.answered_at is not None
    return {
        "complaint": complaint_id,
        "card": card_number,
        "channel": found.channel.value,
        "tap": f"{tap['terminal_id']}/{tap['sequence']}",
        "refund_rupiah": found.refund_rupiah,
        "due_on": found.due_on.isoformat(),
        "answered_on": complaints.local_day(found.answered_at).isoformat(),
    }


async def give_back_old_top_ups(
    desk: Desk, app: Any, simulator: Any, bank_url: str, numbers: list[str]
) -> list[dict[str, Any]]:
    """The end of scene 3: the refund job runs now, the withdrawal's wait over: both expire,
    Dewi's is sent to her bank account. Each refund as it stands after."""
    from gateways.snap.partners import load_partner, save_partner
    from settlement import refund_sweep

    partner = await load_partner(desk.connection, simulator.settings.partner_id)
    assert partner is not None
    if not partner.base_url:  # the refund job calls the bank where the partner says
        await save_partner(
            desk.connection, dataclasses.replace(partner, base_url=bank_url + "/snap")
        )
    await refund_sweep.sweep_once(app)  # the wait is over: expired, Dewi's sent to her bank
    rows = await desk.connection.fetch(
        "select r.top_up_id, r.card_number, r.amount_rupiah, r.state, "
        "p.created_at as paid_at from top_up_refunds r join pending_top_ups p using (top_up_id) "
        "where r.card_number = any($1::text[]) order by r.card_number",
        numbers,
    )
    return [
        {
            "top_up": row["top_up_id"],
            "card": row["card_number"],
            "rupiah": int(row["amount_rupiah"]),
            "paid_on": row["paid_at"].astimezone(jakarta).date().isoformat(),
            "refund": row["state"],
        }
        for row in rows
    ]


def desk_lines(desk: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per scene, for the summary and the report."""
    lines = []
    lost = desk.get("lost_card")
    if lost:
        lines.append(
            {
                "scene": "lost card replaced",
                "what_happened": f"{lost['holder']}'s card {lost['old_card']} blocked as lost, "
                f"replaced by {lost['new_card']} at once (the demo's replacement wait is "
                f"{desk['replacement_wait_days']} days, `ksh serve`'s 3); the new card's evening "
                "tap took the balance; a late offline tap of the old card "
                f"(Rp {lost['late_tap_rupiah']:,}) booked from suspense, flagged purse_closed",
                "rupiah": lost["moved_rupiah"],
            }
        )
    complaint = desk.get("complaint")
    if complaint:
        lines.append(
            {
                "scene": "complaint refunded",
                "what_happened": f"complaint {complaint['complaint']} ({complaint['channel']}) "
                f"about tap {complaint['tap']}, answered {complaint['answered_on']} (due "
                f"{complaint['due_on']}); refund taken at the card's next tap",
                "rupiah": complaint["refund_rupiah"],
            }
        )
    refunds = desk.get("expired_top_ups", [])
    if refunds:
        where = {
            "paid": "paid back to the payer's account by SNAP",
            "due": "on the refund-due list",
        }
        told = "; ".join(
            f"Rp {refund['rupiah']:,} for card {refund['card']} "
            f"{where.get(refund['refund'], refund['refund'])}"
            for refund in refunds
        )
        lines.append(
            {
                "scene": "expired top-ups refunded",
                "what_happened": f"{len(refunds)} VA top-ups paid {refunds[0]['paid_on']}, no "
                f"card took them: {told}",
                "rupiah": sum(refund["rupiah"] for refund in refunds),
            }
        )
    return lines


# ------------------------------------------------------------------------------ invariants


@dataclass(frozen=True, slots=True)
class LostCardFacts:
    old_chip_rupiah: int  # the lost card's own balance when it was blocked
    late_taps_rupiah: int  # what its taps uploaded after the move paid, from suspense
    late_taps_flagged: bool  # each of those taps flagged purse_closed
    moved_rupiah: int  # what the replacement says moved (purse and pending top-ups)
    transfers_rupiah: tuple[int, ...]  # the card_replacement transfers booked for the old card
    announced: tuple[tuple[int, str | None], ...]  # its pending top-ups: rupiah, taken by
    old_accounts_rupiah: int  # the old purse and pending top-up accounts now
    old_purse_closed: bool
    collected_rupiah: int  # what the new card's tap took
    new_chip_rupiah: int
    new_books_rupiah: int  # the new card's purse account


def replaced_card_moved_once(facts: LostCardFacts) -> bool:
    """The old purse closed at 0, the new card given exactly the books' balance of the old one
    at the move (the card's own and what its taps not yet uploaded spent, which later came
    from suspense, flagged), once, and its tap took it."""
    from gateways.terminal_api import card_desk
    from settlement.top_up_refunds import expired_taker

    return (
        facts.moved_rupiah > 0
        and facts.moved_rupiah
        == facts.old_chip_rupiah + facts.late_taps_rupiah
        == sum(facts.transfers_rupiah)
        and facts.late_taps_flagged
        and sum(rupiah for rupiah, _ in facts.announced) == facts.moved_rupiah
        and all(
            taker not in (None, expired_taker, card_desk.desk_taker) for _, taker in facts.announced
        )
        and facts.collected_rupiah == facts.moved_rupiah
        and facts.old_accounts_rupiah == 0
        and facts.old_purse_closed
        and facts.new_chip_rupiah == facts.new_books_rupiah
    )


@dataclass(frozen=True, slots=True)
class ComplaintFacts:
    due_on: dt.date
    answered_on: dt.date | None
    refund_rupiah: int
    named_taps_paid_rupiah: int  # what the taps it names paid someone
    transfers_rupiah: tuple[int, ...]  # its refund's ledger transfers
    top_ups_rupiah: tuple[int, ...]  # its refund's pending top-ups


def complaints_answered_in_time(found: list[ComplaintFacts]) -> bool:
    """Every complaint answered on or before its due day; a refund no more than the named taps
    paid, booked once and announced once to the card."""
    return bool(found) and all(
        facts.answered_on is not None
        and facts.answered_on <= facts.due_on
        and 0 <= facts.refund_rupiah <= facts.named_taps_paid_rupiah
        and sum(facts.transfers_rupiah) == facts.refund_rupiah
        and facts.top_ups_rupiah == ((facts.refund_rupiah,) if facts.refund_rupiah else ())
        for facts in found
    )


@dataclass(frozen=True, slots=True)
class ExpiredFacts:
    expired: tuple[str, ...]  # top-ups taken by the expiry
    refunds: tuple[tuple[str, str, int, bool], ...]  # top-up, state, rupiah, payout matched
    refund_payable_rupiah: int


def expired_top_ups_refunded(facts: ExpiredFacts) -> bool:
    """Each expired top-up paid back through the bank and matched on the statement, or on the
    refund-due list (or paid at the counter); the refund payable holds what the list owes."""
    return (
        bool(facts.expired)
        and sorted(facts.expired) == sorted(top_up for top_up, *_ in facts.refunds)
        and all(
            (state == "paid" and matched) or state in ("due", "paid_cash")
            for _, state, _, matched in facts.refunds
        )
        and facts.refund_payable_rupiah
        == sum(rupiah for _, state, rupiah, _ in facts.refunds if state == "due")
    )


async def desk_invariants(connection: Any, desk: dict[str, Any]) -> dict[str, bool]:
    return {
        "replaced_card_moved_once": replaced_card_moved_once(
            await lost_card_facts(connection, desk["lost_card"])
        ),
        "complaints_answered_in_time": complaints_answered_in_time(
            await complaint_facts(connection)
        ),
        "expired_top_ups_refunded": expired_top_ups_refunded(await expired_facts(connection)),
    }


async def lost_card_facts(connection: Any, lost: dict[str, Any]) -> LostCardFacts:
    from gateways.terminal_api import registry
    from ledger.records import AccountFlags, TransferCode

    old, new = registry.card_accounts(lost["old_card"]), registry.card_accounts(lost["new_card"])
    accounts = {
        row["id"]: row
        for row in await connection.fetch(
            "select id, credits_posted - debits_posted as balance, flags from ledger_accounts "
            "where id = any($1::uuid[])",
            [old.purse_account_id, old.pending_top_up_account_id, new.purse_account_id],
        )
    }
    transfers = await connection.fetch(
        "select amount from ledger_transfers where code = $1 and card_number = $2",
        int(TransferCode.card_replacement),
        lost["old_card"],
    )
    announced = await connection.fetch(
        "select amount_rupiah, taken_terminal_id from pending_top_ups "
        "where card_number = $1 and top_up_id like $2",
        lost["new_card"],
        f"replace:{lost['old_card']}:%",
    )
    late = await connection.fetchrow(
        """select coalesce(sum(t.amount), 0) as rupiah, count(distinct t.card_counter) as taps,
                  (select count(*) from card_flags
                    where card_number = $1 and reason = 'purse_closed') as flagged
             from ledger_transfers t join ledger_accounts a on a.id = t.debit_account_id
            where t.card_number = $1 and a.kind = 'suspense'""",
        lost["old_card"],
    )
    old_purse = accounts[old.purse_account_id]
    return LostCardFacts(
        old_chip_rupiah=lost["old_chip_rupiah"],
        late_taps_rupiah=int(late["rupiah"]),
        late_taps_flagged=late["flagged"] == late["taps"],
        moved_rupiah=lost["moved_rupiah"],
        transfers_rupiah=tuple(int(row["amount"]) for row in transfers),
        announced=tuple((int(r["amount_rupiah"]), r["taken_terminal_id"]) for r in announced),
        old_accounts_rupiah=int(old_purse["balance"])
        + int(accounts[old.pending_top_up_account_id]["balance"]),
        old_purse_closed=bool(old_purse["flags"] & AccountFlags.closed),
        collected_rupiah=lost["collected_rupiah"],
        new_chip_rupiah=lost["new_chip_rupiah"],
        new_books_rupiah=int(accounts[new.purse_account_id]["balance"]),
    )


async def complaint_facts(connection: Any) -> list[ComplaintFacts]:
    from ledger.records import TransferCode

    rows = await connection.fetch(
        """select c.due_on, (c.answered_at at time zone 'Asia/Jakarta')::date as answered_on,
                  c.refund_rupiah,
                  (select coalesce(sum(r.amount_rupiah), 0) from complaint_taps t
                     join card_records r using (terminal_id, sequence)
                    where t.complaint_id = c.complaint_id and r.outcome = 'booked'
                      and r.kind in ('fare_debit', 'sale')) as named_paid,
                  array(select amount from ledger_transfers where code = $1
                          and bank_reference = 'complaint-' || c.complaint_id) as transfers,
                  array(select amount_rupiah from pending_top_ups
                         where top_up_id = 'complaint-' || c.complaint_id) as top_ups
             from complaints c order by c.complaint_id""",
        int(TransferCode.correction),
    )
    return [
        ComplaintFacts(
            row["due_on"],
            row["answered_on"],
            int(row["refund_rupiah"]),
            int(row["named_paid"]),
            tuple(int(amount) for amount in row["transfers"]),
            tuple(int(amount) for amount in row["top_ups"]),
        )
        for row in rows
    ]


async def expired_facts(connection: Any) -> ExpiredFacts:
    from settlement.top_up_refunds import expired_taker, refund_payable_owner

    expired = await connection.fetch(
        "select top_up_id from pending_top_ups where taken_terminal_id = $1", expired_taker
    )
    refunds = await connection.fetch(
        """select r.top_up_id, r.state, r.amount_rupiah,
                  exists(select 1 from settlement_match_movements m
                          where m.movement_id = r.partner_reference_no) as matched
             from top_up_refunds r order by r.top_up_id"""
    )
    payable = await connection.fetchval(
        "select coalesce(sum(credits_posted - debits_posted), 0) from ledger_accounts "
        "where kind = 'refund_payable' and owner_reference = $1",
        refund_payable_owner(),
    )
    return ExpiredFacts(
        tuple(row["top_up_id"] for row in expired),
        tuple(
            (row["top_up_id"], row["state"], int(row["amount_rupiah"]), bool(row["matched"]))
            for row in refunds
        ),
        int(payable),
    )
