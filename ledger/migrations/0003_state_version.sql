-- Counts every change to account totals or flags (each booked batch, each closed account), so
-- a writer can keep the accounts it loaded in memory and know when they went stale.
alter table ledger_head add column state_version bigint not null default 0;
