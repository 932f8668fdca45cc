//! Translates a parsed filter ([`crate::query::Filter`]) into a SQL condition with bound
//! parameters only: no value, path or name from a request is ever spliced into SQL text.
//!
//! A clause becomes `(positives) AND (negatives)`: the field matches one of the positive terms,
//! and it is NULL or matches none of the negative ones. SQL's `NOT IN` is never true for NULL,
//! so the `IS NULL` arm is what keeps a customer without a country in `country:!FR`.

use crate::query::{Clause, Field, Filter, Matcher, Scalar};
use rusqlite::types::Value;

/// What a filter field is read from.
#[derive(Debug, Clone)]
pub(super) enum Column {
    /// A column of the table, by its constant name.
    Named(&'static str),
    /// A scalar inside the JSON `snapshot` column, at this JSON path (bound, not spliced), as
    /// text: strings as they are, numbers and booleans as JSON writes them; arrays, objects and
    /// null count as absent.
    SnapshotScalar(String),
}

/// SQL text with its parameters, in the order of their `?`.
#[derive(Debug, Default)]
pub(super) struct Sql {
    pub text: String,
    pub params: Vec<Value>,
}

impl Sql {
    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn bind(&mut self, value: Value) {
        self.text.push('?');
        self.params.push(value);
    }

    fn column(&mut self, column: &Column) {
        match column {
            Column::Named(name) => self.push(name),
            Column::SnapshotScalar(path) => {
                self.push("(CASE json_type(snapshot, ");
                self.bind(Value::Text(path.clone()));
                self.push(") WHEN 'text' THEN json_extract(snapshot, ");
                self.bind(Value::Text(path.clone()));
                self.push(
                    ") WHEN 'null' THEN NULL WHEN 'array' THEN NULL WHEN 'object' THEN NULL \
                     ELSE snapshot -> ",
                );
                self.bind(Value::Text(path.clone()));
                self.push(" END)");
            }
        }
    }
}

fn value(scalar: &Scalar) -> Value {
    match scalar {
        Scalar::Text(text) => Value::Text(text.clone()),
        Scalar::Integer(value) | Scalar::Instant(value) => Value::Integer(*value),
    }
}

/// Appends ` AND (clause)` for every clause of `filter`.
pub(super) fn and_filter<F: Field>(
    sql: &mut Sql,
    filter: &Filter<F>,
    column: impl Fn(&F) -> Column,
) {
    for clause in &filter.clauses {
        sql.push(" AND (");
        write_clause(sql, clause, &column(&clause.field));
        sql.push(")");
    }
}

fn write_clause<F: Field>(sql: &mut Sql, clause: &Clause<F>, column: &Column) {
    let positives: Vec<&Matcher> = clause.positives().collect();
    let negatives: Vec<&Matcher> = clause.negatives().collect();
    if !positives.is_empty() {
        sql.push("(");
        any_of(sql, &positives, column);
        sql.push(")");
    }
    if !negatives.is_empty() {
        if !positives.is_empty() {
            sql.push(" AND ");
        }
        sql.push("(");
        sql.column(column);
        sql.push(" IS NULL OR NOT (");
        any_of(sql, &negatives, column);
        sql.push("))");
    }
}

/// `column IN (...) OR (column >= ? AND column <= ?) OR ...`; true only for a non-NULL match.
fn any_of(sql: &mut Sql, matchers: &[&Matcher], column: &Column) {
    let mut first = true;
    let mut separator = |sql: &mut Sql| {
        if !std::mem::take(&mut first) {
            sql.push(" OR ");
        }
    };
    let values: Vec<&Scalar> = matchers
        .iter()
        .filter_map(|m| match m {
            Matcher::Equals(value) => Some(value),
            Matcher::Range { .. } => None,
        })
        .collect();
    if !values.is_empty() {
        separator(sql);
        sql.column(column);
        sql.push(" IN (");
        for (at, v) in values.iter().enumerate() {
            if at > 0 {
                sql.push(", ");
            }
            sql.bind(value(v));
        }
        sql.push(")");
    }
    for matcher in matchers {
        let Matcher::Range { from, to } = matcher else {
            continue;
        };
        separator(sql);
        sql.push("(");
        if let Some(from) = from {
            sql.column(column);
            sql.push(" >= ");
            sql.bind(value(from));
        }
        if from.is_some() && to.is_some() {
            sql.push(" AND ");
        }
        if let Some(to) = to {
            sql.column(column);
            sql.push(" <= ");
            sql.bind(value(to));
        }
        sql.push(")");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{CustomerField, filter};

    fn translate(input: &str) -> Sql {
        let filter: Filter<CustomerField> = filter::parse(input).unwrap();
        let mut sql = Sql::default();
        and_filter(&mut sql, &filter, |field| match field {
            CustomerField::Custom(name) => {
                Column::SnapshotScalar(format!("$.customFields.\"{}\"", name.as_str()))
            }
            CustomerField::Revision => Column::Named("revision"),
            CustomerField::CreatedTime => Column::Named("created_ms"),
            _ => Column::Named("country"),
        });
        sql
    }

    #[test]
    fn negations_keep_rows_without_the_field() {
        let sql = translate("country:!FR,!DE");
        assert_eq!(
            sql.text,
            " AND ((country IS NULL OR NOT (country IN (?, ?))))"
        );
        assert_eq!(
            sql.params,
            vec![Value::Text("FR".into()), Value::Text("DE".into())]
        );
    }

    #[test]
    fn ranges_and_values_of_one_clause_are_alternatives() {
        let sql = translate("revision:1..3,7,9..,!2;createdTime:..2026-01-01T00:00:00Z");
        assert_eq!(
            sql.text,
            " AND ((revision IN (?) OR (revision >= ? AND revision <= ?) OR (revision >= ?)) \
             AND (revision IS NULL OR NOT (revision IN (?)))) \
             AND (((created_ms <= ?)))"
        );
        assert_eq!(
            sql.params,
            [7, 1, 3, 9, 2, 1_767_225_600_000]
                .map(Value::Integer)
                .to_vec()
        );
    }

    #[test]
    fn custom_field_paths_are_bound_not_spliced() {
        let sql = translate("customFields.tier:gold");
        assert!(!sql.text.contains("tier"), "{}", sql.text);
        assert_eq!(sql.params.len(), 4);
        assert_eq!(sql.params[0], Value::Text("$.customFields.\"tier\"".into()));
    }
}
