//! Agents: the user who requested the interaction and the client application it used.

use super::entities::split_reference;
use super::resource::{ext_text, Agent, AuditEventJson, Extension};
use super::{missing, nonempty, BALP_USER_AGENT_TYPE, DCM, EXT_ISSUER, EXT_JTI, EXT_SCOPE};
use crate::error::DecodeError;

/// The user (requestor) agent and what the mapping takes from it.
pub(super) struct User<'a> {
    /// The agent itself.
    pub(super) agent: &'a Agent,
    /// The resource's own extensions, which take precedence over the agent's.
    resource_extensions: &'a [Extension],
    /// `who.identifier.value`.
    pub(super) sub: String,
    /// `who.identifier.system`, else extension [`EXT_ISSUER`].
    pub(super) iss: String,
    /// `who.reference` as `Type/id`.
    pub(super) fhir_user: Option<String>,
    /// `policy[0]` (not for the `Opaque` token profile), else extension [`EXT_JTI`].
    pub(super) jti: Option<String>,
    /// Extension [`EXT_SCOPE`].
    pub(super) scope: Option<String>,
}

impl<'a> User<'a> {
    /// Finds the agent with `requestor = true`, else a BALP `UserOauthAgent` or
    /// `UserSamlAgent`, and reads its identity and token.
    pub(super) fn find(audit: &'a AuditEventJson) -> Result<Self, DecodeError> {
        let agent = audit
            .agent
            .iter()
            .find(|a| a.requestor == Some(true))
            .or_else(|| {
                audit.agent.iter().find(|a| {
                    a.has_type(BALP_USER_AGENT_TYPE, "UserOauthAgent")
                        || a.has_type(BALP_USER_AGENT_TYPE, "UserSamlAgent")
                })
            })
            .ok_or_else(|| missing("AuditEvent.agent(requestor)"))?;
        let ext = |url: &str| user_extension(&audit.extension, agent, url);
        let user_id = agent.who.as_ref().and_then(|w| w.identifier.as_ref());
        let sub = nonempty(user_id.and_then(|i| i.value.as_deref()))
            .ok_or_else(|| missing("AuditEvent.agent(requestor).who.identifier.value"))?
            .to_owned();
        let iss = nonempty(user_id.and_then(|i| i.system.as_deref()))
            .map(str::to_owned)
            .or_else(|| ext(EXT_ISSUER))
            .ok_or_else(|| missing("AuditEvent.agent(requestor).who.identifier.system"))?;
        let fhir_user = agent
            .who
            .as_ref()
            .and_then(|w| w.reference.as_deref())
            .and_then(split_reference)
            .map(|(t, id)| format!("{t}/{id}"));
        let opaque = audit.meta.as_ref().is_some_and(|m| {
            m.profile
                .iter()
                .any(|p| p.contains("OAUTHaccessTokenUse.Opaque"))
        });
        let jti = agent
            .policy
            .first()
            .filter(|_| !opaque)
            .and_then(|p| nonempty(Some(p.as_str())))
            .map(str::to_owned)
            .or_else(|| ext(EXT_JTI));
        Ok(User {
            agent,
            resource_extensions: &audit.extension,
            sub,
            iss,
            fhir_user,
            jti,
            scope: ext(EXT_SCOPE),
        })
    }

    /// The text of extension `url` on the resource, else on the user agent.
    pub(super) fn extension(&self, url: &str) -> Option<String> {
        user_extension(self.resource_extensions, self.agent, url)
    }
}

/// The text of extension `url` on the resource (`resource`), else on the user agent.
fn user_extension(resource: &[Extension], agent: &Agent, url: &str) -> Option<String> {
    ext_text(resource, url).or_else(|| ext_text(&agent.extension, url))
}

/// The client application agent and what the mapping takes from it.
pub(super) struct Client {
    /// `who.identifier.value`, else `.display`, else `.reference`.
    pub(super) client_id: String,
    /// The client's IP address, else the user's.
    pub(super) source_ip: Option<String>,
}

impl Client {
    /// Finds the DICOM `110150` (Application) agent, else a non-requestor `110152` or
    /// `110153` agent with a machine-name or IP network address.
    pub(super) fn find(audit: &AuditEventJson, user: &User<'_>) -> Result<Self, DecodeError> {
        let agent = audit
            .agent
            .iter()
            .find(|a| a.has_type(DCM, "110150"))
            .or_else(|| {
                audit.agent.iter().find(|a| {
                    a.requestor != Some(true)
                        && (a.has_type(DCM, "110152") || a.has_type(DCM, "110153"))
                        && a.network
                            .as_ref()
                            .is_some_and(|n| matches!(n.ty.as_deref(), Some("1" | "2")))
                })
            })
            .ok_or_else(|| missing("AuditEvent.agent(client)"))?;
        let client_id = agent
            .who
            .as_ref()
            .and_then(|w| {
                nonempty(w.identifier.as_ref().and_then(|i| i.value.as_deref()))
                    .or(nonempty(w.display.as_deref()))
                    .or(nonempty(w.reference.as_deref()))
            })
            .ok_or_else(|| missing("AuditEvent.agent(client).who"))?
            .to_owned();
        Ok(Client {
            client_id,
            source_ip: ip_address(agent).or_else(|| ip_address(user.agent)),
        })
    }
}

/// The agent's network address when it is an IP address (type `2`, or untyped).
fn ip_address(agent: &Agent) -> Option<String> {
    agent
        .network
        .as_ref()
        .filter(|n| matches!(n.ty.as_deref(), None | Some("2")))
        .and_then(|n| nonempty(n.address.as_deref()))
        .map(str::to_owned)
}
