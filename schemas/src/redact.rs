//! Redaction of credentials from messages that leave the pipeline whole (the dead-letter
//! queue keeps a rejected message's bytes so an operator can repair and replay it).
//!
//! A message rejected as `raw_token` carries a live bearer token by definition, and a message
//! rejected for another reason (invalid JSON, say) may carry one too, so every dead-lettered
//! message goes through [`redact`] first. It works on bytes, not on parsed JSON, so it also
//! covers documents that do not parse. It replaces:
//!
//! - compact JWS / JWT serializations (`eyJ…` `.` `…` `.` `…`), whole;
//! - the values of fields that hold credentials ([`SECRET_FIELDS`]: `access_token`,
//!   `refresh_token`, `id_token`, `client_secret`, `password`, `credentials`, ...), also when
//!   the JSON is embedded, escaped, in a string;
//! - the credential after `Bearer ` and `Basic ` (any case), as in an `Authorization` value.
//!
//! Header values go through [`redact_header`], which blanks a header whose name says it
//! carries a credential (`Authorization`, `Cookie`, names containing `token`, `secret`,
//! `password`, `credential`) and redacts the others like a payload. Redacted text is
//! [`REDACTED`], so a document that was valid JSON stays valid JSON.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem;

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";

/// JSON field names whose values are credentials.
pub const SECRET_FIELDS: [&str; 16] = [
    "access_token",
    "refresh_token",
    "id_token",
    "accessToken",
    "refreshToken",
    "idToken",
    "client_secret",
    "clientSecret",
    "password",
    "newPassword",
    "credentials",
    "secret",
    "token",
    "authorization",
    "Authorization",
    "cookie",
];

/// Header-name fragments (compared in lower case) whose values are credentials.
const SECRET_HEADER_PARTS: [&str; 6] = [
    "authorization",
    "cookie",
    "token",
    "secret",
    "password",
    "credential",
];

struct Finders {
    /// `"name"` and the escaped form `\"name\"` of every secret field.
    fields: Vec<(memmem::Finder<'static>, bool)>,
    jws: memmem::Finder<'static>,
}

static FINDERS: LazyLock<Finders> = LazyLock::new(|| {
    let mut fields = Vec::with_capacity(SECRET_FIELDS.len() * 2);
    for name in SECRET_FIELDS {
        let plain = format!("\"{name}\"");
        let escaped = format!("\\\"{name}\\\"");
        fields.push((memmem::Finder::new(&plain).into_owned(), false));
        fields.push((memmem::Finder::new(&escaped).into_owned(), true));
    }
    Finders {
        fields,
        jws: memmem::Finder::new(b"eyJ"),
    }
});

/// `bytes` with every credential replaced by [`REDACTED`]; borrowed when there was none.
pub fn redact(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut spans: Vec<(usize, usize, Repl)> = Vec::new();
    let f = &*FINDERS;
    for (finder, escaped) in &f.fields {
        let needle = finder.needle().len();
        for at in finder.find_iter(bytes) {
            if let Some(span) = field_value(bytes, at + needle, *escaped) {
                spans.push(span);
            }
        }
    }
    for start in f.jws.find_iter(bytes) {
        if let Some(end) = jws_end(&bytes[start..]) {
            spans.push((start, start + end, Repl::Bare));
        }
    }
    scheme_credentials(bytes, &mut spans);
    if spans.is_empty() {
        return Cow::Borrowed(bytes);
    }
    spans.sort_unstable();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    for (start, end, repl) in spans {
        if end <= at {
            continue;
        }
        let start = start.max(at);
        out.extend_from_slice(&bytes[at..start]);
        let quote: &[u8] = match repl {
            Repl::Bare => b"",
            Repl::Quoted => b"\"",
            Repl::EscapedQuoted => b"\\\"",
        };
        out.extend_from_slice(quote);
        out.extend_from_slice(REDACTED.as_bytes());
        out.extend_from_slice(quote);
        at = end;
    }
    out.extend_from_slice(&bytes[at..]);
    Cow::Owned(out)
}

/// A header's value with credentials redacted (see the module docs).
pub fn redact_header<'a>(name: &str, value: &'a [u8]) -> Cow<'a, [u8]> {
    let lower = name.to_ascii_lowercase();
    if SECRET_HEADER_PARTS.iter().any(|p| lower.contains(p)) && !value.is_empty() {
        return Cow::Owned(REDACTED.as_bytes().to_vec());
    }
    redact(value)
}

/// How a redacted span is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Repl {
    /// As is: the span was inside a string.
    Bare,
    /// As a JSON string: the span was another value.
    Quoted,
    /// As an escaped JSON string: the span was a value of JSON embedded in a string.
    EscapedQuoted,
}

/// The span of the value after a field name ending at `at`, and how to replace it.
fn field_value(bytes: &[u8], at: usize, escaped: bool) -> Option<(usize, usize, Repl)> {
    let mut i = skip_ws(bytes, at);
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i = skip_ws(bytes, i + 1);
    if escaped {
        // Embedded JSON: a string value is `\"...\"` and ends at the next `\"`; an object
        // or array ends at its closing bracket.
        if bytes.get(i..i + 2) == Some(b"\\\"") {
            let start = i + 2;
            let end = memmem::find(&bytes[start..], b"\\\"").map_or(bytes.len(), |e| start + e);
            return Some((start, end, Repl::Bare));
        }
        return match bytes.get(i)? {
            b'{' | b'[' => Some((i, composite_end(bytes, i, false), Repl::EscapedQuoted)),
            _ => None,
        };
    }
    match bytes.get(i)? {
        b'"' => {
            let start = i + 1;
            Some((start, string_end(bytes, start), Repl::Bare))
        }
        b'{' | b'[' => Some((i, composite_end(bytes, i, true), Repl::Quoted)),
        _ => {
            let len = bytes[i..]
                .iter()
                .take_while(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                .count();
            (len > 0).then_some((i, i + len, Repl::Quoted))
        }
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Index of the closing quote of a JSON string whose content starts at `start` (or the end).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Index just past the object or array that opens at `start` (or the end). With
/// `strings`, brackets inside JSON strings do not count; without (JSON embedded in a
/// string, where quotes are escaped), every bracket counts.
fn composite_end(bytes: &[u8], start: usize, strings: bool) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' if strings => {
                i = string_end(bytes, i + 1);
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Length of a compact JWS at the start of `s` (header, payload and signature), if it is one.
fn jws_end(s: &[u8]) -> Option<usize> {
    let header = s.iter().take_while(|b| is_b64url(**b)).count();
    if header < 10 || s.get(header) != Some(&b'.') {
        return None;
    }
    let rest = &s[header + 1..];
    let body = rest.iter().take_while(|b| is_b64url(**b)).count();
    if body < 8 || rest.get(body) != Some(&b'.') {
        return None;
    }
    let sig = rest[body + 1..]
        .iter()
        .take_while(|b| is_b64url(**b) || **b == b'=')
        .count();
    Some(header + 1 + body + 1 + sig)
}

/// Credentials after an HTTP authentication scheme: `Bearer x`, `Basic x` (any case).
fn scheme_credentials(bytes: &[u8], spans: &mut Vec<(usize, usize, Repl)>) {
    for scheme in [&b"bearer "[..], &b"basic "[..]] {
        let n = scheme.len();
        if bytes.len() < n {
            continue;
        }
        let last = bytes.len() - n;
        for at in memchr::memchr2_iter(scheme[0], scheme[0].to_ascii_uppercase(), bytes) {
            if at > last || !bytes[at..at + n].eq_ignore_ascii_case(scheme) {
                continue;
            }
            let start = skip_ws(bytes, at + n);
            let len = bytes[start..]
                .iter()
                .take_while(|b| {
                    !b.is_ascii_whitespace() && !matches!(b, b'"' | b'\\' | b',' | b'}' | b']')
                })
                .count();
            if len > 0 {
                spans.push((start, start + len, Repl::Bare));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXNlY3JldA";

    fn text(b: &[u8]) -> String {
        String::from_utf8(redact(b).into_owned()).expect("utf8")
    }

    #[test]
    fn jwts_anywhere_are_replaced_whole() {
        let got = text(format!("{{\"note\":\"see {JWT} here\"}}").as_bytes());
        assert_eq!(got, "{\"note\":\"see [redacted] here\"}");
        assert!(!got.contains("c2lnbmF0dXJl"));
        // Not JSON at all.
        let got = text(format!("garbage {JWT}").as_bytes());
        assert_eq!(got, "garbage [redacted]");
    }

    #[test]
    fn secret_field_values_are_replaced_and_json_stays_valid() {
        let doc = br#"{"a":1,"access_token" : "opaque\"x","password":"p","client_secret":{"k":["v"]},"token":42,"grant_type":"refresh_token"}"#;
        let got = text(doc);
        assert_eq!(
            got,
            r#"{"a":1,"access_token" : "[redacted]","password":"[redacted]","client_secret":"[redacted]","token":"[redacted]","grant_type":"refresh_token"}"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&got).is_ok());
    }

    #[test]
    fn embedded_escaped_json_and_schemes_are_redacted() {
        let doc = br#"{"body":"{\"refresh_token\":\"rt-secret\",\"credentials\":[{\"value\":\"pw-secret\"}]}","h":"Bearer abc.def","b":"basic dXNlcjpwYXNz"}"#;
        let got = text(doc);
        assert!(!got.contains("rt-secret"), "{got}");
        assert!(!got.contains("pw-secret"), "{got}");
        let inner: serde_json::Value = serde_json::from_str(&got).expect("outer");
        let inner = inner["body"].as_str().expect("body");
        assert!(
            serde_json::from_str::<serde_json::Value>(inner).is_ok(),
            "{inner}"
        );
        assert!(!got.contains("abc.def"), "{got}");
        assert!(!got.contains("dXNlcjpwYXNz"), "{got}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&got).is_ok(),
            "{got}"
        );
    }

    #[test]
    fn composites_end_at_their_bracket_with_or_without_strings() {
        // Brackets inside a string do not close the object when strings are read.
        let doc = br#"{"a":"}]","b":[1]} tail"#;
        assert_eq!(composite_end(doc, 0, true), doc.len() - 5);
        // Embedded JSON (escaped quotes): every bracket counts, quotes are plain bytes.
        let embedded = br#"{"a":[{"b":1}]} tail"#;
        assert_eq!(composite_end(embedded, 0, false), embedded.len() - 5);
        assert_eq!(composite_end(br#"{"a":"}"}"#, 0, false), 7);
        // Unclosed: the end of the input.
        assert_eq!(composite_end(b"[[1]", 0, true), 4);
        assert_eq!(composite_end(b"[[1]", 0, false), 4);
    }

    #[test]
    fn clean_input_is_borrowed_unchanged() {
        let doc = br#"{"type":"custos.fhir.access","grant_type":"refresh_token","eyJ":1}"#;
        assert!(matches!(redact(doc), Cow::Borrowed(_)));
        // Truncated inputs never panic.
        for cut in 0..=20 {
            let d = &br#"{"password":"abc","x":"Bearer "#[..cut.min(27)];
            let _ = redact(d);
        }
        let _ = redact(b"{\"password\":");
        let _ = redact(b"{\"password\": {\"a\":\"");
    }

    #[test]
    fn credential_headers_are_blanked() {
        assert_eq!(
            &*redact_header("Authorization", b"Bearer x"),
            REDACTED.as_bytes()
        );
        assert_eq!(&*redact_header("ce_authtoken", b"x"), REDACTED.as_bytes());
        assert_eq!(&*redact_header("ce_id", b"abc"), b"abc");
        assert_eq!(
            redact_header("ce_note", JWT.as_bytes()).as_ref(),
            REDACTED.as_bytes()
        );
    }
}
