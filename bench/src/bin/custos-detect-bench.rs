//! `custos-detect-bench`: the detectors' cost per event and their precision and recall on the
//! simulator's labelled incidents (issue 17 item 4). No servers: the `custos-detect` engine
//! runs in this process on the simulator's messages, decoded and turned into audit rows as
//! the ingest does (`custos_schemas::decode`, `RowContext::audit_row`, a fixed pseudonym key).
//!
//! 1. **Cost per event.** Generates `--cost-events` (1,000,000) messages of the default mix
//!    (seed `--seed`), decodes them and builds their rows up front, then feeds them to a fresh
//!    engine `--repeats` (5) times. Only `Engine::observe` is timed (in blocks of 1,024 calls);
//!    the watermark moves every 1,024 events, outside the timed blocks (and timed apart).
//!    Reports ns/event per repeat and the median.
//! 2. **Precision and recall.** Runs a fresh engine over `--score-events` (200,000) messages
//!    of the default mix at `--seed` (7) and of the hard mix at each of `--hard-seeds`
//!    (1,2,3), moves the watermark to the end plus a day so timed rules fire, and matches
//!    each alert (its latest revision) to the labels (`custos_bench::score`). Reports, per
//!    run and for the hard seeds together: incidents found / injected (recall), alerts
//!    matching an incident / all alerts (precision), per detector and per scenario kind, and
//!    the alerts on benign traps by kind.
//!
//! ```sh
//! cargo build --release -p custos-bench --bin custos-detect-bench
//! target/release/custos-detect-bench            # readable tables
//! target/release/custos-detect-bench --json     # one JSON document
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use custos_bench::score::{matches, ratio, scenarios, score, AlertView, Label, Score};
use custos_detect::{AlertUpdate, Engine, ParamSet};
use custos_schemas::row::RowContext;
use custos_schemas::{AuditRow, DecodeLimits, KafkaPosition, KeyRing, PseudonymKind};
use custos_sim::{Dest, HospitalConfig, Label as SimLabel, Mix, Simulator};
use serde_json::json;

/// Events between two watermark moves.
const BLOCK: usize = 1024;
/// Allowed lateness: the watermark trails the latest event time by this much.
const LATENESS_MS: i64 = 60_000;
/// The fixed pseudonym key of the bench (not a secret: it only pseudonymizes simulated ids).
const KEY: &str = "bench=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[derive(Parser)]
#[command(
    name = "custos-detect-bench",
    about = "Custos detectors: cost per event and precision/recall on the simulator's labels"
)]
struct Args {
    /// Messages of the default mix timed for the cost per event.
    #[arg(long, default_value_t = 1_000_000)]
    cost_events: usize,
    /// Timed passes over them (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Messages per precision/recall run.
    #[arg(long, default_value_t = 200_000)]
    score_events: usize,
    /// Seed of the default mix (cost and precision/recall).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Seeds of the hard mix, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    hard_seeds: Vec<u64>,
    /// Detector parameters, a JSON file in the `ParamSet` form (default: built-in).
    #[arg(long)]
    params: Option<PathBuf>,
    /// Skip the cost measurement.
    #[arg(long)]
    skip_cost: bool,
    /// Skip precision and recall.
    #[arg(long)]
    skip_score: bool,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// List up to this many alerts per run that match no incident (to stderr), and the
    /// incidents no alert found.
    #[arg(long, default_value_t = 0)]
    show_misses: usize,
}

/// A simulator label with the event key of the message it labels.
type Labelled = (SimLabel, String);

/// One simulated message, decoded, as the engine sees it.
struct Item {
    event: custos_schemas::event::Event,
    row: AuditRow,
}

/// `n` messages of the simulator, decoded into events and rows, with their labels.
fn generate(mix: Mix, seed: u64, n: usize, keys: &KeyRing) -> Result<(Vec<Item>, Vec<Labelled>)> {
    let cfg = HospitalConfig {
        mix,
        ..HospitalConfig::default()
    };
    let tenant = cfg.tenant.clone();
    let ctx = RowContext {
        keys,
        default_tenant: &tenant,
    };
    let mut sim = Simulator::new(cfg, seed);
    let mut items = Vec::with_capacity(n);
    let mut labels = Vec::new();
    let mut offsets = [0i64; 3];
    let limits = DecodeLimits::default();
    while items.len() < n {
        for o in sim.next_scenario() {
            let (topic, slot) = match o.dest {
                Dest::As => ("custos.as-events", 0),
                Dest::Gateway => ("custos.gateway-events", 1),
                Dest::Consent => ("custos.consent-events", 2),
            };
            let headers: Vec<(&str, &[u8])> = o
                .msg
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            let event = custos_schemas::decode(&o.msg.payload, &headers, &limits)
                .with_context(|| format!("decoding {}", String::from_utf8_lossy(&o.msg.payload)))?;
            let pos = KafkaPosition {
                topic: topic.to_owned(),
                partition: 0,
                offset: offsets[slot],
            };
            offsets[slot] += 1;
            let time = event.time.timestamp_millis();
            let row = ctx.audit_row(&event, &pos, time);
            if let Some(l) = o.label {
                labels.push((l, row.event_key.clone()));
            }
            items.push(Item { event, row });
        }
    }
    Ok((items, labels))
}

/// The scorer's view of a label: every identifier in the forms a row may store it in.
fn label((info, event_key): &Labelled, keys: &KeyRing) -> Label {
    let one = |v: &str| {
        if v.is_empty() {
            Vec::new()
        } else {
            vec![v.to_owned()]
        }
    };
    let with_pseudonym = |v: &str, kind: PseudonymKind| {
        if v.is_empty() {
            Vec::new()
        } else {
            vec![v.to_owned(), keys.pseudonymize(&info.tenant, kind, v)]
        }
    };
    Label {
        kind: info.kind.as_str().to_owned(),
        tenant: info.tenant.clone(),
        scenario: info.scenario.clone(),
        benign: info.benign,
        detectors: info.detectors.iter().map(|d| (*d).to_owned()).collect(),
        jti: one(&info.jti),
        session: one(&info.session),
        subject: with_pseudonym(&info.sub, PseudonymKind::Subject),
        patient: with_pseudonym(&info.patient, PseudonymKind::Patient),
        client: one(&info.client_id),
        events: vec![event_key.clone()],
    }
}

fn view(a: &AlertUpdate) -> AlertView {
    AlertView {
        alert_id: a.alert_id.clone(),
        tenant: a.tenant.clone(),
        detector: a.detector.as_str().to_owned(),
        token_jti: a.token_jti.clone(),
        session_id: a.session_id.clone(),
        subject: a.subject.clone(),
        patient: a.patient.clone(),
        client_id: a.client_id.clone(),
        evidence: a.evidence.clone(),
    }
}

/// Runs a fresh engine over `items`; returns the latest revision of every alert, with the
/// evidence keys of all its revisions (an alert closed for idleness and raised again keeps
/// its id, so the store shows one alert).
fn run(params: &ParamSet, items: &[Item]) -> Vec<AlertUpdate> {
    let mut engine = Engine::new(params.clone());
    let mut alerts: BTreeMap<String, (AlertUpdate, BTreeSet<String>)> = BTreeMap::new();
    let mut keep = |updates: Vec<AlertUpdate>| {
        for u in updates {
            let e = alerts
                .entry(u.alert_id.clone())
                .or_insert_with(|| (u.clone(), BTreeSet::new()));
            e.1.extend(u.evidence.iter().cloned());
            e.0 = u;
        }
    };
    let mut max_t = i64::MIN;
    for block in items.chunks(BLOCK) {
        for it in block {
            max_t = max_t.max(it.row.event_time);
            keep(engine.observe(&it.event, &it.row));
        }
        keep(engine.advance(max_t - LATENESS_MS));
    }
    keep(engine.advance(max_t + 86_400_000));
    keep(engine.open_alerts());
    alerts
        .into_values()
        .map(|(mut a, evidence)| {
            a.evidence = evidence.into_iter().collect();
            a
        })
        .collect()
}

/// CPU time of the calling thread so far, ns (the scheduler's run time in
/// `/proc/thread-self/schedstat`), if readable.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One timed pass: ns per event of `observe` alone (wall clock, and this thread's CPU time,
/// which a busy machine inflates less), of `observe` plus the watermark moves (wall), and
/// the alert updates it produced.
fn timed_pass(params: &ParamSet, items: &[Item]) -> (f64, Option<f64>, f64, usize) {
    let mut engine = Engine::new(params.clone());
    let (mut observe, mut advance) = (Duration::ZERO, Duration::ZERO);
    let mut cpu: Option<u64> = Some(0);
    let mut updates = 0usize;
    let mut max_t = i64::MIN;
    for block in items.chunks(BLOCK) {
        let cpu_start = thread_cpu_ns();
        let start = Instant::now();
        for it in block {
            updates += engine.observe(&it.event, &it.row).len();
        }
        observe += start.elapsed();
        cpu = match (cpu, cpu_start, thread_cpu_ns()) {
            (Some(c), Some(a), Some(b)) => Some(c + b.saturating_sub(a)),
            _ => None,
        };
        for it in block {
            max_t = max_t.max(it.row.event_time);
        }
        let start = Instant::now();
        updates += engine.advance(max_t - LATENESS_MS).len();
        advance += start.elapsed();
    }
    let n = items.len().max(1) as f64;
    (
        observe.as_nanos() as f64 / n,
        cpu.map(|c| c as f64 / n),
        (observe + advance).as_nanos() as f64 / n,
        updates,
    )
}

/// Prints (to stderr) up to `n` alerts matching no true incident, and up to `n` incidents
/// no alert found.
fn show_misses(labels: &[Label], alerts: &[AlertUpdate], views: &[AlertView], n: usize) {
    let merged = scenarios(labels);
    let mut shown = 0;
    for (a, v) in alerts.iter().zip(views) {
        let hits: Vec<&Label> = merged.iter().filter(|l| matches(l, v)).collect();
        if hits.iter().any(|l| !l.benign) || shown >= n {
            continue;
        }
        shown += 1;
        let on: Vec<&str> = hits.iter().map(|l| l.kind.as_str()).collect();
        eprintln!(
            "false alert {} {} sub={} client={} jti={} session={} evidence={} on {:?}: {}",
            v.detector,
            a.severity.as_str(),
            v.subject,
            v.client_id,
            v.token_jti,
            v.session_id,
            a.evidence_count,
            on,
            a.summary
        );
    }
    let mut shown = 0;
    for l in merged.iter().filter(|l| !l.benign) {
        if shown < n && !views.iter().any(|v| matches(l, v)) {
            shown += 1;
            eprintln!(
                "missed {} sub={:?} jti={:?} patient={:?} client={:?}",
                l.kind,
                l.subject.first(),
                l.jti.first(),
                l.patient.first(),
                l.client.first()
            );
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn pct(n: usize, d: usize) -> String {
    format!("{:.3} ({n}/{d})", ratio(n, d))
}

fn print_score(title: &str, s: &Score) {
    println!("\n{title}");
    println!(
        "  recall {}   precision {}   alerts on benign traps {} (traps {})",
        pct(s.found, s.incidents),
        pct(s.true_alerts, s.alerts),
        s.alerts_on_traps,
        s.traps
    );
    println!(
        "  {:<34} {:>8} {:>6} {:>7} {:>7} {:>6} {:>7} {:>9}",
        "detector", "expected", "found", "recall", "alerts", "true", "traps", "precision"
    );
    for (d, x) in &s.by_detector {
        println!(
            "  {:<34} {:>8} {:>6} {:>7.3} {:>7} {:>6} {:>7} {:>9.3}",
            d,
            x.expected,
            x.found,
            ratio(x.found, x.expected),
            x.alerts,
            x.true_alerts,
            x.on_traps,
            ratio(x.true_alerts, x.alerts)
        );
    }
    println!(
        "  {:<34} {:>8} {:>8} {:>8} {:>7}",
        "scenario kind", "kind", "injected", "alerted", "alerts"
    );
    for (k, x) in &s.by_kind {
        println!(
            "  {:<34} {:>8} {:>8} {:>8} {:>7}",
            k,
            if x.benign { "benign" } else { "incident" },
            x.injected,
            x.alerted,
            x.alerts
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let params = match &args.params {
        Some(p) => ParamSet::from_json(&std::fs::read_to_string(p)?)?,
        None => ParamSet::default(),
    };
    let keys = KeyRing::parse(KEY, None)?;
    let mut doc = json!({"load_before": loadavg(), "seed": args.seed});

    if !args.skip_cost {
        let start = Instant::now();
        let (items, _) = generate(Mix::Normal, args.seed, args.cost_events, &keys)?;
        let prep = start.elapsed().as_secs_f64();
        let mut observe = Vec::new();
        let mut cpu = Vec::new();
        let mut total = Vec::new();
        let mut updates = 0;
        for r in 0..args.repeats {
            let (o, c, t, u) = timed_pass(&params, &items);
            if !args.json {
                eprintln!(
                    "cost pass {}: observe {o:.0} ns/event (CPU {}), with advance {t:.0} ns/event; load {}",
                    r + 1,
                    c.map_or("-".to_owned(), |c| format!("{c:.0}")),
                    loadavg()
                );
            }
            observe.push(o);
            cpu.extend(c);
            total.push(t);
            updates = u;
        }
        let (p50, p50_total) = (median(&observe), median(&total));
        let p50_cpu = (!cpu.is_empty()).then(|| median(&cpu));
        if !args.json {
            println!(
                "cost per event (default mix, seed {}, {} events, {} passes; decode and rows untimed, {prep:.1} s):",
                args.seed,
                items.len(),
                args.repeats
            );
            println!(
                "  observe p50 {p50:.0} ns/event (passes {}), observe + advance p50 {p50_total:.0} ns/event; target <= 2000 ns: {}",
                observe.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
                if p50 <= 2000.0 { "met" } else { "not met" }
            );
            if let Some(c) = p50_cpu {
                println!(
                    "  observe CPU time p50 {c:.0} ns/event (passes {})",
                    cpu.iter()
                        .map(|v| format!("{v:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            println!("  {updates} alert updates per pass; load {}", loadavg());
        }
        doc["cost"] = json!({"events": items.len(), "repeats": args.repeats,
            "observe_ns_per_event": observe, "observe_ns_p50": p50,
            "observe_cpu_ns_per_event": cpu, "observe_cpu_ns_p50": p50_cpu,
            "with_advance_ns_per_event": total, "with_advance_ns_p50": p50_total,
            "alert_updates_per_pass": updates, "load_after": loadavg()});
    }

    if !args.skip_score {
        let mut runs = Vec::new();
        let mut hard_total = Score::default();
        let mut plan = vec![(Mix::Normal, args.seed)];
        plan.extend(args.hard_seeds.iter().map(|s| (Mix::Hard, *s)));
        for (mix, seed) in plan {
            let (items, infos) = generate(mix, seed, args.score_events, &keys)?;
            let alerts = run(&params, &items);
            let labels: Vec<Label> = infos.iter().map(|i| label(i, &keys)).collect();
            let views: Vec<AlertView> = alerts.iter().map(view).collect();
            let s = score(&labels, &views);
            if args.show_misses > 0 {
                show_misses(&labels, &alerts, &views, args.show_misses);
            }
            let name = match mix {
                Mix::Normal => "normal",
                Mix::Hard => "hard",
            };
            if !args.json {
                print_score(
                    &format!("{name} mix, seed {seed}, {} events:", items.len()),
                    &s,
                );
            }
            if mix == Mix::Hard {
                hard_total.add(&s);
            }
            runs.push(json!({"mix": name, "seed": seed, "events": items.len(),
                "recall": s.recall(), "precision": s.precision(), "score": s}));
        }
        if args.hard_seeds.len() > 1 && !args.json {
            print_score(
                &format!("hard mix, seeds {:?} together:", args.hard_seeds),
                &hard_total,
            );
        }
        doc["runs"] = json!(runs);
        doc["hard_total"] = json!({"recall": hard_total.recall(),
            "precision": hard_total.precision(), "score": hard_total});
    }
    doc["load_after"] = json!(loadavg());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "\nload average before {}, after {}",
            doc["load_before"], doc["load_after"]
        );
    }
    Ok(())
}
