"""Replace a file atomically and durably: the new content is on disk before it takes the old
one's name, and the rename itself is on disk before we return. Used for the key store and for
decks of software cards (a deck holds the cards' committed state and their keys)."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, content: bytes, *, mode: int = 0o600) -> None:
    """Write `content` to `path`, which is private (`mode`) from its creation on."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(descriptor, mode)  # a temporary file left by a crash keeps its old mode
        file.write(content)
        file.flush()
        os.fsync(descriptor)
    temporary.replace(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
