//! What every backend shares about reading customers: where each list field lives (the
//! backends' tables have the same columns), how `q` is matched, and the view served.

use crate::query::CustomerField;
use crate::storage::filter_sql::Column;
use serde_json::{Map, Value};

/// Where each list field is read: a projection column (date-times as Unix milliseconds, so
/// that they compare as instants), or a scalar inside the snapshot for fields without one.
pub fn column(field: &CustomerField) -> Column {
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
            return Column::SnapshotScalar(snapshot_path(&["primaryAddress", "postalCode"]));
        }
        CustomerField::Region => {
            return Column::SnapshotScalar(snapshot_path(&["primaryAddress", "region"]));
        }
        // The name was checked to be letters, digits, `_` and `-`; it is bound, not spliced.
        CustomerField::Custom(name) => {
            return Column::SnapshotScalar(snapshot_path(&["customFields", name.as_str()]));
        }
    };
    Column::Named(named)
}

fn snapshot_path(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|key| (*key).to_owned()).collect()
}

/// `q` as a `LIKE` pattern's inside, with `\` as the escape character. Both the search column
/// and `q` are lower-cased before they meet, so `LIKE`'s case rules never come into play.
pub fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The columns [`customer_view`] is built from, in its argument order.
pub const VIEW_COLUMNS: &str = "id, snapshot, merged_into, experian_check";

/// The customer as served: the snapshot plus `mergedInto` and `experianCheck`.
pub fn customer_view(
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

pub fn keep_fields(view: Map<String, Value>, fields: Option<&[String]>) -> Value {
    match fields {
        None => Value::Object(view),
        Some(fields) => Value::Object(
            view.into_iter()
                .filter(|(key, _)| fields.iter().any(|f| f == key))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
