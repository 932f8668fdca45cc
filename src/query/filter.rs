//! Rebilly's filter grammar, parsed into a typed expression and printed back.
//!
//! ```text
//! filter := clause (";" clause)*           clauses are ANDed; empty clauses are skipped
//! clause := field ":" term ("," term)*     field names may have sub-fields: a.b
//! term   := ["!"] (value | range)          "!" negates the term
//! range  := [value] ".." [value]           inclusive; at least one bound; numbers and date-times
//! ```
//!
//! A clause matches a record when the field matches at least one of the clause's positive terms
//! (if it has any) and none of its negative terms. So `country:!FR,!DE` is "neither FR nor DE",
//! `revision:1..10,!5` is "1 to 10 except 5", and `country:FR,!DE` is just FR. A record without
//! the field matches no term: a positive clause leaves it out, a purely negative one keeps it (a
//! customer without a country is not in FR).
//!
//! Whitespace around fields and terms is ignored. `\` makes the next character literal, so that
//! a text value may hold `,`, `;`, `..`, a leading `!` or edge spaces (`company:Smith\, Jones`).
//! Date-times are RFC 3339 or Rebilly's older forms ([`crate::timestamp`]) and are compared as
//! instants, to the millisecond, whatever their offset.
//!
//! The grammar is generic over a [`Field`] set, so customers and events share it; the printer
//! ([`fmt::Display`]) writes canonical field names and whatever escapes a value needs, so that
//! parsing the printed form gives the same expression.

use crate::clock::rfc3339_ms;
use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// What the values of a field are, which decides how a term is read and which terms apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Compared exactly; no ranges.
    Text,
    /// A 64-bit integer; ranges allowed.
    Integer,
    /// An instant; ranges allowed.
    DateTime,
    /// One of a closed list of words; no ranges.
    Choice(&'static [&'static str]),
}

/// A set of fields a filter may name.
pub trait Field: Clone + PartialEq + fmt::Debug + Sized {
    /// The field called `name`, or why there is none.
    fn lookup(name: &str) -> Result<Self, String>;
    /// The canonical name, as printed.
    fn name(&self) -> Cow<'_, str>;
    fn kind(&self) -> ValueKind;
}

/// A parsed filter: every clause must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter<F> {
    pub clauses: Vec<Clause<F>>,
}

impl<F> Default for Filter<F> {
    fn default() -> Self {
        Self {
            clauses: Vec::new(),
        }
    }
}

/// One `field:terms` clause; see the module header for what it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause<F> {
    pub field: F,
    /// Never empty.
    pub terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub negated: bool,
    pub matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    Equals(Scalar),
    /// Inclusive bounds; at least one is present and `from <= to` when both are.
    Range {
        from: Option<Scalar>,
        to: Option<Scalar>,
    },
}

/// A value as the field's kind reads it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scalar {
    Text(String),
    Integer(i64),
    /// Unix milliseconds.
    Instant(i64),
}

impl<F: Field> Clause<F> {
    pub fn positives(&self) -> impl Iterator<Item = &Matcher> {
        self.terms.iter().filter(|t| !t.negated).map(|t| &t.matcher)
    }

    pub fn negatives(&self) -> impl Iterator<Item = &Matcher> {
        self.terms.iter().filter(|t| t.negated).map(|t| &t.matcher)
    }
}

/// Parses a `filter` parameter; the error says what cannot be evaluated, naming it.
pub fn parse<F: Field>(input: &str) -> Result<Filter<F>, String> {
    let mut clauses = Vec::new();
    for raw in split_unescaped(input, ';') {
        if raw.trim().is_empty() {
            continue;
        }
        clauses.push(clause(raw)?);
    }
    Ok(Filter { clauses })
}

fn clause<F: Field>(raw: &str) -> Result<Clause<F>, String> {
    let Some((name, values)) = split_first_unescaped(raw, ':') else {
        return Err(format!("`{}` is not `field:value[,value...]`", raw.trim()));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{}` names no field", raw.trim()));
    }
    let field = F::lookup(name)?;
    let terms = split_unescaped(values, ',')
        .into_iter()
        .map(|raw| term(&field, name, raw))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Clause { field, terms })
}

fn term<F: Field>(field: &F, name: &str, raw: &str) -> Result<Term, String> {
    let raw = trim_raw(raw);
    let (negated, raw) = match raw.strip_prefix('!') {
        Some(rest) => (true, trim_raw(rest)),
        None => (false, raw),
    };
    if raw.is_empty() {
        return Err(format!("`{name}` has an empty value"));
    }
    let matcher = match find_range(raw) {
        None => Matcher::Equals(scalar(field, name, raw)?),
        Some(at) => range(field, name, &raw[..at], &raw[at + 2..])?,
    };
    Ok(Term { negated, matcher })
}

fn range<F: Field>(field: &F, name: &str, from: &str, to: &str) -> Result<Matcher, String> {
    if matches!(field.kind(), ValueKind::Text | ValueKind::Choice(_)) {
        return Err(format!(
            "`{name}` is not a number or a date-time: ranges (`a..b`) do not apply to it \
             (write `\\.\\.` for two literal dots)"
        ));
    }
    if find_range(to).is_some() {
        return Err(format!("`{name}`: a range has one `..`"));
    }
    let bound = |raw: &str| {
        let raw = trim_raw(raw);
        (!raw.is_empty())
            .then(|| scalar(field, name, raw))
            .transpose()
    };
    let (from, to) = (bound(from)?, bound(to)?);
    match (&from, &to) {
        (None, None) => Err(format!("`{name}`: `..` needs at least one bound")),
        (Some(a), Some(b)) if a > b => Err(format!(
            "`{name}`: the range starts after it ends ({}..{})",
            Printed(a),
            Printed(b)
        )),
        _ => Ok(Matcher::Range { from, to }),
    }
}

fn scalar<F: Field>(field: &F, name: &str, raw: &str) -> Result<Scalar, String> {
    let text = unescape(raw).ok_or_else(|| format!("`{name}`: `{raw}` ends with a lone `\\`"))?;
    match field.kind() {
        ValueKind::Text => Ok(Scalar::Text(text)),
        ValueKind::Choice(words) => {
            if words.contains(&text.as_str()) {
                Ok(Scalar::Text(text))
            } else {
                Err(format!(
                    "`{name}` is one of {}, not `{text}`",
                    words.join(", ")
                ))
            }
        }
        ValueKind::Integer => text
            .parse()
            .map(Scalar::Integer)
            .map_err(|_| format!("`{name}` values are integers, not `{text}`")),
        ValueKind::DateTime => crate::timestamp::parse_unix_ms(&text)
            .map(Scalar::Instant)
            .ok_or_else(|| {
                let hint = if text.contains(' ') {
                    " (in a URL, write `+` in an offset as %2B)"
                } else {
                    ""
                };
                format!(
                    "`{name}` values are date-times such as 2026-01-01T00:00:00Z, \
                     not `{text}`{hint}"
                )
            }),
    }
}

/// Splits at every `separator` that is not escaped; the pieces keep their escapes.
fn split_unescaped(input: &str, separator: char) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (at, c) in input.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == separator {
            pieces.push(&input[start..at]);
            start = at + c.len_utf8();
        }
    }
    pieces.push(&input[start..]);
    pieces
}

fn split_first_unescaped(input: &str, separator: char) -> Option<(&str, &str)> {
    let first = split_unescaped(input, separator).into_iter().next()?;
    (first.len() < input.len()).then(|| (first, &input[first.len() + 1..]))
}

/// The byte offset of the first unescaped `..`.
fn find_range(raw: &str) -> Option<usize> {
    let mut escaped = false;
    let mut previous_dot: Option<usize> = None;
    for (at, c) in raw.char_indices() {
        if escaped {
            escaped = false;
            previous_dot = None;
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                previous_dot = None;
            }
            '.' => match previous_dot {
                Some(dot) => return Some(dot),
                None => previous_dot = Some(at),
            },
            _ => previous_dot = None,
        }
    }
    None
}

/// Trims whitespace, except a last character that is escaped (`a\ ` keeps its space).
fn trim_raw(raw: &str) -> &str {
    let start = raw.trim_start();
    let end = start.trim_end();
    let backslashes = end.bytes().rev().take_while(|&b| b == b'\\').count();
    match start[end.len()..].chars().next() {
        Some(kept) if backslashes % 2 == 1 => &start[..end.len() + kept.len_utf8()],
        _ => end,
    }
}

/// Removes escapes; `None` for a lone `\` at the end.
fn unescape(raw: &str) -> Option<String> {
    let mut text = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            text.push(chars.next()?);
        } else {
            text.push(c);
        }
    }
    Some(text)
}

/// A scalar as the grammar writes it.
struct Printed<'a>(&'a Scalar);

impl fmt::Display for Printed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Scalar::Text(text) => write_text(f, text),
            Scalar::Integer(value) => write!(f, "{value}"),
            Scalar::Instant(ms) => f.write_str(&rfc3339_ms(*ms)),
        }
    }
}

/// Escapes what the parser would otherwise read as syntax or trim.
fn write_text(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let chars: Vec<char> = text.chars().collect();
    for (at, &c) in chars.iter().enumerate() {
        let first = at == 0;
        let last = at + 1 == chars.len();
        let next_to_dot = (at > 0 && chars[at - 1] == '.') || chars.get(at + 1) == Some(&'.');
        let escape = matches!(c, '\\' | ',' | ';')
            || (first && c == '!')
            || ((first || last) && c.is_whitespace())
            || (c == '.' && next_to_dot);
        if escape {
            f.write_char('\\')?;
        }
        f.write_char(c)?;
    }
    Ok(())
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_char('!')?;
        }
        match &self.matcher {
            Matcher::Equals(value) => write!(f, "{}", Printed(value)),
            Matcher::Range { from, to } => {
                if let Some(from) = from {
                    write!(f, "{}", Printed(from))?;
                }
                f.write_str("..")?;
                if let Some(to) = to {
                    write!(f, "{}", Printed(to))?;
                }
                Ok(())
            }
        }
    }
}

impl<F: Field> fmt::Display for Clause<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.field.name())?;
        for (at, term) in self.terms.iter().enumerate() {
            if at > 0 {
                f.write_char(',')?;
            }
            write!(f, "{term}")?;
        }
        Ok(())
    }
}

impl<F: Field> fmt::Display for Filter<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, clause) in self.clauses.iter().enumerate() {
            if at > 0 {
                f.write_char(';')?;
            }
            write!(f, "{clause}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::fields::CustomerField;
    use proptest::prelude::*;

    fn parsed(input: &str) -> Filter<CustomerField> {
        parse(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn refused(input: &str) -> String {
        match parse::<CustomerField>(input) {
            Err(reason) => reason,
            Ok(filter) => panic!("{input} should be refused, got {filter:?}"),
        }
    }

    fn text(value: &str) -> Scalar {
        Scalar::Text(value.to_owned())
    }

    fn equals(negated: bool, value: Scalar) -> Term {
        Term {
            negated,
            matcher: Matcher::Equals(value),
        }
    }

    #[test]
    fn clauses_values_negations_and_ranges_parse_into_typed_terms() {
        let filter = parsed(
            "country:FR,DE; primaryAddress.country : !FR , !DE ;revision:2..5,!3;\
             createdTime:2026-01-01T00:00:00+02:00..;updatedTime:..2026-01-01 00:00:00",
        );
        assert_eq!(filter.clauses.len(), 5);
        assert_eq!(filter.clauses[0].field, CustomerField::Country);
        assert_eq!(
            filter.clauses[0].terms,
            vec![equals(false, text("FR")), equals(false, text("DE"))]
        );
        assert_eq!(filter.clauses[1].field, CustomerField::Country);
        assert_eq!(
            filter.clauses[1].terms,
            vec![equals(true, text("FR")), equals(true, text("DE"))]
        );
        assert_eq!(
            filter.clauses[2].terms,
            vec![
                Term {
                    negated: false,
                    matcher: Matcher::Range {
                        from: Some(Scalar::Integer(2)),
                        to: Some(Scalar::Integer(5))
                    }
                },
                equals(true, Scalar::Integer(3)),
            ]
        );
        // 2026-01-01T00:00:00+02:00 is 2025-12-31T22:00:00Z.
        assert_eq!(
            filter.clauses[3].terms[0].matcher,
            Matcher::Range {
                from: Some(Scalar::Instant(1_767_218_400_000)),
                to: None
            }
        );
        assert_eq!(
            filter.clauses[4].terms[0].matcher,
            Matcher::Range {
                from: None,
                to: Some(Scalar::Instant(1_767_225_600_000))
            }
        );
    }

    #[test]
    fn escapes_make_syntax_characters_literal() {
        let filter = parsed(r"company:Smith\, Jones\; Co,\!Bang,a\.\.b,trail\ ");
        let values: Vec<&Matcher> = filter.clauses[0].positives().collect();
        assert_eq!(
            values,
            vec![
                &Matcher::Equals(text("Smith, Jones; Co")),
                &Matcher::Equals(text("!Bang")),
                &Matcher::Equals(text("a..b")),
                &Matcher::Equals(text("trail ")),
            ]
        );
        assert_eq!(
            filter.to_string(),
            r"primaryAddress.organization:Smith\, Jones\; Co,\!Bang,a\.\.b,trail\ "
        );
    }

    #[test]
    fn what_cannot_be_evaluated_is_refused_by_name() {
        assert!(refused("colour:red").contains("colour"));
        assert!(refused("country").contains("field:value"));
        assert!(refused(":FR").contains("no field"));
        assert!(refused("country:").contains("empty value"));
        assert!(refused("country:FR,").contains("empty value"));
        assert!(refused("country:!").contains("empty value"));
        assert!(refused("country:A..B").contains("ranges"));
        assert!(refused("revision:..").contains("at least one bound"));
        assert!(refused("revision:1..2..3").contains("one `..`"));
        assert!(refused("revision:5..1").contains("starts after it ends"));
        assert!(refused("revision:x").contains("integers"));
        assert!(refused("revision:1.5").contains("integers"));
        assert!(refused("createdTime:2026-13-01T00:00:00Z").contains("date-times"));
        assert!(refused("createdTime:2026-01-01").contains("createdTime"));
        assert!(refused("createdTime:2026-01-01T00:00:00 02:00..").contains("%2B"));
        assert!(refused("customFields.bad name:x").contains("customFields"));
        assert!(refused("customFields.:x").contains("customFields"));
        assert!(refused("customFields.a.b:x").contains("customFields"));
        assert!(refused("customFields.tier:a..b").contains("ranges"));
        assert!(refused(r"country:FR\").contains("lone"));
    }

    #[test]
    fn empty_clauses_are_skipped() {
        assert_eq!(parsed("").clauses.len(), 0);
        assert_eq!(parsed(" ; ;country:FR;").clauses.len(), 1);
    }

    fn field() -> impl Strategy<Value = CustomerField> {
        prop_oneof![
            Just(CustomerField::Id),
            Just(CustomerField::Email),
            Just(CustomerField::FirstName),
            Just(CustomerField::LastName),
            Just(CustomerField::Organization),
            Just(CustomerField::Country),
            Just(CustomerField::City),
            Just(CustomerField::PostalCode),
            Just(CustomerField::Region),
            Just(CustomerField::WebsiteId),
            Just(CustomerField::CreatedTime),
            Just(CustomerField::UpdatedTime),
            Just(CustomerField::Revision),
            "[A-Za-z0-9_-]{1,20}"
                .prop_map(|name| CustomerField::lookup(&format!("customFields.{name}")).unwrap()),
        ]
    }

    /// Any non-empty text, syntax characters and edge whitespace included.
    fn any_text() -> impl Strategy<Value = Scalar> {
        prop_oneof![
            "[ -~]{1,12}",
            "[!.,;:\\\\ a]{1,8}",
            "\\PC{1,6}",
            "[ \t]?[a-zé.]{0,4}[ \u{a0}]?",
        ]
        .prop_filter("non-empty", |s: &String| !s.is_empty())
        .prop_map(Scalar::Text)
    }

    /// 0001-01-01 to 9999-12-31, the years RFC 3339 can write.
    fn any_instant() -> impl Strategy<Value = Scalar> {
        (-62_135_596_800_000i64..253_402_300_799_999).prop_map(Scalar::Instant)
    }

    fn term_for(kind: ValueKind) -> BoxedStrategy<Term> {
        let value: BoxedStrategy<Scalar> = match kind {
            ValueKind::Text => any_text().boxed(),
            ValueKind::Choice(words) => proptest::sample::select(words)
                .prop_map(|w| Scalar::Text(w.to_owned()))
                .boxed(),
            ValueKind::Integer => any::<i64>().prop_map(Scalar::Integer).boxed(),
            ValueKind::DateTime => any_instant().boxed(),
        };
        let ordered = matches!(kind, ValueKind::Integer | ValueKind::DateTime);
        let equals = value.clone().prop_map(Matcher::Equals);
        let matcher = if ordered {
            let range = (
                proptest::option::of(value.clone()),
                proptest::option::of(value),
            )
                .prop_filter_map("a range has a bound", |(a, b)| match (a, b) {
                    (None, None) => None,
                    (Some(a), Some(b)) if a > b => Some((Some(b), Some(a))),
                    (from, to) => Some((from, to)),
                })
                .prop_map(|(from, to)| Matcher::Range { from, to });
            prop_oneof![equals, range].boxed()
        } else {
            equals.boxed()
        };
        (any::<bool>(), matcher)
            .prop_map(|(negated, matcher)| Term { negated, matcher })
            .boxed()
    }

    fn any_clause() -> impl Strategy<Value = Clause<CustomerField>> {
        field().prop_flat_map(|field| {
            proptest::collection::vec(term_for(field.kind()), 1..4).prop_map(move |terms| Clause {
                field: field.clone(),
                terms,
            })
        })
    }

    fn any_filter() -> impl Strategy<Value = Filter<CustomerField>> {
        proptest::collection::vec(any_clause(), 0..4).prop_map(|clauses| Filter { clauses })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parsing_the_printed_filter_gives_the_same_filter(filter in any_filter()) {
            let printed = filter.to_string();
            let again: Filter<CustomerField> = parse(&printed)
                .map_err(|e| TestCaseError::fail(format!("{printed}: {e}")))?;
            prop_assert_eq!(again, filter, "printed as {}", printed);
        }

        #[test]
        fn any_input_parses_or_is_refused_without_panicking(input in "\\PC{0,40}") {
            if let Ok(filter) = parse::<CustomerField>(&input) {
                let printed = filter.to_string();
                prop_assert_eq!(parse::<CustomerField>(&printed), Ok(filter));
            }
        }
    }
}
