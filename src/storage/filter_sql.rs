//! Translates a parsed filter ([`crate::query::Filter`]) into a SQL condition with bound
//! parameters only: no value, path or name from a request is ever spliced into SQL text. Both
//! backends share the translation; a [`Dialect`] decides how placeholders and JSON look.
//!
//! A clause becomes `(positives) AND (negatives)`: the field matches one of the positive terms,
//! and it is NULL or matches none of the negative ones. SQL's `NOT IN` is never true for NULL,
//! so the `IS NULL` arm is what keeps a customer without a country in `country:!FR`.

use crate::query::{Clause, Field, Filter, Matcher, Scalar};

/// The SQL a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `?N` placeholders; JSON read with `json_type`/`json_extract`.
    Sqlite,
    /// `$N` placeholders; JSON read with `json_typeof` and `#>>` over a `text[]` path.
    Postgres,
}

impl Dialect {
    /// Whether a stored value can equal `value`. PostgreSQL's text holds no NUL character: a
    /// value with one matches nothing there (and could not even be sent).
    pub fn can_equal(self, value: &Scalar) -> bool {
        match (self, value) {
            (Self::Postgres, Scalar::Text(text)) => !text.contains('\0'),
            _ => true,
        }
    }
}

/// What a filter field is read from.
#[derive(Debug, Clone)]
pub enum Column {
    /// A column of the table, by its constant name.
    Named(&'static str),
    /// A scalar inside the JSON `snapshot` column, at this path of object keys (bound, not
    /// spliced), as text: strings as they are, numbers and booleans as the JSON writes them;
    /// arrays, objects and null count as absent.
    SnapshotScalar(Vec<String>),
    /// A column kept in another table rather than beside the row: the row matches when its
    /// `key` is listed there (as `table.listed`) with a matching `column`. The table must list
    /// every row whose value is not NULL.
    Lookup(Lookup),
}

/// Where a looked-up column is kept; see [`Column::Lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub key: &'static str,
    pub table: &'static str,
    pub listed: &'static str,
    pub column: &'static str,
}

/// A bound value. Integers compare as integers (numbers and instants, the latter as Unix
/// milliseconds), never as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Integer(i64),
    /// A list of texts: PostgreSQL's JSON paths.
    TextList(Vec<String>),
}

impl From<Param> for rusqlite::types::Value {
    fn from(param: Param) -> Self {
        match param {
            Param::Text(text) => Self::Text(text),
            Param::Integer(value) => Self::Integer(value),
            // SQLite takes a JSON path as one text (see `sqlite_json_path`), never as a list.
            Param::TextList(list) => Self::Text(list.join(".")),
        }
    }
}

/// SQL text with its parameters, in the order of their numbers.
#[derive(Debug)]
pub struct Sql {
    pub dialect: Dialect,
    pub text: String,
    pub params: Vec<Param>,
}

impl Sql {
    /// Starts with `text`, which has no placeholders.
    pub fn new(dialect: Dialect, text: &str) -> Self {
        Self {
            dialect,
            text: text.to_owned(),
            params: Vec::new(),
        }
    }

    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Binds `value` and returns its placeholder, without writing it.
    pub fn placeholder(&mut self, value: Param) -> String {
        self.params.push(value);
        let number = self.params.len();
        match self.dialect {
            Dialect::Sqlite => format!("?{number}"),
            Dialect::Postgres => format!("${number}"),
        }
    }

    /// Binds `value` and writes its placeholder.
    pub fn bind(&mut self, value: Param) {
        let placeholder = self.placeholder(value);
        self.push(&placeholder);
    }

    fn column(&mut self, column: &Column) {
        match column {
            Column::Named(name) => self.push(name),
            Column::SnapshotScalar(path) => self.snapshot_scalar(path),
            Column::Lookup(_) => unreachable!("a looked-up column is matched by write_clause"),
        }
    }

    fn snapshot_scalar(&mut self, path: &[String]) {
        match self.dialect {
            Dialect::Sqlite => {
                let path = self.placeholder(Param::Text(sqlite_json_path(path)));
                self.push(&format!(
                    "(CASE json_type(snapshot, {path}) \
                     WHEN 'text' THEN json_extract(snapshot, {path}) \
                     WHEN 'null' THEN NULL WHEN 'array' THEN NULL WHEN 'object' THEN NULL \
                     ELSE snapshot -> {path} END)"
                ));
            }
            Dialect::Postgres => {
                // `json`, not `jsonb`: a number is served as it was written, as SQLite does.
                let path = self.placeholder(Param::TextList(path.to_vec()));
                self.push(&format!(
                    "(CASE WHEN json_typeof(snapshot::json #> {path}::text[]) \
                     IN ('string', 'number', 'boolean') \
                     THEN snapshot::json #>> {path}::text[] END)"
                ));
            }
        }
    }
}

/// `$."a"."b"`: every key quoted, so that no key is read as path syntax.
fn sqlite_json_path(path: &[String]) -> String {
    let mut text = String::from("$");
    for key in path {
        text.push_str(".\"");
        text.push_str(key);
        text.push('"');
    }
    text
}

fn value(scalar: &Scalar) -> Param {
    match scalar {
        Scalar::Text(text) => Param::Text(text.clone()),
        Scalar::Integer(value) | Scalar::Instant(value) => Param::Integer(*value),
    }
}

/// Appends ` AND (clause)` for every clause of `filter`.
pub fn and_filter<F: Field>(sql: &mut Sql, filter: &Filter<F>, column: impl Fn(&F) -> Column) {
    for clause in &filter.clauses {
        sql.push(" AND (");
        write_clause(sql, clause, &column(&clause.field));
        sql.push(")");
    }
}

fn write_clause<F: Field>(sql: &mut Sql, clause: &Clause<F>, column: &Column) {
    let positives: Vec<&Matcher> = clause.positives().collect();
    let negatives: Vec<&Matcher> = clause.negatives().collect();
    if let Column::Lookup(lookup) = column {
        write_lookup(sql, lookup, &positives, &negatives);
        return;
    }
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

/// A clause on a looked-up column: the row's key among those listed with a matching value, and
/// not among those listed with a value the clause excludes (a row without a value is listed
/// nowhere, so it matches only negatives, as a NULL beside the row would).
fn write_lookup(sql: &mut Sql, lookup: &Lookup, positives: &[&Matcher], negatives: &[&Matcher]) {
    let column = Column::Named(lookup.column);
    for (matchers, operator) in [(positives, "IN"), (negatives, "NOT IN")] {
        if matchers.is_empty() {
            continue;
        }
        if operator == "NOT IN" && !positives.is_empty() {
            sql.push(" AND ");
        }
        sql.push(&format!(
            "{} {operator} (SELECT {} FROM {} WHERE ",
            lookup.key, lookup.listed, lookup.table
        ));
        any_of(sql, matchers, &column);
        sql.push(")");
    }
}

/// `column IN (...) OR (column >= ? AND column <= ?) OR ...`; true only for a non-NULL match,
/// and `FALSE` when no term can match.
fn any_of(sql: &mut Sql, matchers: &[&Matcher], column: &Column) {
    let dialect = sql.dialect;
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
        .filter(|value| dialect.can_equal(value))
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
    if first {
        sql.push("FALSE");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{CustomerField, filter};

    fn translate(dialect: Dialect, input: &str) -> Sql {
        let filter: Filter<CustomerField> = filter::parse(input).unwrap();
        let mut sql = Sql::new(dialect, "");
        and_filter(&mut sql, &filter, |field| match field {
            CustomerField::Custom(name) => {
                Column::SnapshotScalar(vec!["customFields".to_owned(), name.as_str().to_owned()])
            }
            CustomerField::Revision => Column::Named("revision"),
            CustomerField::CreatedTime => Column::Named("created_ms"),
            _ => Column::Named("country"),
        });
        sql
    }

    #[test]
    fn negations_keep_rows_without_the_field() {
        let sql = translate(Dialect::Sqlite, "country:!FR,!DE");
        assert_eq!(
            sql.text,
            " AND ((country IS NULL OR NOT (country IN (?1, ?2))))"
        );
        assert_eq!(
            sql.params,
            vec![Param::Text("FR".into()), Param::Text("DE".into())]
        );
    }

    #[test]
    fn ranges_and_values_of_one_clause_are_alternatives() {
        let sql = translate(
            Dialect::Sqlite,
            "revision:1..3,7,9..,!2;createdTime:..2026-01-01T00:00:00Z",
        );
        assert_eq!(
            sql.text,
            " AND ((revision IN (?1) OR (revision >= ?2 AND revision <= ?3) OR (revision >= ?4)) \
             AND (revision IS NULL OR NOT (revision IN (?5)))) \
             AND (((created_ms <= ?6)))"
        );
        assert_eq!(
            sql.params,
            [7, 1, 3, 9, 2, 1_767_225_600_000]
                .map(Param::Integer)
                .to_vec()
        );
    }

    #[test]
    fn postgres_numbers_its_placeholders_and_binds_integers_as_integers() {
        let sql = translate(Dialect::Postgres, "revision:1..3,!2;country:FR");
        assert_eq!(
            sql.text,
            " AND (((revision >= $1 AND revision <= $2)) \
             AND (revision IS NULL OR NOT (revision IN ($3)))) \
             AND ((country IN ($4)))"
        );
        assert_eq!(
            sql.params,
            vec![
                Param::Integer(1),
                Param::Integer(3),
                Param::Integer(2),
                Param::Text("FR".into())
            ]
        );
    }

    #[test]
    fn text_postgres_cannot_hold_matches_nothing() {
        let sql = translate(Dialect::Postgres, "country:FR\0,DE;lastName:!\0x");
        assert_eq!(
            sql.text,
            " AND ((country IN ($1))) AND ((country IS NULL OR NOT (FALSE)))"
        );
        assert_eq!(sql.params, vec![Param::Text("DE".into())]);
        let sql = translate(Dialect::Sqlite, "country:FR\0");
        assert_eq!(sql.params, vec![Param::Text("FR\0".into())]);
    }

    #[test]
    fn custom_field_paths_are_bound_not_spliced() {
        let sql = translate(Dialect::Sqlite, "customFields.tier:gold");
        assert!(!sql.text.contains("tier"), "{}", sql.text);
        assert_eq!(sql.params.len(), 2);
        assert_eq!(
            sql.params[0],
            Param::Text("$.\"customFields\".\"tier\"".into())
        );
        assert_eq!(sql.params[1], Param::Text("gold".into()));

        let sql = translate(Dialect::Postgres, "customFields.tier:gold");
        assert!(!sql.text.contains("tier"), "{}", sql.text);
        assert!(sql.text.contains("#>> $1::text[]"), "{}", sql.text);
        assert_eq!(
            sql.params,
            vec![
                Param::TextList(vec!["customFields".into(), "tier".into()]),
                Param::Text("gold".into())
            ]
        );
    }
}
