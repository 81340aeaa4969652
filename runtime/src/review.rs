//! The break-glass review's due time per tenant: read by the query service (the review queue
//! shows what is open and overdue) and by custos-alerts (the sweep that raises an alert for
//! an overdue review), so both agree. Settings `CUSTOS_REVIEW_DUE_HOURS` (default for every
//! tenant) and `CUSTOS_REVIEW_DUE_HOURS_BY_TENANT` (`tenant=hours` pairs separated by
//! commas).

use std::collections::BTreeMap;

use thiserror::Error;

/// Longest accepted review due time: one year, in hours.
pub const MAX_REVIEW_DUE_HOURS: u32 = 8_760;

/// A due-time setting that cannot be used; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct ReviewDueError(pub String);

/// The break-glass review's due time per tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewDue {
    /// Hours for tenants without an override.
    pub default_hours: u32,
    /// Hours per tenant.
    pub by_tenant: BTreeMap<String, u32>,
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ReviewDue {
    /// Parses and checks the default and the `tenant=hours,...` overrides (hours 1..=8760,
    /// tenants of 1–64 characters `A-Z a-z 0-9 . _ -`, each named once).
    pub fn parse(default_hours: u32, by_tenant: &str) -> Result<ReviewDue, ReviewDueError> {
        let bad = |m: &str| ReviewDueError(m.to_owned());
        let range = |h: u32| (1..=MAX_REVIEW_DUE_HOURS).contains(&h);
        if !range(default_hours) {
            return Err(bad("CUSTOS_REVIEW_DUE_HOURS must be 1..=8760"));
        }
        let mut map = BTreeMap::new();
        for item in by_tenant
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let Some((tenant, hours)) = item.split_once('=') else {
                return Err(bad(
                    "CUSTOS_REVIEW_DUE_HOURS_BY_TENANT must be tenant=hours pairs separated by commas",
                ));
            };
            let tenant = tenant.trim();
            if !valid_tenant(tenant) {
                return Err(bad(
                    "CUSTOS_REVIEW_DUE_HOURS_BY_TENANT: a tenant must be 1-64 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            let hours: u32 = hours
                .trim()
                .parse()
                .ok()
                .filter(|h| range(*h))
                .ok_or_else(|| bad("CUSTOS_REVIEW_DUE_HOURS_BY_TENANT: hours must be 1..=8760"))?;
            if map.insert(tenant.to_owned(), hours).is_some() {
                return Err(bad(
                    "CUSTOS_REVIEW_DUE_HOURS_BY_TENANT names a tenant twice",
                ));
            }
        }
        Ok(ReviewDue {
            default_hours,
            by_tenant: map,
        })
    }

    /// The due hours of `tenant`'s reviews.
    pub fn hours(&self, tenant: &str) -> u32 {
        self.by_tenant
            .get(tenant)
            .copied()
            .unwrap_or(self.default_hours)
    }

    /// The shortest due time of any tenant, in hours.
    pub fn shortest(&self) -> u32 {
        self.by_tenant
            .values()
            .copied()
            .chain([self.default_hours])
            .min()
            .unwrap_or(self.default_hours)
    }

    /// The due time of `tenant`'s reviews after the opening, in ms.
    pub fn due_ms(&self, tenant: &str) -> i64 {
        i64::from(self.hours(tenant)) * 3_600_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_refusals() {
        let due = ReviewDue::parse(24, "t1=12, t2=48").expect("due");
        assert_eq!(due.hours("t1"), 12);
        assert_eq!(due.hours("t2"), 48);
        assert_eq!(due.hours("other"), 24);
        assert_eq!(due.due_ms("t1"), 12 * 3_600_000);
        assert_eq!(due.shortest(), 12);
        for (default, by) in [
            (0, ""),
            (8_761, ""),
            (24, "t1"),
            (24, "t1=0"),
            (24, "t1=x"),
            (24, "t 1=2"),
            (24, "t1=2,t1=3"),
        ] {
            assert!(ReviewDue::parse(default, by).is_err(), "{default} {by:?}");
        }
    }
}
