//! Versioned schema migrations, tracked by SQLite's `user_version`.

use rusqlite_migration::{M, Migrations};
use std::sync::LazyLock;

pub static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        M::up(include_str!("migrations/0001_event_log.sql")),
        M::up(include_str!("migrations/0002_readiness_probe.sql")),
        M::up(include_str!("migrations/0004_sync_source.sql")),
    ])
});

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    const MIGRATIONS_COUNT: i64 = 3;

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let again: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS_COUNT);
        assert_eq!(again, version);
    }
}
