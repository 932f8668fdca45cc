-- The event log: every authenticated delivery, in arrival order.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    received_ms  INTEGER NOT NULL,
    event_type   TEXT,
    customer_id  TEXT,
    revision     INTEGER,
    status       TEXT NOT NULL
                 CHECK (status IN ('applied', 'stale', 'duplicate', 'ignored', 'rejected')),
    error        TEXT,
    error_field  TEXT,
    duplicate_of INTEGER REFERENCES events (id),
    body_size    INTEGER NOT NULL,
    -- NULL once pruned by retention, or for a byte-identical redelivery (see duplicate_of).
    body         BLOB
);
CREATE INDEX events_by_customer ON events (customer_id, id) WHERE customer_id IS NOT NULL;
CREATE INDEX events_by_status ON events (status, id);
CREATE INDEX events_by_received ON events (received_ms) WHERE body IS NOT NULL;

-- Dedupe through a constraint: the SHA-256 of each accepted body, and for customer events the
-- SHA-256 of the (event type, customer id, revision) they describe. The first event to claim a
-- key owns it.
CREATE TABLE dedupe_keys (
    key      BLOB PRIMARY KEY,
    event_id INTEGER NOT NULL
) WITHOUT ROWID;

-- The customer projection: the snapshot of the highest revision seen, plus merge and Experian
-- state. The columns after `experian_event_id` are copies of snapshot fields for queries.
-- List indexes cover exactly the listed customers (the condition every list query carries),
-- so that counts and sorted pages are answered from the index alone.
CREATE TABLE customers (
    id                TEXT PRIMARY KEY,
    revision          INTEGER,
    updated_ms        INTEGER,
    event_id          INTEGER,
    snapshot          TEXT,
    merged_into       TEXT,
    experian_check    TEXT,
    experian_event_id INTEGER,
    email             TEXT,
    first_name        TEXT,
    last_name         TEXT,
    company           TEXT,
    country           TEXT,
    city              TEXT,
    website_id        TEXT,
    created_time      TEXT,
    updated_time      TEXT,
    search            TEXT
);
CREATE INDEX customers_by_email ON customers (email) WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_last_name ON customers (last_name) WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_created ON customers (created_time) WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_updated ON customers (updated_time) WHERE merged_into IS NULL AND snapshot IS NOT NULL;
CREATE INDEX customers_by_country ON customers (country, created_time) WHERE merged_into IS NULL AND snapshot IS NOT NULL;

-- Asynchronous handlers: a cursor each over the event log, and the events still owed to them.
CREATE TABLE handler_cursors (
    handler  TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE handler_deliveries (
    handler         TEXT NOT NULL,
    event_id        INTEGER NOT NULL REFERENCES events (id),
    customer_id     TEXT,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'dead')),
    attempts        INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_error      TEXT,
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (handler, event_id)
) WITHOUT ROWID;
CREATE INDEX handler_deliveries_by_customer
    ON handler_deliveries (handler, customer_id, event_id);
