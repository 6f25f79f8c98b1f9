-- Cash counters: each closed shift of a cashier's drawer, what the books expected in it and what
-- was counted. The ledger holds the money (the drawer's account, the cash office's, and any
-- difference in suspense); this row makes a repeated close answer the same and names the shift.
create table counter_shifts (
    cashier text not null,
    shift_id text not null check (length(shift_id) between 1 and 64),
    expected_rupiah bigint not null,
    counted_rupiah bigint not null check (counted_rupiah >= 0),
    closed_by text not null,
    closed_at timestamptz not null,
    primary key (cashier, shift_id)
);
