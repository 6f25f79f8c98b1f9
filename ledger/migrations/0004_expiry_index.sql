-- Holds that can expire, by booking time, so the expiry sweep does not scan every transfer.
-- (Flags: 2 = pending. Fares and other plain transfers do not enter this index.)
create index ledger_transfers_expiring on ledger_transfers (booked_at)
    where flags & 2 <> 0 and timeout_s > 0;
