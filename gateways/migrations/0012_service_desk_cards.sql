-- The service desk's side of cards: who a registered card belongs to, the deny list's history
-- and where each entry came from, and lost or stolen cards replaced.

-- A registered card's holder (Bank Indonesia: registered e-money may hold up to Rp 20,000,000).
-- The national ID (NIK) is kept only as a salted scrypt hash and its last four digits: staff can
-- check a NIK a rider says against it, nobody can read it back.
create table card_holders (
    card_number text primary key references cards,
    name text not null check (length(name) between 1 and 200),
    nik_salt bytea not null check (length(nik_salt) = 16),
    nik_hash bytea not null check (length(nik_hash) = 32),
    nik_last4 text not null check (nik_last4 ~ '^[0-9]{4}$'),
    phone text not null check (phone ~ '^\+?[0-9]{8,15}$'),
    registered_by text not null,
    registered_at timestamptz not null
);

-- Where a deny list entry came from: an automatic rule of the back office, or a person.
alter table deny_list
    add column source text not null default 'rule' check (source in ('rule', 'staff')),
    add column added_by text not null default '',
    add column note text not null default '';

-- Every change to the deny list, oldest first: added, reviewed (kept after a person looked),
-- lift_requested (a fraud entry waits for a second person), lifted. A lifted entry leaves
-- `deny_list` (the list terminals hold) and stays here. The deny list's version is the highest
-- change id: a terminal asks for the cards added or lifted since the version it holds. An
-- entry's `entry_id` is the change id of its `added` row (one sequence for both).
create table deny_list_changes (
    change_id bigint primary key default nextval('deny_list_entry_id_seq'),
    card_number text not null,
    change text not null check (change in ('added', 'reviewed', 'lift_requested', 'lifted')),
    reason text not null,
    source text not null check (source in ('rule', 'staff')),
    username text not null default '',
    note text not null default '',
    at timestamptz not null default now()
);
create index deny_list_changes_card on deny_list_changes (card_number, change_id);
insert into deny_list_changes (change_id, card_number, change, reason, source, at)
    select entry_id, card_number, 'added', reason, 'rule', added_at from deny_list;

-- A lost, stolen or damaged card and the card that replaces it. After the waiting period (for
-- offline taps still on their way) the old card's balance as the books know it moves to the new
-- card as pending top-ups, and the old purse account is closed; `moved_at` says when.
create table card_replacements (
    old_card_number text primary key references cards,
    new_card_number text not null unique references cards,
    requested_by text not null,
    requested_at timestamptz not null,
    moved_at timestamptz,
    purse_rupiah bigint check (purse_rupiah >= 0),
    pending_rupiah bigint check (pending_rupiah >= 0),
    check (old_card_number <> new_card_number)
);
create index card_replacements_due on card_replacements (requested_at) where moved_at is null;
