//! Detection of raw credentials in a message, run on every message and header before any
//! format is recognized: a message that carries one is rejected, never stored.

use std::sync::LazyLock;

use memchr::memmem;

/// Prebuilt searchers of [`find_raw_token`].
struct Finders {
    fields: [(memmem::Finder<'static>, &'static str); 5],
    bearer: [memmem::Finder<'static>; 2],
    jws: memmem::Finder<'static>,
}

/// Field names that only ever hold raw tokens.
const TOKEN_FIELDS: [(&[u8], &str); 5] = [
    (b"\"access_token\"", "access_token field"),
    (b"\"refresh_token\"", "refresh_token field"),
    (b"\"id_token\"", "id_token field"),
    (b"\"accessToken\"", "accessToken field"),
    (b"\"refreshToken\"", "refreshToken field"),
];

/// Looks for a raw token: a token-valued field name, a JWS/JWT compact serialization
/// (`eyJ...` header, `.`, payload, `.`), or an `Authorization: Bearer` value.
pub fn find_raw_token(bytes: &[u8]) -> Option<&'static str> {
    // The searchers are built once: building one per message and needle cost ~2% of ingest.
    static FINDERS: LazyLock<Finders> = LazyLock::new(|| Finders {
        fields: TOKEN_FIELDS.map(|(needle, kind)| (memmem::Finder::new(needle), kind)),
        bearer: [
            memmem::Finder::new(b"Bearer "),
            memmem::Finder::new(b"bearer "),
        ],
        jws: memmem::Finder::new(b"eyJ"),
    });
    let f = &*FINDERS;
    for (finder, kind) in &f.fields {
        let needle = finder.needle();
        for at in finder.find_iter(bytes) {
            // A field name, not a value such as `"grant_type":"refresh_token"`.
            let rest = &bytes[at + needle.len()..];
            let next = rest.iter().find(|b| !b.is_ascii_whitespace());
            if next == Some(&b':') {
                return Some(kind);
            }
        }
    }
    if f.bearer.iter().any(|b| b.find(bytes).is_some()) {
        return Some("bearer credential");
    }
    for start in f.jws.find_iter(bytes) {
        if looks_like_jws(&bytes[start..]) {
            return Some("JWT");
        }
    }
    None
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `eyJ<b64url>{8,}.<b64url>{8,}.` — a compact JWS or JWT (signature may be empty).
fn looks_like_jws(s: &[u8]) -> bool {
    let header = s.iter().take_while(|b| is_b64url(**b)).count();
    if header < 10 || s.get(header) != Some(&b'.') {
        return false;
    }
    let rest = &s[header + 1..];
    let body = rest.iter().take_while(|b| is_b64url(**b)).count();
    body >= 8 && rest.get(body) == Some(&b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_jwts_and_token_fields() {
        assert_eq!(
            find_raw_token(b"{\"x\":\"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig\"}"),
            Some("JWT")
        );
        assert_eq!(
            find_raw_token(b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4eHh4eHgifQ."),
            Some("JWT")
        );
        assert_eq!(
            find_raw_token(b"{\"refresh_token\":\"opaque\"}"),
            Some("refresh_token field")
        );
        assert_eq!(
            find_raw_token(b"{\"h\":\"Bearer abc\"}"),
            Some("bearer credential")
        );
        assert_eq!(
            find_raw_token(b"{\"refresh_token_id\":\"abc\",\"eyJ\":1}"),
            None
        );
        assert_eq!(find_raw_token(b"{\"grant_type\":\"refresh_token\"}"), None);
        assert_eq!(
            find_raw_token(b"{\"refresh_token\" : \"x\"}"),
            Some("refresh_token field")
        );
        assert_eq!(find_raw_token(b"{\"note\":\"eyJhbGciOiJ.short\"}"), None);
    }
}
