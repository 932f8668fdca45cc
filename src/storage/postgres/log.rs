//! The event log's writes on PostgreSQL: claiming dedupe keys, recording the customers an
//! event touches, and inserting the rows of a batch.

use crate::storage::Status;
use deadpool_postgres::Transaction;
use tokio_postgres::Error;

/// The `source` of events fetched by `sync`; every other event is a webhook delivery.
pub const SYNC_SOURCE: &str = "sync";
pub const WEBHOOK_SOURCE: &str = "webhook";

/// One row of the event log as the writer records it.
pub struct EventRow<'a> {
    pub id: i64,
    pub received_ms: i64,
    pub event_type: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    pub revision: Option<i64>,
    pub status: Status,
    pub error: Option<String>,
    pub error_field: Option<String>,
    pub duplicate_of: Option<i64>,
    /// What the projection held for `customer_id` once the event was applied.
    pub projected_revision: Option<i64>,
    pub body: Option<&'a [u8]>,
    pub source: &'static str,
}

impl<'a> EventRow<'a> {
    /// A row not yet classified: `rejected` until the writer decides otherwise.
    pub fn new(id: i64, received_ms: i64, body: Option<&'a [u8]>) -> Self {
        Self {
            id,
            received_ms,
            event_type: None,
            customer_id: None,
            revision: None,
            status: Status::Rejected,
            error: None,
            error_field: None,
            duplicate_of: None,
            projected_revision: None,
            body,
            source: WEBHOOK_SOURCE,
        }
    }
}

/// Inserts the rows of a batch with one statement: one round trip however many there are.
pub async fn insert(tx: &Transaction<'_>, rows: &[&EventRow<'_>]) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let received: Vec<i64> = rows.iter().map(|r| r.received_ms).collect();
    let types: Vec<Option<&str>> = rows.iter().map(|r| r.event_type).collect();
    let customers: Vec<Option<&str>> = rows.iter().map(|r| r.customer_id).collect();
    let revisions: Vec<Option<i64>> = rows.iter().map(|r| r.revision).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
    let fields: Vec<Option<&str>> = rows.iter().map(|r| r.error_field.as_deref()).collect();
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

/// Claims a dedupe key for `event_id`; returns the event that already owns it, if any. The
/// unique key decides: a concurrent claim of the same key waits for this transaction.
pub async fn claim_key(
    tx: &Transaction<'_>,
    key: &[u8],
    event_id: i64,
) -> Result<Option<i64>, Error> {
    let claim = tx
        .prepare_cached(
            "INSERT INTO dedupe_keys (key, event_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .await?;
    if tx.query_opt(&claim, &[&key, &event_id]).await?.is_some() {
        return Ok(None);
    }
    let owner = tx
        .prepare_cached("SELECT event_id FROM dedupe_keys WHERE key = $1")
        .await?;
    Ok(tx.query_opt(&owner, &[&key]).await?.map(|row| row.get(0)))
}

/// Records every customer an applied event touches.
pub async fn record_customers(
    tx: &Transaction<'_>,
    event_id: i64,
    customers: &[&str],
) -> Result<(), Error> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO event_customers (event_id, customer_id)
             SELECT $1, customer FROM UNNEST($2::TEXT[]) AS customer
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&statement, &[&event_id, &customers]).await?;
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
