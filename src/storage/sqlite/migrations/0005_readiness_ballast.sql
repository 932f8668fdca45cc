-- Readiness writes a delivery-sized row here and deletes the previous one in the same
-- transaction, so that it needs fresh pages (and writes as much to the WAL) as a delivery
-- does: a full disk or a capped database then fails it as it fails deliveries. The single
-- small row of `probe` could be rewritten in place when no delivery fitted any more.
CREATE TABLE readiness_ballast (
    id         INTEGER PRIMARY KEY,
    written_ms INTEGER NOT NULL,
    ballast    BLOB NOT NULL
);
DROP TABLE probe;
