-- Fewer pages written per transfer by a participant (issue 14; the SQLite migration of the
-- same number says more). Nothing looks a transaction up by its id (reads go by offset), so
-- the unique index on it only cost an index page per transaction.
ALTER TABLE participant_transactions
    DROP CONSTRAINT IF EXISTS participant_transactions_transaction_id_key;
