"""The matcher: each pass, each exception reason, and properties over random statements."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given
from hypothesis import strategies as st

from settlement.matching import (
    ExpectedMovement,
    LineReason,
    MatchKind,
    MatchRules,
    MovementKind,
    match,
)
from settlement.statements import Direction, StatementLine

day = dt.date(2026, 11, 23)
account = "1350012345678"


def line(
    amount: int,
    reference: str,
    direction: Direction = Direction.credit,
    *,
    source_line: int = 1,
    description: str = "",
    type_code: str = "NTRF",
    value_date: dt.date = day,
    occurrence: int = 0,
) -> StatementLine:
    return StatementLine(
        "mandiri",
        account,
        value_date,
        amount,
        direction,
        reference,
        f"B{source_line}",
        type_code,
        description,
        "s.sta",
        source_line,
        occurrence,
    )


def movement(
    movement_id: str,
    amount: int,
    reference: str,
    direction: Direction = Direction.credit,
    kind: MovementKind = MovementKind.collection,
    group: str = "",
    value_date: dt.date = day,
) -> ExpectedMovement:
    return ExpectedMovement(
        movement_id, kind, account, direction, amount, value_date, reference, group
    )


def test_one_to_one_by_reference_and_amount() -> None:
    result = match(
        [
            line(150_000, "VA1", source_line=1),
            line(4_750_000, "PO17", Direction.debit, source_line=2),
        ],
        [
            movement("m1", 150_000, "VA1"),
            movement("p17", 4_750_000, "PO17", Direction.debit, MovementKind.payout),
        ],
    )
    assert {(m.kind, m.movement_ids) for m in result.matches} == {
        (MatchKind.one_to_one, ("m1",)),
        (MatchKind.one_to_one, ("p17",)),
    }
    assert result.exceptions == ()
    assert result.unmatched_movement_ids == ()


def test_reference_found_in_description() -> None:
    result = match(
        [line(150_000, "", description="VA PAYMENT 88001000017 KSH")],
        [movement("m1", 150_000, "88001000017")],
    )
    assert [m.movement_ids for m in result.matches] == [("m1",)]


def test_one_to_many_group_credit() -> None:
    movements = [movement(f"m{i}", 50_000, f"VA{i}", group="KSHVA20261123") for i in range(5)]
    result = match([line(250_000, "KSHVA20261123")], movements)
    assert len(result.matches) == 1
    assert result.matches[0].kind is MatchKind.one_to_many
    assert len(result.matches[0].movement_ids) == 5


def test_many_to_one_chunks() -> None:
    lines = [line(60_000, "PO9", Direction.debit, source_line=n) for n in (1, 2)] + [
        line(30_000, "PO9", Direction.debit, source_line=3)
    ]
    result = match(lines, [movement("p9", 150_000, "PO9", Direction.debit, MovementKind.payout)])
    assert [(m.kind, len(m.line_keys)) for m in result.matches] == [(MatchKind.many_to_one, 3)]


def test_a_later_pass_taking_a_group_member_lets_the_group_match() -> None:
    """The group credit is off by m1 until the chunked payout lines take m1 (pass 3); the next
    round matches the group, as a run over the leftovers would."""
    lines = [
        line(50_000, "GRP1", source_line=1),
        line(400, "PO1", source_line=2),
        line(600, "PO1", source_line=3),
    ]
    movements = [
        movement("m0", 50_000, "VA1", group="GRP1"),
        movement("m1", 1_000, "PO1", group="GRP1"),
    ]
    result = match(lines, movements)
    assert sorted((m.kind, m.movement_ids) for m in result.matches) == [
        (MatchKind.many_to_one, ("m1",)),
        (MatchKind.one_to_many, ("m0",)),
    ]
    assert result.exceptions == ()


def test_tolerances() -> None:
    rules = MatchRules(amount_tolerance_rupiah=100, date_tolerance_days=1)
    close = match(
        [line(150_050, "VA1", value_date=day + dt.timedelta(days=1))],
        [movement("m1", 150_000, "VA1")],
        rules,
    )
    assert close.matches[0].difference_rupiah == 50
    off_amount = match([line(151_000, "VA1")], [movement("m1", 150_000, "VA1")], rules)
    assert off_amount.exceptions[0].reason is LineReason.amount_mismatch
    off_date = match(
        [line(150_000, "VA1", value_date=day + dt.timedelta(days=3))],
        [movement("m1", 150_000, "VA1")],
        rules,
    )
    assert off_date.exceptions[0].reason is LineReason.date_out_of_tolerance
    assert off_date.unmatched_movement_ids == ("m1",)


def test_exception_reasons() -> None:
    payout = movement("p17", 4_750_000, "PO17", Direction.debit, MovementKind.payout)
    fee = movement("f17", 2_500, "PO17", Direction.debit, MovementKind.fee)
    lines = [
        line(4_750_000, "PO17", Direction.debit, source_line=1),
        line(2_500, "PO17", Direction.debit, source_line=2, type_code="NCHG"),
        line(2_500, "PO17", Direction.debit, source_line=2, type_code="NCHG", occurrence=1),
        line(
            6_500, "", Direction.debit, source_line=3, type_code="NCHG", description="BIAYA ADMIN"
        ),
        line(1_000_000, "VA99999", source_line=4),
    ]
    result = match(lines, [payout, fee])
    reasons = sorted(e.reason for e in result.exceptions)
    assert reasons == sorted(
        [LineReason.duplicate_line, LineReason.unexpected_fee, LineReason.unknown_reference]
    )
    assert len(result.matches) == 2


def test_no_reference_no_match() -> None:
    # Same amount and date, but the line names nothing: a reference criterion is always required.
    result = match(
        [line(150_000, "", description="SETORAN TUNAI")], [movement("m1", 150_000, "VA1")]
    )
    assert result.matches == ()
    assert result.exceptions[0].reason is LineReason.unknown_reference


# ---------------------------------------------------------------------------- properties

references = st.sampled_from(["VA1", "VA2", "VA3", "PO1", "PO2", "GRP1", ""])
amounts = st.sampled_from([1_000, 2_500, 50_000, 100_000, 150_000])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[StatementLine], list[ExpectedMovement]]:
    line_count = draw(st.integers(0, 12))
    lines = [
        line(
            draw(amounts),
            draw(references),
            draw(st.sampled_from(list(Direction))),
            source_line=index + 1,
            type_code=draw(st.sampled_from(["NTRF", "NCHG"])),
            value_date=day + dt.timedelta(days=draw(st.integers(0, 3))),
        )
        for index in range(line_count)
    ]
    movement_count = draw(st.integers(0, 12))
    movements = [
        movement(
            f"m{index}",
            draw(amounts),
            draw(references.filter(bool)),
            draw(st.sampled_from(list(Direction))),
            draw(st.sampled_from(list(MovementKind))),
            group=draw(st.sampled_from(["", "GRP1"])),
            value_date=day + dt.timedelta(days=draw(st.integers(0, 3))),
        )
        for index in range(movement_count)
    ]
    return lines, movements


@given(scenarios(), st.randoms(use_true_random=False))
def test_permuting_inputs_never_changes_the_result(
    scenario: tuple[list[StatementLine], list[ExpectedMovement]], shuffler: random.Random
) -> None:
    lines, movements = scenario
    first = match(lines, movements)
    shuffler.shuffle(lines)
    shuffler.shuffle(movements)
    assert match(lines, movements) == first


@given(scenarios())
def test_every_line_matched_or_excepted_exactly_once(
    scenario: tuple[list[StatementLine], list[ExpectedMovement]],
) -> None:
    lines, movements = scenario
    result = match(lines, movements)
    outcomes = [key for m in result.matches for key in m.line_keys] + [
        e.line_key for e in result.exceptions
    ]
    assert sorted(outcomes) == sorted(line.key for line in lines)
    matched_movements = [mid for m in result.matches for mid in m.movement_ids]
    assert len(matched_movements) == len(set(matched_movements))
    assert sorted(matched_movements + list(result.unmatched_movement_ids)) == sorted(
        m.movement_id for m in movements
    )
    for found in result.matches:
        assert found.difference_rupiah == 0  # default rules: exact amounts


@given(scenarios())
def test_rerun_on_leftovers_finds_nothing_new(
    scenario: tuple[list[StatementLine], list[ExpectedMovement]],
) -> None:
    lines, movements = scenario
    result = match(lines, movements)
    excepted = {e.line_key for e in result.exceptions}
    open_ids = set(result.unmatched_movement_ids)
    again = match(
        [ln for ln in lines if ln.key in excepted],
        [m for m in movements if m.movement_id in open_ids],
    )
    assert again.matches == ()
