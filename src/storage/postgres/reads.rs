//! Reading the PostgreSQL projection and event log: one customer, lists with the filter
//! grammar, the event log and one event.
//!
//! A list's total and its page come from one statement, so that they come from one snapshot
//! and agree under writes by any daemon; one statement also leaves no transaction open on a
//! pooled connection when a request is cancelled half-way.

use crate::clock::rfc3339_ms;
use crate::query::{CustomerField, CustomerQuery, EventField, EventQuery, Scalar};
use crate::storage::StorageError;
use crate::storage::customer_view::{
    VIEW_COLUMNS, column, customer_view, escape_like, keep_fields,
};
use crate::storage::filter_sql::{self, Column, Dialect, Param, Sql};
use crate::storage::model::{CustomerPage, EventDetail, EventRecord, HandlerAttempt};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

/// The parameters of `sql` as the driver takes them.
pub(super) fn params(sql: &Sql) -> Vec<&(dyn ToSql + Sync)> {
    sql.params
        .iter()
        .map(|param| match param {
            Param::Text(text) => text as &(dyn ToSql + Sync),
            Param::Integer(value) => value,
            Param::TextList(list) => list,
        })
        .collect()
}

fn view_from_row(row: &Row) -> Result<Map<String, Value>, tokio_postgres::Error> {
    let id: String = row.try_get(0)?;
    let snapshot: Option<String> = row.try_get(1)?;
    let experian: Option<String> = row.try_get(3)?;
    Ok(customer_view(
        &id,
        snapshot.as_deref(),
        row.try_get(2)?,
        experian.as_deref(),
    ))
}

pub async fn customer(client: &Client, id: &str) -> Result<Option<Value>, StorageError> {
    if !Dialect::Postgres.can_equal(&Scalar::Text(id.to_owned())) {
        return Ok(None);
    }
    let sql = format!("SELECT {VIEW_COLUMNS} FROM customers WHERE id = $1");
    let row = client.query_opt(&sql, &[&id]).await?;
    Ok(row
        .map(|row| view_from_row(&row))
        .transpose()?
        .map(Value::Object))
}

/// The `WHERE` clause and its values. Merged-away customers, and ids known only from an
/// Experian check without a snapshot, are not listed.
fn customer_condition(query: &CustomerQuery) -> Sql {
    let mut sql = Sql::new(
        Dialect::Postgres,
        "merged_into IS NULL AND snapshot IS NOT NULL",
    );
    filter_sql::and_filter(&mut sql, &query.filter, column);
    if let Some(search) = &query.search {
        if Dialect::Postgres.can_equal(&Scalar::Text(search.clone())) {
            sql.push(" AND search LIKE ");
            sql.bind(Param::Text(format!("%{}%", escape_like(search))));
            // `E''`: one backslash whatever `standard_conforming_strings` says.
            sql.push(" ESCAPE E'\\\\'");
        } else {
            sql.push(" AND FALSE");
        }
    }
    sql
}

/// One key of the list order.
struct OrderTerm {
    column: &'static str,
    text: bool,
    descending: bool,
}

impl OrderTerm {
    /// The key as SQLite orders it: text by code point (`COLLATE "C"`, whatever the database's
    /// locale), NULL before any value ascending and after every value descending. `id` is never
    /// NULL: without a NULLS clause, its order is the one its index has.
    fn sql(&self, table: &str) -> String {
        let collate = if self.text { " COLLATE \"C\"" } else { "" };
        let direction = match (self.descending, self.column == "id") {
            (false, true) => "ASC",
            (true, true) => "DESC",
            (false, false) => "ASC NULLS FIRST",
            (true, false) => "DESC NULLS LAST",
        };
        format!("{table}{}{collate} {direction}", self.column)
    }
}

/// The list order; ties are broken by id, so that paging walks every customer exactly once.
fn customer_order(query: &CustomerQuery) -> Vec<OrderTerm> {
    let mut terms: Vec<OrderTerm> = query
        .sort
        .iter()
        .filter_map(|(field, descending)| {
            // The query refuses to sort on fields without a column of their own.
            let Column::Named(column) = column(field) else {
                return None;
            };
            Some(OrderTerm {
                column,
                text: is_text(field),
                descending: *descending,
            })
        })
        .collect();
    if !query
        .sort
        .iter()
        .any(|(field, _)| *field == CustomerField::Id)
    {
        terms.push(OrderTerm {
            column: "id",
            text: true,
            descending: false,
        });
    }
    terms
}

fn order_sql(terms: &[OrderTerm], table: &str) -> String {
    terms
        .iter()
        .map(|term| term.sql(table))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_text(field: &CustomerField) -> bool {
    !matches!(
        field,
        CustomerField::CreatedTime | CustomerField::UpdatedTime | CustomerField::Revision
    )
}

/// One statement for the count and the page, so that both come from one snapshot: the count
/// row is joined to the page, so an offset past the end still answers the total. The page is
/// chosen on the order's columns alone (from an index when one covers the condition and the
/// order), and only its rows' snapshots are read.
fn customer_page_sql(query: &CustomerQuery) -> Sql {
    let mut sql = customer_condition(query);
    let condition = std::mem::take(&mut sql.text);
    let limit = sql.placeholder(Param::Integer(i64::from(query.limit)));
    let offset = sql.placeholder(Param::Integer(i64::from(query.offset)));
    let order = customer_order(query);
    let mut keys: Vec<&str> = Vec::new();
    for term in &order {
        if !keys.contains(&term.column) {
            keys.push(term.column);
        }
    }
    sql.text = format!(
        "SELECT c.id, c.snapshot, c.merged_into, c.experian_check, total.n
         FROM (SELECT COUNT(*) AS n FROM customers WHERE {condition}) total
         LEFT JOIN LATERAL (
             SELECT {keys} FROM customers WHERE {condition}
             ORDER BY {inner} LIMIT {limit} OFFSET {offset}) page ON TRUE
         LEFT JOIN customers c ON c.id = page.id
         ORDER BY {outer}",
        keys = keys.join(", "),
        inner = order_sql(&order, ""),
        outer = order_sql(&order, "page."),
    );
    sql
}

pub async fn customers(
    client: &Client,
    query: &CustomerQuery,
) -> Result<CustomerPage, StorageError> {
    let sql = customer_page_sql(query);
    let rows = client.query(&sql.text, &params(&sql)).await?;
    let total = match rows.first() {
        Some(row) => row.try_get::<_, i64>(4)?,
        None => 0,
    };
    let mut customers = Vec::with_capacity(rows.len());
    for row in &rows {
        // The count row alone, when the page is empty.
        if row.try_get::<_, Option<String>>(0)?.is_none() {
            continue;
        }
        customers.push(keep_fields(view_from_row(row)?, query.fields.as_deref()));
    }
    Ok(CustomerPage {
        customers,
        total: u64::try_from(total).unwrap_or(0),
        limit: query.limit,
        offset: query.offset,
    })
}

/// The event log column behind each filter field.
fn event_column(field: &EventField) -> Column {
    Column::Named(match field {
        EventField::Id => "id",
        EventField::CustomerId => "customer_id",
        EventField::EventType => "event_type",
        EventField::Status => "status",
        EventField::Revision => "revision",
        EventField::ReceivedTime => "received_ms",
    })
}

const RECORD_COLUMNS: &str = "id, received_ms, event_type, customer_id, revision, status, error";

fn record(row: &Row, at: usize) -> Result<EventRecord, tokio_postgres::Error> {
    Ok(EventRecord {
        id: row.try_get(at)?,
        received_time: rfc3339_ms(row.try_get(at + 1)?),
        event_type: row.try_get(at + 2)?,
        customer_id: row.try_get(at + 3)?,
        revision: row.try_get(at + 4)?,
        status: row.try_get(at + 5)?,
        error: row.try_get(at + 6)?,
    })
}

fn event_page_sql(query: &EventQuery) -> Sql {
    let mut sql = Sql::new(Dialect::Postgres, "TRUE");
    filter_sql::and_filter(&mut sql, &query.filter, event_column);
    let condition = std::mem::take(&mut sql.text);
    let limit = sql.placeholder(Param::Integer(i64::from(query.limit)));
    let offset = sql.placeholder(Param::Integer(i64::from(query.offset)));
    sql.text = format!(
        "SELECT total.n, page.*
         FROM (SELECT COUNT(*) AS n FROM events WHERE {condition}) total
         LEFT JOIN LATERAL (
             SELECT {RECORD_COLUMNS} FROM events WHERE {condition}
             ORDER BY id DESC LIMIT {limit} OFFSET {offset}) page ON TRUE
         ORDER BY page.id DESC"
    );
    sql
}

/// Lists events newest first; returns the page and the total matching count.
pub async fn events(
    client: &Client,
    query: &EventQuery,
) -> Result<(Vec<EventRecord>, u64), StorageError> {
    let sql = event_page_sql(query);
    let rows = client.query(&sql.text, &params(&sql)).await?;
    let total = match rows.first() {
        Some(row) => row.try_get::<_, i64>(0)?,
        None => 0,
    };
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<_, Option<i64>>(1)?.is_none() {
            continue;
        }
        records.push(record(row, 1)?);
    }
    Ok((records, u64::try_from(total).unwrap_or(0)))
}

pub async fn event(client: &Client, id: i64) -> Result<Option<EventDetail>, StorageError> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS}, error_field, duplicate_of, body_size, body
         FROM events WHERE id = $1"
    );
    let Some(row) = client.query_opt(&sql, &[&id]).await? else {
        return Ok(None);
    };
    let body: Option<Vec<u8>> = row.try_get(10)?;
    Ok(Some(EventDetail {
        record: record(&row, 0)?,
        error_field: row.try_get(7)?,
        duplicate_of: row.try_get(8)?,
        body_size: row.try_get(9)?,
        body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
        handlers: handler_attempts(client, id).await?,
    }))
}

/// Every handler's state for one event: owed (pending or dead) or skipped, by handler name.
async fn handler_attempts(client: &Client, id: i64) -> Result<Vec<HandlerAttempt>, StorageError> {
    let sql = "SELECT handler, state, attempts, last_error, next_attempt_ms FROM (
                   SELECT handler, state, attempts::BIGINT, last_error, next_attempt_ms
                   FROM handler_deliveries WHERE event_id = $1
                   UNION ALL
                   SELECT handler, 'skipped', 0, reason, skipped_ms
                   FROM handler_skips WHERE event_id = $1) attempts
               ORDER BY handler COLLATE \"C\"";
    let mut attempts = Vec::new();
    for row in client.query(sql, &[&id]).await? {
        let state: String = row.try_get(1)?;
        let next: i64 = row.try_get(4)?;
        attempts.push(HandlerAttempt {
            handler: row.try_get(0)?,
            next_attempt_time: (state == "pending").then(|| rfc3339_ms(next)),
            state,
            attempts: row.try_get(2)?,
            last_error: row.try_get(3)?,
        });
    }
    Ok(attempts)
}

/// The raw body of an event, for replaying it; `None` if unknown or pruned. A byte-identical
/// redelivery keeps no body of its own and serves its original's.
pub async fn raw_body(client: &Client, id: i64) -> Result<Option<Vec<u8>>, StorageError> {
    let statement = client
        .prepare("SELECT body, duplicate_of FROM events WHERE id = $1")
        .await?;
    let mut next = Some(id);
    while let Some(id) = next {
        let Some(row) = client.query_opt(&statement, &[&id]).await? else {
            return Ok(None);
        };
        if let Some(body) = row.try_get::<_, Option<Vec<u8>>>(0)? {
            return Ok(Some(body));
        }
        next = row.try_get(1)?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ListOptions;

    fn query(options: ListOptions) -> CustomerQuery {
        CustomerQuery::parse(&options).unwrap()
    }

    #[test]
    fn sorting_matches_sqlite_for_text_nulls_and_ties() {
        let query = query(ListOptions {
            sort: Some("-createdTime,lastName".into()),
            ..ListOptions::default()
        });
        assert_eq!(
            order_sql(&customer_order(&query), "page."),
            "page.created_ms DESC NULLS LAST, page.last_name COLLATE \"C\" ASC NULLS FIRST, \
             page.id COLLATE \"C\" ASC"
        );
    }

    #[test]
    fn the_count_and_the_page_share_the_condition_and_its_values() {
        let query = query(ListOptions {
            filter: Some("country:FR;customFields.tier:gold".into()),
            q: Some("Ada".into()),
            limit: Some("5".into()),
            offset: Some("10".into()),
            ..ListOptions::default()
        });
        let sql = customer_page_sql(&query);
        assert_eq!(
            sql.params,
            vec![
                Param::Text("FR".into()),
                Param::TextList(vec!["customFields".into(), "tier".into()]),
                Param::Text("gold".into()),
                Param::Text("%ada%".into()),
                Param::Integer(5),
                Param::Integer(10),
            ]
        );
        assert_eq!(sql.text.matches("search LIKE $4 ESCAPE E'\\\\'").count(), 2);
        assert!(sql.text.contains("LIMIT $5 OFFSET $6"), "{}", sql.text);
        assert!(
            sql.text.ends_with("ORDER BY page.id COLLATE \"C\" ASC"),
            "{}",
            sql.text
        );
    }

    #[test]
    fn event_filters_bind_numbers_and_instants_as_integers() {
        let query = EventQuery {
            filter: crate::query::filter::parse(
                "receivedTime:2026-01-01T00:00:00Z..;status:applied",
            )
            .unwrap(),
            limit: 10,
            offset: 0,
        };
        let sql = event_page_sql(&query);
        assert!(
            sql.text
                .contains("TRUE AND (((received_ms >= $1))) AND ((status IN ($2)))"),
            "{}",
            sql.text
        );
        assert_eq!(sql.params[0], Param::Integer(1_767_225_600_000));
    }
}
