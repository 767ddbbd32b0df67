-- The mediator's tables; see crates/store/src/mediator.rs for the data model.

-- In-flight requests: the informee message as received, and when it times out.
CREATE TABLE mediator_requests (
    request_id BIGINT PRIMARY KEY,
    deadline BIGINT NOT NULL,
    informee TEXT NOT NULL
);

-- Valid responses to in-flight requests, at most one per participant.
CREATE TABLE mediator_responses (
    request_id BIGINT NOT NULL,
    participant TEXT NOT NULL,
    response TEXT NOT NULL,
    PRIMARY KEY (request_id, participant)
);

-- Decided requests. `recipients` is the comma-separated member ids the verdict goes to; `sent`
-- turns true once the sequencer acknowledged the verdict's submission.
CREATE TABLE mediator_verdicts (
    request_id BIGINT PRIMARY KEY,
    recipients TEXT NOT NULL,
    verdict TEXT NOT NULL,
    sent BOOLEAN NOT NULL
);

-- A restart looks for verdicts still to send; they are few among many sent ones.
CREATE INDEX mediator_verdicts_unsent ON mediator_verdicts (request_id) WHERE NOT sent;

-- The last sequenced event whose consequences are stored: one row.
CREATE TABLE mediator_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    ts BIGINT NOT NULL
);
