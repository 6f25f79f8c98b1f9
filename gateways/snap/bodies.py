"""Reading a whole HTTP body, up to a limit.

`StreamReader.read(n)` returns as soon as *some* bytes are there, so a body that arrives in
more than one TCP segment would be cut short: its signature would not verify, or its JSON
would not parse. This reads to the end of the body, and stops as soon as it passes the limit.
"""

from __future__ import annotations

import aiohttp


async def read_whole(stream: aiohttp.StreamReader, bytes_max: int) -> bytes | None:
    """The body's bytes, or None when it is longer than `bytes_max`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > bytes_max:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
