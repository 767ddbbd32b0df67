-- The topology manager's signed history; see crates/store/src/topology.rs for the data model.

CREATE TABLE topology_transactions (
    -- Gap-free and strictly increasing: the store refuses any serial but highest + 1.
    serial BIGINT PRIMARY KEY,
    -- The exact JSON text the owner signed, and the owner's hex signature over it.
    transaction_json TEXT NOT NULL,
    signature TEXT NOT NULL,
    -- Deadline of the current send attempt: until it passes, a re-send with the same message id
    -- is answered from the sequencer's deduplication; after it, the outcome is read back.
    max_sequencing_time_us BIGINT NOT NULL,
    -- The sequencing timestamp of the topology message; NULL while the intent is unpublished.
    effective_us BIGINT
);
