"""What finance staff look at, as plain queries: a day's overview, its charts' data, batches,
exceptions, a card's story. Read-only; the pages, the exports and the demo report share them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from ledger.records import TransferCode
from settlement.end_of_day import EndOfDayConfig, cutoff_at

exceptions_page_rows_max = 500
exceptions_export_rows_max = 1_000_000  # a CSV export is complete: auditors sum it
card_history_rows_max = 200


@dataclass(frozen=True, slots=True)
class DayOverview:
    service_day: dt.date
    taps: int
    fare_revenue_rupiah: int
    sales_rupiah: int
    top_ups_rupiah: int  # money received for cards: VA (pending top-ups) and kiosks
    payouts_rupiah: int  # settlement batches' net
    float_rupiah: int  # money the issuer holds or is owed by banks for cardholders
    card_liabilities_rupiah: int  # purses plus pending top-ups: what cardholders can spend
    exceptions_open: int
    fares: DayFares  # the charts' data: its sums are `taps` and `fare_revenue_rupiah`


def window(day: dt.date, config: EndOfDayConfig) -> tuple[dt.datetime, dt.datetime]:
    end = cutoff_at(day, config)
    return end - dt.timedelta(days=1), end


@dataclass(frozen=True, slots=True)
class DayFares:
    """The day's booked fares, counted once: the overview's tiles and its charts are sums of
    these same rows, so they cannot disagree (a day booked without the terminals' records, as
    a test day is, once showed 24 taps beside an empty taps chart)."""

    per_hour: list[tuple[str, int]]  # taps by hour (Jakarta) of the tap, "00".."23"
    per_corridor: list[tuple[str, int]]  # rupiah by route ("?" when no record names one)

    @property
    def taps(self) -> int:
        return sum(count for _, count in self.per_hour)

    @property
    def rupiah(self) -> int:
        return sum(amount for _, amount in self.per_corridor)


corridors_shown_max = 24  # the rest are added up as one bar, so the bars still sum to the tile
other_corridors = "…"


async def day_fares(
    connection: asyncpg.Connection, day: dt.date, config: EndOfDayConfig
) -> DayFares:
    """Fares booked in the ledger for the day (the window the settlement uses); each one's hour
    and route come from the terminal's record when there is one, else its booking time."""
    start, end = window(day, config)
    rows = await connection.fetch(
        """select extract(hour from coalesce(to_timestamp(r.time_ms / 1000.0), t.booked_at)
                          at time zone 'Asia/Jakarta')::int as hour,
                  coalesce(nullif(r.route, ''), '?') as route,
                  count(*) as taps, sum(t.amount) as rupiah
             from ledger_transfers t
             left join card_records r
               on r.terminal_id = t.terminal_id and r.sequence = t.terminal_sequence
            where t.booked_at >= $1 and t.booked_at < $2 and t.code = $3 and t.flags & (2 | 8) = 0
            group by 1, 2""",
        start,
        end,
        int(TransferCode.fare),
    )
    hours = [0] * 24
    corridors: dict[str, int] = {}
    for row in rows:
        hours[row["hour"]] += int(row["taps"])
        corridors[row["route"]] = corridors.get(row["route"], 0) + int(row["rupiah"])
    return DayFares([(f"{hour:02d}", count) for hour, count in enumerate(hours)], bars(corridors))


def bars(amounts: dict[str, int]) -> list[tuple[str, int]]:
    """By name; past `corridors_shown_max`, the biggest and one bar for all the others."""
    ranked = sorted(amounts.items())
    if len(ranked) <= corridors_shown_max:
        return ranked
    biggest = sorted(ranked, key=lambda item: -item[1])[: corridors_shown_max - 1]
    rest = sum(amounts.values()) - sum(amount for _, amount in biggest)
    return [*sorted(biggest), (other_corridors, rest)]


async def day_overview(
    connection: asyncpg.Connection, day: dt.date, config: EndOfDayConfig
) -> DayOverview:
    start, end = window(day, config)
    fares = await day_fares(connection, day, config)
    row = await connection.fetchrow(
        """select coalesce(sum(amount) filter (where code = $3), 0) as sales,
                  coalesce(sum(amount) filter (where code in ($4, $5)), 0) as top_ups
             from ledger_transfers
            where booked_at >= $1 and booked_at < $2 and flags & (2 | 8) = 0""",
        start,
        end,
        int(TransferCode.merchant_sale),
        int(TransferCode.pending_top_up),
        int(TransferCode.top_up),
    )
    balances = await connection.fetchrow(
        """select coalesce(sum(debits_posted - credits_posted) filter (where kind in ('bank_account', 'bank_clearing')), 0) as float,
                  coalesce(sum(credits_posted - debits_posted) filter (where kind in ('card_purse', 'pending_top_up')), 0) as liabilities
             from ledger_accounts"""
    )
    payouts = await connection.fetchval(
        "select coalesce(sum(net_rupiah), 0) from settlement_batches where service_day = $1", day
    )
    exceptions_open = await connection.fetchval(
        "select count(*) from settlement_exceptions where resolved_at is null"
    )
    return DayOverview(
        day,
        fares.taps,
        fares.rupiah,
        int(row["sales"]),
        int(row["top_ups"]),
        int(payouts),
        int(balances["float"]),
        int(balances["liabilities"]),
        int(exceptions_open),
        fares,
    )


@dataclass(frozen=True, slots=True)
class PayeeDay:
    """One merchant's (or the operator's) day, card and QRIS side by side: for a merchant its
    card sales and QRIS sales, for the operator its card fares and rides sold by QRIS."""

    kind: str  # "merchant" or "operator"
    party_id: str
    card_count: int
    card_rupiah: int
    qris_count: int
    qris_rupiah: int  # what riders and customers paid by QRIS
    qris_mdr_rupiah: int  # what the acquirer keeps of it

    @property
    def total_rupiah(self) -> int:
        """What the day adds to the payee's account: card, and QRIS less its MDR."""
        return self.card_rupiah + self.qris_rupiah - self.qris_mdr_rupiah


async def payee_days(
    connection: asyncpg.Connection, day: dt.date, config: EndOfDayConfig
) -> list[PayeeDay]:
    """Every merchant and operator paid anything on the day (the settlement's window)."""
    start, end = window(day, config)
    rows = await connection.fetch(
        """select case a.kind when 'merchant_payable' then 'merchant' else 'operator' end
                      as kind,
                  a.owner_reference as party_id,
                  count(*) filter (where t.code in ($3, $4) and t.credit_account_id = a.id)
                      as card_count,
                  coalesce(sum(t.amount) filter (where t.code in ($3, $4)
                      and t.credit_account_id = a.id), 0) as card_rupiah,
                  count(*) filter (where t.code = $5 and t.credit_account_id = a.id)
                      as qris_count,
                  coalesce(sum(t.amount) filter (where t.code = $5
                      and t.credit_account_id = a.id), 0) as qris_rupiah,
                  coalesce(sum(t.amount) filter (where t.code = $6
                      and t.debit_account_id = a.id), 0) as qris_mdr_rupiah
             from ledger_transfers t
             join ledger_accounts a on a.id in (t.credit_account_id, t.debit_account_id)
            where t.booked_at >= $1 and t.booked_at < $2 and t.flags & (2 | 8) = 0
              and t.code in ($3, $4, $5, $6)
              and a.kind in ('merchant_payable', 'operator_revenue')
            group by 1, 2
            order by 1 desc, 2""",
        start,
        end,
        int(TransferCode.merchant_sale),
        int(TransferCode.fare),
        int(TransferCode.qris_payment),
        int(TransferCode.qris_mdr),
    )
    return [PayeeDay(**dict(row)) for row in rows]


async def batches(connection: asyncpg.Connection, day: dt.date) -> list[asyncpg.Record]:
    return await connection.fetch(
        """select b.*, p.name, p.bank_code, p.account_no,
                  (select string_agg(x.payout_id || ' ' || x.state, ', ' order by x.attempt)
                     from settlement_payouts x where x.batch_id = b.batch_id) as attempts,
                  exists (select 1 from settlement_payouts x join settlement_match_movements m
                            on m.movement_id = x.payout_id where x.batch_id = b.batch_id) as confirmed
             from settlement_batches b left join settlement_parties p using (party_kind, party_id)
            where b.service_day = $1 order by b.batch_id""",
        day,
    )


async def exceptions(
    connection: asyncpg.Connection, *, open_only: bool, rows_max: int = exceptions_page_rows_max
) -> list[asyncpg.Record]:
    return await connection.fetch(
        """select e.*, l.reference, l.description, l.value_date, l.direction, l.source_file, l.source_line
             from settlement_exceptions e
             left join settlement_statement_lines l on e.subject_kind = 'line' and l.line_key = e.subject_id
            where ($1::boolean is false or e.resolved_at is null)
            order by e.resolved_at is not null, e.opened_at, e.exception_id
            limit $2""",
        open_only,
        rows_max,
    )


async def exceptions_count(connection: asyncpg.Connection, *, open_only: bool) -> int:
    """How many `exceptions` would list without a limit (pages say when they show fewer)."""
    count = await connection.fetchval(
        "select count(*) from settlement_exceptions where ($1::boolean is false or resolved_at is null)",
        open_only,
    )
    return int(count)


async def open_movements(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    """Expected movements nothing matched yet (candidates for a manual match)."""
    return await connection.fetch(
        """select e.* from settlement_expected_movements e
            where not e.cancelled
              and not exists (select 1 from settlement_match_movements m where m.movement_id = e.movement_id)
            order by e.value_date, e.movement_id limit $1""",
        exceptions_page_rows_max,
    )


async def open_lines(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    """Statement lines neither matched nor written off (candidates for a manual match)."""
    return await connection.fetch(
        """select l.* from settlement_statement_lines l
            where not exists (select 1 from settlement_match_lines m where m.line_key = l.line_key)
              and not exists (select 1 from settlement_exceptions e
                               where e.subject_kind = 'line' and e.subject_id = l.line_key
                                 and e.resolved_at is not null)
            order by l.value_date, l.line_key limit $1""",
        exceptions_page_rows_max,
    )


@dataclass(frozen=True, slots=True)
class CardStory:
    """One card as finance sees it: what the card itself last reported beside the books."""

    card_number: str
    # The card's own balance: balance after its highest counter booked (None: no records yet).
    card_balance_rupiah: int | None
    card_counter: int  # that counter (0: none)
    card_reported_ms: int | None  # when the card made that transaction
    books_balance_rupiah: int  # the card's purse account in the ledger
    pending_top_ups_rupiah: int  # paid for the card, not yet on it
    denied: bool
    flags: list[asyncpg.Record]
    history: list[asyncpg.Record]

    @property
    def difference_rupiah(self) -> int | None:
        """The card's balance minus the books' (None while the card has reported nothing)."""
        if self.card_balance_rupiah is None:
            return None
        return self.card_balance_rupiah - self.books_balance_rupiah


async def card_story(connection: asyncpg.Connection, card_number: str) -> CardStory | None:
    """The card's own balance, the books' balances, flags and the latest records of one card;
    None when no such card was issued."""
    card = await connection.fetchrow("select * from cards where card_number = $1", card_number)
    if card is None:
        return None
    accounts = await connection.fetch(
        """select id, credits_posted - debits_posted as balance from ledger_accounts
            where id in ($1, $2)""",
        card["purse_account_id"],
        card["pending_top_up_account_id"],
    )
    balances = {row["id"]: int(row["balance"]) for row in accounts}
    last = await connection.fetchrow(
        """select card_counter, balance_after_rupiah, time_ms from card_records
            where card_number = $1 and outcome = 'booked'
            order by card_counter desc limit 1""",
        card_number,
    )
    flags = await connection.fetch(
        """select reason, terminal_id, sequence, card_counter, detail from card_flags
            where card_number = $1 order by flag_id limit 50""",
        card_number,
    )
    denied = await connection.fetchval(
        "select exists (select 1 from deny_list where card_number = $1)", card_number
    )
    history = await connection.fetch(
        """select terminal_id, sequence, kind, card_counter, amount_rupiah, topup_rupiah,
                  balance_after_rupiah, time_ms, route, merchant_id, outcome
             from card_records where card_number = $1 order by card_counter desc, time_ms desc limit $2""",
        card_number,
        card_history_rows_max,
    )
    return CardStory(
        card_number,
        int(last["balance_after_rupiah"]) if last else None,
        int(last["card_counter"]) if last else 0,
        int(last["time_ms"]) if last else None,
        balances.get(card["purse_account_id"], 0),
        balances.get(card["pending_top_up_account_id"], 0),
        bool(denied),
        list(flags),
        list(history),
    )


quarantine_states = ("open", "asked", "released", "written_off")


@dataclass(frozen=True, slots=True)
class HeldTally:
    """Records and the rupiah their terminals claimed (amount plus credit), by state."""

    records: dict[str, int]
    rupiah: dict[str, int]

    @property
    def total_records(self) -> int:
        return sum(self.records.values())

    @property
    def total_rupiah(self) -> int:
        return sum(self.rupiah.values())

    def text(self) -> str:
        plural = "" if self.total_records == 1 else "s"
        states = ", ".join(
            f"{state.replace('_', ' ')} {self.records.get(state, 0)} "
            f"Rp {self.rupiah.get(state, 0):,}"
            for state in quarantine_states
            if self.records.get(state) or state == "open"
        )
        return f"{self.total_records} record{plural}, Rp {self.total_rupiah:,} ({states})"


@dataclass(frozen=True, slots=True)
class HeldInQuarantine:
    """What the day's uploads held apart (`gateways.terminal_api.quarantine`): never in a
    settlement batch until released. 'asked': a supervisor asked, a second has not confirmed."""

    total: HeldTally
    by_reason: dict[str, HeldTally]
    by_terminal: dict[str, HeldTally]

    def lines(self) -> list[str]:
        if not self.total.total_records:
            return ["held in quarantine: nothing"]
        return (
            [f"held in quarantine: {self.total.text()}"]
            + [f"  reason {reason}: {tally.text()}" for reason, tally in self.by_reason.items()]
            + [f"  terminal {terminal}: {t.text()}" for terminal, t in self.by_terminal.items()]
        )


async def held_in_quarantine(
    connection: asyncpg.Connection, day: dt.date, config: EndOfDayConfig
) -> HeldInQuarantine:
    """The records quarantined in the service day's window, by reason and by terminal."""
    start, end = window(day, config)
    rows = await connection.fetch(
        """select q.reason, q.terminal_id,
                  case when q.state like '%_requested' then 'asked' else q.state end as state,
                  count(*) as records, sum(r.amount_rupiah + r.topup_rupiah) as rupiah
             from quarantined_records q join card_records r using (terminal_id, sequence)
            where q.quarantined_at >= $1 and q.quarantined_at < $2
            group by 1, 2, 3 order by 1, 2, 3""",
        start,
        end,
    )

    def tally(column: str | None = None, value: str = "") -> HeldTally:
        records: dict[str, int] = {}
        rupiah: dict[str, int] = {}
        for row in rows:
            if column is None or row[column] == value:
                records[row["state"]] = records.get(row["state"], 0) + int(row["records"])
                rupiah[row["state"]] = rupiah.get(row["state"], 0) + int(row["rupiah"])
        return HeldTally(records, rupiah)

    reasons = sorted({row["reason"] for row in rows})
    terminals = sorted({row["terminal_id"] for row in rows})
    return HeldInQuarantine(
        tally(),
        {reason: tally("reason", reason) for reason in reasons},
        {terminal: tally("terminal_id", terminal) for terminal in terminals},
    )
