//! `custos-sim`: SMART on FHIR traffic for a simulated hospital (see the `custos_sim` library):
//! clinician EHR launches, patient apps, backend services, consent grants and revocations,
//! break-glass, and injected incidents. Deterministic for a given `--seed`; paced by
//! `--rate` for `--duration` seconds or until `--events` messages were produced.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use custos_sim::{produce, producer, Dest, Format, HospitalConfig, Mix, Msg, Simulator};

#[derive(Parser)]
#[command(name = "custos-sim", about = "Custos SMART on FHIR traffic simulator")]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CUSTOS_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 2000)]
    events: u64,
    /// Stop after this many seconds (0: no time limit).
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seed: the same seed produces the same traffic.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Tenant (hospital) name.
    #[arg(long, default_value = "general")]
    tenant: String,
    /// Clinicians in the hospital.
    #[arg(long, default_value_t = 40)]
    clinicians: usize,
    /// Patients in the hospital.
    #[arg(long, default_value_t = 2000)]
    patients: usize,
    /// Share of scenarios that inject an incident (0..1).
    #[arg(long, default_value_t = 0.05)]
    incident_rate: f64,
    /// Source formats to emit.
    #[arg(long, value_enum, default_value_t = Format::Mixed)]
    format: Format,
    /// Scenario mix: `normal`, or `hard` (adds slow-and-low snooping, credential stuffing, a
    /// privileged sign-in without MFA, use after expiry, refresh-failure bursts, bulk reads,
    /// break-glass misuse, and benign traps such as two users behind one NAT and a roaming
    /// patient app, every one labelled).
    #[arg(long, value_enum, default_value_t = Mix::Normal)]
    mix: Mix,
    /// AS topic.
    #[arg(long, default_value = "custos.as-events")]
    as_topic: String,
    /// Gateway topic.
    #[arg(long, default_value = "custos.gateway-events")]
    gateway_topic: String,
    /// Consent topic.
    #[arg(long, default_value = "custos.consent-events")]
    consent_topic: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.incident_rate),
        "--incident-rate must be within 0..1"
    );
    anyhow::ensure!(
        args.clinicians > 0 && args.patients > 0,
        "--clinicians and --patients must be positive"
    );
    let p = producer(&args.brokers)?;
    let mut sim = Simulator::new(
        HospitalConfig {
            tenant: args.tenant.clone(),
            clinicians: args.clinicians,
            patients: args.patients,
            incident_rate: args.incident_rate,
            format: args.format,
            mix: args.mix,
        },
        args.seed,
    );
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let (mut sent, mut incidents) = (0u64, 0u64);
    let mut last_report = Instant::now();
    let deadline = (args.duration > 0).then(|| start + Duration::from_secs(args.duration));
    while sent < args.events && deadline.is_none_or(|d| Instant::now() < d) {
        // One chunk of scenarios, then pace.
        let mut chunk: [Vec<Msg>; 3] = Default::default();
        let mut n = 0;
        while n < 500 && sent + n < args.events {
            for o in sim.next_scenario() {
                incidents += u64::from(o.incident.is_some());
                let slot = match o.dest {
                    Dest::As => 0,
                    Dest::Gateway => 1,
                    Dest::Consent => 2,
                };
                chunk[slot].push(o.msg);
                n += 1;
            }
        }
        produce(&p, &args.as_topic, None, &chunk[0]).await?;
        produce(&p, &args.gateway_topic, None, &chunk[1]).await?;
        produce(&p, &args.consent_topic, None, &chunk[2]).await?;
        sent += n;
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        if tty && last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            let frac = (sent as f64 / args.events as f64).min(1.0);
            let width = 30;
            let filled = (frac * width as f64) as usize;
            eprint!(
                "\rcustos-sim [{}{}] {sent}/{} msgs, {incidents} incidents, {:.0} msg/s ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                args.events,
                sent as f64 / start.elapsed().as_secs_f64().max(0.001)
            );
        }
    }
    if tty {
        eprintln!();
    }
    eprintln!(
        "custos-sim: produced {sent} messages ({incidents} labelled) in {:.1}s, tenant {}, seed {}",
        start.elapsed().as_secs_f64(),
        args.tenant,
        args.seed
    );
    Ok(())
}
