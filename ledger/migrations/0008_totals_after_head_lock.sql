-- Batches may now stream their rows in while the batch before them still applies its totals
-- and commits (ledger.pipeline): the totals trigger takes the chain head's lock first, so a
-- batch writes account totals only once every batch before it has committed, and every
-- writer takes the head before any account (no lock-order deadlock with close_account or a
-- batch on another connection, which lock the head first too).
create or replace function ledger_apply_totals() returns trigger language plpgsql
    -- A batch touches a few thousand of maybe millions of accounts: probe the primary key
    -- for each rather than hashing or merging the whole table.
    set enable_hashjoin = off set enable_mergejoin = off as $$
begin
    perform 1 from ledger_head for update;
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
