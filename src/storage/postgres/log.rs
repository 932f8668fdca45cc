//! The event log's writes on PostgreSQL: claiming dedupe keys, recording the customers an
//! event touches, and inserting the rows of a batch.

use crate::storage::delivery::EventRow;
use deadpool_postgres::Transaction;
use std::borrow::Cow;
use tokio_postgres::Error;

/// Text as PostgreSQL can hold it: its `text` has no NUL character, which JSON strings (and
/// so the fields copied from a snapshot, or a message quoting them) may carry. Each becomes
/// U+FFFD; the raw body and the snapshot's JSON keep it escaped.
pub fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// [`text`] of an optional value.
pub fn optional_text(value: Option<&str>) -> Option<Cow<'_, str>> {
    value.map(text)
}

/// Inserts the rows of a batch, and the customers each touches, with two statements sent
/// together: one round trip however many rows there are.
pub async fn insert(tx: &Transaction<'_>, rows: &[&EventRow<'_>]) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    tokio::try_join!(insert_events(tx, rows), record_customers(tx, rows))?;
    Ok(())
}

async fn insert_events(tx: &Transaction<'_>, rows: &[&EventRow<'_>]) -> Result<(), Error> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let received: Vec<i64> = rows.iter().map(|r| r.received_ms).collect();
    let types: Vec<Option<&str>> = rows.iter().map(|r| r.event_type).collect();
    let customers: Vec<Option<&str>> = rows.iter().map(|r| r.customer_id).collect();
    let revisions: Vec<Option<i64>> = rows.iter().map(|r| r.revision).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let errors: Vec<Option<Cow<'_, str>>> = rows
        .iter()
        .map(|r| optional_text(r.error.as_deref()))
        .collect();
    let fields: Vec<Option<Cow<'_, str>>> = rows
        .iter()
        .map(|r| optional_text(r.error_field.as_deref()))
        .collect();
    let originals: Vec<Option<i64>> = rows.iter().map(|r| r.duplicate_of).collect();
    let sizes: Vec<i64> = rows
        .iter()
        .map(|r| r.body.map_or(0, <[u8]>::len) as i64)
        .collect();
    let bodies: Vec<Option<&[u8]>> = rows.iter().map(|r| r.body).collect();
    let projected: Vec<Option<i64>> = rows.iter().map(|r| r.projected_revision).collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.source).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO events (id, received_ms, event_type, customer_id, revision, status,
                                 error, error_field, duplicate_of, body_size, body,
                                 projected_revision, source)
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[],
                                  $5::BIGINT[], $6::TEXT[], $7::TEXT[], $8::TEXT[],
                                  $9::BIGINT[], $10::BIGINT[], $11::BYTEA[], $12::BIGINT[],
                                  $13::TEXT[])",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &ids, &received, &types, &customers, &revisions, &statuses, &errors, &fields,
            &originals, &sizes, &bodies, &projected, &sources,
        ],
    )
    .await?;
    Ok(())
}

/// Claims the delivery's dedupe key for `event_id`; returns the key's owner when it was
/// already taken. The unique key decides: a concurrent claim of the same key waits for this
/// transaction.
pub async fn claim_key(
    tx: &Transaction<'_>,
    key: &[u8],
    event_id: i64,
) -> Result<Option<i64>, Error> {
    // The owner is read in the statement's snapshot, which does not see its own insert: a key
    // the statement claimed has no owner there, a key found taken has its owner.
    let claim = tx
        .prepare_cached(
            "WITH claimed AS (
                 INSERT INTO dedupe_keys (key, event_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING RETURNING 1
             )
             SELECT EXISTS (SELECT 1 FROM claimed),
                    (SELECT event_id FROM dedupe_keys WHERE key = $1)",
        )
        .await?;
    let row = tx.query_one(&claim, &[&key, &event_id]).await?;
    key_owner(tx, &row, key).await
}

/// The owner of a key a claiming statement found taken, from its first two columns: whether
/// it claimed the key, and the key's owner in the statement's snapshot.
pub async fn key_owner(
    tx: &Transaction<'_>,
    row: &tokio_postgres::Row,
    key: &[u8],
) -> Result<Option<i64>, Error> {
    if row.get::<_, bool>(0) {
        return Ok(None);
    }
    match row.get::<_, Option<i64>>(1) {
        Some(owner) => Ok(Some(owner)),
        // Taken by a transaction that committed after the statement's snapshot was taken.
        None => {
            let owner = tx
                .prepare_cached("SELECT event_id FROM dedupe_keys WHERE key = $1")
                .await?;
            Ok(Some(tx.query_one(&owner, &[&key]).await?.get(0)))
        }
    }
}

/// Whether event `id` holds exactly `body`.
pub async fn has_body(tx: &Transaction<'_>, id: i64, body: &[u8]) -> Result<bool, Error> {
    let statement = tx
        .prepare_cached("SELECT body = $2 FROM events WHERE id = $1")
        .await?;
    Ok(tx
        .query_opt(&statement, &[&id, &body])
        .await?
        .and_then(|row| row.get::<_, Option<bool>>(0))
        .unwrap_or(false))
}

/// Records every customer each applied event touches.
async fn record_customers(tx: &Transaction<'_>, rows: &[&EventRow<'_>]) -> Result<(), Error> {
    let (events, customers): (Vec<i64>, Vec<&str>) = rows
        .iter()
        .flat_map(|row| row.customers.iter().map(|customer| (row.id, *customer)))
        .unzip();
    if events.is_empty() {
        return Ok(());
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO event_customers (event_id, customer_id)
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[])
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&statement, &[&events, &customers]).await?;
    Ok(())
}

/// The revision the projection holds for a customer right now.
pub async fn projected_revision(
    tx: &Transaction<'_>,
    customer: &str,
) -> Result<Option<i64>, Error> {
    let statement = tx
        .prepare_cached("SELECT revision FROM customers WHERE id = $1")
        .await?;
    Ok(tx
        .query_opt(&statement, &[&customer])
        .await?
        .and_then(|row| row.get(0)))
}

/// The newest event id committed, 0 for an empty log.
pub async fn last_id(client: &tokio_postgres::Client) -> Result<i64, Error> {
    Ok(client
        .query_one("SELECT COALESCE(MAX(id), 0)::BIGINT FROM events", &[])
        .await?
        .get(0))
}
