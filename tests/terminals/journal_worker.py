"""Run by test_journal.py in a subprocess that is killed with SIGKILL at a random moment.

Writes taps to the journal as a validator does (intend, then commit or in doubt) and, after
each durable step, prints it on stdout; the test then checks the reopened journal against
what was printed.
"""

from __future__ import annotations

import sys

from bus_terminals.journal import Journal
from bus_terminals.wire import RecordStatus, UploadKind, UploadRecord


def main() -> None:
    path, start = sys.argv[1], int(sys.argv[2])
    journal = Journal(path, "V1")
    for counter in range(start, start + 100_000):
        intended = journal.intend(
            UploadRecord(
                "V1",
                0,
                UploadKind.fare_debit,
                RecordStatus.in_doubt,
                "6032984000000001",
                counter,
                3_500,
                0,
                "",
                10_000,
                1_763_942_400_000,
                "K1",
                "",
                "full",
                0,
                0,
                0,
            )
        )
        print(f"intended {intended.sequence} {counter}", flush=True)
        if counter % 3:
            journal.commit(intended.sequence)
            print(f"committed {intended.sequence}", flush=True)
        else:
            journal.mark_in_doubt(intended.sequence)
            print(f"in_doubt {intended.sequence}", flush=True)


if __name__ == "__main__":
    main()
