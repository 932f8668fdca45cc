//! Reading the PostgreSQL projection and event log: one customer, lists with the filter
//! grammar, the event log and one event.

use crate::query::{CustomerQuery, EventQuery};
use crate::storage::StorageError;
use crate::storage::model::{CustomerPage, EventDetail, EventRecord};
use tokio_postgres::Client;

pub async fn customer(
    client: &Client,
    id: &str,
) -> Result<Option<serde_json::Value>, StorageError> {
    let _ = (client, id);
    Err(StorageError::Incomplete(
        "reads::customer is not written yet".into(),
    ))
}

pub async fn customers(
    client: &Client,
    query: &CustomerQuery,
) -> Result<CustomerPage, StorageError> {
    let _ = (client, query);
    Err(StorageError::Incomplete(
        "reads::customers is not written yet".into(),
    ))
}

pub async fn events(
    client: &Client,
    query: &EventQuery,
) -> Result<(Vec<EventRecord>, u64), StorageError> {
    let _ = (client, query);
    Err(StorageError::Incomplete(
        "reads::events is not written yet".into(),
    ))
}

pub async fn event(client: &Client, id: i64) -> Result<Option<EventDetail>, StorageError> {
    let _ = (client, id);
    Err(StorageError::Incomplete(
        "reads::event is not written yet".into(),
    ))
}

pub async fn raw_body(client: &Client, id: i64) -> Result<Option<Vec<u8>>, StorageError> {
    let _ = (client, id);
    Err(StorageError::Incomplete(
        "reads::raw_body is not written yet".into(),
    ))
}
