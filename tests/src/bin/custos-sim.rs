//! `custos-sim`: produces sample traffic for the demo and for manual testing: one event of
//! every type, in every accepted format, plus `--events` FHIR accesses by a few clinicians
//! over a few patients. Deterministic for a given `--seed`.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use custos_tests::events::{self, Raw};
use custos_tests::{produce, producer, Msg};

#[derive(Parser)]
#[command(name = "custos-sim", about = "Custos sample traffic")]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CUSTOS_KAFKA_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Number of FHIR access events.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Seed for the identifiers.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Gateway topic.
    #[arg(long, default_value = "custos.gateway-events")]
    gateway_topic: String,
    /// AS topic.
    #[arg(long, default_value = "custos.as-events")]
    as_topic: String,
    /// Consent topic.
    #[arg(long, default_value = "custos.consent-events")]
    consent_topic: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    std::env::set_var("CUSTOS_KAFKA_BROKERS", &args.brokers);
    let p = producer()?;
    let start = Instant::now();
    let run = format!("sim{}", args.seed);
    let raw = Raw::new(&format!("{run}-demo"));
    let mut gateway = Vec::new();
    let mut as_events = Vec::new();
    let mut consent = Vec::new();
    for (_, v) in events::every_type(&run, &raw) {
        let ty = v["type"].as_str().unwrap_or_default().to_owned();
        let m = Msg::json(&v);
        if ty.starts_with("custos.consent") {
            consent.push(m);
        } else if ty == "custos.fhir.access" || ty == "custos.breakglass.opened" {
            gateway.push(m);
        } else {
            as_events.push(m);
        }
    }
    let bin = events::fhir_access(&format!("{run}-bin"), &raw);
    gateway.push(events::binary(
        &format!("{run}-bin"),
        "custos.fhir.access",
        &bin["data"],
    ));
    for n in 0..args.events {
        gateway.push(events::bulk(&run, n));
    }
    produce(&p, &args.gateway_topic, None, &gateway).await?;
    produce(&p, &args.as_topic, None, &as_events).await?;
    produce(&p, &args.consent_topic, None, &consent).await?;
    eprintln!(
        "custos-sim: produced {} events in {:.1}s (patient of the demo scenario: {})",
        gateway.len() + as_events.len() + consent.len(),
        start.elapsed().as_secs_f64(),
        raw.patient
    );
    Ok(())
}
