-- Records the back office does not believe as their terminal reported them (a sale from a
-- validator, a POS reporting another merchant's sale): stored in card_records with the outcome
-- 'quarantined' and listed here with why, until staff resolve them. What the card paid is
-- booked from its purse to suspense, never to the terminal's party.

create table quarantined_records (
    terminal_id text not null,
    sequence bigint not null,
    reason text not null,
    detail text not null,
    quarantined_at timestamptz not null,
    resolved_by text,
    resolved_at timestamptz,
    resolution_note text,
    primary key (terminal_id, sequence),
    foreign key (terminal_id, sequence) references card_records (terminal_id, sequence)
);

create index quarantined_records_open on quarantined_records (quarantined_at)
    where resolved_at is null;
