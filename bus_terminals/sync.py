"""Talking to the back office: signed uploads of the journal, downloads of what taps need.

Upload: the next batch is built from the journal, signed, and *stored* (exact bytes and
signature) before the first send; every retry sends those same bytes, so the back office books
it once and answers `exists` to a repeat. Only an acknowledgement moves the journal on.
Download: deny list (cards added and lifted since our version, or the whole binary list), the
chip-block list beside it (the denied cards a tap blocks on the card itself: staff blocks of a
lost, stolen or damaged card, kept in the same way with its own version), the pending top-ups
waiting for cards and the passes granted to them, tariff and key versions; kept in a `SyncState` the tap flow reads, and saved
beside the journal so a validator that boots offline still has them. With a `Fleet`, each sync
also reports the fleet packages the terminal runs, has staged and refused, and takes the newer
ones the back office offers (`bus_terminals.fleet`: verified, staged, switched at their time).

The bus is offline for hours or days: every call has a timeout, failures back off
exponentially up to `backoff_ms_max`, and nothing is lost while it waits.

The back office may run on several hosts: `SyncClient` takes one URL or a list, sends to the
one that answered last, and on a connection failure (refused, reset, timed out) tries the next
at once. Any of them books a batch once (the batch sequence is the key), so a batch whose
answer was lost with a host is simply sent again to another.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import enum
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.deny_list import DenyList
from bus_terminals.fare.feed import service_end_date
from bus_terminals.fleet import Fleet
from bus_terminals.journal import Journal, batch_records_max
from bus_terminals.packages import PackageKind, deny_list_numbers
from bus_terminals.wire import (
    UploadBatch,
    WaitingPass,
    content_type,
    deny_list_version_header,
    encode_batch,
    sign,
    signature_header,
    signed_request_headers,
    terminal_header,
)
from card_reader.durable import replace_file

logger = logging.getLogger("ksh.sync")

request_timeout_ms = 15_000
backoff_ms_initial = 500
backoff_ms_max = 300_000
batches_per_round_max = 100  # then yield: downloads must not starve behind a long backlog
pending_top_ups_held_max = 100_000
packages_offered_max = 16  # fleet packages taken from one sync answer
prune_every_batches = 50  # acknowledged records beyond the journal's keep window go then


class UploadStatus(enum.Enum):
    acknowledged = "acknowledged"
    nothing_to_send = "nothing_to_send"
    refused = "refused"  # the back office refused the batch: needs a person (logged)
    offline = "offline"  # network or server trouble: try again later


@dataclass(slots=True)
class SyncState:
    """What the tap flow needs from the back office, as last downloaded."""

    deny_list: DenyList = field(default_factory=DenyList)
    # Denied cards whose denial is final for the plastic: a tap writes "blocked" onto the card
    # (`bus_terminals.terminal`), which then refuses itself at terminals not yet synced.
    chip_block_list: DenyList = field(default_factory=DenyList)
    # card number -> [(top-up id, amount, paid at in Unix ms)], oldest first
    pending_top_ups: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    # card number -> the passes waiting for it, oldest first
    pending_passes: dict[str, list[WaitingPass]] = field(default_factory=dict)
    tariff_version: str = ""
    key_versions: dict[str, Any] = field(default_factory=dict)
    synced_at_ms: int = 0

    def top_ups_for(self, card_number: str) -> list[tuple[str, int, int]]:
        return self.pending_top_ups.get(card_number, [])

    def passes_for(self, card_number: str) -> list[WaitingPass]:
        return self.pending_passes.get(card_number, [])

    def save(self, folder: Path) -> None:
        self.deny_list.save(folder / "deny-list.bin")
        self.chip_block_list.save(folder / "chip-block-list.bin")
        state = {
            "pending_top_ups": self.pending_top_ups,
            "pending_passes": self.pending_passes,
            "tariff_version": self.tariff_version,
            "key_versions": self.key_versions,
            "synced_at_ms": self.synced_at_ms,
        }
        replace_file(folder / "sync-state.json", json.dumps(state).encode())

    @classmethod
    def load(cls, folder: Path) -> SyncState:
        state = cls(
            deny_list=DenyList.load(folder / "deny-list.bin"),
            # Absent from a state saved before the chip-block list: empty at version 0, so
            # the next sync asks for the whole of it.
            chip_block_list=DenyList.load(folder / "chip-block-list.bin"),
        )
        path = folder / "sync-state.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                state.pending_top_ups = {
                    card: [(top_up_id, amount, paid_ms) for top_up_id, amount, paid_ms in top_ups]
                    for card, top_ups in saved["pending_top_ups"].items()
                }
                state.pending_passes = {  # absent from a state saved before passes
                    card: [WaitingPass(*held) for held in sold]  # 3 fields before carried passes
                    for card, sold in saved.get("pending_passes", {}).items()
                }
                state.tariff_version = saved["tariff_version"]
                state.key_versions = saved["key_versions"]
                state.synced_at_ms = saved["synced_at_ms"]
            except (KeyError, TypeError, ValueError) as error:  # (JSON errors are ValueErrors)
                raise ValueError(f"{path}: damaged sync state ({error!r})") from error
        return state


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, read whole."""

    status: int
    body: bytes
    headers: Mapping[str, str]


class SyncClient:
    def __init__(
        self,
        base_url: str | Sequence[str],
        terminal_id: str,
        private_key: Ed25519PrivateKey,
        journal: Journal,
        state: SyncState,
        *,
        now_ms: Callable[[], int],
        session: aiohttp.ClientSession | None = None,
        records_per_batch: int = batch_records_max,
        feed_service_end: dt.date | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.now_ms = now_ms  # the terminal's clock (Unix ms): signs each download request
        # A validator's fare feed: its last service day, reported on each download (inside the
        # signed path) so the back office can show the days left on every bus's feed.
        self.feed_service_end = feed_service_end
        # One URL, several separated by commas (`--backoffice URL1,URL2`), or a sequence.
        urls = base_url.split(",") if isinstance(base_url, str) else list(base_url)
        assert urls, "at least one back office URL"
        self.base_urls = tuple(url.rstrip("/") for url in urls)
        self._current = 0  # the back office that answered last
        self.terminal_id = terminal_id
        self.private_key = private_key
        self.journal = journal
        self.state = state
        self.records_per_batch = records_per_batch
        self._session = session
        self._own_session = session is None
        self.failures = 0
        # Fault injection for simulations and tests: a request lost on the way (nothing reaches
        # the back office), or an answer lost on the way back (the back office has the batch).
        self.lose_request: Callable[[], bool] = lambda: False
        self.lose_answer: Callable[[], bool] = lambda: False
        # Packages the back office publishes; None: this terminal takes none (no fleet key).
        self.fleet = fleet
        if fleet is not None:
            fleet.apply_with(PackageKind.deny_list, self._apply_deny_list)

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=request_timeout_ms / 1000)
            )
        return self._session

    @property
    def base_url(self) -> str:
        """The back office requests go to now (the first, until it fails to connect)."""
        return self.base_urls[self._current]

    async def _send(
        self, method: str, path: str, headers: Mapping[str, str], data: bytes | None = None
    ) -> Answer:
        """The request to the current back office; on a connection failure to the next one,
        each tried once. Raises the last failure when none answered."""
        session = await self.session()
        failure: BaseException | None = None
        for _ in range(len(self.base_urls)):
            try:
                async with session.request(
                    method, self.base_url + path, data=data, headers=headers
                ) as response:
                    return Answer(response.status, await response.read(), response.headers)
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                failure = error
                if len(self.base_urls) > 1:
                    logger.info("back office %s unreachable (%r): next", self.base_url, error)
                self._current = (self._current + 1) % len(self.base_urls)
        assert failure is not None
        raise failure

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    # ------------------------------------------------------------------ upload

    async def upload_once(self) -> UploadStatus:
        """Send the stored batch, or build, store and send the next one."""
        pending = self.journal.pending_batch()
        if pending is None:
            records = self.journal.records_to_upload(self._setting("records_per_batch"))
            if not records:
                return UploadStatus.nothing_to_send
            batch_sequence = self.journal.next_batch_sequence()
            body = encode_batch(UploadBatch(self.terminal_id, batch_sequence, tuple(records)))
            signature = sign(self.private_key, body)
            self.journal.store_batch(batch_sequence, records, body, signature)
            pending = self.journal.pending_batch()
            assert pending is not None
        if self.lose_request():
            return UploadStatus.offline
        try:
            sent = await self._send(
                "POST",
                "/terminal/v1/uploads",
                {
                    terminal_header: self.terminal_id,
                    signature_header: pending.signature,
                    "Content-Type": content_type,
                },
                pending.body,
            )
            status = sent.status
            answer = json.loads(sent.body)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as error:
            logger.info("upload of batch %d failed: %s", pending.batch_sequence, error)
            return UploadStatus.offline
        if self.lose_answer():
            return UploadStatus.offline
        if status == 200:
            statuses = {int(sequence): str(state) for sequence, state in answer["records"]}
            self.journal.acknowledge_batch(pending.batch_sequence, statuses)
            if pending.batch_sequence % prune_every_batches == 0:
                self.journal.prune()
            return UploadStatus.acknowledged
        if status >= 500:
            return UploadStatus.offline
        logger.error("back office refused batch %d: %s", pending.batch_sequence, answer)
        return UploadStatus.refused

    async def upload_all(self, batches_max: int = batches_per_round_max) -> UploadStatus:
        status = UploadStatus.nothing_to_send
        for _ in range(batches_max):
            status = await self.upload_once()
            if status != UploadStatus.acknowledged:
                break
        return status

    # ------------------------------------------------------------------ download

    def _signed_headers(self, method: str, path_qs: str) -> dict[str, str]:
        return signed_request_headers(
            self.private_key, self.terminal_id, method, path_qs, self.now_ms()
        )

    async def download(self) -> bool:
        """Refresh deny list, pending top-ups and versions, take new fleet packages; False when
        offline."""
        path = (
            f"/terminal/v1/sync?deny_since={self.state.deny_list.version}"
            f"&chip_block_since={self.state.chip_block_list.version}"
        )
        feed_service_end = self.feed_service_end
        if self.fleet is not None:
            self.fleet.switch_due(self.now_ms())
            path += self.fleet.report_query()
            tariff = self.fleet.tariff()
            if tariff is not None:
                feed_service_end = service_end_date(tariff)
        if feed_service_end is not None:
            path += f"&feed_service_end={feed_service_end:%Y%m%d}"
        try:
            sent = await self._send("GET", path, self._signed_headers("GET", path))
            if sent.status != 200:
                logger.warning("sync refused: %s", sent.body[:1000].decode(errors="replace"))
                return False
            answer = json.loads(sent.body)
            denied = await self._refreshed(
                self.state.deny_list, answer, "deny_list", "/terminal/v1/deny-list"
            )
            if denied is None:
                return False
            self.state.deny_list = denied
            if "chip_block_version" in answer:  # absent from an older back office's answer
                blocks = await self._refreshed(
                    self.state.chip_block_list, answer, "chip_block", "/terminal/v1/chip-block-list"
                )
                if blocks is None:
                    return False
                self.state.chip_block_list = blocks
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, KeyError) as error:
            logger.info("sync failed: %s", error)
            return False
        top_ups: dict[str, list[tuple[str, int, int]]] = {}
        for top_up_id, card_number, amount, paid_ms in answer["pending_top_ups"][
            :pending_top_ups_held_max
        ]:
            top_ups.setdefault(card_number, []).append((top_up_id, amount, paid_ms))
        self.state.pending_top_ups = top_ups
        passes: dict[str, list[WaitingPass]] = {}
        # Both absent from an older back office's answer; a carried pass has the moment it runs
        # from as a fifth field.
        sold = [*answer.get("pending_passes", []), *answer.get("carried_passes", [])]
        for sale_id, card_number, pass_id, sold_ms, *carried in sold[:pending_top_ups_held_max]:
            held = WaitingPass(sale_id, pass_id, sold_ms, *carried[:1])
            passes.setdefault(card_number, []).append(held)
        self.state.pending_passes = passes
        self.state.tariff_version = answer["tariff_version"]
        self.state.key_versions = answer["key_versions"]
        self.state.synced_at_ms = answer["server_time_ms"]
        if self.fleet is not None:
            await self._take_packages(answer.get("packages", []))
            self.fleet.switch_due(self.now_ms())
        return True

    async def _refreshed(
        self, held: DenyList, answer: dict[str, Any], prefix: str, list_path: str
    ) -> DenyList | None:
        """A card list (the deny list, `prefix` "deny_list"; the chip-block list, "chip_block")
        brought up to the answer's version: its delta applied to `held`, or the whole list
        downloaded from `list_path` when the answer says so (None: that download failed)."""
        if answer[f"{prefix}_full_download"]:
            listed = await self._send("GET", list_path, self._signed_headers("GET", list_path))
            if listed.status != 200:
                return None
            return DenyList.from_bytes(listed.body, int(listed.headers[deny_list_version_header]))
        held.add(answer[f"{prefix}_added"], answer[f"{prefix}_version"])
        # Lifted by staff since our version (absent from an older back office's answer).
        held.remove(answer.get(f"{prefix}_lifted", ()))
        return held

    async def _take_packages(self, offers: list[dict[str, Any]]) -> None:
        """Fetch, check and stage each offered package this terminal wants (a refusal is kept
        for the next sync's report; a fetch that fails is tried again next round)."""
        assert self.fleet is not None
        for offer in offers[:packages_offered_max]:
            try:
                kind, version = PackageKind(offer["kind"]), int(offer["version"])
                raw, signature = base64.b64decode(offer["manifest"]), str(offer["signature"])
            except (KeyError, ValueError, TypeError) as error:
                logger.warning("a package offer unreadable: %r", error)
                continue
            if not self.fleet.wants(kind, version):
                continue
            signed = self.fleet.check_offer(kind, version, raw, signature)
            if signed is None:
                continue
            path = f"/terminal/v1/packages/{kind.value}/{version}"
            try:
                sent = await self._send("GET", path, self._signed_headers("GET", path))
            except (aiohttp.ClientError, TimeoutError) as error:
                logger.info("package %s %d not fetched: %s", kind.value, version, error)
                return
            if sent.status != 200:
                logger.warning("package %s %d not fetched: %d", kind.value, version, sent.status)
                continue
            self.fleet.stage(signed, sent.body)

    def _apply_deny_list(self, content: bytes) -> None:
        """A deny-list package is the whole list as of its version (a change id of the back
        office's deny list): it replaces the terminal's list when it is at least as new, and the
        deltas go on from it. An older one is ignored: the deltas since carried newer additions
        and lifts, and a card staff lifted must not come back. The chip-block list likewise
        (a package from before it carries none: the list stays)."""
        version, denied, chip_blocked = deny_list_numbers(content)
        if version >= self.state.deny_list.version:
            self.state.deny_list = DenyList(denied, version)
        if chip_blocked is not None and version >= self.state.chip_block_list.version:
            self.state.chip_block_list = DenyList(chip_blocked, version)

    def _interval_ms(self, own_ms: int) -> int:
        """The running settings package's sync interval, else the terminal's own."""
        settings = self.fleet.settings() if self.fleet is not None else {}
        return settings["sync_interval_s"] * 1000 if "sync_interval_s" in settings else own_ms

    def _setting(self, name: str) -> int:
        """A terminal setting from the running settings package, else this client's own."""
        defaults = {"records_per_batch": self.records_per_batch}
        settings = self.fleet.settings() if self.fleet is not None else {}
        return settings.get(name, defaults[name])

    # ------------------------------------------------------------------ the loop

    async def run(
        self, interval_ms: int, stop: asyncio.Event, state_folder: Path | None = None
    ) -> None:
        """Upload and download every `interval_ms` until `stop`; back off while offline."""
        while not stop.is_set():
            try:
                uploaded = await self.upload_all()
                downloaded = await self.download()
                if downloaded and state_folder is not None:
                    self.state.save(state_folder)
            except Exception:
                # A back office answering nonsense must not stop the bus from syncing later.
                logger.exception("sync round failed")
                uploaded, downloaded = UploadStatus.offline, False
            if uploaded == UploadStatus.offline or not downloaded:
                self.failures += 1
            else:
                self.failures = 0
            await _wait(stop, self.delay_ms(self._interval_ms(interval_ms)) / 1000)
        await self.upload_all()  # shutting down: one last try, so the journal leaves the bus

    def delay_ms(self, interval_ms: int) -> float:
        if not self.failures:
            return interval_ms
        backoff = min(backoff_ms_max, backoff_ms_initial * 2 ** min(self.failures, 20))
        return backoff * (0.5 + random.random() / 2)  # jitter: a depot of buses does not stampede


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A terminal's key: 32 raw bytes, base64 in a file (created by `ksh validator --init`)."""
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(path.read_text().strip()))


def save_new_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    replace_file(path, (base64.b64encode(raw).decode() + "\n").encode())  # private from the start
    return key
