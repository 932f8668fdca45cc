//! The event model: Rebilly webhook bodies parsed into a typed enum.
//!
//! This module knows nothing of HTTP, SQL or configuration. It turns raw bytes into an [`Event`]
//! or a [`ParseError`] that names the offending field, and keeps every field it does not know
//! (the whole JSON object travels with the event) because Rebilly adds fields over time.

use crate::timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use time::OffsetDateTime;

pub const CUSTOMER_CREATED: &str = "customer-created";
pub const CUSTOMER_UPDATED: &str = "customer-updated";
pub const CUSTOMER_MERGED: &str = "customer-merged";
pub const EXPERIAN_CHECK_PERFORMED: &str = "experian-check-performed";
/// A snapshot fetched from Rebilly's Customers API by `sync`. [`parse`] never yields it, so a
/// webhook body cannot claim that source; only [`parse_synced`] does.
pub const CUSTOMER_SYNCED: &str = "customer-synced";

const MAX_CUSTOMER_ID_LEN: usize = 50;
const MAX_EVENT_TYPE_LEN: usize = 100;

/// A Rebilly customer id: `^[@~\-\.\w]+$`, at most 50 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CustomerId(String);

impl CustomerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for CustomerId {
    type Error = &'static str;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        if value.is_empty() {
            return Err("must not be empty");
        }
        if value.chars().count() > MAX_CUSTOMER_ID_LEN {
            return Err("must be at most 50 characters");
        }
        let allowed = |c: char| c.is_alphanumeric() || matches!(c, '_' | '@' | '~' | '-' | '.');
        if !value.chars().all(allowed) {
            return Err("must match ^[@~\\-\\.\\w]+$");
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many times Rebilly has modified one customer; only comparable within that customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(i64);

impl Revision {
    pub fn new(value: i64) -> Self {
        Self(value)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// The result of an Experian identity check as Rebilly reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperianOutcome {
    /// `1`: the record matches.
    Match,
    /// `0`: no match was found.
    NoMatch,
    /// `-1`: the record mismatches.
    Mismatch,
}

impl ExperianOutcome {
    pub fn code(self) -> i64 {
        match self {
            Self::Match => 1,
            Self::NoMatch => 0,
            Self::Mismatch => -1,
        }
    }

    fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Match),
            0 => Some(Self::NoMatch),
            -1 => Some(Self::Mismatch),
            _ => None,
        }
    }
}

/// A customer snapshot: the full Customer resource, with the fields the ordering rules need typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: CustomerId,
    /// `None` when absent or `null`.
    pub revision: Option<Revision>,
    /// `updatedTime` in RFC 3339 or one of Rebilly's older forms ([`crate::timestamp`]);
    /// `None` when absent, `null` or unreadable, which the ordering rules treat alike.
    pub updated_time: Option<OffsetDateTime>,
    /// The whole resource as Rebilly sent it, unknown fields included.
    pub resource: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CustomerChanged {
    pub customer: Customer,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CustomerMerged {
    pub target_id: CustomerId,
    pub duplicated: Customer,
    pub target: Option<Customer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExperianCheck {
    pub customer_id: CustomerId,
    pub outcome: ExperianOutcome,
    pub reason: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub customer: Option<Customer>,
}

impl ExperianCheck {
    /// The check as the projection serves it under `experianCheck`.
    pub fn summary(&self) -> Value {
        serde_json::json!({
            "outcome": self.outcome.code(),
            "reason": self.reason,
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
        })
    }
}

/// One webhook delivery, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    CustomerCreated(CustomerChanged),
    CustomerUpdated(CustomerChanged),
    CustomerMerged(CustomerMerged),
    ExperianCheckPerformed(ExperianCheck),
    /// A customer snapshot read from Rebilly's API, not a webhook.
    CustomerSynced(CustomerChanged),
    /// Any other Rebilly event type: kept in the log, answered `ignored`.
    Other {
        event_type: String,
    },
}

impl Event {
    pub fn event_type(&self) -> &str {
        match self {
            Self::CustomerCreated(_) => CUSTOMER_CREATED,
            Self::CustomerUpdated(_) => CUSTOMER_UPDATED,
            Self::CustomerMerged(_) => CUSTOMER_MERGED,
            Self::ExperianCheckPerformed(_) => EXPERIAN_CHECK_PERFORMED,
            Self::CustomerSynced(_) => CUSTOMER_SYNCED,
            Self::Other { event_type } => event_type,
        }
    }

    /// The customer the event is about (the target, for a merge).
    pub fn customer_id(&self) -> Option<&CustomerId> {
        match self {
            Self::CustomerCreated(e) | Self::CustomerUpdated(e) | Self::CustomerSynced(e) => {
                Some(&e.customer.id)
            }
            Self::CustomerMerged(e) => Some(&e.target_id),
            Self::ExperianCheckPerformed(e) => Some(&e.customer_id),
            Self::Other { .. } => None,
        }
    }

    /// The revision recorded in the log: the snapshot's revision the event carries.
    pub fn revision(&self) -> Option<Revision> {
        match self {
            Self::CustomerCreated(e) | Self::CustomerUpdated(e) | Self::CustomerSynced(e) => {
                e.customer.revision
            }
            Self::CustomerMerged(e) => e.target.as_ref().and_then(|t| t.revision),
            Self::ExperianCheckPerformed(e) => e.customer.as_ref().and_then(|c| c.revision),
            Self::Other { .. } => None,
        }
    }
}

/// Why a body cannot be used. `field` is a JSON path such as `_embedded.customer.revision`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or JSON that is not an object: HTTP 400.
    #[error("body is not a JSON object: {0}")]
    NotAnObject(String),
    /// A known event type whose body cannot be used: HTTP 422.
    #[error("{field} {reason}")]
    Unusable { field: String, reason: String },
}

impl ParseError {
    fn unusable(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Unusable {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            Self::NotAnObject(_) => None,
            Self::Unusable { field, .. } => Some(field),
        }
    }
}

/// The body as a JSON object, or why it is not one (HTTP 400).
fn json_object(body: &[u8]) -> Result<Map<String, Value>, ParseError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotAnObject(e.to_string()))?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(ParseError::NotAnObject(format!(
            "expected an object, found {}",
            json_kind(&other)
        ))),
    }
}

/// Parses a webhook body into an [`Event`].
pub fn parse(body: &[u8]) -> Result<Event, ParseError> {
    let mut object = json_object(body)?;
    let event_type = event_type(&object)?;
    match event_type.as_str() {
        CUSTOMER_CREATED => customer_changed(&mut object).map(Event::CustomerCreated),
        CUSTOMER_UPDATED => customer_changed(&mut object).map(Event::CustomerUpdated),
        CUSTOMER_MERGED => customer_merged(&mut object).map(Event::CustomerMerged),
        EXPERIAN_CHECK_PERFORMED => experian_check(&mut object).map(Event::ExperianCheckPerformed),
        _ => Ok(Event::Other { event_type }),
    }
}

/// Parses a snapshot envelope written by `sync` (`eventType` `customer-synced`, the customer
/// under `_embedded.customer`) into [`Event::CustomerSynced`]. Only bodies stored with the sync
/// source are read this way, when they are fetched and when the projection is rebuilt.
pub fn parse_synced(body: &[u8]) -> Result<Event, ParseError> {
    let mut object = json_object(body)?;
    if event_type(&object)? != CUSTOMER_SYNCED {
        return Err(ParseError::unusable(
            "eventType",
            format!("must be {CUSTOMER_SYNCED} for a synced snapshot"),
        ));
    }
    customer_changed(&mut object).map(Event::CustomerSynced)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn event_type(object: &Map<String, Value>) -> Result<String, ParseError> {
    let value = match object.get("eventType") {
        None | Some(Value::Null) => return Err(ParseError::unusable("eventType", "is missing")),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ParseError::unusable(
                "eventType",
                format!("must be a string, found {}", json_kind(other)),
            ));
        }
    };
    let well_formed = !value.is_empty()
        && value.len() <= MAX_EVENT_TYPE_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !well_formed {
        return Err(ParseError::unusable(
            "eventType",
            "is not a Rebilly event type (lowercase words joined by '-')",
        ));
    }
    Ok(value.clone())
}

fn customer_changed(object: &mut Map<String, Value>) -> Result<CustomerChanged, ParseError> {
    let top_id = optional_customer_id(object, "customerId", "customerId")?;
    let embedded = take_embedded(object, "customer")?
        .ok_or_else(|| missing_customer_field(top_id.is_some()))?;
    let customer = customer(embedded, "_embedded.customer", top_id.as_ref())?;
    Ok(CustomerChanged { customer })
}

fn missing_customer_field(has_top_id: bool) -> ParseError {
    if has_top_id {
        ParseError::unusable("_embedded.customer", "is missing")
    } else {
        ParseError::unusable("customerId", "is missing")
    }
}

fn customer_merged(object: &mut Map<String, Value>) -> Result<CustomerMerged, ParseError> {
    let target_id = optional_customer_id(object, "targetCustomerId", "targetCustomerId")?;
    let duplicated = match object.remove("duplicatedCustomer") {
        None | Some(Value::Null) => {
            return Err(ParseError::unusable("duplicatedCustomer", "is missing"));
        }
        Some(value) => customer(value, "duplicatedCustomer", None)?,
    };
    let target = take_embedded(object, "targetCustomer")?
        .map(|value| customer(value, "_embedded.targetCustomer", target_id.as_ref()))
        .transpose()?;
    let target_id = match (target_id, &target) {
        (Some(id), _) => id,
        (None, Some(target)) => target.id.clone(),
        (None, None) => return Err(ParseError::unusable("targetCustomerId", "is missing")),
    };
    if duplicated.id == target_id {
        return Err(ParseError::unusable(
            "duplicatedCustomer.id",
            "must differ from targetCustomerId",
        ));
    }
    Ok(CustomerMerged {
        target_id,
        duplicated,
        target,
    })
}

fn experian_check(object: &mut Map<String, Value>) -> Result<ExperianCheck, ParseError> {
    let top_id = optional_customer_id(object, "customerId", "customerId")?;
    let customer = take_embedded(object, "customer")?
        .map(|value| customer(value, "_embedded.customer", top_id.as_ref()))
        .transpose()?;
    let customer_id = match (top_id, &customer) {
        (Some(id), _) => id,
        (None, Some(c)) => c.id.clone(),
        (None, None) => return Err(ParseError::unusable("customerId", "is missing")),
    };
    let outcome = match object.get("outcome") {
        None | Some(Value::Null) => return Err(ParseError::unusable("outcome", "is missing")),
        Some(value) => value
            .as_i64()
            .and_then(ExperianOutcome::from_code)
            .ok_or_else(|| ParseError::unusable("outcome", "must be 1, 0 or -1"))?,
    };
    Ok(ExperianCheck {
        customer_id,
        outcome,
        reason: optional_string(object, "reason")?,
        error_code: optional_string(object, "errorCode")?,
        error_message: optional_string(object, "errorMessage")?,
        customer,
    })
}

fn optional_string(object: &Map<String, Value>, key: &str) -> Result<Option<String>, ParseError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // Rebilly documents errorCode as a string, but a number is unambiguous: keep it.
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(ParseError::unusable(
            key,
            format!("must be a string, found {}", json_kind(other)),
        )),
    }
}

/// Removes `_embedded.<key>` from the body; the rest of the body stays in the raw log.
fn take_embedded(object: &mut Map<String, Value>, key: &str) -> Result<Option<Value>, ParseError> {
    match object.get_mut("_embedded") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(embedded)) => Ok(embedded.remove(key).filter(|v| !v.is_null())),
        Some(other) => Err(ParseError::unusable(
            "_embedded",
            format!("must be an object, found {}", json_kind(other)),
        )),
    }
}

fn optional_customer_id(
    object: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<CustomerId>, ParseError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => CustomerId::try_from(s.as_str())
            .map(Some)
            .map_err(|reason| ParseError::unusable(field, reason)),
        Some(other) => Err(ParseError::unusable(
            field,
            format!("must be a string, found {}", json_kind(other)),
        )),
    }
}

fn customer(
    value: Value,
    path: &str,
    expected_id: Option<&CustomerId>,
) -> Result<Customer, ParseError> {
    let Value::Object(resource) = value else {
        return Err(ParseError::unusable(
            path,
            format!("must be an object, found {}", json_kind(&value)),
        ));
    };
    let id_field = format!("{path}.id");
    let id = match (
        optional_customer_id(&resource, "id", &id_field)?,
        expected_id,
    ) {
        (Some(id), Some(expected)) if &id != expected => {
            return Err(ParseError::unusable(
                id_field,
                format!("({id}) does not match the event's customer id ({expected})"),
            ));
        }
        (Some(id), _) => id,
        (None, Some(expected)) => expected.clone(),
        // A created or updated event names its customer twice; report the top-level field.
        (None, None) if path == "_embedded.customer" => {
            return Err(ParseError::unusable("customerId", "is missing"));
        }
        (None, None) => return Err(ParseError::unusable(id_field, "is missing")),
    };
    let revision = match resource.get("revision") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().map(Revision).ok_or_else(|| {
            ParseError::unusable(format!("{path}.revision"), "must be an integer")
        })?),
    };
    // Only ordering uses it: an older form is read, and anything unreadable counts as absent
    // (the resource keeps the value as sent).
    let updated_time = resource
        .get("updatedTime")
        .and_then(Value::as_str)
        .and_then(timestamp::parse);
    Ok(Customer {
        id,
        revision,
        updated_time,
        resource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    fn unusable_field(value: Value) -> String {
        match parse(&body(value)) {
            Err(ParseError::Unusable { field, .. }) => field,
            other => panic!("expected an unusable body, got {other:?}"),
        }
    }

    #[test]
    fn customer_ids_follow_rebillys_pattern() {
        assert!(CustomerId::try_from("cus_01.abc-@~").is_ok());
        assert!(CustomerId::try_from("a".repeat(50).as_str()).is_ok());
        assert!(CustomerId::try_from("a".repeat(51).as_str()).is_err());
        assert!(CustomerId::try_from("has space").is_err());
        assert!(CustomerId::try_from("slash/").is_err());
        assert!(CustomerId::try_from("").is_err());
    }

    #[test]
    fn a_customer_update_keeps_unknown_fields() {
        let event = parse(&body(json!({
            "eventType": "customer-updated",
            "customerId": "cus_1",
            "_embedded": {"customer": {"id": "cus_1", "revision": 4, "newField": {"x": 1}}}
        })))
        .unwrap();
        let Event::CustomerUpdated(changed) = &event else {
            panic!("wrong variant: {event:?}");
        };
        assert_eq!(changed.customer.revision, Some(Revision(4)));
        assert_eq!(changed.customer.resource["newField"], json!({"x": 1}));
        assert_eq!(event.customer_id().unwrap().as_str(), "cus_1");
    }

    #[test]
    fn bodies_that_are_not_objects_are_bad_requests() {
        assert!(matches!(parse(b"[1,2]"), Err(ParseError::NotAnObject(_))));
        assert!(matches!(parse(b"{\"a\":"), Err(ParseError::NotAnObject(_))));
        assert!(matches!(parse(b""), Err(ParseError::NotAnObject(_))));
    }

    #[test]
    fn unusable_known_events_name_the_field() {
        assert_eq!(unusable_field(json!({"customerId": "a"})), "eventType");
        assert_eq!(
            unusable_field(json!({"eventType": "customer-created"})),
            "customerId"
        );
        assert_eq!(
            unusable_field(json!({"eventType": "customer-created", "customerId": "a b"})),
            "customerId"
        );
        assert_eq!(
            unusable_field(json!({"eventType": "customer-created", "customerId": "a"})),
            "_embedded.customer"
        );
        assert_eq!(
            unusable_field(json!({"eventType": "customer-updated", "customerId": "a",
                "_embedded": {"customer": {"id": "a", "revision": "7"}}})),
            "_embedded.customer.revision"
        );
        assert_eq!(
            unusable_field(json!({"eventType": "customer-updated", "customerId": "a",
                "_embedded": {"customer": {"id": "b"}}})),
            "_embedded.customer.id"
        );
        assert_eq!(
            unusable_field(json!({"eventType": "customer-merged", "targetCustomerId": "a"})),
            "duplicatedCustomer"
        );
        assert_eq!(
            unusable_field(
                json!({"eventType": "experian-check-performed", "customerId": "a",
                "outcome": 2})
            ),
            "outcome"
        );
    }

    fn updated(updated_time: Value) -> Customer {
        let event = parse(&body(json!({
            "eventType": "customer-updated",
            "customerId": "0b2e5b2c-6a50-4b9a-9d8e-1f1b8f0c3a11",
            "_embedded": {"customer": {
                "id": "0b2e5b2c-6a50-4b9a-9d8e-1f1b8f0c3a11",
                "revision": null,
                "updatedTime": updated_time,
                "createdTime": null
            }}
        })))
        .unwrap_or_else(|e| panic!("{updated_time}: {e}"));
        let Event::CustomerUpdated(changed) = event else {
            panic!("wrong variant")
        };
        changed.customer
    }

    #[test]
    fn older_updated_times_are_read_as_utc_instants() {
        let instant = OffsetDateTime::from_unix_timestamp(1_495_825_191).unwrap();
        for text in [
            "2017-05-26 18:59:51",
            "2017-05-26 18:59:51+00:00",
            "2017-05-26 20:59:51.000+02:00",
            "2017-05-26T18:59:51Z",
        ] {
            let customer = updated(json!(text));
            assert_eq!(customer.updated_time, Some(instant), "{text}");
            assert_eq!(
                customer.resource["updatedTime"],
                json!(text),
                "kept as sent"
            );
        }
    }

    #[test]
    fn unreadable_or_null_times_and_revisions_count_as_absent() {
        for value in [
            json!(null),
            json!("soon"),
            json!(""),
            json!(1_495_825_191),
            json!({}),
        ] {
            let customer = updated(value.clone());
            assert_eq!(customer.updated_time, None, "{value}");
            assert_eq!(customer.revision, None);
            assert_eq!(customer.resource["updatedTime"], value, "kept as sent");
        }
    }

    #[test]
    fn unknown_event_types_are_other() {
        let event = parse(&body(json!({"eventType": "invoice-paid", "x": 1}))).unwrap();
        assert_eq!(
            event,
            Event::Other {
                event_type: "invoice-paid".into()
            }
        );
    }

    #[test]
    fn a_webhook_body_cannot_claim_the_sync_source() {
        let envelope = body(json!({
            "eventType": "customer-synced",
            "customerId": "cus_1",
            "_embedded": {"customer": {"id": "cus_1", "revision": 3}}
        }));
        assert_eq!(
            parse(&envelope).unwrap(),
            Event::Other {
                event_type: CUSTOMER_SYNCED.into()
            }
        );
        let synced = parse_synced(&envelope).unwrap();
        assert!(matches!(synced, Event::CustomerSynced(_)));
        assert_eq!(synced.revision(), Some(Revision(3)));
        let webhook = body(json!({"eventType": "customer-updated", "customerId": "c",
            "_embedded": {"customer": {"id": "c"}}}));
        assert_eq!(
            parse_synced(&webhook).unwrap_err().field(),
            Some("eventType")
        );
    }

    #[test]
    fn a_merge_takes_its_target_from_the_embedded_customer() {
        let event = parse(&body(json!({
            "eventType": "customer-merged",
            "duplicatedCustomer": {"id": "dup", "revision": 2},
            "_embedded": {"targetCustomer": {"id": "tgt", "revision": 9}}
        })))
        .unwrap();
        assert_eq!(event.customer_id().unwrap().as_str(), "tgt");
        assert_eq!(event.revision(), Some(Revision(9)));
    }

    #[test]
    fn experian_outcomes_have_three_values() {
        for (code, outcome) in [
            (1, ExperianOutcome::Match),
            (0, ExperianOutcome::NoMatch),
            (-1, ExperianOutcome::Mismatch),
        ] {
            let event = parse(&body(json!({
                "eventType": "experian-check-performed",
                "customerId": "c", "outcome": code, "errorCode": "001"
            })))
            .unwrap();
            let Event::ExperianCheckPerformed(check) = event else {
                panic!("wrong variant")
            };
            assert_eq!(check.outcome, outcome);
            assert_eq!(check.error_code.as_deref(), Some("001"));
        }
    }
}
