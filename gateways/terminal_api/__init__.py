"""The back office's terminal side: registration, signed uploads booked into the ledger exactly
once, sync downloads, card monitoring, and the service desk's cards (`card_desk`). Mount with
`terminal_extension` (see `routes`) and `card_desk_extension` (see `card_desk_routes`)."""
