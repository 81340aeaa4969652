package org.custos.keycloak;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Sends batches with an idempotent Kafka producer ({@code acks=all}). A failed batch closes
 * the producer; the next batch starts a fresh one.
 */
final class KafkaBatchSender implements BatchSender {
    private final ListenerConfig config;
    private KafkaProducer<byte[], byte[]> producer;
    private volatile String lastError;

    KafkaBatchSender(ListenerConfig config) {
        this.config = config;
    }

    /** The producer settings. */
    static Properties producerProperties(ListenerConfig config) {
        int request = Math.max(500, Math.min(30_000, config.deliveryTimeoutMs() / 2));
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, config.bootstrapServers());
        p.put(ProducerConfig.CLIENT_ID_CONFIG, config.clientId());
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        p.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, "5");
        p.put(ProducerConfig.RETRIES_CONFIG, Integer.toString(Integer.MAX_VALUE));
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "none");
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, Integer.toString(request));
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, Integer.toString(config.deliveryTimeoutMs()));
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, Integer.toString(request));
        p.put(ProducerConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "1000");
        p.put(ProducerConfig.METADATA_MAX_AGE_CONFIG, "60000");
        return p;
    }

    @Override
    public boolean[] send(List<SpoolRecord> records) {
        boolean[] acked = new boolean[records.size()];
        List<Future<RecordMetadata>> sent = new ArrayList<>(records.size());
        try {
            KafkaProducer<byte[], byte[]> p = producer();
            for (SpoolRecord r : records) {
                sent.add(p.send(new ProducerRecord<>(config.topic(), r.key(), r.value())));
            }
        } catch (RuntimeException e) {
            // The records not handed to the producer count as failed.
            lastError = describe(e);
        }
        if (producer != null) {
            try {
                producer.flush();
            } catch (RuntimeException e) {
                lastError = describe(e);
            }
        }
        boolean all = sent.size() == records.size();
        for (int i = 0; i < sent.size(); i++) {
            try {
                sent.get(i).get();
                acked[i] = true;
            } catch (ExecutionException e) {
                lastError = describe(e.getCause());
                all = false;
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                all = false;
                break;
            }
        }
        if (all) {
            lastError = null;
        } else {
            closeProducer(Duration.ZERO);
        }
        return acked;
    }

    private KafkaProducer<byte[], byte[]> producer() {
        if (producer == null) {
            // Kafka resolves classes through the context class loader: use the provider's.
            Thread t = Thread.currentThread();
            ClassLoader previous = t.getContextClassLoader();
            t.setContextClassLoader(KafkaBatchSender.class.getClassLoader());
            try {
                producer = new KafkaProducer<>(
                        producerProperties(config), new ByteArraySerializer(), new ByteArraySerializer());
            } finally {
                t.setContextClassLoader(previous);
            }
        }
        return producer;
    }

    private static String describe(Throwable e) {
        return e == null ? "unknown" : e.getClass().getSimpleName() + ": " + e.getMessage();
    }

    @Override
    public String lastError() {
        return lastError;
    }

    private void closeProducer(Duration timeout) {
        if (producer != null) {
            try {
                producer.close(timeout);
            } catch (RuntimeException e) {
                lastError = describe(e);
            }
            producer = null;
        }
    }

    @Override
    public void close() {
        closeProducer(Duration.ofSeconds(5));
    }
}
