"""The `ksh` command line: the composition root that wires the packages together.

Domain code lives in `card_reader`, `bus_terminals`, `ledger`, `gateways` and `settlement`;
this package only parses arguments, builds the parts, and prints results.
"""
