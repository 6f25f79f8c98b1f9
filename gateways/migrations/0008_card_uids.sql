-- Each card's UID, registered at issuance: the back office diversifies the card's Transaction
-- MAC key from it and verifies every committed card transaction with it (a UID an upload record
-- carried would be the terminal's word). Null for cards issued before the Transaction MAC:
-- their records are booked on the terminal's word, as before.
alter table cards add column uid bytea check (uid is null or length(uid) = 7);
