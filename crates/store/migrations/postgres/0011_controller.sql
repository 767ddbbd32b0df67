-- The controller's state (crates/store/src/controller): its plans and its audit log. Every
-- database gets these tables; only the controller's own database uses them.

-- One row per plan, rewritten whole at every change (the body is the controller's JSON; the
-- store never reads inside it). `state` repeats the body's state name for operators' queries.
CREATE TABLE controller_plan (
    id TEXT PRIMARY KEY CONSTRAINT controller_plan_id_named CHECK (length(id) BETWEEN 1 AND 200),
    state TEXT NOT NULL CONSTRAINT controller_plan_state_named CHECK (length(state) BETWEEN 1 AND 100),
    body_json TEXT NOT NULL,
    -- The controller's clock at the last change (microseconds since the epoch).
    updated_at_us BIGINT NOT NULL CONSTRAINT controller_plan_updated_at_us_not_negative CHECK (updated_at_us >= 0)
);

-- The audit log: every proposal, approval, step and outcome, in the order committed. `seq` is
-- gap-free from 1: each commit appends max(seq) + 1, ... while it holds the table's EXCLUSIVE
-- lock (a sequence would leave gaps behind rolled-back transactions).
CREATE TABLE controller_audit (
    seq BIGINT PRIMARY KEY CONSTRAINT controller_audit_seq_positive CHECK (seq >= 1),
    -- The controller's clock when it happened (microseconds since the epoch).
    at_us BIGINT NOT NULL CONSTRAINT controller_audit_at_us_not_negative CHECK (at_us >= 0),
    kind TEXT NOT NULL CONSTRAINT controller_audit_kind_named CHECK (length(kind) BETWEEN 1 AND 100),
    -- The plan the record is about, if any.
    plan TEXT NULL CONSTRAINT controller_audit_plan_named CHECK (plan IS NULL OR length(plan) BETWEEN 1 AND 200),
    body_json TEXT NOT NULL
);
CREATE INDEX controller_audit_plan ON controller_audit (plan);

-- Append-only in the database itself: not even a client with write privileges can rewrite or
-- erase what was audited through SQL. TRUNCATE skips row triggers, so it has its own.
CREATE FUNCTION controller_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'controller_audit is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER controller_audit_no_update_or_delete BEFORE UPDATE OR DELETE ON controller_audit
    FOR EACH ROW EXECUTE FUNCTION controller_audit_append_only();

CREATE TRIGGER controller_audit_no_truncate BEFORE TRUNCATE ON controller_audit
    FOR EACH STATEMENT EXECUTE FUNCTION controller_audit_append_only();
