-- Whose database this is: the node that recorded itself on first use (see
-- crates/store/src/owner.rs). Every later start of a node checks this row before it takes a
-- lease, loads state or writes, and refuses a database that belongs to another node.

CREATE TABLE database_owner (
    -- Always 1: the table holds one row.
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- sequencer, topology-manager, mediator or participant.
    node_kind TEXT NOT NULL,
    -- The participant id, the mediator's or topology manager's member id, or the sequencer's
    -- name (shared by its instances).
    node_id TEXT NOT NULL,
    -- The fingerprint of the synchronizer owner's public key; NULL for a sequencer without
    -- an owner key.
    synchronizer_id TEXT NULL,
    -- The claiming node's clock at the claim (microseconds since the epoch), for operators.
    claimed_at_us INTEGER NOT NULL
);
