//! Upgrading: a database created by the previous release migrates on start, keeps its data,
//! and the daemon works on it (queries, handler state, new deliveries, rebuild).

use crate::common::{self, *};
use serde_json::json;

/// The database as the previous release left it (see the file's header).
const RELEASED_DATABASE: &str =
    include_str!("../../src/storage/sqlite/migrations/testdata/released-0002.sql");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_release_is_migrated_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("released.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(RELEASED_DATABASE)
        .unwrap();
    // The released database owes a forward handler named crm nine events; a log handler of
    // that name takes them over.
    let config = format!(
        "#replace{}\n[[handlers]]\nname = \"crm\"\nkind = \"log\"\n",
        common::base_config(&db)
    );
    let mut app = common::spawn_app_with(&config).await;

    let alice = app.customer("cus_alice_01").await;
    assert_eq!(alice["revision"], 4);
    assert_eq!(
        app.customer("cus_carol_03").await["mergedInto"],
        "cus_alice_01"
    );
    assert_eq!(
        app.customer("cus_bob_02").await["experianCheck"]["outcome"],
        -1
    );
    assert_eq!(
        ids(&list(&app, "/customers?sort=id").await),
        ["cus_alice_01", "cus_bob_02", "cus_dave_04"]
    );
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 14);
    for id in 1..=12 {
        eventually(
            "every event owed before the upgrade is delivered",
            || async { event_detail(&app, id).await["handlers"] == json!([]) },
        )
        .await;
    }

    let (_, status) = app
        .deliver_ok(customer_event(
            "customer-updated",
            "cus_alice_01",
            5,
            json!({}),
        ))
        .await;
    assert_eq!(status, "applied");
    let (_, status) = app
        .deliver_ok(common::fixture(
            "deliveries/03-customer-updated-alice-rev3.json",
        ))
        .await;
    assert_eq!(
        status, "duplicate",
        "dedupe keys of the old release still hold"
    );
    app.stop().await;

    let output = run_cli_async(&app.config_path, &["projection", "rebuild"]).await;
    assert_success(&output);
    let app = app.restart().await;
    assert_eq!(app.customer("cus_alice_01").await["revision"], 5);
    assert_eq!(
        app.customer("cus_carol_03").await["mergedInto"],
        "cus_alice_01"
    );
}
