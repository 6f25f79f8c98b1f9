"""`ksh serve`'s job that gives back pending top-ups no card took (`top_up_refunds`), every
`top_up_expiry_sweep_interval_s` (default an hour; 0: never) while this instance leads, as the
desk's replacement sweep does: withdraw those older than `top_up_expiry_days` (default 90) and
expire those withdrawn `top_up_withdrawal_wait_days` (3) ago, then,
with the back office's SNAP key (`snap_private_key_pem`), send the refunds still to send
through each bank the payers paid at. The others wait on the refund-due list."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
from aiohttp import web

from gateways.backoffice import (
    config_key,
    leadership_key,
    leadership_poll_s,
    pool_key,
    singleton_jobs,
)
from gateways.snap.client import BankClient, BankUnreachable
from gateways.snap.partners import bank_connection, load_partner
from settlement import top_up_refunds

sweep_interval_s_default = 3_600.0
sweeper = "ksh-serve"  # who expired them, in the books and the refunds' rows
log = logging.getLogger("ksh.desk.top_up_refunds")


def install(app: web.Application) -> None:
    if (
        float(
            app[config_key].settings.get("top_up_expiry_sweep_interval_s", sweep_interval_s_default)
        )
        > 0
    ):
        singleton_jobs(app)
        app.cleanup_ctx.append(_sweeping)


async def _sweeping(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep_forever(app))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sweep_forever(app: web.Application) -> None:
    settings = app[config_key].settings
    interval_s = float(settings.get("top_up_expiry_sweep_interval_s", sweep_interval_s_default))
    while True:
        if not app[leadership_key].leading:
            await asyncio.sleep(leadership_poll_s / 4)
            continue
        try:
            await sweep_once(app)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, BankUnreachable) as error:
            log.warning("sweep failed, tried again in %.0f s: %s", interval_s, error)
        except Exception:  # a bug: logged whole, and the service goes on
            log.exception("sweep failed, tried again in %.0f s", interval_s)
        await asyncio.sleep(interval_s)


async def sweep_once(app: web.Application) -> list[top_up_refunds.Refund]:
    """Expire what is due, then send what waits for a bank; returns the refunds touched."""
    config = app[config_key]
    days = config.settings.get("top_up_expiry_days")
    older_than = top_up_refunds.expiry_default if days is None else dt.timedelta(days=float(days))
    wait_days = config.settings.get("top_up_withdrawal_wait_days")
    wait = (
        top_up_refunds.withdrawal_wait_default
        if wait_days is None
        else dt.timedelta(days=float(wait_days))
    )
    key_pem = config.settings.get("snap_private_key_pem")
    async with app[pool_key].acquire() as connection:
        touched = await top_up_refunds.expire_top_ups(
            connection, now=config.clock.now(), older_than=older_than, who=sweeper, wait=wait
        )
        if not key_pem:
            return touched
        partner_ids = await connection.fetch(
            "select distinct a.partner_id from top_up_refunds r join top_up_payers a "
            "using (top_up_id) where r.state = 'sending' order by 1"
        )
        async with aiohttp.ClientSession() as http:
            for row in partner_ids:
                partner = await load_partner(connection, row["partner_id"])
                if partner is None or not partner.base_url or not partner.source_account_no:
                    log.warning("refunds wait: partner %s cannot be called", row["partner_id"])
                    continue
                touched += await top_up_refunds.pay_refunds(
                    connection,
                    BankClient.open(
                        bank_connection(partner, key_pem.encode(), clock=config.clock), http
                    ),
                    partner_id=partner.partner_id,
                    source_account_no=partner.source_account_no,
                    now=config.clock.now(),
                )
    for refund in touched:
        log.info(
            "top-up refund",
            extra={
                "top_up_id": refund.top_up_id,
                "state": refund.state,
                "rupiah": refund.amount_rupiah,
            },
        )
    return touched
