//! The customer projection's rules, SQLite's half: reading what is held and writing snapshots,
//! merges and Experian checks inside the writer's transaction, so that a 2xx means the
//! projection already shows the change. The rules themselves are in
//! [`crate::handlers::projection`].

use crate::clock::utc_rfc3339;
use crate::event::{Customer, CustomerMerged, Event, ExperianCheck};
use crate::handlers::projection::{Effect, Encoded, Stored, stale_reason, supersedes, updated_ms};
use rusqlite::{Connection, OptionalExtension, params};

/// The built-in projection of customers, applied on SQLite.
#[derive(Debug, Default, Clone, Copy)]
pub struct CustomerProjection;

impl CustomerProjection {
    pub fn apply(
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
        return Ok(Effect::Stale(Some(stale_reason(current))));
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
