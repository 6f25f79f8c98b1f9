"""The service desk's card pages, beside the finance pages and behind the same logins:

    GET  /finance/cards?number=N          a card at the desk: the books, holder, deny list entry
                                          and its history, replacement, passes, complaints,
                                          its latest transactions; forms for what follows
    POST /finance/cards/register          card_number, name, nik, phone, reason
    POST /finance/cards/block             card_number, cause, reason
    POST /finance/cards/replace           card_number, new_card_number, reason
    POST /finance/cards/move-due          card_number, reason: move its balance if the wait is over
    POST /finance/cards/pass              card_number, fare_pass_id (priced Rp 0), reason
    GET  /finance/deny-list               entries, automatic ones nobody reviewed first
    POST /finance/deny-list/review        card_number, reason: keep an automatic entry
    POST /finance/deny-list/lift          card_number, reason (fraud: one asks, a second lifts)
    GET  /finance/counter                 the signed-in cashier's drawer since its last close,
                                          and the refund-due list
    POST /finance/counter/close-shift     shift_id, counted_rupiah, reason
    POST /finance/counter/refund-paid     top_up_id, note
    POST /finance/counter/refund-approve  top_up_id, reason (a supervisor, above the limit)

Clerks and supervisors act, auditors read. Each change is made in the staff member's own name
through the functions the admin API and `ksh` call (`gateways.terminal_api.card_desk`,
`passes`, `counter`, `settlement.top_up_refunds`: the rules live there), and is written to
`staff_actions` with its reason in the change's transaction. A refusal of those rules comes
back to the page as a message, with nothing written. Taking cash for a card needs the card on
the counter's reader, so it stays with `ksh counter top-up`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from gateways import four_eyes, staff
from gateways.backoffice import config_key, pool_key
from gateways.service_desk import complaints
from gateways.staff import Role, desk_roles, money_roles
from gateways.terminal_api import card_desk, counter, passes, registry
from gateways.terminal_api.card_desk_routes import replacement_wait
from ledger.clock import Clock
from settlement import formatting, i18n, top_up_refunds, views
from settlement.pages import (
    Session,
    html,
    page,
    read_form,
    render,
    require,
    shown_message,
    translator,
)

card_number_digits_max = 20  # what the lookup takes before it asks the database


def install(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/finance/cards", card_page),
            web.post("/finance/cards/register", register),
            web.post("/finance/cards/block", block),
            web.post("/finance/cards/replace", replace),
            web.post("/finance/cards/move-due", move_due),
            web.post("/finance/cards/pass", grant_pass),
            web.get("/finance/deny-list", deny_list_page),
            web.post("/finance/deny-list/review", review),
            web.post("/finance/deny-list/lift", lift),
            web.get("/finance/counter", counter_page),
            web.post("/finance/counter/close-shift", close_shift),
            web.post("/finance/counter/refund-paid", refund_paid),
            web.post("/finance/counter/refund-approve", refund_approve),
        ]
    )


# ---------------------------------------------------------------------------- changes


def back(path: str, message: str, *, ok: bool, **query: str) -> web.HTTPSeeOther:
    """Back to a page (with its own query) that shows `message`, in the reader's language."""
    values = {**query, "message": message, **({"ok": "1"} if ok else {})}
    return web.HTTPSeeOther(f"{path}?" + urllib.parse.urlencode(values))


@dataclass(frozen=True, slots=True)
class Change:
    """A change asked on a desk page: who, with which form, why, and the page to go back to."""

    session: Session
    form: dict[str, str]
    reason: str
    path: str
    query: dict[str, str]

    def back(self, message: str, *, ok: bool) -> web.HTTPSeeOther:
        return back(self.path, message, ok=ok, **self.query)


async def asked(
    request: web.Request,
    roles: tuple[Role, ...],
    path: str,
    *,
    reason_field: str = "reason",
    card: bool = False,
) -> Change:
    """The signed-in member (one of `roles`), the form (its CSRF token checked) and the reason
    it gives (the admin API's rule: 1 to 500 printable characters), checked before anything
    is opened. `card`: the change is to the form's card_number, whose page it goes back to."""
    session = await require(request, *roles)
    form = await read_form(request, session)
    # Cut one past the longest card number: what is cut is refused all the same.
    number = form.get("card_number", "").strip()[: registry.card_number_length_max + 1]
    change = Change(session, form, form.get(reason_field, "").strip(), path, {})
    if card:
        change = Change(session, form, change.reason, path, {"number": number})
    if staff.reason_problem(change.reason):
        _ = translator(request).gettext
        say_why = _("Say why (1 to %(length)s characters): nothing was changed")
        raise change.back(say_why % {"length": staff.reason_length_max}, ok=False)
    return change


@contextlib.asynccontextmanager
async def desk_change(
    request: web.Request, change: Change
) -> AsyncIterator[tuple[asyncpg.Connection, dt.datetime]]:
    """One change and its staff action in one transaction, at the business time; a refusal of
    the desk's rules goes back to the change's page with its words, and nothing is written."""
    try:
        async with request.app[pool_key].acquire() as connection, connection.transaction():
            yield connection, request.app[config_key].clock.now()
    except (registry.RegistryError, top_up_refunds.RefundError) as error:
        refused = translator(request).gettext("Refused, nothing was changed: %(why)s")
        raise change.back(refused % {"why": str(error)}, ok=False) from None


async def record(
    connection: asyncpg.Connection,
    change: Change,
    action: str,
    subject: str,
    now: dt.datetime,
    **detail: Any,
) -> None:
    """The change in `staff_actions`, as the admin API writes it (`via`: these pages)."""
    member = change.session.staff
    await staff.record_action(
        connection,
        username=member.username,
        role=member.role.value,
        action=action,
        subject=subject,
        reason=change.reason,
        now=now,
        detail={**detail, "via": "pages"},
    )


# ---------------------------------------------------------------------------- the card


@dataclass(frozen=True, slots=True)
class CardAtDesk:
    """What `ksh cards show` says of a card, and what the desk has done with it."""

    holder: card_desk.Holder | None
    cap_rupiah: int
    entry: card_desk.DenyEntry | None
    deny_history: list[card_desk.DenyChange]
    replacement: card_desk.Replacement | None  # this card replaced by another
    replaces: str | None  # the card this one replaces
    passes: list[passes.PendingPass]
    complaints: list[complaints.Complaint]  # the open ones
    passes_ran_out: frozenset[str]  # carried passes whose last day passed before a tap


async def card_at_desk(connection: asyncpg.Connection, number: str, clock: Clock) -> CardAtDesk:
    sales = await passes.passes_of(connection, number)
    tariff = await passes.sale_tariff(connection, clock.now())
    return CardAtDesk(
        await card_desk.holder_of(connection, number),
        await card_desk.purse_cap_rupiah(connection, number),
        await card_desk.deny_entry(connection, number),
        await card_desk.deny_history(connection, number),
        await card_desk.replacement_of(connection, number),
        await connection.fetchval(
            "select old_card_number from card_replacements where new_card_number = $1", number
        ),
        sales,
        await complaints.complaints(
            connection, today=clock.today(), open_only=True, card_number=number
        ),
        passes.ran_out_before_tap(sales, tariff, clock.now()),
    )


async def card_page(request: web.Request) -> web.Response:
    session = await require(request)
    number = request.query.get("number", "").strip()
    valid = number.isdigit() and len(number) <= card_number_digits_max
    body = render(request, "cards_form.html", number=number, valid=valid)
    clock = request.app[config_key].clock
    if number and valid:
        async with request.app[pool_key].acquire() as connection:
            story = await views.card_story(connection, number)
            desk = None if story is None else await card_at_desk(connection, number, clock)
            products = await passes.free_passes(connection, now=clock.now())
        wait = replacement_wait(request.app)
        due_at = None if desk is None or desk.replacement is None else desk.replacement.due_at(wait)
        body += render(
            request,
            "card.html",
            story=story,
            number=number,
            desk=desk,
            session=session,
            can_change=session.staff.role in desk_roles,
            causes=list(card_desk.BlockCause),
            products=products,
            due_at=due_at,
            due=due_at is not None and due_at <= clock.now(),
        )
    title = translator(request).gettext("Card lookup")
    return html(page(request, title, session, body, **shown_message(request)))


async def register(request: web.Request) -> web.Response:
    change = await asked(request, desk_roles, "/finance/cards", card=True)
    number, form = change.query["number"], change.form
    nik = form.get("nik", "").strip()
    async with desk_change(request, change) as (connection, now):
        holder = await card_desk.register_holder(
            connection,
            number,
            form.get("name", ""),
            nik,
            form.get("phone", ""),
            username=change.session.staff.username,
            now=now,
        )
        await record(connection, change, "register_card", number, now, nik_last4=nik[-4:])
    done = translator(request).gettext("Card %(number)s registered to %(name)s")
    raise change.back(done % {"number": number, "name": holder.name}, ok=True)


async def block(request: web.Request) -> web.Response:
    change = await asked(request, desk_roles, "/finance/cards", card=True)
    number, cause = change.query["number"], change.form.get("cause", "")
    async with desk_change(request, change) as (connection, now):
        if cause not in card_desk.BlockCause.__members__:
            raise registry.RegistryError("cause is " + " | ".join(card_desk.BlockCause))
        await card_desk.block_card(
            connection,
            number,
            card_desk.BlockCause(cause),
            change.reason,
            username=change.session.staff.username,
            now=now,
        )
        await record(connection, change, "block_card", number, now, cause=cause)
    done = translator(request).gettext(
        "Card %(number)s blocked: terminals refuse it from their next sync"
    )
    raise change.back(done % {"number": number}, ok=True)


async def replace(request: web.Request) -> web.Response:
    change = await asked(request, desk_roles, "/finance/cards", card=True)
    number = change.query["number"]
    new_number = change.form.get("new_card_number", "").strip()
    wait = replacement_wait(request.app)
    async with desk_change(request, change) as (connection, now):
        found = await card_desk.request_replacement(
            connection,
            number,
            new_number,
            username=change.session.staff.username,
            now=now,
            wait=wait,
        )
        await record(connection, change, "replace_card", number, now, new_card_number=new_number)
    _ = translator(request).gettext
    if found.moved_at is None:
        done = _("Card %(number)s is replaced by %(new)s; its balance moves on %(due)s")
    else:
        done = _("Card %(number)s is replaced by %(new)s; its balance moved to it")
    due = formatting.moment(found.due_at(wait), i18n.language_of(request))
    raise change.back(done % {"number": number, "new": new_number, "due": due}, ok=True)


async def move_due(request: web.Request) -> web.Response:
    """Move the card's balance to its replacement now that the wait is over (`ksh serve` also
    does it hourly, and `ksh cards move-due` for every card)."""
    change = await asked(request, desk_roles, "/finance/cards", card=True)
    number = change.query["number"]
    wait = replacement_wait(request.app)
    async with desk_change(request, change) as (connection, now):
        registry.check_card_number(number)
        moved = await card_desk.move_due_balances(
            connection, now=now, wait=wait, old_card_number=number
        )
        for found in moved:
            await record(
                connection,
                change,
                "move_card_balance",
                number,
                now,
                new_card_number=found.new_card_number,
                purse_rupiah=found.purse_rupiah,
                pending_rupiah=found.pending_rupiah,
            )
    _ = translator(request).gettext
    if not moved:
        raise change.back(_("Nothing moved: the wait is not over, or it moved already"), ok=False)
    done = _("The balance of card %(number)s moved to %(new)s")
    raise change.back(done % {"number": number, "new": moved[0].new_card_number}, ok=True)


async def grant_pass(request: web.Request) -> web.Response:
    change = await asked(request, desk_roles, "/finance/cards", card=True)
    number, product = change.query["number"], change.form.get("fare_pass_id", "")
    async with desk_change(request, change) as (connection, now):
        granted = await passes.grant_pass(
            connection,
            number,
            product,
            username=change.session.staff.username,
            reason=change.reason,
            now=now,
        )
        await record(
            connection,
            change,
            "grant_pass",
            number,
            now,
            fare_pass_id=product,
            pass_sale_id=granted.pass_sale_id,
        )
    done = translator(request).gettext(
        "Pass %(product)s granted: the next validator the card taps activates it"
    )
    raise change.back(done % {"product": product}, ok=True)


# ---------------------------------------------------------------------------- deny list


def to_review(entry: card_desk.DenyEntry) -> bool:
    """An automatic entry nobody has looked at yet."""
    return entry.source is registry.DenySource.rule and entry.reviewed_by is None


async def deny_list_page(request: web.Request) -> web.Response:
    session = await require(request)
    unreviewed = request.query.get("unreviewed") == "1"
    async with request.app[pool_key].acquire() as connection:
        entries = await card_desk.deny_entries(connection, unreviewed=unreviewed)
    entries.sort(key=lambda entry: not to_review(entry))  # stable: newest first within each
    body = render(
        request,
        "deny_list.html",
        session=session,
        entries=entries,
        unreviewed=unreviewed,
        to_review=to_review,
        fraud_reasons=card_desk.fraud_reasons,
        can_change=session.staff.role in desk_roles,
    )
    title = translator(request).gettext("Deny list")
    return html(page(request, title, session, body, **shown_message(request)))


async def review(request: web.Request) -> web.Response:
    change = await asked(request, desk_roles, "/finance/deny-list")
    number = change.form.get("card_number", "").strip()
    async with desk_change(request, change) as (connection, now):
        await card_desk.review_entry(
            connection, number, change.reason, username=change.session.staff.username, now=now
        )
        await record(connection, change, "review_deny_entry", number, now)
    done = translator(request).gettext("Card %(number)s stays on the deny list (reviewed)")
    raise change.back(done % {"number": number}, ok=True)


async def lift(request: web.Request) -> web.Response:
    change = await asked(request, desk_roles, "/finance/deny-list")
    number = change.form.get("card_number", "").strip()
    async with desk_change(request, change) as (connection, now):
        outcome = await card_desk.lift_entry(
            connection, number, change.reason, change.session.staff, now=now
        )
        await record(connection, change, "lift_deny_entry", number, now, outcome=outcome.value)
    _ = translator(request).gettext
    if outcome is card_desk.LiftOutcome.lifted:
        done = _("Card %(number)s lifted: terminals let it through from their next sync")
    else:
        done = _("Lift of card %(number)s asked: a supervisor other than you lifts it")
    raise change.back(done % {"number": number}, ok=True)


# ---------------------------------------------------------------------------- counter


async def counter_page(request: web.Request) -> web.Response:
    session = await require(request)
    cashier = session.staff.username
    clock = request.app[config_key].clock
    async with request.app[pool_key].acquire() as connection:
        shift = await counter.open_shift(connection, cashier)
        shift_id = await counter.next_shift_id(connection, cashier, clock.today())
        refunds = await top_up_refunds.refunds_due(connection)
        refund_limit = await four_eyes.limit_rupiah(connection, four_eyes.Limit.refund)
    body = render(
        request,
        "counter.html",
        session=session,
        shift=shift,
        shift_id=shift_id,
        refunds=refunds,
        can_close=session.staff.role in money_roles,
        can_pay=session.staff.role in desk_roles,
        can_approve=session.staff.role is Role.supervisor,
        refund_limit=refund_limit,
    )
    title = translator(request).gettext("Cash counter")
    return html(page(request, title, session, body, **shown_message(request)))


rupiah_typed = re.compile(r"[0-9]{1,3}(\.[0-9]{3})+|[0-9]{1,3}(,[0-9]{3})+|[0-9]+")


def whole_rupiah(text: str) -> int | None:
    """Rupiah as typed at a counter (`150.000`, `150,000`, `150000`; never a fraction such as
    `150.000,50`); None if it is not, or more than a drawer could hold."""
    text = text.strip()
    if not (text.isascii() and rupiah_typed.fullmatch(text)):
        return None
    amount = int(text.replace(".", "").replace(",", ""))
    return amount if amount <= counter.counted_rupiah_max else None


async def close_shift(request: web.Request) -> web.Response:
    """Close the signed-in cashier's own drawer (a supervisor closes another's with `ksh`)."""
    change = await asked(request, money_roles, "/finance/counter")
    cashier = change.session.staff.username
    counted = whole_rupiah(change.form.get("counted_rupiah", ""))
    if counted is None:
        _ = translator(request).gettext
        raise change.back(_("The counted cash is whole rupiah: nothing was changed"), ok=False)
    async with desk_change(request, change) as (connection, now):
        shift_id = registry.check_reference("shift_id", change.form.get("shift_id", "").strip())
        closed = await counter.close_shift(
            connection, cashier, shift_id, counted, closed_by=cashier, now=now
        )
        if closed.created:
            await record(
                connection,
                change,
                "close_shift",
                cashier,
                now,
                shift_id=shift_id,
                expected_rupiah=closed.expected_rupiah,
                counted_rupiah=counted,
            )
    raise change.back(shift_closed(request, closed), ok=closed.difference_rupiah == 0)


def shift_closed(request: web.Request, closed: counter.ShiftClose) -> str:
    _ = translator(request).gettext
    language = i18n.language_of(request)
    values = {
        "shift": closed.shift_id,
        "expected": formatting.rupiah(closed.expected_rupiah, language),
        "counted": formatting.rupiah(closed.counted_rupiah, language),
        "difference": formatting.rupiah(abs(closed.difference_rupiah), language),
    }
    if not closed.created:
        text = _("Shift %(shift)s was closed before: books %(expected)s, counted %(counted)s")
    elif closed.difference_rupiah < 0:
        text = _(
            "Shift %(shift)s closed: books %(expected)s, counted %(counted)s: "
            "short %(difference)s, booked to suspense"
        )
    elif closed.difference_rupiah > 0:
        text = _(
            "Shift %(shift)s closed: books %(expected)s, counted %(counted)s: "
            "over %(difference)s, booked to suspense"
        )
    else:
        text = _("Shift %(shift)s closed: books %(expected)s, counted %(counted)s: clean")
    return text % values


async def refund_paid(request: web.Request) -> web.Response:
    """A due refund paid in cash at the counter; its note is the reason."""
    change = await asked(request, desk_roles, "/finance/counter", reason_field="note")
    top_up_id = change.form.get("top_up_id", "").strip()
    async with desk_change(request, change) as (connection, now):
        paid = await top_up_refunds.mark_paid_in_cash(
            connection,
            top_up_id,
            who=change.session.staff.username,
            note=change.reason,
            now=now,
        )
        await record(connection, change, "top_up_refund_paid", top_up_id, now)
    done = translator(request).gettext("Refund of top-up %(top_up)s paid: %(amount)s")
    amount = formatting.rupiah(paid.amount_rupiah, i18n.language_of(request))
    raise change.back(done % {"top_up": top_up_id, "amount": amount}, ok=True)


async def refund_approve(request: web.Request) -> web.Response:
    """A supervisor approves a due refund above the limit, for someone else to pay out."""
    change = await asked(request, (Role.supervisor,), "/finance/counter")
    top_up_id = change.form.get("top_up_id", "").strip()
    async with desk_change(request, change) as (connection, now):
        approved = await top_up_refunds.approve_cash_refund(
            connection, top_up_id, change.session.staff, now=now
        )
        await record(connection, change, "top_up_refund_approved", top_up_id, now)
    done = translator(request).gettext(
        "Refund of top-up %(top_up)s approved (%(amount)s): someone else pays it out"
    )
    amount = formatting.rupiah(approved.amount_rupiah, i18n.language_of(request))
    raise change.back(done % {"top_up": top_up_id, "amount": amount}, ok=True)
