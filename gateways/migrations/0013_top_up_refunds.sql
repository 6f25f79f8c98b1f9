-- Who paid a pending top-up, as far as the bank said (a VA payment's additionalInfo
-- sourceAccountNo): where the money goes back if the card never takes it.
create table top_up_payers (
    top_up_id text primary key references pending_top_ups,
    partner_id text not null,
    bank_code text not null,
    account_no text not null check (account_no <> ''),
    name text not null default ''
);

-- A pending top-up no card took within the setting (default 90 days): taken off the terminals'
-- list (`pending_top_ups.taken_terminal_id = 'expired'`), booked pending top-up -> refund
-- payable, then paid back to the payer's account through SNAP (`sending` -> `paid`, the
-- partnerReferenceNo written before it is sent) or, with no account (cash, staff, a refusal),
-- listed as due (`due` -> `paid_cash` by a clerk, with a note).
create table top_up_refunds (
    top_up_id text primary key references pending_top_ups,
    card_number text not null,
    amount_rupiah bigint not null check (amount_rupiah > 0),
    state text not null check (state in ('sending', 'paid', 'due', 'paid_cash')),
    partner_reference_no text unique,
    expired_at timestamptz not null,
    expired_by text not null,
    detail text not null default '',
    paid_at timestamptz,
    paid_by text,
    note text not null default ''
);
create index top_up_refunds_open on top_up_refunds (state) where state in ('sending', 'due');
