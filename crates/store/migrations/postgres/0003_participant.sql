-- The participant's tables; see crates/store/src/participant.rs for the data model. Every
-- table is prefixed so that the component schemas can share one migration sequence.

-- One row: the last processed sequencer event and the last assigned ledger offset.
CREATE TABLE participant_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checkpoint BIGINT,
    ledger_end BIGINT NOT NULL
);

-- Contracts with a stakeholder hosted here; archived ones keep their row (with the offset).
CREATE TABLE participant_contracts (
    contract_id TEXT PRIMARY KEY,
    template TEXT NOT NULL,
    payload TEXT NOT NULL,
    signatories TEXT NOT NULL,
    observers TEXT NOT NULL,
    created_offset BIGINT NOT NULL,
    archived_offset BIGINT
);

-- The active contract set is read at start-up and by GetActiveContracts.
CREATE INDEX participant_contracts_active ON participant_contracts (created_offset)
    WHERE archived_offset IS NULL;

CREATE TABLE participant_transactions (
    ledger_offset BIGINT PRIMARY KEY,
    transaction_id TEXT NOT NULL UNIQUE,
    request_id BIGINT NOT NULL,
    user_id TEXT,
    command_id TEXT,
    informees TEXT NOT NULL,
    tree TEXT NOT NULL
);

CREATE TABLE participant_completions (
    ledger_offset BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    act_as TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    status_code BIGINT NOT NULL,
    message TEXT NOT NULL,
    transaction_id TEXT,
    record_time BIGINT NOT NULL
);

CREATE INDEX participant_completions_user ON participant_completions (user_id, ledger_offset);

-- Command deduplication by change key: an in-flight marker (written before the submission is
-- sent) or the committed outcome, kept until expires_at.
CREATE TABLE participant_dedup (
    change_key TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    act_as TEXT NOT NULL,
    submission_id TEXT NOT NULL,
    state TEXT NOT NULL,
    max_sequencing_time BIGINT NOT NULL,
    dedup_period_us BIGINT NOT NULL,
    transaction_id TEXT,
    ledger_offset BIGINT,
    expires_at BIGINT
);

-- Requests validated but without verdict yet, so that a restart can finish them.
CREATE TABLE participant_pending (
    request_id BIGINT PRIMARY KEY,
    record TEXT NOT NULL
);
