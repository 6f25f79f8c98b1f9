-- Staff resolve a quarantined record: a supervisor asks to release it (book what suspense holds
-- for it to where it would have gone) or to write it off (suspense against the loss account);
-- a second supervisor confirms when money moves (four eyes). The record's row keeps who asked
-- and who confirmed, when and why; every step is also in staff_actions.
alter table quarantined_records
    add column state text not null default 'open'
        check (state in ('open', 'release_requested', 'write_off_requested', 'released',
                         'written_off')),
    add column requested_by text,
    add column requested_at timestamptz,
    add column request_note text,
    add column approved_by text,
    add column resolution_rupiah bigint,
    add column resolution_transfer_ids uuid[];

create index quarantined_records_terminal on quarantined_records (terminal_id, quarantined_at);

-- A terminal whose records keep landing in quarantine is suspended (automatically, or by
-- staff): its uploads and downloads are refused until a supervisor resumes it. What it uploaded
-- before stays as it was. Revoked stays for good (a new key registers it again).
alter table terminals drop constraint terminals_status_check;
alter table terminals
    add constraint terminals_status_check check (status in ('active', 'suspended', 'revoked')),
    add column suspended_at timestamptz,
    add column suspended_by text,  -- 'automatic' or the supervisor's user name
    add column suspended_reason text;
