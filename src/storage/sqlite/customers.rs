//! Reading the customer projection: one customer, and lists with filters, sorting, search and
//! paging, each served as the snapshot plus `mergedInto` and `experianCheck`.

use super::StorageError;
use crate::query::{CustomerField, CustomerQuery};
use crate::storage::customer_view::{
    VIEW_COLUMNS, column, customer_view, escape_like, keep_fields,
};
use crate::storage::filter_sql::{self, Column, Dialect, Param, Sql};
use crate::storage::model::CustomerPage;
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value};

/// The `WHERE` clause and its values. Merged-away customers, and ids known only from an
/// Experian check without a snapshot, are not listed; the list indexes carry that condition.
fn condition(query: &CustomerQuery) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = Sql::new(Dialect::Sqlite, "listed = 1");
    filter_sql::and_filter(&mut sql, &query.filter, column);
    if let Some(search) = &query.search {
        sql.push(" AND search LIKE ");
        sql.bind(Param::Text(format!("%{}%", escape_like(search))));
        sql.push(" ESCAPE '\\'");
    }
    (sql.text, sql.params.into_iter().map(Into::into).collect())
}

fn order(query: &CustomerQuery) -> String {
    let mut terms: Vec<String> = query
        .sort
        .iter()
        .filter_map(|(field, descending)| {
            // The query refuses to sort on fields without a column of their own.
            let Column::Named(name) = column(field) else {
                return None;
            };
            let direction = if *descending { "DESC" } else { "ASC" };
            Some(format!("{name} {direction}"))
        })
        .collect();
    // Ties are broken by id, so that paging walks every customer exactly once.
    if !query
        .sort
        .iter()
        .any(|(field, _)| *field == CustomerField::Id)
    {
        terms.push("id ASC".to_owned());
    }
    terms.join(", ")
}

fn view_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Map<String, Value>> {
    let id: String = row.get(0)?;
    let snapshot: Option<String> = row.get(1)?;
    let experian: Option<String> = row.get(3)?;
    Ok(customer_view(
        &id,
        snapshot.as_deref(),
        row.get(2)?,
        experian.as_deref(),
    ))
}

pub fn customer(conn: &Connection, id: &str) -> Result<Option<Value>, StorageError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {VIEW_COLUMNS} FROM customers WHERE id = ?1"
        ))?
        .query_row([id], view_from_row)
        .optional()?
        .map(Value::Object))
}

pub fn list(conn: &Connection, query: &CustomerQuery) -> Result<CustomerPage, StorageError> {
    let (condition, mut values) = condition(query);
    // The total and the page come from one snapshot, so that they agree under writes.
    let tx = conn.unchecked_transaction()?;
    let total: u64 = tx
        .prepare_cached(&format!("SELECT COUNT(*) FROM customers WHERE {condition}"))?
        .query_row(rusqlite::params_from_iter(&values), |r| r.get(0))?;
    values.push(i64::from(query.limit).into());
    values.push(i64::from(query.offset).into());
    // The page's rows are chosen first (from an index alone when it covers the condition and
    // the order), and only those rows' snapshots are read: a range of thousands of customers
    // sorted by id then costs an index scan, not thousands of snapshot reads.
    let order = order(query);
    let sql = format!(
        "SELECT {VIEW_COLUMNS} FROM customers WHERE rowid IN (
             SELECT rowid FROM customers WHERE {condition} ORDER BY {order} LIMIT ? OFFSET ?)
         ORDER BY {order}"
    );
    let customers = tx
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(&values), view_from_row)?
        .map(|view| view.map(|v| keep_fields(v, query.fields.as_deref())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CustomerPage {
        customers,
        total,
        limit: query.limit,
        offset: query.offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ListOptions;

    #[test]
    fn sorting_maps_fields_to_columns_and_breaks_ties_by_id() {
        let query = CustomerQuery::parse(&ListOptions {
            sort: Some("-createdTime,lastName".into()),
            ..ListOptions::default()
        })
        .unwrap();
        assert_eq!(order(&query), "created_ms DESC, last_name ASC, id ASC");
    }

    #[test]
    fn the_total_and_the_page_come_from_one_snapshot() {
        let db = crate::storage::sqlite::test_support::TestDb::new();
        db.connect()
            .execute_batch("INSERT INTO customers (id, snapshot, listed) VALUES ('a', '{}', 1), ('b', '{}', 1);")
            .unwrap();
        let reader = db.connect();
        db.write_at_every_step(
            &reader,
            "INSERT INTO customers (id, snapshot, listed) VALUES (hex(randomblob(8)), '{}', 1);",
        );
        let query = CustomerQuery::parse(&ListOptions {
            limit: Some("1000".into()),
            ..ListOptions::default()
        })
        .unwrap();
        let page = list(&reader, &query).unwrap();
        assert_eq!(page.customers.len() as u64, page.total);
        // The writes did land meanwhile: a later read sees them.
        let later = list(&db.connect(), &query).unwrap();
        assert!(later.total > page.total, "{later:?}");
    }
}
