-- Passes sold for cash at the counter (issue 17, item 7): a priced product of the fare feed is
-- paid into the seller's cash drawer and booked drawer -> the operator's revenue (code
-- pass_sale). The counter's receipt makes a repeated request answer the first sale; a sale not
-- yet activated may be cancelled, its cash given back from the canceller's drawer, and it
-- leaves the terminals' list.
alter table pending_passes
    add column receipt_id text unique,  -- the counter's receipt (null: a grant made without one)
    add column drawer text,  -- the drawer that took the cash (drawer:USERNAME); null: a grant
    add column operator_id text references operators,  -- whose revenue the sale is
    add column cancelled_at timestamptz,
    add column cancelled_by text,
    add column cancel_reason text,
    add check ((drawer is null) = (amount_rupiah = 0)),
    add check ((drawer is null) = (operator_id is null)),
    add check ((cancelled_at is null) = (cancelled_by is null));
drop index pending_passes_waiting;
create index pending_passes_waiting on pending_passes (sold_at)
    where activated_at is null and cancelled_at is null;
