-- Settlement: bank statements and their lines, the movements the books expect on the bank
-- accounts, matches, exceptions for staff, end-of-day settlement batches and their payouts,
-- and the finance staff who work them. Money is whole rupiah (bigint).

create table settlement_statement_files (
    file_sha256 text primary key,
    bank text not null,
    file_name text not null,
    line_count integer not null check (line_count >= 0),
    imported_by text not null,
    imported_at timestamptz not null default now()
);

create table settlement_statement_lines (
    line_key text primary key,
    bank text not null,
    account text not null,
    value_date date not null,
    amount_rupiah bigint not null check (amount_rupiah > 0),
    direction text not null check (direction in ('credit', 'debit')),
    reference text not null,
    bank_reference text not null,
    type_code text not null,
    description text not null,
    source_file text not null,
    source_line integer not null check (source_line >= 1),
    occurrence integer not null check (occurrence >= 0),
    file_sha256 text not null references settlement_statement_files (file_sha256)
);
create index settlement_statement_lines_day on settlement_statement_lines (value_date);

create table settlement_expected_movements (
    movement_id text primary key,
    kind text not null check (kind in ('collection', 'payout', 'fee')),
    account text not null,
    direction text not null check (direction in ('credit', 'debit')),
    amount_rupiah bigint not null check (amount_rupiah > 0),
    value_date date not null,
    reference text not null check (reference <> ''),
    group_reference text not null default '',
    -- the ledger account the money sits in until the statement shows it (clearing or in transit)
    holding_account_id uuid not null,
    cancelled boolean not null default false,  -- a payout attempt the bank refused never shows
    created_at timestamptz not null default now()
);
create index settlement_expected_movements_day on settlement_expected_movements (value_date);

create table settlement_matches (
    match_id text primary key,
    kind text not null check (kind in ('one_to_one', 'one_to_many', 'many_to_one', 'manual')),
    difference_rupiah bigint not null,
    matched_by text not null,
    note text not null default '',
    matched_at timestamptz not null default now()
);

create table settlement_match_lines (
    line_key text primary key references settlement_statement_lines (line_key),
    match_id text not null references settlement_matches (match_id)
);

create table settlement_match_movements (
    movement_id text primary key references settlement_expected_movements (movement_id),
    match_id text not null references settlement_matches (match_id)
);

-- What staff must look at: a statement line nothing explains, a payout the bank refused, a
-- movement the statement never showed. Resolved only by a staff action (a ledger transfer).
create table settlement_exceptions (
    exception_id text primary key,
    subject_kind text not null check (subject_kind in ('line', 'payout', 'movement')),
    subject_id text not null,
    reason text not null,
    detail text not null,
    amount_rupiah bigint not null check (amount_rupiah >= 0),
    service_day date not null,
    opened_at timestamptz not null default now(),
    resolution text check (resolution in ('matched', 'written_off', 'reinitiated', 'confirmed')),
    resolved_by text,
    approved_by text,
    write_off_requested_by text,  -- a clerk's write-off above the limit waits for a supervisor
    write_off_requested_note text,
    resolution_note text,
    resolution_transfer_id uuid,
    resolved_at timestamptz,
    unique (subject_kind, subject_id),
    check ((resolution is null) = (resolved_at is null))
);
create index settlement_exceptions_open on settlement_exceptions (service_day) where resolved_at is null;

-- Where each party is paid (merchants' and the operator's bank accounts).
create table settlement_parties (
    party_kind text not null check (party_kind in ('merchant', 'operator')),
    party_id text not null,
    name text not null,
    bank_code text not null default '',  -- empty: same bank as our source account
    account_no text not null,
    primary key (party_kind, party_id)
);

create table settlement_batches (
    batch_id text primary key,
    service_day date not null,
    party_kind text not null check (party_kind in ('merchant', 'operator')),
    party_id text not null,
    payable_account_id uuid not null,
    -- the two-phase hold (payable -> settlement in transit) shared by every attempt; posted
    -- when the bank pays, so tomorrow's close never counts this money again
    hold_transfer_id uuid not null unique,
    -- owed: the payable's balance this batch closes (sales net of the fees booked with each
    -- sale); gross adds those fees back; fees = sale fees + any end-of-day fee; net is paid
    owed_rupiah bigint not null check (owed_rupiah > 0),
    gross_rupiah bigint not null check (gross_rupiah >= 0),
    fees_rupiah bigint not null check (fees_rupiah >= 0),
    net_rupiah bigint not null check (net_rupiah > 0),
    check (gross_rupiah = fees_rupiah + net_rupiah),
    created_at timestamptz not null default now(),
    unique (service_day, party_kind, party_id)
);

-- One row per payout attempt. `payout_id` is the partnerReferenceNo: stable across retries of
-- one attempt; a new attempt (after a definite refusal) gets the next number.
create table settlement_payouts (
    payout_id text primary key,
    batch_id text not null references settlement_batches (batch_id),
    attempt integer not null check (attempt >= 1),
    amount_rupiah bigint not null check (amount_rupiah > 0),
    state text not null check (state in ('exported', 'succeeded', 'in_progress', 'failed', 'unknown', 'not_found')),
    response_code text not null default '',
    response_message text not null default '',
    bank_reference_no text not null default '',
    instructed_by text not null,
    instructed_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (batch_id, attempt)
);

create table settlement_staff (
    username text primary key check (username ~ '^[a-z][a-z0-9_.-]{1,39}$'),
    password_hash text not null,
    role text not null check (role in ('clerk', 'supervisor', 'auditor')),
    created_at timestamptz not null default now()
);

create table settlement_sessions (
    token_sha256 bytea primary key,
    username text not null references settlement_staff (username),
    csrf_token text not null,
    expires_at timestamptz not null
);
