"""A terminal's QRIS sale: ask the back office for a dynamic code (`POST /terminal/v1/qris/orders`,
signed with the terminal's key), show it, and ask until it is paid or expired. A POS does it for
a sale (`Till`); a bus validator sells a ride to a rider without a card (`QrisRides`, on a thread
of its own, so the next card tap never waits). The code is drawn with `segno` (pure Python, no
dependencies): as text for a terminal's screen, or as a PNG or SVG for a customer-facing one.

What the till shows is read back from the code itself (`bus_terminals.qris.read`): the amount
the rider's app will ask for and the merchant it will pay, never only what an answer claimed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import segno
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals import qris
from bus_terminals.journal import Journal
from bus_terminals.wire import signed_request_headers

orders_path = "/terminal/v1/qris/orders"
finished_states = ("paid", "expired")


class TillError(Exception):
    """The back office refused or did not answer: its code and sentence."""


@dataclass(frozen=True, slots=True)
class QrisSale:
    order_id: str
    amount_rupiah: int
    merchant_name: str
    qr_content: str
    expires_at: str
    state: str
    paid_at: str | None

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> QrisSale:
        try:
            content = str(answer["qr_content"])
            code = qris.read(content)
        except (KeyError, qris.QrisError) as error:
            raise TillError(f"the back office sent no valid QRIS code: {error}") from error
        if code.amount_rupiah != answer.get("amount"):
            raise TillError("the code is for another amount than the sale")
        return cls(
            order_id=str(answer["order_id"]),
            amount_rupiah=code.amount_rupiah or 0,
            merchant_name=code.merchant.name,
            qr_content=content,
            expires_at=str(answer.get("expires_at")),
            state=str(answer.get("state")),
            paid_at=answer.get("paid_at"),
        )


class Till:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        backoffice_url: str,
        terminal_id: str,
        private_key: Ed25519PrivateKey,
        now_ms: Callable[[], int],
    ) -> None:
        self.http = http
        self.backoffice_url = backoffice_url.rstrip("/")
        self.terminal_id = terminal_id
        self.private_key = private_key
        self.now_ms = now_ms

    async def _call(self, method: str, path_qs: str) -> dict[str, Any]:
        headers = signed_request_headers(
            self.private_key, self.terminal_id, method, path_qs, self.now_ms()
        )
        try:
            async with self.http.request(
                method, self.backoffice_url + path_qs, headers=headers
            ) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise TillError(f"the back office did not answer: {error!r}") from error
        if response.status != 200:
            raise TillError(f"{answer.get('code', response.status)}: {answer.get('detail', '')}")
        return dict(answer)

    async def sell(self, sale_number: int, amount_rupiah: int, detail: str = "") -> QrisSale:
        query = f"sale={sale_number}&amount={amount_rupiah}"
        if detail:
            query += "&" + urlencode({"detail": detail})
        return QrisSale.from_answer(await self._call("POST", f"{orders_path}?{query}"))

    async def status(self, order_id: str) -> QrisSale:
        return QrisSale.from_answer(await self._call("GET", f"{orders_path}/{order_id}"))


def qr_text(content: str) -> str:
    """The code as text a terminal can show (two rows per line)."""
    buffer = io.StringIO()
    segno.make(content, error="m").terminal(out=buffer, compact=True)
    return buffer.getvalue()


def save_qr_image(content: str, path: Path) -> None:
    """The code as PNG or SVG (by the file's suffix), large enough to scan from a screen."""
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"{path}: a QR image is .png or .svg")
    segno.make(content, error="m").save(str(path), scale=8, border=4)


class QrisRides:
    """Rides sold by QRIS on a bus validator, beside its card taps: `sell` returns at once and
    the sale goes on on this object's own thread and event loop (ask the back office for the
    code, show it through `show`, ask until paid or expired), each step in the journal's
    `qris_rides` first. A back office out of reach fails the ride (`failed`); the rider pays
    some other way and no money moved."""

    def __init__(
        self,
        journal_path: Path,
        terminal_id: str,
        backoffice_url: str,
        private_key: Ed25519PrivateKey,
        now_ms: Callable[[], int],
        show: Callable[[dict[str, Any]], None],
        *,
        poll_interval_s: float = 2.0,
        wait_s: float = 330.0,
    ) -> None:
        self.journal = Journal(journal_path, terminal_id, recover=False)
        self.terminal_id = terminal_id
        self.backoffice_url = backoffice_url
        self.private_key = private_key
        self.now_ms = now_ms
        self.show = show
        self.poll_interval_s = poll_interval_s
        self.wait_s = wait_s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="qris", daemon=True)
        self.http: aiohttp.ClientSession | None = None

    def __enter__(self) -> QrisRides:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        async def close() -> None:
            if self.http is not None:
                await self.http.close()
            self.journal.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():  # closed here, not by the garbage collector later
            self.loop.close()

    def sell(
        self, amount_rupiah: int, route: str, detail: str
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Start selling one ride; the future ends with the ride as the journal has it."""
        return asyncio.run_coroutine_threadsafe(self._sell(amount_rupiah, route, detail), self.loop)

    async def _sell(self, amount_rupiah: int, route: str, fare_detail: str) -> dict[str, Any]:
        # Every journal call is on this thread: the connection is this thread's alone.
        sale = self.journal.intend_qris_ride(self.now_ms(), route, amount_rupiah, fare_detail)
        detail = f"{route} {fare_detail}".strip()
        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        till = Till(self.http, self.backoffice_url, self.terminal_id, self.private_key, self.now_ms)
        try:
            shown = await till.sell(sale, amount_rupiah, detail)
        except TillError as error:
            self.journal.update_qris_ride(sale, "failed")
            ride = {"qris_ride": sale, "state": "failed", "error": str(error)}
            self.show(ride)
            return ride
        self.journal.update_qris_ride(sale, "open", shown.order_id, shown.qr_content)
        self.show({"qris_ride": sale, "state": "open", "amount": amount_rupiah,
                   "order_id": shown.order_id, "qr_content": shown.qr_content})  # fmt: skip
        current = shown
        waited = 0.0
        while current.state not in finished_states and waited < self.wait_s:
            await asyncio.sleep(self.poll_interval_s)  # asking the back office, not syncing
            waited += self.poll_interval_s
            try:
                current = await till.status(shown.order_id)
            except TillError:
                continue  # out of reach for a moment: ask again
        state = current.state if current.state in finished_states else "expired"
        self.journal.update_qris_ride(sale, state)
        ride = {"qris_ride": sale, "state": state, "amount": amount_rupiah,
                "order_id": shown.order_id}  # fmt: skip
        self.show(ride)
        return ride
