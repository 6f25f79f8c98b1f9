"""A hostile validator and the chip block: it cannot use a block record to take a rider's
pending top-up (the card's proof of a block says it moved no money), a block it wrote and
never uploaded is still seen, from the next honest terminal's refused tap, and a fare it takes
from a blocked chip (ignoring the status, or writing it active with the debit key) is held
apart, or flagged when it reached the back office before the block did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus_terminals.terminal import Reason, Verdict
from bus_terminals.wire import UploadKind, UploadRecord
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole
from card_reader.ksh_card import CardStatus, KshCard
from gateways.staff import Role, StaffMember
from gateways.terminal_api import card_desk, quarantine, registry, suspension
from tests.terminals.conftest import Backoffice, admin_token, operator_id
from tests.terminals.helpers import purse_balance
from tests.terminals.test_chip_block import (
    block_lost_card,
    bus_of,
    card_records,
    desk_unblock,
    fare,
    honest_card,
    lost_card,
    read,
    store,
)
from tests.terminals.test_chip_block import cards as cards  # the fixture

top_up = {"reason": "t", "card_number": honest_card, "top_up_id": "T-1", "amount_rupiah": 10_000}


async def pay_top_up(backoffice: Backoffice) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            backoffice.url + "/admin/v1/pending-top-ups",
            json=top_up,
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as response,
    ):
        assert response.status == 201, await response.text()


async def block_with_a_top_up(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path, *, asked: bool
) -> None:
    await pay_top_up(backoffice)
    if asked:
        async with backoffice.pool.acquire() as connection:
            await card_desk.block_card(
                connection,
                honest_card,
                card_desk.BlockCause.lost,
                "lost",
                username="clerk-ani",
                now=backoffice.clock.now(),
            )
    hostile = await bus_of(backoffice, tmp_path, "V-HOSTILE")
    await hostile.sync_now()
    if not asked:
        hostile.state.chip_block_list.add([honest_card], hostile.state.chip_block_list.version)
        hostile.state.deny_list.add([honest_card], hostile.state.deny_list.version)
    tapped = hostile.tap(cards[honest_card], backoffice.clock.unix_ms(), fare())
    assert tapped.reason == Reason.card_blocked
    # The terminal edits its own journal before the upload: the card's MAC covers the block's
    # counter, kind, balance after, terminal and time, not these.
    hostile.journal.connection.execute(
        "update records set topup_rupiah = 10000, amount_rupiah = 10000, "
        "pending_topup_id = 'T-1' where kind = 'block'"
    )
    await hostile.sync_now()
    async with backoffice.pool.acquire() as connection:
        taken = await connection.fetchval(
            "select taken_terminal_id from pending_top_ups where top_up_id = 'T-1'"
        )
    assert (
        await purse_balance(backoffice.pool, honest_card) == read(cards[honest_card]).balance_rupiah
    )
    assert taken is None, "the rider's top-up was taken by a block that credited nothing"
    hostile.close()
    await hostile.sync.close()


async def test_a_requested_block_record_cannot_deliver_a_top_up(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    await block_with_a_top_up(backoffice, cards, tmp_path, asked=True)


async def test_an_unrequested_block_record_cannot_deliver_a_top_up(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    await block_with_a_top_up(backoffice, cards, tmp_path, asked=False)


async def test_a_block_never_uploaded_is_seen_from_the_next_refused_tap(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    reader = EmulatedReader("hostile")
    reader.insert(cards[honest_card])
    session = KshCard(reader, store.view(KeyRole.DEBIT, KeyRole.READ))
    session.read_state()
    now_s = backoffice.clock.unix_ms() // 1000
    session.perform(session.plan_block(terminal_id=1234, time_unix_seconds=now_s))
    reader.remove()
    assert read(cards[honest_card]).profile.status is CardStatus.BLOCKED

    honest = await bus_of(backoffice, tmp_path, "V-HONEST")
    await honest.sync_now()
    assert honest.tap(cards[honest_card], backoffice.clock.unix_ms(), fare()).reason == (
        Reason.card_blocked
    )
    await honest.sync_now()
    async with backoffice.pool.acquire() as connection:
        view = await registry.card_view(connection, honest_card)
    assert view is not None
    [flag] = view["flags"]
    assert flag["reason"] == "unrequested_block"
    assert "terminal number 1234" in flag["detail"]
    honest.close()
    await honest.sync.close()


def write_active(session: KshCard) -> None:
    """What a hostile validator can do with the key every validator holds, in a session that
    read the card: write its status back to active (the profile's write right is the debit
    key's too)."""
    from dataclasses import replace

    from card_reader.ksh_card import comm_mode, profile_file

    assert session.state is not None
    active = replace(session.state.profile, status=CardStatus.ACTIVE)
    session.desfire.write_data(profile_file, 0, active.to_bytes(), comm_mode)
    session.desfire.commit_transaction()


def write_active_with_the_debit_key(card: EmulatedCard) -> None:
    reader = EmulatedReader("hostile")
    reader.insert(card)
    try:
        session = KshCard(reader, store.view(KeyRole.DEBIT))
        session.read_state()
        write_active(session)
    finally:
        reader.remove()


async def test_a_fare_taken_from_a_card_after_its_chip_block_is_quarantined(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    """The card blocked itself (counter 1); a hostile validator writes it active again with
    the debit key and charges it (counter 2). The card's counters show the fare came after the
    block with no desk unblock between: its money waits in suspense for staff, the operator is
    not paid, and the terminal's quarantine count grows. After a desk unblock (it names the
    card's counter) the card's fares are booked as usual again."""
    from gateways.terminal_api.accounts import operator_revenue_account_id, suspense_account_id

    synced = await bus_of(backoffice, tmp_path / "v1", "V1")
    hostile = await bus_of(backoffice, tmp_path / "v2", "V-HOSTILE")
    await hostile.sync_now()  # before the block: its lists never name the card
    async with backoffice.pool.acquire() as connection:
        await block_lost_card(connection, backoffice, card_desk.BlockCause.stolen, "stolen")
    await synced.sync_now()
    assert synced.tap(cards[lost_card], backoffice.clock.unix_ms(), fare()).reason == (
        Reason.card_blocked
    )
    await synced.sync_now()

    async def balances() -> tuple[int, int, int]:
        async with backoffice.pool.acquire() as connection:
            rows = await connection.fetch(
                "select id, credits_posted - debits_posted as balance from ledger_accounts "
                "where id = any($1::uuid[])",
                [suspense_account_id, operator_revenue_account_id(operator_id)],
            )
        found = {row["id"]: int(row["balance"]) for row in rows}
        return (
            await purse_balance(backoffice.pool, lost_card),
            found.get(suspense_account_id, 0),
            found.get(operator_revenue_account_id(operator_id), 0),
        )

    purse, suspense, revenue = await balances()
    write_active_with_the_debit_key(cards[lost_card])
    ride = hostile.tap(cards[lost_card], backoffice.clock.unix_ms(), fare())
    assert ride.verdict == Verdict.accepted
    charged = purse - read(cards[lost_card]).balance_rupiah
    assert charged > 0
    await hostile.sync_now()
    assert await card_records(backoffice, lost_card) == [
        ("block", "booked", 1),
        ("fare_debit", "quarantined", 2),
    ]
    assert await balances() == (purse - charged, suspense + charged, revenue)
    async with backoffice.pool.acquire() as connection:
        held = await connection.fetch(
            "select terminal_id, reason, detail from quarantined_records where reason = $1",
            "after_chip_block",
        )
        recent = await suspension.quarantined_recently(
            connection, now=backoffice.clock.now(), terminal_id="V-HOSTILE"
        )
    assert [(row["terminal_id"], row["reason"]) for row in held] == [
        ("V-HOSTILE", "after_chip_block")
    ]
    assert "blocked on its chip at counter 1" in held[0]["detail"]
    assert recent == {"V-HOSTILE": {"after_chip_block": 1}}
    # Two supervisors decide it was a real ride after all: the operator is paid from suspense.
    entry = quarantine.EntryKey("V-HOSTILE", 1)
    async with backoffice.pool.acquire() as connection:
        for supervisor in ("budi", "dewi"):
            resolved = await quarantine.resolve(
                connection,
                entry,
                quarantine.Resolution.release,
                StaffMember(supervisor, Role.supervisor),
                "the rider was on the bus: CCTV",
                now=backoffice.clock.now(),
            )
    assert (resolved.result, resolved.rupiah) == (quarantine.ResolveResult.done, charged)
    assert await balances() == (purse - charged, suspense, revenue + charged)

    # Found again after all: staff lift the entry and the desk unblocks the chip (blocked again
    # first by an honest terminal, as it would be had the hostile one not touched it).
    assert synced.tap(cards[lost_card], backoffice.clock.unix_ms(), fare()).reason == (
        Reason.card_blocked
    )
    async with backoffice.pool.acquire() as connection:
        clerk = StaffMember("clerk-ani", Role.clerk)
        await card_desk.lift_entry(
            connection, lost_card, "found", clerk, now=backoffice.clock.now()
        )
    await desk_unblock(backoffice, cards[lost_card])
    await hostile.sync_now()
    ride = hostile.tap(cards[lost_card], backoffice.clock.unix_ms(), fare())
    assert ride.verdict == Verdict.accepted
    await hostile.sync_now()
    await synced.sync_now()
    stored = await card_records(backoffice, lost_card)
    assert stored[-1] == ("fare_debit", "booked", 4)
    for bus in (synced, hostile):
        bus.close()
        await bus.sync.close()


@given(
    st.lists(
        st.sampled_from(["block", "desk_unblock", "honest_fare", "hostile_fare"]), max_size=30
    ),
    st.lists(st.integers(1, 5), min_size=30, max_size=30),  # how many records each upload holds
)
def test_exactly_the_fares_taken_from_a_blocked_chip_are_quarantined(
    events: list[str], upload_sizes: list[int]
) -> None:
    """One card's life: blocks, desk unblocks, fares at honest terminals (only while the chip
    is active) and at a hostile one (whatever the chip says), uploaded in batches of any size
    in order. The planner, which sees only card counters, the blocks already booked and the
    desk's unblocks, quarantines exactly the fares the chip was blocked for."""
    from bus_terminals.wire import UploadKind
    from gateways.terminal_api.planning import ChipBlocks, after_chip_block, with_batch_blocks
    from tests.terminals.helpers import record

    counter, chip_blocked = 0, False
    unblocks: list[int] = []  # the card's newest counter at each desk unblock
    made: list[tuple[Any, bool, int]] = []  # (record, taken from a blocked chip, unblocks then)
    for event in events:
        if event == "desk_unblock":
            if chip_blocked:
                chip_blocked = False
                unblocks.append(counter)  # no record: the card's log is untouched
            continue
        if event == "honest_fare" and chip_blocked:
            continue  # refused by the chip: no transaction
        counter += 1
        kind = UploadKind.block if event == "block" else UploadKind.fare_debit
        taken = kind == UploadKind.fare_debit and chip_blocked
        made.append(
            (
                record("V1", counter, lost_card, counter, 1_000, 10_000)._replace(kind=kind),
                taken,
                len(unblocks),
            )
        )
        if event == "block":
            chip_blocked = True
    booked_blocks: list[int] = []
    position = 0
    for size in upload_sizes:
        batch = made[position : position + size]
        position += size
        if not batch:
            break
        # Uploaded once its last record is made, or much later: the desk's unblocks known
        # then are those until its last record, or all of them.
        for known_unblocks in (unblocks[: batch[-1][2]], unblocks):
            known = {lost_card: ChipBlocks(tuple(booked_blocks), tuple(known_unblocks))}
            blocks = with_batch_blocks(known, [r for r, _, _ in batch])
            for r, taken, _ in batch:
                judged = after_chip_block(r, blocks[lost_card]) is not None if blocks else False
                assert judged == taken, (r.card_counter, made, known_unblocks)
        booked_blocks += [r.card_counter for r, _, _ in batch if r.kind == UploadKind.block]


def test_a_fare_reported_in_doubt_after_a_chip_block_is_held_apart_when_the_log_confirms_it() -> (
    None
):
    """A hostile terminal cannot slip a fare from a blocked chip in as "in doubt" and let the
    card's log confirm it later: confirmed, it is quarantined like a committed report, both when
    reported in this batch and when reported earlier."""
    from bus_terminals.wire import RecordStatus, UploadBatch
    from gateways.terminal_api.planning import (
        ChipBlocks,
        Classified,
        InDoubt,
        RecordOutcome,
        plan_batch,
    )
    from tests.terminals.helpers import record

    here = record("V2", 7, lost_card, 3, 3_500, 10_000)
    earlier = record("V2", 5, lost_card, 2, 3_500, 13_500)
    honest = record("V1", 9, honest_card, 4, 3_500, 10_000)
    classified = Classified(held=[here._replace(status=RecordStatus.in_doubt)])
    settled = InDoubt(confirmed=[here, earlier, honest])
    blocked = {lost_card: ChipBlocks((1,), ()), honest_card: ChipBlocks((1,), (3,))}
    plan = plan_batch(UploadBatch("V2", 3, ()), classified, settled, {}, {}, blocked)
    assert plan.booked == [honest]
    assert [(q.record.sequence, q.reason) for q in plan.quarantined] == [
        (7, "after_chip_block"),
        (5, "after_chip_block"),
    ]
    assert [(p.record.sequence, p.outcome) for p in plan.new_records] == [
        (7, RecordOutcome.quarantined)
    ]
    assert [(p.record.sequence, p.outcome) for p in plan.settled_earlier] == [
        (5, RecordOutcome.quarantined),
        (9, RecordOutcome.booked),
    ]


async def test_a_fare_uploaded_before_the_block_it_followed_is_flagged_when_the_block_arrives(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    """The bus that blocked the card is offline; the hostile one uploads its fare first, and
    it is booked (nothing says the card was blocked yet). When the block arrives, the card is
    flagged naming that fare: its party was paid, and staff take it up with the terminal."""
    blocking = await bus_of(backoffice, tmp_path / "v1", "V1")
    hostile = await bus_of(backoffice, tmp_path / "v2", "V-HOSTILE")
    await hostile.sync_now()
    async with backoffice.pool.acquire() as connection:
        await block_lost_card(connection, backoffice, card_desk.BlockCause.lost, "lost")
    await blocking.sync_now()  # gets the chip-block list, then goes out of coverage
    assert blocking.tap(cards[lost_card], backoffice.clock.unix_ms(), fare()).reason == (
        Reason.card_blocked
    )
    write_active_with_the_debit_key(cards[lost_card])
    assert hostile.tap(cards[lost_card], backoffice.clock.unix_ms(), fare()).verdict == (
        Verdict.accepted
    )
    await hostile.sync_now()
    assert await card_records(backoffice, lost_card) == [("fare_debit", "booked", 2)]
    await blocking.sync_now()
    async with backoffice.pool.acquire() as connection:
        view = await registry.card_view(connection, lost_card)
    assert view is not None
    assert [(f["reason"], f["terminal_id"], f["card_counter"]) for f in view["flags"]] == [
        ("taken_after_chip_block", "V-HOSTILE", 2)
    ]
    for bus in (blocking, hostile):
        bus.close()
        await bus.sync.close()


async def after_a_block(backoffice: Backoffice, keys: dict[str, Any], sent: UploadRecord) -> None:
    """Validator VA's upload of the block it wrote on card `sent.card_number` (counter 1,
    Rp 10,000 on it), then `sent`, uploaded by its own terminal: each taken (200)."""
    from tests.terminals.helpers import post_batch, record

    block = record("VA", 1, sent.card_number, 1, 0, 10_000, previous=(0, "", 10_000))
    async with aiohttp.ClientSession() as session:
        for one in (block._replace(kind=UploadKind.block), sent):
            status, answer = await post_batch(
                session, backoffice.url, keys[one.terminal_id], one.terminal_id, 1, [one]
            )
            assert status == 200, answer


async def test_the_terminal_whose_in_doubt_fare_is_held_apart_later_is_checked_for_suspension(
    backoffice: Backoffice,
) -> None:
    """The hostile terminal reports its fare from a blocked chip in doubt; another terminal's
    upload brings the card's log that confirms it, and holds it apart: against the hostile
    terminal, which that upload suspends when it is over its limit (0 here). The uploading
    terminal's own fare is held apart too (no desk unblocked the card), but it found the card
    active after the hostile fare: no mark against it, or a card written active could get
    honest buses suspended one ride at a time."""
    from bus_terminals.wire import RecordStatus, UploadBatch, encode_batch, sign
    from gateways.terminal_api import ingest
    from tests.terminals.helpers import record

    number = "6032984000000511"
    await backoffice.issue_cards({number: 10_000})
    keys = {
        terminal: await backoffice.register_validator(terminal) for terminal in ("VA", "VH", "VB")
    }
    async with backoffice.pool.acquire() as connection:
        await card_desk.block_card(
            connection, number, card_desk.BlockCause.lost, "lost", username="clerk-ani",
            now=backoffice.clock.now(),
        )  # fmt: skip
    doubtful = record(
        "VH", 1, number, 2, 3_500, 6_500, status=RecordStatus.in_doubt, previous=(1, "VA", 10_000)
    )
    await after_a_block(backoffice, keys, doubtful)
    later = record("VB", 1, number, 3, 3_500, 3_000, previous=(2, "VH", 6_500))
    body = encode_batch(UploadBatch("VB", 1, (later,)))
    async with backoffice.pool.acquire() as connection:
        answer = await ingest.ingest_upload(
            connection, "VB", sign(keys["VB"], body), body, now=backoffice.clock.now(),
            quarantined_per_day_max=0,
        )  # fmt: skip
        held = await connection.fetch(
            "select terminal_id, reason from quarantined_records order by terminal_id"
        )
        statuses = dict(await connection.fetch("select terminal_id, status from terminals"))
    assert answer.quarantined_by_reason == {"after_chip_block": 1, "after_chip_block_again": 1}
    assert [tuple(row) for row in held] == [
        ("VB", "after_chip_block_again"),
        ("VH", "after_chip_block"),
    ]
    assert (statuses["VA"], statuses["VB"], statuses["VH"]) == ("active", "active", "suspended")
    assert await purse_balance(backoffice.pool, number) == 3_000  # the card did pay, to suspense


async def test_a_pass_written_on_a_blocked_chip_waits_for_the_quarantine_and_is_recorded_on_release(
    backoffice: Backoffice,
) -> None:
    """A hostile validator writes the card's granted pass in a Rp 0 fare after its chip block:
    the fare is held apart, the sale cannot be cancelled meanwhile (the pass is on the card),
    and a supervisor's release (nothing to book) records the activation as ingest would."""
    from gateways.terminal_api import passes
    from gateways.terminal_api.registry import Conflict
    from tests.terminals.helpers import record

    number = "6032984000000512"
    await backoffice.issue_cards({number: 10_000})
    keys = {terminal: await backoffice.register_validator(terminal) for terminal in ("VA", "VH")}
    clerk = StaffMember("clerk-ani", Role.clerk)
    async with backoffice.pool.acquire() as connection:
        granted = await passes.grant_pass(
            connection, number, "student_ecard_pelajar", username="clerk-ani",
            reason="student ID", now=backoffice.clock.now(),
        )  # fmt: skip
        await card_desk.block_card(
            connection, number, card_desk.BlockCause.lost, "lost", username="clerk-ani",
            now=backoffice.clock.now(),
        )  # fmt: skip
    ride = record("VH", 1, number, 2, 0, 10_000, previous=(1, "VA", 10_000))
    await after_a_block(
        backoffice, keys, ride._replace(fare_detail=f"pass activates {granted.pass_sale_id}")
    )
    async with backoffice.pool.acquire() as connection:
        with pytest.raises(Conflict, match=r"a fare the quarantine holds \(VH/1\)"):
            async with connection.transaction():
                await passes.cancel_pass(
                    connection, granted.pass_sale_id, member=clerk, reason="refund",
                    now=backoffice.clock.now(),
                )  # fmt: skip
        resolved = await quarantine.resolve(
            connection,
            quarantine.EntryKey("VH", 1),
            quarantine.Resolution.release,
            StaffMember("budi", Role.supervisor),
            "the student rode: the pass is hers",
            now=backoffice.clock.now(),
        )
        [sale] = [p for p in await passes.passes_of(connection, number)]
    assert (resolved.result, resolved.rupiah) == (quarantine.ResolveResult.done, 0)
    assert sale.activated_terminal_id == "VH"


def test_only_a_block_the_back_office_asked_for_holds_later_fares_apart() -> None:
    """A block nobody asked for is the terminal's word (held as `unrequested_block`): it does
    not hold the card's later fares apart. One the back office asked for does."""
    from bus_terminals.wire import UploadBatch
    from gateways.terminal_api.planning import Classified, InDoubt, plan_batch
    from tests.terminals.helpers import record

    block = record("VA", 1, honest_card, 1, 0, 10_000)._replace(kind=UploadKind.block)
    ride = record("VA", 2, honest_card, 2, 3_500, 6_500, previous=(1, "VA", 10_000))
    for asked, held in (({}, []), ({honest_card: None}, [2])):
        classified = Classified(to_book=[block, ride])
        plan = plan_batch(UploadBatch("VA", 1, ()), classified, InDoubt(), {}, asked, {})
        apart = [q.record.sequence for q in plan.quarantined if q.reason == "after_chip_block"]
        assert apart == held, asked


async def test_a_top_up_delivered_to_a_blocked_chip_stays_the_riders(
    backoffice: Backoffice,
) -> None:
    """A hostile validator (validators hold the credit key to deliver top-ups) credits the
    rider's pending top-up to the card after its chip block: held apart, the top-up is not
    taken (it follows the balance to a replacement), and the purse still equals the card."""
    from gateways.terminal_api.registry import pending_top_up_account_id
    from tests.terminals.helpers import record

    number = "6032984000000513"
    await backoffice.issue_cards({number: 10_000})
    keys = {terminal: await backoffice.register_validator(terminal) for terminal in ("VA", "VH")}
    async with backoffice.pool.acquire() as connection:
        await registry.pay_pending_top_up(
            connection, "T-STOLEN", number, 5_000, paid_at=backoffice.clock.now()
        )
        await card_desk.block_card(
            connection, number, card_desk.BlockCause.stolen, "stolen", username="clerk-ani",
            now=backoffice.clock.now(),
        )  # fmt: skip
    credit = record(
        "VH", 1, number, 2, 0, 15_000, kind=UploadKind.topup_credit, top_up=5_000,
        top_up_id="T-STOLEN", previous=(1, "VA", 10_000),
    )  # fmt: skip
    await after_a_block(backoffice, keys, credit)
    async with backoffice.pool.acquire() as connection:
        reason = await connection.fetchval(
            "select reason from quarantined_records where terminal_id = 'VH'"
        )
        taken = await connection.fetchval(
            "select taken_terminal_id from pending_top_ups where top_up_id = 'T-STOLEN'"
        )
        pending = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1",
            pending_top_up_account_id(number),
        )
    assert (reason, taken, pending) == ("after_chip_block", None, 5_000)
    assert await purse_balance(backoffice.pool, number) == 15_000  # as the card says
