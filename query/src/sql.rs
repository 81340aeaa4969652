//! SQL assembled only from `&'static str` fragments, with every value bound as a `?`
//! argument (escaped by the clickhouse client). Nothing a caller sends can become SQL text:
//! the type makes input-built SQL impossible, and the builders are pure functions tested
//! without a server.

use serde::Serialize;

/// A bound value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Arg {
    /// A string literal.
    Str(String),
    /// An array of strings.
    Strs(Vec<String>),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// An array of string pairs, `[('a', 'b'), ...]`: the right side of a tuple `IN`.
    Pairs(Vec<(String, String)>),
}

impl From<&str> for Arg {
    fn from(s: &str) -> Arg {
        Arg::Str(s.to_owned())
    }
}

impl From<String> for Arg {
    fn from(s: String) -> Arg {
        Arg::Str(s)
    }
}

impl From<&String> for Arg {
    fn from(s: &String) -> Arg {
        Arg::Str(s.clone())
    }
}

impl From<Vec<String>> for Arg {
    fn from(v: Vec<String>) -> Arg {
        Arg::Strs(v)
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(v)
    }
}

impl From<u64> for Arg {
    fn from(v: u64) -> Arg {
        Arg::UInt(v)
    }
}

/// A statement under construction: static text plus positional arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sql {
    text: String,
    args: Vec<Arg>,
}

/// A DateTime64(3) from bound epoch milliseconds.
pub const MS: &str = "fromUnixTimestamp64Milli(toInt64(?), 'UTC')";

impl Sql {
    /// Starts a statement.
    pub fn new(fragment: &'static str) -> Sql {
        let mut s = Sql::default();
        s.push(fragment);
        s
    }

    /// Appends text without placeholders.
    pub fn push(&mut self, fragment: &'static str) -> &mut Sql {
        assert!(
            !fragment.contains('?'),
            "fragment with placeholder: {fragment}"
        );
        self.text.push_str(fragment);
        self
    }

    /// Appends a fragment with exactly as many `?` as `args`.
    pub fn bind<I>(&mut self, fragment: &'static str, args: I) -> &mut Sql
    where
        I: IntoIterator,
        I::Item: Into<Arg>,
    {
        let before = self.args.len();
        self.args.extend(args.into_iter().map(Into::into));
        assert_eq!(
            fragment.matches('?').count(),
            self.args.len() - before,
            "placeholders and arguments differ in: {fragment}"
        );
        self.text.push_str(fragment);
        self
    }

    /// Appends a fragment with one `?`.
    pub fn bind1(&mut self, fragment: &'static str, arg: impl Into<Arg>) -> &mut Sql {
        self.bind(fragment, [arg.into()])
    }

    /// Appends a statement built the same way (a subquery), its arguments after these.
    pub fn append(&mut self, other: Sql) -> &mut Sql {
        self.text.push_str(&other.text);
        self.args.extend(other.args);
        self
    }

    /// The statement text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The arguments, in order.
    pub fn args(&self) -> &[Arg] {
        &self.args
    }

    /// A clickhouse query with every argument bound.
    pub fn query(&self, client: &clickhouse::Client) -> clickhouse::query::Query {
        self.args
            .iter()
            .fold(client.query(&self.text), |q, a| q.bind(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_count_placeholders() {
        let mut s = Sql::new("SELECT 1 FROM t WHERE ");
        s.bind1("a = ?", "x'; DROP TABLE t; --").push(" AND ").bind(
            "b IN ? AND c > ?",
            [Arg::Strs(vec!["p".into()]), Arg::Int(3)],
        );
        assert_eq!(s.text(), "SELECT 1 FROM t WHERE a = ? AND b IN ? AND c > ?");
        assert_eq!(s.args().len(), 3);
        assert_eq!(s.args()[0], Arg::Str("x'; DROP TABLE t; --".into()));
    }

    #[test]
    #[should_panic(expected = "placeholders and arguments differ")]
    fn mismatched_binds_panic() {
        Sql::new("SELECT ").bind1("? + ?", 1i64);
    }
}
