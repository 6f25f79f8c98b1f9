-- Each upload record carries the card's own proof of its card transaction: the Transaction MAC
-- counter (TMC) and value (TMV, 16 hex digits) the card answered at commit
-- (`bus_terminals.wire`, `card_reader.tmac`). 0 and '' where there is none: denied taps, void
-- and in-doubt records, records settled from the card's log, cards issued before the Transaction
-- MAC, and every record stored before this migration.
alter table card_records
    add column tmac_counter bigint not null default 0,
    add column tmac_value text not null default '';
