//! The command line: the real binary, run with `--config` pointing at a temporary configuration.

use crate::common::{self, *};

use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;

/// A temporary configuration and database for the binary.
struct Cli {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Cli {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let db = dir.path().join("data").join("webhookd.db");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, common::base_config(&db)).expect("write config");
        Self { dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        run_cli(&self.config, args)
    }

    /// Runs a command that must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            stderr(&output)
        );
        serde_json::from_str(&stdout(&output))
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", stdout(&output)))
    }

    /// Runs a command that must succeed and print a JSON array.
    fn array(&self, args: &[&str]) -> Vec<Value> {
        match self.json(args) {
            Value::Array(items) => items,
            other => panic!("{args:?} printed {other}, not an array"),
        }
    }

    /// A configuration and a database holding the replayed fixture deliveries.
    fn replayed() -> Self {
        let cli = Self::new();
        let output = cli.run(&["replay", "fixtures/deliveries"]);
        assert!(
            output.status.success(),
            "replay failed: {}{}",
            stdout(&output),
            stderr(&output)
        );
        cli
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("data").join("webhookd.db")
    }
}

/// fixtures/README.md: the outcome of each delivery replayed in name order into an empty
/// database.
const EXPECTED_OUTCOMES: [(&str, &str); 12] = [
    ("01-customer-created-alice.json", "applied"),
    ("02-customer-created-bob.json", "applied"),
    ("03-customer-updated-alice-rev3.json", "applied"),
    ("04-customer-updated-alice-rev2.json", "stale"),
    ("05-customer-created-carol.json", "applied"),
    ("06-experian-check-bob-match.json", "applied"),
    ("07-experian-check-bob-mismatch.json", "applied"),
    ("08-customer-merged-carol-into-alice.json", "applied"),
    ("09-customer-updated-carol-late.json", "stale"),
    ("10-invoice-paid.json", "ignored"),
    ("11-customer-created-dave-no-revision.json", "applied"),
    ("12-customer-updated-dave-no-revision.json", "applied"),
];

/// The outcome word on a replay line `PATH: OUTCOME ...`, checked to name `file`.
fn outcome_of<'a>(line: &'a str, file: &str) -> &'a str {
    let (path, rest) = line
        .split_once(".json: ")
        .unwrap_or_else(|| panic!("not a replay line: {line}"));
    assert!(
        format!("{path}.json").ends_with(file),
        "expected {file} on line: {line}"
    );
    rest.split_whitespace().next().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// replay
// ---------------------------------------------------------------------------------------------

backends! {
#[test]
fn replay_prints_each_file_in_name_order_with_its_outcome_then_a_summary() {
    let cli = Cli::new();
    let output = cli.run(&["replay", "fixtures/deliveries"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 13, "12 files and a summary:\n{text}");
    for (line, (file, expected)) in lines.iter().zip(EXPECTED_OUTCOMES) {
        assert_eq!(outcome_of(line, file), expected, "{line}");
    }
    let summary = lines[12];
    for part in [
        "12",
        "applied 9",
        "stale 2",
        "ignored 1",
        "duplicate 0",
        "rejected 0",
    ] {
        assert!(summary.contains(part), "summary lacks `{part}`: {summary}");
    }

    // The same files again: every one is a duplicate, and that is not a failure.
    let again = cli.run(&["replay", "fixtures/deliveries"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let text = stdout(&again);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 13, "{text}");
    for (line, (file, _)) in lines.iter().zip(EXPECTED_OUTCOMES) {
        assert_eq!(outcome_of(line, file), "duplicate", "{line}");
    }
    assert!(lines[12].contains("duplicate 12"), "{}", lines[12]);
    assert!(lines[12].contains("applied 0"), "{}", lines[12]);

    // The projection is the one fixtures/README.md describes, and unchanged by the second run.
    assert_eq!(
        cli.json(&["customers", "get", "cus_alice_01"])["revision"],
        4
    );
}
}

backends! {
#[test]
fn replay_of_single_files_keeps_the_order_given() {
    let cli = Cli::new();
    let output = cli.run(&[
        "replay",
        "fixtures/deliveries/03-customer-updated-alice-rev3.json",
        "fixtures/deliveries/01-customer-created-alice.json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        outcome_of(lines[0], "03-customer-updated-alice-rev3.json"),
        "applied"
    );
    assert_eq!(
        outcome_of(lines[1], "01-customer-created-alice.json"),
        "stale"
    );
    assert_eq!(
        cli.json(&["customers", "get", "cus_alice_01"])["revision"],
        3
    );
}
}

backends! {
#[test]
fn replay_of_rejected_bodies_fails_and_names_each_reason() {
    let cli = Cli::replayed();
    let before = cli.json(&["customers", "list"]);
    let output = cli.run(&["replay", "fixtures/rejected"]);
    assert!(!output.status.success(), "rejections must fail the run");
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // fixtures/README.md: each file and the field or reason its rejection names.
    let expected = [
        ("array-body.json", "array"),
        ("created-customer-id-too-long.json", "customerId"),
        ("created-invalid-customer-id.json", "customerId"),
        ("created-missing-customer-id.json", "customerId"),
        ("experian-bad-outcome.json", "outcome"),
        ("merged-missing-duplicated.json", "duplicatedCustomer"),
        ("missing-event-type.json", "eventType"),
        ("truncated.json", "JSON"),
        ("updated-revision-not-integer.json", "revision"),
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{text}");
    for (line, (file, reason)) in lines.iter().zip(expected) {
        assert_eq!(outcome_of(line, file), "rejected", "{line}");
        // The reason follows the outcome, after the path (which may hold the same words).
        let (_, after) = line.split_once(".json: rejected").unwrap();
        assert!(
            after.contains(reason),
            "{file} should name {reason}: {line}"
        );
    }
    assert!(
        lines[expected.len()].contains("rejected 9"),
        "{}",
        lines[expected.len()]
    );
    // Nothing changed in the projection, but every body is kept in the log.
    assert_eq!(cli.json(&["customers", "list"]), before);
    let rejected = cli.array(&["events", "list", "--status", "rejected"]);
    assert_eq!(rejected.len(), 9);
    assert!(rejected.iter().all(|e| e["error"].is_string()));
}
}

backends! {
#[test]
fn replay_of_a_missing_path_fails_with_a_clear_message() {
    let cli = Cli::new();
    let output = cli.run(&["replay", "fixtures/no-such-folder"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("fixtures/no-such-folder"), "{message}");
    assert!(message.to_lowercase().contains("no such"), "{message}");
    assert!(!stdout(&output).contains("replayed"), "{}", stdout(&output));

    // A missing file among good ones fails before anything is stored.
    let output = cli.run(&[
        "replay",
        "fixtures/deliveries/01-customer-created-alice.json",
        "fixtures/deliveries/99-missing.json",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("99-missing.json"),
        "{}",
        stderr(&output)
    );
    assert!(
        !cli.run(&["customers", "get", "cus_alice_01"])
            .status
            .success(),
        "nothing was replayed"
    );
}
}

// ---------------------------------------------------------------------------------------------
// customers
// ---------------------------------------------------------------------------------------------

backends! {
#[test]
fn customers_get_prints_the_projected_customer() {
    let cli = Cli::replayed();
    let alice = cli.json(&["customers", "get", "cus_alice_01"]);
    assert_eq!(alice["id"], "cus_alice_01");
    assert_eq!(alice["revision"], 4);
    assert_eq!(alice["email"], "alice@martin.example");
    assert_eq!(alice["mergedInto"], Value::Null);
    assert_eq!(alice["experianCheck"], Value::Null);
    let carol = cli.json(&["customers", "get", "cus_carol_03"]);
    assert_eq!(carol["mergedInto"], "cus_alice_01");
    assert_eq!(carol["revision"], 2);
    let bob = cli.json(&["customers", "get", "cus_bob_02"]);
    assert_eq!(bob["experianCheck"]["outcome"], -1);
    assert_eq!(bob["experianCheck"]["errorCode"], "003");
}
}

backends! {
#[test]
fn customers_get_of_an_unknown_id_fails_with_one_line() {
    let cli = Cli::replayed();
    let output = cli.run(&["customers", "get", "nobody"]);
    assert!(!output.status.success());
    assert!(stdout(&output).trim().is_empty(), "{}", stdout(&output));
    let message = stderr(&output);
    assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
    assert!(message.contains("nobody"), "{message}");
}
}

backends! {
#[test]
fn customers_list_takes_the_http_query_options() {
    let cli = Cli::replayed();
    let all = cli.array(&["customers", "list"]);
    assert_eq!(
        ids(&all),
        vec!["cus_alice_01", "cus_bob_02", "cus_dave_04"],
        "merged-away Carol is left out"
    );

    let sorted = cli.array(&["customers", "list", "--sort", "-lastName", "--limit", "2"]);
    assert_eq!(ids(&sorted), vec!["cus_dave_04", "cus_alice_01"]);
    let sorted = cli.array(&["customers", "list", "--sort=lastName", "--limit=2"]);
    assert_eq!(ids(&sorted), vec!["cus_bob_02", "cus_alice_01"]);
    let second_page = cli.array(&[
        "customers",
        "list",
        "--sort",
        "-lastName",
        "--limit",
        "2",
        "--offset",
        "2",
    ]);
    assert_eq!(ids(&second_page), vec!["cus_bob_02"]);

    let french = cli.array(&["customers", "list", "--filter", "country:FR"]);
    assert_eq!(ids(&french), vec!["cus_alice_01"]);
    let two_countries = cli.array(&["customers", "list", "--filter", "country:DE,GB"]);
    assert_eq!(ids(&two_countries), vec!["cus_bob_02", "cus_dave_04"]);

    let alice = cli.array(&["customers", "list", "--q", "alice"]);
    assert_eq!(ids(&alice), vec!["cus_alice_01"]);
    assert_eq!(alice[0]["revision"], 4);
    let keller = cli.array(&["customers", "list", "--q", "KELL"]);
    assert_eq!(ids(&keller), vec!["cus_bob_02"]);
    assert!(
        cli.array(&["customers", "list", "--q", "nguyen"])
            .is_empty()
    );
    assert!(cli.array(&["customers", "list", "--limit", "0"]).is_empty());
}
}

backends! {
#[test]
fn customers_list_refuses_bad_options_naming_them() {
    let cli = Cli::replayed();
    for (args, name) in [
        (
            &["customers", "list", "--filter", "colour:red"][..],
            "filter",
        ),
        (&["customers", "list", "--sort", "shoeSize"][..], "sort"),
        (&["customers", "list", "--limit", "1001"][..], "limit"),
    ] {
        let output = cli.run(args);
        assert!(!output.status.success(), "{args:?} should fail");
        let message = stderr(&output);
        assert!(message.contains(name), "{args:?}: {message}");
        assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
        assert!(stdout(&output).trim().is_empty(), "{}", stdout(&output));
    }
    let output = cli.run(&["customers", "list", "--filter", "colour:red"]);
    assert!(stderr(&output).contains("colour"), "{}", stderr(&output));
}
}

// ---------------------------------------------------------------------------------------------
// events
// ---------------------------------------------------------------------------------------------

backends! {
#[test]
fn events_list_filters_like_the_http_log() {
    let cli = Cli::replayed();
    let all = cli.array(&["events", "list"]);
    assert_eq!(all.len(), 12);
    let all_ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    let mut newest_first = all_ids.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(all_ids, newest_first);

    let bob = cli.array(&["events", "list", "--customer", "cus_bob_02"]);
    assert_eq!(bob.len(), 3);
    assert!(bob.iter().all(|e| e["customerId"] == "cus_bob_02"));
    let types: Vec<&str> = bob
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec![
            "experian-check-performed",
            "experian-check-performed",
            "customer-created"
        ]
    );

    let stale = cli.array(&["events", "list", "--status", "stale"]);
    assert_eq!(stale.len(), 2);
    assert!(stale.iter().all(|e| e["status"] == "stale"));
    let stale_customers: Vec<&str> = stale
        .iter()
        .map(|e| e["customerId"].as_str().unwrap())
        .collect();
    assert_eq!(stale_customers, vec!["cus_carol_03", "cus_alice_01"]);
    assert_eq!(stale[1]["revision"], 2);

    let latest = cli.array(&["events", "list", "--limit", "3"]);
    assert_eq!(latest, all[..3].to_vec());
    assert_eq!(latest[0]["customerId"], "cus_dave_04");
    assert_eq!(latest[2]["eventType"], "invoice-paid");
    assert_eq!(latest[2]["status"], "ignored");

    let paged = cli.array(&["events", "list", "--limit", "3", "--offset", "3"]);
    assert_eq!(paged, all[3..6].to_vec());

    let output = cli.run(&["events", "list", "--status", "exploded"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("status"), "{}", stderr(&output));
}
}

// ---------------------------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn a_missing_config_file_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    for args in [
        &["customers", "list"][..],
        &["replay", "fixtures/deliveries"][..],
    ] {
        let output = run_cli(&missing, args);
        assert!(!output.status.success(), "{args:?}");
        let message = stderr(&output);
        assert!(!message.trim().is_empty(), "{args:?}: no message");
        assert!(message.contains("absent.toml"), "{args:?}: {message}");
        assert!(stdout(&output).trim().is_empty(), "{}", stdout(&output));
    }
    // Nothing was created next to the missing configuration.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn customers_get_prints_the_snapshot_exactly_as_replayed() {
    let cli = Cli::replayed();
    assert!(cli.db_path().exists());
    // `customers get` reads exactly what was replayed, byte for byte of the snapshot.
    let dave = cli.json(&["customers", "get", "cus_dave_04"]);
    let body: Value = serde_json::from_slice(&common::fixture(
        "deliveries/12-customer-updated-dave-no-revision.json",
    ))
    .unwrap();
    let mut expected = body["_embedded"]["customer"].clone();
    expected["mergedInto"] = Value::Null;
    expected["experianCheck"] = Value::Null;
    assert_eq!(dave, expected);
}
