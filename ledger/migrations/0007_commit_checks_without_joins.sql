-- The statement checks of 0001/0002 without joins whose plan depends on the batch's size:
-- PL/pgSQL keeps the plan made at its first call in a session, and a nested loop planned for
-- a first batch of a few rows, reused for 8,000 changed accounts, took seconds. What the
-- account totals moved is the sum of the new rows less the sum of the old (the same rows);
-- a post's or void's held amount is looked up by primary key, row by row.
create or replace function ledger_note_account_changes() returns trigger language plpgsql as $$
declare
    after_change record;
    before_change record;
begin
    select coalesce(sum(debits_posted), 0) as debits_posted,
           coalesce(sum(credits_posted), 0) as credits_posted,
           coalesce(sum(debits_pending), 0) as debits_pending,
           coalesce(sum(credits_pending), 0) as credits_pending
      into after_change from new_rows;
    select coalesce(sum(debits_posted), 0) as debits_posted,
           coalesce(sum(credits_posted), 0) as credits_posted,
           coalesce(sum(debits_pending), 0) as debits_pending,
           coalesce(sum(credits_pending), 0) as credits_pending
      into before_change from old_rows;
    insert into ledger_commit_checks values (
        pg_current_xact_id(),
        after_change.debits_posted - before_change.debits_posted,
        after_change.credits_posted - before_change.credits_posted,
        after_change.debits_pending - before_change.debits_pending,
        after_change.credits_pending - before_change.credits_pending);
    return null;
end $$;

create or replace function ledger_note_transfers() returns trigger language plpgsql as $$
declare
    posted numeric;
    pending numeric;
    released numeric;
begin
    select coalesce(sum(amount) filter (where flags & 14 = 0 or flags & 4 <> 0), 0),
           coalesce(sum(amount) filter (where flags & 2 <> 0), 0),
           coalesce(sum((select h.amount from ledger_transfers h where h.id = t.pending_id))
                    filter (where flags & 12 <> 0), 0)
      into posted, pending, released
      from new_rows t;
    insert into ledger_commit_checks
    values (pg_current_xact_id(), -posted, -posted, released - pending, released - pending);
    return null;
end $$;
