"""The ingest planner's rules without a database (`gateways.terminal_api.planning`, pure):
in-doubt settlement against a card's true log, the clone rule on the ledger's answers, and
classification of a batch against what its terminal reported before."""

from __future__ import annotations

import uuid
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from bus_terminals.wire import (
    RecordStatus,
    UploadBatch,
    UploadKind,
    UploadRecord,
    card_terminal_number,
)
from gateways.terminal_api import planning
from gateways.terminal_api.accounts import (
    pending_top_up_account_id,
    purse_account_id,
    suspense_account_id,
)
from gateways.terminal_api.planning import LogEvidence, RecordOutcome, StoredReport
from ledger.records import CreateTransferResult, TransferOutcome

card = "6032984000000001"
terminals = ("V1", "V2", "V3")
revenue = uuid.UUID(int=7)


def record(
    terminal_id: str,
    sequence: int,
    counter: int,
    balance_after: int,
    status: RecordStatus,
    previous: tuple[int, int, int] = (0, 0, 0),
    amount: int = 1_000,
    kind: UploadKind = UploadKind.fare_debit,
) -> UploadRecord:
    return UploadRecord(
        terminal_id, sequence, kind, status, card, counter, amount, 0, "", balance_after,
        1_795_478_400_000 + sequence, "K1", "", "full", *previous,
    )  # fmt: skip


# ---------------------------------------------------------------------- in-doubt settlement


@st.composite
def card_histories(draw: st.DrawFn) -> tuple[list[tuple[str, int]], dict[int, bool], set[int]]:
    """The card's true log (entry c = (terminal, balance after), c = 1..n); the counters that a
    terminal reported in doubt (True: the card did commit it; False: it tore before commit and
    the card's entry at c, if any, is another transaction); the counters reported committed."""
    entries = draw(st.integers(1, 8))
    log = [
        (draw(st.sampled_from(terminals)), draw(st.integers(0, 50)) * 500) for _ in range(entries)
    ]
    in_doubt = draw(st.dictionaries(st.integers(1, entries + 1), st.booleans(), max_size=4))
    in_doubt = {c: genuine and c <= entries for c, genuine in in_doubt.items()}
    reported = draw(st.sets(st.integers(1, entries))) - {c for c, g in in_doubt.items() if g}
    return log, in_doubt, reported


def previous_of(log: list[tuple[str, int]], counter: int) -> tuple[int, int, int]:
    if counter == 1:
        return (0, 0, 0)
    terminal_id, balance = log[counter - 2]
    return (counter - 1, card_terminal_number(terminal_id), balance)


@given(card_histories())
def test_in_doubt_settles_only_as_the_card_log_shows(
    history: tuple[list[tuple[str, int]], dict[int, bool], set[int]],
) -> None:
    log, in_doubt, reported = history
    sequences = iter(range(1, 1_000))
    candidates = {}
    genuine = {}
    for counter, committed in in_doubt.items():
        if committed:
            terminal_id, balance = log[counter - 1]
        else:  # a torn write: another terminal or another balance than the card's entry
            true = log[counter - 1] if counter <= len(log) else None
            terminal_id, balance = "V9", (true[1] + 1 if true else 12_345)
        held = record(
            terminal_id, next(sequences), counter, balance, RecordStatus.in_doubt,
            previous_of(log, counter),
        )  # fmt: skip
        candidates[(held.terminal_id, held.sequence)] = held
        genuine[held.card_counter] = committed
    evidence = [LogEvidence.of(held) for held in candidates.values()]
    for counter in sorted(reported):
        terminal_id, balance = log[counter - 1]
        evidence.append(
            LogEvidence.of(
                record(
                    terminal_id, next(sequences), counter, balance, RecordStatus.committed,
                    previous_of(log, counter),
                )
            )
        )  # fmt: skip
    seen = {e.previous_counter for e in evidence if e.previous_counter}
    claimed = {e.card_counter for e in evidence if e.status == "committed"}

    settled = planning.settle_in_doubt(candidates, evidence)

    assert len(settled.confirmed) + len(settled.voided) + len(settled.still_held) == len(candidates)
    for confirmed in settled.confirmed:
        assert genuine[confirmed.card_counter], "confirmed a transaction the card never made"
        assert confirmed.status == RecordStatus.committed
    for voided in settled.voided:
        assert not genuine[voided.card_counter], "voided a transaction the card made"
        assert voided.status == RecordStatus.void
    for held in settled.still_held:
        # Nothing showed the card's entry at its counter, and no one claimed that counter.
        assert held.card_counter not in seen
        assert held.card_counter not in claimed
    for counter, committed in genuine.items():
        if counter in seen or counter in claimed:
            outcome = settled.confirmed if committed else settled.voided
            assert counter in {r.card_counter for r in outcome}


# -------------------------------------------------------------------------- the clone rule


@given(
    st.lists(
        st.tuples(
            st.sampled_from([UploadKind.fare_debit, UploadKind.sale]),
            st.sampled_from(list(CreateTransferResult)),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_counter_booked_with_other_content_moves_through_suspense(
    cases: list[tuple[UploadKind, CreateTransferResult, bool]],
) -> None:
    booked_or_repeat = {
        r for r in CreateTransferResult if r.value.startswith("exists_with_different")
    } | {CreateTransferResult.created, CreateTransferResult.exists}
    records = [
        record(terminals[0], n, n, 10_000, RecordStatus.committed, kind=kind, amount=2_000)
        for n, (kind, _, _) in enumerate(cases, start=1)
    ]
    planned = [planning.CardTransfers(r, planning.transfers_for(r, 100, revenue)) for r in records]
    outcomes = []
    for (_, result, over_limit), (_, legs, _) in zip(cases, planned):
        result = result if result in booked_or_repeat else CreateTransferResult.created
        outcomes += [TransferOutcome(leg.id, result, 1, None, over_limit) for leg in legs]

    verdict = planning.judge_booking(planned, outcomes)

    clones = [
        r
        for r, (_, result, _) in zip(records, cases)
        if result.value.startswith("exists_with_different")
    ]
    assert verdict.clones == clones
    reasons = Counter(flag.reason for flag in verdict.flags)
    assert reasons["counter_repeat"] == len(clones)
    for clone in clones:
        legs = next(p.legs for p in planned if p.record == clone)
        moved = [t for t in verdict.suspense if t.card_counter == clone.card_counter]
        assert [t.amount for t in moved] == [leg.amount for leg in legs]
        purse = purse_account_id(clone.card_number)
        for leg, instead in zip(legs, moved):
            assert purse not in (instead.debit_account_id, instead.credit_account_id)
            if purse in (leg.debit_account_id, leg.credit_account_id):
                assert suspense_account_id in (instead.debit_account_id, instead.credit_account_id)
            else:  # a merchant's fee leg: between the same accounts
                assert (instead.debit_account_id, instead.credit_account_id) == (
                    leg.debit_account_id,
                    leg.credit_account_id,
                )
            assert instead.id != leg.id
    assert not any(t.card_counter not in {c.card_counter for c in clones} for t in verdict.suspense)


# ----------------------------------------------------------------------------- classify


@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(RecordStatus)),
            st.sampled_from([None, "same", "in_doubt_before", "other_before"]),
            st.sampled_from(list(RecordOutcome)),
            st.sampled_from([UploadKind.fare_debit, UploadKind.sale]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_every_record_is_acknowledged_once_and_placed_at_most_once(
    cases: list[tuple[RecordStatus, str | None, RecordOutcome, UploadKind]],
) -> None:
    validator = planning.RoleRule(
        frozenset({UploadKind.fare_debit, UploadKind.topup_credit, UploadKind.denied}), None
    )
    records = []
    previous = {}
    for sequence, (status, before, outcome, kind) in enumerate(cases, start=1):
        now = record(terminals[0], sequence, sequence, 5_000, status, kind=kind)
        records.append(now)
        if before == "same":
            previous[sequence] = StoredReport(now, outcome)
        elif before == "in_doubt_before":
            previous[sequence] = StoredReport(
                planning.with_status(now, RecordStatus.in_doubt), outcome
            )
        elif before == "other_before":
            previous[sequence] = StoredReport(now._replace(amount_rupiah=999), outcome)
    batch = UploadBatch(terminals[0], 1, tuple(records))

    classified = planning.classify(records, previous, validator, {card}, {})
    settled = planning.InDoubt(still_held=classified.held)
    plan = planning.plan_batch(batch, classified, settled, {})

    assert [a[0] for a in classified.acknowledged] == [r.sequence for r in records]
    placed = [p.record.sequence for p in plan.new_records + plan.changed]
    assert len(placed) == len(set(placed))
    conflicts = {flag.sequence for flag in plan.conflicts}
    quarantined = {q.record.sequence for q in plan.quarantined}
    booked_or_held = {r.sequence for r in plan.booked} | {r.sequence for r in classified.held}
    for sequence, (_, before, _, kind) in enumerate(cases, start=1):
        if before == "same" or sequence in conflicts:
            assert sequence not in placed  # a repeat or a conflict stores nothing new
        if before == "other_before":
            assert sequence in conflicts
        if before is None and kind == UploadKind.sale:  # a validator's sale: not its role
            assert sequence in quarantined
            assert sequence not in booked_or_held
    for placed_record in plan.new_records:
        if placed_record.record.sequence in quarantined:
            assert placed_record.outcome == RecordOutcome.quarantined
    for placed_record in plan.changed:
        assert placed_record.record.sequence in previous
    for placed_record in plan.new_records:
        assert placed_record.record.sequence not in previous
    assert sum(plan.records_by_outcome.values()) == len(placed)


# ------------------------------------------------------------------------------- top-ups


@given(
    st.dictionaries(
        st.sampled_from(["T1", "T2", "T3"]),
        st.tuples(
            st.sampled_from([card, "6032984000000002"]),
            st.sampled_from([10_000, 50_000]),
            st.booleans(),
        ),
    ),
    st.lists(
        st.tuples(st.sampled_from(["T1", "T2", "T3", "T9", ""]), st.sampled_from([10_000, 50_000])),
        max_size=6,
    ),
)
def test_a_card_credit_comes_from_its_pending_top_up_once_or_from_suspense(
    announced: dict[str, tuple[str, int, bool]], claims: list[tuple[str, int]]
) -> None:
    pending = {
        top_up_id: planning.PendingTopUp(top_up_id, number, amount, taken)
        for top_up_id, (number, amount, taken) in announced.items()
    }
    records = [
        record(terminals[0], n, n, 60_000, RecordStatus.committed, amount=0)._replace(
            kind=UploadKind.topup_credit, topup_rupiah=amount, pending_topup_id=top_up_id
        )
        for n, (top_up_id, amount) in enumerate(claims, start=1)
    ]

    taken, refused = planning.judge_top_ups(records, pending)

    assert len(taken) + len(refused) == len(records)
    assert len({r.pending_topup_id for r in taken}) == len(taken)  # each delivered once
    for delivered in taken:
        top_up = pending[delivered.pending_topup_id]
        assert not top_up.taken
        assert (top_up.card_number, top_up.amount_rupiah) == (card, delivered.topup_rupiah)
    for r in records:
        top_up = pending.get(r.pending_topup_id)
        fits = top_up is not None and not top_up.taken and top_up.card_number == card
        if not fits or top_up is None or top_up.amount_rupiah != r.topup_rupiah:
            assert (r.terminal_id, r.sequence) in refused
        legs = planning.transfers_for(
            r, 0, revenue, top_up_from_suspense=(r.terminal_id, r.sequence) in refused
        )
        source = legs[0].debit_account_id
        if (r.terminal_id, r.sequence) in refused:
            assert source == suspense_account_id
        else:
            assert source == pending_top_up_account_id(card)


def test_an_unproven_record_outside_the_terminals_role_is_held_apart_not_in_doubt() -> None:
    """Without the card's MAC a validator's fare waits for the card's log; a validator's *sale*
    without it must not: the log could confirm it later and pay a merchant on a validator's
    word. It is quarantined, and no money moves (nothing proves the card paid)."""
    validator = planning.RoleRule(
        frozenset({UploadKind.fare_debit, UploadKind.topup_credit, UploadKind.denied}), None
    )
    proof = {card: planning.CardProof(bytes(7), (bytes(16),))}
    fare = record(terminals[0], 1, 1, 5_000, RecordStatus.committed)
    sale = record(terminals[0], 2, 2, 4_000, RecordStatus.committed, kind=UploadKind.sale)
    classified = planning.classify([fare, sale], {}, validator, {card}, proof)
    assert [r.sequence for r in classified.held] == [1]
    assert [(q.record.sequence, q.reason) for q in classified.quarantined] == [(2, "tmac_missing")]
    plan = planning.plan_batch(
        UploadBatch(terminals[0], 1, (fare, sale)),
        classified,
        planning.InDoubt(still_held=classified.held),
        {},
    )
    assert planning.card_transfers(plan, {terminals[0]: planning.CreditAccount(revenue, 0)}) == []


def test_for_a_card_that_proves_its_transactions_only_proven_reports_settle_in_doubt() -> None:
    """The card's log as a later report shows it settles an in-doubt transaction only when the
    card proved that report (its Transaction MAC verified); a terminal's unproven word neither
    confirms ours nor, claiming the counter, voids it."""
    held = record("T1", 1, 1, 9_000, RecordStatus.in_doubt)
    candidates = {("T1", 1): held}
    shows_it = record(
        "T1", 2, 2, 8_000, RecordStatus.committed, (1, card_terminal_number("T1"), 9_000)
    )
    claims_it = record("T2", 1, 1, 5_000, RecordStatus.committed)
    for witness in (shows_it, claims_it):
        unproven = [LogEvidence.of(held), LogEvidence.of(witness)]
        settled = planning.settle_in_doubt(candidates, unproven, {card})
        assert settled.still_held == [held]
        assert planning.settle_in_doubt(candidates, unproven) != settled  # without a UID: believed
    proven = [LogEvidence.of(held), LogEvidence.of(shows_it, proven=True)]
    settled = planning.settle_in_doubt(candidates, proven, {card})
    assert [r.status for r in settled.confirmed] == [RecordStatus.committed]


def test_a_held_report_reported_committed_and_confirmed_in_one_batch_is_booked_once() -> None:
    """The terminal reports committed a transaction it reported in doubt, and the same batch's
    card log confirms the held row: booked once (a top-up it delivered taken once)."""
    from bus_terminals.wire import UploadBatch
    from tests.terminals.helpers import record as wire_record

    delivered = wire_record(
        "VA", 4, "6032984000000901", 2, 0, 13_500, top_up=3_500, top_up_id="T-9"
    )
    delivered = delivered._replace(kind=UploadKind.topup_credit)
    classified = planning.Classified(to_book=[delivered], reported_before={4})
    settled = planning.InDoubt(confirmed=[delivered])
    pending = {"T-9": planning.PendingTopUp("T-9", "6032984000000901", 3_500, False)}
    plan = planning.plan_batch(UploadBatch("VA", 2, ()), classified, settled, pending)
    assert plan.booked == [delivered]
    assert (plan.top_ups_taken, plan.top_ups_refused, plan.quarantined) == ([delivered], {}, [])
    assert [(p.record.sequence, p.outcome) for p in plan.changed] == [
        (4, planning.RecordOutcome.booked)
    ]
    assert plan.settled_earlier == []
