"""Setting the system up from the command line, one command family at a time: operators,
merchants and terminals (add → list → show → suspend), parties' bank accounts, cards issued
with their purse shown by owner; each change in a named person's name, in the staff actions
log; each mistake one line, exit 2, nothing changed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import asyncpg
import pytest

from gateways.terminal_api import registry
from tests.setup.helpers import (
    Ksh,
    add_staff,
    assert_user_error,
    books_snapshot,
    new_public_key,
)

why = ("--reason", "setting up the network")


@pytest.fixture
async def ksh(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Ksh:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = Ksh(capsys)
    await add_staff(runner, monkeypatch)
    return runner


async def staff_actions(database_url: str) -> list[tuple[str, str, str, str]]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "select username, role, action, subject from staff_actions order by action_id"
        )
        return [tuple(row) for row in rows]
    finally:
        await connection.close()


async def test_operator_add_list_show_suspend(ksh: Ksh, database_url: str) -> None:
    ran = await ksh.ok(
        "operator", "add", "--id", "trans-semarang", "--name", "BLU UPTD Trans Semarang",
        "--as", "budi", *why,
    )  # fmt: skip
    assert ran.out == "operator trans-semarang registered\n"
    await ksh.ok(
        "terminal", "add", "--id", "BUS-01", "--public-key", new_public_key(),
        "--role", "validator", "--operator", "trans-semarang", "--as", "budi", *why,
    )  # fmt: skip

    listed = await ksh.ok("operator", "list")
    header, row = listed.out.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "TERMINALS", "BANK", "ACCOUNT"]
    assert row.split()[0] == "trans-semarang"
    assert "active" in row and "1 of 1" in row and row.endswith("none")
    (as_json,) = (await ksh.ok("operator", "list", "--json")).json_lines()
    assert as_json["party_id"] == "trans-semarang"
    assert as_json["status"] == "active"
    assert as_json["account_id"] == str(registry.operator_revenue_account_id("trans-semarang"))
    assert as_json["bank_account"] is None

    shown = await ksh.ok("operator", "show", "trans-semarang")
    assert "BLU UPTD Trans Semarang" in shown.out
    assert "BUS-01  validator  active" in shown.out
    assert "budi (supervisor)  register_operator: setting up the network" in shown.out
    (full,) = (await ksh.ok("operator", "show", "trans-semarang", "--json")).json_lines()
    assert full["balance_rupiah"] == 0
    assert [entry["action"] for entry in full["history"]] == ["register_operator"]

    ran = await ksh.ok(
        "operator", "suspend", "trans-semarang", "--as", "budi", "--reason", "contract ended"
    )
    assert ran.out == "operator trans-semarang suspended; terminals revoked: BUS-01\n"
    (full,) = (await ksh.ok("operator", "show", "trans-semarang", "--json")).json_lines()
    assert full["status"] == "suspended"
    assert full["terminals_active"] == 0
    assert full["terminal_list"] == [
        {"terminal_id": "BUS-01", "role": "validator", "status": "revoked"}
    ]
    assert [entry["action"] for entry in full["history"]] == [
        "register_operator",
        "suspend_operator",
    ]
    assert full["history"][1]["detail"]["revoked_terminals"] == ["BUS-01"]
    assert await staff_actions(database_url) == [
        ("budi", "supervisor", "register_operator", "trans-semarang"),
        ("budi", "supervisor", "register_terminal", "BUS-01"),
        ("budi", "supervisor", "suspend_operator", "trans-semarang"),
    ]


async def test_merchant_add_list_show_suspend(ksh: Ksh, database_url: str) -> None:
    await ksh.ok(
        "merchant", "add", "--id", "WARUNG-01", "--name", "Warung Bu Sri",
        "--fee-basis-points", "150", "--as", "budi", *why,
    )  # fmt: skip
    listed = await ksh.ok("merchant", "list")
    assert listed.out.splitlines()[0].split()[:5] == ["ID", "NAME", "STATUS", "TERMINALS", "FEE"]
    (as_json,) = (await ksh.ok("merchant", "list", "--json")).json_lines()
    assert (as_json["party_id"], as_json["fee_basis_points"]) == ("WARUNG-01", 150)
    shown = await ksh.ok("merchant", "show", "WARUNG-01")
    assert "150 basis points per sale" in shown.out
    assert "payable account" in shown.out
    ran = await ksh.ok("merchant", "suspend", "WARUNG-01", "--as", "budi", *why)
    assert ran.out == "merchant WARUNG-01 suspended; terminals revoked: none\n"
    (as_json,) = (await ksh.ok("merchant", "list", "--json")).json_lines()
    assert as_json["status"] == "suspended"
    # A suspended merchant gets no new terminal.
    ran = await ksh(
        "terminal", "add", "--id", "POS-9", "--public-key", new_public_key(), "--role", "pos",
        "--merchant", "WARUNG-01", "--as", "budi", *why,
    )  # fmt: skip
    assert_user_error(ran, "terminal", "merchant WARUNG-01 is suspended")
    assert [action for _, _, action, _ in await staff_actions(database_url)] == [
        "register_merchant",
        "suspend_merchant",
    ]


async def test_terminal_add_list_show_suspend(ksh: Ksh, database_url: str, tmp_path: Path) -> None:
    await ksh.ok("operator", "add", "--id", "trans-semarang", "--as", "budi", *why)
    await ksh.ok("merchant", "add", "--id", "WARUNG-01", "--as", "budi", *why)
    key_file = tmp_path / "bus.pub"
    bus_key = new_public_key()
    key_file.write_text(bus_key + "\n")  # as `ksh validator --init > bus.pub` leaves it
    ran = await ksh.ok(
        "terminal", "add", "--id", "BUS-01", "--public-key", str(key_file), "--role",
        "validator", "--operator", "trans-semarang", "--as", "budi", *why,
    )  # fmt: skip
    assert ran.out == "terminal BUS-01 registered: validator of operator trans-semarang\n"
    await ksh.ok(
        "terminal", "add", "--id", "POS-01", "--public-key", new_public_key(), "--role", "pos",
        "--merchant", "WARUNG-01", "--as", "budi", *why,
    )  # fmt: skip

    listed = await ksh.ok("terminal", "list")
    lines = listed.out.splitlines()
    assert lines[0].split()[:4] == ["ID", "ROLE", "OWNER", "STATUS"]
    assert [line.split()[:2] for line in lines[1:]] == [["BUS-01", "validator"], ["POS-01", "pos"]]
    only_bus = await ksh.ok("terminal", "list", "--operator", "trans-semarang", "--json")
    (bus,) = only_bus.json_lines()
    assert (bus["terminal_id"], bus["public_key"], bus["status"]) == ("BUS-01", bus_key, "active")
    assert bus["owner_kind"] == "operator" and bus["next_batch_sequence"] == 1

    shown = await ksh.ok("terminal", "show", "BUS-01")
    assert bus_key in shown.out
    assert "budi (supervisor)  register_terminal: setting up the network" in shown.out

    ran = await ksh.ok("terminal", "suspend", "BUS-01", "--as", "budi", "--reason", "stolen")
    assert ran.out == "terminal BUS-01 revoked: its uploads are refused from now on\n"
    (bus,) = (await ksh.ok("terminal", "show", "BUS-01", "--json")).json_lines()
    assert bus["status"] == "revoked"
    assert [(e["action"], e["reason"]) for e in bus["history"]] == [
        ("register_terminal", "setting up the network"),
        ("revoke_terminal", "stolen"),
    ]
    before = await books_snapshot(database_url)
    again = await ksh("terminal", "suspend", "BUS-01", "--as", "budi", *why)
    assert_user_error(again, "terminal", "terminal BUS-01 is already revoked")
    assert await books_snapshot(database_url) == before


async def test_party_account_set_and_listed(ksh: Ksh, database_url: str) -> None:
    await ksh.ok("operator", "add", "--id", "trans-semarang", "--as", "budi", *why)
    await ksh.ok("merchant", "add", "--id", "WARUNG-01", "--as", "budi", *why)
    ran = await ksh.ok(
        "party", "set", "--operator", "trans-semarang", "--same-bank", "--account",
        "1350099990001", "--holder", "BLU UPTD Trans Semarang", "--as", "budi", *why,
    )  # fmt: skip
    assert ran.out == (
        "operator trans-semarang is paid to 1350099990001 at our bank, BLU UPTD Trans Semarang\n"
    )
    ran = await ksh.ok(
        "party", "set", "--operator", "trans-semarang", "--bank", "113", "--account",
        "7700000009", "--holder", "BLU UPTD Trans Semarang", "--as", "budi",
        "--reason", "moved to Bank Jateng",
    )  # fmt: skip
    assert "(was 1350099990001 at our bank" in ran.out
    rows = {row["party_id"]: row for row in (await ksh.ok("party", "list", "--json")).json_lines()}
    assert rows["trans-semarang"]["bank_code"] == "113"
    assert rows["trans-semarang"]["account_no"] == "7700000009"
    assert rows["WARUNG-01"]["account_no"] is None
    table = (await ksh.ok("party", "list")).out
    assert "7700000009" in table and "none" in table
    shown = await ksh.ok("operator", "show", "trans-semarang")
    assert "113 7700000009 (BLU UPTD Trans Semarang)" in shown.out
    assert "set_party_account: moved to Bank Jateng" in shown.out
    connection = await asyncpg.connect(database_url)
    try:
        detail = await connection.fetchval(
            "select detail from staff_actions where action = 'set_party_account' "
            "order by action_id desc limit 1"
        )
    finally:
        await connection.close()
    assert '"replaced": {"holder": "BLU UPTD Trans Semarang", "bank_code": ""' in detail


async def test_card_issued_and_its_purse_shown_by_owner(ksh: Ksh, database_url: str) -> None:
    ran = await ksh.ok(
        "cards", "issue", "--number", "6032984000000001", "--opening-balance", "50000",
        "--as", "ani", "--reason", "sold at the Simpang Lima desk",
    )  # fmt: skip
    purse = registry.purse_account_id("6032984000000001")
    issued, printed = ran.out.splitlines()
    assert issued == f"card 6032984000000001 issued: purse {purse} holds Rp 50,000"
    assert re.fullmatch(r"check code [0-9A-Z]{4}-[0-9A-Z]{4} \(print it on the card\)", printed)
    balance = await ksh.ok("ledger", "balance", "--owner", "card_purse:6032984000000001")
    assert f"account           {purse}\n" in balance.out
    assert "credit_balance    50000\n" in balance.out
    accounts = (await ksh.ok("ledger", "accounts", "--owner", "6032984", "--json")).json_lines()
    assert {(a["kind"], a["balance_rupiah"]) for a in accounts} == {
        ("card_purse", 50_000),
        ("pending_top_up", 0),
    }
    table = (await ksh.ok("ledger", "accounts", "--kind", "bank_clearing")).out
    header, counter = table.splitlines()
    assert header.split() == ["ID", "KIND", "OWNER", "BALANCE", "PENDING"]
    assert counter.split()[1:] == ["bank_clearing", "counter", "-50,000", "0"]
    assert await staff_actions(database_url) == [("ani", "clerk", "issue_card", "6032984000000001")]


async def test_mistakes_are_one_line_exit_2_and_change_nothing(
    ksh: Ksh, database_url: str, tmp_path: Path
) -> None:
    await ksh.ok("operator", "add", "--id", "trans-semarang", "--as", "budi", *why)
    await ksh.ok("merchant", "add", "--id", "WARUNG-01", "--as", "budi", *why)
    await ksh.ok(
        "terminal", "add", "--id", "BUS-01", "--public-key", new_public_key(),
        "--role", "validator", "--operator", "trans-semarang", "--as", "budi", *why,
    )  # fmt: skip
    await ksh.ok(
        "cards", "issue", "--number", "6032984000000001", "--opening-balance", "50000",
        "--as", "ani", *why,
    )  # fmt: skip
    before = await books_snapshot(database_url)
    key = new_public_key()
    missing = tmp_path / "missing.pub"
    bus_02 = "terminal add --id BUS-02 --role validator --operator trans-semarang"
    # (command line, what the one line says); each says why with --reason as well
    mistakes = [
        ("operator add --id other --as nobody", "no staff member 'nobody'"),
        (f"{bus_02} --public-key {key} --as ani", "ani is a clerk; only a supervisor may do"),
        ("operator add --id trans-semarang --as budi", "trans-semarang is already registered"),
        ("merchant add --id WARUNG-01 --as budi", "merchant WARUNG-01 is already registered"),
        (
            f"terminal add --id BUS-01 --public-key {key} --role validator "
            "--operator trans-semarang --as budi",
            "terminal BUS-01 is already registered",
        ),
        (f"{bus_02} --public-key not-a-key --as budi", "must be a base64 raw Ed25519 key"),
        (f"{bus_02} --public-key {missing} --as budi", "must be a base64 raw Ed25519 key"),
        (
            f"terminal add --id BUS-02 --role validator --operator nope --public-key {key} "
            "--as budi",
            "no operator nope: register the operator or merchant first",
        ),
        (
            f"terminal add --id POS-02 --role pos --operator trans-semarang --public-key {key} "
            "--as budi",
            "a validator belongs to an operator, a POS to a merchant",
        ),
        (
            "cards issue --number 6032984000000002 --opening-balance -5 --as ani",
            "opening_balance_rupiah is 0..2,000,000",
        ),
        (
            "cards issue --number 6032984000000001 --opening-balance 50000 --as ani",
            "card 6032984000000001 is already issued",
        ),
        (
            "cards issue --number 12AB --opening-balance 0 --as ani",
            "card_number must be 8 to 19 digits",
        ),
        (
            "cards issue --number 6032984000000002 --opening-balance 100 --as citra",
            "citra is an auditor; only a clerk or supervisor may do this",
        ),
        (
            "merchant add --id M2 --fee-basis-points 10001 --as budi",
            "fee_basis_points is 0..10000",
        ),
        (f"operator add --id {'o' * 65} --as budi", "at most 64 characters"),
        (
            "party set --merchant NOPE --same-bank --account 123 --holder X --as budi",
            "no merchant NOPE: register it first",
        ),
        (
            "party set --merchant WARUNG-01 --same-bank --account 12-34 --holder X --as budi",
            "an account number is 1 to 34 digits",
        ),
        ("terminal suspend NOPE --as budi", "no terminal NOPE"),
        ("operator suspend nope --as budi", "no operator nope"),
    ]
    reads = [
        ("operator add --id other --as budi --reason ' '", "reason says why"),
        ("operator show nope", "no operator nope"),
        ("ledger balance --owner card_purse", "--owner is KIND:OWNER"),
        ("ledger balance --owner purse:1", "no account kind 'purse'"),
        ("ledger balance --owner card_purse:9", "no card_purse account of '9'"),
    ]
    for line, fragment in [(f"{line} --reason 'why not'", f) for line, f in mistakes] + reads:
        argv = shlex.split(line)
        ran = await ksh(*argv)
        assert_user_error(ran, argv[0], fragment)
        assert await books_snapshot(database_url) == before, line
