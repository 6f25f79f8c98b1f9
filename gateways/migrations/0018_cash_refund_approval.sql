-- A refund due paid in cash at the counter above the service's refund limit (setting
-- `refund_limit_rupiah`, as complaints' refunds) waits for a supervisor's approval, and the
-- supervisor who approves it is not the one who pays it out: the cash leaves a drawer on one
-- person's word only below the limit.
alter table top_up_refunds
    add column approved_by text,
    add column approved_at timestamptz,
    add check ((approved_by is null) = (approved_at is null));
