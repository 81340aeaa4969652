package org.custos.keycloak;

import io.micrometer.core.instrument.FunctionCounter;
import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.Meter;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Metrics;
import java.util.ArrayList;
import java.util.List;
import org.jboss.logging.Logger;

/**
 * Registers the publisher's gauges and counters with Micrometer's global registry, which
 * Keycloak exports on its management interface ({@code /metrics}) when metrics are enabled:
 * {@code custos_kafka_queue_depth}, {@code custos_kafka_spool_events},
 * {@code custos_kafka_spool_bytes}, {@code custos_kafka_sent_events_total},
 * {@code custos_kafka_dropped_events_total}, {@code custos_kafka_up}.
 */
final class PublisherMetrics implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(PublisherMetrics.class);

    private final MeterRegistry registry;
    private final List<Meter> meters = new ArrayList<>();

    private PublisherMetrics(MeterRegistry registry, Publisher p) {
        this.registry = registry;
        meters.add(Gauge.builder("custos.kafka.queue.depth", p, Publisher::queueDepth)
                .description("Keycloak events waiting in the in-memory queue")
                .register(registry));
        meters.add(Gauge.builder("custos.kafka.spool.events", p, Publisher::spoolEvents)
                .description("Keycloak events in the spool not yet acknowledged by Kafka")
                .register(registry));
        meters.add(Gauge.builder("custos.kafka.spool.bytes", p, Publisher::spoolBytes)
                .description("Bytes in the spool not yet acknowledged by Kafka")
                .baseUnit("bytes")
                .register(registry));
        meters.add(Gauge.builder("custos.kafka.up", p, x -> x.kafkaUp() ? 1 : 0)
                .description("1 when the last batch reached Kafka")
                .register(registry));
        meters.add(FunctionCounter.builder("custos.kafka.sent.events", p, Publisher::sentEvents)
                .description("Keycloak events acknowledged by Kafka")
                .register(registry));
        meters.add(FunctionCounter.builder("custos.kafka.dropped.events", p, Publisher::droppedEvents)
                .description("Keycloak events dropped because the spool was full or unwritable")
                .register(registry));
    }

    /** Registers the meters, or returns null when Micrometer is not available. */
    static PublisherMetrics register(Publisher publisher) {
        try {
            return new PublisherMetrics(Metrics.globalRegistry, publisher);
        } catch (LinkageError | RuntimeException e) {
            LOG.infof("custos-kafka: Micrometer not available (%s); status is logged only", e.getClass().getSimpleName());
            return null;
        }
    }

    @Override
    public void close() {
        for (Meter m : meters) {
            registry.remove(m);
        }
        meters.clear();
    }
}
