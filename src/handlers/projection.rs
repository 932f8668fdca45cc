//! The customer projection's rules (see the contract's "Semantics"), shared by every storage
//! backend, which applies them inside the transaction that records the event, so that a 2xx
//! means the projection already shows the change:
//! - a snapshot replaces the stored one only if its revision is higher; without revisions the
//!   later `updatedTime` wins, then the later arrival;
//! - a merge marks the duplicated customer as merged for good and updates the target;
//! - every Experian check is kept in the log, the projection shows the latest one received.
//!
//! What can be computed from the event alone ([`Encoded`]) is, on the request's own task, so
//! that a backend's writer spends its time on the database only.

use crate::clock::utc_rfc3339;
use crate::event::{Customer, CustomerId, Event};
use crate::timestamp;
use serde_json::{Map, Value};

/// What a projection handler did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Applied,
    /// Nothing changed; the reason is recorded with the event.
    Stale(Option<String>),
    NotHandled,
}

/// The customer snapshots of one event, ready to be written.
#[derive(Debug, Default)]
pub struct Encoded(Vec<EncodedSnapshot>);

#[derive(Debug, Clone)]
pub struct EncodedSnapshot {
    pub id: String,
    pub json: String,
    pub fields: QueryFields,
}

impl EncodedSnapshot {
    fn of(customer: &Customer) -> Self {
        Self {
            id: customer.id.as_str().to_owned(),
            json: serde_json::to_string(&customer.resource).expect("a JSON map serializes"),
            fields: QueryFields::of(&customer.resource),
        }
    }
}

impl Encoded {
    /// The snapshots `event` carries, encoded for storage.
    pub fn of(event: &Event) -> Self {
        let customers: Vec<&Customer> = match event {
            Event::CustomerCreated(e) | Event::CustomerUpdated(e) | Event::CustomerSynced(e) => {
                vec![&e.customer]
            }
            Event::CustomerMerged(merge) => std::iter::once(&merge.duplicated)
                .chain(merge.target.as_ref())
                .collect(),
            Event::ExperianCheckPerformed(check) => check.customer.iter().collect(),
            Event::Other { .. } => Vec::new(),
        };
        Encoded(customers.into_iter().map(EncodedSnapshot::of).collect())
    }

    /// The encoded snapshot of `customer`, one of those the event carries.
    pub fn snapshot(&self, customer: &Customer) -> std::borrow::Cow<'_, EncodedSnapshot> {
        match self.0.iter().find(|s| s.id == customer.id.as_str()) {
            Some(found) => std::borrow::Cow::Borrowed(found),
            None => std::borrow::Cow::Owned(EncodedSnapshot::of(customer)),
        }
    }
}

/// What the projection holds for one customer, as far as ordering is concerned.
pub struct Stored {
    pub revision: Option<i64>,
    pub updated_ms: Option<i64>,
    pub event_id: Option<i64>,
    pub has_snapshot: bool,
    pub merged_into: Option<String>,
}

pub fn updated_ms(customer: &Customer) -> Option<i64> {
    customer.updated_time.map(timestamp::unix_ms)
}

/// Rule 2: does `incoming`, arriving as event `event_id`, take precedence over `current`?
pub fn supersedes(incoming: &Customer, event_id: i64, current: &Stored) -> bool {
    if !current.has_snapshot {
        return true;
    }
    if let (Some(new), Some(old)) = (incoming.revision, current.revision) {
        return new.get() > old;
    }
    if let (Some(new), Some(old)) = (updated_ms(incoming), current.updated_ms)
        && new != old
    {
        return new > old;
    }
    current.event_id.is_none_or(|old| event_id > old)
}

/// What a merge did: applied when it marked the customer merged away or updated the target.
pub fn merge_effect(newly_merged: bool, target_applied: bool, duplicated: &CustomerId) -> Effect {
    if newly_merged || target_applied {
        Effect::Applied
    } else {
        Effect::Stale(Some(format!("customer {duplicated} is already merged")))
    }
}

/// Why a snapshot that does not supersede `current` changed nothing.
pub fn stale_reason(current: &Stored) -> String {
    match current.revision {
        Some(revision) => format!("revision {revision} is already projected"),
        None => "a newer snapshot is already projected".to_owned(),
    }
}

/// Snapshot fields copied into columns so that lists can filter, sort and search them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QueryFields {
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub company: Option<String>,
    pub country: Option<String>,
    pub city: Option<String>,
    pub website_id: Option<String>,
    /// UTC RFC 3339 when readable, else the value as sent.
    pub created_time: Option<String>,
    /// The instant lists filter and sort on; absent when unreadable.
    pub created_ms: Option<i64>,
    pub search: String,
}

fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl QueryFields {
    fn of(resource: &Map<String, Value>) -> Self {
        let address = resource.get("primaryAddress").and_then(Value::as_object);
        let from_either =
            |key: &str| text(resource, key).or_else(|| address.and_then(|a| text(a, key)));
        let emails: Vec<String> = address
            .and_then(|a| a.get("emails"))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|e| e.get("value").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let email = text(resource, "email").or_else(|| emails.first().cloned());
        let first_name = from_either("firstName");
        let last_name = from_either("lastName");
        let search_parts = [&first_name, &last_name, &email]
            .into_iter()
            .flatten()
            .chain(emails.iter())
            .map(|s| s.to_lowercase())
            .collect::<Vec<_>>();
        let created_raw = text(resource, "createdTime");
        let created = created_raw.as_deref().and_then(timestamp::parse);
        let created_time = match created {
            Some(instant) => Some(utc_rfc3339(instant)),
            None => created_raw,
        };
        Self {
            email,
            first_name,
            last_name,
            company: address.and_then(|a| text(a, "organization")),
            country: address.and_then(|a| text(a, "country")),
            city: address.and_then(|a| text(a, "city")),
            website_id: text(resource, "websiteId"),
            created_time,
            created_ms: created.map(timestamp::unix_ms),
            search: search_parts.join(" "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Revision;
    use serde_json::json;

    fn customer(revision: Option<i64>, updated: Option<&str>) -> Customer {
        Customer {
            id: CustomerId::try_from("c").unwrap(),
            revision: revision.map(Revision::new),
            updated_time: updated.map(|u| {
                time::OffsetDateTime::parse(u, &time::format_description::well_known::Rfc3339)
                    .unwrap()
            }),
            resource: Map::new(),
        }
    }

    fn stored_with(revision: Option<i64>, updated_ms: Option<i64>, event_id: i64) -> Stored {
        Stored {
            revision,
            updated_ms,
            event_id: Some(event_id),
            has_snapshot: true,
            merged_into: None,
        }
    }

    #[test]
    fn a_lower_or_equal_revision_never_overwrites_a_higher_one() {
        assert!(!supersedes(
            &customer(Some(2), None),
            10,
            &stored_with(Some(3), None, 1)
        ));
        assert!(!supersedes(
            &customer(Some(3), None),
            10,
            &stored_with(Some(3), None, 1)
        ));
        assert!(supersedes(
            &customer(Some(4), None),
            10,
            &stored_with(Some(3), None, 1)
        ));
    }

    #[test]
    fn without_revisions_updated_time_then_arrival_decides() {
        let earlier = customer(None, Some("2026-03-01T00:00:00Z"));
        let stored_later = stored_with(None, Some(1_772_409_600_000), 1); // 2026-03-02
        assert!(!supersedes(&earlier, 10, &stored_later));
        let undated = customer(None, None);
        assert!(supersedes(&undated, 10, &stored_with(None, None, 5)));
        assert!(!supersedes(&undated, 4, &stored_with(None, None, 5)));
    }

    #[test]
    fn query_fields_come_from_the_primary_address_when_top_level_is_absent() {
        let resource = json!({
            "primaryAddress": {"firstName": "Ada", "lastName": "Lovelace", "country": "GB",
                "emails": [{"label": "main", "value": "Ada@Example.com", "primary": true}]},
            "createdTime": "2026-03-01T10:00:00+01:00"
        });
        let fields = QueryFields::of(resource.as_object().unwrap());
        assert_eq!(fields.email.as_deref(), Some("Ada@Example.com"));
        assert_eq!(fields.first_name.as_deref(), Some("Ada"));
        assert_eq!(fields.country.as_deref(), Some("GB"));
        assert_eq!(fields.created_time.as_deref(), Some("2026-03-01T09:00:00Z"));
        assert_eq!(fields.created_ms, Some(1_772_355_600_000));
        assert!(fields.search.contains("ada@example.com"));
    }

    #[test]
    fn older_created_times_are_instants_and_unreadable_ones_are_kept_as_sent() {
        let older = json!({"createdTime": "2017-05-26 18:59:51"});
        let fields = QueryFields::of(older.as_object().unwrap());
        assert_eq!(fields.created_ms, Some(1_495_825_191_000));
        assert_eq!(fields.created_time.as_deref(), Some("2017-05-26T18:59:51Z"));
        let unreadable = json!({"createdTime": "last spring"});
        let fields = QueryFields::of(unreadable.as_object().unwrap());
        assert_eq!(fields.created_ms, None);
        assert_eq!(fields.created_time.as_deref(), Some("last spring"));
    }
}
