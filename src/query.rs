//! Queries over the projection and the event log, with Rebilly's list conventions:
//! `limit` (0..1000, default 100), `offset`, `sort` (`-` for descending), `filter`
//! (`field:v1,v2;field2:v`), `q` (partial search over names and emails) and `fields`.
//!
//! HTTP and the command line both parse their options into the types here; storage runs them.
//! Nothing here knows SQL: fields are a closed enum that storage maps to its columns.

use crate::storage::{EventFilter, Status};

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

/// Fields of a customer that lists can filter and sort on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerField {
    Id,
    Email,
    FirstName,
    LastName,
    Company,
    Country,
    City,
    WebsiteId,
    CreatedTime,
    UpdatedTime,
    Revision,
}

impl CustomerField {
    pub const ALL: [CustomerField; 11] = [
        Self::Id,
        Self::Email,
        Self::FirstName,
        Self::LastName,
        Self::Company,
        Self::Country,
        Self::City,
        Self::WebsiteId,
        Self::CreatedTime,
        Self::UpdatedTime,
        Self::Revision,
    ];

    /// The name used in `filter` and `sort`, as in Rebilly's API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Email => "email",
            Self::FirstName => "firstName",
            Self::LastName => "lastName",
            Self::Company => "company",
            Self::Country => "country",
            Self::City => "city",
            Self::WebsiteId => "websiteId",
            Self::CreatedTime => "createdTime",
            Self::UpdatedTime => "updatedTime",
            Self::Revision => "revision",
        }
    }

    fn parse(name: &str, parameter: &str) -> Result<Self, QueryError> {
        Self::ALL
            .into_iter()
            .find(|field| field.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                query_error(
                    parameter,
                    format!("unknown field `{name}`; known fields: {}", known.join(", ")),
                )
            })
    }
}

/// A value a filter compares a field with.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Text(String),
    Integer(i64),
}

/// A parsed customer list query.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerQuery {
    pub limit: u32,
    pub offset: u32,
    /// Sort keys, `true` for descending; storage breaks ties by id.
    pub sort: Vec<(CustomerField, bool)>,
    /// Every filter must match; a filter matches any of its values.
    pub filters: Vec<(CustomerField, Vec<FilterValue>)>,
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
            let (descending, field) = match part.strip_prefix('-') {
                Some(field) => (true, field),
                None => (false, part.strip_prefix('+').unwrap_or(part)),
            };
            Ok((CustomerField::parse(field, "sort")?, descending))
        })
        .collect()
}

fn parse_filter(raw: &str) -> Result<Vec<(CustomerField, Vec<FilterValue>)>, QueryError> {
    raw.split(';')
        .filter(|clause| !clause.trim().is_empty())
        .map(|clause| {
            let (field, values) = clause.split_once(':').ok_or_else(|| {
                query_error(
                    "filter",
                    format!("`{clause}` is not `field:value[,value...]`"),
                )
            })?;
            let field = CustomerField::parse(field.trim(), "filter")?;
            let values = values
                .split(',')
                .map(|v| filter_value(field, v.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            if values
                .iter()
                .any(|v| *v == FilterValue::Text(String::new()))
            {
                return Err(query_error(
                    "filter",
                    format!("`{}` has an empty value", field.name()),
                ));
            }
            Ok((field, values))
        })
        .collect()
}

fn filter_value(field: CustomerField, value: &str) -> Result<FilterValue, QueryError> {
    if field == CustomerField::Revision {
        return value.parse().map(FilterValue::Integer).map_err(|_| {
            query_error(
                "filter",
                format!("`{}` values must be integers", field.name()),
            )
        });
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
        assert_eq!(query.sort, vec![(CustomerField::CreatedTime, true)]);
        assert_eq!(query.filters.len(), 2);
        assert_eq!(query.filters[0].0, CustomerField::Country);
        assert_eq!(query.filters[1].1, vec![FilterValue::Integer(3)]);
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
}
