-- What one actor (a user) caused, by category and in log order: an export reads a user's
-- messages without walking everyone's (events/src/lib.rs, `EventStore::read_by_actor`).
CREATE INDEX IF NOT EXISTS events_actor_category_position
    ON events ((metadata ->> 'actor'), category, position);
