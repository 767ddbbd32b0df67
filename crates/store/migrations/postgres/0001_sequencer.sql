-- The sequencer's tables; see crates/store/src/sequencer.rs for the data model.

CREATE TABLE members (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    public_key BYTEA NOT NULL,
    registered_at BIGINT NOT NULL,
    acknowledged BIGINT
);

CREATE TABLE events (
    ts BIGINT PRIMARY KEY,
    instance INTEGER NOT NULL,
    sender BIGINT NOT NULL,
    message_id TEXT NOT NULL,
    batch BYTEA NOT NULL
);

-- Lets a restarting instance find what it wrote above its watermark without scanning every
-- other instance's events written since.
CREATE INDEX events_instance_ts ON events (instance, ts);

-- A member's stream is a range scan of this primary key.
CREATE TABLE event_recipients (
    member BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (member, ts)
);

CREATE TABLE message_ids (
    sender BIGINT NOT NULL,
    message_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (sender, message_id)
);

CREATE INDEX message_ids_expires_at ON message_ids (expires_at);

CREATE TABLE sequencer_instances (
    idx INTEGER PRIMARY KEY,
    watermark BIGINT NOT NULL,
    online BOOLEAN NOT NULL
);
