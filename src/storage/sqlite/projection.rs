//! The customer projection's rules, SQLite's half: reading what is held and writing snapshots,
//! merges and Experian checks inside the writer's transaction, so that a 2xx means the
//! projection already shows the change. The rules themselves are in
//! [`crate::handlers::projection`].

use crate::clock::utc_rfc3339;
use crate::event::{Customer, CustomerMerged, Event, ExperianCheck};
use crate::handlers::projection::{
    Effect, Encoded, Stored, merge_effect, stale_reason, supersedes, updated_ms,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::LazyLock;

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

/// What a customer's row holds now: what the rules compare, and its list keys.
struct Held {
    stored: Stored,
    keys: ListKeys,
}

/// The values a customer's list index entries are made of, as held or about to be written.
#[derive(Debug, PartialEq, Eq)]
struct ListKeys {
    email: Option<String>,
    last_name: Option<String>,
    country: Option<String>,
    created_ms: Option<i64>,
    /// 1 for a customer lists show (a snapshot, not merged away), else NULL: the condition
    /// every list index carries.
    listed: Option<i64>,
}

/// The row of `id`, in one read; `None` without a row.
fn held(conn: &Connection, id: &str) -> rusqlite::Result<Option<Held>> {
    conn.prepare_cached(
        "SELECT revision, updated_ms, event_id, snapshot IS NOT NULL, merged_into,
                email, last_name, country, created_ms, listed
         FROM customers WHERE id = ?1",
    )?
    .query_row([id], |r| {
        Ok(Held {
            stored: Stored {
                revision: r.get(0)?,
                updated_ms: r.get(1)?,
                event_id: r.get(2)?,
                has_snapshot: r.get(3)?,
                merged_into: r.get(4)?,
            },
            keys: ListKeys {
                email: r.get(5)?,
                last_name: r.get(6)?,
                country: r.get(7)?,
                created_ms: r.get(8)?,
                listed: r.get(9)?,
            },
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
    let current = held(conn, customer.id.as_str())?;
    if let Some(target) = current.as_ref().and_then(|c| c.stored.merged_into.as_ref()) {
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
    current: Option<&Held>,
    encoded: &Encoded,
) -> rusqlite::Result<Effect> {
    if let Some(current) = current
        && !supersedes(customer, event_id, &current.stored)
    {
        return Ok(Effect::Stale(Some(stale_reason(&current.stored))));
    }
    write_snapshot(conn, event_id, customer, current, encoded)?;
    Ok(Effect::Applied)
}

/// The columns every snapshot sets, in the order of the statements below (`?1` is the id).
const SNAPSHOT_COLUMNS: &str = "revision = ?2, updated_ms = ?3, event_id = ?4, snapshot = ?5, \
    first_name = ?6, company = ?7, city = ?8, website_id = ?9, created_time = ?10, \
    updated_time = ?11, search = ?12";

const INSERT: &str = "INSERT INTO customers (id, revision, updated_ms, event_id, snapshot, \
    first_name, company, city, website_id, created_time, updated_time, search, email, last_name, \
    country, created_ms, listed) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";
static UPDATE_KEEPING_LIST_KEYS: LazyLock<String> =
    LazyLock::new(|| format!("UPDATE customers SET {SNAPSHOT_COLUMNS} WHERE id = ?1"));
static UPDATE_ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE customers SET {SNAPSHOT_COLUMNS}, email = ?13, last_name = ?14, country = ?15, \
         created_ms = ?16, listed = ?17 WHERE id = ?1"
    )
});

/// Writes a snapshot. An update sets the list keys (and so rewrites the list index entries
/// made of them) only when one of them changed: SQLite rewrites the entries of every index
/// that names a column the statement sets, even to the value it had. Rebilly's updates rarely
/// change an email, a name, a country or a creation time, and every list index carries the
/// `listed` condition, so an unchanged update rewrites the row and the updated-time index
/// alone.
fn write_snapshot(
    conn: &Connection,
    event_id: i64,
    customer: &Customer,
    held: Option<&Held>,
    encoded: &Encoded,
) -> rusqlite::Result<()> {
    let encoded = encoded.snapshot(customer);
    let fields = &encoded.fields;
    let id = customer.id.as_str();
    let merged = held.is_some_and(|held| held.stored.merged_into.is_some());
    let keys = ListKeys {
        email: fields.email.clone(),
        last_name: fields.last_name.clone(),
        country: fields.country.clone(),
        created_ms: fields.created_ms,
        listed: (!merged).then_some(1),
    };
    let unchanged = held.is_some_and(|held| held.keys == keys);
    let sql: &str = match held {
        None => INSERT,
        Some(_) if unchanged => &UPDATE_KEEPING_LIST_KEYS,
        Some(_) => &UPDATE_ALL,
    };
    let mut statement = conn.prepare_cached(sql)?;
    let shared = params![
        id,
        customer.revision.map(|r| r.get()),
        updated_ms(customer),
        event_id,
        encoded.json,
        fields.first_name,
        fields.company,
        fields.city,
        fields.website_id,
        fields.created_time,
        customer.updated_time.map(utc_rfc3339),
        fields.search,
    ];
    if unchanged {
        statement.execute(shared)?;
    } else {
        let mut all: Vec<&dyn rusqlite::ToSql> = shared.to_vec();
        all.extend_from_slice(params![
            keys.email,
            keys.last_name,
            keys.country,
            keys.created_ms,
            keys.listed
        ]);
        statement.execute(all.as_slice())?;
    }
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
             ON CONFLICT (id) DO UPDATE SET merged_into = excluded.merged_into, listed = NULL
             WHERE customers.merged_into IS NULL",
        )?
        .execute(params![duplicated.id.as_str(), merge.target_id.as_str()])?
        == 1;
    if newly_merged {
        // The merge is Rebilly's last description of the customer it deleted: keep it whatever
        // arrived before (even a higher revision), as nothing arriving after it can change it.
        // Otherwise the merged-away snapshot would depend on arrival order.
        let merged_away = held(conn, duplicated.id.as_str())?;
        write_snapshot(conn, event_id, duplicated, merged_away.as_ref(), encoded)?;
    }
    let target_applied = match &merge.target {
        Some(target) => apply_customer_event(conn, event_id, target, encoded)? == Effect::Applied,
        None => false,
    };
    Ok(merge_effect(newly_merged, target_applied, &duplicated.id))
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
