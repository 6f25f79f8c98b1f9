-- The service desk: riders' complaints with their ten-day clock, the card transactions each
-- names, the refunds booked for them; the back office's secret behind the check code printed
-- on every card; and the citizen page's lookups counted per client address.

create table complaints (
    complaint_id bigint generated always as identity primary key,
    card_number text not null references cards,
    channel text not null check (channel in ('counter', 'phone', 'web', 'lapor_hendi')),
    description text not null,
    state text not null default 'received' check (state in
        ('received', 'investigating', 'resolved_refund', 'resolved_no_refund', 'rejected')),
    received_at timestamptz not null,
    received_by text not null,  -- a staff user name, or 'web' for the citizen page
    due_on date not null,  -- 10 calendar days after the day of receipt in Semarang
    answered_at timestamptz,  -- when it reached a final state
    answered_by text,
    answer text,
    refund_rupiah bigint not null default 0 check (refund_rupiah >= 0),
    refund_top_up_id text,  -- the pending top-up that carries the refund to the card
    -- A refund above the limit waits for a supervisor other than the person who asked.
    refund_requested_by text,
    refund_requested_rupiah bigint,
    refund_requested_note text,
    approved_by text,
    check ((state in ('received', 'investigating')) = (answered_at is null))
);
create index complaints_open on complaints (due_on) where answered_at is null;
create index complaints_received on complaints (received_at);
create index complaints_card on complaints (card_number);

-- The card transactions a complaint is about, picked from the card's history (card_records).
create table complaint_taps (
    complaint_id bigint not null references complaints,
    terminal_id text not null,
    sequence bigint not null,
    card_counter bigint not null,
    primary key (complaint_id, terminal_id, sequence),
    foreign key (terminal_id, sequence) references card_records (terminal_id, sequence)
);

-- One row per card transaction refunded (by whichever complaint): the ledger transfer that
-- took the amount back from whoever was paid. The sum per card transaction never exceeds
-- what the card paid (checked under the card's lock before the transfer is booked).
create table complaint_refunds (
    complaint_id bigint not null references complaints,
    card_number text not null,
    card_counter bigint not null,
    amount_rupiah bigint not null check (amount_rupiah > 0),
    transfer_id uuid not null unique,
    primary key (complaint_id, card_number, card_counter)
);
create index complaint_refunds_card on complaint_refunds (card_number, card_counter);

-- Each step of a complaint: who, when, into which state, and what they wrote.
create table complaint_events (
    event_id bigint generated always as identity primary key,
    complaint_id bigint not null references complaints,
    at timestamptz not null,
    username text not null,
    state text not null,
    note text not null
);
create index complaint_events_complaint on complaint_events (complaint_id, event_id);

-- Secrets the back office keeps for itself (e.g. 'card_check_code': the key of the check
-- codes printed on cards), made once at random on first use.
create table backoffice_secrets (
    name text primary key,
    secret bytea not null check (length(secret) >= 16)
);

-- The public card page: lookups per client address in a fixed window (every `ksh serve`
-- process counts here, so a restart or another worker does not reset it).
create table citizen_lookups (
    address text primary key,
    window_started_at timestamptz not null,
    lookups integer not null
);
