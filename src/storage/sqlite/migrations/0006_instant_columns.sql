-- Date-times compared as instants. `created_time` and `updated_time` hold RFC 3339 text whose
-- fraction has a variable number of digits (`...:00Z` sorts after `...:00.5Z` as text), so
-- filters and sorts use integer Unix milliseconds instead. `updated_ms` already exists (the
-- ordering rules use it); `created_ms` is new, filled here from the text column for the rows
-- already projected (the daemon fills both for every snapshot it writes from now on).
ALTER TABLE customers ADD COLUMN created_ms INTEGER;

-- Only values that look like a date-time: SQLite would read a bare number as a Julian day.
-- SQLite keeps milliseconds, so rows with finer digits may round differently than the daemon
-- (which rounds down); Rebilly writes whole seconds.
UPDATE customers
SET created_ms = CAST(round(unixepoch(created_time, 'subsec') * 1000) AS INTEGER)
WHERE created_time GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]:[0-9][0-9]*';

-- The list indexes move from the text columns to the instants; like the others, they cover
-- exactly the listed customers (the condition every list query carries). The country and the
-- id beside the times let a range with a country condition (`country:!FR`) be counted, and a
-- range page sorted by id or broken by id be chosen, from the index alone.
DROP INDEX customers_by_created;
DROP INDEX customers_by_updated;
DROP INDEX customers_by_country;
CREATE INDEX customers_by_created_ms ON customers (created_ms, country, id) WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_updated_ms ON customers (updated_ms, id) WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_country_created_ms ON customers (country, created_ms) WHERE merged_into IS NULL AND snapshot IS NOT NULL;
