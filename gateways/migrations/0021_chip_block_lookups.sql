-- An upload asks, for every card in it, whether the card was blocked on its chip (a booked
-- block record) and whether a desk unblocked it since (`ingest`: a fare or sale after such a
-- block is quarantined). Both lookups are index probes: few cards were ever blocked.
create index card_records_chip_blocks on card_records (card_number, card_counter)
    where kind = 'block' and outcome = 'booked';
create index staff_actions_subject on staff_actions (subject, action);
