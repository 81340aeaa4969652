//! The hard mix ([`Mix::Hard`](crate::Mix::Hard)): scenarios drawn before the normal ones,
//! each labelled. True incidents that are harder to catch or need the sign-in and token
//! details of the AS, and benign traps that look like misuse to a naive rule.
//!
//! Rates per scenario: each true-incident kind 0.2 % (none when the incident rate is 0),
//! the snooping clinician's extra visits 1 % once the simulated clock is 4 hours in, and
//! 1 % for each benign trap.

use chrono::Duration;
use serde_json::{json, Value};

use crate::hospital::{Dest, Out, Simulator, BACKEND, EHR_APPS, PATIENT_APPS};
use crate::incident::{Label, LabelKind};
use crate::Msg;

/// The administrators' console: its sign-ins carry `roles: ["admin"]`.
const ADMIN_CLIENT: &str = "hospital-admin-console";
/// Scopes of a clinician's EHR launch.
const EHR_SCOPE: &str =
    "openid fhirUser launch user/Patient.rs user/Observation.rs user/Condition.rs user/MedicationRequest.rs user/Encounter.rs";
/// Scopes of a patient app.
const PATIENT_SCOPE: &str =
    "openid fhirUser launch/patient patient/Observation.rs patient/Condition.rs offline_access";
/// How far into the simulated time the snooping starts (its first hours set a normal baseline).
const SNOOP_AFTER_HOURS: i64 = 4;

impl Simulator {
    /// A hard-mix scenario, or `None` to draw a normal one.
    pub(crate) fn hard_scenario(&mut self) -> Option<Vec<Out>> {
        let roll = self.rng.below(1000);
        let incidents = self.cfg.incident_rate > 0.0;
        Some(match roll {
            0..=9 if self.clock >= self.start + Duration::hours(SNOOP_AFTER_HOURS) => {
                let c = self.snooper();
                self.clinician_visit(c, false, None, Some(LabelKind::SlowVolume))
            }
            10..=19 => self.shared_nat(),
            20..=29 => self.roaming(),
            30..=39 => self.admin_sign_in(true),
            40..=49 => self.backend_bulk_export(),
            50..=65 if incidents => match (roll - 50) / 2 {
                0 => self.credential_stuffing(),
                1 => self.admin_sign_in(false),
                2 => self.use_after_expiry(),
                3 => self.refresh_failure_burst(),
                4 => self.bulk_read(),
                5 => self.break_glass_without_reason(),
                _ => self.break_glass_after_expiry(),
            },
            _ => return None,
        })
    }

    /// The snooping clinician: the last one.
    pub(crate) fn snooper(&self) -> usize {
        self.cfg.clinicians.saturating_sub(1)
    }

    /// A clinician's or administrator's CloudEvents sign-in with `amr` (and `roles`).
    pub(crate) fn workforce_login(
        &mut self,
        sub: &str,
        fhir_user: &str,
        client: &str,
        session: &str,
        ip: &str,
    ) -> (String, Msg) {
        self.ce(
            "custos.auth.login",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fhir_user, "client_id": client,
            "sid": session, "sourceIp": ip, "userAgent": "SimBrowser/1.0", "amr": ["pwd", "otp"]}),
        )
    }

    fn label(&self, kind: LabelKind) -> Label {
        Label::new(kind, &self.cfg.tenant)
    }

    fn random_patient(&mut self) -> (usize, String) {
        let i = self.rng.below(self.cfg.patients);
        (i, self.patient_id(i))
    }

    fn random_clinician(&mut self) -> (String, String) {
        // Never the snooper, so a label's subject is that scenario's alone.
        let c = self.rng.below(self.cfg.clinicians.saturating_sub(1).max(1));
        self.clinician(c)
    }

    /// A CloudEvents access token issuance with an explicit lifetime.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &mut self,
        sub: &str,
        fhir_user: &str,
        client: &str,
        session: &str,
        ip: &str,
        scope: &str,
        jti: &str,
        patient: &str,
        lifetime: Duration,
    ) -> Out {
        let expires = self.clock + lifetime;
        let m = self.ce(
            "custos.token.issued",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fhir_user, "client_id": client,
            "jti": jti, "tokenType": "access", "scope": scope, "sid": session, "sourceIp": ip,
            "patient": patient, "expiresAt": expires.to_rfc3339()}),
        );
        Self::out(Dest::As, m)
    }

    /// A CloudEvents FHIR access.
    fn fhir(&mut self, data: Value) -> (String, Msg) {
        self.ce("custos.fhir.access", data)
    }

    #[allow(clippy::too_many_arguments)]
    fn access_data(
        &mut self,
        sub: &str,
        fhir_user: &str,
        client: &str,
        jti: &str,
        scope: &str,
        patient: &str,
        ip: &str,
        purpose: &str,
    ) -> Value {
        json!({"requestId": format!("req-{}", self.rng.hex(8)), "iss": self.iss, "sub": sub,
            "fhirUser": fhir_user, "client_id": client, "jti": jti, "scope": scope,
            "interaction": "search-type", "resourceType": "Observation",
            "patient": format!("Patient/{patient}"), "purposeOfUse": [purpose],
            "decision": "permit", "httpStatus": 200, "sourceIp": ip, "userAgent": "SimBrowser/1.0",
            "returnedIds": [format!("Observation/{}", self.rng.hex(4))]})
    }

    /// Benign: two clinicians' sessions from one external address, one after the other.
    fn shared_nat(&mut self) -> Vec<Out> {
        let nat = format!("198.51.100.{}", 1 + self.rng.below(250));
        let a = self.rng.below(self.cfg.clinicians.saturating_sub(1).max(1));
        let b = (a + 1 + self.rng.below(self.cfg.clinicians.saturating_sub(2).max(1)))
            % self.cfg.clinicians.saturating_sub(1).max(1);
        let mut out = self.clinician_visit(a, false, Some(nat.clone()), Some(LabelKind::SharedNat));
        out.extend(self.clinician_visit(b, false, Some(nat), Some(LabelKind::SharedNat)));
        out
    }

    /// Benign: a patient app's token used from home, then from the phone network, and staying
    /// there.
    fn roaming(&mut self) -> Vec<Out> {
        let (p, patient) = self.random_patient();
        let sub = self.patient_sub(p);
        let fu = format!("Patient/{patient}");
        let app = PATIENT_APPS[self.rng.below(PATIENT_APPS.len())];
        let session = format!("ses-{}", self.rng.hex(6));
        let home = format!("203.0.113.{}", 1 + self.rng.below(250));
        let mobile = format!(
            "100.{}.{}.{}",
            64 + self.rng.below(64),
            self.rng.below(256),
            1 + self.rng.below(250)
        );
        let jti = format!("at-{}", self.rng.hex(8));
        let login = self.ce(
            "custos.auth.login",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app, "sid": session,
            "sourceIp": home, "userAgent": "SimPhone/2.0", "amr": ["pwd"]}),
        );
        // The app is (again) allowed: an earlier revocation of the same pair is over.
        let consent = self.ce(
            "custos.consent.granted",
            json!({"consentId": format!("cons-{patient}-{app}"), "patient": patient,
            "client_id": app, "iss": self.iss, "sub": sub, "scope": PATIENT_SCOPE,
            "purpose": ["PATRQT"], "periodStart": self.clock.to_rfc3339(),
            "periodEnd": (self.clock + Duration::days(365)).to_rfc3339(), "actor": "patient"}),
        );
        let mut out = vec![
            Self::out(Dest::As, login),
            Self::out(Dest::Consent, consent),
            self.issue(
                &sub,
                &fu,
                app,
                &session,
                &home,
                PATIENT_SCOPE,
                &jti,
                &patient,
                Duration::minutes(60),
            ),
        ];
        for (n, ip) in [&home, &home, &mobile, &mobile, &mobile]
            .into_iter()
            .enumerate()
        {
            let mut data =
                self.access_data(&sub, &fu, app, &jti, PATIENT_SCOPE, &patient, ip, "PATRQT");
            data["userAgent"] = json!("SimPhone/2.0");
            let (id, m) = self.fhir(data);
            let incident = (n >= 2).then(|| {
                self.label(LabelKind::Roaming)
                    .event(&id)
                    .jti(&jti)
                    .patient(&patient)
                    .client(app)
                    .subject(&sub)
            });
            out.push(Out::labelled(Dest::Gateway, m, incident));
        }
        out
    }

    /// An administrator's sign-in to the admin console: with a second factor (benign), or
    /// with a password only (the incident).
    fn admin_sign_in(&mut self, with_mfa: bool) -> Vec<Out> {
        let k = self.rng.below(3);
        let sub = format!("it-admin-{k}");
        let fu = format!("Practitioner/it-admin-{k}");
        let session = format!("ses-{}", self.rng.hex(6));
        let ip = self.ip(false);
        let amr: &[&str] = if with_mfa { &["pwd", "otp"] } else { &["pwd"] };
        let (id, login) = self.ce(
            "custos.auth.login",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": ADMIN_CLIENT,
            "sid": session, "sourceIp": ip, "userAgent": "SimBrowser/1.0", "amr": amr,
            "roles": ["admin"]}),
        );
        let kind = if with_mfa {
            LabelKind::AdminWithMfa
        } else {
            LabelKind::PrivilegedWithoutMfa
        };
        let logout = self.ce(
            "custos.auth.logout",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": ADMIN_CLIENT, "sid": session}),
        );
        let label = self
            .label(kind)
            .event(&id)
            .client(ADMIN_CLIENT)
            .subject(&sub);
        vec![
            Out::labelled(
                Dest::As,
                login,
                Some(if with_mfa {
                    // One trap per sign-in.
                    label.session(&session)
                } else {
                    // A detector may merge one user's sign-ins of a day into one alert.
                    label
                }),
            ),
            Self::out(Dest::As, logout),
        ]
    }

    /// Benign: the analytics backend's nightly export, a search returning 2,000 resources to
    /// a system client (not user-facing).
    fn backend_bulk_export(&mut self) -> Vec<Out> {
        let jti = format!("at-{}", self.rng.hex(8));
        let scope = "system/Observation.rs system/Patient.rs";
        let ip = self.ip(false);
        let issued = self.ce(
            "custos.token.issued",
            json!({"iss": self.iss, "sub": BACKEND, "client_id": BACKEND, "jti": jti,
            "tokenType": "access", "scope": scope, "sourceIp": ip,
            "expiresAt": (self.clock + Duration::minutes(60)).to_rfc3339()}),
        );
        let returned: Vec<String> = (0..2000)
            .map(|_| format!("Observation/{}", self.rng.hex(6)))
            .collect();
        let request_id = format!("req-{}", self.rng.hex(8));
        let (id, m) = self.fhir(json!({"requestId": request_id,
            "iss": self.iss, "sub": BACKEND, "fhirUser": "Device/analytics", "client_id": BACKEND,
            "jti": jti, "scope": scope, "interaction": "search-type", "resourceType": "Observation",
            "purposeOfUse": ["HOPERAT"], "decision": "permit", "httpStatus": 200, "sourceIp": ip,
            "returnedIds": returned}));
        vec![
            Self::out(Dest::As, issued),
            Out::labelled(
                Dest::Gateway,
                m,
                Some(
                    self.label(LabelKind::BackendBulkExport)
                        .event(&id)
                        .jti(&jti)
                        .client(BACKEND)
                        .subject(BACKEND),
                ),
            ),
        ]
    }

    /// Twelve failed sign-ins of one clinician from one outside address, then a success.
    fn credential_stuffing(&mut self) -> Vec<Out> {
        let (sub, fu) = self.random_clinician();
        let app = EHR_APPS[self.rng.below(EHR_APPS.len())];
        let ip = format!("198.18.{}.{}", self.rng.below(256), 1 + self.rng.below(250));
        let mut out = Vec::new();
        for _ in 0..12 {
            let m = self.ce(
                "custos.auth.login_failed",
                json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app,
                "sourceIp": ip, "userAgent": "python-requests/2.31", "error": "invalid_user_credentials"}),
            );
            out.push(Self::out(Dest::As, m));
        }
        let session = format!("ses-{}", self.rng.hex(6));
        let (id, m) = self.ce(
            "custos.auth.login",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app, "sid": session,
            "sourceIp": ip, "userAgent": "python-requests/2.31", "amr": ["pwd"]}),
        );
        out.push(Out::labelled(
            Dest::As,
            m,
            Some(
                self.label(LabelKind::CredentialStuffing)
                    .event(&id)
                    .client(app)
                    .subject(&sub),
            ),
        ));
        out
    }

    /// A clinician's token with a 5-minute lifetime, used again 20 minutes later and accepted.
    fn use_after_expiry(&mut self) -> Vec<Out> {
        let (sub, fu) = self.random_clinician();
        let app = EHR_APPS[self.rng.below(EHR_APPS.len())];
        let session = format!("ses-{}", self.rng.hex(6));
        let ip = self.ip(false);
        let jti = format!("at-{}", self.rng.hex(8));
        let (_, patient) = self.random_patient();
        let login = self.workforce_login(&sub, &fu, app, &session, &ip);
        let mut out = vec![
            Self::out(Dest::As, login),
            self.issue(
                &sub,
                &fu,
                app,
                &session,
                &ip,
                EHR_SCOPE,
                &jti,
                &patient,
                Duration::minutes(5),
            ),
        ];
        let data = self.access_data(&sub, &fu, app, &jti, EHR_SCOPE, &patient, &ip, "TREAT");
        out.push(Self::out(Dest::Gateway, self.fhir(data)));
        self.clock += Duration::minutes(20);
        let data = self.access_data(&sub, &fu, app, &jti, EHR_SCOPE, &patient, &ip, "TREAT");
        let (id, m) = self.fhir(data);
        out.push(Out::labelled(
            Dest::Gateway,
            m,
            Some(
                self.label(LabelKind::UseAfterExpiry)
                    .event(&id)
                    .jti(&jti)
                    .patient(&patient)
                    .client(app)
                    .subject(&sub),
            ),
        ));
        out
    }

    /// A patient app failing eight refreshes for one user within a few seconds each (stale
    /// refresh tokens it keeps retrying).
    fn refresh_failure_burst(&mut self) -> Vec<Out> {
        let (p, patient) = self.random_patient();
        let sub = self.patient_sub(p);
        let fu = format!("Patient/{patient}");
        let app = PATIENT_APPS[self.rng.below(PATIENT_APPS.len())];
        let session = format!("ses-{}", self.rng.hex(6));
        let ip = format!("203.0.113.{}", 1 + self.rng.below(250));
        let mut out = Vec::new();
        for _ in 0..8 {
            let rt = format!("rt-{}", self.rng.hex(8));
            let (id, m) = self.ce(
                "custos.token.refreshed",
                json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app, "jti": rt,
                "tokenType": "refresh", "sid": session, "sourceIp": ip, "error": "invalid_grant",
                "reason": "refresh token expired"}),
            );
            let info = self
                .label(LabelKind::RefreshFailureBurst)
                .event(&id)
                .patient(&patient)
                .client(app)
                .subject(&sub);
            out.push(Out::labelled(Dest::As, m, Some(info)));
        }
        out
    }

    /// A clinician's EHR app searching one resource type across the hospital: 1,500 results.
    fn bulk_read(&mut self) -> Vec<Out> {
        let (sub, fu) = self.random_clinician();
        let app = EHR_APPS[self.rng.below(EHR_APPS.len())];
        let session = format!("ses-{}", self.rng.hex(6));
        let ip = self.ip(false);
        let jti = format!("at-{}", self.rng.hex(8));
        let (_, patient) = self.random_patient();
        let login = self.workforce_login(&sub, &fu, app, &session, &ip);
        let mut out = vec![
            Self::out(Dest::As, login),
            self.issue(
                &sub,
                &fu,
                app,
                &session,
                &ip,
                EHR_SCOPE,
                &jti,
                &patient,
                Duration::minutes(60),
            ),
        ];
        let mut data = self.access_data(&sub, &fu, app, &jti, EHR_SCOPE, &patient, &ip, "TREAT");
        data["returnedIds"] = json!((0..1500)
            .map(|_| format!("Observation/{}", self.rng.hex(6)))
            .collect::<Vec<_>>());
        data.as_object_mut().map(|d| d.remove("patient"));
        let (id, m) = self.fhir(data);
        out.push(Out::labelled(
            Dest::Gateway,
            m,
            Some(
                self.label(LabelKind::BulkRead)
                    .event(&id)
                    .jti(&jti)
                    .client(app)
                    .subject(&sub),
            ),
        ));
        out
    }

    /// Break-glass accesses with no opening and only a placeholder for a reason.
    fn break_glass_without_reason(&mut self) -> Vec<Out> {
        let (sub, fu) = self.random_clinician();
        let app = EHR_APPS[0];
        let ip = self.ip(false);
        let jti = format!("at-{}", self.rng.hex(8));
        let (_, patient) = self.random_patient();
        let mut out = Vec::new();
        for n in 0..2 {
            let mut data =
                self.access_data(&sub, &fu, app, &jti, "user/*.rs", &patient, &ip, "BTG");
            data["breakGlassReason"] = json!("n/a");
            let (id, m) = self.fhir(data);
            let incident = (n == 0).then(|| {
                self.label(LabelKind::BreakGlassWithoutReason)
                    .event(&id)
                    .jti(&jti)
                    .patient(&patient)
                    .client(app)
                    .subject(&sub)
            });
            out.push(Out::labelled(Dest::Gateway, m, incident));
        }
        out
    }

    /// A break-glass opening limited to 15 minutes, two accesses within it and one 30
    /// minutes later.
    fn break_glass_after_expiry(&mut self) -> Vec<Out> {
        let (sub, fu) = self.random_clinician();
        let app = EHR_APPS[0];
        let ip = self.ip(false);
        let jti = format!("at-{}", self.rng.hex(8));
        let (_, patient) = self.random_patient();
        let reason = "patient deteriorating, chart needed before consent can be obtained";
        let opened = self.ce(
            "custos.breakglass.opened",
            json!({"iss": self.iss, "sub": sub, "fhirUser": fu, "client_id": app,
            "patient": patient, "reason": reason,
            "expiresAt": (self.clock + Duration::minutes(15)).to_rfc3339(), "sourceIp": ip}),
        );
        let mut out = vec![Self::out(Dest::Gateway, opened)];
        for n in 0..3 {
            if n == 2 {
                self.clock += Duration::minutes(30);
            }
            let mut data =
                self.access_data(&sub, &fu, app, &jti, "user/*.rs", &patient, &ip, "BTG");
            data["breakGlassReason"] = json!(reason);
            let (id, m) = self.fhir(data);
            let incident = (n == 2).then(|| {
                self.label(LabelKind::BreakGlassAfterExpiry)
                    .event(&id)
                    .jti(&jti)
                    .patient(&patient)
                    .client(app)
                    .subject(&sub)
            });
            out.push(Out::labelled(Dest::Gateway, m, incident));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use custos_schemas::event::{EventType, Payload};

    use crate::{HospitalConfig, LabelKind, Mix, Out, Simulator};

    fn hard(seed: u64, scenarios: usize) -> Vec<Out> {
        let mut sim = Simulator::new(
            HospitalConfig {
                mix: Mix::Hard,
                ..HospitalConfig::default()
            },
            seed,
        );
        (0..scenarios).flat_map(|_| sim.next_scenario()).collect()
    }

    #[test]
    fn every_kind_is_labelled_and_every_message_decodes() {
        let outs = hard(7, 12_000);
        let mut labels: BTreeMap<LabelKind, usize> = BTreeMap::new();
        for o in &outs {
            let headers: Vec<(&str, &[u8])> = o
                .msg
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            let event = custos_schemas::decode(
                &o.msg.payload,
                &headers,
                &custos_schemas::DecodeLimits::default(),
            );
            let event = match event {
                Ok(e) => e,
                Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&o.msg.payload)),
            };
            assert_eq!(
                o.incident,
                o.label.as_ref().and_then(|l| l.incident_info()),
                "the classic view agrees with the label"
            );
            if let Some(info) = &o.label {
                *labels.entry(info.kind).or_default() += 1;
                assert_eq!(info.tenant, "general");
                assert_eq!(event.id, info.event_id, "the label names its own message");
                assert_eq!(info.benign, info.kind.benign());
                assert_eq!(info.detectors, info.kind.detectors());
                assert!(!info.sub.is_empty(), "{info:?}");
            }
        }
        let missing: Vec<_> = LabelKind::ALL
            .into_iter()
            .filter(|k| !labels.contains_key(k))
            .collect();
        assert!(missing.is_empty(), "kinds never labelled: {missing:?}");
        // The slow-and-low snooping is one incident over many visits.
        let snoop: BTreeSet<_> = outs
            .iter()
            .filter_map(|o| o.label.as_ref())
            .filter(|i| i.kind == LabelKind::SlowVolume)
            .map(|i| i.identity())
            .collect();
        assert_eq!(snoop.len(), 1);
        assert!(labels[&LabelKind::SlowVolume] > 50, "{labels:?}");
    }

    #[test]
    fn only_the_injected_privileged_sign_in_lacks_a_second_factor() {
        // Judged on the decoded sign-in, as the detectors see it (any format).
        let outs = hard(11, 12_000);
        let (mut without, mut with) = (0, 0);
        for o in &outs {
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
            let Ok(custos_schemas::Event {
                event_type: EventType::AuthLogin,
                payload: Payload::Auth(d),
                ..
            }) = decoded
            else {
                continue;
            };
            let kind = o.label.as_ref().map(|i| i.kind);
            let mfa = d.amr.iter().any(|a| a == "otp");
            if d.roles.iter().any(|r| r == "admin") {
                if mfa {
                    with += 1;
                    assert_eq!(kind, Some(LabelKind::AdminWithMfa));
                } else {
                    without += 1;
                    assert_eq!(d.amr, ["pwd"]);
                    assert_eq!(kind, Some(LabelKind::PrivilegedWithoutMfa));
                }
            } else if !d.amr.is_empty()
                && !mfa
                && d.fhir_user
                    .as_deref()
                    .is_some_and(|f| f.starts_with("Practitioner/"))
            {
                // Clinicians sign in with a second factor too, except the stuffed account.
                assert_eq!(kind, Some(LabelKind::CredentialStuffing), "{d:?}");
            }
        }
        assert!(
            without > 0 && with > without,
            "{without} without, {with} with"
        );
    }

    #[test]
    fn the_hard_mix_is_deterministic_and_differs_from_the_normal_one() {
        let a = hard(3, 2_000);
        let b = hard(3, 2_000);
        assert_eq!(a.len(), b.len());
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.msg.payload == y.msg.payload && x.label == y.label));
        let mut normal = Simulator::new(HospitalConfig::default(), 3);
        let n: Vec<Out> = (0..2_000).flat_map(|_| normal.next_scenario()).collect();
        assert_ne!(n.len(), a.len());
    }
}
