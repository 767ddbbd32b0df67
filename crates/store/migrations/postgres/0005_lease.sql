-- The replica lease of a replicated node; see crates/store/src/lease.rs for the contract.

CREATE TABLE replica_lease (
    -- The replicated node, e.g. `participant1`: one row per node, shared by its replicas.
    node TEXT PRIMARY KEY,
    -- The fencing epoch: bumped on every takeover, never reset (not even by a release), so a
    -- deposed active's writes can never match it again.
    epoch BIGINT NOT NULL,
    -- The active replica and its advertised endpoint; NULL after a release.
    holder TEXT NULL,
    holder_endpoint TEXT NULL,
    -- The holder's clock at its last renewal (microseconds since the epoch).
    renewed_at_us BIGINT NOT NULL
);
