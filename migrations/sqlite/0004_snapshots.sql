-- Snapshots of a stream's fold: see migrations/postgres/0004_snapshots.sql.
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    state     TEXT    NOT NULL,
    PRIMARY KEY (stream_id, name)
);
