-- Operators and merchants can be suspended (`ksh operator suspend`, `ksh merchant suspend`):
-- their terminals are revoked with them and no new terminal is registered for them. What they
-- are owed is still settled and paid.
alter table operators
    add column status text not null default 'active' check (status in ('active', 'suspended'));
alter table merchants
    add column status text not null default 'active' check (status in ('active', 'suspended'));
