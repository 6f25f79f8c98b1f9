-- Fleet packages (bus_terminals.packages): a fare feed, key versions, the deny list or terminal
-- settings, each version signed by the back office's fleet key when published (`ksh fleet
-- publish`) and stored here as signed: the manifest's exact bytes, its signature, the content.
-- The HTTP service only relays them; it holds no signing key. Nothing is edited in place: a
-- change is a new version.
create table fleet_packages (
    kind text not null check (kind in ('fare_feed', 'key_version', 'deny_list', 'settings')),
    version bigint not null check (version > 0),
    effective_at timestamptz not null,
    published_at timestamptz not null,
    manifest bytea not null,
    signature text not null,
    content bytea not null,
    content_sha256 text not null,
    label text not null default '',
    published_by text not null,
    primary key (kind, version)
);

-- What each terminal last reported on sync, per kind: the version it runs, the newest it has
-- staged, and the newest it refused (with why). Written only when it changes.
create table terminal_packages (
    terminal_id text not null references terminals,
    kind text not null,
    running_version bigint not null default 0,
    staged_version bigint not null default 0,
    refused_version bigint not null default 0,
    refused_reason text not null default '',
    reported_at timestamptz not null,
    primary key (terminal_id, kind)
);
