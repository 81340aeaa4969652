//! The people's actions on an alert: `POST /v1/alerts/{id}/acknowledge`, `/assign`, `/close`
//! and `/reopen`, incident responders only.
//!
//! Order of every action: role (403, recorded as `forbidden`), body (400), the alert and the
//! caller's tenant (404), the query-audit record made durable (no record, no action), the
//! state rule (409), the action written through the ledger (`custos.alert_actions`), then
//! the final query-audit record and the answer: the action and the alert's new state.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_auth::audit::{new_query_id, Asked};
use custos_auth::oidc::Caller;
use custos_schemas::decode::find_raw_token;
use custos_schemas::records::{AlertActionRow, Answered};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{current, tenant_of, AlertItem, StateRow};
use crate::access::{authorize, Access};
use crate::error::{ApiError, Problem, ValidJson};
use crate::params;
use crate::state::AppState;

/// Longest note, in bytes.
pub const MAX_NOTE_BYTES: usize = 2000;

/// The resolutions a close records.
pub const RESOLUTIONS: &[&str] = &["true_positive", "false_positive", "benign", "duplicate"];

/// A person's action on an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Seen, being handled.
    Acknowledge,
    /// Given to someone (also acknowledges).
    Assign,
    /// Handled, with a resolution.
    Close,
    /// Closed by mistake or too early.
    Reopen,
}

impl Action {
    /// Its name in `custos.alert_actions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Acknowledge => "acknowledge",
            Action::Assign => "assign",
            Action::Close => "close",
            Action::Reopen => "reopen",
        }
    }

    /// Who may take it and its name in the query audit.
    pub fn access(self) -> Access {
        let name = match self {
            Action::Acknowledge => "alert-acknowledge",
            Action::Assign => "alert-assign",
            Action::Close => "alert-close",
            Action::Reopen => "alert-reopen",
        };
        Access {
            name,
            roles: custos_auth::policy::ALERTS_ACT,
        }
    }

    /// Refuses (409) the action in the alert's current state.
    pub fn check(self, state: &StateRow) -> Result<(), ApiError> {
        let conflict = |m: &str| Err(ApiError::Conflict(m.to_owned()));
        match (self, state.status.as_str()) {
            (Action::Acknowledge | Action::Assign, "closed") => {
                conflict("the alert is closed; reopen it first")
            }
            (Action::Acknowledge, "acknowledged") => conflict("the alert is already acknowledged"),
            (Action::Close, "closed") => conflict("the alert is already closed"),
            (Action::Reopen, s) if s != "closed" => conflict("the alert is not closed"),
            _ => Ok(()),
        }
    }
}

/// Body of an action: a note (required to close), the assignee (to assign) and the
/// resolution (to close).
#[derive(Debug, Default, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Free text for the record (at most 2000 bytes, never a credential).
    #[serde(default)]
    pub note: Option<String>,
    /// Who handles it (`assign` only).
    #[serde(default)]
    pub assignee: Option<String>,
    /// `true_positive`, `false_positive`, `benign` or `duplicate` (`close` only).
    #[serde(default)]
    pub resolution: Option<String>,
}

/// Checks a note: bounded, no credential, required when `required`.
pub fn check_note(note: Option<&str>, required: bool) -> Result<String, ApiError> {
    let note = note.unwrap_or_default();
    if required && note.trim().is_empty() {
        return Err(ApiError::bad("note is required"));
    }
    if note.len() > MAX_NOTE_BYTES {
        return Err(ApiError::bad("note is longer than 2000 bytes"));
    }
    if note
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::bad("note must not hold control characters"));
    }
    if find_raw_token(note.as_bytes()).is_some() {
        return Err(ApiError::bad("note must not contain a credential"));
    }
    Ok(note.to_owned())
}

/// What an action writes, validated from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The note.
    pub note: String,
    /// The assignee (`assign`).
    pub assignee: String,
    /// The receipt recorded in `detail` (the resolution of a close, as JSON).
    pub detail: String,
}

impl Action {
    /// Validates the body for this action.
    pub fn plan(self, body: &ActionBody) -> Result<Plan, ApiError> {
        let note = check_note(body.note.as_deref(), self == Action::Close)?;
        let assignee = match (self, body.assignee.as_deref()) {
            (Action::Assign, a) => {
                let a = params::required_ident("assignee", a)?;
                if find_raw_token(a.as_bytes()).is_some() {
                    return Err(ApiError::bad("assignee must not contain a credential"));
                }
                a
            }
            (_, None) => String::new(),
            (_, Some(_)) => return Err(ApiError::bad("assignee is only for assign")),
        };
        let detail = match (self, body.resolution.as_deref()) {
            (Action::Close, Some(r)) if RESOLUTIONS.contains(&r) => {
                json!({ "resolution": r }).to_string()
            }
            (Action::Close, _) => {
                return Err(ApiError::bad(
                    "resolution must be true_positive, false_positive, benign or duplicate",
                ))
            }
            (_, None) => String::new(),
            (_, Some(_)) => return Err(ApiError::bad("resolution is only for close")),
        };
        Ok(Plan {
            note,
            assignee,
            detail,
        })
    }
}

/// The answer to an action.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionAnswer {
    /// Id of the query-audit record of this request.
    pub query_id: String,
    /// The action as written.
    #[schema(value_type = AlertActionRow)]
    pub action: Answered<AlertActionRow>,
    /// The alert after it.
    pub alert: AlertItem,
}

/// Takes `action` on alert `id` for `caller`.
pub async fn act(
    s: &AppState,
    caller: &Caller,
    id: &str,
    action: Action,
    body: Result<ActionBody, ApiError>,
) -> Result<Response, ApiError> {
    let access = action.access();
    authorize(s, caller, access)?;
    let plan = action.plan(&body?)?;
    let tenant = tenant_of(s, caller, id).await?;
    let mut parameters = json!({ "alert_id": id, "note_bytes": plan.note.len() });
    if !plan.assignee.is_empty() {
        parameters["assignee"] = Value::from(plan.assignee.clone());
    }
    if let Some(r) = serde_json::from_str::<Value>(&plan.detail)
        .ok()
        .and_then(|d| d.get("resolution").cloned())
    {
        parameters["resolution"] = r;
    }
    let asked = Asked::new(caller, access.name, &tenant, parameters, "json");
    s.audit
        .write(&asked.record("answering", 0))
        .await
        .map_err(ApiError::AuditWrite)?;
    let out = write(s, caller, &tenant, id, action, plan).await;
    let status = match &out {
        Ok(_) => "answered",
        Err(e) if e.status().is_client_error() => "rejected",
        Err(_) => "failed",
    };
    s.audit
        .submit(&asked.record(status, u64::from(out.is_ok())))
        .await;
    let (row, after) = out?;
    Ok((
        StatusCode::OK,
        Json(ActionAnswer {
            query_id: asked.query_id.clone(),
            action: Answered(row),
            alert: AlertItem::from(after),
        }),
    )
        .into_response())
}

/// Checks the state rule and writes the action (one at a time per process).
async fn write(
    s: &AppState,
    caller: &Caller,
    tenant: &str,
    id: &str,
    action: Action,
    plan: Plan,
) -> Result<(AlertActionRow, StateRow), ApiError> {
    let wf = &s.workflow;
    let _one = wf.gate.lock().await;
    let state = current(s, tenant, id)
        .await?
        .ok_or(ApiError::Missing("no such alert"))?;
    action.check(&state)?;
    let row = AlertActionRow {
        action_id: new_query_id(),
        alert_id: id.to_owned(),
        tenant: tenant.to_owned(),
        action: action.as_str().to_owned(),
        actor: caller.sub.clone(),
        assignee: plan.assignee,
        note: plan.note,
        detail: plan.detail,
        // Strictly after the previous action, so the order of actions is their time order.
        at: s.clock.now_ms().max(state.last_action_ms + 1),
        alert_first_seen: state.first_seen,
    };
    wf.actions
        .insert(&wf.writer, std::slice::from_ref(&row))
        .await
        .map_err(|e| ApiError::Internal(format!("alert action not written: {e}")))?;
    let after = current(s, tenant, id)
        .await?
        .ok_or(ApiError::Missing("no such alert"))?;
    Ok((row, after))
}

macro_rules! action_handler {
    ($(#[$meta:meta])* $name:ident, $action:expr, $path:literal) => {
        $(#[$meta])*
        #[utoipa::path(post, path = $path,
            params(("id" = String, Path, description = "Alert id (32 hex)")),
            request_body = ActionBody,
            responses((status = 200, body = ActionAnswer), (status = 400, body = Problem),
                (status = 401, body = Problem), (status = 403, body = Problem),
                (status = 404, body = Problem), (status = 409, body = Problem)),
            security(("bearer" = [])), tag = "alerts")]
        pub async fn $name(
            State(s): State<AppState>,
            caller: Caller,
            Path(id): Path<String>,
            body: Result<ValidJson<ActionBody>, ApiError>,
        ) -> Result<Response, ApiError> {
            act(&s, &caller, &id, $action, body.map(|ValidJson(b)| b)).await
        }
    };
}

action_handler!(
    /// Acknowledges an open alert (409 when closed or already acknowledged).
    acknowledge,
    Action::Acknowledge,
    "/v1/alerts/{id}/acknowledge"
);
action_handler!(
    /// Assigns an alert that is not closed (`assignee` required).
    assign,
    Action::Assign,
    "/v1/alerts/{id}/assign"
);
action_handler!(
    /// Closes an alert (`note` and `resolution` required; 409 when already closed).
    close,
    Action::Close,
    "/v1/alerts/{id}/close"
);
action_handler!(
    /// Reopens a closed alert (409 when not closed).
    reopen,
    Action::Reopen,
    "/v1/alerts/{id}/reopen"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: &str) -> StateRow {
        StateRow {
            alert_id: String::new(),
            revision: 1,
            tenant: String::new(),
            detector: String::new(),
            severity: String::new(),
            dedup_key: String::new(),
            subject: String::new(),
            user_kind: String::new(),
            client_id: String::new(),
            session_id: String::new(),
            token_jti: String::new(),
            patient: String::new(),
            first_seen: 0,
            last_seen: 0,
            evidence: vec![],
            evidence_count: 0,
            summary: String::new(),
            token_theft: false,
            assignee: String::new(),
            reopened_by_evidence: false,
            status: status.into(),
            last_action_ms: 0,
        }
    }

    #[test]
    fn state_rules() {
        use Action::*;
        let ok = |a: Action, s: &str| a.check(&state(s)).is_ok();
        assert!(ok(Acknowledge, "open"));
        assert!(!ok(Acknowledge, "acknowledged"));
        assert!(!ok(Acknowledge, "closed"));
        assert!(ok(Assign, "open") && ok(Assign, "acknowledged"));
        assert!(!ok(Assign, "closed"));
        assert!(ok(Close, "open") && ok(Close, "acknowledged"));
        assert!(!ok(Close, "closed"));
        assert!(ok(Reopen, "closed"));
        assert!(!ok(Reopen, "open") && !ok(Reopen, "acknowledged"));
    }

    #[test]
    fn bodies_are_checked_per_action() {
        let body = |note: &str, assignee: Option<&str>, resolution: Option<&str>| ActionBody {
            note: Some(note.into()),
            assignee: assignee.map(Into::into),
            resolution: resolution.map(Into::into),
        };
        assert!(Action::Acknowledge.plan(&ActionBody::default()).is_ok());
        assert!(Action::Close.plan(&body("", None, Some("benign"))).is_err());
        assert!(Action::Close.plan(&body("seen", None, None)).is_err());
        assert!(Action::Close
            .plan(&body("seen", None, Some("maybe")))
            .is_err());
        let p = Action::Close
            .plan(&body("seen", None, Some("false_positive")))
            .expect("close");
        assert_eq!(p.detail, r#"{"resolution":"false_positive"}"#);
        assert!(Action::Assign.plan(&body("x", None, None)).is_err());
        assert_eq!(
            Action::Assign
                .plan(&body("", Some("ingrid"), None))
                .expect("assign")
                .assignee,
            "ingrid"
        );
        assert!(Action::Acknowledge
            .plan(&body("", Some("ingrid"), None))
            .is_err());
        assert!(Action::Acknowledge
            .plan(&body(&"x".repeat(2001), None, None))
            .is_err());
        let jwt = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl";
        assert!(Action::Acknowledge
            .plan(&body(&format!("token {jwt}"), None, None))
            .is_err());
    }
}
