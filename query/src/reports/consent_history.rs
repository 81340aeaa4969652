//! Consent history of a patient from the audit trail (`custos.consent.*` events). The
//! consent service keeps the authoritative state; this is what the audit recorded.

use axum::http::Uri;
use axum::response::Redirect;
use axum::routing::get;
use axum::Router;
use custos_schemas::PseudonymKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{events, ser_ms, ser_opt_ms, EventFilter, EventRow, Keyed, Tabular};
use crate::catalogue::{handler, shared, Catalogued, Plan, SingleQuery};
use crate::error::{ApiError, Problem};
use crate::export::Page;
use crate::params::{self, ms_to_rfc3339, AuditParams, Common, Cursor};
use crate::sql::Sql;
use crate::state::AppState;
use custos_auth::oidc::{Caller, Role};

/// Base condition.
pub const BASE: &str = " AND event_type IN ('custos.consent.granted', 'custos.consent.revoked', 'custos.consent.expired')";

/// Parameters of `/v1/reports/consent-history`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsentParams {
    /// Raw patient id.
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

shared!(ConsentParams);

handler! {
    /// A patient's consent history as recorded in the audit trail.
    consent_history => ConsentHistory {
        params: ConsentParams,
        tag: "consents",
        body: Page<ConsentChange>
    }
}

/// Consent history from the audit trail.
pub struct ConsentHistory;

impl Catalogued for ConsentHistory {
    type Params = ConsentParams;
    type Filter = EventFilter;
    const NAME: &'static str = "consents";
    const ROLES: &'static [Role] = custos_auth::policy::PRIVACY_REPORTS;
    const PATH: &'static str = "/v1/reports/consent-history";

    fn plan(
        s: &AppState,
        _: &Caller,
        c: &Common,
        p: &ConsentParams,
    ) -> Result<Plan<EventFilter>, ApiError> {
        let patient = params::required_ident("patient", p.patient.as_deref())?;
        let client = params::ident("client", p.client.as_deref())?;
        let filter = EventFilter {
            patients: Some(
                s.keys
                    .lookup_all(&c.tenant, PseudonymKind::Patient, &patient),
            ),
            client: client.clone(),
            ..EventFilter::default()
        };
        let audit = AuditParams::new(&s.keys, c)
            .hashed("patient", PseudonymKind::Patient, &Some(patient))
            .plain("client", &client)
            .done();
        Ok(Plan { filter, audit })
    }
}

impl SingleQuery for ConsentHistory {
    type Row = EventRow;
    type Out = ConsentChange;

    fn sql(_: &AppState, c: &Common, filter: &EventFilter, limit: u64) -> Sql {
        events(c, BASE, filter, limit)
    }
}

/// Former path of the consent-history report; it answers 308 to [`ConsentHistory::PATH`]
/// (the consent service's `GET /v1/consents` is the current consent state, not this
/// history).
pub const FORMER_PATH: &str = "/v1/consents";

/// Former paths answering 308 Permanent Redirect to their report, query string kept, before
/// any authentication (the redirect reveals nothing; the client repeats the request with its
/// bearer token at the new path).
pub fn moved<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(FORMER_PATH, get(consent_history_moved))
}

async fn consent_history_moved(uri: Uri) -> Redirect {
    let path = ConsentHistory::PATH;
    match uri.query() {
        Some(q) => Redirect::permanent(&format!("{path}?{q}")),
        None => Redirect::permanent(path),
    }
}

/// One consent change.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ConsentChange {
    /// Event identity.
    pub event_key: String,
    /// When (RFC 3339).
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String)]
    pub event_time: i64,
    /// `granted`, `revoked` or `expired`.
    pub change: String,
    /// Consent id.
    pub consent_id: String,
    /// Patient pseudonym.
    pub patient: String,
    /// The app the consent covers.
    pub client_id: String,
    /// Scopes covered.
    pub scopes: Vec<String>,
    /// Purposes of use.
    pub purpose: Vec<String>,
    /// Period start (RFC 3339).
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>)]
    pub period_start: Option<i64>,
    /// Period end (RFC 3339).
    #[serde(serialize_with = "ser_opt_ms")]
    #[schema(value_type = Option<String>)]
    pub period_end: Option<i64>,
    /// Why it changed.
    pub reason: String,
    /// Who changed it.
    pub actor: String,
}

impl From<EventRow> for ConsentChange {
    fn from(r: EventRow) -> ConsentChange {
        ConsentChange {
            change: r
                .event_type
                .strip_prefix("custos.consent.")
                .unwrap_or(&r.event_type)
                .to_owned(),
            event_key: r.event_key,
            event_time: r.event_time,
            consent_id: r.consent_id,
            patient: r.patient,
            client_id: r.client_id,
            scopes: r.scopes,
            purpose: r.purpose_of_use,
            period_start: r.period_start,
            period_end: r.expires_at,
            reason: r.reason,
            actor: r.actor,
        }
    }
}

impl Keyed for ConsentChange {
    fn cursor(&self) -> Cursor {
        Cursor {
            time_ms: self.event_time,
            key: self.event_key.clone(),
        }
    }
}

impl Tabular for ConsentChange {
    fn header() -> &'static [&'static str] {
        &[
            "event_key",
            "event_time",
            "change",
            "consent_id",
            "patient",
            "client_id",
            "scopes",
            "purpose",
            "period_start",
            "period_end",
            "reason",
            "actor",
        ]
    }

    fn record(&self) -> Vec<String> {
        vec![
            self.event_key.clone(),
            ms_to_rfc3339(self.event_time),
            self.change.clone(),
            self.consent_id.clone(),
            self.patient.clone(),
            self.client_id.clone(),
            self.scopes.join(" "),
            self.purpose.join(" "),
            super::opt_ms_text(self.period_start),
            super::opt_ms_text(self.period_end),
            self.reason.clone(),
            self.actor.clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn location(uri: &str) -> (StatusCode, Option<String>) {
        let resp = moved::<()>()
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().expect("ascii").to_owned());
        (resp.status(), loc)
    }

    #[tokio::test]
    async fn former_consent_path_redirects_permanently_with_its_query() {
        let (status, loc) =
            location("/v1/consents?tenant=t1&patient=Patient%2Fp%201&format=csv").await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            loc.as_deref(),
            Some("/v1/reports/consent-history?tenant=t1&patient=Patient%2Fp%201&format=csv")
        );
        let (status, loc) = location("/v1/consents").await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(loc.as_deref(), Some("/v1/reports/consent-history"));
    }
}
