-- The four-eyes limits (`gateways.four_eyes`): above one, money moves only once a second
-- person agrees. One home for each, read by every `ksh serve` process and every `ksh`
-- command; the newest confirmed row of a limit is in force (none: the default). A lowering is
-- confirmed by the supervisor who asks for it; a raising waits for a second supervisor.
create table four_eyes_limits (
    change_id bigserial primary key,
    limit_name text not null check (limit_name in ('refund', 'write_off')),
    limit_rupiah bigint not null check (limit_rupiah >= 0),
    asked_by text not null,
    asked_at timestamptz not null,
    reason text not null,
    confirmed_by text,
    confirmed_at timestamptz,
    check ((confirmed_by is null) = (confirmed_at is null))
);
create index four_eyes_limits_newest on four_eyes_limits (limit_name, change_id desc);
