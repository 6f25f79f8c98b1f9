"""Booking an upload batch: every committed card transaction reaches the ledger exactly once.

One batch is one database transaction, in the ledger's shape (load, decide, write):

1. accept (`acceptance`): the terminal, its signature, the batch sequence, replays, its role;
2. load what the batch needs: this terminal's earlier reports of the same sequences, in-doubt
   reports held for the batch's cards and every report of those cards' logs, and where each
   terminal's money goes;
3. plan (`planning`, pure): classify each record, settle in-doubt card transactions, and work
   out the rows, the ledger transfers, the flags and the acknowledgement;
4. write: register cards heard of for the first time, store the records, check the balance
   chain of each card, take the pending top-ups the cards received, keep the raw batch and
   its acknowledgement, advance the terminal's batch sequence;
5. book the card transactions in one ledger call, last (its batch lock is then held only until
   this transaction commits), and what the ledger's answers show (clones) through suspense,
   with the cards flagged and denied.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from bus_terminals.wire import (
    RecordStatus,
    UploadKind,
    UploadRecord,
    no_service_fare_detail,
    record_fields,
)
from card_reader import tmac
from gateways.terminal_api import books, passes, planning, registry, suspension
from gateways.terminal_api.acceptance import Accepted, accept
from gateways.terminal_api.planning import (
    CardFlag,
    CreditAccount,
    LogEvidence,
    PendingTopUp,
    Placed,
    Plan,
    Quarantined,
    RecordOutcome,
    StoredReport,
    UploadAnswer,
    UploadResult,
)
from ledger.store import cyclic_collector_paused

logger = logging.getLogger("ksh.terminals")

upload_attempts_max = 3  # deadlock or serialization failure: retry the whole batch


async def ingest_upload(
    connection: asyncpg.Connection,
    header_terminal_id: str,
    signature: str,
    body: bytes,
    known_cards: KnownCards | None = None,
    *,
    now: datetime,
    proof_keys: ProofKeys | None = None,
    quarantined_per_day_max: int = suspension.quarantined_per_day_max_default,
) -> UploadAnswer:
    """Check and book one upload batch (the caller gives a connection; we own the transaction)
        at business time `now`. `known_cards`: the process's memory of registered cards (none: look
        every card up). `proof_keys`: the back office's Transaction MAC masters (none: a card issued
    with a Transaction MAC cannot be verified, and its transactions are quarantined).
    `quarantined_per_day_max`: past this many quarantined records in a day the terminal is
    suspended (`suspension`)."""
    known_cards = KnownCards() if known_cards is None else known_cards
    proof_keys = ProofKeys() if proof_keys is None else proof_keys
    for attempt in range(1, upload_attempts_max + 1):
        try:
            with cyclic_collector_paused():
                async with connection.transaction():
                    accepted = await accept(connection, header_terminal_id, signature, body)
                    if isinstance(accepted, UploadAnswer):
                        return accepted
                    answer = await _book(
                        connection, accepted, body, signature, known_cards, proof_keys, now
                    )
                    for terminal_id in sorted(answer.quarantined_terminals):  # too many: suspended
                        await suspension.suspend_if_over_limit(
                            connection, terminal_id, now=now, limit=quarantined_per_day_max
                        )
                    return answer
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == upload_attempts_max:
                raise
            logger.warning("upload of %s retried after a lock conflict", header_terminal_id)
    raise AssertionError("unreachable")


async def _book(
    connection: asyncpg.Connection,
    accepted: Accepted,
    body: bytes,
    signature: str,
    known_cards: KnownCards,
    proof_keys: ProofKeys,
    now: datetime,
) -> UploadAnswer:
    terminal, batch = accepted.terminal, accepted.batch
    records = batch.records
    # Load (the second load depends on which of the batch's records are in doubt).
    previous = await _previous_reports(connection, terminal.terminal_id, records)
    card_numbers = sorted({record.card_number for record in records})
    issued = await issued_cards(connection, card_numbers, known_cards)
    proofs = {
        number: proof_keys.proof(uid) for number in issued if (uid := known_cards.uids.get(number))
    }
    classified = planning.classify(records, previous, accepted.rule, issued, proofs)
    held_earlier = await _held_reports(connection, card_numbers)
    candidates = planning.in_doubt_candidates(held_earlier, classified.held)
    evidence = await _log_evidence(connection, candidates.values(), records, classified.to_book)
    # Decide.
    settled = planning.settle_in_doubt(candidates, evidence, proofs)
    pending_top_ups = await _pending_top_ups(connection, plan_records=records)
    chip_blocks = await _chip_blocks(connection, [*records, *candidates.values()])
    chips_blocked = await blocked_chips(connection, issued)
    plan = planning.plan_batch(
        batch, classified, settled, pending_top_ups, chip_blocks, chips_blocked
    )
    accounts = await credit_accounts(connection, plan.booked)
    card_transfers = planning.card_transfers(plan, accounts)
    # Write.
    answer = UploadAnswer(
        UploadResult.accepted,
        acknowledgement=plan.acknowledgement,
        records_by_outcome=plan.records_by_outcome,
        charged_without_service=plan.charged_without_service,
        quarantined_by_reason=Counter(q.reason for q in plan.quarantined),
        quarantined_terminals={q.record.terminal_id for q in plan.quarantined},
    )
    await _insert_flags(connection, plan.conflicts, answer)
    await _store_records(connection, batch.batch_sequence, plan.new_records, plan.changed)
    await _set_outcomes(connection, plan.settled_earlier)
    await _quarantine(connection, plan.quarantined, now)
    await _insert_flags(connection, plan.block_flags, answer)
    await _monitor_cards(connection, plan.booked, answer, now)
    await _take_top_ups(connection, plan.top_ups_taken)
    cancelled_on_cards = await passes.record_activations(connection, plan.booked)
    await _insert_flags(connection, cancelled_on_cards, answer)  # trust the card: flagged
    _log_charged_without_service(plan)
    await connection.execute(
        "insert into upload_batches (terminal_id, batch_sequence, body, signature, "
        "body_sha256, record_count, acknowledgement) values ($1, $2, $3, $4, $5, $6, $7)",
        terminal.terminal_id,
        batch.batch_sequence,
        body,
        signature,
        accepted.digest,
        len(records),
        json.dumps(answer.acknowledgement),
    )
    await connection.execute(
        "update terminals set next_batch_sequence = $2 where terminal_id = $1",
        terminal.terminal_id,
        batch.batch_sequence + 1,
    )
    # The ledger comes last: its batch lock is then held only until this transaction commits.
    await _book_card_transfers(connection, card_transfers, answer, now)
    late = await _taken_before_block_arrived(connection, plan, chips_blocked)
    await _insert_flags(connection, late, answer)
    return answer


async def _book_card_transfers(
    connection: asyncpg.Connection,
    card_transfers: list[planning.CardTransfers],
    answer: UploadAnswer,
    now: datetime,
) -> None:
    if not card_transfers:
        return
    legs = [leg for planned in card_transfers for leg in planned.legs]
    outcomes = await books.create_transfers(connection, legs, now=now)  # one per leg, in order
    verdict = planning.judge_booking(card_transfers, outcomes)
    if verdict.suspense:
        booked = await books.create_transfers(connection, verdict.suspense, now=now)
        refused = [o for o in booked if o.result not in planning.booked_results]
        assert not refused, f"suspense booking refused: {refused}"
    if verdict.clones or verdict.clones_apart:
        await registry.deny_cards(
            connection,
            sorted({record.card_number for record in verdict.clones + verdict.clones_apart}),
            "counter_repeat",
            now=now,
        )
    anomalies = verdict.clones + verdict.closed
    if anomalies:
        await _set_outcomes(
            connection, [Placed(record, RecordOutcome.anomaly) for record in anomalies]
        )
        answer.records_by_outcome[RecordOutcome.booked.value] -= len(anomalies)
        answer.records_by_outcome[RecordOutcome.anomaly.value] += len(anomalies)
    await _insert_flags(connection, verdict.flags, answer)


# ---------------------------------------------------------------------------------- load

record_columns = (
    "terminal_id, sequence, kind, status, card_number, card_counter, amount_rupiah, "
    "topup_rupiah, pending_topup_id, balance_after_rupiah, time_ms, route, merchant_id, "
    "fare_detail, previous_counter, previous_terminal_number, previous_balance_rupiah"
)


def record_from_row(row: asyncpg.Record) -> UploadRecord:
    values = list(row.values())[:17]
    values[2] = UploadKind(values[2])
    values[3] = RecordStatus(values[3])
    return UploadRecord(*values)


async def _previous_reports(
    connection: asyncpg.Connection, terminal_id: str, records: tuple[UploadRecord, ...]
) -> dict[int, StoredReport]:
    sequences = {record.sequence for record in records}
    if not sequences:
        return {}
    lowest, highest = min(sequences), max(sequences)
    if highest - lowest < previous_range_spread_max * len(sequences):
        # A terminal numbers its records without gaps, so a batch is a short run: one range
        # scan of the key (usually empty: the records are new) beats a probe per sequence.
        rows = await connection.fetch(
            f"select {record_columns}, outcome from card_records "
            "where terminal_id = $1 and sequence between $2 and $3",
            terminal_id,
            lowest,
            highest,
        )
    else:
        rows = await connection.fetch(
            f"select {record_columns}, outcome from card_records "
            "where terminal_id = $1 and sequence = any($2::bigint[])",
            terminal_id,
            sorted(sequences),
        )
    return {
        row["sequence"]: StoredReport(record_from_row(row), RecordOutcome(row["outcome"]))
        for row in rows
        if row["sequence"] in sequences
    }


previous_range_spread_max = 2  # a batch's sequences spread over at most twice its size: a range


async def _held_reports(
    connection: asyncpg.Connection, card_numbers: list[str]
) -> list[UploadRecord]:
    """In-doubt reports (any terminal) of these cards, waiting for the card's log."""
    rows = await connection.fetch(
        f"select {record_columns} from card_records "
        "where outcome = 'held' and card_number = any($1::text[])",
        card_numbers,
    )
    return [record_from_row(row) for row in rows]


async def _log_evidence(
    connection: asyncpg.Connection,
    candidates: Iterable[UploadRecord],
    records: Iterable[UploadRecord],
    to_book: Iterable[UploadRecord],
) -> list[LogEvidence]:
    """What every report of the in-doubt candidates' cards says of their logs: those stored,
    then the batch's own. Proven: booked with the card's Transaction MAC (stored), or about to
    be (the batch's, whose MAC `classify` verified)."""
    cards = sorted({record.card_number for record in candidates})
    if not cards:
        return []
    rows = await connection.fetch(
        "select terminal_id, sequence, card_number, card_counter, status, previous_counter, "
        "previous_terminal_number, previous_balance_rupiah, "
        "outcome = 'booked' and tmac_value <> '' as proven from card_records "
        "where card_number = any($1::text[])",
        cards,
    )
    proven = {(r.terminal_id, r.sequence) for r in to_book if r.tmac_value}
    return [LogEvidence(*row.values()) for row in rows] + [
        LogEvidence.of(r, proven=(r.terminal_id, r.sequence) in proven) for r in records
    ]


async def _chip_blocks(
    connection: asyncpg.Connection, records: Iterable[UploadRecord]
) -> dict[str, int | None]:
    """For the cards that block records, or taps refused by a blocked chip, name: whether the
    back office asked to block them on the chip, and still does
    (`registry.chip_block_requested`). No query without one."""
    cards = sorted(
        {
            record.card_number
            for record in records
            if record.kind == UploadKind.block
            or (
                record.kind == UploadKind.denied
                and record.fare_detail == planning.card_blocked_detail
            )
        }
    )
    return await registry.chip_block_requested(connection, cards) if cards else {}


async def blocked_chips(
    connection: asyncpg.Connection, card_numbers: Iterable[str]
) -> dict[str, planning.ChipBlocks]:
    """Of these cards, those blocked on their chip at the back office's asking (booked block
    records, a partial index; not one held as `unrequested_block`): each block's card counter,
    and the card's newest counter at each desk unblock."""
    rows = await connection.fetch(
        "select b.card_number, array_agg(b.card_counter) as blocks, "
        "array(select (a.detail->>'card_counter')::bigint from staff_actions a "
        "where a.subject = b.card_number and a.action = $2 and a.detail ? 'card_counter') "
        "as unblocks, exists (select 1 from staff_actions a where a.subject = b.card_number "
        "and a.action = $2 and not a.detail ? 'card_counter') as counterless "
        "from card_records b where b.card_number = any(string_to_array($1, ',')) "
        "and b.kind = 'block' and b.outcome = 'booked' and not exists (select 1 from "
        "quarantined_records q where q.terminal_id = b.terminal_id and q.sequence = b.sequence) "
        "group by b.card_number",
        _comma_joined(card_numbers),
        registry.chip_unblock_action,
    )
    return {
        row["card_number"]: planning.ChipBlocks(
            tuple(row["blocks"]), tuple(row["unblocks"]), row["counterless"]
        )
        for row in rows
    }


async def _taken_before_block_arrived(
    connection: asyncpg.Connection,
    plan: planning.Plan,
    chips_blocked: Mapping[str, planning.ChipBlocks],
) -> list[CardFlag]:
    """The fares and sales the back office booked before a block this batch books reached it,
    that the card made after that block (their terminal uploaded first): paid already, so the
    card is flagged `taken_after_chip_block`, naming each, for staff to take up with its
    terminal. Queried only for a batch that books a block."""
    unrequested = {(q.record.terminal_id, q.record.sequence) for q in plan.quarantined}
    new_blocks = [
        record
        for record in plan.booked
        if record.kind == UploadKind.block
        and (record.terminal_id, record.sequence) not in unrequested
    ]
    if not new_blocks:
        return []
    # Under the ledger's lock (held from the booking on, or taken now): every upload that
    # booked a fare above this block has committed and is seen here. One that read the blocks
    # before this commits and books after it is neither held apart nor flagged (a window of
    # one upload's planning; closing it would read the blocks again under the lock).
    await books.lock_ledger(connection)
    known = planning.with_batch_blocks(chips_blocked, new_blocks)
    rows = await connection.fetch(
        "select terminal_id, sequence, kind, card_number, card_counter from card_records "
        "where card_number = any(string_to_array($1, ',')) and kind in ('fare_debit', 'sale') "
        "and outcome = 'booked' and card_counter >= $2 order by card_number, card_counter",
        _comma_joined({record.card_number for record in new_blocks}),
        min(record.card_counter for record in new_blocks),
    )
    arrived = {(record.card_number, record.card_counter) for record in new_blocks}
    flags = []
    for row in rows:
        block = planning.standing_block(known[row["card_number"]], row["card_counter"])
        if block is not None and (row["card_number"], block) in arrived:
            flags.append(
                CardFlag(
                    row["card_number"],
                    "taken_after_chip_block",
                    row["terminal_id"],
                    row["sequence"],
                    row["card_counter"],
                    f"{row['kind']} at counter {row['card_counter']} came after the chip block "
                    f"at counter {block}, which reached the back office later: its party was "
                    "paid; that terminal took money from a blocked card",
                )
            )
    return flags


async def credit_accounts(
    connection: asyncpg.Connection, records: list[UploadRecord]
) -> dict[str, CreditAccount]:
    """Per terminal of the records: where its money goes (revenue or payable) and the fee."""
    rows = await connection.fetch(
        "select t.terminal_id, o.revenue_account_id, m.payable_account_id, m.fee_basis_points "
        "from terminals t left join operators o using (operator_id) "
        "left join merchants m using (merchant_id) where t.terminal_id = any($1::text[])",
        sorted({record.terminal_id for record in records}),
    )
    accounts = {}
    for row in rows:
        if row["revenue_account_id"] is not None:
            accounts[row["terminal_id"]] = CreditAccount(row["revenue_account_id"], 0)
        else:
            accounts[row["terminal_id"]] = CreditAccount(
                row["payable_account_id"], row["fee_basis_points"]
            )
    return accounts


def _comma_joined(values: Iterable[int | str]) -> str:
    """Numbers or card numbers (digits: the wire checks) as one parameter the server splits
    with string_to_array. asyncpg encodes an array parameter element by element, with an
    abstract-class check on each: the balance check's six arrays of 4,000 took 11 ms a batch;
    one array of 4,000 card numbers takes 2.6 ms, joined 0.7 ms."""
    return ",".join(map(str, values))


known_cards_max = 2_000_000  # card numbers a back office process remembers (~150 MB)


@dataclass
class KnownCards:
    """Card numbers this process has seen in the cards table. A card is never removed, so an
    upload looks up only the others: most cards tap again and again. Filled only from what
    the database showed (committed), never from a registration that might still roll back;
    cleared when full."""

    numbers: set[str] = field(default_factory=set)
    uids: dict[str, bytes] = field(default_factory=dict)  # of those issued with a UID

    def remember(self, card_numbers: Iterable[str], uids: dict[str, bytes] | None = None) -> None:
        if len(self.numbers) >= known_cards_max:
            self.numbers.clear()
            self.uids.clear()
        self.numbers.update(card_numbers)
        self.uids.update(uids or {})


proof_keys_cached_max = 200_000  # per-card Transaction MAC keys a process keeps (~30 MB)


class ProofKeys:
    """The back office's Transaction MAC keys per card: diversified from its master keys (the
    TMAC role's current version first, then the previous ones cards may still carry), or asked
    of its token (`token`: {"dir", "label", "pin"}, the masters stay inside), and cached (a
    diversification costs two AES operations; most cards tap again and again)."""

    def __init__(
        self, masters: tuple[bytes, ...] = (), token: dict[str, str] | None = None
    ) -> None:
        assert not (masters and token), "masters from a key store or a token, not both"
        self.masters = masters
        self._token_keys = (
            None
            if token is None
            else tmac.token_card_keys(token["dir"], token["label"], token["pin"])
        )
        self._cards: dict[bytes, planning.CardProof] = {}

    def proof(self, uid: bytes) -> planning.CardProof:
        proof = self._cards.get(uid)
        if proof is None:
            if len(self._cards) >= proof_keys_cached_max:
                self._cards.clear()
            if self._token_keys is not None:
                keys = self._token_keys(uid)
            else:
                keys = tuple(tmac.card_key(master, uid) for master in self.masters)
            proof = self._cards[uid] = planning.CardProof(uid, keys)
        return proof


async def issued_cards(
    connection: asyncpg.Connection, card_numbers: list[str], known_cards: KnownCards
) -> set[str]:
    """Which of these card numbers the back office issued (registered with their accounts).
    A card it never issued is not registered on the spot: its records are quarantined."""
    unknown = [number for number in card_numbers if number not in known_cards.numbers]
    if unknown:
        rows = await connection.fetch(
            "select card_number, uid from cards where card_number = any(string_to_array($1, ','))",
            _comma_joined(unknown),
        )
        known_cards.remember(
            [row["card_number"] for row in rows],
            {row["card_number"]: bytes(row["uid"]) for row in rows if row["uid"] is not None},
        )
    return {number for number in card_numbers if number in known_cards.numbers}


async def _pending_top_ups(
    connection: asyncpg.Connection, plan_records: Iterable[UploadRecord]
) -> dict[str, PendingTopUp]:
    """The pending top-ups the batch's records claim to have delivered, locked until the
    batch commits (two terminals delivering the same one are decided one after the other)."""
    ids = sorted({record.pending_topup_id for record in plan_records if record.pending_topup_id})
    if not ids:
        return {}
    rows = await connection.fetch(
        "select top_up_id, card_number, amount_rupiah, taken_terminal_id is not null as taken "
        "from pending_top_ups where top_up_id = any($1::text[]) order by top_up_id for update",
        ids,
    )
    return {row["top_up_id"]: PendingTopUp(*row.values()) for row in rows}


# --------------------------------------------------------------------------------- write


async def _set_outcomes(connection: asyncpg.Connection, settled: list[Placed]) -> None:
    if settled:
        await connection.executemany(
            "update card_records set outcome = $3 where terminal_id = $1 and sequence = $2",
            [(r.terminal_id, r.sequence, outcome.value) for r, outcome in settled],
        )


async def insert_card_flags(connection: asyncpg.Connection, flags: list[CardFlag]) -> None:
    """Store flags as rows of `card_flags` (a caller logs them)."""
    await connection.copy_records_to_table(
        "card_flags",
        columns=("card_number", "reason", "terminal_id", "sequence", "card_counter", "detail"),
        records=flags,
    )


async def _insert_flags(
    connection: asyncpg.Connection,
    flags: list[CardFlag],
    answer: UploadAnswer,
) -> None:
    if not flags:
        return
    await insert_card_flags(connection, flags)
    by_reason: dict[str, list[str]] = {}
    for flag in flags:
        answer.flags_by_reason[flag.reason] += 1
        by_reason.setdefault(flag.reason, []).append(flag.card_number)
    for reason, cards in by_reason.items():
        logger.warning(
            "cards flagged",
            extra={
                "reason": reason,
                "count": len(cards),
                "card_numbers": cards[:flagged_cards_logged_max],
            },
        )


flagged_cards_logged_max = 20  # per reason and batch: the rest are in card_flags


# The card_records table holds every wire field under its wire name, plus where it came from.
_stored_columns = (*(name for name, _ in record_fields), "batch_sequence", "outcome")


async def _store_records(
    connection: asyncpg.Connection,
    batch_sequence: int,
    new_records: list[Placed],
    changed: list[Placed],
) -> None:
    if new_records:
        # Binary COPY: the cheapest way in for thousands of rows.
        await connection.copy_records_to_table(
            "card_records",
            columns=_stored_columns,
            records=[
                (*record, batch_sequence, outcome.value)  # (kind, status: str enums)
                for record, outcome in new_records
            ],
        )
    if changed:
        await connection.executemany(
            "update card_records set status = $3, outcome = $4 where terminal_id = $1 and sequence = $2",
            [
                (record.terminal_id, record.sequence, record.status.value, outcome.value)
                for record, outcome in changed
            ],
        )


async def _monitor_cards(
    connection: asyncpg.Connection, booked: list[UploadRecord], answer: UploadAnswer, now: datetime
) -> None:
    """The balance chain between adjacent counters (the shadow balance and counter of a card
    are read from its records when asked: no per-card row to update, so no lock to wait on)."""
    if not booked:
        return
    # Adjacent counters must chain: balance(c) = balance(c-1) - charged + credited. The batch
    # carries each booked record's own balance and change, so only its stored neighbours
    # (c - 1 and c + 1, booked by any terminal) are read: two index probes per record, kept
    # as probes by `offset 0` (joined instead, the planner hashed the whole card_records
    # table on every batch: a cost that grew with the table).
    rows = await connection.fetch(
        """
        with given as (
            select * from unnest(string_to_array($1, ','), string_to_array($2, ',')::bigint[],
                                 string_to_array($3, ',')::bigint[],
                                 string_to_array($4, ',')::bigint[])
                with ordinality as given(card, counter, balance, change, position)
        ), pairs as (
            -- the record of this batch (at `position`) does not follow its stored predecessor
            select given.card as card_number, given.counter as card_counter,
                   given.position, null as terminal_id, null::bigint as sequence,
                   earlier.balance_after_rupiah as before, given.balance as after, given.change
            from given cross join lateral (
                select balance_after_rupiah from card_records
                where card_number = given.card and card_counter = given.counter - 1
                    and outcome = 'booked' offset 0
            ) earlier
            union all
            -- the stored successor does not follow the record of this batch
            select given.card, later.card_counter, null, later.terminal_id, later.sequence,
                   given.balance, later.balance_after_rupiah, later.change
            from given cross join lateral (
                select card_counter, terminal_id, sequence, balance_after_rupiah,
                       topup_rupiah + case when kind = 'refund' then amount_rupiah
                                           else -amount_rupiah end as change
                from card_records
                where card_number = given.card and card_counter = given.counter + 1
                    and outcome = 'booked' offset 0
            ) later
        )
        select distinct card_number, card_counter, position, terminal_id, sequence,
               before, after, change
        from pairs where after != before + change
        """,
        _comma_joined(record.card_number for record in booked),
        _comma_joined(record.card_counter for record in booked),
        _comma_joined(record.balance_after_rupiah for record in booked),
        _comma_joined(planning.balance_change(record) for record in booked),
    )
    flags: dict[CardFlag, None] = {}  # one per broken pair
    for row in rows:
        if row["position"] is not None:  # the batch's own record
            record = booked[row["position"] - 1]
            terminal_id, sequence = record.terminal_id, record.sequence
        else:
            terminal_id, sequence = row["terminal_id"], row["sequence"]
        # A pair within this batch is found from both ends (its records are stored already).
        flags[
            CardFlag(
                row["card_number"],
                "balance_mismatch",
                terminal_id,
                sequence,
                row["card_counter"],
                f"balance {row['before']} then {row['after']} after a change of {row['change']}",
            )
        ] = None
    if flags:
        await _insert_flags(connection, list(flags), answer)
        await registry.deny_cards(
            connection, sorted({flag.card_number for flag in flags}), "balance_mismatch", now=now
        )


async def _quarantine(
    connection: asyncpg.Connection, quarantined: list[Quarantined], now: datetime
) -> None:
    """Keep the records the back office does not believe apart, for staff, and raise the
    alarm (their card money is booked to suspense with the batch's transfers)."""
    if not quarantined:
        return
    await connection.executemany(
        "insert into quarantined_records (terminal_id, sequence, reason, detail, quarantined_at) "
        "values ($1, $2, $3, $4, $5) on conflict do nothing",
        [(q.record.terminal_id, q.record.sequence, q.reason, q.detail, now) for q in quarantined],
    )
    for reason, count in Counter(q.reason for q in quarantined).items():
        logger.warning(
            "records quarantined: their money waits in suspense for staff",
            extra={
                "reason": reason,
                "count": count,
                "terminal_id": quarantined[0].record.terminal_id,
                "sequences": [q.record.sequence for q in quarantined][:flagged_cards_logged_max],
            },
        )


def _log_charged_without_service(plan: Plan) -> None:
    """A fare charged in full because the validator's feed has no service that day is booked
    like any other (the card paid it); its terminal runs a stale fare feed: raise the alarm."""
    for terminal_id, count in plan.charged_without_service.items():
        logger.warning(
            "taps charged the full fare without fare service: the terminal's fare feed has "
            "run out, ship it a new one",
            extra={
                "reason": no_service_fare_detail,
                "terminal_id": terminal_id,
                "count": count,
                "first_time_ms": min(
                    r.time_ms
                    for r in plan.booked
                    if r.terminal_id == terminal_id
                    and r.kind == UploadKind.fare_debit
                    and r.fare_detail.startswith(no_service_fare_detail)
                ),
            },
        )


async def _take_top_ups(connection: asyncpg.Connection, taken: list[UploadRecord]) -> None:
    """Mark the pending top-ups the planner found delivered (their rows are locked)."""
    if not taken:
        return
    await connection.execute(
        "update pending_top_ups p set taken_terminal_id = t.terminal, taken_sequence = t.sequence, "
        "taken_card_counter = t.counter from unnest($1::text[], $2::text[], $3::bigint[], "
        "$4::bigint[]) as t(top_up, terminal, sequence, counter) "
        "where p.top_up_id = t.top_up and p.taken_terminal_id is null",
        [record.pending_topup_id for record in taken],
        [record.terminal_id for record in taken],
        [record.sequence for record in taken],
        [record.card_counter for record in taken],
    )
