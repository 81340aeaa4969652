//! Hand-built events for the detectors' tests: CloudEvents decoded and converted exactly as
//! the ingest does.

use custos_schemas::row::RowContext;
use custos_schemas::{decode, AuditRow, DecodeLimits, Event, KafkaPosition, KeyRing};
use serde_json::{json, Value};

use crate::{AlertUpdate, Engine, ParamSet};

/// 2026-06-01T08:00:00Z in ms.
pub(crate) const T0: i64 = 1_780_300_800_000;
/// One minute in ms.
pub(crate) const MIN: i64 = 60_000;

/// A fixed pseudonym key ring.
pub(crate) fn ring() -> KeyRing {
    KeyRing::parse(
        "k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        None,
    )
    .expect("key ring")
}

/// Builds events and feeds them to an engine, collecting every update.
pub(crate) struct Kit {
    pub engine: Engine,
    pub updates: Vec<AlertUpdate>,
    keys: KeyRing,
    seq: u64,
}

impl Kit {
    /// An engine with default parameters.
    pub(crate) fn new() -> Kit {
        Kit::with(ParamSet::default())
    }

    /// An engine with these parameters.
    pub(crate) fn with(params: ParamSet) -> Kit {
        Kit {
            engine: Engine::new(params),
            updates: Vec::new(),
            keys: ring(),
            seq: 0,
        }
    }

    /// Decodes and converts one CloudEvent of `ty` at `t` ms with `data`.
    pub(crate) fn build(&mut self, ty: &str, t: i64, data: Value) -> (Event, AuditRow) {
        self.seq += 1;
        let time = chrono::DateTime::from_timestamp_millis(t).expect("time");
        let msg = json!({"specversion": "1.0", "id": format!("e{}", self.seq), "source": "//test",
            "type": ty, "time": time.to_rfc3339(), "tenant": "general", "data": data});
        let bytes = serde_json::to_vec(&msg).expect("json");
        let ev = decode(&bytes, &[], &DecodeLimits::default()).expect("decodes");
        let ctx = RowContext {
            keys: &self.keys,
            default_tenant: "general",
        };
        let pos = KafkaPosition {
            topic: "t".into(),
            partition: 0,
            offset: i64::try_from(self.seq).unwrap_or_default(),
        };
        let row = ctx.audit_row(&ev, &pos, t);
        (ev, row)
    }

    /// Builds and observes one event; returns its audit row's event key.
    pub(crate) fn send(&mut self, ty: &str, t: i64, data: Value) -> String {
        let (ev, row) = self.build(ty, t, data);
        let ups = self.engine.observe(&ev, &row);
        self.updates.extend(ups);
        row.event_key
    }

    /// Observes a built event and row (for rows the decoders would refuse).
    pub(crate) fn send_row(&mut self, ev: &Event, row: &AuditRow) {
        let ups = self.engine.observe(ev, row);
        self.updates.extend(ups);
    }

    /// Moves the watermark.
    pub(crate) fn flush(&mut self, watermark: i64) {
        let ups = self.engine.advance(watermark);
        self.updates.extend(ups);
    }

    /// The open alerts of one detector.
    pub(crate) fn alerts(&self, detector: &str) -> Vec<AlertUpdate> {
        self.engine
            .open_alerts()
            .into_iter()
            .filter(|a| a.detector.as_str() == detector)
            .collect()
    }
}

/// A FHIR access by a clinician with token `jti` from `ip`.
pub(crate) fn access(jti: &str, ip: &str, rtype: &str, decision: &str) -> Value {
    json!({"requestId": "q", "iss": "https://as", "sub": "dr-1", "fhirUser": "Practitioner/pr-1",
        "client_id": "ehr-app", "jti": jti, "scope": "user/Observation.rs user/Patient.rs",
        "interaction": "read", "resourceType": rtype, "resourceId": "x1", "patient": "Patient/p-1",
        "decision": decision, "httpStatus": if decision == "permit" { 200 } else { 403 },
        "sourceIp": ip, "userAgent": "Browser/1"})
}

/// A FHIR access by a patient user of app `client` to their own record.
pub(crate) fn patient_access(client: &str, patient: &str, jti: &str, decision: &str) -> Value {
    json!({"requestId": "q", "iss": "https://as", "sub": format!("sub-{patient}"),
        "fhirUser": format!("Patient/{patient}"), "client_id": client, "jti": jti,
        "scope": "patient/Observation.rs", "interaction": "search-type", "resourceType": "Observation",
        "patient": format!("Patient/{patient}"), "decision": decision,
        "httpStatus": if decision == "permit" { 200 } else { 403 }, "sourceIp": "203.0.113.5"})
}
