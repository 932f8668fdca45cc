//! Versioned schema migrations, tracked by SQLite's `user_version`.

use rusqlite_migration::{M, Migrations};
use std::sync::LazyLock;

pub static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        M::up(include_str!("migrations/0001_event_log.sql")),
        M::up(include_str!("migrations/0002_readiness_probe.sql")),
        M::up(include_str!("migrations/0005_instant_columns.sql")),
    ])
});

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    const MIGRATIONS_COUNT: i64 = 3;

    #[test]
    fn created_times_already_projected_are_backfilled_as_instants() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_version(&mut conn, 2).unwrap();
        conn.execute_batch(
            "INSERT INTO customers (id, snapshot, created_time) VALUES
                 ('a', '{}', '2017-05-26T18:59:51Z'),
                 ('b', '{}', '2017-05-26T18:59:51.5Z'),
                 ('c', '{}', '2017-05-26 18:59:51'),
                 ('d', '{}', '2017-05-26 20:59:51+02:00'),
                 ('e', '{}', 'yesterday'),
                 ('f', '{}', '2457000.5'),
                 ('g', '{}', NULL);",
        )
        .unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let backfilled: Vec<(String, Option<i64>)> = conn
            .prepare("SELECT id, created_ms FROM customers ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let second = 1_495_825_191_000;
        assert_eq!(
            backfilled,
            vec![
                ("a".into(), Some(second)),
                ("b".into(), Some(second + 500)),
                ("c".into(), Some(second)),
                ("d".into(), Some(second)),
                ("e".into(), None),
                ("f".into(), None),
                ("g".into(), None),
            ]
        );
    }

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
