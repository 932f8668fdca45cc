//! Versioned schema migrations, tracked by SQLite's `user_version`.
//!
//! A migration that has been released is never edited, not even to fix a comment: databases
//! created by that release already ran it, and `user_version` tells them only that it ran, not
//! what it said. Every change, however small, goes into a new file with the next number. The
//! tests below hold this: the released files keep their recorded digests, and a database
//! created by the previous release (`migrations/testdata`) migrates and keeps its data.
//!
//! They run with the projection file attached and its schema in place (see `projection_db`):
//! 0007 moves the customers there.

use rusqlite_migration::{M, Migrations};
use std::sync::LazyLock;

/// The migrations in order; a database at `user_version` N has run the first N.
const FILES: [(&str, &str); 7] = [
    (
        "0001_event_log.sql",
        include_str!("migrations/0001_event_log.sql"),
    ),
    (
        "0002_readiness_probe.sql",
        include_str!("migrations/0002_readiness_probe.sql"),
    ),
    (
        "0003_customer_order_and_retention.sql",
        include_str!("migrations/0003_customer_order_and_retention.sql"),
    ),
    (
        "0004_sync_source.sql",
        include_str!("migrations/0004_sync_source.sql"),
    ),
    (
        "0005_readiness_ballast.sql",
        include_str!("migrations/0005_readiness_ballast.sql"),
    ),
    (
        "0006_instant_columns.sql",
        include_str!("migrations/0006_instant_columns.sql"),
    ),
    (
        "0007_projection_file.sql",
        include_str!("migrations/0007_projection_file.sql"),
    ),
];

pub static MIGRATIONS: LazyLock<Migrations<'static>> =
    LazyLock::new(|| Migrations::new(FILES.iter().map(|(_, sql)| M::up(sql)).collect()));

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;
    use sha2::{Digest, Sha256};

    /// SHA-256 of every released migration, as released. A mismatch means a released migration
    /// was edited: put the change in a new migration instead and restore the file.
    const RELEASED: [(&str, &str); 2] = [
        (
            "0001_event_log.sql",
            "1076eb8e5abba9a04c5c5dcf713faa80e5e3ec91ca81acab284d755a2dbdd8ef",
        ),
        (
            "0002_readiness_probe.sql",
            "c5af21b24ca5bc77d5e986efc788d40370134dad8680170a3f14cf522de82e67",
        ),
    ];

    /// A database as the release with migrations 0001 and 0002 created it.
    const RELEASED_DATABASE: &str = include_str!("migrations/testdata/released-0002.sql");

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// An empty database in memory with an empty projection attached, as the store opens them.
    fn database() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute("ATTACH DATABASE ':memory:' AS projection", [])
            .unwrap();
        super::super::projection_db::prepare_schema(&conn).unwrap();
        conn
    }

    #[test]
    fn created_times_already_projected_are_backfilled_as_instants() {
        let mut conn = database();
        MIGRATIONS.to_version(&mut conn, 5).unwrap();
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
    fn every_migration_applies_to_a_new_database() {
        let mut conn = database();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM main.sqlite_master WHERE name = 'customers'"
            ),
            0,
            "the customers live in the projection file only"
        );
        assert_eq!(count(&conn, "SELECT log_position FROM projection.state"), 0);
    }

    #[test]
    fn released_migrations_are_never_edited() {
        for (name, digest) in RELEASED {
            let (_, sql) = FILES.iter().find(|(file, _)| *file == name).unwrap();
            assert_eq!(
                hex(&Sha256::digest(sql.as_bytes())),
                digest,
                "{name} was released and must not change: add a new migration instead"
            );
        }
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = database();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let again: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, FILES.len() as i64);
        assert_eq!(again, version);
    }

    #[test]
    fn a_database_of_the_previous_release_migrates_and_keeps_its_data() {
        let mut conn = database();
        conn.execute_batch(RELEASED_DATABASE).unwrap();
        let events = count(&conn, "SELECT COUNT(*) FROM events");
        let customers = count(&conn, "SELECT COUNT(*) FROM customers");
        let owed = count(&conn, "SELECT COUNT(*) FROM handler_deliveries");
        let projection: Vec<(String, Option<i64>, Option<String>)> = conn
            .prepare("SELECT id, revision, merged_into FROM customers ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(events > 10 && customers > 3 && owed > 5);

        MIGRATIONS.to_latest(&mut conn).unwrap();

        assert_eq!(count(&conn, "SELECT COUNT(*) FROM events"), events);
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM handler_deliveries"),
            owed
        );
        let after: Vec<(String, Option<i64>, Option<String>)> = conn
            .prepare("SELECT id, revision, merged_into FROM customers ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(after, projection);
        assert_eq!(
            count(&conn, "SELECT log_position FROM projection.state"),
            count(&conn, "SELECT MAX(id) FROM events"),
            "the moved projection reflects the whole log"
        );
        // The merge (carol into alice) touches both customers, and so holds both back.
        let merge_customers: Vec<String> = conn
            .prepare(
                "SELECT t.customer_id FROM event_customers t JOIN events e ON e.id = t.event_id
                 WHERE e.event_type = 'customer-merged' ORDER BY t.customer_id",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(merge_customers, ["cus_alice_01", "cus_carol_03"]);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM handler_holds h JOIN events e ON e.id = h.event_id
                 WHERE e.event_type = 'customer-merged'"
            ),
            2
        );
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM handler_holds"),
            owed + 1,
            "every owed event holds its customers"
        );
    }
}
