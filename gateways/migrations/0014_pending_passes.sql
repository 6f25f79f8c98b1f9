-- Passes sold or granted at the desk (issue 17, item 7): a product of the fare feed's
-- fare_passes.txt waits for the card like a pending top-up; terminals download the ones not yet
-- activated, and the next validator the card taps writes it into the card's trip state in its
-- fare transaction. The upload of that transaction records the activation here.
create table pending_passes (
    pass_sale_id text primary key,
    card_number text not null references cards,
    fare_pass_id text not null,
    amount_rupiah bigint not null check (amount_rupiah >= 0),  -- 0: a grant, nothing booked
    sold_by text not null,
    reason text not null,
    sold_at timestamptz not null,
    activated_terminal_id text,
    activated_sequence bigint,
    activated_at timestamptz,  -- the card's time of the activating tap
    check ((activated_terminal_id is null) = (activated_at is null))
);
create index pending_passes_waiting on pending_passes (sold_at) where activated_at is null;
create index pending_passes_card on pending_passes (card_number);
