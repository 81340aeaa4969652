//! Precision and recall of the detectors on the simulator's labels: which alert belongs to
//! which labelled scenario, and the counts per detector, per scenario kind and overall.
//!
//! A label names a scenario by identifiers (token id, session, subject, patient, client),
//! each given in every form it may be stored in (raw, or pseudonymized). Labels with the same
//! kind, scenario and identifiers are one case (a scenario may label several of its
//! messages); "scenario" below means such a case.
//!
//! An alert matches a scenario when the tenant is the same, the alert's detector is one the
//! scenario expects (any detector for a benign one), and either one of the scenario's
//! labelled messages is among the alert's evidence (its event keys), or the first identifier
//! that both the alert and the scenario carry, in the order token id, session, subject,
//! patient, client, is equal. The evidence catches an incident merged into an alert opened
//! by an earlier one (one alert per user and day, say); taking the most specific shared
//! identifier keeps an alert about one token from matching another scenario of the same
//! user or app.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One labelled scenario, as the scorer sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Label {
    /// Scenario kind (e.g. `new_ip`).
    pub kind: String,
    /// Tenant.
    pub tenant: String,
    /// The simulator's scenario it belongs to (labels of one scenario with the same
    /// identifiers are one case).
    pub scenario: String,
    /// An alert on it is false (a benign trap).
    pub benign: bool,
    /// Detectors whose alert on it is a true positive.
    pub detectors: Vec<String>,
    /// Token id forms (empty: not part of the scenario).
    pub jti: Vec<String>,
    /// Session id forms.
    pub session: Vec<String>,
    /// Subject forms.
    pub subject: Vec<String>,
    /// Patient forms.
    pub patient: Vec<String>,
    /// Client forms.
    pub client: Vec<String>,
    /// Event keys of the labelled messages.
    pub events: Vec<String>,
}

/// What the scorer reads of an alert (its latest revision).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertView {
    /// Alert id.
    pub alert_id: String,
    /// Tenant.
    pub tenant: String,
    /// Detector name.
    pub detector: String,
    /// `token_jti` of the first evidence row.
    pub token_jti: String,
    /// `session_id` of the first evidence row.
    pub session_id: String,
    /// `subject` (stored `user_sub`) of the first evidence row.
    pub subject: String,
    /// Patient pseudonym of the first evidence row.
    pub patient: String,
    /// `client_id` of the first evidence row.
    pub client_id: String,
    /// Event keys of the evidence rows it lists.
    pub evidence: Vec<String>,
}

/// Whether `alert` is about the scenario `label` (see the module docs).
pub fn matches(label: &Label, alert: &AlertView) -> bool {
    if label.tenant != alert.tenant {
        return false;
    }
    if !label.benign && !label.detectors.contains(&alert.detector) {
        return false;
    }
    if alert.evidence.iter().any(|e| label.events.contains(e)) {
        return true;
    }
    let pairs: [(&[String], &str); 5] = [
        (&label.jti, &alert.token_jti),
        (&label.session, &alert.session_id),
        (&label.subject, &alert.subject),
        (&label.patient, &alert.patient),
        (&label.client, &alert.client_id),
    ];
    for (forms, value) in pairs {
        if !forms.is_empty() && !value.is_empty() {
            return forms.iter().any(|f| f == value);
        }
    }
    false
}

/// Counts of one detector.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DetectorScore {
    /// True incidents that expect this detector.
    pub expected: usize,
    /// Of those, found by an alert of this detector.
    pub found: usize,
    /// Alerts raised by this detector.
    pub alerts: usize,
    /// Of those, matching a true incident.
    pub true_alerts: usize,
    /// Of those, matching a benign trap (and no true incident).
    pub on_traps: usize,
}

/// Counts of one scenario kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindScore {
    /// Benign trap (alerts on it are false).
    pub benign: bool,
    /// Scenarios of this kind.
    pub injected: usize,
    /// True incidents: found by an expected detector. Traps: with at least one alert.
    pub alerted: usize,
    /// Alerts matching scenarios of this kind.
    pub alerts: usize,
}

/// The whole score.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    /// True incidents (scenarios, not labelled messages).
    pub incidents: usize,
    /// Of those, found by at least one expected detector.
    pub found: usize,
    /// Distinct alerts.
    pub alerts: usize,
    /// Of those, matching a true incident.
    pub true_alerts: usize,
    /// Of those, matching a benign trap and no true incident.
    pub alerts_on_traps: usize,
    /// Benign traps.
    pub traps: usize,
    /// By detector name (every detector named by a label or an alert).
    pub by_detector: BTreeMap<String, DetectorScore>,
    /// By scenario kind.
    pub by_kind: BTreeMap<String, KindScore>,
}

impl Score {
    /// Recall: incidents found / injected (1 when none were injected).
    pub fn recall(&self) -> f64 {
        ratio(self.found, self.incidents)
    }

    /// Precision: alerts matching an incident / all alerts (1 when there were none).
    pub fn precision(&self) -> f64 {
        ratio(self.true_alerts, self.alerts)
    }

    /// Adds another run's counts (other seeds, other mixes) to this one.
    pub fn add(&mut self, other: &Score) {
        self.incidents += other.incidents;
        self.found += other.found;
        self.alerts += other.alerts;
        self.true_alerts += other.true_alerts;
        self.alerts_on_traps += other.alerts_on_traps;
        self.traps += other.traps;
        for (d, s) in &other.by_detector {
            let e = self.by_detector.entry(d.clone()).or_default();
            e.expected += s.expected;
            e.found += s.found;
            e.alerts += s.alerts;
            e.true_alerts += s.true_alerts;
            e.on_traps += s.on_traps;
        }
        for (k, s) in &other.by_kind {
            let e = self.by_kind.entry(k.clone()).or_default();
            e.benign = s.benign;
            e.injected += s.injected;
            e.alerted += s.alerted;
            e.alerts += s.alerts;
        }
    }
}

/// `n / d`, or 1 when `d` is 0.
pub fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 {
        1.0
    } else {
        n as f64 / d as f64
    }
}

/// Labels of one scenario merged: one label per kind and identifiers, with every event.
pub fn scenarios(labels: &[Label]) -> Vec<Label> {
    let mut merged: BTreeMap<Label, BTreeSet<String>> = BTreeMap::new();
    for l in labels {
        let key = Label {
            events: Vec::new(),
            ..l.clone()
        };
        merged
            .entry(key)
            .or_default()
            .extend(l.events.iter().cloned());
    }
    merged
        .into_iter()
        .map(|(l, events)| Label {
            events: events.into_iter().collect(),
            ..l
        })
        .collect()
}

/// Scores `alerts` against `labels` (labels of one scenario are merged first).
pub fn score(labels: &[Label], alerts: &[AlertView]) -> Score {
    let merged = scenarios(labels);
    let scenarios: Vec<&Label> = merged.iter().collect();
    let mut s = Score::default();
    // Which detectors found each true scenario, and how many alerts each scenario drew.
    let mut found_by: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); scenarios.len()];
    let mut alerted = vec![false; scenarios.len()];
    let mut drew: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for (n, a) in alerts.iter().enumerate() {
        let hits: Vec<usize> = (0..scenarios.len())
            .filter(|&i| matches(scenarios[i], a))
            .collect();
        let is_true = hits.iter().any(|&i| !scenarios[i].benign);
        let d = s.by_detector.entry(a.detector.clone()).or_default();
        d.alerts += 1;
        s.alerts += 1;
        if is_true {
            d.true_alerts += 1;
            s.true_alerts += 1;
        } else if !hits.is_empty() {
            d.on_traps += 1;
            s.alerts_on_traps += 1;
        }
        for &i in &hits {
            // A true alert is not also counted against a trap it happens to match.
            if scenarios[i].benign != is_true {
                drew.entry(&scenarios[i].kind).or_default().insert(n);
                alerted[i] = true;
            }
            if !scenarios[i].benign {
                found_by[i].insert(a.detector.as_str());
            }
        }
    }
    for (i, l) in scenarios.iter().enumerate() {
        let k = s.by_kind.entry(l.kind.clone()).or_default();
        k.benign = l.benign;
        k.injected += 1;
        k.alerts = drew.get(l.kind.as_str()).map_or(0, BTreeSet::len);
        if l.benign {
            s.traps += 1;
            k.alerted += usize::from(alerted[i]);
            continue;
        }
        s.incidents += 1;
        let found = !found_by[i].is_empty();
        s.found += usize::from(found);
        k.alerted += usize::from(found);
        for det in &l.detectors {
            let d = s.by_detector.entry(det.clone()).or_default();
            d.expected += 1;
            d.found += usize::from(found_by[i].contains(det.as_str()));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(kind: &str, benign: bool, detectors: &[&str]) -> Label {
        Label {
            kind: kind.to_owned(),
            tenant: "t".to_owned(),
            scenario: kind.to_owned(),
            benign,
            detectors: detectors.iter().map(|d| (*d).to_owned()).collect(),
            jti: Vec::new(),
            session: Vec::new(),
            subject: Vec::new(),
            patient: Vec::new(),
            client: Vec::new(),
            events: Vec::new(),
        }
    }

    fn alert(id: &str, detector: &str) -> AlertView {
        AlertView {
            alert_id: id.to_owned(),
            tenant: "t".to_owned(),
            detector: detector.to_owned(),
            ..AlertView::default()
        }
    }

    #[test]
    fn the_most_specific_shared_identifier_decides() {
        let mut l = label("new_ip", false, &["token_multi_origin"]);
        l.jti = vec!["at-1".into()];
        l.subject = vec!["dr-001".into()];
        let mut a = alert("a", "token_multi_origin");
        a.subject = "dr-001".into();
        assert!(matches(&l, &a), "only the subject is shared, and it agrees");
        a.token_jti = "at-2".into();
        assert!(!matches(&l, &a), "another token of the same user");
        a.token_jti = "at-1".into();
        assert!(matches(&l, &a));
        a.detector = "volume".into();
        assert!(!matches(&l, &a), "a detector the incident does not expect");
        a.detector = "token_multi_origin".into();
        a.tenant = "u".into();
        assert!(!matches(&l, &a), "another tenant");
        // Any form of an identifier matches (raw or pseudonymized).
        let mut p = label("refresh_failure_burst", false, &["refresh_failure_burst"]);
        p.subject = vec!["psub-1".into(), "ps:k1.abcd".into()];
        let mut b = alert("b", "refresh_failure_burst");
        b.subject = "ps:k1.abcd".into();
        b.token_jti = "rt-9".into();
        assert!(
            matches(&p, &b),
            "the label has no token id, the subject decides"
        );
        // Nothing shared: no match.
        let mut c = alert("c", "refresh_failure_burst");
        assert!(!matches(&p, &c));
        // Unless a labelled message is among the alert's evidence.
        p.events = vec!["ek-1".into(), "ek-2".into()];
        c.evidence = vec!["ek-0".into(), "ek-2".into()];
        assert!(matches(&p, &c));
        c.detector = "refresh_reuse".into();
        assert!(
            !matches(&p, &c),
            "evidence of a detector the incident does not expect"
        );
    }

    #[test]
    fn counts_recall_precision_and_alerts_on_traps() {
        let mut inc = label("access_after_revocation", false, &["aacr", "uar"]);
        inc.jti = vec!["at-1".into()];
        let mut inc2 = inc.clone();
        inc.events = vec!["ek-1".into()];
        inc2.events = vec!["ek-2".into()];
        let mut missed = label("scope_escalation_denied", false, &["scope_escalation"]);
        missed.jti = vec!["at-2".into()];
        let mut trap = label("roaming", true, &[]);
        trap.jti = vec!["at-3".into()];
        // The same scenario labelled on two messages counts once.
        let labels = vec![inc, inc2, missed, trap.clone(), trap];
        let merged = scenarios(&labels);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].events, ["ek-1", "ek-2"]);
        let with_jti = |id: &str, det: &str, jti: &str| {
            let mut a = alert(id, det);
            a.token_jti = jti.into();
            a
        };
        let alerts = vec![
            with_jti("1", "aacr", "at-1"),
            with_jti("2", "uar", "at-1"),
            with_jti("3", "token_multi_origin", "at-3"),
            with_jti("4", "volume", "at-4"),
        ];
        let s = score(&labels, &alerts);
        assert_eq!((s.incidents, s.found, s.traps), (2, 1, 1));
        assert_eq!((s.alerts, s.true_alerts, s.alerts_on_traps), (4, 2, 1));
        assert!((s.recall() - 0.5).abs() < 1e-9);
        assert!((s.precision() - 0.5).abs() < 1e-9);
        assert_eq!(s.by_detector["aacr"].expected, 1);
        assert_eq!(s.by_detector["aacr"].found, 1);
        assert_eq!(s.by_detector["uar"].true_alerts, 1);
        assert_eq!(s.by_detector["scope_escalation"].found, 0);
        assert_eq!(s.by_detector["token_multi_origin"].on_traps, 1);
        assert_eq!(s.by_detector["volume"].alerts, 1);
        assert_eq!(s.by_detector["volume"].true_alerts, 0);
        let roaming = &s.by_kind["roaming"];
        assert_eq!(
            (roaming.injected, roaming.alerted, roaming.alerts),
            (1, 1, 1)
        );
        let aar = &s.by_kind["access_after_revocation"];
        assert_eq!((aar.injected, aar.alerted, aar.alerts), (1, 1, 2));
        let mut total = Score::default();
        total.add(&s);
        total.add(&s);
        assert_eq!((total.incidents, total.found, total.alerts), (4, 2, 8));
        assert_eq!(total.by_kind["roaming"].injected, 2);
    }
}
