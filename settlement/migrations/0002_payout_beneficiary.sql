-- What each payout attempt instructed, kept with the attempt: asking about it again resends
-- exactly that (even after the party's account on file changed), and the record shows where
-- the money was sent. Empty for attempts recorded before this column existed.
alter table settlement_payouts
    add column beneficiary_bank_code text,
    add column beneficiary_account_no text,
    add column beneficiary_name text;
