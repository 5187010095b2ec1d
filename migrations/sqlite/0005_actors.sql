-- What one actor (a user) caused, by category and in log order: an export reads a user's
-- messages without walking everyone's (events/src/lib.rs, `EventStore::read_by_actor`).
-- SQLite uses an expression index only for the same expression, so the queries spell it so.
CREATE INDEX IF NOT EXISTS events_actor_category_position
    ON events (json_extract(metadata, '$.actor'), category, position);
