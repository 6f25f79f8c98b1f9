-- A pass waiting for its card (sold or granted, not yet activated, not cancelled) follows the
-- card's balance to its replacement: the sale keeps its id, money and receipt, and names the
-- card it was sold for. A terminal not yet synced that meets the old card anyway may still
-- activate it there: the first activation, on either card, wins.
alter table pending_passes add column sold_for_card text references cards;
