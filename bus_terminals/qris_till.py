"""A POS's QRIS sale: ask the back office for a dynamic code (`POST /terminal/v1/qris/orders`,
signed with the terminal's key), show it, and ask until it is paid or expired. The code is
drawn with `segno` (pure Python, no dependencies): as text for a cashier's terminal, or as a PNG
or SVG for a customer-facing screen.

What the till shows is read back from the code itself (`bus_terminals.qris.read`): the amount
the rider's app will ask for and the merchant it will pay, never only what an answer claimed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import segno
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals import qris
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

    async def sell(self, sale_number: int, amount_rupiah: int) -> QrisSale:
        answer = await self._call(
            "POST", f"{orders_path}?sale={sale_number}&amount={amount_rupiah}"
        )
        return QrisSale.from_answer(answer)

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
