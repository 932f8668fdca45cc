-- One row that readiness checks rewrite, proving the database accepts a write.
CREATE TABLE probe (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_ms INTEGER NOT NULL
);
