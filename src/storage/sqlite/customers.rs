//! Reading the customer projection: one customer, and lists with filters, sorting, search and
//! paging, each served as the snapshot plus `mergedInto` and `experianCheck`.

use super::StorageError;
use super::filter_sql::{self, Column, Sql};
use crate::query::{CustomerField, CustomerQuery};
use crate::storage::model::CustomerPage;
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Map, Value};

/// Where each list field is read: a projection column (date-times as Unix milliseconds, so
/// that they compare as instants), or a scalar inside the snapshot for fields without one.
fn column(field: &CustomerField) -> Column {
    let named = match field {
        CustomerField::Id => "id",
        CustomerField::Email => "email",
        CustomerField::FirstName => "first_name",
        CustomerField::LastName => "last_name",
        CustomerField::Organization => "company",
        CustomerField::Country => "country",
        CustomerField::City => "city",
        CustomerField::WebsiteId => "website_id",
        CustomerField::CreatedTime => "created_ms",
        CustomerField::UpdatedTime => "updated_ms",
        CustomerField::Revision => "revision",
        CustomerField::PostalCode => {
            return Column::SnapshotScalar("$.primaryAddress.postalCode".to_owned());
        }
        CustomerField::Region => {
            return Column::SnapshotScalar("$.primaryAddress.region".to_owned());
        }
        // The name was checked to be letters, digits, `_` and `-`; it is bound, not spliced.
        CustomerField::Custom(name) => {
            return Column::SnapshotScalar(format!("$.customFields.\"{}\"", name.as_str()));
        }
    };
    Column::Named(named)
}

/// The `WHERE` clause and its values. Merged-away customers, and ids known only from an
/// Experian check without a snapshot, are not listed; the list indexes carry that condition.
fn condition(query: &CustomerQuery) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = Sql {
        text: "merged_into IS NULL AND snapshot IS NOT NULL".to_owned(),
        params: Vec::new(),
    };
    filter_sql::and_filter(&mut sql, &query.filter, column);
    if let Some(search) = &query.search {
        sql.text.push_str(" AND search LIKE ? ESCAPE '\\'");
        sql.params.push(rusqlite::types::Value::Text(format!(
            "%{}%",
            escape_like(search)
        )));
    }
    (sql.text, sql.params)
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

fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The customer as served: the snapshot plus `mergedInto` and `experianCheck`.
fn customer_view(
    id: &str,
    snapshot: Option<&str>,
    merged_into: Option<String>,
    experian_check: Option<&str>,
) -> Map<String, Value> {
    let mut view = snapshot
        .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
        .unwrap_or_else(|| {
            let mut only_id = Map::new();
            only_id.insert("id".into(), Value::String(id.to_owned()));
            only_id
        });
    view.insert(
        "mergedInto".into(),
        merged_into.map(Value::String).unwrap_or(Value::Null),
    );
    view.insert(
        "experianCheck".into(),
        experian_check
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or(Value::Null),
    );
    view
}

fn keep_fields(view: Map<String, Value>, fields: Option<&[String]>) -> Value {
    match fields {
        None => Value::Object(view),
        Some(fields) => Value::Object(
            view.into_iter()
                .filter(|(key, _)| fields.iter().any(|f| f == key))
                .collect(),
        ),
    }
}

const VIEW_COLUMNS: &str = "id, snapshot, merged_into, experian_check";

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
    fn search_text_is_escaped_for_like() {
        assert_eq!(escape_like("50%_a\\"), "50\\%\\_a\\\\");
    }

    #[test]
    fn the_total_and_the_page_come_from_one_snapshot() {
        let db = crate::storage::sqlite::test_support::TestDb::new();
        db.connect()
            .execute_batch("INSERT INTO customers (id, snapshot) VALUES ('a', '{}'), ('b', '{}');")
            .unwrap();
        let reader = db.connect();
        db.write_at_every_step(
            &reader,
            "INSERT INTO customers (id, snapshot) VALUES (hex(randomblob(8)), '{}');",
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

    #[test]
    fn fields_limit_the_view() {
        let view = customer_view("c", Some(r#"{"id":"c","email":"e","x":1}"#), None, None);
        let kept = keep_fields(view, Some(&["id".to_owned(), "mergedInto".to_owned()]));
        assert_eq!(kept, serde_json::json!({"id": "c", "mergedInto": null}));
    }
}
