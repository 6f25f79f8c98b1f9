"""A scripted reader for transcript tests: it fails on the first unexpected command."""

from __future__ import annotations

from card_reader.port import CardError


class ScriptedReader:
    """`ReaderPort` that expects exactly the given (command hex, response hex) exchanges."""

    def __init__(self, exchanges: list[tuple[str, str]]) -> None:
        self.script = [
            (bytes.fromhex(c.replace(" ", "")), bytes.fromhex(r.replace(" ", "")))
            for c, r in exchanges
        ]
        self.position = 0

    @property
    def name(self) -> str:
        return "Scripted reader"

    def card_present(self) -> bool:
        return True

    def wait_for_card(self, timeout_ms: int) -> bool:
        return True

    def wait_for_removal(self, timeout_ms: int) -> bool:
        return True

    def atr(self) -> bytes:
        return bytes.fromhex("3B8180018080")

    def transmit(self, command: bytes) -> bytes:
        if self.position >= len(self.script):
            raise AssertionError(f"unexpected extra command {command.hex().upper()}")
        expected, response = self.script[self.position]
        if command != expected:
            raise AssertionError(
                f"exchange {self.position}: expected {expected.hex().upper()}, got {command.hex().upper()}"
            )
        self.position += 1
        return response

    def assert_done(self) -> None:
        assert self.position == len(self.script), (
            f"only {self.position}/{len(self.script)} exchanges ran"
        )


def fixed_random(*chunks: str):
    """random_bytes that hands out the given hex chunks in order (and checks the sizes)."""
    queue = [bytes.fromhex(chunk) for chunk in chunks]

    def random_bytes(size: int) -> bytes:
        value = queue.pop(0)
        assert len(value) == size, (len(value), size)
        return value

    return random_bytes


__all__ = ["CardError", "ScriptedReader", "fixed_random"]
