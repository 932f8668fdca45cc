//! Arbitrary bytes as a webhook body: parsing never panics, and every event it accepts holds
//! only values the model's own constructors would accept.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rebilly_webhookd::event::{
    self, CUSTOMER_CREATED, CUSTOMER_MERGED, CUSTOMER_UPDATED, Customer, CustomerId,
    EXPERIAN_CHECK_PERFORMED, Event,
};

fuzz_target!(|body: &[u8]| {
    let Ok(event) = event::parse(body) else {
        return;
    };
    assert_eq!(
        event::parse(body).as_ref(),
        Ok(&event),
        "parsing is deterministic"
    );
    match &event {
        Event::CustomerCreated(changed) | Event::CustomerUpdated(changed) => {
            check_customer(&changed.customer);
        }
        Event::CustomerMerged(merge) => {
            check_id(&merge.target_id);
            check_customer(&merge.duplicated);
            assert_ne!(merge.duplicated.id, merge.target_id, "merged into itself");
            if let Some(target) = &merge.target {
                check_customer(target);
                assert_eq!(target.id, merge.target_id, "target differs from its id");
            }
        }
        Event::ExperianCheckPerformed(check) => {
            check_id(&check.customer_id);
            assert!([-1, 0, 1].contains(&check.outcome.code()));
            if let Some(customer) = &check.customer {
                check_customer(customer);
                assert_eq!(customer.id, check.customer_id, "embedded customer differs");
            }
        }
        Event::CustomerSynced(_) => panic!("a webhook body passed for a synced snapshot"),
        Event::Other { event_type } => {
            let known = [
                CUSTOMER_CREATED,
                CUSTOMER_UPDATED,
                CUSTOMER_MERGED,
                EXPERIAN_CHECK_PERFORMED,
            ];
            assert!(
                !known.contains(&event_type.as_str()),
                "a known type as other"
            );
            assert!(!event_type.is_empty());
        }
    }
    if let Some(id) = event.customer_id() {
        check_id(id);
    }
});

fn check_id(id: &CustomerId) {
    assert_eq!(
        CustomerId::try_from(id.as_str()).as_ref(),
        Ok(id),
        "a parsed customer id does not re-validate"
    );
}

fn check_customer(customer: &Customer) {
    check_id(&customer.id);
    if let Some(revision) = customer.revision {
        assert_eq!(
            customer.resource.get("revision").and_then(|r| r.as_i64()),
            Some(revision.get()),
            "the typed revision differs from the resource's"
        );
    }
    if let Some(id) = customer.resource.get("id").and_then(|v| v.as_str()) {
        assert_eq!(
            id,
            customer.id.as_str(),
            "the typed id differs from the resource's"
        );
    }
    // The resource is served as JSON: it must encode.
    serde_json::to_vec(&customer.resource).expect("a customer resource encodes");
}
