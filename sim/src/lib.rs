//! `custos-sim`: SMART on FHIR traffic for a simulated hospital, produced to the Custos input
//! topics. Users run it to see the pipeline work (`scripts/run`, the compose `simulator`
//! service); the end-to-end tests run it to check that injected incidents reach the reports.
//!
//! [`Simulator`] is deterministic for a seed: the same [`HospitalConfig`] and seed give the
//! same messages. [`producer`] and [`produce`] send them to Kafka.
//!
//! ```
//! use custos_sim::{HospitalConfig, Simulator};
//!
//! let mut sim = Simulator::new(HospitalConfig::default(), 7);
//! let scenario = sim.next_scenario();
//! assert!(!scenario.is_empty());
//! ```

mod hard;
mod hospital;
mod incident;
mod kafka;

pub use hospital::{Dest, Format, HospitalConfig, Mix, Out, Simulator};
pub use incident::{Incident, IncidentInfo, Label, LabelKind};
pub use kafka::{produce, producer, Msg, ProduceError};
