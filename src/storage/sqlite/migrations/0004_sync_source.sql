-- Snapshots fetched from Rebilly's Customers API by `sync` are events of their own source, so
-- that a rebuild re-reads them as snapshots (never as webhook bodies) and a webhook body can
-- never claim that source.
ALTER TABLE events ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook'
    CHECK (source IN ('webhook', 'sync'));

-- Where the last sync of each account ended: its high-water mark over `updatedTime`, written in
-- the same transaction as the page it covers, so an interrupted sync resumes without a gap.
CREATE TABLE sync_cursors (
    scope      TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
