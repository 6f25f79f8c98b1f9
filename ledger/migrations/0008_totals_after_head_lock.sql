-- Batches may now stream their rows in while the batch before them still applies its totals
-- and commits (ledger.pipeline). Before the totals trigger (0005) writes any account, this
-- trigger takes the chain head's lock (statement triggers of one event fire in name order:
-- ledger_transfers_booked, ledger_transfers_head, ledger_transfers_totals). So a batch
-- writes account totals only once every batch before it has committed, and every writer
-- takes the head before any account: no lock-order deadlock with close_account or a batch
-- on another connection, which lock the head first too.
create function ledger_lock_head() returns trigger language plpgsql as $$
begin
    perform 1 from ledger_head for update;
    return null;
end $$;
create trigger ledger_transfers_head after insert on ledger_transfers
    for each statement execute function ledger_lock_head();
