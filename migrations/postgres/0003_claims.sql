-- Claims record their holder (events/src/work.rs): the id of the process that took them,
-- which holds a session advisory lock on that id for as long as it lives. A claim whose
-- holder's lock is free is treated as run out, so a crashed process's work is taken over
-- at once rather than when its claims expire. NULL: not held (unclaimed, or put off until
-- `claimed_until` / `ready_at` after a failed try).
ALTER TABLE due_items ADD COLUMN IF NOT EXISTS claimed_by BIGINT;
CREATE INDEX IF NOT EXISTS due_items_holder ON due_items (claimed_by) WHERE claimed_by IS NOT NULL;

ALTER TABLE outbox ADD COLUMN IF NOT EXISTS claimed_by BIGINT;
CREATE INDEX IF NOT EXISTS outbox_holder ON outbox (claimed_by) WHERE claimed_by IS NOT NULL;
