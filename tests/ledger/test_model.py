"""The ledger against an in-memory model (Hypothesis state machine).

Rules send batches mixing new transfers, exact and conflicting repeats, linked groups that
fail in the middle (holds and resolutions among their members), holds (pending top-ups, and
funds reserved on a purse), posts (whole and part), voids, time passing and expiry sweeps,
and bad input: accounts limited either way, one in another currency, totals overflowed; and several batches at once through a `TransferPipeline`, which the model books
one after the other in the order they were sent (the pipeline is the second writer: every
other rule moves the head it expects). The model is a plain dictionary with the rules written out one by one. After every
step: the books balance, model and database agree on every total and every result, and the
recomputation (`check_ledger`: totals, history, hash chain) finds nothing.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ledger import (
    Account,
    AccountFlags,
    AccountKind,
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    TransferOutcome,
    TransferPipeline,
    create_accounts,
    create_transfers,
    expire_pending_transfers,
    expiry_transfer_id,
)
from ledger.audit import check_ledger
from ledger.database import database_url_for
from ledger.records import amount_max

R = CreateTransferResult
purse_a, purse_b = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
bank, revenue = uuid.UUID(int=0xC), uuid.UUID(int=0xD)
unknown = uuid.UUID(int=0xE)
# `owed` may not be credited past its debits (money the bank owes us back); `dollars` keeps
# another currency (no transfer may join it to a rupiah account).
owed, dollars = uuid.UUID(int=0xF), uuid.UUID(int=0x10)
known_accounts = (purse_a, purse_b, bank, revenue, owed, dollars)
limited_accounts = frozenset({purse_a, purse_b})  # debits must not exceed credits
credit_limited_accounts = frozenset({owed})
huge = 2**62  # two of these overflow a total (amount_max = 2**63 - 1)
start = datetime(2026, 11, 3, 5, 0, tzinfo=UTC)
PENDING, POST, VOID = TransferFlags.pending, TransferFlags.post_pending, TransferFlags.void_pending


@dataclass
class Model:
    totals: dict[uuid.UUID, list[int]] = field(
        default_factory=lambda: {a: [0, 0, 0, 0] for a in known_accounts}
    )  # debits pending, debits posted, credits pending, credits posted
    booked: dict[uuid.UUID, Transfer] = field(default_factory=dict)  # resolved fields
    pending_at: dict[uuid.UUID, datetime] = field(default_factory=dict)
    resolved: dict[uuid.UUID, TransferFlags] = field(default_factory=dict)

    def result(self, t: Transfer, now: datetime) -> CreateTransferResult:
        """The first rule that applies, in the ledger's documented order."""
        resolving = bool(t.flags & (POST | VOID))
        if not resolving and t.debit_account_id == t.credit_account_id:
            return R.accounts_must_be_different
        if t.amount is not None and t.amount <= 0:
            return R.amount_must_be_positive
        if t.id in self.booked:
            old = self.booked[t.id]
            if t.flags != old.flags:
                return R.exists_with_different_flags
            if t.debit_account_id is not None and t.debit_account_id != old.debit_account_id:
                return R.exists_with_different_debit_account_id
            if t.amount is not None and t.amount != old.amount:
                return R.exists_with_different_amount
            return R.exists
        if resolving:
            assert t.pending_id is not None
            held = self.booked.get(t.pending_id)
            if held is None:
                return R.pending_transfer_not_found
            if not held.flags & PENDING:
                return R.pending_transfer_not_pending
            assert held.amount is not None
            if t.amount is not None and t.amount > held.amount:
                return R.exceeds_pending_transfer_amount
            if t.flags & VOID and t.amount is not None and t.amount != held.amount:
                return R.pending_transfer_has_different_amount
            if self.resolved.get(held.id) == POST:
                return R.pending_transfer_already_posted
            if self.resolved.get(held.id) == VOID:
                return R.pending_transfer_already_voided
            expires = self.pending_at[held.id] + timedelta(seconds=held.timeout_s)
            if held.timeout_s and now >= expires and t.code != TransferCode.expiry:
                return R.pending_transfer_expired
            debit = self.totals[held.debit_account_id]  # type: ignore[index]
            credit = self.totals[held.credit_account_id]  # type: ignore[index]
            posted = (held.amount if t.amount is None else t.amount) if t.flags & POST else 0
            return (
                self.overflow(
                    debit[0] - held.amount,
                    debit[1] + posted,
                    credit[2] - held.amount,
                    credit[3] + posted,
                )
                or R.created
            )
        if t.debit_account_id not in self.totals:
            return R.debit_account_not_found
        if t.credit_account_id not in self.totals:
            return R.credit_account_not_found
        if (t.debit_account_id == dollars) != (t.credit_account_id == dollars):
            return R.accounts_must_have_the_same_currency
        assert t.debit_account_id is not None and t.amount is not None
        debit, credit = self.totals[t.debit_account_id], self.totals[t.credit_account_id]  # type: ignore[index]
        pending = t.amount if t.flags & PENDING else 0
        posted = t.amount - pending
        after = (debit[0] + pending, debit[1] + posted, credit[2] + pending, credit[3] + posted)
        overflow = self.overflow(*after)
        if overflow is not None:
            return overflow
        if not t.flags & TransferFlags.force:
            if t.debit_account_id in limited_accounts and after[0] + after[1] > debit[3]:
                return R.exceeds_credits
            if t.credit_account_id in credit_limited_accounts and after[2] + after[3] > credit[1]:
                return R.exceeds_debits
        return R.created

    @staticmethod
    def overflow(
        debits_pending: int, debits_posted: int, credits_pending: int, credits_posted: int
    ) -> CreateTransferResult | None:
        """Totals after the transfer that a bigint (or their sum) cannot hold."""
        if max(debits_pending, debits_posted, debits_pending + debits_posted) > amount_max:
            return R.overflows_debits
        if max(credits_pending, credits_posted, credits_pending + credits_posted) > amount_max:
            return R.overflows_credits
        return None

    def apply(self, t: Transfer, now: datetime) -> None:
        if t.flags & (POST | VOID):
            assert t.pending_id is not None
            held = self.booked[t.pending_id]
            assert held.amount is not None
            amount = held.amount if t.amount is None else t.amount
            debit, credit = self.totals[held.debit_account_id], self.totals[held.credit_account_id]  # type: ignore[index]
            debit[0] -= held.amount
            credit[2] -= held.amount
            if t.flags & POST:
                debit[1] += amount
                credit[3] += amount
            self.resolved[held.id] = t.flags & (POST | VOID)
            self.booked[t.id] = t._replace(
                debit_account_id=held.debit_account_id,
                credit_account_id=held.credit_account_id,
                amount=amount,
                code=t.code or held.code,
            )
            return
        assert t.amount is not None
        debit, credit = self.totals[t.debit_account_id], self.totals[t.credit_account_id]  # type: ignore[index]
        column = 0 if t.flags & PENDING else 1
        debit[column] += t.amount
        credit[column + 2] += t.amount
        self.booked[t.id] = t
        if t.flags & PENDING:
            self.pending_at[t.id] = now

    def book_batch(self, transfers: list[Transfer], now: datetime) -> list[CreateTransferResult]:
        results: list[CreateTransferResult] = []
        index = 0
        while index < len(transfers):
            group_end = index
            while transfers[group_end].flags & TransferFlags.linked and group_end + 1 < len(
                transfers
            ):
                group_end += 1
            group = transfers[index : group_end + 1]
            if group[-1].flags & TransferFlags.linked:  # the batch ends inside a chain
                results += [R.linked_event_failed] * (len(group) - 1) + [R.linked_event_chain_open]
                break
            saved = copy.deepcopy((self.totals, self.booked, self.pending_at, self.resolved))
            group_results = []
            for t in group:
                result = self.result(t, now)
                group_results.append(result)
                if result is R.created:
                    self.apply(t, now)
                elif result is not R.exists and len(group) > 1:
                    break
            if len(group) > 1 and any(r not in (R.created, R.exists) for r in group_results):
                self.totals, self.booked, self.pending_at, self.resolved = saved
                failed_at = len(group_results) - 1
                group_results = [
                    group_results[i] if i == failed_at else R.linked_event_failed
                    for i in range(len(group))
                ]
            results += group_results
            index = group_end + 1
        return results


# The test function hands the machine its server (Hypothesis builds machines itself).
server: dict[str, str] = {}

amounts = st.integers(min_value=1, max_value=60_000)
accounts = st.sampled_from((*known_accounts, unknown))
# Mostly fares; now and then zero or negative (refused) or huge (overflows the totals).
plain_amounts = st.one_of(
    st.integers(min_value=-5, max_value=60_000), st.just(huge), st.just(huge + 1)
)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.database = f"ksh_model_{uuid.uuid4().hex[:12]}"
        self.connection: asyncpg.Connection = self.loop.run_until_complete(self._open())
        self.pipeline_connections = [
            self.loop.run_until_complete(
                asyncpg.connect(database_url_for(server["url"], self.database))
            )
            for _ in range(2)
        ]
        self.pipeline = TransferPipeline(self.pipeline_connections, clock=lambda: self.now)
        self.model = Model()
        self.now = start
        self.sent: list[Transfer] = []  # everything ever sent, to repeat or conflict with
        self.serial = 0

    async def _open(self) -> asyncpg.Connection:
        admin = await asyncpg.connect(server["url"])
        try:
            await admin.execute(
                f'create database "{self.database}" template "{server["template"]}"'
            )
        finally:
            await admin.close()
        connection = await asyncpg.connect(database_url_for(server["url"], self.database))
        await create_accounts(
            connection,
            [
                Account(
                    purse_a,
                    AccountKind.card_purse,
                    "a",
                    AccountFlags.debits_must_not_exceed_credits,
                ),
                Account(
                    purse_b,
                    AccountKind.card_purse,
                    "b",
                    AccountFlags.debits_must_not_exceed_credits,
                ),
                Account(bank, AccountKind.bank_clearing, "bank"),
                Account(revenue, AccountKind.operator_revenue, "operator"),
                Account(
                    owed,
                    AccountKind.bank_account,
                    "owed",
                    AccountFlags.credits_must_not_exceed_debits,
                ),
                Account(dollars, AccountKind.suspense, "dollars", currency="USD"),
            ],
        )
        return connection

    def teardown(self) -> None:
        async def close() -> None:
            for connection in (self.connection, *self.pipeline_connections):
                await connection.close()
            admin = await asyncpg.connect(server["url"])
            try:
                await admin.execute(f'drop database if exists "{self.database}" with (force)')
            finally:
                await admin.close()

        self.loop.run_until_complete(close())
        self.loop.close()

    def new_id(self) -> uuid.UUID:
        self.serial += 1
        return uuid.UUID(int=(0x5EED << 64) + self.serial)

    def book(self, transfers: list[Transfer]) -> None:
        expected = self.model.book_batch(transfers, self.now)
        outcomes = self.loop.run_until_complete(
            create_transfers(self.connection, transfers, now=self.now)
        )
        assert [o.result for o in outcomes] == expected, transfers
        self.sent += transfers

    # ------------------------------------------------------------------ rules

    @rule(
        moves=st.lists(
            st.tuples(accounts, accounts, plain_amounts, st.booleans()),
            min_size=1,
            max_size=6,
        )
    )
    def plain_batch(self, moves: list[tuple[uuid.UUID, uuid.UUID, int, bool]]) -> None:
        self.book(
            [
                Transfer(
                    self.new_id(),
                    debit,
                    credit,
                    amount,
                    TransferCode.fare,
                    flags=TransferFlags.force if force else TransferFlags.none,
                )
                for debit, credit, amount, force in moves
            ]
        )

    @rule(
        data=st.data(),
        batches=st.lists(
            st.lists(
                st.tuples(
                    accounts,
                    accounts,
                    st.integers(min_value=-5, max_value=60_000),
                    st.booleans(),
                    st.sampled_from(("new", "new", "new", "again", "again changed", "sent")),
                ),
                min_size=1,
                max_size=5,
            ),
            min_size=2,
            max_size=4,
        ),
    )
    def pipelined_batches(
        self,
        data: st.DataObject,
        batches: list[list[tuple[uuid.UUID, uuid.UUID, int, bool, str]]],
    ) -> None:
        """Batches sent at once through the pipeline: new transfers, repeats of transfers
        in the batches sent with them (exact or not: still in flight when repeated), and
        repeats of anything sent before (a hold repeated makes its batch go alone)."""
        sending: list[list[Transfer]] = []
        for moves in batches:
            batch: list[Transfer] = []
            for debit, credit, amount, force, origin in moves:
                earlier = [t for b in sending for t in b] + batch
                if origin.startswith("again") and earlier:
                    transfer = data.draw(st.sampled_from(earlier))
                    if origin == "again changed" and transfer.amount is not None:
                        transfer = transfer._replace(amount=transfer.amount + 1)
                elif origin == "sent" and self.sent:
                    transfer = data.draw(st.sampled_from(self.sent))
                else:
                    flags = TransferFlags.force if force else TransferFlags.none
                    transfer = Transfer(
                        self.new_id(), debit, credit, amount, TransferCode.fare, flags=flags
                    )
                batch.append(transfer)
            sending.append(batch)

        async def send() -> list[list[TransferOutcome]]:
            calls = [
                asyncio.ensure_future(self.pipeline.create_transfers(batch)) for batch in sending
            ]
            return list(await asyncio.gather(*calls))

        expected = [self.model.book_batch(batch, self.now) for batch in sending]
        booked = self.loop.run_until_complete(send())
        assert [[o.result for o in outcomes] for outcomes in booked] == expected, sending
        for batch in sending:
            self.sent += batch

    @rule(purse=st.sampled_from((purse_a, purse_b)), amount=amounts)
    def top_up(self, purse: uuid.UUID, amount: int) -> None:
        self.book([Transfer(self.new_id(), bank, purse, amount, TransferCode.top_up)])

    @rule(data=st.data(), change=st.sampled_from(("same", "amount", "flags", "debit")))
    def repeat(self, data: st.DataObject, change: str) -> None:
        if not self.sent:
            return
        original = data.draw(st.sampled_from(self.sent))
        if change == "amount" and original.amount is not None:
            original = original._replace(amount=original.amount + 1)
        elif change == "flags" and not original.flags & (POST | VOID):
            original = original._replace(flags=original.flags ^ TransferFlags.force)
        elif change == "debit" and original.debit_account_id is not None:
            original = original._replace(debit_account_id=unknown)
        extra = Transfer(self.new_id(), bank, revenue, 10, TransferCode.correction)
        self.book([original, extra, original])

    @rule(
        data=st.data(),
        members=st.lists(
            st.tuples(
                st.sampled_from(known_accounts),
                st.sampled_from(known_accounts),
                amounts,
                st.sampled_from(("plain", "plain", "hold", "post", "void")),
            ),
            min_size=2,
            max_size=4,
        ),
        close=st.sampled_from((True, True, True, False)),
    )
    def linked_group(
        self,
        data: st.DataObject,
        members: list[tuple[uuid.UUID, uuid.UUID, int, str]],
        close: bool,
    ) -> None:
        """A group booked all or none, with holds and resolutions of earlier holds among
        its members (a failure undoes the holds it made and the holds it resolved)."""
        holds = [t for t in self.sent if t.flags & PENDING]
        group = []
        for debit, credit, amount, kind in members:
            if kind in ("post", "void") and holds:
                held = data.draw(st.sampled_from(holds))
                flags = (POST if kind == "post" else VOID) | TransferFlags.linked
                group.append(
                    Transfer(self.new_id(), None, None, None, 0, flags=flags, pending_id=held.id)
                )
                continue
            flags = TransferFlags.linked | (PENDING if kind == "hold" else TransferFlags.none)
            group.append(
                Transfer(self.new_id(), debit, credit, amount, TransferCode.merchant_sale, flags)
            )
        if close:
            group[-1] = group[-1]._replace(flags=group[-1].flags & ~TransferFlags.linked)
        self.book([Transfer(self.new_id(), bank, revenue, 1, TransferCode.correction), *group])

    @rule(
        purse=st.sampled_from((purse_a, purse_b)),
        amount=amounts,
        timeout_s=st.sampled_from((0, 30, 600)),
        reserve=st.booleans(),
    )
    def hold(self, purse: uuid.UUID, amount: int, timeout_s: int, reserve: bool) -> None:
        """A pending top-up (bank to purse), or funds reserved on the purse (purse to
        revenue: held debits count against its limit)."""
        debit, credit = (purse, revenue) if reserve else (bank, purse)
        self.book(
            [
                Transfer(
                    self.new_id(),
                    debit,
                    credit,
                    amount,
                    TransferCode.pending_top_up,
                    flags=PENDING,
                    timeout_s=timeout_s,
                )
            ]
        )

    @rule(data=st.data(), post=st.booleans(), part=st.sampled_from((None, 1, 2)))
    def resolve(self, data: st.DataObject, post: bool, part: int | None) -> None:
        holds = [t for t in self.sent if t.flags & PENDING]
        pending_id = data.draw(st.sampled_from(holds)).id if holds else unknown
        held = self.model.booked.get(pending_id)
        amount = None
        if part is not None and held is not None and held.amount is not None:
            amount = max(1, held.amount // part) if part == 2 else held.amount + 1
        flags = POST if post else VOID
        self.book(
            [Transfer(self.new_id(), None, None, amount, 0, flags=flags, pending_id=pending_id)]
        )

    @rule(seconds=st.sampled_from((1, 29, 31, 700)))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def expire(self) -> None:
        due = [
            t
            for t in self.model.booked.values()
            if t.flags & PENDING
            and t.timeout_s
            and t.id not in self.model.resolved
            and self.now >= self.model.pending_at[t.id] + timedelta(seconds=t.timeout_s)
        ]
        voids = [
            Transfer(
                expiry_transfer_id(t.id),
                None,
                None,
                None,
                TransferCode.expiry,
                flags=VOID,
                pending_id=t.id,
            )
            for t in sorted(due, key=lambda t: self.model.pending_at[t.id])
        ]
        expected = self.model.book_batch(voids, self.now)
        outcomes = self.loop.run_until_complete(
            expire_pending_transfers(self.connection, now=self.now)
        )
        assert sorted(o.id for o in outcomes) == sorted(v.id for v in voids)
        assert all(r is R.created for r in expected)
        assert all(o.result is R.created for o in outcomes)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def books_agree(self) -> None:
        rows = self.loop.run_until_complete(
            self.connection.fetch(
                "select id, debits_pending, debits_posted, credits_pending, credits_posted"
                " from ledger_accounts"
            )
        )
        stored = {row["id"]: list(row[1:]) for row in rows}
        assert stored == self.model.totals
        assert sum(t[1] for t in stored.values()) == sum(t[3] for t in stored.values())
        assert sum(t[0] for t in stored.values()) == sum(t[2] for t in stored.values())
        assert self.loop.run_until_complete(check_ledger(self.connection)) == []


def test_ledger_matches_the_model(postgres_server_url: str, migrated_template: str) -> None:
    server["url"] = postgres_server_url
    server["template"] = migrated_template
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(max_examples=30, stateful_step_count=12, deadline=None),
    )
