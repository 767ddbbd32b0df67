-- The sequencer's tables; see crates/store/src/sequencer.rs for the data model.

CREATE TABLE members (
    -- AUTOINCREMENT: a member's seq is never reused, even after a delete, because events and
    -- acknowledgements refer to it.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    public_key BLOB NOT NULL,
    registered_at INTEGER NOT NULL,
    acknowledged INTEGER
);

CREATE TABLE events (
    ts INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL,
    sender INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    batch BLOB NOT NULL
);

-- Lets a restarting instance find what it wrote above its watermark without scanning every
-- other instance's events written since.
CREATE INDEX events_instance_ts ON events (instance, ts);

-- A member's stream is a range scan of this primary key.
CREATE TABLE event_recipients (
    member INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (member, ts)
) WITHOUT ROWID;

CREATE TABLE message_ids (
    sender INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (sender, message_id)
) WITHOUT ROWID;

CREATE INDEX message_ids_expires_at ON message_ids (expires_at);

CREATE TABLE sequencer_instances (
    idx INTEGER PRIMARY KEY,
    watermark INTEGER NOT NULL,
    online INTEGER NOT NULL
);
