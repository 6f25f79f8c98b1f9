"""The waiting helpers themselves: they return once the condition holds, and past their
deadline fail saying what they waited for (also when the check itself hangs)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.waiting import next_line, wait_until, wait_until_async


def test_wait_until_returns_once_true_and_fails_naming_what() -> None:
    checks = iter([False, 0, "yes"])
    wait_until(lambda: next(checks), "the third check")
    with pytest.raises(AssertionError, match=r"gave up after 0.05 s waiting until never"):
        wait_until(lambda: False, "never", within_s=0.05)


async def test_wait_until_async_awaits_checks_and_bounds_a_hung_one() -> None:
    checks = iter([False, True])

    async def check() -> bool:
        return next(checks)

    await wait_until_async(check, "the second check")
    await wait_until_async(lambda: True, "a plain check")
    with pytest.raises(AssertionError, match="waiting until the check answers"):
        await wait_until_async(lambda: asyncio.sleep(60), "the check answers", within_s=0.05)


async def test_a_timeout_raised_by_the_check_is_not_the_deadline() -> None:
    async def check() -> bool:
        raise TimeoutError("the check's own")

    with pytest.raises(TimeoutError, match="the check's own"):
        await wait_until_async(check, "never")


def test_next_line_reads_a_line_and_fails_on_a_silent_child() -> None:
    quiet = "import sys, time; print('one', flush=True); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", quiet], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert next_line(process.stdout, "the first line") == "one\n"
        with pytest.raises(AssertionError, match="waiting until the child says more"):
            next_line(process.stdout, "the child says more", within_s=0.2)
    finally:
        process.kill()
        process.wait(timeout=30)
