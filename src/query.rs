//! Queries over the projection and the event log, with Rebilly's list conventions:
//! `limit` (0..1000, default 100), `offset`, `sort` (`-` for descending), `filter`
//! (`field:v1,v2;field2:v`), `q` (partial search over names and emails) and `fields`.
//!
//! HTTP and the command line both parse their options into the types here and run the same
//! queries, on reader connections.

use crate::storage::{EventFilter, Status, StorageError, Store};
use rusqlite::{Connection, OptionalExtension, ToSql};
use serde_json::{Map, Value};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// A query option that cannot be used; `parameter` names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {reason}")]
pub struct QueryError {
    pub parameter: String,
    pub reason: String,
}

fn query_error(parameter: &str, reason: impl Into<String>) -> QueryError {
    QueryError {
        parameter: parameter.to_owned(),
        reason: reason.into(),
    }
}

/// List options as they arrive, before parsing.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub limit: Option<String>,
    pub offset: Option<String>,
    pub sort: Option<String>,
    pub filter: Option<String>,
    pub q: Option<String>,
    pub fields: Option<String>,
}

/// Fields of a customer that lists can filter and sort on, with their columns.
const LIST_FIELDS: [(&str, &str); 11] = [
    ("id", "id"),
    ("email", "email"),
    ("firstName", "first_name"),
    ("lastName", "last_name"),
    ("company", "company"),
    ("country", "country"),
    ("city", "city"),
    ("websiteId", "website_id"),
    ("createdTime", "created_time"),
    ("updatedTime", "updated_time"),
    ("revision", "revision"),
];

fn column(field: &str, parameter: &str) -> Result<&'static str, QueryError> {
    LIST_FIELDS
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, column)| *column)
        .ok_or_else(|| {
            let known: Vec<&str> = LIST_FIELDS.iter().map(|(name, _)| *name).collect();
            query_error(
                parameter,
                format!(
                    "unknown field `{field}`; known fields: {}",
                    known.join(", ")
                ),
            )
        })
}

#[derive(Debug, Clone, PartialEq)]
enum FilterValue {
    Text(String),
    Integer(i64),
}

impl ToSql for FilterValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Text(text) => text.to_sql(),
            Self::Integer(value) => value.to_sql(),
        }
    }
}

/// A parsed customer list query.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerQuery {
    pub limit: u32,
    pub offset: u32,
    sort: Vec<(&'static str, bool)>,
    filters: Vec<(&'static str, Vec<FilterValue>)>,
    search: Option<String>,
    fields: Option<Vec<String>>,
}

pub fn parse_limit(raw: Option<&str>) -> Result<u32, QueryError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.trim().parse::<u32>() {
            Ok(limit) if limit <= MAX_LIMIT => Ok(limit),
            _ => Err(query_error("limit", "must be an integer from 0 to 1000")),
        },
    }
}

pub fn parse_offset(raw: Option<&str>) -> Result<u32, QueryError> {
    match raw {
        None => Ok(0),
        Some(text) => text
            .trim()
            .parse::<u32>()
            .map_err(|_| query_error("offset", "must be a non-negative integer")),
    }
}

fn parse_sort(raw: &str) -> Result<Vec<(&'static str, bool)>, QueryError> {
    raw.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (descending, field) = match part.strip_prefix('-') {
                Some(field) => (true, field),
                None => (false, part.strip_prefix('+').unwrap_or(part)),
            };
            Ok((column(field, "sort")?, descending))
        })
        .collect()
}

fn parse_filter(raw: &str) -> Result<Vec<(&'static str, Vec<FilterValue>)>, QueryError> {
    raw.split(';')
        .filter(|clause| !clause.trim().is_empty())
        .map(|clause| {
            let (field, values) = clause.split_once(':').ok_or_else(|| {
                query_error(
                    "filter",
                    format!("`{clause}` is not `field:value[,value...]`"),
                )
            })?;
            let column = column(field.trim(), "filter")?;
            let values = values
                .split(',')
                .map(|v| filter_value(column, field.trim(), v.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            if values
                .iter()
                .any(|v| *v == FilterValue::Text(String::new()))
            {
                return Err(query_error(
                    "filter",
                    format!("`{}` has an empty value", field.trim()),
                ));
            }
            Ok((column, values))
        })
        .collect()
}

fn filter_value(column: &str, field: &str, value: &str) -> Result<FilterValue, QueryError> {
    if column == "revision" {
        return value
            .parse()
            .map(FilterValue::Integer)
            .map_err(|_| query_error("filter", format!("`{field}` values must be integers")));
    }
    Ok(FilterValue::Text(value.to_owned()))
}

fn parse_fields(raw: &str) -> Result<Vec<String>, QueryError> {
    let fields: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    let valid = |f: &String| f.chars().all(|c| c.is_alphanumeric() || c == '_');
    if fields.is_empty() || !fields.iter().all(valid) {
        return Err(query_error(
            "fields",
            "must be a comma-separated list of field names",
        ));
    }
    Ok(fields)
}

impl CustomerQuery {
    pub fn parse(options: &ListOptions) -> Result<Self, QueryError> {
        let search = options
            .q
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_lowercase);
        Ok(Self {
            limit: parse_limit(options.limit.as_deref())?,
            offset: parse_offset(options.offset.as_deref())?,
            sort: options
                .sort
                .as_deref()
                .map(parse_sort)
                .transpose()?
                .unwrap_or_default(),
            filters: options
                .filter
                .as_deref()
                .map(parse_filter)
                .transpose()?
                .unwrap_or_default(),
            search,
            fields: options.fields.as_deref().map(parse_fields).transpose()?,
        })
    }

    fn condition(&self) -> (String, Vec<Box<dyn ToSql + Send>>) {
        let mut clauses = vec![
            "merged_into IS NULL".to_owned(),
            "snapshot IS NOT NULL".to_owned(),
        ];
        let mut values: Vec<Box<dyn ToSql + Send>> = Vec::new();
        for (column, choices) in &self.filters {
            let marks = vec!["?"; choices.len()].join(", ");
            clauses.push(format!("{column} IN ({marks})"));
            values.extend(
                choices
                    .iter()
                    .map(|v| Box::new(v.clone()) as Box<dyn ToSql + Send>),
            );
        }
        if let Some(search) = &self.search {
            clauses.push("search LIKE ? ESCAPE '\\'".to_owned());
            values.push(Box::new(format!("%{}%", escape_like(search))));
        }
        (clauses.join(" AND "), values)
    }

    fn order(&self) -> String {
        let mut terms: Vec<String> = self
            .sort
            .iter()
            .map(|(column, descending)| {
                format!("{column} {}", if *descending { "DESC" } else { "ASC" })
            })
            .collect();
        // Ties are broken by id, so that paging walks every customer exactly once.
        if !self.sort.iter().any(|(column, _)| *column == "id") {
            terms.push("id ASC".to_owned());
        }
        terms.join(", ")
    }
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

/// A page of customers and the total count matching the query.
#[derive(Debug, Clone)]
pub struct CustomerPage {
    pub customers: Vec<Value>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
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

pub fn list_customers(
    conn: &Connection,
    query: &CustomerQuery,
) -> Result<CustomerPage, StorageError> {
    let (condition, mut values) = query.condition();
    let params: Vec<&dyn ToSql> = values.iter().map(|v| v.as_ref() as &dyn ToSql).collect();
    let total: u64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM customers WHERE {condition}"))?
        .query_row(params.as_slice(), |r| r.get(0))?;
    values.push(Box::new(i64::from(query.limit)));
    values.push(Box::new(i64::from(query.offset)));
    let params: Vec<&dyn ToSql> = values.iter().map(|v| v.as_ref() as &dyn ToSql).collect();
    let sql = format!(
        "SELECT {VIEW_COLUMNS} FROM customers WHERE {condition} ORDER BY {} LIMIT ? OFFSET ?",
        query.order()
    );
    let customers = conn
        .prepare_cached(&sql)?
        .query_map(params.as_slice(), view_from_row)?
        .map(|view| view.map(|v| keep_fields(v, query.fields.as_deref())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CustomerPage {
        customers,
        total,
        limit: query.limit,
        offset: query.offset,
    })
}

/// Event list options as they arrive, before parsing.
#[derive(Debug, Clone, Default)]
pub struct EventListOptions {
    pub customer_id: Option<String>,
    pub status: Option<String>,
    pub event_type: Option<String>,
    pub limit: Option<String>,
    pub offset: Option<String>,
}

pub fn parse_event_filter(options: &EventListOptions) -> Result<EventFilter, QueryError> {
    let status = options
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                query_error(
                    "status",
                    "must be one of applied, stale, duplicate, ignored, rejected",
                )
            })
        })
        .transpose()?;
    Ok(EventFilter {
        customer_id: options.customer_id.clone(),
        status,
        event_type: options.event_type.clone(),
        limit: parse_limit(options.limit.as_deref())?,
        offset: parse_offset(options.offset.as_deref())?,
    })
}

/// The query side of the library, shared by HTTP and the command line.
#[derive(Clone)]
pub struct Queries {
    store: Store,
}

impl Queries {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub async fn customer(&self, id: String) -> Result<Option<Value>, StorageError> {
        self.store.read(move |conn| customer(conn, &id)).await
    }

    pub async fn customers(&self, query: CustomerQuery) -> Result<CustomerPage, StorageError> {
        self.store
            .read(move |conn| list_customers(conn, &query))
            .await
    }

    pub async fn events(
        &self,
        filter: EventFilter,
    ) -> Result<(Vec<crate::storage::EventRecord>, u64), StorageError> {
        self.store
            .read(move |conn| crate::storage::list_events(conn, &filter))
            .await
    }

    pub async fn event(
        &self,
        id: i64,
    ) -> Result<Option<crate::storage::EventDetail>, StorageError> {
        self.store
            .read(move |conn| crate::storage::event_detail(conn, id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(filter: &str, sort: &str) -> ListOptions {
        ListOptions {
            filter: Some(filter.into()),
            sort: Some(sort.into()),
            ..ListOptions::default()
        }
    }

    #[test]
    fn filters_and_sorts_parse_into_columns() {
        let query =
            CustomerQuery::parse(&options("country:FR,DE;revision:3", "-createdTime")).unwrap();
        assert_eq!(query.sort, vec![("created_time", true)]);
        assert_eq!(query.filters.len(), 2);
        assert_eq!(query.filters[1].1, vec![FilterValue::Integer(3)]);
        assert_eq!(query.order(), "created_time DESC, id ASC");
    }

    #[test]
    fn unknown_fields_and_malformed_filters_are_named() {
        let error = CustomerQuery::parse(&options("colour:red", "id")).unwrap_err();
        assert_eq!(error.parameter, "filter");
        assert!(error.reason.contains("colour"));
        let error = CustomerQuery::parse(&options("country", "id")).unwrap_err();
        assert!(error.reason.contains("field:value"));
        let error = CustomerQuery::parse(&options("country:FR", "-shoeSize")).unwrap_err();
        assert_eq!(error.parameter, "sort");
        let error = CustomerQuery::parse(&options("revision:x", "id")).unwrap_err();
        assert!(error.reason.contains("integers"));
    }

    #[test]
    fn limits_follow_rebillys_range() {
        assert_eq!(parse_limit(None).unwrap(), 100);
        assert_eq!(parse_limit(Some("0")).unwrap(), 0);
        assert_eq!(parse_limit(Some("1000")).unwrap(), 1000);
        assert!(parse_limit(Some("1001")).is_err());
        assert!(parse_limit(Some("-1")).is_err());
        assert!(parse_offset(Some("x")).is_err());
    }

    #[test]
    fn search_text_is_escaped_for_like() {
        assert_eq!(escape_like("50%_a\\"), "50\\%\\_a\\\\");
    }

    #[test]
    fn fields_limit_the_view() {
        let view = customer_view("c", Some(r#"{"id":"c","email":"e","x":1}"#), None, None);
        let kept = keep_fields(view, Some(&["id".to_owned(), "mergedInto".to_owned()]));
        assert_eq!(kept, serde_json::json!({"id": "c", "mergedInto": null}));
    }
}
