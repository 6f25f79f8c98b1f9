"""`ksh complaint`: riders' complaints at the service desk, answered within ten days.

    ksh complaint add --card N --channel counter|phone|web|lapor_hendi --description TEXT
                      [--tap TERMINAL/SEQUENCE ...] --as USERNAME
    ksh complaint list [--all] [--json]          open ones, overdue first
    ksh complaint show ID [--json]               the complaint and the card's latest taps
    ksh complaint investigate ID --note TEXT --as USERNAME
    ksh complaint resolve ID --answer TEXT [--refund RUPIAH] --as USERNAME
    ksh complaint reject ID --answer TEXT --as USERNAME
    ksh complaint approve ID --as SUPERVISOR     a refund above the limit, by a second person
    ksh complaint report --month YYYY-MM [--json]

A clerk or supervisor takes and answers complaints in their own name (--as). A refund gives
back what the named taps paid (never more), from whoever was paid, as a pending top-up the
card takes at its next tap. Uses DATABASE_URL or the embedded PostgreSQL; the business clock
is the system clock.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ksh import acting
from ksh.cli import UserError
from ksh.database import run_with_database
from ksh.tables import rupiah


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "complaint",
        help="riders' complaints: take, investigate, answer (with a refund), monthly report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def who(command: argparse.ArgumentParser, may: str = "a clerk or a supervisor") -> None:
        command.add_argument(
            "--as",
            dest="acting_as",
            required=True,
            metavar="USERNAME",
            help=f"the staff member doing this, in their own name ({may})",
        )

    add = actions.add_parser("add", help="take a complaint about a card")
    add.add_argument("--card", required=True, help="the card number")
    add.add_argument("--channel", required=True, help="counter, phone, web or lapor_hendi")
    add.add_argument("--description", required=True, help="what happened, as the rider said")
    add.add_argument(
        "--tap",
        action="append",
        default=[],
        metavar="TERMINAL/SEQUENCE",
        help="a card transaction in question (from `ksh complaint show` or the card lookup)",
    )
    who(add)
    add.set_defaults(handler=run_add)

    listing = actions.add_parser("list", help="open complaints, overdue first")
    listing.add_argument("--all", action="store_true", help="answered ones too")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="a complaint, its history and the card's taps")
    show.add_argument("complaint_id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)

    for name, text_option, helped in (
        ("investigate", "--note", "start looking into it"),
        ("resolve", "--answer", "answer it, with a refund or without"),
        ("reject", "--answer", "reject it, saying why"),
    ):
        step = actions.add_parser(name, help=helped)
        step.add_argument("complaint_id", type=int)
        step.add_argument(text_option, dest="text", required=True, help="what you say and why")
        if name == "resolve":
            step.add_argument(
                "--refund",
                type=int,
                default=0,
                metavar="RUPIAH",
                help="give back this much of what the named taps paid (default 0: no refund)",
            )
        who(step)
        step.set_defaults(handler=run_step)

    approve = actions.add_parser("approve", help="approve a refund above the limit")
    approve.add_argument("complaint_id", type=int)
    who(approve, "a supervisor other than the one who asked")
    approve.set_defaults(handler=run_step)

    report = actions.add_parser("report", help="the month's complaints in figures")
    report.add_argument("--month", required=True, help="YYYY-MM (received in that month)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(handler=run_report)


def run_add(arguments: argparse.Namespace) -> int:
    from gateways.service_desk import complaints
    from gateways.staff import money_roles
    from ledger.clock import system_clock

    taps = []
    for text in arguments.tap:
        terminal_id, _, sequence = text.rpartition("/")
        if not terminal_id or not sequence.isdigit():
            raise UserError(f"--tap is TERMINAL/SEQUENCE, not {text!r}")
        taps.append(complaints.TapRef(terminal_id, int(sequence)))

    async def work(connection: Any) -> tuple[int, Any]:
        member = await acting.acting_member(connection, arguments, money_roles)
        now = system_clock.now()
        try:
            complaint_id = await complaints.add_complaint(
                connection,
                card_number=arguments.card,
                channel=arguments.channel,
                description=arguments.description,
                taps=taps,
                received_by=member.username,
                now=now,
            )
        except complaints.ComplaintError as error:
            raise UserError(str(error)) from None
        return complaint_id, complaints.due_on(now)

    complaint_id, due = run_with_database(work)
    print(f"complaint {complaint_id} taken: answer due by {due.isoformat()}")
    return 0


def run_list(arguments: argparse.Namespace) -> int:
    from gateways.service_desk import complaints
    from ledger.clock import system_clock

    today = system_clock.today()

    async def work(connection: Any) -> list[Any]:
        return await complaints.complaints(connection, today=today, open_only=not arguments.all)

    for found in run_with_database(work):
        overdue = found.overdue(today) and found.answered_at is None
        if arguments.json:
            print(json.dumps({**summary(found), "overdue": overdue}, sort_keys=True))
        else:
            print(
                f"{found.complaint_id}\t{found.card_number}\t{found.channel.value}\t"
                f"due {found.due_on.isoformat()}{' OVERDUE' if overdue else ''}\t"
                f"{found.state.value}\t{found.description[:60]}"
            )
    return 0


def summary(found: Any) -> dict[str, Any]:
    return {
        "complaint_id": found.complaint_id,
        "card_number": found.card_number,
        "channel": found.channel.value,
        "state": found.state.value,
        "received_at": found.received_at.isoformat(),
        "received_by": found.received_by,
        "due_on": found.due_on.isoformat(),
        "answered_at": found.answered_at.isoformat() if found.answered_at else None,
        "answered_by": found.answered_by,
        "answer": found.answer,
        "refund_rupiah": found.refund_rupiah,
        "refund_top_up_id": found.refund_top_up_id,
        "refund_requested_by": found.refund_requested_by,
        "refund_requested_rupiah": found.refund_requested_rupiah,
        "approved_by": found.approved_by,
        "description": found.description,
    }


def run_show(arguments: argparse.Namespace) -> int:
    from gateways.service_desk import complaints

    async def work(connection: Any) -> tuple[Any, list[Any]]:
        found = await complaints.complaint(connection, arguments.complaint_id)
        if found is None:
            raise UserError(f"no complaint {arguments.complaint_id}")
        return found, await complaints.card_history(connection, found.card_number)

    found, history = run_with_database(work)
    taps = [
        {
            "tap": f"{tap.terminal_id}/{tap.sequence}",
            "card_counter": tap.card_counter,
            "kind": tap.kind,
            "refundable_rupiah": tap.amount_rupiah,
            "outcome": tap.outcome,
        }
        for tap in found.taps
    ]
    events = [
        {
            "at": event.at.isoformat(),
            "username": event.username,
            "state": event.state.value,
            "note": event.note,
        }
        for event in found.events
    ]
    recent = [
        {
            "tap": f"{record.terminal_id}/{record.sequence}",
            "card_counter": record.card_counter,
            "kind": record.kind,
            "amount_rupiah": record.amount_rupiah,
            "top_up_rupiah": record.topup_rupiah,
            "outcome": record.outcome,
        }
        for record in history
    ]
    if arguments.json:
        shown = {**summary(found), "taps": taps, "events": events, "card_history": recent}
        print(json.dumps(shown, sort_keys=True))
        return 0
    print(
        f"complaint {found.complaint_id}: card {found.card_number}, {found.state.value}, "
        f"due {found.due_on.isoformat()}, via {found.channel.value}"
    )
    print(f"  {found.description}")
    if found.answer:
        print(f"  answer: {found.answer} (refund {rupiah(found.refund_rupiah)})")
    for tap in taps:
        print(
            f"  tap {tap['tap']} counter {tap['card_counter']} {tap['kind']} "
            f"refundable {rupiah(tap['refundable_rupiah'])}"
        )
    for event in events:
        print(f"  {event['at']} {event['username']} {event['state']}: {event['note']}")
    print("card's latest transactions (TERMINAL/SEQUENCE for --tap):")
    for record in recent:
        print(
            f"  {record['tap']}\tcounter {record['card_counter']}\t{record['kind']}\t"
            f"{rupiah(record['amount_rupiah'])}\t{record['outcome']}"
        )
    return 0


def run_step(arguments: argparse.Namespace) -> int:
    from gateways.service_desk import complaints
    from gateways.staff import Role, money_roles
    from ledger.clock import system_clock

    async def work(connection: Any) -> str:
        roles = (Role.supervisor,) if arguments.action == "approve" else money_roles
        member = await acting.acting_member(connection, arguments, roles)
        number, now = arguments.complaint_id, system_clock.now()
        try:
            if arguments.action == "investigate":
                await complaints.investigate(connection, number, member, arguments.text, now=now)
            elif arguments.action == "reject":
                await complaints.reject(connection, number, member, arguments.text, now=now)
            elif arguments.action == "approve":
                await complaints.approve_refund(connection, number, member, now=now)
            else:
                # The limit is the service's, never the asker's to choose.
                outcome = await complaints.resolve(
                    connection,
                    number,
                    member,
                    arguments.text,
                    refund_rupiah=arguments.refund,
                    now=now,
                )
                if outcome is complaints.Resolution.awaiting_approval:
                    return "waiting: a refund above the limit needs another supervisor's approval"
        except complaints.ComplaintError as error:
            raise UserError(str(error)) from None
        found = await complaints.complaint(connection, number)
        assert found is not None
        if found.refund_top_up_id:
            return (
                f"{found.state.value}: {rupiah(found.refund_rupiah)} waits for card "
                f"{found.card_number} as pending top-up {found.refund_top_up_id}"
            )
        return found.state.value

    print(f"complaint {arguments.complaint_id} {run_with_database(work)}")
    return 0


def run_report(arguments: argparse.Namespace) -> int:
    from gateways.service_desk import complaints
    from ledger.clock import system_clock

    try:
        first_day = complaints.month_start(arguments.month)
    except ValueError as error:
        raise UserError(str(error)) from None

    async def work(connection: Any) -> Any:
        return await complaints.monthly_report(connection, first_day, today=system_clock.today())

    report = run_with_database(work)
    if arguments.json:
        print(json.dumps(report.as_json(), sort_keys=True))
        return 0
    median = report.median_days_to_answer
    print(f"complaints received in {report.month} (as of {report.as_of.isoformat()})")
    print(f"  received {report.received}, answered {report.answered}, overdue {report.overdue}")
    print(f"  median days to answer {'-' if median is None else median}")
    print(f"  refunded {rupiah(report.refunded_rupiah)}")
    print("  by state:   " + ", ".join(f"{k} {v}" for k, v in report.by_state.items()))
    print("  by channel: " + ", ".join(f"{k} {v}" for k, v in report.by_channel.items()))
    return 0
