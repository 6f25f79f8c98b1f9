-- Staff who call the back office's admin API do it as themselves: one bearer token per person
-- (stored hashed), with the role it was issued for; and one log of what staff did, read by
-- auditors (who, what, on what, why).

create table staff_tokens (
    token_sha256 bytea primary key,
    username text not null check (length(username) between 1 and 64),
    role text not null check (role in ('clerk', 'supervisor', 'auditor')),
    label text not null default '',
    issued_by text not null,
    issued_at timestamptz not null,
    revoked_at timestamptz
);
create index staff_tokens_username on staff_tokens (username);

create table staff_actions (
    action_id bigint generated always as identity primary key,
    at timestamptz not null,
    username text not null,  -- who: a staff user name, or the OS user of a `ksh` command
    role text not null,  -- the role they acted in ('command line' for a `ksh` command)
    action text not null,  -- what, e.g. 'pending_top_up', 'unlock_login', 'revoke_sessions'
    subject text not null,  -- on what: a card, a merchant, a user name
    reason text not null,  -- why, as they said it
    detail jsonb not null default '{}'
);
create index staff_actions_at on staff_actions (at);
