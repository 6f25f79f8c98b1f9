"""Waiting in tests: every wait has a deadline and, past it, fails saying what it waited for.

- `wait_until(condition, what)`: call `condition()` until it returns something true;
- `await wait_until_async(condition, what)`: the same inside a coroutine (`condition` may be a
  coroutine function); a check that hangs (a query stuck on a lock) counts against the deadline;
- `await wait_until_blocked(watcher, session, task, what)`: until `task` is done or the
  PostgreSQL session it runs on waits on a lock (seen from another connection, `watcher`);
- `next_line(stream, what)`: the next line a child process prints, or a failure if it prints
  none in time (a plain `readline()` on a pipe waits forever for a child that hangs).

A sleep between two checks is fine; a sleep that hopes something has happened meanwhile is
not: wait for the thing itself. (The monotonic clock stays real under CI's faketime runs.)
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import Callable
from typing import IO, Any


def gave_up(within_s: float, what: str) -> AssertionError:
    return AssertionError(f"gave up after {within_s:g} s waiting until {what}")


def wait_until(
    condition: Callable[[], object], what: str, *, within_s: float = 10.0, every_s: float = 0.01
) -> None:
    """Return once `condition()` is true (checked every `every_s`); raise AssertionError
    naming `what` once `within_s` seconds have passed without it."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() >= deadline:
            raise gave_up(within_s, what)
        time.sleep(every_s)


async def wait_until_async(
    condition: Callable[[], object], what: str, *, within_s: float = 10.0, every_s: float = 0.01
) -> None:
    """`wait_until` for coroutines: `condition()` may return an awaitable (a coroutine
    function's call), which is awaited; the deadline also bounds a check that hangs."""
    deadline = asyncio.timeout(within_s)
    try:
        async with deadline:
            while True:
                done = condition()
                if inspect.isawaitable(done):
                    done = await done
                if done:
                    return
                await asyncio.sleep(every_s)
    except TimeoutError:
        if not deadline.expired():
            raise  # raised by the check itself, not the deadline
        raise gave_up(within_s, what) from None


async def wait_until_blocked(
    watcher: Any, session: Any, task: asyncio.Future[Any], what: str
) -> None:
    """Return once `task` is done or `session` (an asyncpg connection) waits on a lock, as the
    server's `pg_stat_activity` shows to `watcher` (another connection)."""

    async def done_or_waiting() -> bool:
        return task.done() or bool(
            await watcher.fetchval(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and pid = $1",
                session.get_server_pid(),
            )
        )

    await wait_until_async(done_or_waiting, what)


def next_line(stream: IO[str], what: str, *, within_s: float = 30.0) -> str:
    """The next line of `stream` (a child's pipe; "" at its end); AssertionError naming `what`
    after `within_s` seconds without one. (The line is read by a thread of its own; after a
    failure it ends once the child is killed and the pipe closes.)"""
    lines: queue.Queue[str] = queue.Queue(maxsize=1)
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=within_s)
    except queue.Empty:
        raise gave_up(within_s, what) from None
