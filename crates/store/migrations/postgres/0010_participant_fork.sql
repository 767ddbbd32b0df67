-- Fork detection and repair on the participant (crates/store/src/participant, docs/operations.md
-- "Fork after a region loss"). Numbered 0010 to leave room for other work's migrations.

-- The verdict that committed each transaction: a fork before it loses the commit. NULL on rows
-- written before this column (read as the request time).
ALTER TABLE participant_transactions ADD COLUMN committed_at BIGINT;
CREATE INDEX participant_transactions_committed ON participant_transactions (committed_at);

-- Recent batch boundaries at which no request awaited its verdict: the points a fork repair
-- can rewind the participant to (its state there is its contracts, transactions and
-- completions up to ledger_end, with nothing pending). Pruned to a recent window.
CREATE TABLE participant_quiet_points (
    checkpoint BIGINT PRIMARY KEY,
    ledger_end BIGINT NOT NULL
);

-- The fork this participant detected, at most one: the repair command refuses without it.
CREATE TABLE participant_fork (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_processed BIGINT,
    -- The last event both histories share; NULL with fork_point_known = 1: none at all.
    fork_point BIGINT,
    fork_point_known INTEGER NOT NULL,
    detected_at BIGINT NOT NULL,
    reason TEXT NOT NULL
);
