-- Who paid a pending top-up, as far as the bank said (a VA payment's additionalInfo
-- sourceAccountNo): where the money goes back if the card never takes it.
create table top_up_payers (
    top_up_id text primary key references pending_top_ups,
    partner_id text not null,
    bank_code text not null,
    account_no text not null check (account_no <> ''),
    name text not null default ''
);

-- When a pending top-up no card took within the setting left the terminals' list: it is given
-- back only after a wait, so a terminal that downloaded it before and delivers it meanwhile
-- (an offline tap on its way) is paid as usual, and the payer is not.
alter table pending_top_ups add column withdrawn_at timestamptz;

-- A pending top-up no card took within the setting (default 90 days), withdrawn and waited
-- for: taken (`pending_top_ups.taken_terminal_id = 'expired'`: a later delivery is refused),
-- booked pending top-up -> refund payable, then paid back to the payer's account through SNAP (`sending` -> `paid`, the
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
