-- Every customer an applied event touches: a merge touches the customer merged away and its
-- target, an Experian check its customer, a created or updated event its customer. Handlers
-- hold an event behind each of them, and retention finds through them the bodies the
-- projection rests on.
CREATE TABLE event_customers (
    event_id    INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    PRIMARY KEY (event_id, customer_id)
) WITHOUT ROWID;
INSERT INTO event_customers (event_id, customer_id)
    SELECT id, customer_id FROM events WHERE status = 'applied' AND customer_id IS NOT NULL;
-- The log kept only a merge's target; the customer merged away is read from the body.
INSERT OR IGNORE INTO event_customers (event_id, customer_id)
    SELECT id, json_extract(CAST(body AS TEXT), '$.duplicatedCustomer.id') FROM events
    WHERE status = 'applied' AND event_type = 'customer-merged' AND body IS NOT NULL
      AND json_valid(CAST(body AS TEXT))
      AND json_type(CAST(body AS TEXT), '$.duplicatedCustomer.id') = 'text';

-- The revision the projection held for the event's customer once the event was applied
-- (NULL when unknown): an event may carry an older snapshot than the projection already has.
ALTER TABLE events ADD COLUMN projected_revision INTEGER;

-- Each customer held by an event a handler still owes: the customer's later events wait
-- behind it. Replaces the single customer of handler_deliveries, which could not say that a
-- merge waits for both of its customers.
CREATE TABLE handler_holds (
    handler     TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    event_id    INTEGER NOT NULL,
    PRIMARY KEY (handler, customer_id, event_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO handler_holds (handler, customer_id, event_id)
    SELECT d.handler, t.customer_id, d.event_id
    FROM handler_deliveries d JOIN event_customers t ON t.event_id = d.event_id;
INSERT OR IGNORE INTO handler_holds (handler, customer_id, event_id)
    SELECT handler, customer_id, event_id FROM handler_deliveries WHERE customer_id IS NOT NULL;
DROP INDEX handler_deliveries_by_customer;

-- Events a handler passed without delivering them, and why (a body pruned before the handler
-- reached it is never dispatched).
CREATE TABLE handler_skips (
    handler    TEXT NOT NULL,
    event_id   INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    skipped_ms INTEGER NOT NULL,
    PRIMARY KEY (handler, event_id)
) WITHOUT ROWID;
