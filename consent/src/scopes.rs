//! SMART on FHIR scopes, v1 (`patient/Observation.read`, `user/*.write`, `.*`) and v2
//! (`patient/Observation.rs`, `system/*.cruds`, with optional search-parameter filters such
//! as `patient/Observation.rs?category=laboratory`), plus the launch and identity scopes.
//!
//! ```
//! use custos_consent::scopes::{parse, Coverage, Scope};
//! let s = parse("patient/Observation.rs?category=laboratory").unwrap();
//! let Scope::Resource(r) = &s else { panic!() };
//! assert_eq!(r.permits("Observation", "search-type"), Coverage::Filtered(vec![("category".into(), "laboratory".into())]));
//! assert_eq!(r.permits("Observation", "delete"), Coverage::None);
//! ```

use serde::Serialize;
use thiserror::Error;

/// Whose data a resource scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    /// The patient in launch context.
    Patient,
    /// Whatever the user may see.
    User,
    /// A backend service, no user.
    System,
}

/// Which SMART syntax a scope used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SmartVersion {
    /// `.read`, `.write`, `.*`
    V1,
    /// `.c`, `.r`, `.u`, `.d`, `.s` in that order.
    V2,
}

/// SMART v2 permissions (v1 `read` = `rs`, `write` = `cud`, `*` = `cruds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// create
    pub create: bool,
    /// read, vread, history of an instance
    pub read: bool,
    /// update, patch
    pub update: bool,
    /// delete
    pub delete: bool,
    /// search, history of a type
    pub search: bool,
}

impl Permissions {
    /// All five.
    pub const ALL: Permissions = Permissions {
        create: true,
        read: true,
        update: true,
        delete: true,
        search: true,
    };

    /// The v2 letters, e.g. `rs`.
    pub fn letters(&self) -> String {
        [
            (self.create, 'c'),
            (self.read, 'r'),
            (self.update, 'u'),
            (self.delete, 'd'),
            (self.search, 's'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect()
    }
}

/// `context/Type.perms[?filters]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceScope {
    /// patient, user or system.
    pub context: Context,
    /// FHIR resource type; `None` for `*`.
    pub resource_type: Option<String>,
    /// What it allows.
    pub permissions: Permissions,
    /// v2 search-parameter filters (`?category=laboratory`), in order.
    pub filters: Vec<(String, String)>,
    /// Syntax used.
    pub version: SmartVersion,
}

/// Whether a scope allows an access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Allowed.
    Full,
    /// Allowed for resources matching these search-parameter filters only.
    Filtered(Vec<(String, String)>),
    /// Not allowed.
    None,
}

impl ResourceScope {
    /// Whether this scope allows `interaction` (FHIR restful-interaction code) on `resource_type`.
    pub fn permits(&self, resource_type: &str, interaction: &str) -> Coverage {
        if let Some(t) = &self.resource_type {
            if t != resource_type {
                return Coverage::None;
            }
        }
        let p = &self.permissions;
        let ok = match interaction {
            "read" | "vread" | "history-instance" => p.read,
            "search" | "search-type" | "search-system" | "history-type" | "history-system"
            | "history" => p.search,
            "create" => p.create,
            "update" | "patch" => p.update,
            "delete" => p.delete,
            _ => false,
        };
        match (ok, self.filters.is_empty()) {
            (false, _) => Coverage::None,
            (true, true) => Coverage::Full,
            (true, false) => Coverage::Filtered(self.filters.clone()),
        }
    }
}

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// Access to FHIR resources.
    Resource(ResourceScope),
    /// `launch`, `launch/patient`, `launch/encounter`.
    Launch {
        /// The context requested (`patient`, `encounter`), if any.
        context: Option<String>,
    },
    /// `openid`, `fhirUser`, `profile`, `email`.
    Identity {
        /// The scope.
        name: String,
    },
    /// `offline_access` or `online_access`.
    Refresh {
        /// true for `offline_access`.
        offline: bool,
    },
    /// Anything else (kept, never interpreted).
    Other {
        /// The scope.
        name: String,
    },
}

/// A malformed SMART resource scope.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeError {
    /// `patient/`, `user/` or `system/` without `Type.perms`.
    #[error("resource scope lacks `Type.permissions`")]
    MissingPermissions,
    /// The resource type is not `*` or a FHIR type name.
    #[error("invalid resource type")]
    BadType,
    /// Permissions are neither v1 (`read`, `write`, `*`) nor v2 (`c r u d s` in order).
    #[error("invalid permissions (v1: read, write, *; v2: c r u d s in that order)")]
    BadPermissions,
    /// A v2 filter is not `name=value[&name=value]`, or v1 syntax carries filters.
    #[error("invalid search-parameter filter")]
    BadFilter,
}

/// Parses one scope.
pub fn parse(scope: &str) -> Result<Scope, ScopeError> {
    let context = match scope.split_once('/') {
        Some(("patient", _)) => Some(Context::Patient),
        Some(("user", _)) => Some(Context::User),
        Some(("system", _)) => Some(Context::System),
        _ => None,
    };
    let Some(context) = context else {
        return Ok(match scope {
            "launch" => Scope::Launch { context: None },
            s if s.starts_with("launch/") => Scope::Launch {
                context: Some(s["launch/".len()..].to_owned()),
            },
            "openid" | "fhirUser" | "profile" | "email" => Scope::Identity {
                name: scope.to_owned(),
            },
            "offline_access" => Scope::Refresh { offline: true },
            "online_access" => Scope::Refresh { offline: false },
            _ => Scope::Other {
                name: scope.to_owned(),
            },
        });
    };
    let rest = &scope[scope.find('/').map_or(0, |i| i + 1)..];
    let (body, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (rtype, perms) = body
        .rsplit_once('.')
        .ok_or(ScopeError::MissingPermissions)?;
    let resource_type = match rtype {
        "*" => None,
        t if is_type_name(t) => Some(t.to_owned()),
        _ => return Err(ScopeError::BadType),
    };
    let (permissions, version) = match perms {
        "read" => (
            Permissions {
                read: true,
                search: true,
                ..Permissions::default()
            },
            SmartVersion::V1,
        ),
        "write" => (
            Permissions {
                create: true,
                update: true,
                delete: true,
                ..Permissions::default()
            },
            SmartVersion::V1,
        ),
        "*" => (Permissions::ALL, SmartVersion::V1),
        p => (v2_permissions(p)?, SmartVersion::V2),
    };
    let filters = match query {
        None => Vec::new(),
        Some(_) if version == SmartVersion::V1 => return Err(ScopeError::BadFilter),
        Some(q) => parse_filters(q)?,
    };
    Ok(Scope::Resource(ResourceScope {
        context,
        resource_type,
        permissions,
        filters,
        version,
    }))
}

fn is_type_name(t: &str) -> bool {
    let mut chars = t.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

fn v2_permissions(p: &str) -> Result<Permissions, ScopeError> {
    if p.is_empty() {
        return Err(ScopeError::BadPermissions);
    }
    let order = "cruds";
    let mut last: Option<usize> = None;
    let mut out = Permissions::default();
    for c in p.chars() {
        let idx = order.find(c).ok_or(ScopeError::BadPermissions)?;
        if last.is_some_and(|l| idx <= l) {
            return Err(ScopeError::BadPermissions);
        }
        last = Some(idx);
        match c {
            'c' => out.create = true,
            'r' => out.read = true,
            'u' => out.update = true,
            'd' => out.delete = true,
            _ => out.search = true,
        }
    }
    Ok(out)
}

fn parse_filters(q: &str) -> Result<Vec<(String, String)>, ScopeError> {
    q.split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(ScopeError::BadFilter),
        })
        .collect()
}

/// A space-separated scope string, parsed: the scopes and the ones that were malformed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScopeSet {
    /// Parsed scopes, in input order.
    pub scopes: Vec<Scope>,
    /// Malformed resource scopes (kept verbatim, never granting anything).
    pub invalid: Vec<String>,
}

impl ScopeSet {
    /// Parses a space-separated scope string (RFC 6749 §3.3).
    pub fn parse(scope: &str) -> ScopeSet {
        let mut set = ScopeSet::default();
        for s in scope.split_ascii_whitespace() {
            match parse(s) {
                Ok(p) => set.scopes.push(p),
                Err(_) => set.invalid.push(s.to_owned()),
            }
        }
        set
    }

    /// The best coverage any resource scope in the set gives the access.
    pub fn covers(&self, resource_type: &str, interaction: &str) -> Coverage {
        let mut best = Coverage::None;
        for s in &self.scopes {
            if let Scope::Resource(r) = s {
                match r.permits(resource_type, interaction) {
                    Coverage::Full => return Coverage::Full,
                    f @ Coverage::Filtered(_) if best == Coverage::None => best = f,
                    _ => {}
                }
            }
        }
        best
    }

    /// Whether the set includes `offline_access` (refresh tokens that outlive the session).
    pub fn offline(&self) -> bool {
        self.scopes
            .iter()
            .any(|s| matches!(s, Scope::Refresh { offline: true }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(s: &str) -> ResourceScope {
        match parse(s) {
            Ok(Scope::Resource(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn v1_scopes() {
        let r = resource("patient/Observation.read");
        assert_eq!(r.context, Context::Patient);
        assert_eq!(r.resource_type.as_deref(), Some("Observation"));
        assert_eq!(r.version, SmartVersion::V1);
        assert_eq!(r.permissions.letters(), "rs");
        assert_eq!(resource("user/*.write").permissions.letters(), "cud");
        assert_eq!(resource("user/*.write").resource_type, None);
        assert_eq!(resource("system/Patient.*").permissions, Permissions::ALL);
    }

    #[test]
    fn v2_scopes_and_filters() {
        let r = resource("patient/Observation.rs?category=laboratory");
        assert_eq!(r.version, SmartVersion::V2);
        assert_eq!(r.permissions.letters(), "rs");
        assert_eq!(
            r.filters,
            vec![("category".to_owned(), "laboratory".to_owned())]
        );
        let r = resource(
            "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs&status=final",
        );
        assert_eq!(r.filters.len(), 2);
        assert_eq!(resource("system/*.cruds").permissions, Permissions::ALL);
        assert_eq!(resource("patient/Condition.c").permissions.letters(), "c");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            parse("patient/Observation"),
            Err(ScopeError::MissingPermissions)
        );
        assert_eq!(
            parse("patient/Observation.sr"),
            Err(ScopeError::BadPermissions)
        );
        assert_eq!(
            parse("patient/Observation.rr"),
            Err(ScopeError::BadPermissions)
        );
        assert_eq!(
            parse("patient/Observation.x"),
            Err(ScopeError::BadPermissions)
        );
        assert_eq!(parse("patient/observation.rs"), Err(ScopeError::BadType));
        assert_eq!(
            parse("patient/Observation.rs?category"),
            Err(ScopeError::BadFilter)
        );
        assert_eq!(
            parse("patient/Observation.read?x=y"),
            Err(ScopeError::BadFilter)
        );
        let set = ScopeSet::parse("openid patient/Observation.zz launch/patient");
        assert_eq!(set.invalid, vec!["patient/Observation.zz"]);
        assert_eq!(set.scopes.len(), 2);
    }

    #[test]
    fn other_scopes() {
        assert_eq!(parse("launch"), Ok(Scope::Launch { context: None }));
        assert_eq!(
            parse("launch/patient"),
            Ok(Scope::Launch {
                context: Some("patient".into())
            })
        );
        assert!(matches!(parse("fhirUser"), Ok(Scope::Identity { .. })));
        assert_eq!(
            parse("offline_access"),
            Ok(Scope::Refresh { offline: true })
        );
        assert!(matches!(parse("custom:thing"), Ok(Scope::Other { .. })));
    }

    #[test]
    fn coverage() {
        let set = ScopeSet::parse(
            "openid fhirUser offline_access patient/Observation.rs?category=laboratory patient/Patient.read",
        );
        assert!(set.offline());
        assert_eq!(set.covers("Patient", "read"), Coverage::Full);
        assert_eq!(set.covers("Patient", "search-type"), Coverage::Full);
        assert_eq!(set.covers("Patient", "update"), Coverage::None);
        assert!(matches!(
            set.covers("Observation", "read"),
            Coverage::Filtered(_)
        ));
        assert_eq!(set.covers("Condition", "read"), Coverage::None);
        let all = ScopeSet::parse("user/*.cruds");
        assert_eq!(all.covers("Condition", "delete"), Coverage::Full);
        assert_eq!(all.covers("Condition", "capabilities"), Coverage::None);
    }
}
