//! CloudEvents 1.0: structured JSON mode and the Kafka protocol binding's binary mode
//! (`ce_*` headers, `content-type` header, the message value is `data`).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{json, Header};
use crate::error::DecodeError;
use crate::event::{
    AuthData, BreakGlassData, ConsentData, DeprovisionData, Event, EventType, FhirAccessData,
    Payload, PayloadFamily, SourceFormat, TokenData,
};

/// The envelope of a structured-mode CloudEvent. Attributes that are only checked are
/// borrowed from the message when they hold no JSON escape (copied otherwise).
#[derive(Deserialize)]
struct Structured<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    id: String,
    source: String,
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    time: DateTime<Utc>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    datacontenttype: Option<Cow<'a, str>>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// An optional string, borrowed when it has no escape (serde borrows a `Cow<str>` only
/// when it is the field's type itself, not inside an `Option`).
fn opt_cow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'de>>::deserialize(d)?.map(|b| b.0))
}

/// Decodes a structured-mode CloudEvent.
pub fn decode_structured(bytes: &[u8]) -> Result<Event, DecodeError> {
    let ce: Structured<'_> = json::parse(bytes, "")?;
    check_specversion(&ce.specversion)?;
    check_content_type("datacontenttype", ce.datacontenttype.as_deref())?;
    let event_type = EventType::parse(&ce.ty).ok_or_else(|| DecodeError::unknown_type(&ce.ty))?;
    let payload = decode_data(event_type, ce.data.get().as_bytes(), "data")?;
    Ok(Event {
        id: ce.id,
        source: ce.source,
        event_type,
        time: ce.time,
        tenant: ce.tenant,
        format: SourceFormat::CloudEventsStructured,
        payload,
    })
}

/// Decodes a binary-mode CloudEvent: attributes from `ce_*` headers, `data` is the value.
pub fn decode_binary(bytes: &[u8], headers: &[Header<'_>]) -> Result<Event, DecodeError> {
    let header = |name: &'static str| -> Result<Option<&str>, DecodeError> {
        match headers.iter().find(|(k, _)| *k == name) {
            None => Ok(None),
            Some((_, v)) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| DecodeError::invalid(name, "not UTF-8")),
        }
    };
    let required = |name: &'static str| -> Result<&str, DecodeError> {
        header(name)?.ok_or_else(|| DecodeError::MissingField(name.to_owned()))
    };
    check_specversion(required("ce_specversion")?)?;
    let id = required("ce_id")?.to_owned();
    let source = required("ce_source")?.to_owned();
    let ty = required("ce_type")?;
    let time = DateTime::parse_from_rfc3339(required("ce_time")?)
        .map_err(|_| DecodeError::invalid("ce_time", "not an RFC 3339 timestamp"))?
        .with_timezone(&Utc);
    check_content_type("content-type", header("content-type")?)?;
    let tenant = header("ce_tenant")?.map(str::to_owned);
    let event_type = EventType::parse(ty).ok_or_else(|| DecodeError::unknown_type(ty))?;
    let payload = decode_data(event_type, bytes, "data")?;
    Ok(Event {
        id,
        source,
        event_type,
        time,
        tenant,
        format: SourceFormat::CloudEventsBinary,
        payload,
    })
}

fn check_specversion(v: &str) -> Result<(), DecodeError> {
    if v == "1.0" {
        Ok(())
    } else {
        Err(DecodeError::invalid(
            "specversion",
            "unsupported version, expected 1.0",
        ))
    }
}

fn check_content_type(field: &str, v: Option<&str>) -> Result<(), DecodeError> {
    match v {
        None => Ok(()),
        Some(ct) => {
            let media = ct.split(';').next().unwrap_or_default().trim();
            if media == "application/json" || media.ends_with("+json") {
                Ok(())
            } else {
                Err(DecodeError::invalid(field, "data must be JSON"))
            }
        }
    }
}

fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8], prefix: &str) -> Result<T, DecodeError> {
    json::parse(bytes, prefix)
}

/// Decodes a `data` member into the payload struct of `event_type`.
pub fn decode_data(
    event_type: EventType,
    bytes: &[u8],
    prefix: &str,
) -> Result<Payload, DecodeError> {
    Ok(match event_type.family() {
        PayloadFamily::Auth => Payload::Auth(parse::<AuthData>(bytes, prefix)?),
        PayloadFamily::Token => Payload::Token(parse::<TokenData>(bytes, prefix)?),
        PayloadFamily::Consent => Payload::Consent(parse::<ConsentData>(bytes, prefix)?),
        PayloadFamily::FhirAccess => Payload::FhirAccess(parse::<FhirAccessData>(bytes, prefix)?),
        PayloadFamily::UserDeprovisioned => {
            Payload::UserDeprovisioned(parse::<DeprovisionData>(bytes, prefix)?)
        }
        PayloadFamily::BreakGlass => Payload::BreakGlass(parse::<BreakGlassData>(bytes, prefix)?),
    })
}
