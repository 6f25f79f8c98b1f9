-- SNAP BI host-to-host: partners (banks), access tokens we issued, X-EXTERNAL-IDs seen,
-- virtual-account payments answered, and optional card holder names for VA inquiries.

create table snap_partners (
    partner_id text primary key check (length(partner_id) between 1 and 36),
    name text not null,
    client_secret text not null check (length(client_secret) >= 16),
    public_key_pem text not null,
    channel_id text not null check (channel_id ~ '^[0-9A-Za-z]{1,5}$'),
    company_code text not null unique check (company_code ~ '^[0-9]{1,8}$'),
    bank_code text not null default '' check (bank_code ~ '^[0-9]{0,3}$'),
    on_us boolean not null default false,
    top_up_fee_rupiah integer not null default 0 check (top_up_fee_rupiah >= 0),
    base_url text not null default '',
    source_account_no text not null default '',
    created_at timestamptz not null default now()
);

create table snap_access_tokens (
    token_sha256 bytea primary key,
    partner_id text not null references snap_partners (partner_id),
    issued_at timestamptz not null,
    expires_at timestamptz not null
);
create index snap_access_tokens_expiry on snap_access_tokens (expires_at);

-- X-EXTERNAL-ID is unique per partner per day (Jakarta time).
create table snap_external_ids (
    partner_id text not null,
    day date not null,
    external_id text not null,
    path text not null,
    seen_at timestamptz not null default now(),
    primary key (partner_id, day, external_id)
);

-- One row per paymentRequestId that we booked; a repeat is answered with `response`.
create table snap_va_payments (
    partner_id text not null references snap_partners (partner_id),
    payment_request_id text not null,
    virtual_account_no text not null,
    card_number text not null,
    amount_rupiah bigint not null check (amount_rupiah > 0),
    fee_rupiah bigint not null check (fee_rupiah >= 0),
    transfer_id uuid not null unique,
    response jsonb not null,
    booked_at timestamptz not null default now(),
    primary key (partner_id, payment_request_id)
);

-- A registered card's holder name, shown to the payer at VA inquiry (optional: unregistered
-- cards answer a masked card name).
create table snap_card_holders (
    card_number text primary key check (card_number ~ '^[0-9]{1,20}$'),
    holder_name text not null check (length(holder_name) between 1 and 255)
);
