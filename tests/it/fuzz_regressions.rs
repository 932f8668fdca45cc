//! Inputs kept under `fuzz/regressions/webhook_body/` (crashes the fuzzer found once, and
//! hostile bodies: deep nesting, numbers beyond 64 bits, escaped NULs and lone surrogates,
//! multi-byte ids at the length limit, dates out of range, duplicate keys) delivered to the
//! real daemon: each one gets a definite answer (200, or a 400/422 problem document) and is
//! stored, and one parsed as an event holds a customer id that re-validates.

use crate::common::*;
use rebilly_webhookd::event::{self, CustomerId};
use std::path::PathBuf;

fn regression_bodies() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/webhook_body");
    let mut bodies: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fuzz/regressions/webhook_body exists")
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (
                name,
                std::fs::read(&path).expect("a readable regression input"),
            )
        })
        .collect();
    bodies.sort();
    bodies
}

#[tokio::test]
async fn every_kept_fuzz_input_gets_a_definite_answer_and_is_stored() {
    let app = spawn_app().await;
    let bodies = regression_bodies();
    assert!(!bodies.is_empty(), "no regression inputs found");
    for (name, body) in &bodies {
        let parsed = event::parse(body);
        if let Ok(event) = &parsed
            && let Some(id) = event.customer_id()
        {
            assert_eq!(
                CustomerId::try_from(id.as_str()).as_ref(),
                Ok(id),
                "{name}: a parsed customer id does not re-validate"
            );
        }
        let response = app.deliver(body.clone()).await;
        let status = response.status().as_u16();
        match &parsed {
            Ok(_) => assert_eq!(status, 200, "{name}: a parsed event was not accepted"),
            Err(_) => {
                let problem = expect_problem(response, status).await;
                assert!(
                    status == 400 || status == 422,
                    "{name}: answered {status}: {problem}"
                );
            }
        }
    }
    let (_, total) = events(&app, "?limit=1000").await;
    assert_eq!(total, bodies.len() as u64, "every input is stored");
}
