-- The customer projection moves to its own file, attached as `projection` (created beforehand
-- from its own schema), so that only the event log is synced when a delivery commits. The rows
-- projected so far move with it, and the position it reflects is the end of the log.
INSERT OR REPLACE INTO projection.customers (
    id, revision, updated_ms, event_id, snapshot, merged_into, experian_check,
    experian_event_id, email, first_name, last_name, company, country, city, website_id,
    created_time, updated_time, search, created_ms)
SELECT id, revision, updated_ms, event_id, snapshot, merged_into, experian_check,
       experian_event_id, email, first_name, last_name, company, country, city, website_id,
       created_time, updated_time, search, created_ms
FROM main.customers;
UPDATE projection.state SET log_position = (SELECT COALESCE(MAX(id), 0) FROM main.events);
DROP TABLE main.customers;
