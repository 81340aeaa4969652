//! The simulated hospital: clinicians using EHR-launched apps, patients using standalone apps,
//! backend services; logins, token issuance, refresh and revocation, FHIR reads and searches,
//! consent grants and revocations, break-glass accesses, and injected incidents.
//!
//! Every emitted message says which topic it belongs to and, for incidents, what it is, so
//! tests can check that each incident shows up in the matching report.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use crate::incident::{IncidentInfo, Label, LabelKind};
use crate::Msg;

/// Which input topic a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Authorization-server events.
    As,
    /// Gateway / FHIR server events.
    Gateway,
    /// Consent changes.
    Consent,
}

/// Source formats the simulator can emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// CloudEvents structured mode only.
    Cloudevents,
    /// AS events as Keycloak JSON, accesses as CloudEvents.
    Keycloak,
    /// Accesses as FHIR AuditEvents, AS events as CloudEvents.
    Fhir,
    /// A mix of all of them (and CloudEvents binary mode).
    Mixed,
}

/// A message with its destination and, if it is one, the incident it carries.
#[derive(Debug, Clone)]
pub struct Out {
    /// Destination topic.
    pub dest: Dest,
    /// The message.
    pub msg: Msg,
    /// The normal-mix incident, for the message that makes it visible (the same as
    /// [`Label::incident_info`] of `label`).
    pub incident: Option<IncidentInfo>,
    /// The label of the scenario this message is evidence of, in either mix.
    pub label: Option<Label>,
}

impl Out {
    /// A message with the label of its scenario.
    pub(crate) fn labelled(dest: Dest, msg: Msg, label: Option<Label>) -> Out {
        Out {
            dest,
            msg,
            incident: label.as_ref().and_then(Label::incident_info),
            label,
        }
    }
}

/// The hospital being simulated.
#[derive(Debug, Clone)]
pub struct HospitalConfig {
    /// Tenant name.
    pub tenant: String,
    /// Number of clinicians.
    pub clinicians: usize,
    /// Number of patients.
    pub patients: usize,
    /// Probability (0..1) that a scenario injects an incident.
    pub incident_rate: f64,
    /// Formats to emit.
    pub format: Format,
    /// Which scenarios to draw from.
    pub mix: Mix,
}

/// The scenario mix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Everyday traffic with the five classic incidents (the default; tests and benchmarks
    /// rely on its output for a seed, pinned by `sim/tests/default_stream.rs`).
    #[default]
    Normal,
    /// The normal mix plus harder cases, each labelled: slow-and-low snooping, credential
    /// stuffing, a privileged sign-in without a second factor, use after expiry, a burst of
    /// refresh failures, a bulk read, break-glass without a reason or after its time limit;
    /// and benign traps that must not alert (two clinicians behind one NAT, a patient app
    /// roaming to a new address, an administrator signing in with a second factor, a backend
    /// service's bulk export). Clinicians' and administrators' sign-ins carry `amr`.
    Hard,
}

impl Default for HospitalConfig {
    fn default() -> Self {
        HospitalConfig {
            tenant: "general".into(),
            clinicians: 40,
            patients: 2000,
            incident_rate: 0.05,
            format: Format::Mixed,
            mix: Mix::Normal,
        }
    }
}

pub(crate) const EHR_APPS: [&str; 3] = ["ehr-cardiology-app", "ehr-oncology-viewer", "ehr-med-rec"];
pub(crate) const PATIENT_APPS: [&str; 2] = ["smart-patient-app", "wellness-tracker"];
pub(crate) const BACKEND: &str = "bulk-analytics-service";
const RESOURCE_TYPES: [&str; 6] = [
    "Observation",
    "Condition",
    "MedicationRequest",
    "Encounter",
    "DiagnosticReport",
    "AllergyIntolerance",
];

/// Deterministic xorshift64* generator.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 1.0 < p
    }
    pub(crate) fn hex(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes * 2);
        while s.len() < bytes * 2 {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(bytes * 2);
        s
    }
}

/// The simulator.
#[derive(Debug)]
pub struct Simulator {
    pub(crate) cfg: HospitalConfig,
    pub(crate) rng: Rng,
    pub(crate) clock: DateTime<Utc>,
    /// Where the clock started.
    pub(crate) start: DateTime<Utc>,
    seq: u64,
    pub(crate) iss: String,
    /// (patient, app) pairs whose consent was revoked.
    revoked: Vec<(usize, String)>,
    /// Scenarios drawn so far (they number the labels).
    scenarios: u64,
}

impl Simulator {
    /// A simulator starting at a fixed simulated time.
    pub fn new(cfg: HospitalConfig, seed: u64) -> Self {
        let iss = format!(
            "https://auth.{}.hospital.example/realms/{}",
            cfg.tenant, cfg.tenant
        );
        let start = Utc
            .with_ymd_and_hms(2026, 6, 1, 7, 0, 0)
            .single()
            .unwrap_or_default();
        Simulator {
            cfg,
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            clock: start,
            start,
            seq: 0,
            iss,
            revoked: Vec::new(),
            scenarios: 0,
        }
    }

    /// Raw id of patient `i`.
    pub fn patient_id(&self, i: usize) -> String {
        format!("{}-pat-{i:05}", self.cfg.tenant)
    }

    pub(crate) fn patient_sub(&self, i: usize) -> String {
        format!("{}-psub-{i:05}", self.cfg.tenant)
    }

    pub(crate) fn clinician(&self, i: usize) -> (String, String) {
        (format!("dr-{:03}", i), format!("Practitioner/pr-{i:03}"))
    }

    pub(crate) fn tick(&mut self, max_ms: u64) -> DateTime<Utc> {
        self.clock += Duration::milliseconds((self.rng.next() % max_ms.max(1)) as i64 + 1);
        self.clock
    }

    pub(crate) fn id(&mut self, kind: &str) -> String {
        self.seq += 1;
        format!("sim-{}-{kind}-{}", self.cfg.tenant, self.seq)
    }

    pub(crate) fn ip(&mut self, patient_side: bool) -> String {
        if patient_side {
            format!("203.0.113.{}", 1 + self.rng.below(250))
        } else {
            format!("10.20.{}.{}", self.rng.below(4), 1 + self.rng.below(250))
        }
    }

    pub(crate) fn ce(&mut self, ty: &str, data: Value) -> (String, Msg) {
        let id = self.id(ty.rsplit('.').next().unwrap_or("e"));
        let time = self.tick(2_000);
        let v = json!({
            "specversion": "1.0", "id": id, "source": format!("//{}.hospital.example/sim", self.cfg.tenant),
            "type": ty, "time": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json", "tenant": self.cfg.tenant, "data": data,
        });
        if self.cfg.format == Format::Mixed && self.rng.chance(0.1) {
            // CloudEvents binary mode: attributes in ce_* headers, data as the value.
            let msg = Msg {
                key: Some(id.clone()),
                payload: serde_json::to_vec(&v["data"]).unwrap_or_default(),
                headers: [
                    ("ce_specversion", "1.0"),
                    ("ce_id", id.as_str()),
                    ("ce_source", v["source"].as_str().unwrap_or_default()),
                    ("ce_type", ty),
                    ("ce_time", v["time"].as_str().unwrap_or_default()),
                    ("ce_tenant", self.cfg.tenant.as_str()),
                    ("content-type", "application/json"),
                ]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            };
            return (id, msg);
        }
        (id, Msg::json(&v))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn keycloak(
        &mut self,
        kc_type: &str,
        client: &str,
        user: &str,
        session: &str,
        ip: &str,
        details: Value,
        error: Option<&str>,
    ) -> (String, Msg) {
        let id = self.id("kc");
        let time = self.tick(2_000);
        let mut v = json!({
            "id": id, "time": time.timestamp_millis(), "type": kc_type, "realmId": self.cfg.tenant,
            "clientId": client, "userId": user, "sessionId": session, "ipAddress": ip, "details": details,
        });
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        (id, Msg::json(&v))
    }

    pub(crate) fn use_keycloak(&mut self) -> bool {
        match self.cfg.format {
            Format::Keycloak => true,
            Format::Mixed => self.rng.chance(0.4),
            _ => false,
        }
    }

    pub(crate) fn use_fhir(&mut self) -> bool {
        match self.cfg.format {
            Format::Fhir => true,
            Format::Mixed => self.rng.chance(0.3),
            _ => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn access(
        &mut self,
        sub: &str,
        fhir_user: &str,
        client: &str,
        jti: &str,
        scope: &str,
        patient: &str,
        ip: &str,
        interaction: &str,
        rtype: &str,
        deny: bool,
        purpose: &str,
        btg_reason: Option<&str>,
    ) -> (String, Msg) {
        let rid = format!("{}-{}", rtype.to_lowercase(), self.rng.hex(4));
        let returned: Vec<String> = if interaction == "search-type" && !deny {
            (0..1 + self.rng.below(4))
                .map(|_| format!("{rtype}/{}", self.rng.hex(4)))
                .collect()
        } else {
            Vec::new()
        };
        let request_id = format!("req-{}", self.rng.hex(8));
        if self.use_fhir() && btg_reason.is_none() {
            let id = self.id("ae");
            let time = self.tick(1_500);
            let mut entities = vec![json!({"what": {"reference": format!("Patient/{patient}")},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}})];
            if interaction == "read" {
                entities.push(json!({"what": {"reference": format!("{rtype}/{rid}")},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"}}));
            } else {
                entities.push(json!({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
                    "description": format!("GET /r4/{rtype}?patient={patient}")}));
                for r in &returned {
                    entities.push(json!({"what": {"reference": r},
                        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4"}}));
                }
            }
            entities.push(json!({"what": {"identifier": {"value": request_id}},
                "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"}}));
            let v = json!({
                "resourceType": "AuditEvent", "id": id,
                "extension": [
                    {"url": "urn:custos:fhir:ext:tenant", "valueCode": self.cfg.tenant},
                    {"url": "urn:custos:fhir:ext:scope", "valueString": scope},
                    {"url": "urn:custos:fhir:ext:http-status", "valueInteger": if deny { 403 } else { 200 }}
                ],
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
                "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": if interaction == "read" { "read" } else { "search" }}],
                "action": if interaction == "read" { "R" } else { "E" },
                "recorded": time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "outcome": if deny { "4" } else { "0" },
                "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": purpose}]}],
                "agent": [
                    {"type": {"coding": [{"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes", "code": "UserOauthAgent"}]},
                     "who": {"identifier": {"system": self.iss, "value": sub}, "reference": fhir_user},
                     "requestor": true, "policy": [jti]},
                    {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150"}]},
                     "who": {"identifier": {"value": client}}, "requestor": false,
                     "network": {"address": ip, "type": "2"}}
                ],
                "source": {"site": format!("fhir.{}.hospital.example", self.cfg.tenant), "observer": {"reference": "Device/fhir-server-1"}},
                "entity": entities,
            });
            return (id, Msg::json(&v));
        }
        let mut data = json!({
            "requestId": request_id, "iss": self.iss, "sub": sub, "fhirUser": fhir_user, "client_id": client,
            "jti": jti, "scope": scope, "interaction": interaction, "resourceType": rtype,
            "patient": format!("Patient/{patient}"), "purposeOfUse": [purpose],
            "decision": if deny { "deny" } else { "permit" }, "httpStatus": if deny { 403 } else { 200 },
            "sourceIp": ip, "userAgent": "SimBrowser/1.0", "returnedIds": returned,
        });
        if interaction == "read" {
            data["resourceId"] = json!(rid);
        }
        if let Some(r) = btg_reason {
            data["breakGlassReason"] = json!(r);
        }
        self.ce("custos.fhir.access", data)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn token_issued(
        &mut self,
        sub: &str,
        fhir_user: &str,
        client: &str,
        session: &str,
        ip: &str,
        scope: &str,
        jti: &str,
        patient: Option<&str>,
    ) -> (String, Msg) {
        if self.use_keycloak() {
            let details = json!({"token_id": jti, "grant_type": "authorization_code", "scope": scope,
                "refresh_token_id": format!("rt-{jti}"), "username": format!("user-{sub}")});
            return self.keycloak("CODE_TO_TOKEN", client, sub, session, ip, details, None);
        }
        let mut data = json!({"iss": self.iss, "sub": sub, "fhirUser": fhir_user, "client_id": client, "jti": jti,
            "tokenType": "access", "scope": scope, "sid": session, "sourceIp": ip,
            "expiresAt": (self.clock + Duration::minutes(60)).to_rfc3339()});
        if let Some(p) = patient {
            data["patient"] = json!(p);
        }
        self.ce("custos.token.issued", data)
    }

    pub(crate) fn login(
        &mut self,
        sub: &str,
        fhir_user: &str,
        client: &str,
        session: &str,
        ip: &str,
    ) -> (String, Msg) {
        if self.cfg.mix == Mix::Hard && fhir_user.starts_with("Practitioner/") {
            return self.workforce_login(sub, fhir_user, client, session, ip);
        }
        if self.use_keycloak() {
            return self.keycloak(
                "LOGIN",
                client,
                sub,
                session,
                ip,
                json!({"auth_method": "openid-connect"}),
                None,
            );
        }
        self.ce(
            "custos.auth.login",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fhir_user, "client_id": client,
            "sid": session, "sourceIp": ip, "userAgent": "SimBrowser/1.0"}),
        )
    }

    /// The next scenario's messages, in order.
    pub fn next_scenario(&mut self) -> Vec<Out> {
        let mut outs = self.draw_scenario();
        self.scenarios += 1;
        for l in outs.iter_mut().filter_map(|o| o.label.as_mut()) {
            if l.scenario.is_empty() {
                l.scenario = format!("{}", self.scenarios);
            }
        }
        outs
    }

    fn draw_scenario(&mut self) -> Vec<Out> {
        if self.cfg.mix == Mix::Hard {
            if let Some(outs) = self.hard_scenario() {
                return outs;
            }
        }
        let roll = self.rng.below(100);
        let incident = self.rng.chance(self.cfg.incident_rate);
        match roll {
            0..=54 => self.clinician_session(incident),
            55..=79 => self.patient_session(incident),
            80..=87 => self.backend_session(),
            88..=94 => self.consent_revocation(incident),
            _ => self.break_glass(),
        }
    }

    pub(crate) fn out(dest: Dest, m: (String, Msg)) -> Out {
        Out::labelled(dest, m.1, None)
    }

    fn clinician_session(&mut self, incident: bool) -> Vec<Out> {
        let c = self.rng.below(self.cfg.clinicians);
        self.clinician_visit(c, incident, None, None)
    }

    /// A clinician's EHR launch: sign-in, token, a few accesses to one patient, and, for an
    /// incident, a use from a new IP or a denied scope escalation; then sign-out. `ip`
    /// overrides the clinician's internal address; `label` labels every ordinary access.
    pub(crate) fn clinician_visit(
        &mut self,
        c: usize,
        incident: bool,
        ip: Option<String>,
        label: Option<LabelKind>,
    ) -> Vec<Out> {
        let (sub, fu) = self.clinician(c);
        let app = EHR_APPS[self.rng.below(EHR_APPS.len())].to_owned();
        let session = format!("ses-{}", self.rng.hex(6));
        let ip = match ip {
            Some(ip) => ip,
            None => self.ip(false),
        };
        let jti = format!("at-{}", self.rng.hex(8));
        // Every type a clinician session reads (RESOURCE_TYPES[..4]) is granted; the scope
        // escalation incident reads one that is not (AllergyIntolerance).
        let scope = "openid fhirUser launch user/Patient.rs user/Observation.rs user/Condition.rs user/MedicationRequest.rs user/Encounter.rs";
        let patient = {
            let i = self.rng.below(self.cfg.patients);
            self.patient_id(i)
        };
        let mut out = vec![
            Self::out(Dest::As, self.login(&sub, &fu, &app, &session, &ip)),
            Self::out(
                Dest::As,
                self.token_issued(&sub, &fu, &app, &session, &ip, scope, &jti, Some(&patient)),
            ),
        ];
        for _ in 0..1 + self.rng.below(5) {
            let rt = RESOURCE_TYPES[self.rng.below(4)];
            let inter = if self.rng.chance(0.5) {
                "read"
            } else {
                "search-type"
            };
            let (id, m) = self.access(
                &sub, &fu, &app, &jti, scope, &patient, &ip, inter, rt, false, "TREAT", None,
            );
            let incident = label.map(|kind| {
                let info = Label::new(kind, &self.cfg.tenant).event(&id).subject(&sub);
                if kind == LabelKind::SlowVolume {
                    // One incident per clinician, over many visits, tokens, patients and apps.
                    info.scenario("slow-volume")
                } else {
                    info.jti(&jti).patient(&patient).client(&app)
                }
            });
            out.push(Out::labelled(Dest::Gateway, m, incident));
        }
        if incident {
            if self.rng.chance(0.5) {
                let new_ip = format!("192.0.2.{}", 1 + self.rng.below(250));
                let (id, m) = self.access(
                    &sub,
                    &fu,
                    &app,
                    &jti,
                    scope,
                    &patient,
                    &new_ip,
                    "read",
                    "Observation",
                    false,
                    "TREAT",
                    None,
                );
                out.push(Out::labelled(
                    Dest::Gateway,
                    m,
                    Some(
                        Label::new(LabelKind::NewIp, &self.cfg.tenant)
                            .event(&id)
                            .jti(&jti)
                            .patient(&patient)
                            .client(&app)
                            .subject(&sub),
                    ),
                ));
            } else {
                let (id, m) = self.access(
                    &sub,
                    &fu,
                    &app,
                    &jti,
                    scope,
                    &patient,
                    &ip,
                    "read",
                    "AllergyIntolerance",
                    true,
                    "TREAT",
                    None,
                );
                out.push(Out::labelled(
                    Dest::Gateway,
                    m,
                    Some(
                        Label::new(LabelKind::ScopeEscalationDenied, &self.cfg.tenant)
                            .event(&id)
                            .jti(&jti)
                            .patient(&patient)
                            .client(&app)
                            .subject(&sub),
                    ),
                ));
            }
        }
        let logout = if self.use_keycloak() {
            self.keycloak("LOGOUT", &app, &sub, &session, &ip, json!({}), None)
        } else {
            self.ce("custos.auth.logout", json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app, "sid": session}))
        };
        out.push(Self::out(Dest::As, logout));
        out
    }

    fn patient_session(&mut self, incident: bool) -> Vec<Out> {
        let p = self.rng.below(self.cfg.patients);
        let patient = self.patient_id(p);
        let sub = self.patient_sub(p);
        let fu = format!("Patient/{patient}");
        let app = PATIENT_APPS[self.rng.below(PATIENT_APPS.len())].to_owned();
        let session = format!("ses-{}", self.rng.hex(6));
        let ip = self.ip(true);
        let jti = format!("at-{}", self.rng.hex(8));
        let scope = "openid fhirUser launch/patient patient/Observation.rs patient/Condition.rs offline_access";
        let consent = self.ce("custos.consent.granted", json!({"consentId": format!("cons-{patient}-{app}"), "patient": patient,
            "client_id": app, "iss": self.iss, "sub": sub, "scope": scope, "purpose": ["PATRQT"],
            "periodStart": self.clock.to_rfc3339(), "periodEnd": (self.clock + Duration::days(365)).to_rfc3339(), "actor": "patient"}));
        let mut out = vec![
            Self::out(Dest::As, self.login(&sub, &fu, &app, &session, &ip)),
            Self::out(Dest::Consent, consent),
            Self::out(
                Dest::As,
                self.token_issued(&sub, &fu, &app, &session, &ip, scope, &jti, Some(&patient)),
            ),
        ];
        for _ in 0..1 + self.rng.below(3) {
            let rt = RESOURCE_TYPES[self.rng.below(2)];
            let m = self.access(
                &sub,
                &fu,
                &app,
                &jti,
                scope,
                &patient,
                &ip,
                "search-type",
                rt,
                false,
                "PATRQT",
                None,
            );
            out.push(Self::out(Dest::Gateway, m));
        }
        // Refresh, and for an incident, reuse of the rotated refresh token.
        let new_jti = format!("at-{}", self.rng.hex(8));
        let refresh = self.ce(
            "custos.token.refreshed",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app,
            "jti": new_jti, "tokenType": "access", "scope": scope, "sid": session, "sourceIp": ip}),
        );
        out.push(Self::out(Dest::As, refresh));
        if incident {
            let reuse_ip = self.ip(true);
            let (id, m) = if self.use_keycloak() {
                self.keycloak("REFRESH_TOKEN_ERROR", &app, &sub, &session, &reuse_ip,
                    json!({"refresh_token_id": format!("rt-{jti}"), "reason": "Maximum allowed refresh token reuse exceeded"}), Some("invalid_token"))
            } else {
                self.ce("custos.token.refreshed", json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app,
                    "jti": format!("rt-{jti}"), "tokenType": "refresh", "sid": session, "sourceIp": reuse_ip, "error": "invalid_grant"}))
            };
            out.push(Out::labelled(
                Dest::As,
                m,
                Some(
                    Label::new(LabelKind::RefreshReuse, &self.cfg.tenant)
                        .event(&id)
                        .jti(&format!("rt-{jti}"))
                        .patient(&patient)
                        .client(&app)
                        .subject(&sub),
                ),
            ));
        }
        out
    }

    fn backend_session(&mut self) -> Vec<Out> {
        let jti = format!("at-{}", self.rng.hex(8));
        let scope = "system/Observation.rs system/Patient.rs";
        let ip = self.ip(false);
        let issued = self.ce(
            "custos.token.issued",
            json!({"iss": self.iss, "sub": BACKEND, "client_id": BACKEND, "jti": jti,
            "tokenType": "access", "scope": scope, "sourceIp": ip}),
        );
        let mut out = vec![Self::out(Dest::As, issued)];
        for _ in 0..2 {
            let patient = {
                let i = self.rng.below(self.cfg.patients);
                self.patient_id(i)
            };
            let m = self.access(
                BACKEND,
                "Device/analytics",
                BACKEND,
                &jti,
                scope,
                &patient,
                &ip,
                "search-type",
                "Observation",
                false,
                "HOPERAT",
                None,
            );
            out.push(Self::out(Dest::Gateway, m));
        }
        let introspect = self.ce("custos.token.introspected", json!({"iss": self.iss, "sub": BACKEND, "client_id": BACKEND, "jti": jti, "active": true}));
        out.push(Self::out(Dest::As, introspect));
        out
    }

    fn consent_revocation(&mut self, incident: bool) -> Vec<Out> {
        let p = self.rng.below(self.cfg.patients);
        let patient = self.patient_id(p);
        let sub = self.patient_sub(p);
        let app = PATIENT_APPS[self.rng.below(PATIENT_APPS.len())].to_owned();
        let jti = format!("at-{}", self.rng.hex(8));
        let revoked = self.ce("custos.consent.revoked", json!({"consentId": format!("cons-{patient}-{app}"), "patient": patient,
            "client_id": app, "iss": self.iss, "sub": sub, "reason": "patient withdrew access", "actor": "privacy-officer-1"}));
        let token_revoked = self.ce(
            "custos.token.revoked",
            json!({"iss": self.iss, "sub": sub, "fhirUser": format!("Patient/{patient}"),
            "client_id": app, "jti": jti, "tokenType": "access", "reason": "consent revoked"}),
        );
        self.revoked.push((p, app.clone()));
        let mut out = vec![
            Self::out(Dest::Consent, revoked),
            Self::out(Dest::As, token_revoked),
        ];
        if incident {
            // Well past any propagation grace: ten minutes later the app still reads.
            self.clock += Duration::minutes(10);
            let ip = self.ip(true);
            let (id, m) = self.access(
                &sub,
                &format!("Patient/{patient}"),
                &app,
                &jti,
                "patient/Observation.rs",
                &patient,
                &ip,
                "search-type",
                "Observation",
                false,
                "PATRQT",
                None,
            );
            out.push(Out::labelled(
                Dest::Gateway,
                m,
                Some(
                    Label::new(LabelKind::AccessAfterRevocation, &self.cfg.tenant)
                        .event(&id)
                        .jti(&jti)
                        .patient(&patient)
                        .client(&app)
                        .subject(&sub),
                ),
            ));
        }
        out
    }

    fn break_glass(&mut self) -> Vec<Out> {
        let c = self.rng.below(self.cfg.clinicians);
        let (sub, fu) = self.clinician(c);
        let patient = {
            let i = self.rng.below(self.cfg.patients);
            self.patient_id(i)
        };
        let app = EHR_APPS[0].to_owned();
        let jti = format!("at-{}", self.rng.hex(8));
        let ip = self.ip(false);
        let reason = "unresponsive patient in emergency department";
        let (id, opened) = self.ce("custos.breakglass.opened", json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app,
            "patient": patient, "reason": reason, "expiresAt": (self.clock + Duration::hours(4)).to_rfc3339(), "sourceIp": ip}));
        let mut out = vec![Out::labelled(
            Dest::Gateway,
            opened,
            Some(
                Label::new(LabelKind::BreakGlass, &self.cfg.tenant)
                    .event(&id)
                    .jti(&jti)
                    .patient(&patient)
                    .client(&app)
                    .subject(&sub),
            ),
        )];
        for rt in ["Condition", "MedicationRequest"] {
            let m = self.access(
                &sub,
                &fu,
                &app,
                &jti,
                "user/*.rs",
                &patient,
                &ip,
                "search-type",
                rt,
                false,
                "BTG",
                Some(reason),
            );
            out.push(Self::out(Dest::Gateway, m));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_decodable() {
        let run = |seed| {
            let mut s = Simulator::new(
                HospitalConfig {
                    incident_rate: 0.5,
                    ..HospitalConfig::default()
                },
                seed,
            );
            (0..200).flat_map(|_| s.next_scenario()).collect::<Vec<_>>()
        };
        let a = run(1);
        let b = run(1);
        assert_eq!(a.len(), b.len());
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.msg.payload == y.msg.payload));
        assert_ne!(run(2).len(), 0);
        let mut kinds = std::collections::HashSet::new();
        for o in &a {
            let headers: Vec<(&str, &[u8])> = o
                .msg
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            let decoded = custos_schemas::decode(
                &o.msg.payload,
                &headers,
                &custos_schemas::DecodeLimits::default(),
            );
            assert!(
                decoded.is_ok(),
                "{:?}: {}",
                decoded.err(),
                String::from_utf8_lossy(&o.msg.payload)
            );
            if let Some(i) = &o.incident {
                kinds.insert(i.kind);
            }
        }
        assert_eq!(kinds.len(), 5, "every incident kind injected: {kinds:?}");
    }
}
