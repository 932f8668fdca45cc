-- A handler's lease: the daemon that works the handler's events until `lease_until_ms` (the
-- database's clock, so that daemons on machines whose clocks disagree still agree on it).
-- Whoever holds it renews it with every pass; once it lapses, another daemon takes it over.
ALTER TABLE handler_cursors
    ADD COLUMN lease_owner    TEXT,
    ADD COLUMN lease_until_ms BIGINT NOT NULL DEFAULT 0;

