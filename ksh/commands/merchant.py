"""`ksh merchant`: merchants, who run points of sale and are paid their sales less their fee
(add, list, show, suspend); built by `ksh.commands.operator`, which `ksh operator` shares."""

from __future__ import annotations

from typing import Any

from ksh.commands.operator import register_party_commands


def register(subparsers: Any) -> None:
    register_party_commands(subparsers, "merchant")
