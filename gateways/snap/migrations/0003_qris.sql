-- QRIS through an acquiring bank (a SNAP partner): whom it acquires for us (merchants, and the
-- bus operator for rides sold by QR) and in which MDR category, the dynamic codes asked for a
-- sale, and every payment notification received (booked or refused), so finance can explain
-- each one.
create table qris_payees (
    party_kind text not null check (party_kind in ('merchant', 'operator')),
    party_id text not null,                -- merchants.merchant_id or operators.operator_id
    partner_id text not null references snap_partners (partner_id),
    acquirer_merchant_id text not null,    -- the payee's id at the acquirer
    mdr_category text not null,            -- a key of gateways.snap.qris.mdr_rates
    primary key (party_kind, party_id),
    unique (partner_id, acquirer_merchant_id)
);

create table qris_orders (
    order_id text primary key,             -- our partnerReferenceNo: "<terminal>:<sale>"
    party_kind text not null,
    party_id text not null,
    terminal_id text not null,
    detail text not null default '',       -- what was sold (a ride: route and fare product)
    amount_rupiah bigint not null check (amount_rupiah > 0),
    partner_id text not null references snap_partners (partner_id),
    reference_no text not null,            -- the acquirer's referenceNo
    qr_content text not null,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    state text not null check (state in ('open', 'paid', 'expired')),
    paid_at timestamptz,
    paid_via text check (paid_via in ('notify', 'query')),
    mdr_rupiah bigint check (mdr_rupiah >= 0),
    check ((state = 'paid') = (paid_at is not null)),
    foreign key (party_kind, party_id) references qris_payees (party_kind, party_id)
);
create index qris_orders_open on qris_orders (expires_at) where state = 'open';

create table qris_notifications (
    notification_id bigserial primary key,
    received_at timestamptz not null,
    partner_id text not null,
    external_id text not null,
    original_partner_reference_no text,
    original_reference_no text,
    amount_rupiah bigint,
    outcome text not null                  -- booked, or the refusal's detail
);
