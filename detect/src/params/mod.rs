//! Detector parameters: built-in defaults, a `default` override and per-tenant overrides.
//!
//! The JSON form is `{"default": {...}, "tenants": {"<tenant>": {...}}}`. Both levels are
//! partial: a key left out keeps the value of the level below (tenant → `default` →
//! built-in). Objects merge key by key, every other value (numbers, lists) replaces. An
//! unknown key at any level is refused with its path, so a typo never silently keeps a
//! default. Durations are whole seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::DetectError;

mod detectors;

pub use detectors::{
    AccessAfterConsentRevocation, BreakGlass, BulkRead, CredentialStuffing, PrivilegedWithoutMfa,
    RefreshFailureBurst, RefreshReuse, RepeatedDenials, ScopeEscalation, TokenMultiOrigin,
    UseAfterExpiry, UseAfterRevocation, Volume,
};

/// Every parameter of every detector, for one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Opt-in automatic response: revoke the session of a high-severity token-theft alert
    /// (`AlertUpdate::token_theft`). Read by the alerts service, not by the detectors.
    /// Default `false`.
    pub auto_revoke: bool,
    /// Networks (CIDR, v4 or v6) a workforce token is expected to be used from. Default the
    /// RFC 1918 private ranges `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    pub trusted_networks: Vec<String>,
    /// One access token used from several origins.
    pub token_multi_origin: TokenMultiOrigin,
    /// A refresh token presented after rotation.
    pub refresh_reuse: RefreshReuse,
    /// Failed refreshes in bursts.
    pub refresh_failure_burst: RefreshFailureBurst,
    /// Permitted access with a revoked token.
    pub use_after_revocation: UseAfterRevocation,
    /// Permitted access with an expired token.
    pub use_after_expiry: UseAfterExpiry,
    /// Permitted access to a patient after the patient revoked the client's consent.
    pub access_after_consent_revocation: AccessAfterConsentRevocation,
    /// Accesses outside the token's granted SMART scopes.
    pub scope_escalation: ScopeEscalation,
    /// Denied accesses in bursts, per client and per user.
    pub repeated_denials: RepeatedDenials,
    /// Distinct patients per user and hour against the user's own baseline.
    pub volume: Volume,
    /// Large searches and bulk exports by user-facing clients.
    pub bulk_read: BulkRead,
    /// Break-glass without a reason, and break-glass accesses after the opening's limit.
    pub break_glass: BreakGlass,
    /// Many failed sign-ins, then a success.
    pub credential_stuffing: CredentialStuffing,
    /// A privileged user signing in without a second factor.
    pub privileged_without_mfa: PrivilegedWithoutMfa,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            auto_revoke: false,
            trusted_networks: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
                .map(str::to_owned)
                .to_vec(),
            token_multi_origin: TokenMultiOrigin::default(),
            refresh_reuse: RefreshReuse::default(),
            refresh_failure_burst: RefreshFailureBurst::default(),
            use_after_revocation: UseAfterRevocation::default(),
            use_after_expiry: UseAfterExpiry::default(),
            access_after_consent_revocation: AccessAfterConsentRevocation::default(),
            scope_escalation: ScopeEscalation::default(),
            repeated_denials: RepeatedDenials::default(),
            volume: Volume::default(),
            bulk_read: BulkRead::default(),
            break_glass: BreakGlass::default(),
            credential_stuffing: CredentialStuffing::default(),
            privileged_without_mfa: PrivilegedWithoutMfa::default(),
        }
    }
}

/// A partial [`Params`]: only the keys it names override the level below. Validated when
/// parsed (every key must exist in [`Params`] with a value of the right type).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartialParams(Map<String, Value>);

impl PartialParams {
    /// A partial set from a JSON object; refused when a key is unknown or a value of the
    /// wrong type (`context` names where it came from in the error).
    pub fn from_value(value: Value, context: &str) -> Result<PartialParams, DetectError> {
        let Value::Object(map) = value else {
            return Err(DetectError::Params(format!(
                "{context}: expected an object"
            )));
        };
        let partial = PartialParams(map);
        partial.apply(&Params::default(), context)?;
        Ok(partial)
    }

    /// `base` with this set's keys applied.
    pub fn apply(&self, base: &Params, context: &str) -> Result<Params, DetectError> {
        try_apply(base, &self.0).map_err(|e| {
            let path = locate(base, &self.0, &mut Vec::new()).unwrap_or_default();
            DetectError::Params(format!("{context}{path}: {e}"))
        })
    }
}

fn try_apply(base: &Params, over: &Map<String, Value>) -> Result<Params, serde_json::Error> {
    let mut merged = serde_json::to_value(base)?;
    merge(&mut merged, over);
    serde_json::from_value(merged)
}

/// The dotted path (`.volume.factor`) of the first key of `over` that does not apply.
fn locate(base: &Params, over: &Map<String, Value>, prefix: &mut Vec<String>) -> Option<String> {
    for (k, v) in over {
        prefix.push(k.clone());
        let nested = nest(prefix, v.clone());
        if try_apply(base, &nested).is_err() {
            if let Value::Object(inner) = v {
                if let Some(p) = locate(base, inner, prefix) {
                    return Some(p);
                }
            }
            return Some(prefix.iter().map(|p| format!(".{p}")).collect());
        }
        prefix.pop();
    }
    None
}

/// `{"a": {"b": v}}` for the path `[a, b]`.
fn nest(path: &[String], v: Value) -> Map<String, Value> {
    let mut value = v;
    for k in path.iter().skip(1).rev() {
        let mut m = Map::new();
        m.insert(k.clone(), value);
        value = Value::Object(m);
    }
    let mut top = Map::new();
    if let Some(first) = path.first() {
        top.insert(first.clone(), value);
    }
    top
}

/// Merges `over` into `base`: objects key by key, other values replaced.
fn merge(base: &mut Value, over: &Map<String, Value>) {
    let Value::Object(b) = base else {
        *base = Value::Object(over.clone());
        return;
    };
    for (k, v) in over {
        match (b.get_mut(k), v) {
            (Some(slot @ Value::Object(_)), Value::Object(o)) => merge(slot, o),
            _ => {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Parameters of every tenant: `default` applies to tenants without an entry in `tenants`
/// and is the base each entry overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamSet {
    /// The parameters of a tenant without an override (built-in defaults plus the
    /// `default` section).
    pub default: Params,
    /// Per-tenant overrides over `default`.
    pub tenants: BTreeMap<String, PartialParams>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamSetJson {
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    tenants: BTreeMap<String, Value>,
}

impl ParamSet {
    /// Parses `{"default": {...}, "tenants": {"<tenant>": {...}}}`; both sections optional.
    pub fn from_json(json: &str) -> Result<ParamSet, DetectError> {
        let raw: ParamSetJson = serde_json::from_str(json)
            .map_err(|e| DetectError::Params(format!("parameter file: {e}")))?;
        let default = match raw.default {
            Some(v) => {
                PartialParams::from_value(v, "default")?.apply(&Params::default(), "default")?
            }
            None => Params::default(),
        };
        let mut tenants = BTreeMap::new();
        for (tenant, v) in raw.tenants {
            let context = format!("tenants.{tenant}");
            let partial = PartialParams::from_value(v, &context)?;
            partial.apply(&default, &context)?;
            tenants.insert(tenant, partial);
        }
        let set = ParamSet { default, tenants };
        set.resolve()?;
        Ok(set)
    }

    /// The effective parameters of one tenant (`default` for a tenant without an override,
    /// or whose override does not apply), e.g. for the alerts service's `auto_revoke`.
    pub fn tenant(&self, tenant: &str) -> Params {
        self.tenants
            .get(tenant)
            .and_then(|partial| partial.apply(&self.default, tenant).ok())
            .unwrap_or_else(|| self.default.clone())
    }

    /// The effective parameters of every tenant named in `tenants`, checked.
    pub fn resolve(&self) -> Result<BTreeMap<String, Params>, DetectError> {
        check(&self.default, "default")?;
        let mut out = BTreeMap::new();
        for (tenant, partial) in &self.tenants {
            let context = format!("tenants.{tenant}");
            let p = partial.apply(&self.default, &context)?;
            check(&p, &context)?;
            out.insert(tenant.clone(), p);
        }
        Ok(out)
    }
}

/// Values serde accepts but the detectors cannot use.
fn check(p: &Params, context: &str) -> Result<(), DetectError> {
    for net in &p.trusted_networks {
        if crate::net::Cidr::parse(net).is_none() {
            return Err(DetectError::Params(format!(
                "{context}.trusted_networks: `{net}` is not a CIDR block"
            )));
        }
    }
    if !(p.volume.factor.is_finite() && p.volume.factor > 0.0) {
        return Err(DetectError::Params(format!(
            "{context}.volume.factor: must be a positive number"
        )));
    }
    let positive = [
        (
            "refresh_failure_burst.threshold",
            p.refresh_failure_burst.threshold,
        ),
        (
            "repeated_denials.user_threshold",
            p.repeated_denials.user_threshold,
        ),
        (
            "repeated_denials.client_threshold",
            p.repeated_denials.client_threshold,
        ),
        (
            "credential_stuffing.user_threshold",
            p.credential_stuffing.user_threshold,
        ),
        (
            "credential_stuffing.ip_user_threshold",
            p.credential_stuffing.ip_user_threshold,
        ),
        (
            "token_multi_origin.max_user_agents",
            p.token_multi_origin.max_user_agents,
        ),
        ("volume.hourly_ceiling", p.volume.hourly_ceiling),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(DetectError::Params(format!(
                "{context}.{name}: must be at least 1"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_overrides_apply_over_the_default_section() {
        let set = ParamSet::from_json(
            r#"{"default": {"volume": {"hourly_ceiling": 80}, "auto_revoke": false},
                "tenants": {"general": {"auto_revoke": true, "volume": {"factor": 5.0},
                                        "break_glass": {"enabled": false}}}}"#,
        )
        .expect("valid");
        assert_eq!(set.default.volume.hourly_ceiling, 80);
        let general = &set.resolve().expect("resolves")["general"];
        assert!(general.auto_revoke);
        assert_eq!(general.volume.factor, 5.0);
        assert_eq!(general.volume.hourly_ceiling, 80, "inherited from default");
        assert_eq!(general.volume.baseline_days, 30, "built-in default");
        assert!(!general.break_glass.enabled);
        assert_eq!(&set.tenant("general"), general);
        assert_eq!(set.tenant("elsewhere"), set.default);
        assert!(set.default.break_glass.enabled);
        assert_eq!(
            ParamSet::from_json("{}").expect("empty"),
            ParamSet::default()
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_place() {
        let err = |json: &str| match ParamSet::from_json(json) {
            Err(DetectError::Params(m)) => m,
            other => panic!("expected a parameter error, got {other:?}"),
        };
        let m = err(r#"{"tenants": {"general": {"volume": {"hourly_cieling": 5}}}}"#);
        assert!(
            m.contains("tenants.general") && m.contains("hourly_cieling"),
            "{m}"
        );
        let m = err(r#"{"default": {"no_such_detector": {}}}"#);
        assert!(
            m.contains("default") && m.contains("no_such_detector"),
            "{m}"
        );
        assert!(err(r#"{"defaults": {}}"#).contains("defaults"));
        let m = err(r#"{"default": {"trusted_networks": ["10.0.0.0/40"]}}"#);
        assert!(m.contains("trusted_networks"), "{m}");
        let m = err(r#"{"tenants": {"t": {"repeated_denials": {"user_threshold": 0}}}}"#);
        assert!(
            m.contains("tenants.t.repeated_denials.user_threshold"),
            "{m}"
        );
        assert!(err(r#"{"default": {"volume": {"factor": "3"}}}"#).contains("factor"));
        assert!(err(r#"{"tenants": {"t": []}}"#).contains("expected an object"));
    }
}
