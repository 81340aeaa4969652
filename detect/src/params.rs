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

/// `enabled` defaults to true.
fn yes() -> bool {
    true
}

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

/// `token_multi_origin` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenMultiOrigin {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Lifetime assumed for a token whose issuing row carries no `expires_at`. Default 3600.
    pub default_lifetime_secs: u64,
    /// Treat addresses in the same IPv4 /24 or IPv6 /64 as one origin (NAT pools, carrier
    /// networks). Default `true`.
    pub same_subnet_is_one_origin: bool,
    /// Distinct user agents (non-empty) that make a token multi-origin by themselves.
    /// Default 3.
    pub max_user_agents: u32,
}

impl Default for TokenMultiOrigin {
    fn default() -> Self {
        TokenMultiOrigin {
            enabled: true,
            default_lifetime_secs: 3600,
            same_subnet_is_one_origin: true,
            max_user_agents: 3,
        }
    }
}

/// `refresh_reuse` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshReuse {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a successfully refreshed refresh-token id is remembered to catch a second
    /// refresh with it. Default 86400 (one day).
    pub remember_secs: u64,
}

impl Default for RefreshReuse {
    fn default() -> Self {
        RefreshReuse {
            enabled: true,
            remember_secs: 86_400,
        }
    }
}

/// `refresh_failure_burst` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshFailureBurst {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failed refreshes of one client and subject that raise the alert. Default 5.
    pub threshold: u32,
    /// Window they must fall in. Default 600.
    pub window_secs: u64,
}

impl Default for RefreshFailureBurst {
    fn default() -> Self {
        RefreshFailureBurst {
            enabled: true,
            threshold: 5,
            window_secs: 600,
        }
    }
}

/// `use_after_revocation` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UseAfterRevocation {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Propagation allowance after the revocation (caches of gateways and introspection).
    /// Default 30.
    pub grace_secs: u64,
    /// How long permitted accesses of a token are kept for a revocation that arrives late,
    /// and revocations for accesses that arrive late. Default 7200.
    pub retention_secs: u64,
}

impl Default for UseAfterRevocation {
    fn default() -> Self {
        UseAfterRevocation {
            enabled: true,
            grace_secs: 30,
            retention_secs: 7200,
        }
    }
}

/// `use_after_expiry` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UseAfterExpiry {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Clock skew allowed between the AS and the gateway. Default 60.
    pub skew_secs: u64,
    /// How long expiries and permitted accesses are kept for rows that arrive late.
    /// Default 7200.
    pub retention_secs: u64,
}

impl Default for UseAfterExpiry {
    fn default() -> Self {
        UseAfterExpiry {
            enabled: true,
            skew_secs: 60,
            retention_secs: 7200,
        }
    }
}

/// `access_after_consent_revocation` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessAfterConsentRevocation {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time the revocation may take to reach the AS and the gateway. Default 300.
    pub grace_secs: u64,
    /// How long consent changes and permitted accesses are kept for rows that arrive late.
    /// Default 7200.
    pub retention_secs: u64,
}

impl Default for AccessAfterConsentRevocation {
    fn default() -> Self {
        AccessAfterConsentRevocation {
            enabled: true,
            grace_secs: 300,
            retention_secs: 7200,
        }
    }
}

/// `scope_escalation` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeEscalation {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for ScopeEscalation {
    fn default() -> Self {
        ScopeEscalation { enabled: true }
    }
}

/// `repeated_denials` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepeatedDenials {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Denied accesses by one user that raise the alert. Default 5.
    pub user_threshold: u32,
    /// Denied accesses by one client (all its users) that raise the alert. Default 20.
    pub client_threshold: u32,
    /// Window they must fall in. Default 600.
    pub window_secs: u64,
}

impl Default for RepeatedDenials {
    fn default() -> Self {
        RepeatedDenials {
            enabled: true,
            user_threshold: 5,
            client_threshold: 20,
            window_secs: 600,
        }
    }
}

/// `volume` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Volume {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// An hour over `factor` × the user's baseline raises the alert. Default 3.0.
    pub factor: f64,
    /// Smallest baseline used (distinct patients per active hour), so a new user's first
    /// hours do not alert. Default 10.
    pub baseline_floor: u32,
    /// Days of per-user history the baseline averages. Default 30.
    pub baseline_days: u32,
    /// Distinct patients in one hour that raise the alert whatever the baseline. Default 100.
    pub hourly_ceiling: u32,
}

impl Default for Volume {
    fn default() -> Self {
        Volume {
            enabled: true,
            factor: 3.0,
            baseline_floor: 10,
            baseline_days: 30,
            hourly_ceiling: 100,
        }
    }
}

/// `bulk_read` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkRead {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A search returning more ids than this raises the alert. Default 50.
    pub max_returned_ids: u32,
}

impl Default for BulkRead {
    fn default() -> Self {
        BulkRead {
            enabled: true,
            max_returned_ids: 50,
        }
    }
}

/// `break_glass` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakGlass {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time limit of an opening that states no `expires_at`. Default 14400 (4 h).
    pub default_limit_secs: u64,
    /// How long after an opening's limit break-glass accesses are still checked against
    /// it. Default 86400.
    pub retention_secs: u64,
}

impl Default for BreakGlass {
    fn default() -> Self {
        BreakGlass {
            enabled: true,
            default_limit_secs: 14_400,
            retention_secs: 86_400,
        }
    }
}

/// `credential_stuffing` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialStuffing {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failed sign-ins of one user that raise the alert. Default 5.
    pub user_threshold: u32,
    /// Distinct users with failed sign-ins from one IP that raise the alert. Default 10.
    pub ip_user_threshold: u32,
    /// Window they must fall in; a success within it after the burst raises the severity.
    /// Default 600.
    pub window_secs: u64,
}

impl Default for CredentialStuffing {
    fn default() -> Self {
        CredentialStuffing {
            enabled: true,
            user_threshold: 5,
            ip_user_threshold: 10,
            window_secs: 600,
        }
    }
}

/// `privileged_without_mfa` parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivilegedWithoutMfa {
    /// Run this detector. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Roles that make a user privileged (from the sign-in event's `roles`). Default the
    /// Keycloak administrator roles and the Custos roles: `admin`, `realm-admin`,
    /// `manage-users`, `compliance_officer`, `privacy_officer`, `incident_responder`,
    /// `auditor`.
    pub privileged_roles: Vec<String>,
    /// Clients whose sign-ins are privileged whoever signs in. Default empty.
    pub privileged_clients: Vec<String>,
    /// Subjects (as stored) who are privileged. Default empty.
    pub privileged_subjects: Vec<String>,
    /// RFC 8176 `amr` values that count as a second factor. Default `mfa`, `mca`, `otp`,
    /// `hwk`, `swk`, `sms`, `tel`, `sc`, `fpt`, `face`, `iris`, `retina`.
    pub second_factors: Vec<String>,
}

impl Default for PrivilegedWithoutMfa {
    fn default() -> Self {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        PrivilegedWithoutMfa {
            enabled: true,
            privileged_roles: list(&[
                "admin",
                "realm-admin",
                "manage-users",
                "compliance_officer",
                "privacy_officer",
                "incident_responder",
                "auditor",
            ]),
            privileged_clients: Vec::new(),
            privileged_subjects: Vec::new(),
            second_factors: list(&[
                "mfa", "mca", "otp", "hwk", "swk", "sms", "tel", "sc", "fpt", "face", "iris",
                "retina",
            ]),
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
        let mut merged = serde_json::to_value(base)
            .map_err(|e| DetectError::Params(format!("{context}: {e}")))?;
        merge(&mut merged, &self.0);
        serde_json::from_value(merged).map_err(|e| DetectError::Params(format!("{context}: {e}")))
    }
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
