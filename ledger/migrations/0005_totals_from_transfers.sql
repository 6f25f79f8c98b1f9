-- The accounts' running totals are written by the database itself, from the transfers booked:
-- each transfer row carries both accounts' four totals after it, so after an insert the
-- totals of every account it touched are those of its last posting in the statement. The
-- writer no longer sends a separate UPDATE of per-account deltas (which it had to compute
-- and encode while the server waited); the server applies them at the end of the COPY.
-- The deferred check of 0001 still compares, at commit, how the account totals moved with
-- what the booked transfers say they move, so after-values that do not add up are refused.
create function ledger_apply_totals() returns trigger language plpgsql
    -- A batch touches a few thousand of maybe millions of accounts: probe the primary key
    -- for each rather than hashing or merging the whole table.
    set enable_hashjoin = off set enable_mergejoin = off as $$
begin
    update ledger_accounts a
       set debits_pending = last.debits_pending,
           debits_posted = last.debits_posted,
           credits_pending = last.credits_pending,
           credits_posted = last.credits_posted
      from (select distinct on (account_id) account_id, debits_pending, debits_posted,
                   credits_pending, credits_posted
              from (select sequence, debit_account_id as account_id,
                           debit_debits_pending_after as debits_pending,
                           debit_debits_posted_after as debits_posted,
                           debit_credits_pending_after as credits_pending,
                           debit_credits_posted_after as credits_posted
                      from new_rows
                    union all
                    select sequence, credit_account_id, credit_debits_pending_after,
                           credit_debits_posted_after, credit_credits_pending_after,
                           credit_credits_posted_after
                      from new_rows) postings
             order by account_id, sequence desc) last
     where a.id = last.account_id;
    return null;
end $$;
create trigger ledger_transfers_totals after insert on ledger_transfers
    referencing new table as new_rows
    for each statement execute function ledger_apply_totals();
