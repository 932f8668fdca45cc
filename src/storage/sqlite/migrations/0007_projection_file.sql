-- The customer projection, the dedupe index and the index by customer move to their own file,
-- attached as `projection` (created beforehand from its own schema), so that only the event log
-- is synced when a delivery commits: its writes are appends, where the others' land anywhere in
-- their B-trees. What they hold so far moves with them, and the position they reflect is the
-- end of the log.
INSERT OR REPLACE INTO projection.customers (
    id, revision, updated_ms, event_id, snapshot, merged_into, experian_check,
    experian_event_id, email, first_name, last_name, company, country, city, website_id,
    created_time, updated_time, search, created_ms, listed)
SELECT id, revision, updated_ms, event_id, snapshot, merged_into, experian_check,
       experian_event_id, email, first_name, last_name, company, country, city, website_id,
       created_time, updated_time, search, created_ms,
       CASE WHEN merged_into IS NULL AND snapshot IS NOT NULL THEN 1 END
FROM main.customers;
DROP TABLE main.customers;

-- From now on each event that claims a dedupe key keeps it in its row. The keys claimed before
-- stay in the log as they are (an event of an older release may own two), never written again,
-- so that the index can always be rebuilt from the log.
ALTER TABLE main.events ADD COLUMN dedupe_key BLOB;
ALTER TABLE main.dedupe_keys RENAME TO earlier_dedupe_keys;
INSERT OR IGNORE INTO projection.dedupe_keys (key, event_id)
    SELECT key, event_id FROM main.earlier_dedupe_keys;

-- The log's index by customer moves too, as a table of its own.
INSERT OR IGNORE INTO projection.customer_events (customer_id, event_id)
    SELECT customer_id, id FROM main.events WHERE customer_id IS NOT NULL;
DROP INDEX main.events_by_customer;

UPDATE projection.state SET log_position = (SELECT COALESCE(MAX(id), 0) FROM main.events);
