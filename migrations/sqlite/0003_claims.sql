-- Claims record their holder (events/src/work.rs): the id of the store that took them.
-- One process owns an embedded store, so a claim held by another id is a previous run's,
-- and is taken over at once. NULL: not held (unclaimed, or put off until `claimed_until` /
-- `ready_at` after a failed try).
ALTER TABLE due_items ADD COLUMN claimed_by INTEGER;
CREATE INDEX IF NOT EXISTS due_items_holder ON due_items (claimed_by) WHERE claimed_by IS NOT NULL;

ALTER TABLE outbox ADD COLUMN claimed_by INTEGER;
CREATE INDEX IF NOT EXISTS outbox_holder ON outbox (claimed_by) WHERE claimed_by IS NOT NULL;
