-- The controller's state (crates/store/src/controller): its plans and its audit log. Every
-- database gets these tables; only the controller's own database uses them.

-- One row per plan, rewritten whole at every change (the body is the controller's JSON; the
-- store never reads inside it). `state` repeats the body's state name for operators' queries.
CREATE TABLE controller_plan (
    id TEXT PRIMARY KEY CONSTRAINT controller_plan_id_named CHECK (length(id) BETWEEN 1 AND 200),
    state TEXT NOT NULL CONSTRAINT controller_plan_state_named CHECK (length(state) BETWEEN 1 AND 100),
    body_json TEXT NOT NULL,
    -- The controller's clock at the last change (microseconds since the epoch).
    updated_at_us INTEGER NOT NULL CONSTRAINT controller_plan_updated_at_us_not_negative CHECK (updated_at_us >= 0)
);

-- The audit log: every proposal, approval, step and outcome, in the order committed. `seq` is
-- gap-free from 1: each commit appends max(seq) + 1, ... under the file's write lock.
CREATE TABLE controller_audit (
    seq INTEGER PRIMARY KEY CONSTRAINT controller_audit_seq_positive CHECK (seq >= 1),
    -- The controller's clock when it happened (microseconds since the epoch).
    at_us INTEGER NOT NULL CONSTRAINT controller_audit_at_us_not_negative CHECK (at_us >= 0),
    kind TEXT NOT NULL CONSTRAINT controller_audit_kind_named CHECK (length(kind) BETWEEN 1 AND 100),
    -- The plan the record is about, if any.
    plan TEXT NULL CONSTRAINT controller_audit_plan_named CHECK (plan IS NULL OR length(plan) BETWEEN 1 AND 200),
    body_json TEXT NOT NULL
);
CREATE INDEX controller_audit_plan ON controller_audit (plan);

-- Append-only in the database itself: not even a client with the file's write access can
-- rewrite or erase what was audited through SQL. (A DELETE without WHERE would otherwise use
-- SQLite's truncate optimization; a table with triggers never does.)
CREATE TRIGGER controller_audit_no_update BEFORE UPDATE ON controller_audit
BEGIN
    SELECT RAISE(ABORT, 'controller_audit is append-only: UPDATE refused');
END;

CREATE TRIGGER controller_audit_no_delete BEFORE DELETE ON controller_audit
BEGIN
    SELECT RAISE(ABORT, 'controller_audit is append-only: DELETE refused');
END;
