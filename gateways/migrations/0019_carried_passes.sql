-- A pass already on a lost card's chip, still running when the card's balance moves to its
-- replacement, is carried to the new card: a Rp 0 sale that names the sale it carries and the
-- day the pass started on the old card, so the new card's next tap writes it to run to the same
-- last day (not a fresh period from that tap).
alter table pending_passes
    add column carried_from text references pending_passes,
    add column from_day date,  -- the pass's first day on the old card, in the feed's time zone
    add check ((carried_from is null) = (from_day is null)),
    add check (carried_from is null or amount_rupiah = 0);
