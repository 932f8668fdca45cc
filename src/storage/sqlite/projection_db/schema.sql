-- The customer projection, in its own database file attached as `projection`. It is derived
-- from the event log and never migrated: a file of another schema version is emptied,
-- created again from this text, and caught up from the log.
--
-- The snapshot of the highest revision seen, plus merge and Experian state. The columns after
-- `experian_event_id` are copies of snapshot fields for queries. List indexes cover exactly the
-- listed customers (`listed`, the condition every list query carries), so that counts and
-- sorted pages are answered from the index alone; times are compared as integer Unix milliseconds.
CREATE TABLE projection.customers (
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
    search            TEXT,
    created_ms        INTEGER,
    -- 1 for a customer lists show (a snapshot, not merged away), else NULL. Every list index
    -- carries this condition rather than naming `snapshot`, so that writing a new snapshot
    -- leaves the entries of unchanged keys alone.
    listed            INTEGER
);
CREATE INDEX projection.customers_by_email ON customers (email) WHERE listed = 1;
CREATE INDEX projection.customers_by_last_name ON customers (last_name) WHERE listed = 1;
CREATE INDEX projection.customers_by_created_ms ON customers (created_ms, country, id) WHERE listed = 1;
CREATE INDEX projection.customers_by_updated_ms ON customers (updated_ms, id) WHERE listed = 1;
CREATE INDEX projection.customers_by_country_created_ms ON customers (country, created_ms) WHERE listed = 1;

-- Dedupe through a constraint: the SHA-256 of each accepted body, or for customer events the
-- SHA-256 of the (event type, customer id, revision) they describe. The first event to claim a
-- key owns it. Each owner also keeps its key in its log row (`events.dedupe_key`), so this index
-- is derived like the rest and rebuilt from the log.
CREATE TABLE projection.dedupe_keys (
    key      BLOB PRIMARY KEY,
    event_id INTEGER NOT NULL
) WITHOUT ROWID;

-- The log's events by customer, for listing one customer's events: an index of the log kept
-- here, because its entries land anywhere and the log is written only at its end.
CREATE TABLE projection.customer_events (
    customer_id TEXT NOT NULL,
    event_id    INTEGER NOT NULL,
    PRIMARY KEY (customer_id, event_id)
) WITHOUT ROWID;

-- `log_position`: the id of the newest log event the projection reflects, committed with the
-- changes it covers. `boot_id` and `clean`: the boot of the operating system the daemon last
-- ran under, and whether it stopped cleanly (everything synced); commits are not synced while
-- it runs, so a projection left unclean by another boot may have lost writes anywhere.
CREATE TABLE projection.state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    log_position INTEGER NOT NULL,
    boot_id      TEXT,
    clean        INTEGER NOT NULL
);
INSERT INTO projection.state (id, log_position, boot_id, clean) VALUES (1, 0, NULL, 1);
