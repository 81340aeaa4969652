package org.custos.keycloak;

import java.nio.file.Path;
import java.util.Locale;
import java.util.function.UnaryOperator;

/**
 * The provider's settings: Keycloak SPI options
 * ({@code --spi-events-listener--custos-kafka--<key>=...}) first, then environment variables,
 * then defaults.
 *
 * @param bootstrapServers Kafka bootstrap servers ({@code bootstrap-servers},
 *     {@code CUSTOS_EVENTS_BOOTSTRAP_SERVERS}, then {@code CUSTOS_KAFKA_BROKERS})
 * @param topic the topic ({@code topic}, {@code CUSTOS_EVENTS_TOPIC})
 * @param clientId the Kafka client id ({@code client-id}, {@code CUSTOS_EVENTS_CLIENT_ID})
 * @param queueCapacity in-memory queue bound ({@code queue-capacity})
 * @param spoolDir spool directory ({@code spool-dir})
 * @param maxSpoolBytes the most unsent bytes kept on disk ({@code max-spool-bytes})
 * @param segmentBytes spool segment size ({@code spool-segment-bytes})
 * @param includeRepresentation publish admin representations where safe
 *     ({@code include-representation})
 * @param deliveryTimeoutMs how long one batch may wait for Kafka ({@code delivery-timeout-ms})
 * @param statusLogSeconds interval of the periodic status line ({@code status-log-seconds})
 * @param fhirUserAttribute the user attribute holding the user's FHIR resource, published as
 *     {@code fhirUser} with the user's events ({@code fhir-user-attribute}, default
 *     {@code fhirUser}; {@code -} turns it off)
 */
record ListenerConfig(
        String bootstrapServers,
        String topic,
        String clientId,
        int queueCapacity,
        Path spoolDir,
        long maxSpoolBytes,
        long segmentBytes,
        boolean includeRepresentation,
        int deliveryTimeoutMs,
        int statusLogSeconds,
        String fhirUserAttribute) {

    /** Thrown for a setting that cannot be used. */
    static final class InvalidSetting extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        InvalidSetting(String key, String value, String expected) {
            super("custos-kafka: setting '" + key + "' = '" + value + "' is invalid: " + expected);
        }
    }

    /**
     * Reads the settings.
     *
     * @param spi the SPI option of a key (null when unset)
     * @param env an environment variable (null when unset)
     * @param homeDir Keycloak's home directory (the default spool lives under data/), or null
     */
    static ListenerConfig from(UnaryOperator<String> spi, UnaryOperator<String> env, String homeDir) {
        Lookup l = new Lookup(spi, env);
        String servers = l.get("bootstrap-servers", "127.0.0.1:9092", "CUSTOS_KAFKA_BROKERS");
        String topic = l.get("topic", "custos.as-events");
        String clientId = l.get("client-id", "custos-keycloak-events");
        int capacity = (int) l.number("queue-capacity", 10_000, 1, 10_000_000);
        String defaultSpool = homeDir == null
                ? Path.of(System.getProperty("java.io.tmpdir"), "custos-kafka-spool").toString()
                : Path.of(homeDir, "data", "custos-kafka-spool").toString();
        Path spoolDir = Path.of(l.get("spool-dir", defaultSpool));
        long maxBytes = l.number("max-spool-bytes", 1L << 30, 1L << 16, Long.MAX_VALUE);
        long segment = l.number("spool-segment-bytes", 8L << 20, 1L << 12, 1L << 30);
        boolean representation = l.bool("include-representation", false);
        int delivery = (int) l.number("delivery-timeout-ms", 10_000, 1_000, 600_000);
        int statusLog = (int) l.number("status-log-seconds", 60, 1, 86_400);
        String fhirUser = l.get("fhir-user-attribute", "fhirUser");
        return new ListenerConfig(
                servers,
                topic,
                clientId,
                capacity,
                spoolDir,
                maxBytes,
                segment,
                representation,
                delivery,
                statusLog,
                "-".equals(fhirUser) ? null : fhirUser);
    }

    /** The environment variable of a key: {@code CUSTOS_EVENTS_} and the key in upper snake case. */
    static String envName(String key) {
        return "CUSTOS_EVENTS_" + key.toUpperCase(Locale.ROOT).replace('-', '_');
    }

    private record Lookup(UnaryOperator<String> spi, UnaryOperator<String> env) {
        String get(String key, String dflt, String... moreEnv) {
            String v = blankToNull(spi.apply(key));
            if (v == null) {
                v = blankToNull(env.apply(envName(key)));
            }
            for (int i = 0; v == null && i < moreEnv.length; i++) {
                v = blankToNull(env.apply(moreEnv[i]));
            }
            return v == null ? dflt : v.trim();
        }

        long number(String key, long dflt, long min, long max) {
            String v = get(key, null);
            if (v == null) {
                return dflt;
            }
            try {
                long n = Long.parseLong(v);
                if (n < min || n > max) {
                    throw new InvalidSetting(key, v, "expected a number from " + min + " to " + max);
                }
                return n;
            } catch (NumberFormatException e) {
                throw new InvalidSetting(key, v, "expected a whole number");
            }
        }

        boolean bool(String key, boolean dflt) {
            String v = get(key, null);
            if (v == null) {
                return dflt;
            }
            return switch (v.toLowerCase(Locale.ROOT)) {
                case "true", "1", "yes", "on" -> true;
                case "false", "0", "no", "off" -> false;
                default -> throw new InvalidSetting(key, v, "expected true or false");
            };
        }

        private static String blankToNull(String s) {
            return s == null || s.isBlank() ? null : s;
        }
    }
}
