"""Stopping cleanly on SIGINT and SIGTERM, however the process was started.

A process started in the background by a non-interactive shell inherits SIGINT as *ignored*,
and Python then installs no Ctrl-C handler of its own; SIGTERM's default action ends the
process at once, skipping its `finally` blocks (a deck card not saved, child processes left
running). So every command that runs until stopped installs handlers for both signals
explicitly, here, and the handlers do nothing but record the signal:

- synchronous loops run inside `stop_on_signals()` and look at `Stop.requested` between units
  of work (a tap, a slice of a wait), or wait with `Stop.wait`;
- asyncio code runs under `run`, whose handlers (`loop.add_signal_handler`) wake the loop and
  cancel the main task, so its `finally` blocks and context managers run.

A repeated signal while the command winds down is recorded once and otherwise ignored: the
clean-up it is waiting for finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

stop_signal_numbers = (signal.SIGINT, signal.SIGTERM)
# Python runs a handler in the main thread, when that thread next runs Python code; Linux
# delivers a process's signals to its main thread first, which interrupts a blocking call there,
# but waits here are sliced anyway so that a signal taken by another thread is seen this soon.
wait_slice_s = 0.2


class Stopped(KeyboardInterrupt):
    """A stop signal ended the work: unwinds like Ctrl-C (`ksh` reports it and exits 130)."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class Stop:
    """Whether a stop signal arrived (and which). Set only by a signal handler."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def record(self, signal_number: int, frame: object = None) -> None:
        """The signal handler: notes the first signal, nothing else (no locks, no I/O)."""
        if self.signal_number is None:
            self.signal_number = signal_number

    def check(self) -> None:
        """Raise `Stopped` once a stop was requested: for finite work, between its steps."""
        if self.signal_number is not None:
            raise Stopped(self.signal_number)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Sleep until a stop is requested (True) or `timeout_s` passes (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.requested:
            slice_s = wait_slice_s
            if deadline is not None:
                slice_s = min(slice_s, deadline - time.monotonic())
                if slice_s <= 0:
                    return False
            time.sleep(slice_s)
        return True

    def when_requested(self, action: Callable[[], object]) -> None:
        """Run `action` in a daemon thread once a stop is requested: for a loop in the main
        thread that only a call from another thread ends (a handler must not take its locks)."""

        def watch() -> None:
            self.wait()
            action()

        threading.Thread(target=watch, name="stop-on-signal", daemon=True).start()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """SIGINT and SIGTERM record themselves in the `Stop` yielded, instead of what they did
    before (ignored, KeyboardInterrupt, or the end of the process); the previous handlers are
    back when the block ends. Main thread only, as every signal handler."""
    stop = Stop()
    previous = {number: signal.signal(number, stop.record) for number in stop_signal_numbers}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def run(main: Coroutine[Any, Any, T], stop: Stop | None = None) -> T:
    """`asyncio.run(main)`, where SIGINT or SIGTERM cancels `main` and then raises `Stopped`.

    The handlers are the loop's own (`loop.add_signal_handler`), which wake it whatever it
    waits on; the handlers in place before (a `stop_on_signals` block's, say) are back when it
    returns. With `stop`, a signal it recorded before the loop started stops `main` at once.
    """
    stop = stop if stop is not None else Stop()
    previous = {number: signal.getsignal(number) for number in stop_signal_numbers}

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(number: int) -> None:
            if not stop.requested:
                stop.record(number)
                task.cancel()

        for number in stop_signal_numbers:
            loop.add_signal_handler(number, on_signal, number)
        try:
            if stop.requested:
                main.close()
                stop.check()
            return await main
        finally:
            for number, handler in previous.items():
                loop.remove_signal_handler(number)  # puts the default back: ours follows
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if stop.signal_number is None:
            raise
        raise Stopped(stop.signal_number) from None


def lines_until_stopped(lines: Iterable[str], stop: Stop) -> Iterator[str]:
    """The lines of `lines` (a terminal, a pipe) until they end or a stop is requested.

    A read blocked on a terminal is not interrupted by a handler that only records the signal,
    so a daemon thread reads and this generator waits for its lines in slices.
    """
    received: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        try:
            for line in lines:
                received.put(line)
        finally:
            received.put(None)

    threading.Thread(target=read, name="read-lines", daemon=True).start()
    while not stop.requested:
        try:
            line = received.get(timeout=wait_slice_s)
        except queue.Empty:
            continue
        if line is None:
            return
        yield line
