-- The ledger: accounts with running totals, transfers (immutable, in booking order), batches
-- hash-chained, and a deferred check that refuses any commit whose balance movements do not
-- sum to zero or do not match the transfers booked in it.

create table ledger_accounts (
    id uuid primary key,
    kind text not null,
    currency char(3) not null,
    owner_reference text not null,
    flags integer not null,
    created_at timestamptz not null,
    debits_pending bigint not null default 0 check (debits_pending >= 0),
    debits_posted bigint not null default 0 check (debits_posted >= 0),
    credits_pending bigint not null default 0 check (credits_pending >= 0),
    credits_posted bigint not null default 0 check (credits_posted >= 0),
    check (id <> '00000000-0000-0000-0000-000000000000'::uuid)
);

-- One row per transfer, holding both of its postings: the debit leg (debit_account_id, and
-- that account's four totals after this transfer) and the credit leg (likewise). The view
-- ledger_postings shows them as two signed rows.
create table ledger_transfers (
    sequence bigint not null,  -- booking order: strictly increasing, gapless, from 1
    id uuid not null,
    batch_number bigint not null,
    booked_at timestamptz not null,
    debit_account_id uuid not null,
    credit_account_id uuid not null,
    amount bigint not null check (amount > 0),
    code integer not null check (code > 0),
    flags integer not null,
    pending_id uuid,
    timeout_s integer not null,
    terminal_id text,
    terminal_sequence bigint,
    card_number text,
    card_counter bigint,
    bank_reference text,
    settlement_batch text,
    metadata jsonb,
    debit_debits_pending_after bigint not null,
    debit_debits_posted_after bigint not null,
    debit_credits_pending_after bigint not null,
    debit_credits_posted_after bigint not null,
    credit_debits_pending_after bigint not null,
    credit_debits_posted_after bigint not null,
    credit_credits_pending_after bigint not null,
    credit_credits_posted_after bigint not null,
    check (debit_account_id <> credit_account_id)
);
create unique index ledger_transfers_id on ledger_transfers (id);
create index ledger_transfers_debit on ledger_transfers (debit_account_id, sequence);
create index ledger_transfers_credit on ledger_transfers (credit_account_id, sequence);
create index ledger_transfers_pending on ledger_transfers (pending_id) where pending_id is not null;
create index ledger_transfers_sequence on ledger_transfers using brin (sequence);

create view ledger_postings as
    select sequence, id as transfer_id, booked_at, debit_account_id as account_id,
           'debit' as side, -amount as amount, flags
      from ledger_transfers
    union all
    select sequence, id as transfer_id, booked_at, credit_account_id as account_id,
           'credit' as side, amount, flags
      from ledger_transfers;

-- One row per booked batch. chain_hash = sha256(previous chain_hash || digest), where digest
-- is sha256 over the batch's transfers in sequence order (ledger/chain.py says exactly how).
create table ledger_batches (
    batch_number bigint primary key,
    first_sequence bigint not null,
    last_sequence bigint not null,
    transfer_count integer not null check (transfer_count > 0),
    booked_at timestamptz not null,
    digest bytea not null,
    chain_hash bytea not null,
    check (last_sequence - first_sequence + 1 = transfer_count)
);

-- The single head of the chain. Every booking batch locks this row first: batches apply one
-- at a time, in the order they lock it, which is also the order of the hash chain.
create table ledger_head (
    singleton boolean primary key default true check (singleton),
    batch_number bigint not null,
    next_sequence bigint not null,
    chain_hash bytea not null,
    booked_at timestamptz not null
);
insert into ledger_head values (true, 0, 1, decode(repeat('00', 32), 'hex'), '1970-01-01 00:00:00+00');

-- Immutability: booked transfers and batches are never changed or deleted.
create function ledger_refuse_change() returns trigger language plpgsql as $$
begin
    raise exception 'ledger: % is immutable (book a correcting transfer instead)', tg_table_name
        using errcode = 'integrity_constraint_violation';
end $$;
create trigger ledger_transfers_immutable before update or delete or truncate on ledger_transfers
    for each statement execute function ledger_refuse_change();
create trigger ledger_batches_immutable before update or delete or truncate on ledger_batches
    for each statement execute function ledger_refuse_change();

-- The deferred zero-sum check. Statement triggers record, per transaction, the sum of every
-- change to the accounts' totals (debits minus credits, posted and pending) and the movement
-- the inserted transfers imply, with the opposite sign. At commit, a deferred constraint
-- trigger refuses the transaction unless (a) the account changes balance: debits moved as
-- much as credits, and (b) they equal what the transfers booked in it say.
create table ledger_commit_checks (
    transaction_id xid8 not null,
    debits_posted numeric not null,
    credits_posted numeric not null,
    debits_pending numeric not null,
    credits_pending numeric not null
);
create index ledger_commit_checks_transaction on ledger_commit_checks (transaction_id);

create function ledger_note_account_changes() returns trigger language plpgsql as $$
begin
    insert into ledger_commit_checks
    select pg_current_xact_id(),
           coalesce(sum(n.debits_posted - o.debits_posted), 0),
           coalesce(sum(n.credits_posted - o.credits_posted), 0),
           coalesce(sum(n.debits_pending - o.debits_pending), 0),
           coalesce(sum(n.credits_pending - o.credits_pending), 0)
      from new_rows n join old_rows o using (id);
    return null;
end $$;
create trigger ledger_accounts_changes after update on ledger_accounts
    referencing old table as old_rows new table as new_rows
    for each statement execute function ledger_note_account_changes();

create function ledger_refuse_opening_totals() returns trigger language plpgsql as $$
begin
    if exists (select 1 from new_rows
                where debits_pending <> 0 or debits_posted <> 0
                   or credits_pending <> 0 or credits_posted <> 0) then
        raise exception 'ledger: accounts start with zero totals'
            using errcode = 'check_violation';
    end if;
    return null;
end $$;
create trigger ledger_accounts_open after insert on ledger_accounts
    referencing new table as new_rows
    for each statement execute function ledger_refuse_opening_totals();

-- What a transfer does to the totals: plain -> posted; pending -> pending; post -> releases
-- the held amount from pending and posts its own; void -> releases the held amount.
-- Flags: 2 pending, 4 post_pending, 8 void_pending (ledger/records.py TransferFlags).
create function ledger_note_transfers() returns trigger language plpgsql as $$
begin
    insert into ledger_commit_checks
    select pg_current_xact_id(), -posted, -posted, -pending, -pending
      from (select coalesce(sum(case when t.flags & 14 = 0 or t.flags & 4 <> 0
                                     then t.amount else 0 end), 0) as posted,
                   coalesce(sum(case when t.flags & 2 <> 0 then t.amount
                                     when t.flags & 12 <> 0 then -h.amount
                                     else 0 end), 0) as pending
              from new_rows t
              left join ledger_transfers h on t.flags & 12 <> 0 and h.id = t.pending_id) s;
    return null;
end $$;
create trigger ledger_transfers_booked after insert on ledger_transfers
    referencing new table as new_rows
    for each statement execute function ledger_note_transfers();

create function ledger_check_commit() returns trigger language plpgsql as $$
declare
    totals record;
begin
    select coalesce(sum(debits_posted), 0) as debits_posted,
           coalesce(sum(credits_posted), 0) as credits_posted,
           coalesce(sum(debits_pending), 0) as debits_pending,
           coalesce(sum(credits_pending), 0) as credits_pending,
           count(*) as notes
      into totals
      from ledger_commit_checks where transaction_id = pg_current_xact_id();
    if totals.notes = 0 then
        return null;  -- an earlier firing in this transaction checked and cleared it
    end if;
    if totals.debits_posted <> 0 or totals.credits_posted <> 0
       or totals.debits_pending <> 0 or totals.credits_pending <> 0 then
        raise exception 'ledger: postings do not balance (posted debits % credits %, pending debits % credits % unexplained)',
            totals.debits_posted, totals.credits_posted, totals.debits_pending, totals.credits_pending
            using errcode = 'check_violation';
    end if;
    delete from ledger_commit_checks where transaction_id = pg_current_xact_id();
    return null;
end $$;
create constraint trigger ledger_commit_balances after insert on ledger_commit_checks
    deferrable initially deferred
    for each row execute function ledger_check_commit();
