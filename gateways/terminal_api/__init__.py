"""The back office's terminal side: registration, signed uploads booked into the ledger exactly
once, sync downloads, card monitoring. Mount with `terminal_extension` (see `routes`)."""
