-- Snapshots of a stream's fold (events/src/lib.rs, `EventStore::write_snapshot`): the
-- state a write side made of the stream up to `version`, kept so that a long stream is
-- not read whole on every command. Derived data: deleting a row (or the table's rows)
-- only costs a full read the next time. `name` says which fold, and its shape's version.
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    version   BIGINT NOT NULL,
    state     JSONB  NOT NULL,
    PRIMARY KEY (stream_id, name)
);
