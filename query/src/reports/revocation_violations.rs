//! Revocation violations: FHIR accesses the gateway *permitted* for a (tenant, patient,
//! client) after the latest consent event for that triple was a `custos.consent.revoked`,
//! later than the configured grace period (`CUSTOS_REVOCATION_GRACE_SECS`). A consent
//! granted again afterwards ends the violation window (ASOF join on the latest consent
//! change at or before each access).
//!
//! Pseudonyms differ per key, so across a key rotation the revocation and the access can
//! only be linked when the raw patient id is given (`patient=`): then every live key's
//! pseudonym is matched and the join is on the client alone.

use clickhouse::Row;
use custos_schemas::PseudonymKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ms, ser_ms, Keyed, Tabular};
use crate::catalogue::{handler, shared, Catalogued, Plan, SingleQuery};
use crate::error::{ApiError, Problem};
use crate::export::Page;
use crate::params::{self, ms_to_rfc3339, AuditParams, Common, Cursor};
use crate::sql::Sql;
use crate::state::AppState;
use custos_auth::oidc::{Caller, Role};

/// Parameters of `/v1/reports/revocation-violations`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ViolationParams {
    /// Raw patient id (needed to link across a key rotation).
    pub patient: Option<String>,
    /// Client.
    pub client: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Window start.
    pub from: Option<String>,
    /// Window end.
    pub to: Option<String>,
    /// Page size or row cap.
    pub limit: Option<String>,
    /// Cursor.
    pub cursor: Option<String>,
    /// `json`, `csv` or `ndjson`.
    pub format: Option<String>,
}

shared!(ViolationParams);

handler! {
    /// Accesses permitted after a consent revocation (past the grace period).
    revocation_violations => RevocationViolations {
        params: ViolationParams,
        tag: "reports",
        body: Page<Violation>
    }
}

/// Accesses after consent revocation.
pub struct RevocationViolations;

impl Catalogued for RevocationViolations {
    type Params = ViolationParams;
    type Filter = ViolationFilter;
    const NAME: &'static str = "revocation-violations";
    const ROLES: &'static [Role] = custos_auth::policy::PRIVACY_REPORTS;
    const PATH: &'static str = "/v1/reports/revocation-violations";

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &ViolationParams,
    ) -> Result<Plan<ViolationFilter>, ApiError> {
        let patient = params::ident("patient", p.patient.as_deref())?;
        let client = params::ident("client", p.client.as_deref())?;
        let filter = ViolationFilter {
            patients: patient
                .as_deref()
                .map(|pt| s.keys.lookup_all(&c.tenant, PseudonymKind::Patient, pt)),
            client: client.clone(),
        };
        let grace = s.settings.revocation_grace_secs;
        let audit = AuditParams::new(&s.keys, c)
            .hashed("patient", PseudonymKind::Patient, &patient)
            .plain("client", &client)
            .plain("grace_secs", &Some(grace.to_string()))
            .done();
        Ok(Plan { filter, audit })
    }
}

impl SingleQuery for RevocationViolations {
    type Row = Violation;
    type Out = Violation;

    fn sql(s: &AppState, c: &Common, filter: &ViolationFilter, limit: u64) -> Sql {
        build(c, filter, s.settings.revocation_grace_secs, limit)
    }
}

/// Validated parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViolationFilter {
    /// Pseudonyms of the patient under every live key.
    pub patients: Option<Vec<String>>,
    /// Client.
    pub client: Option<String>,
}

/// The violation query.
pub fn build(c: &Common, f: &ViolationFilter, grace_secs: u64, limit: u64) -> Sql {
    let mut sql = Sql::new(
        "SELECT a.event_key AS event_key, a.event_time AS event_time, a.user_sub AS user_sub, \
a.fhir_user AS fhir_user, a.client_id AS client_id, a.token_jti AS token_jti, a.interaction AS interaction, \
a.resource_type AS resource_type, a.resource_id AS resource_id, a.patient AS patient, \
a.source_ip AS source_ip, a.request_id AS request_id, c.v_consent_id AS consent_id, \
c.v_time AS revoked_at \
FROM (SELECT event_key, event_time, user_sub, fhir_user, client_id, token_jti, interaction, \
resource_type, resource_id, patient, source_ip, request_id, ",
    );
    // Join key: the patient pseudonym, or a constant when one patient's pseudonyms are given.
    let key: &'static str = if f.patients.is_some() {
        "'' AS v_pk"
    } else {
        "patient AS v_pk"
    };
    sql.push(key);
    sql.push(" FROM custos.audit_events FINAL WHERE ");
    super::scope(&mut sql, c);
    sql.push(" AND event_type = 'custos.fhir.access' AND decision = 'permit'");
    apply(&mut sql, f);
    sql.push(") AS a ASOF INNER JOIN (SELECT ");
    sql.push(key);
    sql.push(
        ", client_id AS v_client, event_time AS v_time, event_type AS v_type, consent_id AS v_consent_id \
FROM custos.audit_events FINAL WHERE ",
    );
    sql.bind1("tenant = ?", &c.tenant)
        .bind1(concat!(" AND event_time < ", ms!()), c.window.to_ms)
        .push(" AND event_type IN ('custos.consent.granted', 'custos.consent.revoked')");
    apply(&mut sql, f);
    sql.push(
        ") AS c ON a.v_pk = c.v_pk AND a.client_id = c.v_client AND a.event_time >= c.v_time \
WHERE c.v_type = 'custos.consent.revoked'",
    );
    sql.bind1(
        " AND a.event_time > c.v_time + toIntervalSecond(?)",
        grace_secs,
    );
    sql.bind1(" ORDER BY event_time, event_key LIMIT ?", limit);
    sql
}

fn apply(sql: &mut Sql, f: &ViolationFilter) {
    if let Some(p) = &f.patients {
        sql.bind1(" AND patient IN ?", p.clone());
    }
    if let Some(c) = &f.client {
        sql.bind1(" AND client_id = ?", c);
    }
}

/// A permitted access after a revocation.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize, ToSchema)]
pub struct Violation {
    /// Event identity of the access.
    pub event_key: String,
    /// When the access happened (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String)]
    pub event_time: i64,
    /// User.
    pub user_sub: String,
    /// fhirUser.
    pub fhir_user: String,
    /// Client whose consent was revoked.
    pub client_id: String,
    /// Token used.
    pub token_jti: String,
    /// Interaction.
    pub interaction: String,
    /// Resource type.
    pub resource_type: String,
    /// Resource id (pseudonym).
    pub resource_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// Source IP.
    pub source_ip: String,
    /// Gateway request id.
    pub request_id: String,
    /// The revoked consent.
    pub consent_id: String,
    /// When it was revoked (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String)]
    pub revoked_at: i64,
}

impl Keyed for Violation {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.event_time,
            key: self.event_key.clone(),
        }
    }
}

impl Tabular for Violation {
    fn header() -> &'static [&'static str] {
        &[
            "event_key",
            "event_time",
            "user_sub",
            "fhir_user",
            "client_id",
            "token_jti",
            "interaction",
            "resource_type",
            "resource_id",
            "patient",
            "source_ip",
            "request_id",
            "consent_id",
            "revoked_at",
        ]
    }

    fn record(&self) -> Vec<String> {
        vec![
            self.event_key.clone(),
            ms_to_rfc3339(self.event_time),
            self.user_sub.clone(),
            self.fhir_user.clone(),
            self.client_id.clone(),
            self.token_jti.clone(),
            self.interaction.clone(),
            self.resource_type.clone(),
            self.resource_id.clone(),
            self.patient.clone(),
            self.source_ip.clone(),
            self.request_id.clone(),
            self.consent_id.clone(),
            ms_to_rfc3339(self.revoked_at),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::tests::common;
    use crate::sql::Arg;

    #[test]
    fn asof_join_with_grace() {
        let f = ViolationFilter {
            patients: Some(vec!["ps1.k1.a".into(), "ps1.k2.b".into()]),
            client: Some("app' OR 1=1".into()),
        };
        let sql = build(&common(), &f, 60, 11);
        assert!(sql.text().contains("ASOF INNER JOIN"));
        assert!(sql.text().contains("'' AS v_pk"));
        assert_eq!(sql.text().matches('?').count(), sql.args().len());
        assert!(sql.args().contains(&Arg::UInt(60)));
        assert!(!sql.text().contains("OR 1=1"));
        let open = build(&common(), &ViolationFilter::default(), 0, 11);
        assert!(open.text().contains("patient AS v_pk"));
    }
}
