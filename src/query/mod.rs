//! Queries over the projection and the event log, with Rebilly's list conventions:
//! `limit` (0..1000, default 100), `offset`, `sort` (`-` for descending), `filter` (Rebilly's
//! grammar, [`filter`]), `q` (partial search over names and emails) and `fields`.
//!
//! HTTP and the command line both parse their options into the types here; storage runs them.
//! Nothing here knows SQL or storage: fields are closed enums ([`fields`]) that storage maps to
//! its columns, and the parsed filter is an expression storage translates.

pub mod fields;
pub mod filter;

pub use fields::{CustomFieldName, CustomerField, EventField};
pub use filter::{Clause, Field, Filter, Matcher, Scalar, Term, ValueKind};

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

/// A parsed customer list query.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerQuery {
    pub limit: u32,
    pub offset: u32,
    /// Sort keys, `true` for descending; storage breaks ties by id.
    pub sort: Vec<(CustomerField, bool)>,
    /// The parsed `filter`; empty matches every customer.
    pub filter: Filter<CustomerField>,
    /// Lowercased partial text to find in names and emails.
    pub search: Option<String>,
    /// Top-level fields to return; all when `None`.
    pub fields: Option<Vec<String>>,
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

fn parse_sort(raw: &str) -> Result<Vec<(CustomerField, bool)>, QueryError> {
    raw.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (descending, name) = match part.strip_prefix('-') {
                Some(name) => (true, name),
                None => (false, part.strip_prefix('+').unwrap_or(part)),
            };
            let field = CustomerField::lookup(name).map_err(|e| query_error("sort", e))?;
            if !field.sortable() {
                return Err(query_error(
                    "sort",
                    format!(
                        "cannot sort by `{name}`; sortable fields: {}",
                        CustomerField::sortable_names().join(", ")
                    ),
                ));
            }
            Ok((field, descending))
        })
        .collect()
}

fn parse_filter<F: Field>(raw: &str) -> Result<Filter<F>, QueryError> {
    filter::parse(raw).map_err(|reason| query_error("filter", reason))
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
            filter: options
                .filter
                .as_deref()
                .map(parse_filter)
                .transpose()?
                .unwrap_or_default(),
            search,
            fields: options.fields.as_deref().map(parse_fields).transpose()?,
        })
    }
}

/// Event list options as they arrive, before parsing.
#[derive(Debug, Clone, Default)]
pub struct EventListOptions {
    pub customer_id: Option<String>,
    pub status: Option<String>,
    pub event_type: Option<String>,
    /// Rebilly's filter grammar over [`EventField`]s.
    pub filter: Option<String>,
    pub limit: Option<String>,
    pub offset: Option<String>,
}

/// A parsed event list query: newest first, every clause must match.
#[derive(Debug, Clone, PartialEq)]
pub struct EventQuery {
    pub filter: Filter<EventField>,
    pub limit: u32,
    pub offset: u32,
}

/// `customerId=`, `status=` and `eventType=` are shorthands for one-value clauses of `filter`.
pub fn parse_event_query(options: &EventListOptions) -> Result<EventQuery, QueryError> {
    let mut filter: Filter<EventField> = options
        .filter
        .as_deref()
        .map(parse_filter)
        .transpose()?
        .unwrap_or_default();
    let shorthands = [
        (EventField::CustomerId, "customerId", &options.customer_id),
        (EventField::Status, "status", &options.status),
        (EventField::EventType, "eventType", &options.event_type),
    ];
    for (field, parameter, value) in shorthands {
        let Some(value) = value else { continue };
        if let ValueKind::Choice(words) = field.kind()
            && !words.contains(&value.as_str())
        {
            return Err(query_error(
                parameter,
                format!("must be one of {}", words.join(", ")),
            ));
        }
        filter.clauses.push(Clause {
            field,
            terms: vec![Term {
                negated: false,
                matcher: Matcher::Equals(Scalar::Text(value.clone())),
            }],
        });
    }
    Ok(EventQuery {
        filter,
        limit: parse_limit(options.limit.as_deref())?,
        offset: parse_offset(options.offset.as_deref())?,
    })
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
    fn filters_and_sorts_parse_into_fields() {
        let query = CustomerQuery::parse(&options(
            "country:FR,DE;revision:3",
            "-createdTime,primaryAddress.lastName",
        ))
        .unwrap();
        assert_eq!(
            query.sort,
            vec![
                (CustomerField::CreatedTime, true),
                (CustomerField::LastName, false)
            ]
        );
        assert_eq!(query.filter.clauses.len(), 2);
        assert_eq!(query.filter.clauses[0].field, CustomerField::Country);
        assert_eq!(
            query.filter.clauses[1].terms[0].matcher,
            Matcher::Equals(Scalar::Integer(3))
        );
    }

    #[test]
    fn custom_fields_filter_but_do_not_sort() {
        assert!(CustomerQuery::parse(&options("customFields.tier:gold", "id")).is_ok());
        let error = CustomerQuery::parse(&options("", "customFields.tier")).unwrap_err();
        assert_eq!(error.parameter, "sort");
        assert!(error.reason.contains("cannot sort"));
    }

    #[test]
    fn event_shorthands_become_filter_clauses() {
        let query = parse_event_query(&EventListOptions {
            status: Some("stale".into()),
            filter: Some("revision:2..;receivedTime:2026-01-01T00:00:00Z..".into()),
            ..EventListOptions::default()
        })
        .unwrap();
        assert_eq!(
            query.filter.to_string(),
            "revision:2..;receivedTime:2026-01-01T00:00:00Z..;status:stale"
        );
        let error = parse_event_query(&EventListOptions {
            status: Some("lost".into()),
            ..EventListOptions::default()
        })
        .unwrap_err();
        assert_eq!(error.parameter, "status");
        let error = parse_event_query(&EventListOptions {
            filter: Some("status:lost".into()),
            ..EventListOptions::default()
        })
        .unwrap_err();
        assert!(error.reason.contains("lost"));
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
        let error = CustomerQuery::parse(&options("createdTime:soon..", "id")).unwrap_err();
        assert_eq!(error.parameter, "filter");
        assert!(error.reason.contains("createdTime"));
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
}
