//! Request validation. Checks collect `google.rpc.BadRequest` field violations so a
//! client learns every bad field at once; nothing is written unless all pass.
use tonic_types::FieldViolation;

use crate::{Error, ids::Id};

/// Longest user, session or group id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why `id` is not a valid id, if it is not. Ids become parts of Redis keys and hash
/// tags, so they are printable ASCII without `{`, `}`, whitespace or control characters.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Some(format!("must be at most {MAX_ID_LEN} bytes, got {}", id.len()));
    }
    if let Some(c) =
        id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '+' | '=' | '-')))
    {
        return Some(format!("may only contain A-Z a-z 0-9 . _ : @ + = -, found {:?}", c));
    }
    None
}

/// A collector of field violations.
#[derive(Debug, Default)]
#[must_use]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A user, session or group id.
    pub fn id(&mut self, field: &str, value: &str) {
        if let Some(p) = id_problem(value) {
            self.add(field, p);
        }
    }

    /// Parses an id of type `T` (a key-forming id: see [`crate::ids`]).
    pub fn parse<T: Id>(&mut self, field: &str, value: &str) -> Option<T> {
        T::parse(value).map_err(|p| self.add(field, p)).ok()
    }

    /// Parses 1..=`max` ids, each checked as `field[i]`; the valid ones.
    pub fn parse_all<T: Id>(&mut self, field: &str, values: &[String], max: usize) -> Vec<T> {
        self.ids(field, values, max);
        values.iter().filter_map(|v| T::parse(v).ok()).collect()
    }

    /// A list of ids with 1..=`max` entries, each checked as `field[i]`.
    pub fn ids(&mut self, field: &str, values: &[String], max: usize) {
        if values.is_empty() {
            self.add(field, "must list at least one id");
        } else if values.len() > max {
            self.add(field, format!("must list at most {max} ids, got {}", values.len()));
        } else {
            for (i, v) in values.iter().enumerate() {
                self.id(&format!("{field}[{i}]"), v);
            }
        }
    }

    /// Free text of at most `max_chars` characters without control characters
    /// (line breaks and tabs allowed when `multiline`).
    pub fn text(&mut self, field: &str, value: &str, max_chars: usize, multiline: bool) {
        let n = value.chars().count();
        if n > max_chars {
            self.add(field, format!("must be at most {max_chars} characters, got {n}"));
        } else if let Some(c) =
            value.chars().find(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
        {
            self.add(field, format!("must not contain control character {:?}", c));
        }
    }

    /// Ok when nothing was found, else INVALID_ARGUMENT listing every violation.
    pub fn check(self) -> Result<(), Error> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(self.0)) }
    }

    /// Like [`Violations::check`], then the values parsed meanwhile (all are there when
    /// nothing was found; `a.zip(b)` passes several).
    pub fn check_with<T>(self, parsed: Option<T>) -> Result<T, Error> {
        self.check()?;
        parsed.ok_or_else(|| Error::Protocol("a parsed value is missing although nothing was refused".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["alice", "u-42", "a.b_c:d@e+f=g", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(id_problem(id), None, "{id}");
        }
    }

    #[test]
    fn rejects_ids_that_could_break_a_key() {
        for id in ["", "a b", "a{b", "a}b", "a\0b", "tab\t", "ünï", "\u{202e}x", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(id_problem(id).is_some(), "{id:?}");
        }
    }

    #[test]
    fn collects_every_violation() {
        let mut v = Violations::new();
        v.ids("user_ids", &["ok".into(), "".into(), "b{".into()], 10);
        v.text("display_name", "a\u{7}", 10, false);
        v.text("address", "line 1\nline 2", 100, true);
        let Err(Error::InvalidArgument(list)) = v.check() else { panic!("expected violations") };
        let fields: Vec<_> = list.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["user_ids[1]", "user_ids[2]", "display_name"]);
    }

    #[test]
    fn bounds_batches() {
        let mut v = Violations::new();
        v.ids("user_ids", &[], 10);
        v.ids("other", &vec!["a".to_string(); 11], 10);
        let Err(Error::InvalidArgument(list)) = v.check() else { panic!() };
        assert_eq!(list.len(), 2);
    }
}
