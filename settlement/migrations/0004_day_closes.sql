-- Each service day closed, with batches or without (a day with nothing owed makes none), so
-- `ksh settle status` can tell a quiet day that was closed from a day never closed. Days
-- closed before this table existed are known by their batches.
create table settlement_day_closes (
    service_day date primary key,
    first_closed_at timestamptz not null,
    last_closed_at timestamptz not null
);
insert into settlement_day_closes (service_day, first_closed_at, last_closed_at)
select service_day, min(created_at), max(created_at) from settlement_batches group by service_day;
