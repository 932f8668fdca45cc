//! The customer projection's rules, PostgreSQL's half. Every decision is taken by the write
//! itself, never by reading first: a snapshot is an upsert whose `WHERE` is rule 2
//! ([`supersedes`](crate::handlers::projection::supersedes)) in SQL, a merge sets
//! `merged_into` only where it is still unset, an Experian check replaces only an older one.
//! The conflicting row stays locked until the transaction ends, so a concurrent writer waits
//! and then decides against what this one committed. The rules themselves are in
//! [`crate::handlers::projection`].

use super::log::{key_owner, optional_text, text};
use crate::clock::utc_rfc3339;
use crate::event::{Customer, CustomerMerged, Event, ExperianCheck};
use crate::handlers::projection::{
    Effect, Encoded, EncodedSnapshot, Stored, merge_effect, stale_reason, updated_ms,
};
use deadpool_postgres::Transaction;
use std::borrow::Cow;
use std::sync::LazyLock;
use tokio_postgres::Error;
use tokio_postgres::types::ToSql;

const SNAPSHOT_COLUMNS: &str = "INSERT INTO customers AS c (id, revision, updated_ms, event_id,
        snapshot, email, first_name, last_name, company, country, city, website_id,
        created_time, updated_time, search, created_ms)";

const SNAPSHOT_VALUES: &str =
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

const SNAPSHOT_UPDATE: &str = "ON CONFLICT (id) DO UPDATE SET
         revision = excluded.revision, updated_ms = excluded.updated_ms,
         event_id = excluded.event_id, snapshot = excluded.snapshot, email = excluded.email,
         first_name = excluded.first_name, last_name = excluded.last_name,
         company = excluded.company, country = excluded.country, city = excluded.city,
         website_id = excluded.website_id, created_time = excluded.created_time,
         updated_time = excluded.updated_time, search = excluded.search,
         created_ms = excluded.created_ms";

/// The dedupe key ($17) claimed for event $4, then the snapshot upsert (rule 2) only when the
/// key was not found taken, in one statement. Its columns: the key's claim and owner as
/// [`super::log::claim_key`] reads them, then whether the snapshot was written.
static CLAIM_AND_WRITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH claimed AS (
             INSERT INTO dedupe_keys (key, event_id) VALUES ($17, $4)
             ON CONFLICT DO NOTHING RETURNING 1
         ), snapshot AS (
             {SNAPSHOT_COLUMNS}
             SELECT $1::TEXT, $2::BIGINT, $3::BIGINT, $4::BIGINT, $5::TEXT, $6::TEXT,
                    $7::TEXT, $8::TEXT, $9::TEXT, $10::TEXT, $11::TEXT, $12::TEXT, $13::TEXT,
                    $14::TEXT, $15::TEXT, $16::BIGINT
             WHERE EXISTS (SELECT 1 FROM claimed)
             {SNAPSHOT_UPDATE} {SUPERSEDES}
         )
         SELECT EXISTS (SELECT 1 FROM claimed),
                (SELECT event_id FROM dedupe_keys WHERE key = $17),
                EXISTS (SELECT 1 FROM snapshot)"
    )
});

/// Rule 2 as the condition of the upsert: no snapshot yet; else the higher revision when both
/// have one; else the later `updatedTime` when both have one and they differ; else the later
/// event. A customer merged away never takes a snapshot again.
const SUPERSEDES: &str = "
     WHERE c.merged_into IS NULL AND (
         c.snapshot IS NULL
         OR CASE
             WHEN excluded.revision IS NOT NULL AND c.revision IS NOT NULL
                 THEN excluded.revision > c.revision
             WHEN excluded.updated_ms IS NOT NULL AND c.updated_ms IS NOT NULL
                  AND excluded.updated_ms <> c.updated_ms
                 THEN excluded.updated_ms > c.updated_ms
             ELSE c.event_id IS NULL OR excluded.event_id > c.event_id
         END)
     RETURNING 1";

/// Applies `event` (recorded as `event_id`) to the projection inside the writer's transaction.
pub async fn apply(
    tx: &Transaction<'_>,
    event_id: i64,
    event: &Event,
    encoded: &Encoded,
) -> Result<Effect, Error> {
    match event {
        Event::CustomerCreated(e) | Event::CustomerUpdated(e) | Event::CustomerSynced(e) => {
            apply_snapshot(tx, event_id, &e.customer, encoded).await
        }
        Event::CustomerMerged(merge) => apply_merge(tx, event_id, merge, encoded).await,
        Event::ExperianCheckPerformed(check) => apply_experian(tx, event_id, check, encoded).await,
        Event::Other { .. } => Ok(Effect::NotHandled),
    }
}

/// Writes the snapshot if it supersedes what is stored; otherwise says why it is stale.
async fn apply_snapshot(
    tx: &Transaction<'_>,
    event_id: i64,
    customer: &Customer,
    encoded: &Encoded,
) -> Result<Effect, Error> {
    if write_snapshot(tx, event_id, customer, encoded, true).await? {
        return Ok(Effect::Applied);
    }
    stale(tx, customer).await
}

/// Why `customer`'s snapshot was not written: the upsert locked the row, so what is read now
/// is what the decision was taken against.
async fn stale(tx: &Transaction<'_>, customer: &Customer) -> Result<Effect, Error> {
    let statement = tx
        .prepare_cached(
            "SELECT revision, updated_ms, event_id, snapshot IS NOT NULL, merged_into
             FROM customers WHERE id = $1",
        )
        .await?;
    let row = tx.query_one(&statement, &[&customer.id.as_str()]).await?;
    let current = Stored {
        revision: row.get(0),
        updated_ms: row.get(1),
        event_id: row.get(2),
        has_snapshot: row.get(3),
        merged_into: row.get(4),
    };
    let reason = match &current.merged_into {
        Some(target) => format!("customer {} was merged into {target}", customer.id),
        None => stale_reason(&current),
    };
    Ok(Effect::Stale(Some(reason)))
}

/// Writes `customer`'s snapshot, only where rule 2 allows when `conditional`; returns whether
/// it was written.
async fn write_snapshot(
    tx: &Transaction<'_>,
    event_id: i64,
    customer: &Customer,
    encoded: &Encoded,
    conditional: bool,
) -> Result<bool, Error> {
    let condition = if conditional {
        SUPERSEDES
    } else {
        "RETURNING 1"
    };
    let sql = format!("{SNAPSHOT_COLUMNS} {SNAPSHOT_VALUES} {SNAPSHOT_UPDATE} {condition}");
    let statement = tx.prepare_cached(&sql).await?;
    let encoded = encoded.snapshot(customer);
    let params = snapshot_params(event_id, customer, &encoded);
    let written = tx.query_opt(&statement, &params.as_refs()).await?;
    Ok(written.is_some())
}

/// What a snapshot event found: a dedupe key taken, or what the projection did with it.
pub enum Claimed {
    /// The key was taken by this event.
    Taken(i64),
    Effect(Effect),
}

/// Claims a snapshot event's dedupe keys and applies its snapshot under rule 2, in one round
/// trip: the most common delivery by far.
pub async fn claim_and_apply_snapshot(
    tx: &Transaction<'_>,
    key: &[u8],
    event_id: i64,
    customer: &Customer,
    encoded: &Encoded,
) -> Result<Claimed, Error> {
    let statement = tx.prepare_cached(&CLAIM_AND_WRITE).await?;
    let encoded = encoded.snapshot(customer);
    let params = snapshot_params(event_id, customer, &encoded);
    let mut values = params.as_refs();
    values.push(&key);
    let row = tx.query_one(&statement, &values).await?;
    if let Some(owner) = key_owner(tx, &row, key).await? {
        return Ok(Claimed::Taken(owner));
    }
    if row.get::<_, bool>(2) {
        return Ok(Claimed::Effect(Effect::Applied));
    }
    Ok(Claimed::Effect(stale(tx, customer).await?))
}

/// The parameters $1 to $16 of a snapshot's upsert.
struct SnapshotParams<'a> {
    id: &'a str,
    revision: Option<i64>,
    updated_ms: Option<i64>,
    event_id: i64,
    json: &'a str,
    copied: [Option<Cow<'a, str>>; 8],
    updated_time: Option<String>,
    search: Cow<'a, str>,
    created_ms: Option<i64>,
}

fn snapshot_params<'a>(
    event_id: i64,
    customer: &'a Customer,
    encoded: &'a EncodedSnapshot,
) -> SnapshotParams<'a> {
    let fields = &encoded.fields;
    SnapshotParams {
        id: customer.id.as_str(),
        revision: customer.revision.map(|r| r.get()),
        updated_ms: updated_ms(customer),
        event_id,
        json: &encoded.json,
        copied: [
            &fields.email,
            &fields.first_name,
            &fields.last_name,
            &fields.company,
            &fields.country,
            &fields.city,
            &fields.website_id,
            &fields.created_time,
        ]
        .map(|value| optional_text(value.as_deref())),
        updated_time: customer.updated_time.map(utc_rfc3339),
        search: text(&fields.search),
        created_ms: fields.created_ms,
    }
}

impl SnapshotParams<'_> {
    fn as_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut values: Vec<&(dyn ToSql + Sync)> = vec![
            &self.id,
            &self.revision,
            &self.updated_ms,
            &self.event_id,
            &self.json,
        ];
        values.extend(self.copied.iter().map(|v| v as &(dyn ToSql + Sync)));
        values.extend([
            &self.updated_time as &(dyn ToSql + Sync),
            &self.search,
            &self.created_ms,
        ]);
        values
    }
}

async fn apply_merge(
    tx: &Transaction<'_>,
    event_id: i64,
    merge: &CustomerMerged,
    encoded: &Encoded,
) -> Result<Effect, Error> {
    let duplicated = &merge.duplicated;
    // The first merge of a customer wins, whichever daemon committed it.
    let statement = tx
        .prepare_cached(
            "INSERT INTO customers AS c (id, merged_into) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET merged_into = excluded.merged_into
             WHERE c.merged_into IS NULL
             RETURNING 1",
        )
        .await?;
    let newly_merged = tx
        .query_opt(
            &statement,
            &[&duplicated.id.as_str(), &merge.target_id.as_str()],
        )
        .await?
        .is_some();
    if newly_merged {
        // The merge is Rebilly's last description of the customer it deleted: keep it whatever
        // arrived before (even a higher revision), as nothing arriving after it can change it.
        write_snapshot(tx, event_id, duplicated, encoded, false).await?;
    }
    let target_applied = match &merge.target {
        Some(target) => apply_snapshot(tx, event_id, target, encoded).await? == Effect::Applied,
        None => false,
    };
    Ok(merge_effect(newly_merged, target_applied, &duplicated.id))
}

async fn apply_experian(
    tx: &Transaction<'_>,
    event_id: i64,
    check: &ExperianCheck,
    encoded: &Encoded,
) -> Result<Effect, Error> {
    let summary = check.summary().to_string();
    // The latest check received wins; a replayed older event never hides a newer check.
    let statement = tx
        .prepare_cached(
            "INSERT INTO customers AS c (id, experian_check, experian_event_id)
             VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET
                 experian_check = excluded.experian_check,
                 experian_event_id = excluded.experian_event_id
             WHERE c.experian_event_id IS NULL
                OR c.experian_event_id < excluded.experian_event_id",
        )
        .await?;
    tx.execute(
        &statement,
        &[&check.customer_id.as_str(), &summary, &event_id],
    )
    .await?;
    if let Some(customer) = &check.customer {
        apply_snapshot(tx, event_id, customer, encoded).await?;
    }
    // The check itself is new information even when the embedded snapshot is not.
    Ok(Effect::Applied)
}
