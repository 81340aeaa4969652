package org.custos.keycloak;

import java.io.IOException;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;
import org.jboss.logging.Logger;

/**
 * Moves events from Keycloak's request threads to Kafka without making a request wait on Kafka.
 *
 * <p>{@link #submit} only offers the event to a bounded in-memory queue. A spooler thread
 * appends queued events, in order, to the durable {@link Spool} (fsync per batch); a sender
 * thread sends the spool's records to Kafka from its cursor and commits what Kafka
 * acknowledged. While Kafka is unreachable the records stay in the spool and are sent, oldest
 * first, once it returns; they survive a restart. When the queue is full, the submitting thread
 * writes the queue's content and its own event to the spool itself (same order). Events that
 * would take the spool over its byte limit are dropped and counted.
 */
final class Publisher implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(Publisher.class);
    private static final int BATCH = 500;

    private final ListenerConfig config;
    private final Spool spool;
    private final BatchSender sender;
    private final ArrayBlockingQueue<SpoolRecord> queue;
    private final Object spoolWrite = new Object();
    private final AtomicLong submitted = new AtomicLong();
    private final AtomicLong sent = new AtomicLong();
    private final AtomicLong dropped = new AtomicLong();
    private final AtomicLong sendFailures = new AtomicLong();
    private final Thread spooler;
    private final Thread senderThread;
    private volatile boolean running = true;
    private volatile boolean kafkaUp = true;
    private long lastDropWarning;
    /** Spool positions past the cursor that Kafka already acknowledged (sender thread only). */
    private final Set<String> ackedAhead = new HashSet<>();

    Publisher(ListenerConfig config, Spool spool, BatchSender sender) {
        this.config = config;
        this.spool = spool;
        this.sender = sender;
        this.queue = new ArrayBlockingQueue<>(config.queueCapacity());
        this.spooler = new Thread(this::spoolLoop, "custos-kafka-spooler");
        this.senderThread = new Thread(this::sendLoop, "custos-kafka-sender");
        spooler.setDaemon(true);
        senderThread.setDaemon(true);
    }

    /** Starts the spooler and sender threads. */
    void start() {
        long pending = spool.pendingEvents();
        if (pending > 0) {
            LOG.infof("custos-kafka: %d spooled events (%d bytes) from before the start will be sent first",
                    pending, spool.pendingBytes());
        }
        spooler.start();
        senderThread.start();
    }

    /** Hands an event over; never blocks on Kafka. */
    void submit(SpoolRecord record) {
        submitted.incrementAndGet();
        if (!running) {
            spoolNow(record);
            return;
        }
        if (queue.offer(record)) {
            LockSupport.unpark(spooler);
            return;
        }
        spoolNow(record);
    }

    /** Queue full (or shutting down): write the queue's content and {@code record} to the spool. */
    private void spoolNow(SpoolRecord record) {
        synchronized (spoolWrite) {
            List<SpoolRecord> batch = new ArrayList<>(queue.size() + 1);
            queue.drainTo(batch);
            batch.add(record);
            appendToSpool(batch);
        }
        LockSupport.unpark(senderThread);
    }

    private void appendToSpool(List<SpoolRecord> batch) {
        int appended;
        try {
            appended = spool.append(batch);
        } catch (IOException e) {
            LOG.errorf("custos-kafka: cannot write the spool in %s (%s); %d events dropped",
                    config.spoolDir(), e.getMessage(), batch.size());
            appended = 0;
        }
        if (appended < batch.size()) {
            long total = dropped.addAndGet(batch.size() - appended);
            long now = System.nanoTime();
            // At most one warning per 10 s while events are being dropped.
            if (now - lastDropWarning > TimeUnit.SECONDS.toNanos(10) || total == batch.size() - appended) {
                lastDropWarning = now;
                LOG.warnf("custos-kafka: spool full (%d bytes, limit %d) or unwritable: %d events dropped so far",
                        spool.pendingBytes(), config.maxSpoolBytes(), total);
            }
        }
    }

    private void spoolLoop() {
        List<SpoolRecord> batch = new ArrayList<>(BATCH);
        while (running || !queue.isEmpty()) {
            if (queue.isEmpty()) {
                LockSupport.parkNanos(TimeUnit.MILLISECONDS.toNanos(100));
                continue;
            }
            synchronized (spoolWrite) {
                queue.drainTo(batch, BATCH);
                appendToSpool(batch);
            }
            batch.clear();
            LockSupport.unpark(senderThread);
        }
    }

    private void sendLoop() {
        long backoffMs = 0;
        long nextStatus = System.nanoTime();
        String lastState = kafkaUp + "/" + dropped.get();
        boolean backlog = spool.pendingEvents() > 0;
        while (running) {
            long now = System.nanoTime();
            if (now >= nextStatus) {
                LOG.info(status());
                nextStatus = now + TimeUnit.SECONDS.toNanos(config.statusLogSeconds());
            }
            if (backoffMs > 0) {
                LockSupport.parkNanos(TimeUnit.MILLISECONDS.toNanos(backoffMs));
                if (!running) {
                    break;
                }
            }
            boolean failed = sendOnce();
            backoffMs = failed ? (backoffMs == 0 ? 500 : Math.min(5_000, backoffMs * 2)) : 0;
            // A status line on every change of the Kafka state or of the drop count, and when
            // the backlog of an outage is sent.
            String state = kafkaUp + "/" + dropped.get();
            if (!state.equals(lastState)) {
                LOG.info(status());
                lastState = state;
            }
            if (failed) {
                backlog = true;
            } else if (backlog && spool.pendingEvents() == 0) {
                backlog = false;
                LOG.info("custos-kafka: spool backlog sent; " + status());
            }
        }
    }

    /** Sends one batch from the spool; returns true when Kafka failed. */
    private boolean sendOnce() {
        List<Spool.Entry> entries;
        try {
            entries = spool.read(BATCH);
        } catch (IOException e) {
            LOG.errorf("custos-kafka: cannot read the spool in %s: %s", config.spoolDir(), e.getMessage());
            return true;
        }
        if (entries.isEmpty()) {
            LockSupport.parkNanos(TimeUnit.MILLISECONDS.toNanos(200));
            return false;
        }
        // Records of an earlier attempt that Kafka acknowledged while others failed (another
        // partition) are not sent again.
        List<Spool.Entry> pending = new ArrayList<>(entries.size());
        List<SpoolRecord> records = new ArrayList<>(entries.size());
        for (Spool.Entry e : entries) {
            if (!ackedAhead.contains(position(e))) {
                pending.add(e);
                records.add(e.record());
            }
        }
        boolean[] acked = records.isEmpty() ? new boolean[0] : sender.send(records);
        boolean failed = false;
        for (int i = 0; i < pending.size(); i++) {
            if (acked[i]) {
                ackedAhead.add(position(pending.get(i)));
                sent.incrementAndGet();
            } else {
                failed = true;
            }
        }
        int prefix = 0;
        while (prefix < entries.size() && ackedAhead.contains(position(entries.get(prefix)))) {
            prefix++;
        }
        if (prefix > 0) {
            try {
                spool.commit(entries.get(prefix - 1), prefix);
                for (int i = 0; i < prefix; i++) {
                    ackedAhead.remove(position(entries.get(i)));
                }
            } catch (IOException e) {
                LOG.errorf("custos-kafka: cannot write the spool cursor in %s: %s", config.spoolDir(), e.getMessage());
            }
        }
        if (failed) {
            sendFailures.incrementAndGet();
            if (kafkaUp) {
                kafkaUp = false;
                LOG.warnf("custos-kafka: Kafka at %s is unreachable (%s); events are kept in the spool %s",
                        config.bootstrapServers(), sender.lastError(), config.spoolDir());
            }
            return true;
        }
        if (!kafkaUp) {
            kafkaUp = true;
            LOG.infof("custos-kafka: Kafka at %s is reachable again; sending the spooled events", config.bootstrapServers());
        }
        return false;
    }

    private static String position(Spool.Entry e) {
        return e.segment() + ":" + e.end();
    }

    /** One status line: queue depth, spool size, sent and dropped counts, Kafka state. */
    String status() {
        return String.format(
                "custos-kafka: status kafka=%s queue_depth=%d spool_events=%d spool_bytes=%d sent=%d dropped=%d topic=%s",
                kafkaUp ? "up" : "down", queue.size(), spool.pendingEvents(), spool.pendingBytes(), sent.get(),
                dropped.get(), config.topic());
    }

    /** Events waiting in the in-memory queue. */
    int queueDepth() {
        return queue.size();
    }

    /** Events in the spool not yet acknowledged by Kafka. */
    long spoolEvents() {
        return spool.pendingEvents();
    }

    /** Bytes in the spool not yet acknowledged by Kafka. */
    long spoolBytes() {
        return spool.pendingBytes();
    }

    /** Events acknowledged by Kafka since the start. */
    long sentEvents() {
        return sent.get();
    }

    /** Events dropped because the spool was full or unwritable. */
    long droppedEvents() {
        return dropped.get();
    }

    /** Whether the last batch reached Kafka. */
    boolean kafkaUp() {
        return kafkaUp;
    }

    /**
     * Stops: every queued event is written to the spool; the sender finishes its current batch
     * (bounded by the delivery timeout); what Kafka did not acknowledge stays spooled for the
     * next start.
     */
    @Override
    public void close() {
        running = false;
        LockSupport.unpark(spooler);
        LockSupport.unpark(senderThread);
        join(spooler, 10_000);
        synchronized (spoolWrite) {
            List<SpoolRecord> rest = new ArrayList<>();
            queue.drainTo(rest);
            if (!rest.isEmpty()) {
                appendToSpool(rest);
            }
        }
        join(senderThread, config.deliveryTimeoutMs() + 5_000L);
        sender.close();
        LOG.info(status());
        try {
            spool.close();
        } catch (IOException e) {
            LOG.errorf("custos-kafka: closing the spool failed: %s", e.getMessage());
        }
    }

    private static void join(Thread t, long millis) {
        try {
            t.join(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
