-- The back office's terminal side: who may upload, what they uploaded, and what we know of
-- each card from its taps. Money itself lives in the ledger's tables; this is the evidence.

create table operators (
    operator_id text primary key,
    name text not null default '',
    revenue_account_id uuid not null
);

create table merchants (
    merchant_id text primary key,
    name text not null default '',
    fee_basis_points integer not null default 0 check (fee_basis_points between 0 and 10000),
    payable_account_id uuid not null
);

create table terminals (
    terminal_id text primary key,
    public_key text not null,  -- raw Ed25519 public key, base64
    role text not null check (role in ('validator', 'pos')),
    operator_id text references operators,
    merchant_id text references merchants,
    status text not null default 'active' check (status in ('active', 'revoked')),
    next_batch_sequence bigint not null default 1,
    -- the u32 written into card logs (bus_terminals.wire.card_terminal_number): must be unique
    card_terminal_number bigint not null unique,
    registered_at timestamptz not null default now(),
    check ((role = 'validator') = (operator_id is not null)),
    check ((role = 'pos') = (merchant_id is not null))
);

-- Every accepted batch, byte for byte, with its signature: the audit trail of the terminal.
create table upload_batches (
    terminal_id text not null references terminals,
    batch_sequence bigint not null,
    body bytea not null,
    signature text not null,
    body_sha256 bytea not null,
    record_count integer not null,
    acknowledgement jsonb not null,
    received_at timestamptz not null default now(),
    primary key (terminal_id, batch_sequence)
);

create table cards (
    card_number text primary key,
    purse_account_id uuid not null,
    pending_top_up_account_id uuid not null,
    registered_at timestamptz not null default now()
);

-- One row per upload record, keyed as the terminal keys it.
create table card_records (
    terminal_id text not null,
    sequence bigint not null,
    batch_sequence bigint not null,
    kind text not null,
    status text not null,  -- as last reported: committed | in_doubt | void
    card_number text not null,
    card_counter bigint not null,
    amount_rupiah bigint not null,
    topup_rupiah bigint not null,
    pending_topup_id text not null,
    balance_after_rupiah bigint not null,
    time_ms bigint not null,
    route text not null,
    merchant_id text not null,
    fare_detail text not null,
    previous_counter bigint not null,
    previous_terminal_number bigint not null,
    previous_balance_rupiah bigint not null,
    -- what the back office made of it: booked | held (in doubt) | void | denied | anomaly
    outcome text not null,
    primary key (terminal_id, sequence)
);
create index card_records_card on card_records (card_number, card_counter);
create index card_records_in_doubt on card_records (card_number) where outcome = 'held';

create table card_flags (
    flag_id bigserial primary key,
    card_number text not null,
    reason text not null,  -- counter_repeat | counter_gap | purse_negative | balance_mismatch ...
    terminal_id text not null default '',
    sequence bigint,
    card_counter bigint,
    detail text not null default '',
    flagged_at timestamptz not null default now()
);
create index card_flags_card on card_flags (card_number);

create table deny_list (
    entry_id bigserial primary key,  -- the deny list's version is the highest entry id
    card_number text not null unique,
    reason text not null,
    added_at timestamptz not null default now()
);

-- Value paid at a bank for a card, waiting to be written to the card at a reader.
create table pending_top_ups (
    top_up_id text primary key,
    card_number text not null references cards,
    amount_rupiah bigint not null check (amount_rupiah > 0),
    created_at timestamptz not null default now(),
    taken_terminal_id text,
    taken_sequence bigint,
    taken_card_counter bigint
);
create index pending_top_ups_open on pending_top_ups (top_up_id) where taken_terminal_id is null;
