//! The customer projection: a synchronous handler that runs inside the writer's transaction, so
//! that a 2xx means the projection already shows the change.
//!
//! Rules (see the contract's "Semantics"):
//! - a snapshot replaces the stored one only if its revision is higher; without revisions the
//!   later `updatedTime` wins, then the later arrival;
//! - a merge marks the duplicated customer as merged for good and updates the target;
//! - every Experian check is kept in the log, the projection shows the latest one received.

use crate::clock::utc_rfc3339;
use crate::event::{Customer, CustomerMerged, Event, ExperianCheck};
use crate::timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

/// What a projection handler did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Applied,
    /// Nothing changed; the reason is recorded with the event.
    Stale(Option<String>),
    NotHandled,
}

/// A handler that runs inside the transaction that records the event.
pub trait ProjectionHandler: Send {
    /// What the handler computes from the event alone (encoding, extraction), on the request's
    /// own task, so that the single writer thread spends its time on the database only.
    type Prepared: Send;

    fn prepare(&self, event: &Event) -> Self::Prepared;

    fn apply(
        &self,
        conn: &Connection,
        event_id: i64,
        event: &Event,
        prepared: &Self::Prepared,
    ) -> rusqlite::Result<Effect>;
}

/// The built-in projection of customers.
#[derive(Debug, Default, Clone, Copy)]
pub struct CustomerProjection;

impl ProjectionHandler for CustomerProjection {
    type Prepared = Encoded;

    fn prepare(&self, event: &Event) -> Encoded {
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

    fn apply(
        &self,
        conn: &Connection,
        event_id: i64,
        event: &Event,
        encoded: &Encoded,
    ) -> rusqlite::Result<Effect> {
        match event {
            Event::CustomerCreated(e) | Event::CustomerUpdated(e) | Event::CustomerSynced(e) => {
                apply_customer_event(conn, event_id, &e.customer, encoded)
            }
            Event::CustomerMerged(merge) => apply_merge(conn, event_id, merge, encoded),
            Event::ExperianCheckPerformed(check) => apply_experian(conn, event_id, check, encoded),
            Event::Other { .. } => Ok(Effect::NotHandled),
        }
    }
}

/// The customer snapshots of one event, ready to be written.
#[derive(Debug, Default)]
pub struct Encoded(Vec<EncodedSnapshot>);

#[derive(Debug, Clone)]
struct EncodedSnapshot {
    id: String,
    json: String,
    fields: QueryFields,
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
    fn snapshot(&self, customer: &Customer) -> std::borrow::Cow<'_, EncodedSnapshot> {
        match self.0.iter().find(|s| s.id == customer.id.as_str()) {
            Some(found) => std::borrow::Cow::Borrowed(found),
            None => std::borrow::Cow::Owned(EncodedSnapshot::of(customer)),
        }
    }
}

/// What the projection holds for one customer, as far as ordering is concerned.
struct Stored {
    revision: Option<i64>,
    updated_ms: Option<i64>,
    event_id: Option<i64>,
    has_snapshot: bool,
    merged_into: Option<String>,
}

fn stored(conn: &Connection, id: &str) -> rusqlite::Result<Option<Stored>> {
    conn.prepare_cached(
        "SELECT revision, updated_ms, event_id, snapshot IS NOT NULL, merged_into
         FROM customers WHERE id = ?1",
    )?
    .query_row([id], |r| {
        Ok(Stored {
            revision: r.get(0)?,
            updated_ms: r.get(1)?,
            event_id: r.get(2)?,
            has_snapshot: r.get(3)?,
            merged_into: r.get(4)?,
        })
    })
    .optional()
}

fn updated_ms(customer: &Customer) -> Option<i64> {
    customer.updated_time.map(timestamp::unix_ms)
}

/// Rule 2: does `incoming`, arriving as event `event_id`, take precedence over `current`?
fn supersedes(incoming: &Customer, event_id: i64, current: &Stored) -> bool {
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

fn apply_customer_event(
    conn: &Connection,
    event_id: i64,
    customer: &Customer,
    encoded: &Encoded,
) -> rusqlite::Result<Effect> {
    let current = stored(conn, customer.id.as_str())?;
    if let Some(target) = current.as_ref().and_then(|c| c.merged_into.as_ref()) {
        return Ok(Effect::Stale(Some(format!(
            "customer {} was merged into {target}",
            customer.id
        ))));
    }
    apply_snapshot(conn, event_id, customer, current.as_ref(), encoded)
}

/// Writes the snapshot if it supersedes what is stored.
fn apply_snapshot(
    conn: &Connection,
    event_id: i64,
    customer: &Customer,
    current: Option<&Stored>,
    encoded: &Encoded,
) -> rusqlite::Result<Effect> {
    if let Some(current) = current
        && !supersedes(customer, event_id, current)
    {
        let reason = match current.revision {
            Some(revision) => format!("revision {revision} is already projected"),
            None => "a newer snapshot is already projected".to_owned(),
        };
        return Ok(Effect::Stale(Some(reason)));
    }
    write_snapshot(conn, event_id, customer, encoded)?;
    Ok(Effect::Applied)
}

fn write_snapshot(
    conn: &Connection,
    event_id: i64,
    customer: &Customer,
    encoded: &Encoded,
) -> rusqlite::Result<()> {
    let encoded = encoded.snapshot(customer);
    let fields = &encoded.fields;
    conn.prepare_cached(
        "INSERT INTO customers (id, revision, updated_ms, event_id, snapshot, email, first_name,
                                last_name, company, country, city, website_id, created_time,
                                updated_time, search, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
         ON CONFLICT (id) DO UPDATE SET
             revision = excluded.revision, updated_ms = excluded.updated_ms,
             event_id = excluded.event_id, snapshot = excluded.snapshot, email = excluded.email,
             first_name = excluded.first_name, last_name = excluded.last_name,
             company = excluded.company, country = excluded.country, city = excluded.city,
             website_id = excluded.website_id, created_time = excluded.created_time,
             updated_time = excluded.updated_time, search = excluded.search,
             created_ms = excluded.created_ms",
    )?
    .execute(params![
        customer.id.as_str(),
        customer.revision.map(|r| r.get()),
        updated_ms(customer),
        event_id,
        encoded.json,
        fields.email,
        fields.first_name,
        fields.last_name,
        fields.company,
        fields.country,
        fields.city,
        fields.website_id,
        fields.created_time,
        customer.updated_time.map(utc_rfc3339),
        fields.search,
        fields.created_ms,
    ])?;
    Ok(())
}

fn apply_merge(
    conn: &Connection,
    event_id: i64,
    merge: &CustomerMerged,
    encoded: &Encoded,
) -> rusqlite::Result<Effect> {
    let duplicated = &merge.duplicated;
    let newly_merged = conn
        .prepare_cached(
            "INSERT INTO customers (id, merged_into) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET merged_into = excluded.merged_into
             WHERE customers.merged_into IS NULL",
        )?
        .execute(params![duplicated.id.as_str(), merge.target_id.as_str()])?
        == 1;
    if newly_merged {
        // The merge is Rebilly's last description of the customer it deleted: keep it whatever
        // arrived before (even a higher revision), as nothing arriving after it can change it.
        // Otherwise the merged-away snapshot would depend on arrival order.
        write_snapshot(conn, event_id, duplicated, encoded)?;
    }
    let target_applied = match &merge.target {
        Some(target) => apply_customer_event(conn, event_id, target, encoded)? == Effect::Applied,
        None => false,
    };
    if newly_merged || target_applied {
        Ok(Effect::Applied)
    } else {
        Ok(Effect::Stale(Some(format!(
            "customer {} is already merged",
            duplicated.id
        ))))
    }
}

fn apply_experian(
    conn: &Connection,
    event_id: i64,
    check: &ExperianCheck,
    encoded: &Encoded,
) -> rusqlite::Result<Effect> {
    let summary = check.summary().to_string();
    // The latest check received wins; a replayed older event never hides a newer check.
    conn.prepare_cached(
        "INSERT INTO customers (id, experian_check, experian_event_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET
             experian_check = excluded.experian_check,
             experian_event_id = excluded.experian_event_id
         WHERE customers.experian_event_id IS NULL
            OR customers.experian_event_id < excluded.experian_event_id",
    )?
    .execute(params![check.customer_id.as_str(), summary, event_id])?;
    if let Some(customer) = &check.customer {
        apply_customer_event(conn, event_id, customer, encoded)?;
    }
    // The check itself is new information even when the embedded snapshot is not.
    Ok(Effect::Applied)
}

/// Snapshot fields copied into columns so that lists can filter, sort and search them.
#[derive(Debug, Default, Clone, PartialEq)]
struct QueryFields {
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    country: Option<String>,
    city: Option<String>,
    website_id: Option<String>,
    /// UTC RFC 3339 when readable, else the value as sent.
    created_time: Option<String>,
    /// The instant lists filter and sort on; absent when unreadable.
    created_ms: Option<i64>,
    search: String,
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
    use crate::event::{CustomerId, Revision};
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
