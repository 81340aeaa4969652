//! The Kafka side of the pipeline.
//!
//! Guarantee: an offset is committed only after every message before it in its partition
//! was either inserted into ClickHouse (and acknowledged) or dead-lettered (and its
//! delivery acknowledged). Batches are written by one writer in the order they were cut,
//! so an acknowledgement always covers a contiguous prefix of each partition. A crash
//! before a commit replays messages; replays carry the same event identity and Kafka
//! position, and `custos.audit_events` (ReplacingMergeTree on the event key) collapses
//! them, so reports never show a duplicate.
//!
//! The consumer runs on its own OS thread: it polls, decodes and pseudonymizes (the CPU
//! work), cuts batches, and hands them to the async writer over a bounded channel. When
//! the channel is full it pauses its partitions (keeping group membership) until space
//! frees up. On partition revocation and on shutdown it flushes its batch, waits (up to a
//! deadline) for in-flight batches to be acknowledged and commits synchronously.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use custos_integrity::chain::{self, Head};
use custos_schemas::{DecodeLimits, KeyRing};
use metrics::{counter, gauge};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::batch::{Batch, BatchPolicy, PartitionKey};
use crate::chainer::Chainer;
use crate::offsets::OffsetTracker;
use crate::source::{SourceMessage, Topics};
use crate::transform::{transform, TransformSettings, Transformed};
use custos_runtime::health::Health;

pub use crate::offsets::Ack;

/// Mutable pipeline state shared by the poll loop and the rebalance callbacks (both run on
/// the consumer thread, so the lock is never contended).
struct State {
    current: Batch,
    pending: Option<Batch>,
    /// Dispatched, acknowledged and committed offsets of the assigned partitions.
    offsets: OffsetTracker,
    paused: bool,
    /// Chain head per partition (`None` inside: the chain starts at the next record).
    heads: HashMap<PartitionKey, Option<Head>>,
}

/// Shared between the poll loop and the consumer context.
pub struct Shared {
    state: Mutex<State>,
    tx: mpsc::Sender<Batch>,
    ack_rx: Mutex<std_mpsc::Receiver<Ack>>,
    drain_timeout: Duration,
    health: Arc<Health>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere on this thread; the state is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Consumer context: logs commits, exports lag, and drains on revocation.
pub struct IngestContext {
    shared: Arc<Shared>,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if p.partition >= 0 && p.consumer_lag >= 0 {
                    gauge!("custos_ingest_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            info!(partitions = tpl.count(), "partitions revoked: draining");
            let mut state = self.shared.lock();
            drain(&self.shared, &mut state, consumer);
            for e in tpl.elements() {
                state.offsets.revoke(e.topic(), e.partition());
                // Another process may write this chain before it comes back: its head is
                // looked up again (from ClickHouse) on the next message after an assignment.
                forget_head(&mut state.heads, e.topic(), e.partition());
            }
            state.paused = false;
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut state = self.shared.lock();
            for e in tpl.elements() {
                state.offsets.assign((Arc::from(e.topic()), e.partition()));
                // Reading resumes at the committed offset, which may lie before where this
                // process last chained (a drain that timed out, a failed commit): the head
                // comes from the chainer, never from memory.
                forget_head(&mut state.heads, e.topic(), e.partition());
            }
            state.paused = false;
            info!(partitions = tpl.count(), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                counter!("custos_ingest_commits_total").increment(1);
                debug!(partitions = offsets.count(), "offsets committed");
            }
            Err(e) => {
                counter!("custos_ingest_commit_failures_total").increment(1);
                warn!(error = %e, "offset commit failed");
            }
        }
    }
}

/// The Kafka consumer half of the pipeline.
pub struct ConsumerLoop {
    consumer: BaseConsumer<IngestContext>,
    shared: Arc<Shared>,
    policy: BatchPolicy,
    decoder: Decoder,
}

/// Turns messages into rows or rejections in the open batch: the source message is
/// transformed on its own ([`transform`]); only chaining and batching touch the shared
/// state.
struct Decoder {
    shared: Arc<Shared>,
    chainer: Option<Chainer>,
    keys: KeyRing,
    settings: TransformSettings,
    topics: Topics,
}

/// Builds the consumer context and its shared state.
pub fn context(
    tx: mpsc::Sender<Batch>,
    ack_rx: std_mpsc::Receiver<Ack>,
    drain_timeout: Duration,
    health: Arc<Health>,
) -> IngestContext {
    IngestContext {
        shared: Arc::new(Shared {
            state: Mutex::new(State {
                current: Batch::default(),
                pending: None,
                offsets: OffsetTracker::new(),
                paused: false,
                heads: HashMap::new(),
            }),
            tx,
            ack_rx: Mutex::new(ack_rx),
            drain_timeout,
            health,
        }),
    }
}

impl ConsumerLoop {
    /// Wraps a subscribed consumer.
    pub fn new(
        consumer: BaseConsumer<IngestContext>,
        policy: BatchPolicy,
        limits: DecodeLimits,
        keys: KeyRing,
        default_tenant: String,
        chainer: Option<Chainer>,
    ) -> Self {
        let shared = consumer.context().shared.clone();
        ConsumerLoop {
            consumer,
            shared: shared.clone(),
            policy,
            decoder: Decoder {
                shared,
                chainer,
                keys,
                settings: TransformSettings {
                    limits,
                    default_tenant,
                },
                topics: Topics::default(),
            },
        }
    }

    /// Polls until `stop` is set, then flushes, drains and commits. Returns whether every
    /// in-flight batch was acknowledged and committed.
    pub fn run(mut self, stop: &AtomicBool) -> bool {
        while !stop.load(Ordering::Relaxed) {
            {
                let mut state = self.shared.lock();
                collect_acks(&self.shared, &mut state, None);
                commit(&self.consumer, &mut state, CommitMode::Async);
                self.flow(&mut state);
            }
            match self.consumer.poll(Duration::from_millis(50)) {
                None => {}
                Some(Ok(msg)) => self.decoder.handle(&msg),
                Some(Err(e)) => {
                    counter!("custos_ingest_kafka_errors_total").increment(1);
                    warn!(error = %e, "Kafka poll error");
                }
            }
        }
        info!("stopping: flushing and committing");
        self.shared.health.set_stopping();
        let complete = {
            let mut state = self.shared.lock();
            drain(&self.shared, &mut state, &self.consumer)
        };
        self.consumer.unsubscribe();
        complete
    }

    /// Moves due batches toward the writer, pausing and resuming on backpressure.
    fn flow(&self, state: &mut State) {
        if let Some(batch) = state.pending.take() {
            match dispatch(&self.shared, state, batch) {
                None => {}
                Some(mpsc::error::TrySendError::Full(b)) => state.pending = Some(b),
                Some(mpsc::error::TrySendError::Closed(b)) => {
                    error!("writer stopped; holding batch");
                    state.pending = Some(b);
                }
            }
        }
        if state.pending.is_none() && state.current.is_due(&self.policy) {
            let batch = std::mem::take(&mut state.current);
            match dispatch(&self.shared, state, batch) {
                None => {}
                Some(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                    state.pending = Some(b)
                }
            }
        }
        let blocked = state.pending.is_some() && state.current.is_full(&self.policy);
        if blocked != state.paused {
            if let Ok(assignment) = self.consumer.assignment() {
                let result = if blocked {
                    self.consumer.pause(&assignment)
                } else {
                    self.consumer.resume(&assignment)
                };
                match result {
                    Ok(()) => {
                        state.paused = blocked;
                        debug!(paused = blocked, "backpressure");
                    }
                    Err(e) => warn!(error = %e, "pause/resume failed"),
                }
            }
        }
    }
}

impl Decoder {
    fn handle(&mut self, kafka: &BorrowedMessage<'_>) {
        let msg = SourceMessage::from_kafka(kafka, self.topics.get(kafka.topic()));
        let now_ms = chrono::Utc::now().timestamp_millis();
        let transformed = transform(&msg, &self.keys, &self.settings, now_ms);
        let mut state = self.shared.lock();
        match transformed {
            Transformed::Row(mut row) => {
                // Serialized per partition: the record links to the previous one's hash.
                if let Some(chainer) = &self.chainer {
                    let head = match state.heads.entry((msg.topic.clone(), msg.partition)) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => {
                            match chainer.head_before(&msg.topic, msg.partition, msg.offset) {
                                Ok(h) => e.insert(h),
                                // Stopping: leave the message unconsumed; it is replayed later.
                                Err(crate::chainer::Stopping) => return,
                            }
                        }
                    };
                    chain::advance(&mut row, head);
                }
                state.current.rows.push(*row);
            }
            Transformed::Rejected(rejected) => state.current.rejects.push(*rejected),
        }
        state
            .current
            .note(&msg.topic, msg.partition, msg.offset, msg.payload.len());
    }
}

/// Drops the cached chain head of `topic/partition`.
fn forget_head(heads: &mut HashMap<PartitionKey, Option<Head>>, topic: &str, partition: i32) {
    heads.retain(|(t, p), _| !(*p == partition && &**t == topic));
}

/// Hands `batch` to the writer, registered with the offset tracker under a fresh sequence
/// number; `None` once sent, else the refusal with the batch, unregistered.
fn dispatch(
    shared: &Shared,
    state: &mut State,
    mut batch: Batch,
) -> Option<mpsc::error::TrySendError<Batch>> {
    let seq = state.offsets.dispatched(&batch.next_offsets);
    batch.seq = seq;
    let refused = shared.tx.try_send(batch).err();
    if refused.is_some() {
        state.offsets.withdraw(seq);
    }
    refused
}

/// Receives acknowledgements; with a `deadline`, waits until nothing is in flight or it
/// passes.
fn collect_acks(shared: &Shared, state: &mut State, deadline: Option<Instant>) {
    let rx = shared.ack_rx.lock().unwrap_or_else(|p| p.into_inner());
    match deadline {
        Some(deadline) => {
            state
                .offsets
                .drain(deadline, |left| rx.recv_timeout(left).ok());
        }
        None => {
            while let Ok(ack) = rx.try_recv() {
                state.offsets.acknowledge(ack);
            }
        }
    }
}

/// Commits acknowledged offsets of partitions still assigned, never moving backwards.
fn commit(consumer: &BaseConsumer<IngestContext>, state: &mut State, mode: CommitMode) {
    let staged = state.offsets.committable();
    if staged.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in &staged {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            warn!(error = %e, topic = %topic, partition, "cannot stage an offset commit");
            return;
        }
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => state.offsets.committed(&staged),
        Err(e) => {
            counter!("custos_ingest_commit_failures_total").increment(1);
            warn!(error = %e, "offset commit failed; messages will be replayed and deduplicated");
        }
    }
}

/// Flushes the open batch, waits for in-flight batches (up to the drain timeout) and
/// commits synchronously. Returns whether everything was acknowledged.
fn drain(shared: &Shared, state: &mut State, consumer: &BaseConsumer<IngestContext>) -> bool {
    let deadline = Instant::now() + shared.drain_timeout;
    let mut batches = Vec::new();
    if let Some(p) = state.pending.take() {
        batches.push(p);
    }
    let current = std::mem::take(&mut state.current);
    if !current.is_empty() {
        batches.push(current);
    }
    for batch in batches {
        let mut batch = batch;
        loop {
            match dispatch(shared, state, batch) {
                None => break,
                Some(mpsc::error::TrySendError::Full(b)) => {
                    batch = b;
                    if Instant::now() >= deadline {
                        warn!("drain deadline passed with a batch unsent; it will be replayed");
                        return false;
                    }
                    // Make room: take acknowledgements of earlier batches.
                    let soon = Instant::now() + Duration::from_millis(50);
                    collect_acks(shared, state, Some(soon));
                }
                Some(mpsc::error::TrySendError::Closed(_)) => {
                    warn!("writer stopped during drain; the batch will be replayed");
                    return false;
                }
            }
        }
    }
    collect_acks(shared, state, Some(deadline));
    commit(consumer, state, CommitMode::Sync);
    let complete = state.offsets.in_flight() == 0;
    if !complete {
        warn!(
            in_flight = state.offsets.in_flight(),
            "drain deadline passed; unacknowledged batches will be replayed"
        );
    }
    complete
}
