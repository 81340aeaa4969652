//! One parameter struct per detector, each with `enabled` and documented defaults.

use serde::{Deserialize, Serialize};

/// `enabled` defaults to true.
fn yes() -> bool {
    true
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
    /// A reason shorter than this (characters, trimmed) states nothing. Default 3.
    pub min_reason_chars: usize,
    /// Reasons that state nothing, compared trimmed and case-insensitively. Default `n/a`,
    /// `na`, `none`, `null`, `test`, `emergency`, `-`, `.`, `x`, `?`.
    pub placeholder_reasons: Vec<String>,
}

impl BreakGlass {
    /// Whether `reason` states a reason: long enough and not a placeholder.
    pub fn states_a_reason(&self, reason: &str) -> bool {
        let r = reason.trim();
        r.chars().count() >= self.min_reason_chars
            && !self
                .placeholder_reasons
                .iter()
                .any(|p| p.trim().eq_ignore_ascii_case(r))
    }
}

impl Default for BreakGlass {
    fn default() -> Self {
        BreakGlass {
            enabled: true,
            default_limit_secs: 14_400,
            retention_secs: 86_400,
            min_reason_chars: 3,
            placeholder_reasons: [
                "n/a",
                "na",
                "none",
                "null",
                "test",
                "emergency",
                "-",
                ".",
                "x",
                "?",
            ]
            .map(String::from)
            .to_vec(),
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
