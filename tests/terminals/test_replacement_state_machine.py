"""A Hypothesis state machine over a lost card's life: taps and POS sales and refunds made
offline (uploaded late, terminal by terminal, before or after anything else), a pending top-up
paid and delivered, the block, the terminals syncing it, the replacement, the clock running
past the waiting period, the balance moved, the new card collecting it, and complaints about the
old card's taps refunded at any point (before the block, during the wait, after the move).
Real PostgreSQL, through the upload ingest and the service desk's own functions.

After every step: the books sum to zero; until the move, the old purse is what its booked
records say; the move happens once, after the wait, of exactly the books' balance then (purse
and pending top-ups); after it the old purse never changes again, and everything the old card
still did shows in suspense: the balance is never paid twice. What reached the new card (pending
and collected) is the moved amount and the refunds given after the move. A refund gives back at
most what the named tap paid (more is refused, booking nothing); before the move it waits for
the old card (and moves with its balance), after the move it goes to the new card."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bus_terminals.wire import (
    UploadBatch,
    UploadKind,
    UploadRecord,
    encode_batch,
    public_key_text,
    sign,
)
from gateways.service_desk import complaints
from gateways.service_desk.complaints import ComplaintError, TapRef
from gateways.staff import Role, StaffMember
from gateways.terminal_api import card_desk, registry
from gateways.terminal_api.ingest import ingest_upload
from gateways.terminal_api.planning import balance_change
from gateways.terminal_api.registry import TerminalRole
from ledger.clock import ManualClock, jakarta
from ledger.database import database_url_for
from ledger.records import TransferCode
from tests.terminals.helpers import record

old_card, new_card = "6032984000000201", "6032984000000202"
paying_kinds = (UploadKind.fare_debit, UploadKind.sale)  # what a complaint can take back
opening_rupiah = 30_000
wait = dt.timedelta(days=3)
operator_id, merchant_id = "TRANS-SEMARANG", "WARUNG-01"
validators, points_of_sale = ("V1", "V2"), ("P1",)
clerk = StaffMember("desk-ani", Role.clerk)


@dataclass
class Terminal:
    terminal_id: str
    key: Ed25519PrivateKey
    next_sequence: int = 1
    next_batch: int = 1
    queue: list[UploadRecord] = field(default_factory=list)  # made offline, not uploaded
    knows_block: bool = False  # synced since the block: refuses the old card


@dataclass
class Chip:
    """A card as it is: its balance, counter and newest log record (counter, terminal, balance)."""

    balance: int
    counter: int = 0
    last: tuple[int, str, int] = (0, "", 0)
    blocked: bool = False  # a terminal that knew of the block wrote it onto the card


def test_block_late_taps_replace_move_state_machine(
    postgres_server_url: str, migrated_template: str
) -> None:
    class ReplacementMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.database = f"ksh_test_{uuid.uuid4().hex[:12]}"
            self.clock = ManualClock(dt.datetime(2026, 11, 24, 6, 0, tzinfo=jakarta))
            self.terminals = {
                name: Terminal(name, Ed25519PrivateKey.generate())
                for name in validators + points_of_sale
            }
            self.chips = {old_card: Chip(opening_rupiah), new_card: Chip(0)}
            self.sales_rupiah = 0  # sold at the POS to the old card, not yet refunded
            self.top_ups: list[tuple[str, int]] = []  # paid for the old card
            self.on_chip: set[str] = set()  # top-ups a terminal wrote onto a card
            self.top_up_ids = itertools.count(1)
            # The books as the model sees them.
            self.old_purse = opening_rupiah  # what the old card's booked records add up to
            self.old_pending = 0  # paid, and not booked as delivered
            self.suspense = 0
            self.blocked_at: dt.datetime | None = None
            self.replaced = False
            self.moved_rupiah: int | None = None
            self.new_collected = 0
            self.new_top_ups: list[tuple[str, int]] = []  # waiting for the new card
            # The old card's booked fares and sales: (terminal, sequence) -> [paid, refunded].
            self.paid_taps: dict[tuple[str, int], list[int]] = {}
            self.run(self._start())

        def run(self, coroutine: Any) -> Any:
            return self.loop.run_until_complete(coroutine)

        async def _start(self) -> None:
            admin = await asyncpg.connect(postgres_server_url)
            try:
                await admin.execute(
                    f'create database "{self.database}" template "{migrated_template}"'
                )
            finally:
                await admin.close()
            self.db = await asyncpg.connect(database_url_for(postgres_server_url, self.database))
            db = self.db
            await registry.register_operator(db, operator_id)
            await registry.register_merchant(db, merchant_id, fee_basis_points=100)
            for name, terminal in self.terminals.items():
                await registry.register_terminal(
                    db,
                    name,
                    public_key_text(terminal.key.public_key()),
                    TerminalRole.validator if name in validators else TerminalRole.pos,
                    operator_id=operator_id if name in validators else None,
                    merchant_id=merchant_id if name in points_of_sale else None,
                )
            await registry.issue_cards(
                db, {old_card: opening_rupiah, new_card: 0}, now=self.clock.now()
            )
            await card_desk.register_holder(
                db,
                old_card,
                "Siti",
                "3374012345678901",
                "081234567890",
                username="desk",
                now=self.clock.now(),
            )

        def teardown(self) -> None:
            async def stop() -> None:
                await self.db.close()
                admin = await asyncpg.connect(postgres_server_url)
                try:
                    await admin.execute(f'drop database if exists "{self.database}" with (force)')
                finally:
                    await admin.close()

            self.run(stop())
            self.loop.close()

        # ---------------------------------------------------------------- the cards

        def _write(
            self,
            terminal: Terminal,
            number: str,
            kind: UploadKind,
            amount: int,
            top_up: tuple[str, int] | None = None,
        ) -> None:
            """The card commits a transaction at an offline terminal, which journals it."""
            chip = self.chips[number]
            credit = top_up[1] if top_up else 0
            made = record(
                terminal.terminal_id,
                terminal.next_sequence,
                number,
                chip.counter + 1,
                amount,
                0,
                kind=kind,
                previous=chip.last,
                top_up=credit,
                top_up_id=top_up[0] if top_up else "",
                merchant_id=merchant_id if terminal.terminal_id in points_of_sale else "",
            )
            made = made._replace(balance_after_rupiah=chip.balance + balance_change(made))
            assert made.balance_after_rupiah >= 0
            chip.balance = made.balance_after_rupiah
            chip.counter += 1
            chip.last = (chip.counter, terminal.terminal_id, chip.balance)
            terminal.next_sequence += 1
            terminal.queue.append(made)

        @rule(
            terminal=st.sampled_from(validators + points_of_sale),
            amount=st.integers(1, 9_000),
            refund=st.booleans(),
        )
        def old_card_pays(self, terminal: str, amount: int, refund: bool) -> None:
            at = self.terminals[terminal]
            chip = self.chips[old_card]
            if at.knows_block or chip.blocked:
                return  # refused at the reader or by the card: nothing new on it
            if terminal in points_of_sale and refund:
                amount = min(amount, self.sales_rupiah)
                if amount:
                    self.sales_rupiah -= amount
                    self._write(at, old_card, UploadKind.refund, amount)
            elif amount <= chip.balance:
                kind = UploadKind.fare_debit if terminal in validators else UploadKind.sale
                self.sales_rupiah += amount if kind is UploadKind.sale else 0
                self._write(at, old_card, kind, amount)

        @rule(terminal=st.sampled_from(validators + points_of_sale))
        def old_card_blocked_on_its_chip(self, terminal: str) -> None:
            """A terminal that synced the (lost) block writes it onto the card, once: a record
            of no money, taken in whatever order it reaches the back office."""
            at = self.terminals[terminal]
            if not at.knows_block or self.chips[old_card].blocked:
                return
            self._write(at, old_card, UploadKind.block, 0)
            self.chips[old_card].blocked = True
            event("the block written on the chip")

        @precondition(lambda self: self.blocked_at is None)
        @rule(amount=st.integers(1, 20_000))
        def pay_top_up(self, amount: int) -> None:
            top_up_id = f"VA-{next(self.top_up_ids)}"
            self.run(
                registry.pay_pending_top_up(
                    self.db, top_up_id, old_card, amount, paid_at=self.clock.now()
                )
            )
            self.top_ups.append((top_up_id, amount))
            self.old_pending += amount

        @rule(terminal=st.sampled_from(validators))
        def old_card_collects_a_top_up(self, terminal: str) -> None:
            at = self.terminals[terminal]
            waiting = [t for t in self.top_ups if t[0] not in self.on_chip]
            if at.knows_block or self.chips[old_card].blocked or not waiting:
                return
            self.on_chip.add(waiting[0][0])
            self._write(at, old_card, UploadKind.topup_credit, 0, waiting[0])

        @rule(terminal=st.sampled_from(validators))
        def new_card_collects(self, terminal: str) -> None:
            waiting = [t for t in self.new_top_ups if t[0] not in self.on_chip]
            if not waiting:
                return
            self.on_chip.add(waiting[0][0])
            self._write(self.terminals[terminal], new_card, UploadKind.topup_credit, 0, waiting[0])

        # ---------------------------------------------------------------- the back office

        @rule(terminal=st.sampled_from(validators + points_of_sale))
        def upload(self, terminal: str) -> None:
            at = self.terminals[terminal]
            if not at.queue:
                return
            body = encode_batch(UploadBatch(terminal, at.next_batch, tuple(at.queue)))
            answer = self.run(
                ingest_upload(self.db, terminal, sign(at.key, body), body, now=self.clock.now())
            )
            assert answer.result.value == "accepted", answer
            for made in at.queue:
                self._book_in_model(made)
                if made.card_number == old_card and made.kind in paying_kinds:
                    # A tap booked after the move was paid from suspense, not the rider's
                    # balance (which moved): it gives nothing back.
                    paid = made.amount_rupiah if self.moved_rupiah is None else 0
                    self.paid_taps[(terminal, made.sequence)] = [paid, 0]
            at.queue.clear()
            at.next_batch += 1

        def _book_in_model(self, made: UploadRecord) -> None:
            if made.card_number == new_card:
                self.new_collected += made.topup_rupiah
                return
            if self.moved_rupiah is None:
                self.old_purse += balance_change(made)
                self.old_pending -= made.topup_rupiah
            else:  # after the move: the old card's money is in suspense, never the purse
                event("a record of the old card booked after its balance moved")
                self.suspense += balance_change(made) - made.topup_rupiah

        @rule(terminal=st.sampled_from(validators + points_of_sale))
        def sync(self, terminal: str) -> None:
            denied = self.run(
                self.db.fetchval("select 1 from deny_list where card_number = $1", old_card)
            )
            assert bool(denied) == (self.blocked_at is not None)
            self.terminals[terminal].knows_block = bool(denied)

        @precondition(lambda self: self.blocked_at is None)
        @rule()
        def block(self) -> None:
            self.run(
                card_desk.block_card(
                    self.db,
                    old_card,
                    card_desk.BlockCause.lost,
                    "lost on a bus",
                    username="desk",
                    now=self.clock.now(),
                )
            )
            self.blocked_at = self.clock.now()

        @precondition(lambda self: self.blocked_at is not None)
        @rule()
        def replace(self) -> None:
            self.run(
                card_desk.request_replacement(
                    self.db, old_card, new_card, username="desk", now=self.clock.now(), wait=wait
                )
            )
            self.replaced = True
            self._moved_if_due()

        @rule(hours=st.integers(1, 80))
        def time_passes(self, hours: int) -> None:
            """The clock moves on, and the back office's sweep runs (as a daily job would)."""
            self.clock.advance(hours * 3_600)
            self.move_due()

        @rule()
        def move_due(self) -> None:
            self.run(card_desk.move_due_balances(self.db, now=self.clock.now(), wait=wait))
            self._moved_if_due()

        def _moved_if_due(self) -> None:
            due = self.blocked_at is not None and self.clock.now() >= self.blocked_at + wait
            if self.replaced and due and self.moved_rupiah is None:
                self.moved_rupiah = max(0, self.old_purse) + self.old_pending
                event("the balance moved")
                self.old_purse = min(0, self.old_purse)  # what stays on the closed purse
                self.old_pending = 0
                if self.moved_rupiah:
                    self.new_top_ups.append((f"replace:{old_card}:1", self.moved_rupiah))

        # ---------------------------------------------------------------- complaints

        @rule(data=st.data(), extra=st.integers(-2_000, 500))
        def complaint_refunded(self, data: st.DataObject, extra: int) -> None:
            """A rider complains about one of the old card's booked fares or sales; the desk
            gives back what it paid less what was given back before, plus `extra` (more than
            that is refused and books nothing)."""
            if not self.paid_taps:
                return
            tap = data.draw(st.sampled_from(sorted(self.paid_taps)))
            paid, refunded = self.paid_taps[tap]
            amount = paid - refunded + extra
            if amount <= 0:
                return

            async def complain() -> int:
                number = await complaints.add_complaint(
                    self.db,
                    card_number=old_card,
                    channel="phone",
                    description="charged twice",
                    taps=[TapRef(*tap)],
                    received_by=clerk.username,
                    now=self.clock.now(),
                )
                await complaints.resolve(
                    self.db, number, clerk, "refunded", refund_rupiah=amount, now=self.clock.now()
                )
                return number

            before = self.run(self._total_moved())
            try:
                number = self.run(complain())
            except ComplaintError as refused:
                assert refused.code == "over_refund" and extra > 0, refused
                assert self.run(self._total_moved()) == before  # nothing booked
                event("an over-refund refused")
                return
            assert extra <= 0, "a refund above what the tap paid was booked"
            self.paid_taps[tap][1] += amount
            top_up = (complaints.refund_top_up_id(number), amount)
            if self.moved_rupiah is None:
                event("a refund before the move: waits for the old card")
                self.old_pending += amount
                self.top_ups.append(top_up)
            else:
                event("a refund after the move: to the new card")
                self.new_top_ups.append(top_up)

        async def _total_moved(self) -> int:
            return int(
                await self.db.fetchval("select coalesce(sum(amount), 0) from ledger_transfers")
            )

        # ---------------------------------------------------------------- invariants

        async def _balance(self, account_id: uuid.UUID) -> int:
            value = await self.db.fetchval(
                "select credits_posted - debits_posted from ledger_accounts where id = $1",
                account_id,
            )
            return int(value or 0)

        @invariant()
        def blocks_on_the_chip_are_taken(self) -> None:
            """The block was asked for: its record is booked (no money), nothing flagged."""
            not_taken = self.run(
                self.db.fetchval(
                    "select (select count(*) from card_records where kind = 'block' "
                    "and outcome <> 'booked') + (select count(*) from card_flags "
                    "where reason = 'unrequested_block')"
                )
            )
            assert not_taken == 0

        @invariant()
        def books_agree_with_the_model(self) -> None:
            async def look() -> dict[str, int]:
                old, new = registry.card_accounts(old_card), registry.card_accounts(new_card)
                return {
                    "total": int(
                        await self.db.fetchval(
                            "select coalesce(sum(credits_posted - debits_posted), 0) from ledger_accounts"
                        )
                    ),
                    "old_purse": await self._balance(old.purse_account_id),
                    "old_pending": await self._balance(old.pending_top_up_account_id),
                    "new_purse": await self._balance(new.purse_account_id),
                    "new_pending": await self._balance(new.pending_top_up_account_id),
                    "suspense": await self._balance(registry.suspense_account_id),
                    "moves": int(
                        await self.db.fetchval(
                            "select count(*) from ledger_transfers where code = $1",
                            int(TransferCode.card_replacement),
                        )
                    ),
                }

            books = self.run(look())
            assert books["total"] == 0
            assert books["old_purse"] == self.old_purse
            assert books["old_pending"] == self.old_pending
            assert books["suspense"] == self.suspense
            owed_new = sum(amount for _, amount in self.new_top_ups)  # the move and refunds
            assert books["new_pending"] + books["new_purse"] == owed_new  # once, never twice
            assert books["new_purse"] == self.new_collected
            assert books["moves"] <= 2  # the purse and the pending top-ups, each once
            assert books["moves"] >= (1 if self.moved_rupiah else 0)

    run_state_machine_as_test(
        ReplacementMachine,
        # Not shrunk: an example costs a database and a second or so, and shrinking one ran
        # past the test's timeout; a failure shows its steps as they came (at most 40).
        settings=settings(
            max_examples=15,
            stateful_step_count=40,
            deadline=None,
            phases=(Phase.explicit, Phase.reuse, Phase.generate),
        ),
    )
