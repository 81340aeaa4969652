//! Validation of request parameters into typed values. Every failure names the parameter,
//! never its value (it may be a raw patient id).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use custos_schemas::event::INTERACTIONS;
use custos_schemas::{EventType, KeyRing, PseudonymKind};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Whether a tenant name is acceptable (`[A-Za-z0-9._-]{1,64}`).
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Settings the validators need.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Tenant when none is given.
    pub default_tenant: String,
    /// Default page size.
    pub page_default: u32,
    /// Largest page size.
    pub page_max: u32,
    /// Largest export.
    pub export_max_rows: u64,
    /// Default window in days.
    pub default_window_days: u32,
}

/// Output format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON page with a `next_cursor`.
    Json,
    /// Streamed CSV (header row first).
    Csv,
    /// Streamed newline-delimited JSON.
    Ndjson,
}

impl Format {
    /// Parses `format=`.
    pub fn parse(v: Option<&str>) -> Result<Format, ApiError> {
        match v.unwrap_or("json") {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "ndjson" => Ok(Format::Ndjson),
            _ => Err(ApiError::bad("format must be json, csv or ndjson")),
        }
    }

    /// Name for the query audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

/// A position in the stable order `(time, key)`: the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// Event key (32 lowercase hex).
    pub key: String,
}

impl Cursor {
    /// Opaque text form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1.{}.{}", self.time_ms, self.key))
    }

    /// Parses the text form strictly.
    pub fn decode(s: &str) -> Result<Cursor, ApiError> {
        let bad = || ApiError::bad("cursor is not a cursor returned by this API");
        if s.len() > 128 {
            return Err(bad());
        }
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = text.split('.');
        let (Some("v1"), Some(t), Some(k), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let time_ms: i64 = t.parse().map_err(|_| bad())?;
        if !is_key(k) || time_ms < 0 {
            return Err(bad());
        }
        Ok(Cursor {
            time_ms,
            key: k.to_owned(),
        })
    }
}

/// Whether `s` is 32 lowercase hex digits (an event key or query id).
pub fn is_key(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Time window `[from, to)`, ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive start.
    pub from_ms: i64,
    /// Exclusive end.
    pub to_ms: i64,
}

impl Window {
    /// RFC 3339 of the start.
    pub fn from_rfc3339(&self) -> String {
        ms_to_rfc3339(self.from_ms)
    }

    /// RFC 3339 of the end.
    pub fn to_rfc3339(&self) -> String {
        ms_to_rfc3339(self.to_ms)
    }
}

pub use custos_schemas::records::ms_to_rfc3339;

/// Parses an RFC 3339 timestamp or a `YYYY-MM-DD` date (midnight UTC).
pub fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc).timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(ApiError::bad(format!(
        "{name} must be an RFC 3339 timestamp or a YYYY-MM-DD date"
    )))
}

/// The window from `from`/`to`, defaulting to the last `default_days` days.
pub fn window(from: Option<&str>, to: Option<&str>, default_days: u32) -> Result<Window, ApiError> {
    let to_ms = match to {
        Some(v) => parse_time("to", v)?,
        None => Utc::now().timestamp_millis() + 1,
    };
    let from_ms = match from {
        Some(v) => parse_time("from", v)?,
        None => to_ms - i64::from(default_days) * 86_400_000,
    };
    if from_ms >= to_ms {
        return Err(ApiError::bad("from must be before to"));
    }
    if from_ms < 0 {
        return Err(ApiError::bad("from must not precede 1970"));
    }
    Ok(Window { from_ms, to_ms })
}

/// Common report parameters after validation.
#[derive(Debug, Clone)]
pub struct Common {
    /// Tenant.
    pub tenant: String,
    /// Time window.
    pub window: Window,
    /// Page size (JSON) or row cap (exports).
    pub limit: u64,
    /// Resume after this position.
    pub after: Option<Cursor>,
    /// Output format.
    pub format: Format,
}

impl Common {
    /// Validates the shared parameters.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        limits: &Limits,
        default_days: u32,
        tenant: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        limit: Option<&str>,
        cursor: Option<&str>,
        format: Option<&str>,
    ) -> Result<Common, ApiError> {
        let tenant = tenant.unwrap_or(&limits.default_tenant);
        if !valid_tenant(tenant) {
            return Err(ApiError::bad(
                "tenant must be 1-64 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        let format = Format::parse(format)?;
        let limit = match (limit, format) {
            (Some(l), _) => {
                let n: u64 = l
                    .parse()
                    .map_err(|_| ApiError::bad("limit must be a positive integer"))?;
                let max = match format {
                    Format::Json => u64::from(limits.page_max),
                    _ => limits.export_max_rows,
                };
                if n == 0 || n > max {
                    return Err(ApiError::bad(format!("limit must be 1..={max}")));
                }
                n
            }
            (None, Format::Json) => u64::from(limits.page_default),
            (None, _) => limits.export_max_rows,
        };
        Ok(Common {
            tenant: tenant.to_owned(),
            window: window(from, to, default_days)?,
            limit,
            after: cursor.map(Cursor::decode).transpose()?,
            format,
        })
    }
}

/// A free-form identifier (raw patient id, subject, jti, session, client): 1-256
/// characters without control characters. It is only ever bound or hashed.
pub fn ident(name: &str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(s)
            if !s.is_empty() && s.chars().count() <= 256 && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.to_owned()))
        }
        Some(_) => Err(ApiError::bad(format!(
            "{name} must be 1-256 characters without control characters"
        ))),
    }
}

/// Like [`ident`] but required.
pub fn required_ident(name: &str, v: Option<&str>) -> Result<String, ApiError> {
    ident(name, v)?.ok_or_else(|| ApiError::bad(format!("{name} is required")))
}

/// A code (purpose of use, report name): `[A-Za-z0-9._-]{1,64}`, the rule report names
/// recorded in the query audit follow ([`custos_auth::audit::valid_code`]).
pub use custos_auth::audit::valid_code;

/// An optional code parameter.
pub fn code(name: &str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) if valid_code(s) => Ok(Some(s.to_owned())),
        Some(_) => Err(ApiError::bad(format!(
            "{name} must be 1-64 characters of A-Z a-z 0-9 . _ -"
        ))),
    }
}

/// A FHIR resource type: `[A-Z][A-Za-z]{0,63}`.
pub fn resource_type(name: &str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(s)
            if s.len() <= 64
                && s.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
                && s.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            Ok(Some(s.to_owned()))
        }
        Some(_) => Err(ApiError::bad(format!(
            "{name} must be a FHIR resource type"
        ))),
    }
}

/// A FHIR restful interaction code.
pub fn interaction(name: &str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) if INTERACTIONS.contains(&s) => Ok(Some(s.to_owned())),
        Some(_) => Err(ApiError::bad(format!(
            "{name} must be a FHIR restful interaction code"
        ))),
    }
}

/// `success` or `failure`.
pub fn outcome(v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(s @ ("success" | "failure")) => Ok(Some(s.to_owned())),
        Some(_) => Err(ApiError::bad("outcome must be success or failure")),
    }
}

/// `permit` or `deny`.
pub fn decision(v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(s @ ("permit" | "deny")) => Ok(Some(s.to_owned())),
        Some(_) => Err(ApiError::bad("decision must be permit or deny")),
    }
}

/// A Custos event type.
pub fn event_type(v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) if EventType::parse(s).is_some() => Ok(Some(s.to_owned())),
        Some(_) => Err(ApiError::bad("event_type must be a Custos event type")),
    }
}

/// The parameters recorded in the query audit: identifiers pseudonymized with the
/// current key, everything else as validated.
pub struct AuditParams<'a> {
    keys: &'a KeyRing,
    tenant: String,
    map: Map<String, Value>,
}

impl<'a> AuditParams<'a> {
    /// Starts with the common parameters.
    pub fn new(keys: &'a KeyRing, c: &Common) -> AuditParams<'a> {
        let mut map = Map::new();
        map.insert("from".into(), c.window.from_rfc3339().into());
        map.insert("to".into(), c.window.to_rfc3339().into());
        map.insert("limit".into(), c.limit.into());
        map.insert("cursor".into(), c.after.is_some().into());
        AuditParams {
            keys,
            tenant: c.tenant.clone(),
            map,
        }
    }

    /// A readable parameter.
    pub fn plain(mut self, name: &str, v: &Option<String>) -> Self {
        if let Some(v) = v {
            self.map.insert(name.into(), v.clone().into());
        }
        self
    }

    /// A parameter stored as its pseudonym of `kind` under the current key.
    pub fn hashed(mut self, name: &str, kind: PseudonymKind, v: &Option<String>) -> Self {
        if let Some(v) = v {
            let p = self.keys.pseudonymize(&self.tenant, kind, v);
            self.map.insert(name.into(), p.into());
        }
        self
    }

    /// The JSON object.
    pub fn done(self) -> Value {
        Value::Object(self.map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            default_tenant: "default".into(),
            page_default: 100,
            page_max: 1000,
            export_max_rows: 1_000_000,
            default_window_days: 2192,
        }
    }

    #[test]
    fn cursor_round_trips_and_rejects_tampering() {
        let c = Cursor {
            time_ms: 1_746_353_472_345,
            key: "0123456789abcdef0123456789abcdef".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c));
        for bad in [
            "",
            "x",
            "' OR 1=1 --",
            &URL_SAFE_NO_PAD.encode("v1.1.0123456789abcdef0123456789abcdeX"),
            &URL_SAFE_NO_PAD.encode("v1.-5.0123456789abcdef0123456789abcdef"),
            &URL_SAFE_NO_PAD.encode("v2.1.0123456789abcdef0123456789abcdef"),
            &URL_SAFE_NO_PAD.encode("v1.1.0123456789abcdef0123456789abcdef.x"),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn common_parameters() {
        let l = limits();
        let c = Common::parse(
            &l,
            30,
            Some("general"),
            Some("2026-01-01"),
            Some("2026-02-01T00:00:00Z"),
            Some("10"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.limit, 10);
        assert_eq!(c.window.from_rfc3339(), "2026-01-01T00:00:00.000Z");
        assert_eq!(c.format, Format::Json);
        let d = Common::parse(&l, 30, None, None, None, None, None, Some("csv")).unwrap();
        assert_eq!(d.tenant, "default");
        assert_eq!(d.limit, 1_000_000);
        for (tenant, from, limit, fmt) in [
            (Some("x'--"), None, None, None),
            (None, Some("yesterday"), None, None),
            (None, Some("2030-01-01"), None, None),
            (None, None, Some("0"), None),
            (None, None, Some("1001"), None),
            (None, None, Some("-1"), None),
            (None, None, None, Some("xml")),
        ] {
            assert!(Common::parse(&l, 30, tenant, from, None, limit, None, fmt).is_err());
        }
    }

    #[test]
    fn identifier_rules() {
        assert_eq!(
            ident("patient", Some("'; DROP TABLE x; --")).unwrap(),
            Some("'; DROP TABLE x; --".into())
        );
        assert!(ident("patient", Some("")).is_err());
        assert!(ident("patient", Some("a\nb")).is_err());
        assert!(ident("patient", Some(&"a".repeat(257))).is_err());
        assert!(resource_type("entity-type", Some("Observation")).is_ok());
        assert!(resource_type("entity-type", Some("Obs'ervation")).is_err());
        assert!(interaction("interaction", Some("search-type")).is_ok());
        assert!(interaction("interaction", Some("drop")).is_err());
        assert!(code("purpose", Some("TREAT")).is_ok());
        assert!(code("purpose", Some("TREAT'")).is_err());
        assert!(event_type(Some("custos.fhir.access")).is_ok());
        assert!(event_type(Some("custos.nope")).is_err());
    }
}
