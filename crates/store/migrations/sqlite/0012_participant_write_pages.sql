-- Fewer database pages written per transfer by a participant (issue 14). Every page a commit
-- changes is written whole to the WAL (and again at the checkpoint), and a random key puts
-- each row of a batch on a page of its own: under load a participant wrote about 24 KB per
-- transfer for about 1 KB of new rows, a third of its WAL frames in the index that kept
-- transaction_id UNIQUE. Nothing looks a transaction up by its id (reads go by offset), so
-- that index is dropped: SQLite cannot drop a UNIQUE constraint in place, hence the copy.
-- (Contracts and deduplication entries are looked up by their random keys, so their indexes
-- stay; WITHOUT ROWID tables for them wrote more, not less.)

CREATE TABLE participant_transactions_0012 (
    ledger_offset INTEGER PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    request_id INTEGER NOT NULL,
    user_id TEXT,
    command_id TEXT,
    informees TEXT NOT NULL,
    tree TEXT NOT NULL,
    committed_at INTEGER
);
INSERT INTO participant_transactions_0012
    (ledger_offset, transaction_id, request_id, user_id, command_id, informees, tree, committed_at)
    SELECT ledger_offset, transaction_id, request_id, user_id, command_id, informees, tree,
           committed_at
    FROM participant_transactions;
DROP TABLE participant_transactions;
ALTER TABLE participant_transactions_0012 RENAME TO participant_transactions;
CREATE INDEX participant_transactions_committed ON participant_transactions (committed_at);
