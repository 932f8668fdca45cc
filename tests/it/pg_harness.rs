//! The throwaway PostgreSQL the backend matrix runs on: each test gets its own empty database.

use crate::common::postgres::{absent, fresh_database, with_database};

#[tokio::test]
async fn each_test_gets_its_own_empty_database() {
    let Some(first) = fresh_database().await else {
        return;
    };
    let second = fresh_database().await.expect("the server is still there");
    assert_ne!(first, second, "two tests never share a database");
    for url in [&first, &second] {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("the new database accepts connections");
        let driver = tokio::spawn(connection);
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables, 0, "a fresh database has no tables: {url}");
        drop(client);
        driver.await.unwrap().unwrap();
    }
}

#[test]
fn a_database_name_replaces_the_one_in_the_url_and_keeps_its_parameters() {
    assert_eq!(
        with_database("postgres://u:p@db:5432/postgres?sslmode=require", "t1"),
        "postgres://u:p@db:5432/t1?sslmode=require"
    );
    assert_eq!(
        with_database("postgresql://u@localhost", "t2"),
        "postgresql://u@localhost/t2"
    );
}

#[test]
#[should_panic(expected = "needs PostgreSQL and CI=true")]
fn without_postgresql_a_test_fails_under_ci() {
    absent::<()>("no server binaries", true);
}

#[test]
fn without_postgresql_a_test_outside_ci_is_skipped_loudly() {
    assert_eq!(absent::<String>("no server binaries", false), None);
}
