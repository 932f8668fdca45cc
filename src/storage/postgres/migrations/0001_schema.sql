-- The PostgreSQL backend's schema: the same tables as SQLite's, shared by every daemon that
-- serves the database. Instants are Unix milliseconds, as in SQLite.

CREATE TABLE events (
    -- Assigned in commit order (see the backend's writer), so that a handler's cursor over ids
    -- never passes an event another daemon has not committed yet.
    id                 BIGINT PRIMARY KEY,
    received_ms        BIGINT NOT NULL,
    event_type         TEXT,
    customer_id        TEXT,
    revision           BIGINT,
    status             TEXT NOT NULL
                       CHECK (status IN ('applied', 'stale', 'duplicate', 'ignored', 'rejected')),
    error              TEXT,
    error_field        TEXT,
    duplicate_of       BIGINT,
    body_size          BIGINT NOT NULL,
    -- NULL once pruned by retention, or for a byte-identical redelivery (see duplicate_of).
    body               BYTEA,
    projected_revision BIGINT,
    source             TEXT NOT NULL DEFAULT 'webhook' CHECK (source IN ('webhook', 'sync'))
);
CREATE INDEX events_by_customer ON events (customer_id, id) WHERE customer_id IS NOT NULL;
CREATE INDEX events_by_status ON events (status, id);
CREATE INDEX events_by_received ON events (received_ms) WHERE body IS NOT NULL;

CREATE TABLE dedupe_keys (
    key      BYTEA PRIMARY KEY,
    event_id BIGINT NOT NULL
);

CREATE TABLE customers (
    id                TEXT PRIMARY KEY,
    revision          BIGINT,
    updated_ms        BIGINT,
    event_id          BIGINT,
    snapshot          TEXT,
    merged_into       TEXT,
    experian_check    TEXT,
    experian_event_id BIGINT,
    email             TEXT,
    first_name        TEXT,
    last_name         TEXT,
    company           TEXT,
    country           TEXT,
    city              TEXT,
    website_id        TEXT,
    created_time      TEXT,
    updated_time      TEXT,
    search            TEXT,
    created_ms        BIGINT
);
CREATE INDEX customers_by_email ON customers (email)
    WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_last_name ON customers (last_name)
    WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_created_ms ON customers (created_ms, country, id)
    WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_updated_ms ON customers (updated_ms, id)
    WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_country_created_ms ON customers (country, created_ms)
    WHERE merged_into IS NULL AND snapshot IS NOT NULL;

CREATE TABLE event_customers (
    event_id    BIGINT NOT NULL,
    customer_id TEXT NOT NULL,
    PRIMARY KEY (event_id, customer_id)
);

CREATE TABLE handler_cursors (
    handler  TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);

CREATE TABLE handler_deliveries (
    handler         TEXT NOT NULL,
    event_id        BIGINT NOT NULL REFERENCES events (id),
    customer_id     TEXT,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'dead')),
    attempts        INTEGER NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    last_error      TEXT,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (handler, event_id)
);

CREATE TABLE handler_holds (
    handler     TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    event_id    BIGINT NOT NULL,
    PRIMARY KEY (handler, customer_id, event_id)
);

CREATE TABLE handler_skips (
    handler    TEXT NOT NULL,
    event_id   BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    skipped_ms BIGINT NOT NULL,
    PRIMARY KEY (handler, event_id)
);

CREATE TABLE sync_cursors (
    scope      TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE readiness_ballast (
    id         BIGSERIAL PRIMARY KEY,
    written_ms BIGINT NOT NULL,
    ballast    BYTEA NOT NULL
);
