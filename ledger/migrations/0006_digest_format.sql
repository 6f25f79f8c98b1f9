-- Which encoding a batch's digest covers (ledger/chain.py): 1 = the first version's
-- column-wise digest (batches booked before this migration), 2 = the rows' binary COPY
-- encoding, the bytes the ledger sends. `ksh ledger check` verifies each batch by its own.
alter table ledger_batches add column digest_format smallint not null default 1
    check (digest_format in (1, 2));
alter table ledger_batches alter column digest_format set default 2;
