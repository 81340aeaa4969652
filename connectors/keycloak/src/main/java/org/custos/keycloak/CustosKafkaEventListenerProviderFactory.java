package org.custos.keycloak;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.List;
import org.jboss.logging.Logger;
import org.keycloak.Config;
import org.keycloak.events.EventListenerProvider;
import org.keycloak.events.EventListenerProviderFactory;
import org.keycloak.models.KeycloakSession;
import org.keycloak.models.KeycloakSessionFactory;
import org.keycloak.provider.ProviderConfigProperty;
import org.keycloak.provider.ProviderConfigurationBuilder;

/**
 * The {@code custos-kafka} event listener: publishes every user and admin event of the realms
 * that list it to Kafka for Custos. One publisher (queue, spool, producer) per Keycloak node.
 */
public final class CustosKafkaEventListenerProviderFactory implements EventListenerProviderFactory {
    /** The provider id realms list in their event listeners. */
    public static final String ID = "custos-kafka";

    private static final Logger LOG = Logger.getLogger(CustosKafkaEventListenerProviderFactory.class);

    private ListenerConfig config;
    private Publisher publisher;
    private PublisherMetrics metrics;

    /** Creates the factory; Keycloak calls {@link #init} next. */
    public CustosKafkaEventListenerProviderFactory() {}

    @Override
    public String getId() {
        return ID;
    }

    @Override
    public void init(Config.Scope scope) {
        config = ListenerConfig.from(scope::get, System::getenv, System.getProperty("kc.home.dir"));
    }

    @Override
    public void postInit(KeycloakSessionFactory factory) {
        Spool spool;
        try {
            spool = new Spool(config.spoolDir(), config.maxSpoolBytes(), config.segmentBytes());
        } catch (IOException e) {
            throw new UncheckedIOException("custos-kafka: cannot open the spool in " + config.spoolDir(), e);
        }
        publisher = new Publisher(config, spool, new KafkaBatchSender(config));
        publisher.start();
        metrics = PublisherMetrics.register(publisher);
        LOG.infof("custos-kafka: publishing to topic %s at %s (queue %d, spool %s, max %d bytes, representations %s)",
                config.topic(), config.bootstrapServers(), config.queueCapacity(), config.spoolDir(),
                config.maxSpoolBytes(), config.includeRepresentation() ? "where safe" : "off");
    }

    @Override
    public EventListenerProvider create(KeycloakSession session) {
        return new CustosKafkaEventListenerProvider(
                publisher, config.includeRepresentation(), config.fhirUserAttribute(), session);
    }

    @Override
    public void close() {
        if (metrics != null) {
            metrics.close();
            metrics = null;
        }
        if (publisher != null) {
            publisher.close();
            publisher = null;
        }
    }

    @Override
    public List<ProviderConfigProperty> getConfigMetadata() {
        return ProviderConfigurationBuilder.create()
                .property().name("bootstrap-servers").type("string").helpText("Kafka bootstrap servers")
                .defaultValue("127.0.0.1:9092").add()
                .property().name("topic").type("string").helpText("Kafka topic").defaultValue("custos.as-events").add()
                .property().name("client-id").type("string").helpText("Kafka client id")
                .defaultValue("custos-keycloak-events").add()
                .property().name("queue-capacity").type("int").helpText("In-memory queue bound").defaultValue(10000).add()
                .property().name("spool-dir").type("string").helpText("Spool directory (default: data/custos-kafka-spool)").add()
                .property().name("max-spool-bytes").type("long").helpText("Most unsent bytes kept in the spool")
                .defaultValue(1L << 30).add()
                .property().name("spool-segment-bytes").type("long").helpText("Spool segment size").defaultValue(8L << 20).add()
                .property().name("include-representation").type("boolean")
                .helpText("Publish admin representations of credential-free resource types").defaultValue(false).add()
                .property().name("delivery-timeout-ms").type("int").helpText("How long one batch may wait for Kafka")
                .defaultValue(10000).add()
                .property().name("status-log-seconds").type("int").helpText("Interval of the status log line")
                .defaultValue(60).add()
                .build();
    }
}
