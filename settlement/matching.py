"""Reconciliation matching: bank statement lines against the movements the books expect. Pure.

Rules always include a reference criterion (a line is only ever matched to a movement whose
reference it carries), then an amount tolerance and a value-date tolerance. Three passes, in
order, each over what the previous ones left, and all three again over what is still left
until a round finds nothing (usually the second round ends it):

1. one to one: one line, one movement (a payout, a fee, a single VA collection);
2. one to many: one line, the movements of a group (a bank that credits a day's VA payments
   as one sum under the group reference);
3. many to one: several lines with the same reference, one movement (a bank that pays or
   collects in chunks).

Lookups go through dictionaries keyed by (account, direction, reference), so the work grows
with the number of lines plus movements, not their product. The inputs are sorted by their
stable ids first, so the result does not depend on the order they arrive in. Every line ends
in exactly one match or exactly one exception, with its reason.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from settlement.statements import Direction, StatementLine

reference_token_length_min = 8  # shorter tokens in free text are words, not references
fee_type_codes = frozenset({"NCHG", "CHG", "NCOM", "COM", "FEE"})
fee_words = ("BIAYA", "FEE", "CHARGE", "ADMIN", "PROVISI")


class MovementKind(enum.StrEnum):
    collection = "collection"  # VA top-up money the bank owes us
    payout = "payout"  # a settlement batch paid to a merchant or the operator
    fee = "fee"  # a bank charge we expect (e.g. the interbank transfer fee of a payout)


@dataclass(frozen=True, slots=True)
class ExpectedMovement:
    movement_id: str  # stable (a ledger transfer id or a payout attempt id)
    kind: MovementKind
    account: str  # our bank account the movement shows on
    direction: Direction
    amount_rupiah: int
    value_date: dt.date
    reference: str  # what the bank echoes back (partnerReferenceNo, paymentRequestId, ...)
    group: str = ""  # a reference naming several movements at once, if the bank sums them

    def __post_init__(self) -> None:
        assert self.amount_rupiah > 0, self
        assert self.reference, self


@dataclass(frozen=True, slots=True)
class MatchRules:
    amount_tolerance_rupiah: int = 0
    date_tolerance_days: int = 2  # statements may show H+1 value dates, weekends H+2

    def __post_init__(self) -> None:
        assert self.amount_tolerance_rupiah >= 0
        assert self.date_tolerance_days >= 0


default_rules = MatchRules()


class MatchKind(enum.StrEnum):
    one_to_one = "one_to_one"
    one_to_many = "one_to_many"
    many_to_one = "many_to_one"


@dataclass(frozen=True, slots=True)
class Match:
    kind: MatchKind
    line_keys: tuple[str, ...]
    movement_ids: tuple[str, ...]
    difference_rupiah: int  # statement minus books (signed as the statement sees it)


class LineReason(enum.StrEnum):
    duplicate_line = "duplicate_line"  # the same movement appears again after being matched
    amount_mismatch = "amount_mismatch"  # reference known, amount outside tolerance
    date_out_of_tolerance = "date_out_of_tolerance"  # reference and amount known, date too far
    unexpected_fee = "unexpected_fee"  # a bank charge we did not expect
    unknown_reference = "unknown_reference"  # money in or out that names nothing we know


@dataclass(frozen=True, slots=True)
class LineException:
    line_key: str
    reason: LineReason
    detail: str


@dataclass(frozen=True, slots=True)
class MatchResult:
    matches: tuple[Match, ...]
    exceptions: tuple[LineException, ...]
    unmatched_movement_ids: tuple[str, ...]


def normalise_reference(text: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", text.upper())


def line_references(line: StatementLine) -> tuple[str, ...]:
    """The line's own reference first, then reference-looking tokens of its free text."""
    references = [normalise_reference(line.reference)] if line.reference else []
    for token in re.split(r"[\s;,:]+", line.description):
        normalised = normalise_reference(token)
        if len(normalised) >= reference_token_length_min and normalised not in references:
            references.append(normalised)
    return tuple(r for r in references if r)


Key = tuple[str, Direction, str]


def match(
    lines: Iterable[StatementLine],
    movements: Iterable[ExpectedMovement],
    rules: MatchRules = default_rules,
    *,
    settled_lines: Iterable[StatementLine] = (),
    settled_movements: Iterable[ExpectedMovement] = (),
) -> MatchResult:
    """Match `lines` to `movements`. The settled ones (matched in earlier runs) take no part in
    matching; they only let a leftover line be recognised as a duplicate of what they matched."""
    ordered_lines = sorted(lines, key=lambda line: line.key)
    ordered_movements = sorted(movements, key=lambda movement: movement.movement_id)
    assert len({line.key for line in ordered_lines}) == len(ordered_lines), "duplicate line keys"
    assert len({m.movement_id for m in ordered_movements}) == len(ordered_movements), (
        "duplicate ids"
    )
    settled = sorted(settled_movements, key=lambda movement: movement.movement_id)
    index = _index_movements(ordered_movements, settled)
    matched = _Matched({movement.movement_id for movement in settled}, set(), [])
    # The passes again over what is left, until a round finds nothing: a later pass can take a
    # movement that made an earlier pass give up (a group whose sum was off by exactly that
    # movement), and what is left must be what a run over the leftovers would leave, or the
    # next reconciliation run would find matches this one did not.
    while True:
        matches_before = len(matched.matches)
        _match_one_to_one(ordered_lines, index, rules, matched)
        _match_one_to_many(ordered_lines, index, rules, matched)
        _match_many_to_one(ordered_lines, index, rules, matched)
        if len(matched.matches) == matches_before:
            break
    exceptions = _exceptions(ordered_lines, settled_lines, index, rules, matched)
    unmatched = tuple(
        m.movement_id for m in ordered_movements if m.movement_id not in matched.movement_ids
    )
    result = MatchResult(tuple(matched.matches), tuple(exceptions), unmatched)
    assert sum(len(m.line_keys) for m in result.matches) + len(result.exceptions) == len(
        ordered_lines
    )
    return result


@dataclass(frozen=True, slots=True)
class _MovementIndex:
    """The expected movements by (account, direction, normalised reference)."""

    by_reference: dict[Key, list[ExpectedMovement]]  # open movements, by their own reference
    by_group: dict[Key, list[ExpectedMovement]]  # open movements, by their group reference
    known_by_reference: dict[Key, list[ExpectedMovement]]  # open and settled, by reference


def _index_movements(
    ordered_movements: list[ExpectedMovement], settled: list[ExpectedMovement]
) -> _MovementIndex:
    by_reference: dict[Key, list[ExpectedMovement]] = defaultdict(list)
    by_group: dict[Key, list[ExpectedMovement]] = defaultdict(list)
    for movement in ordered_movements:
        by_reference[
            (movement.account, movement.direction, normalise_reference(movement.reference))
        ].append(movement)
        if movement.group:
            by_group[
                (movement.account, movement.direction, normalise_reference(movement.group))
            ].append(movement)
    known_by_reference: dict[Key, list[ExpectedMovement]] = defaultdict(list)
    for movement in [*ordered_movements, *settled]:
        known_by_reference[
            (movement.account, movement.direction, normalise_reference(movement.reference))
        ].append(movement)
    return _MovementIndex(by_reference, by_group, known_by_reference)


@dataclass(slots=True)
class _Matched:
    """What the passes have matched so far; each pass adds to it as it goes."""

    movement_ids: set[str]  # movements used (the settled ones from the start)
    line_keys: set[str]
    matches: list[Match]

    def add(self, found: Match) -> None:
        self.movement_ids.update(found.movement_ids)
        self.line_keys.update(found.line_keys)
        self.matches.append(found)


def _close_in_date(line: StatementLine, movement: ExpectedMovement, rules: MatchRules) -> bool:
    return abs((line.value_date - movement.value_date).days) <= rules.date_tolerance_days


def _close_in_amount(statement_rupiah: int, books_rupiah: int, rules: MatchRules) -> bool:
    return abs(statement_rupiah - books_rupiah) <= rules.amount_tolerance_rupiah


def _match_one_to_one(
    ordered_lines: list[StatementLine], index: _MovementIndex, rules: MatchRules, matched: _Matched
) -> None:
    """Pass 1: one line, one movement (the closest in amount, then date, then id)."""
    for line in ordered_lines:
        if line.key in matched.line_keys:
            continue
        best: tuple[int, int, str] | None = None
        chosen: ExpectedMovement | None = None
        for reference in line_references(line):
            for movement in index.by_reference.get((line.account, line.direction, reference), ()):
                if movement.movement_id in matched.movement_ids:
                    continue
                if not _close_in_amount(line.amount_rupiah, movement.amount_rupiah, rules):
                    continue
                if not _close_in_date(line, movement, rules):
                    continue
                rank = (
                    abs(line.amount_rupiah - movement.amount_rupiah),
                    abs((line.value_date - movement.value_date).days),
                    movement.movement_id,
                )
                if best is None or rank < best:
                    best, chosen = rank, movement
        if chosen is not None:
            matched.add(
                Match(
                    MatchKind.one_to_one,
                    (line.key,),
                    (chosen.movement_id,),
                    line.amount_rupiah - chosen.amount_rupiah,
                )
            )


def _match_one_to_many(
    ordered_lines: list[StatementLine], index: _MovementIndex, rules: MatchRules, matched: _Matched
) -> None:
    """Pass 2: one line, the open movements of a group it names (their sum)."""
    for line in ordered_lines:
        if line.key in matched.line_keys:
            continue
        for reference in line_references(line):
            members = [
                m
                for m in index.by_group.get((line.account, line.direction, reference), ())
                if m.movement_id not in matched.movement_ids and _close_in_date(line, m, rules)
            ]
            total = sum(m.amount_rupiah for m in members)
            if members and _close_in_amount(line.amount_rupiah, total, rules):
                matched.add(
                    Match(
                        MatchKind.one_to_many,
                        (line.key,),
                        tuple(m.movement_id for m in members),
                        line.amount_rupiah - total,
                    )
                )
                break


def _match_many_to_one(
    ordered_lines: list[StatementLine], index: _MovementIndex, rules: MatchRules, matched: _Matched
) -> None:
    """Pass 3: several lines with one reference (their sum), one movement."""
    lines_by_reference: dict[Key, list[StatementLine]] = defaultdict(list)
    for line in ordered_lines:
        if line.key not in matched.line_keys and line.reference:
            lines_by_reference[
                (line.account, line.direction, normalise_reference(line.reference))
            ].append(line)
    for key, chunk in lines_by_reference.items():
        if len(chunk) < 2:
            continue
        total = sum(line.amount_rupiah for line in chunk)
        for movement in index.by_reference.get(key, ()):
            if movement.movement_id in matched.movement_ids:
                continue
            if _close_in_amount(total, movement.amount_rupiah, rules) and all(
                _close_in_date(line, movement, rules) for line in chunk
            ):
                matched.add(
                    Match(
                        MatchKind.many_to_one,
                        tuple(line.key for line in chunk),
                        (movement.movement_id,),
                        total - movement.amount_rupiah,
                    )
                )
                break


def _exceptions(
    ordered_lines: list[StatementLine],
    settled_lines: Iterable[StatementLine],
    index: _MovementIndex,
    rules: MatchRules,
    matched: _Matched,
) -> list[LineException]:
    """What is left becomes an exception, with the most specific reason that fits."""
    lines_by_key = {line.key: line for line in ordered_lines}
    matched_shapes = {shape(lines_by_key[key]) for key in matched.line_keys}
    matched_shapes.update(shape(line) for line in settled_lines)
    return [
        classify(line, matched_shapes, index.known_by_reference, matched.movement_ids, rules)
        for line in ordered_lines
        if line.key not in matched.line_keys
    ]


def shape(line: StatementLine) -> tuple[str, Direction, int, dt.date, str]:
    return (
        line.account,
        line.direction,
        line.amount_rupiah,
        line.value_date,
        normalise_reference(line.reference),
    )


def classify(
    line: StatementLine,
    matched_shapes: set[tuple[str, Direction, int, dt.date, str]],
    by_reference: dict[Key, list[ExpectedMovement]],
    used_movements: set[str],
    rules: MatchRules,
) -> LineException:
    """The most specific reason, checked in a fixed order."""
    if shape(line) in matched_shapes:
        return LineException(line.key, LineReason.duplicate_line, "same movement already matched")
    known = [
        movement
        for reference in line_references(line)
        for movement in by_reference.get((line.account, line.direction, reference), ())
    ]
    settled = [m for m in known if m.movement_id in used_movements]
    open_movements = [m for m in known if m.movement_id not in used_movements]
    if any(
        abs(m.amount_rupiah - line.amount_rupiah) <= rules.amount_tolerance_rupiah for m in settled
    ):
        return LineException(
            line.key, LineReason.duplicate_line, f"{settled[0].reference} is already matched"
        )
    if line.direction is Direction.debit and is_fee(line):
        return LineException(
            line.key, LineReason.unexpected_fee, line.description or line.type_code
        )
    if open_movements:
        nearest = min(
            open_movements,
            key=lambda m: (abs(m.amount_rupiah - line.amount_rupiah), m.movement_id),
        )
        if abs(nearest.amount_rupiah - line.amount_rupiah) > rules.amount_tolerance_rupiah:
            return LineException(
                line.key,
                LineReason.amount_mismatch,
                f"{nearest.reference}: statement {line.amount_rupiah}, books {nearest.amount_rupiah}",
            )
        return LineException(
            line.key,
            LineReason.date_out_of_tolerance,
            f"{nearest.reference}: statement {line.value_date}, books {nearest.value_date}",
        )
    if settled:
        return LineException(
            line.key,
            LineReason.amount_mismatch,
            f"{settled[0].reference} is already matched with {settled[0].amount_rupiah}",
        )
    return LineException(
        line.key, LineReason.unknown_reference, f"{line.reference or '-'}: {line.description}"
    )


def is_fee(line: StatementLine) -> bool:
    if line.type_code.upper() in fee_type_codes:
        return True
    description = line.description.upper()
    return any(word in description for word in fee_words)
