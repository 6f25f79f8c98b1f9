-- Access-token requests already answered, by the SHA-256 of the string their signature covers
-- (`X-CLIENT-KEY|X-TIMESTAMP`): a captured request sent again within the timestamp window gets
-- no second token. A row is kept until its timestamp has left the window; after that the
-- timestamp check refuses the request anyway.
create table snap_used_token_signatures (
    signed_sha256 bytea primary key,
    partner_id text not null references snap_partners (partner_id),
    usable_until timestamptz not null
);
create index snap_used_token_signatures_expiry on snap_used_token_signatures (usable_until);
