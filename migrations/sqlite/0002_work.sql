-- Work appends leave behind, written in the same transaction as their events
-- (events/src/work.rs). Times are milliseconds since the Unix epoch.

-- Due items: the scheduler sleeps until the earliest one. A claim hides an item until
-- `claimed_until`; a scheduler that dies lets it run out, and the item is claimed again.
CREATE TABLE IF NOT EXISTS due_items (
    key           TEXT    PRIMARY KEY,
    stream_id     TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    due_at        INTEGER NOT NULL,
    claimed_until INTEGER
);
CREATE INDEX IF NOT EXISTS due_items_unclaimed ON due_items (due_at) WHERE claimed_until IS NULL;
CREATE INDEX IF NOT EXISTS due_items_claimed ON due_items (claimed_until) WHERE claimed_until IS NOT NULL;

-- The outbox: messages the workers send after commit. `ready_at` is the next try, or the
-- end of a worker's claim; `attempts` counts the claims.
CREATE TABLE IF NOT EXISTS outbox (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    queued_at  INTEGER NOT NULL,
    state      TEXT    NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'dead')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    ready_at   INTEGER NOT NULL,
    last_error TEXT,
    sent_at    INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (kind, ready_at) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (queued_at) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at) WHERE state = 'sent';
