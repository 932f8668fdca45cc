//! The fields lists can filter and sort on, by Rebilly's names.
//!
//! Customers take Rebilly's Customer resource names (`primaryAddress.country`,
//! `customFields.NAME`, ...); the short names earlier versions of this daemon used (`country`,
//! `lastName`, `company`, ...) still work. Events take the names of `GET /events` records.

use super::filter::{Field, ValueKind};
use crate::outcome::Status;
use std::borrow::Cow;

/// A custom field's name: letters, digits, `_` and `-`, at most 100 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomFieldName(String);

impl CustomFieldName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for CustomFieldName {
    type Error = String;

    fn try_from(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 100
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "`customFields.{name}`: a custom field name is 1 to 100 letters, digits, `_` or `-`"
            ))
        }
    }
}

/// A field of a listed customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerField {
    Id,
    Email,
    /// `firstName` if the resource has it, else `primaryAddress.firstName`.
    FirstName,
    /// `lastName` if the resource has it, else `primaryAddress.lastName`.
    LastName,
    Organization,
    Country,
    City,
    PostalCode,
    Region,
    WebsiteId,
    CreatedTime,
    UpdatedTime,
    Revision,
    /// `customFields.NAME`, compared as text (`true`, `42` and `"42"` as written in JSON
    /// without quotes); arrays and objects match nothing.
    Custom(CustomFieldName),
}

/// (canonical name, accepted aliases, field); the canonical name is Rebilly's.
const CUSTOMER_FIELDS: [(&str, &[&str], CustomerField); 13] = [
    ("id", &[], CustomerField::Id),
    ("email", &[], CustomerField::Email),
    (
        "primaryAddress.firstName",
        &["firstName"],
        CustomerField::FirstName,
    ),
    (
        "primaryAddress.lastName",
        &["lastName"],
        CustomerField::LastName,
    ),
    (
        "primaryAddress.organization",
        &["company", "organization"],
        CustomerField::Organization,
    ),
    (
        "primaryAddress.country",
        &["country"],
        CustomerField::Country,
    ),
    ("primaryAddress.city", &["city"], CustomerField::City),
    (
        "primaryAddress.postalCode",
        &["postalCode"],
        CustomerField::PostalCode,
    ),
    ("primaryAddress.region", &["region"], CustomerField::Region),
    ("websiteId", &[], CustomerField::WebsiteId),
    ("createdTime", &[], CustomerField::CreatedTime),
    ("updatedTime", &[], CustomerField::UpdatedTime),
    ("revision", &[], CustomerField::Revision),
];

const CUSTOM_PREFIX: &str = "customFields.";

impl CustomerField {
    /// Whether lists can sort on it; values kept only inside the JSON snapshot cannot.
    pub fn sortable(&self) -> bool {
        !matches!(self, Self::Custom(_) | Self::PostalCode | Self::Region)
    }

    /// The names accepted for sorting, for error messages.
    pub fn sortable_names() -> Vec<&'static str> {
        CUSTOMER_FIELDS
            .iter()
            .filter(|(_, _, field)| field.sortable())
            .map(|(name, _, _)| *name)
            .collect()
    }

    fn known_names() -> String {
        let mut names: Vec<&str> = CUSTOMER_FIELDS.iter().map(|(name, _, _)| *name).collect();
        names.push("customFields.NAME");
        names.join(", ")
    }
}

impl Field for CustomerField {
    fn lookup(name: &str) -> Result<Self, String> {
        if let Some(custom) = name.strip_prefix(CUSTOM_PREFIX) {
            return CustomFieldName::try_from(custom).map(Self::Custom);
        }
        CUSTOMER_FIELDS
            .iter()
            .find(|(canonical, aliases, _)| *canonical == name || aliases.contains(&name))
            .map(|(_, _, field)| field.clone())
            .ok_or_else(|| {
                format!(
                    "unknown field `{name}`; known fields: {}",
                    Self::known_names()
                )
            })
    }

    fn name(&self) -> Cow<'_, str> {
        match self {
            Self::Custom(custom) => Cow::Owned(format!("{CUSTOM_PREFIX}{}", custom.as_str())),
            field => Cow::Borrowed(
                CUSTOMER_FIELDS
                    .iter()
                    .find(|(_, _, f)| f == field)
                    .map(|(name, _, _)| *name)
                    .expect("every customer field is in the table"),
            ),
        }
    }

    fn kind(&self) -> ValueKind {
        match self {
            Self::CreatedTime | Self::UpdatedTime => ValueKind::DateTime,
            Self::Revision => ValueKind::Integer,
            _ => ValueKind::Text,
        }
    }
}

/// A field of the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventField {
    Id,
    CustomerId,
    EventType,
    Status,
    Revision,
    ReceivedTime,
}

const STATUS_NAMES: [&str; 5] = [
    Status::Applied.as_str(),
    Status::Stale.as_str(),
    Status::Duplicate.as_str(),
    Status::Ignored.as_str(),
    Status::Rejected.as_str(),
];

const EVENT_FIELDS: [(&str, EventField); 6] = [
    ("id", EventField::Id),
    ("customerId", EventField::CustomerId),
    ("eventType", EventField::EventType),
    ("status", EventField::Status),
    ("revision", EventField::Revision),
    ("receivedTime", EventField::ReceivedTime),
];

impl Field for EventField {
    fn lookup(name: &str) -> Result<Self, String> {
        EVENT_FIELDS
            .iter()
            .find(|(canonical, _)| *canonical == name)
            .map(|(_, field)| *field)
            .ok_or_else(|| {
                let known: Vec<&str> = EVENT_FIELDS.iter().map(|(n, _)| *n).collect();
                format!("unknown field `{name}`; known fields: {}", known.join(", "))
            })
    }

    fn name(&self) -> Cow<'_, str> {
        let name = EVENT_FIELDS
            .iter()
            .find(|(_, field)| field == self)
            .map(|(name, _)| *name)
            .expect("every event field is in the table");
        Cow::Borrowed(name)
    }

    fn kind(&self) -> ValueKind {
        match self {
            Self::Id | Self::Revision => ValueKind::Integer,
            Self::ReceivedTime => ValueKind::DateTime,
            Self::Status => ValueKind::Choice(&STATUS_NAMES),
            Self::CustomerId | Self::EventType => ValueKind::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebillys_names_and_the_short_ones_name_the_same_fields() {
        for (rebilly, short) in [
            ("primaryAddress.country", "country"),
            ("primaryAddress.lastName", "lastName"),
            ("primaryAddress.firstName", "firstName"),
            ("primaryAddress.city", "city"),
            ("primaryAddress.organization", "company"),
        ] {
            let field = CustomerField::lookup(rebilly).unwrap();
            assert_eq!(CustomerField::lookup(short).unwrap(), field);
            assert_eq!(field.name(), rebilly);
        }
    }

    #[test]
    fn custom_field_names_are_checked() {
        let field = CustomerField::lookup("customFields.loyalty_Tier-2").unwrap();
        assert_eq!(field.name(), "customFields.loyalty_Tier-2");
        assert!(!field.sortable());
        for bad in [
            "customFields.",
            "customFields.a b",
            "customFields.a.b",
            "customFields.\"x",
        ] {
            assert!(CustomerField::lookup(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_statuses_are_a_closed_list() {
        assert_eq!(
            EventField::Status.kind(),
            ValueKind::Choice(&["applied", "stale", "duplicate", "ignored", "rejected"])
        );
    }
}
