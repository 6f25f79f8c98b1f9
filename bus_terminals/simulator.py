"""A service day on Trans Semarang, through the real card protocol, against the real back office.

Buses run validators (journal on disk, emulated KSH cards in-process through `KshCard`), riders
of realistic categories tap at commuting hours and transfer between corridors, some cards get
virtual-account top-ups during the day (delivered at their next tap). The network is flaky
(requests and answers lost), validators lose power (journal reopened, memory gone) and riders
pull their card away mid-tap. At the end every bus uploads, every card whose outcome is still
in doubt taps once more the next morning, and each card's own balance is compared with its
purse account in the back office.

`simulate_day(settings, backoffice_url)` is the library entry (the demo calls it);
`ksh simulate` wraps it. `Bus` is reused by the tests and the tap benchmark.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bus_terminals.fleet import Fleet, use_key_versions
from bus_terminals.journal import Journal
from bus_terminals.sync import SyncClient, SyncState, UploadStatus
from bus_terminals.terminal import Decide, Feedback, Terminal, Verdict
from bus_terminals.wire import public_key_text
from card_reader.emulator import EmulatedCard, EmulatedReader, save_deck
from card_reader.keys import KeyRole, KeyStore, TerminalKeys, demo_key_store
from card_reader.ksh_card import KshCard, RiderCategory

corridors = ("K1", "K2", "K3", "K4", "K5", "K6", "K7", "K8")
operator_id = "TRANS-SEMARANG"
wib = dt.timezone(dt.timedelta(hours=7))
card_exchanges_max = 14  # a pull is injected at a random exchange up to this one
final_upload_rounds_max = 1_000
simulation_reason = "simulated service day"  # why, in the staff actions log


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    buses: int = 24
    cards: int = 300
    seed: int = 2026
    service_date: dt.date = dt.date(2026, 11, 24)
    folder: Path | None = None  # journals and sync state; a temporary folder when None
    staff_token: str = ""  # a supervisor's staff token: it registers parties and creates money
    network_loss_rate: float = 0.2  # per request, and again per answer
    power_loss_rate: float = 0.003  # per tap: the validator reboots right after it
    card_pull_rate: float = 0.03  # per tap: the card leaves at a random exchange
    top_up_rate: float = 0.15  # share of cards that get a virtual-account top-up during the day
    opening_balance_rupiah: int = 25_000
    upload_interval_s: int = 900
    progress: bool = False  # a progress bar on stderr
    cards_out: Path | None = None  # every card's final state, as a deck (for an outside audit)


@dataclass(slots=True)
class SimulationSummary:
    taps: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    cards_pulled: int = 0
    power_losses: int = 0
    uploads_acknowledged: int = 0
    uploads_lost: int = 0
    top_ups_paid: int = 0
    top_ups_delivered: int = 0
    fares_rupiah: int = 0
    cards_checked: int = 0
    cards_matching: int = 0
    cards_mismatched: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["verdicts"] = dict(self.verdicts)
        document["reasons"] = dict(self.reasons)
        return document


class Bus:
    """One validator on one bus: its key, journal, synced state and reader."""

    def __init__(
        self,
        terminal_id: str,
        route: str,
        folder: Path,
        keys: TerminalKeys,
        backoffice_url: str,
        session: aiohttp.ClientSession | None = None,
        private_key: Ed25519PrivateKey | None = None,
        *,
        now_ms: Callable[[], int],
        feed_service_end: dt.date | None = None,
        fleet_public_key: Ed25519PublicKey | None = None,
    ) -> None:
        self.now_ms = now_ms  # the clock its sync signs requests with
        self.fleet_public_key = fleet_public_key  # the back office's fleet key: takes packages
        self.feed_service_end = feed_service_end  # its fare feed's last day, reported on sync
        self.terminal_id = terminal_id
        self.route = route
        self.folder = folder / terminal_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        self.backoffice_url = backoffice_url
        self.session = session
        self.private_key = private_key or Ed25519PrivateKey.generate()
        self.reader = EmulatedReader(f"{terminal_id} reader")
        self._open()

    def _open(self) -> None:
        self.journal = Journal(self.folder / "journal.db", self.terminal_id)
        self.state = SyncState.load(self.folder)
        self.terminal = Terminal(self.terminal_id, self.journal, self.state, route=self.route)
        self.fleet = (
            None
            if self.fleet_public_key is None
            else Fleet.open(self.folder / "fleet", self.fleet_public_key)
        )
        if self.fleet is not None:
            use_key_versions(self.fleet, self.keys)
        self.sync = SyncClient(
            self.backoffice_url,
            self.terminal_id,
            self.private_key,
            self.journal,
            self.state,
            now_ms=self.now_ms,
            session=self.session,
            feed_service_end=self.feed_service_end,
            fleet=self.fleet,
        )

    def reboot(self) -> None:
        """Power lost: everything in memory is gone; the journal and saved state remain."""
        self.journal.close()
        self._open()

    def close(self) -> None:
        self.journal.close()

    def tap(
        self, card: EmulatedCard, time_ms: int, decide: Decide, pull_at: int | None = None
    ) -> Feedback:
        self.reader.insert(card)
        if pull_at is not None:
            card.fail_after_exchanges(pull_at)
        try:
            return self.terminal.tap(KshCard(self.reader, self.keys), time_ms, decide)
        finally:
            card.fail_after_exchanges(None)
            self.reader.remove()

    def deliver(self, card: EmulatedCard, time_ms: int, pull_at: int | None = None) -> Feedback:
        """As the reader of a cash counter: write the card's pending top-up, charge nothing."""
        self.reader.insert(card)
        if pull_at is not None:
            card.fail_after_exchanges(pull_at)
        try:
            return self.terminal.deliver(KshCard(self.reader, self.keys), time_ms)
        finally:
            card.fail_after_exchanges(None)
            self.reader.remove()

    async def sync_now(self) -> tuple[UploadStatus, bool]:
        uploaded = await self.sync.upload_all()
        downloaded = await self.sync.download()
        if downloaded:
            self.state.save(self.folder)
        return uploaded, downloaded


def validator_keys(store: KeyStore) -> TerminalKeys:
    """Validators debit fares and deliver pending top-ups: debit and credit keys."""
    return store.view(KeyRole.DEBIT, KeyRole.CREDIT)


@dataclass(slots=True)
class Rider:
    card: EmulatedCard
    card_number: str
    category: RiderCategory
    home_corridor: str
    trips: list[tuple[int, tuple[str, ...]]]  # (departure seconds after midnight, corridors)


def _riders(
    cards: list[EmulatedCard],
    categories: list[RiderCategory],
    generator: random.Random,
    served: tuple[str, ...],
) -> list[Rider]:
    """Commuters: a morning and an evening trip, some with a transfer, some a midday errand."""
    from card_reader.deck import first_card_number

    riders = []
    for index, (card, category) in enumerate(zip(cards, categories)):
        home = generator.choice(served)
        work = generator.choice(served)
        route = (home,) if home == work or generator.random() < 0.6 else (home, work)
        morning = generator.gauss(7 * 3600, 2700)
        evening = generator.gauss(17 * 3600, 3600)
        trips = [(int(morning), route), (int(evening), tuple(reversed(route)))]
        if generator.random() < 0.25:
            trips.append((int(generator.uniform(10, 14) * 3600), (generator.choice(served),)))
        riders.append(Rider(card, str(first_card_number + index), category, home, trips))
    return riders


@dataclass(frozen=True, slots=True)
class _Office:
    """The back office as the simulator's staff calls see it: one host, a supervisor's token."""

    session: aiohttp.ClientSession
    url: str  # the first host of `backoffice_url` (staff calls go there)
    token: str


class StaffTokenRefused(Exception):
    """The back office refused the simulator's staff token (unknown, revoked, or of a role
    that may not register parties or create money): the user's to mend."""


async def _admin(office: _Office, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with office.session.post(
        f"{office.url}{path}",
        json={"reason": simulation_reason, **body},
        headers={"Authorization": f"Bearer {office.token}"},
    ) as response:
        answer = await response.json()
        if response.status in (401, 403):
            raise StaffTokenRefused(f"{path}: {response.status} {answer.get('detail', answer)}")
        if response.status >= 300:
            raise RuntimeError(f"{path}: {response.status} {answer}")
        return dict(answer)


async def simulate_day(
    settings: SimulationSettings, backoffice_url: str, now_ms: Callable[[], int]
) -> SimulationSummary:
    """Run one service day against the back office at `backoffice_url` (staff token in
    `settings.staff_token`); returns what happened and how the cards compare with the books.

    The day in phases: riders and their cards, registration (operator, cards, buses), the
    day's taps with top-ups paid as they fall due, the night's uploads and the next morning's
    taps of cards in doubt, then every card against its purse account. One random generator
    drives it all, in that order, so a seed gives the same day."""
    from bus_terminals.fare.feed import load_feed, service_end_date
    from bus_terminals.validator import fare_decider

    started = time.perf_counter()
    generator = random.Random(settings.seed)
    summary = SimulationSummary()
    temporary = None
    folder = settings.folder
    if folder is None:
        temporary = tempfile.TemporaryDirectory(prefix="ksh-simulation-")
        folder = Path(temporary.name)
    tariff = load_feed()
    store = demo_key_store()
    keys = validator_keys(store)
    riders = _make_riders(settings, store, generator)
    # One back office URL, or several separated by commas (hosts of one back office): staff
    # calls go to the first, the buses' sync to all of them (`SyncClient`).
    url = backoffice_url.split(",")[0].rstrip("/")
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        office = _Office(session, url, settings.staff_token)
        await _register_cards(office, settings, riders)
        buses = []
        for index in range(settings.buses):
            terminal_id = f"BUS-{settings.seed % 1000:03d}-{index:03d}"
            bus = Bus(
                terminal_id,
                corridors[index % len(corridors)],
                folder,
                keys,
                backoffice_url,
                session,
                now_ms=now_ms,
                feed_service_end=service_end_date(tariff),
            )
            await _register_bus(office, settings, generator, bus)
            buses.append(bus)
        midnight = dt.datetime.combine(settings.service_date, dt.time(), wib)
        day = _Day(
            settings,
            generator,
            summary,
            office,
            riders,
            buses,
            {route: fare_decider(tariff, route) for route in corridors},
            int(midnight.timestamp() * 1000),
        )
        taps_planned = await _run_service_hours(day)
        await _night_and_next_morning(day)
        if settings.progress:
            _progress(taps_planned, taps_planned)
            print(file=sys.stderr)
        await _compare_cards_with_books(office, store, riders, summary)
        for bus in buses:
            bus.close()
    if settings.cards_out is not None:
        save_deck([rider.card for rider in riders], settings.cards_out)
    if temporary is not None:
        temporary.cleanup()
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _make_riders(
    settings: SimulationSettings, store: KeyStore, generator: random.Random
) -> list[Rider]:
    """The day's riders: categories drawn from the mix, a KSH card each, their trips."""
    from card_reader.deck import make_ksh_deck

    # Shares are our assumption (no published ridership split by category).
    mix = [RiderCategory.GENERAL] * 74 + [RiderCategory.SCHOOL_STUDENT] * 10
    mix += [RiderCategory.UNIVERSITY_STUDENT] * 5 + [RiderCategory.ELDERLY] * 5
    mix += [RiderCategory.SANTRI] * 2 + [RiderCategory.DISABLED] * 1
    mix += [RiderCategory.VETERAN] * 1 + [RiderCategory.TODDLER] * 1
    mix += [RiderCategory.KIA_HOLDER] * 1
    categories = [generator.choice(mix) for _ in range(settings.cards)]
    cards = make_ksh_deck(
        store,
        [settings.opening_balance_rupiah] * settings.cards,
        seed=f"simulation-{settings.seed}",
        rider_categories=categories,
    )
    served = corridors[: max(1, min(len(corridors), settings.buses))]
    return _riders(cards, categories, generator, served)


async def _register_cards(
    office: _Office, settings: SimulationSettings, riders: list[Rider]
) -> None:
    """The operator, and every rider's card with its opening balance and UID."""
    await _admin(office, "/admin/v1/operators", {"operator_id": operator_id})
    for rider in riders:
        await _admin(
            office,
            "/admin/v1/cards",
            {
                "card_number": rider.card_number,
                "opening_balance_rupiah": settings.opening_balance_rupiah,
                "uid": rider.card.uid.hex(),  # the back office verifies its TMACs with it
            },
        )


async def _register_bus(
    office: _Office, settings: SimulationSettings, generator: random.Random, bus: Bus
) -> None:
    """Register the bus's validator; its network loses requests and answers at random."""
    await _admin(
        office,
        "/admin/v1/terminals",
        {
            "terminal_id": bus.terminal_id,
            "public_key": public_key_text(bus.private_key.public_key()),
            "role": "validator",
            "operator_id": operator_id,
        },
    )
    bus.sync.lose_request = lambda: generator.random() < settings.network_loss_rate
    bus.sync.lose_answer = lambda: generator.random() < settings.network_loss_rate


@dataclass(frozen=True, slots=True)
class _Day:
    """What the phases of a simulated day share."""

    settings: SimulationSettings
    generator: random.Random  # the one source of randomness, drawn in a fixed order
    summary: SimulationSummary  # counted into as the day goes
    office: _Office
    riders: list[Rider]
    buses: list[Bus]
    deciders: dict[str, Decide]  # corridor -> the validators' fare decider
    midnight_ms: int  # the service day's start, UTC epoch milliseconds


class _TopUp(NamedTuple):
    second: int  # paid at this many seconds after midnight
    rider: Rider


class _PlannedTap(NamedTuple):
    second: int  # seconds after midnight
    rider_index: int
    corridor: str


def _plan_top_ups(day: _Day) -> list[_TopUp]:
    """Top-ups paid during the day at the bank, at random hours."""
    generator = day.generator
    chosen = generator.sample(day.riders, int(len(day.riders) * day.settings.top_up_rate))
    return sorted(_TopUp(int(generator.uniform(5, 20) * 3600), rider) for rider in chosen)


def _plan_taps(day: _Day) -> list[_PlannedTap]:
    """Every tap of the day in time order: legs of a trip 10 to 40 minutes apart."""
    taps: list[_PlannedTap] = []
    for rider_index, rider in enumerate(day.riders):
        for departure, legs in rider.trips:
            moment = max(5 * 3600, min(22 * 3600, departure))
            for corridor in legs:
                taps.append(_PlannedTap(moment, rider_index, corridor))
                moment += int(day.generator.uniform(600, 2400))
    taps.sort()
    return taps


async def _run_service_hours(day: _Day) -> int:
    """The day's taps in time order, with the top-ups paid before each and the buses syncing
    every `upload_interval_s`; returns how many taps were planned."""
    settings, generator, summary = day.settings, day.generator, day.summary
    by_route: dict[str, list[Bus]] = {}
    for bus in day.buses:
        by_route.setdefault(bus.route, []).append(bus)
    top_ups = _plan_top_ups(day)
    taps = _plan_taps(day)
    next_sync_s = 5 * 3600
    top_up_index = 0
    for position, (second, rider_index, corridor) in enumerate(taps):
        while top_up_index < len(top_ups) and top_ups[top_up_index].second <= second:
            await _pay_top_up(day, top_up_index, top_ups[top_up_index])
            top_up_index += 1
        if second >= next_sync_s:
            for bus in day.buses:
                await _sync(bus, summary)
            next_sync_s = second + settings.upload_interval_s
        rider = day.riders[rider_index]
        bus = generator.choice(by_route[corridor])
        time_ms = day.midnight_ms + second * 1000 + position % 1000
        pull_at = None
        if generator.random() < settings.card_pull_rate:
            pull_at = generator.randint(1, card_exchanges_max)
            summary.cards_pulled += 1
        feedback = bus.tap(rider.card, time_ms, day.deciders[corridor], pull_at)
        _count(summary, feedback)
        if generator.random() < settings.power_loss_rate:
            bus.reboot()
            summary.power_losses += 1
        if feedback.verdict == Verdict.tap_again:
            # The rider taps again at once; the card's log settles the first attempt.
            feedback = bus.tap(rider.card, time_ms + 2_000, day.deciders[corridor])
            _count(summary, feedback)
        if settings.progress and position % 50 == 0:
            _progress(position + 1, len(taps))
    return len(taps)


async def _pay_top_up(day: _Day, index: int, top_up: _TopUp) -> None:
    """The bank pays a virtual-account top-up: the back office holds it for the card."""
    await _admin(
        day.office,
        "/admin/v1/pending-top-ups",
        {
            "top_up_id": f"VA-{day.settings.seed}-{index}",
            "card_number": top_up.rider.card_number,
            "amount_rupiah": 50_000,
            "source": "va-bank",
            "paid_at_ms": day.midnight_ms + top_up.second * 1000,
        },
    )
    day.summary.top_ups_paid += 1


async def _night_and_next_morning(day: _Day) -> None:
    """Night: every bus reaches the depot network (no more losses) and uploads everything.
    Next morning: cards with a transaction still in doubt tap once more, and the buses sync."""
    buses, summary = day.buses, day.summary
    for bus in buses:
        bus.sync.lose_request = lambda: False
        bus.sync.lose_answer = lambda: False
        await _sync(bus, summary)
    morning_ms = day.midnight_ms + 86_400_000 + 6 * 3_600_000
    unsettled = {
        record.card_number
        for bus in buses
        for record, state in bus.journal.records()
        if state.value == "in_doubt"
    }
    for offset, rider in enumerate(r for r in day.riders if r.card_number in unsettled):
        bus = buses[offset % len(buses)]
        _count(summary, bus.tap(rider.card, morning_ms + offset * 1000, day.deciders[bus.route]))
    for bus in buses:
        await _sync(bus, summary)


async def _compare_cards_with_books(
    office: _Office, store: KeyStore, riders: list[Rider], summary: SimulationSummary
) -> None:
    """The books against the cards themselves: each card's balance, read from the card, and
    its purse account in the back office."""
    for rider in riders:
        reader = EmulatedReader("inspection")
        reader.insert(rider.card)
        balance = KshCard(reader, store.view(KeyRole.READ)).read_state().balance_rupiah
        reader.remove()
        async with office.session.get(
            f"{office.url}/admin/v1/cards/{rider.card_number}",
            headers={"Authorization": f"Bearer {office.token}"},
        ) as response:
            view = await response.json()
        summary.cards_checked += 1
        if view["purse_balance_rupiah"] == balance:
            summary.cards_matching += 1
        else:
            summary.cards_mismatched.append(rider.card_number)


async def _sync(bus: Bus, summary: SimulationSummary) -> None:
    for _ in range(final_upload_rounds_max):
        status = await bus.sync.upload_once()
        if status == UploadStatus.acknowledged:
            summary.uploads_acknowledged += 1
            continue
        if status == UploadStatus.offline:
            summary.uploads_lost += 1
        break
    if await bus.sync.download():
        bus.state.save(bus.folder)


def _count(summary: SimulationSummary, feedback: Feedback) -> None:
    summary.taps += 1
    summary.verdicts[feedback.verdict.value] += 1
    summary.reasons[feedback.reason.value] += 1
    if feedback.verdict == Verdict.accepted:
        summary.fares_rupiah += feedback.amount_rupiah
        if feedback.top_up_rupiah:
            summary.top_ups_delivered += 1


def _progress(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    print(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} taps", end="", file=sys.stderr
    )


def timed_validator_taps(folder: Path, samples: int) -> list[float]:
    """Milliseconds of whole validator taps (read, fare, journal fsync, debit, commit) on an
    in-process emulated card; no back office needed."""
    from bus_terminals.fare.feed import load_feed
    from bus_terminals.validator import fare_decider
    from card_reader.deck import make_ksh_deck

    store = demo_key_store()
    cards = make_ksh_deck(store, [1_000_000] * 20, seed="bench")
    start_ms = int(dt.datetime(2026, 11, 24, 7, tzinfo=wib).timestamp() * 1000)
    bus = Bus(  # never syncs: no back office behind the address
        "BENCH-BUS",
        "K1",
        folder,
        validator_keys(store),
        "http://127.0.0.1:9",
        now_ms=lambda: start_ms,
    )
    decide = fare_decider(load_feed(), "K1")
    durations = []
    for index in range(samples):
        card = cards[index % len(cards)]
        began = time.perf_counter()
        feedback = bus.tap(card, start_ms + index * 97_000, decide)
        durations.append((time.perf_counter() - began) * 1000)
        assert feedback.verdict == Verdict.accepted, feedback
    bus.close()
    return durations


def run_simulation(
    settings: SimulationSettings, backoffice_url: str, now_ms: Callable[[], int]
) -> SimulationSummary:
    return asyncio.run(simulate_day(settings, backoffice_url, now_ms))
