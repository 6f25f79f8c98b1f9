"""Checking the books: recompute every balance from the transfers and verify the hash chain.

`check_ledger` returns problems as values (Beancount's habit), so one run reports all of them:
- each account's running totals against a recomputation from its transfers;
- each transfer's stored "totals after" against the running sum up to it, per account;
- the whole ledger: posted debits equal posted credits, pending likewise;
- sequences gapless from 1, batches covering them exactly;
- each batch's digest and chain hash recomputed from the stored transfers, and the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ledger.chain import (
    batch_digest,
    batch_digest_format_1,
    chain_hash_genesis,
    encode_stored_row,
    next_chain_hash,
    transfer_columns,
)

problems_max = 100  # per kind of check: enough to see the pattern, bounded output
cursor_rows_prefetch = 8190

# Each leg of each transfer with what it does to its account's four totals and the totals
# after it as stored. Flags: 2 pending, 4 post, 8 void (ledger/records.py TransferFlags).
_legs = """
with effects as (
    select t.sequence, t.debit_account_id, t.credit_account_id,
           case when t.flags & 2 <> 0 then t.amount
                when t.flags & 12 <> 0 then -h.amount else 0 end as pending_delta,
           case when t.flags & 14 = 0 or t.flags & 4 <> 0 then t.amount else 0 end
               as posted_delta,
           t.debit_debits_pending_after, t.debit_debits_posted_after,
           t.debit_credits_pending_after, t.debit_credits_posted_after,
           t.credit_debits_pending_after, t.credit_debits_posted_after,
           t.credit_credits_pending_after, t.credit_credits_posted_after
      from ledger_transfers t
      left join ledger_transfers h on t.flags & 12 <> 0 and h.id = t.pending_id
), legs as (
    select debit_account_id as account_id, sequence,
           pending_delta as dp, posted_delta as dpo, 0::bigint as cp, 0::bigint as cpo,
           debit_debits_pending_after as a_dp, debit_debits_posted_after as a_dpo,
           debit_credits_pending_after as a_cp, debit_credits_posted_after as a_cpo
      from effects
    union all
    select credit_account_id, sequence, 0, 0, pending_delta, posted_delta,
           credit_debits_pending_after, credit_debits_posted_after,
           credit_credits_pending_after, credit_credits_posted_after
      from effects
)
"""


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One thing `check_ledger` found wrong in the books."""

    check: str  # which check found it: totals, history, zero_sum, sequence, chain
    subject: str  # the account, transfer or batch concerned
    detail: str


async def check_ledger(connection: asyncpg.Connection) -> list[AuditProblem]:
    """Everything that differs between the books and their recomputation (empty: all good).
    Runs in one repeatable-read transaction, so it sees one consistent state."""
    problems: list[AuditProblem] = []
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        problems += await _check_totals(connection)
        problems += await _check_history(connection)
        problems += await _check_zero_sum(connection)
        problems += await _check_sequences(connection)
        problems += await _check_chain(connection)
    return problems


async def _check_totals(connection: asyncpg.Connection) -> list[AuditProblem]:
    rows = await connection.fetch(
        _legs
        + """
        , recomputed as (
            select account_id, sum(dp) as dp, sum(dpo) as dpo, sum(cp) as cp, sum(cpo) as cpo
              from legs group by account_id
        )
        select coalesce(a.id, r.account_id) as id,
               a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
               coalesce(r.dp, 0) as dp, coalesce(r.dpo, 0) as dpo,
               coalesce(r.cp, 0) as cp, coalesce(r.cpo, 0) as cpo
          from ledger_accounts a full join recomputed r on r.account_id = a.id
         where a.id is null
            or (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
               is distinct from (coalesce(r.dp, 0), coalesce(r.dpo, 0),
                                 coalesce(r.cp, 0), coalesce(r.cpo, 0))
         limit $1
        """,
        problems_max,
    )
    problems = []
    for row in rows:
        if row["debits_pending"] is None:
            problems.append(
                AuditProblem("totals", str(row["id"]), "transfers name a missing account")
            )
            continue
        stored = tuple(
            row[k] for k in ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
        )
        recomputed = tuple(int(row[k]) for k in ("dp", "dpo", "cp", "cpo"))
        problems.append(
            AuditProblem(
                "totals",
                str(row["id"]),
                f"running totals (debits pending, posted, credits pending, posted) {stored}"
                f" but the transfers sum to {recomputed}",
            )
        )
    return problems


async def _check_history(connection: asyncpg.Connection) -> list[AuditProblem]:
    rows = await connection.fetch(
        _legs
        + """
        , running as (
            select account_id, sequence, a_dp, a_dpo, a_cp, a_cpo,
                   sum(dp) over w as r_dp, sum(dpo) over w as r_dpo,
                   sum(cp) over w as r_cp, sum(cpo) over w as r_cpo
              from legs
            window w as (partition by account_id order by sequence)
        )
        select * from running
         where (a_dp, a_dpo, a_cp, a_cpo) is distinct from (r_dp, r_dpo, r_cp, r_cpo)
         order by sequence limit $1
        """,
        problems_max,
    )
    return [
        AuditProblem(
            "history",
            f"transfer {row['sequence']} account {row['account_id']}",
            f"stored totals after {(row['a_dp'], row['a_dpo'], row['a_cp'], row['a_cpo'])}"
            f" but the running sum is {tuple(int(row[k]) for k in ('r_dp', 'r_dpo', 'r_cp', 'r_cpo'))}",
        )
        for row in rows
    ]


async def _check_zero_sum(connection: asyncpg.Connection) -> list[AuditProblem]:
    row = await connection.fetchrow(
        "select coalesce(sum(debits_posted) - sum(credits_posted), 0) as posted,"
        " coalesce(sum(debits_pending) - sum(credits_pending), 0) as pending"
        " from ledger_accounts"
    )
    if row["posted"] == 0 and row["pending"] == 0:
        return []
    return [
        AuditProblem(
            "zero_sum",
            "ledger",
            f"debits minus credits: posted {row['posted']}, pending {row['pending']}",
        )
    ]


async def _check_sequences(connection: asyncpg.Connection) -> list[AuditProblem]:
    problems = []
    row = await connection.fetchrow(
        "select count(*) as n, coalesce(min(sequence), 1) as low,"
        " coalesce(max(sequence), 0) as high from ledger_transfers"
    )
    if row["n"] and (row["low"] != 1 or row["high"] != row["n"]):
        problems.append(
            AuditProblem(
                "sequence",
                "ledger_transfers",
                f"{row['n']} transfers but sequences run {row['low']}..{row['high']}",
            )
        )
    head = await connection.fetchrow("select batch_number, next_sequence from ledger_head")
    if head["next_sequence"] != row["high"] + 1:
        problems.append(
            AuditProblem(
                "sequence",
                "ledger_head",
                f"next sequence {head['next_sequence']} after {row['high']}",
            )
        )
    misplaced = await connection.fetch(
        """
        select t.sequence, t.batch_number from ledger_transfers t
          left join ledger_batches b on b.batch_number = t.batch_number
         where b.batch_number is null
            or t.sequence not between b.first_sequence and b.last_sequence
         limit $1
        """,
        problems_max,
    )
    problems += [
        AuditProblem(
            "sequence", f"transfer {r['sequence']}", f"not within batch {r['batch_number']}"
        )
        for r in misplaced
    ]
    return problems


async def _check_chain(connection: asyncpg.Connection) -> list[AuditProblem]:
    """Recompute every batch's digest from the stored transfers, and the chain over them."""
    problems: list[AuditProblem] = []
    previous = chain_hash_genesis
    expected_batch = 1
    expected_first = 1
    batches = connection.cursor(
        "select batch_number, first_sequence, last_sequence, digest, chain_hash, digest_format"
        " from ledger_batches order by batch_number",
        prefetch=cursor_rows_prefetch,
    )
    transfers = connection.cursor(
        f"select {', '.join(transfer_columns)} from ledger_transfers order by sequence",
        prefetch=cursor_rows_prefetch,
    ).__aiter__()
    pending_row = None
    async for batch in batches:
        subject = f"batch {batch['batch_number']}"
        if batch["batch_number"] != expected_batch or batch["first_sequence"] != expected_first:
            problems.append(
                AuditProblem(
                    "chain",
                    subject,
                    f"expected batch {expected_batch} starting at sequence {expected_first}",
                )
            )
        rows = []
        while True:
            if pending_row is None:
                try:
                    pending_row = await transfers.__anext__()
                except StopAsyncIteration:
                    break
            if pending_row["sequence"] > batch["last_sequence"]:
                break
            if pending_row["sequence"] >= batch["first_sequence"]:
                rows.append(pending_row)
            pending_row = None
        if batch["digest_format"] == 1:
            digest = batch_digest_format_1(rows)
        else:
            digest = batch_digest(encode_stored_row(tuple(row)) for row in rows)
        if digest != batch["digest"]:
            problems.append(AuditProblem("chain", subject, "its transfers do not match its digest"))
        if next_chain_hash(previous, batch["digest"]) != batch["chain_hash"]:
            problems.append(
                AuditProblem("chain", subject, "chain hash does not follow the previous")
            )
        previous = batch["chain_hash"]
        expected_batch = batch["batch_number"] + 1
        expected_first = batch["last_sequence"] + 1
        if len(problems) >= problems_max:
            return problems
    head = await connection.fetchval("select chain_hash from ledger_head")
    if head != previous:
        problems.append(AuditProblem("chain", "ledger_head", "head hash is not the last batch's"))
    return problems
