-- Password guessing, counted where every back-office process sees it and a restart keeps it:
-- one row per user name and one per client address. A password check is counted before it
-- runs (one UPDATE ... RETURNING, so concurrent attempts queue on the row); at most a limit of
-- them run per window, which starts with the first attempt counted. A right password clears
-- its user name's row and gives its address's attempt back.
create table settlement_login_attempts (
    subject_kind text not null check (subject_kind in ('user', 'address')),
    subject text not null check (length(subject) between 1 and 64),
    window_started_at timestamptz not null,
    attempts integer not null check (attempts >= 0),
    primary key (subject_kind, subject)
);
create index settlement_login_attempts_window on settlement_login_attempts (window_started_at);

-- Sessions say when they began and from where (shown to supervisors, who can end them).
alter table settlement_sessions
    add column created_at timestamptz,
    add column client_address text not null default '';
create index settlement_sessions_username on settlement_sessions (username);
