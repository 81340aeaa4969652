package dev.custos.fhirserver;

import java.net.URI;
import java.time.Duration;
import java.util.Map;
import java.util.Optional;

/**
 * The server's settings, read from the environment (see the module README for every key).
 *
 * @param bindHost address the HTTP listener binds to
 * @param port HTTP port
 * @param issuer expected {@code iss} of access tokens (the Keycloak realm URL)
 * @param jwksUrl where the issuer's signing keys are fetched
 * @param introspectionUrl RFC 7662 introspection endpoint of the issuer
 * @param introspectionClientId client the server authenticates as at introspection
 * @param introspectionClientSecret that client's secret
 * @param introspectionCacheTtl how long an introspection answer is reused (at most 5 s)
 * @param audience required {@code aud} value, when set
 * @param feedUrl base URL of the Custos audit feed ({@code POST [base]} batch Bundles), when set
 * @param feedTokenUrl token endpoint for the feed's client-credentials token
 * @param feedClientId client id of the audit source
 * @param feedClientSecret secret of the audit source client
 * @param auditQueueCapacity bound of the in-memory AuditEvent queue
 * @param auditBatchSize AuditEvents per feed request
 * @param tenant Custos tenant written on every AuditEvent, when set
 * @param seedDemoData whether the demo resources are loaded at start
 */
public record ServerConfig(
        String bindHost,
        int port,
        String issuer,
        URI jwksUrl,
        URI introspectionUrl,
        String introspectionClientId,
        String introspectionClientSecret,
        Duration introspectionCacheTtl,
        Optional<String> audience,
        Optional<URI> feedUrl,
        URI feedTokenUrl,
        String feedClientId,
        String feedClientSecret,
        int auditQueueCapacity,
        int auditBatchSize,
        Optional<String> tenant,
        boolean seedDemoData) {

    /** Longest allowed reuse of an introspection answer, so a revocation bites quickly. */
    public static final Duration MAX_INTROSPECTION_CACHE = Duration.ofSeconds(5);

    /** A setting that is missing or malformed. */
    public static final class ConfigException extends Exception {
        private static final long serialVersionUID = 1L;

        ConfigException(String message) {
            super(message);
        }
    }

    /**
     * Reads the settings from {@code env}.
     *
     * @param env the environment (usually {@link System#getenv()})
     * @return the validated settings
     * @throws ConfigException naming the first bad or missing key
     */
    public static ServerConfig fromEnv(Map<String, String> env) throws ConfigException {
        String issuer = trimSlash(required(env, "CUSTOS_FHIR_ISSUER"));
        String oidc = issuer + "/protocol/openid-connect";
        Duration ttl = Duration.ofMillis(number(env, "CUSTOS_FHIR_INTROSPECTION_CACHE_MS", 2000, 0, 5000));
        Optional<URI> feed = optional(env, "CUSTOS_FEED_URL").map(v -> URI.create(trimSlash(v)));
        String feedClient = env.getOrDefault("CUSTOS_FEED_CLIENT_ID", "custos-audit-source");
        String feedSecret = env.getOrDefault("CUSTOS_FEED_CLIENT_SECRET", "");
        if (feed.isPresent() && feedSecret.isBlank()) {
            throw new ConfigException("CUSTOS_FEED_CLIENT_SECRET is required when CUSTOS_FEED_URL is set");
        }
        return new ServerConfig(
                env.getOrDefault("CUSTOS_FHIR_BIND", "127.0.0.1"),
                (int) number(env, "CUSTOS_FHIR_PORT", 18090, 1, 65535),
                issuer,
                uri(env, "CUSTOS_FHIR_JWKS_URL", oidc + "/certs"),
                uri(env, "CUSTOS_FHIR_INTROSPECTION_URL", oidc + "/token/introspect"),
                env.getOrDefault("CUSTOS_FHIR_CLIENT_ID", "custos-fhir-server"),
                required(env, "CUSTOS_FHIR_CLIENT_SECRET"),
                ttl,
                optional(env, "CUSTOS_FHIR_AUDIENCE"),
                feed,
                uri(env, "CUSTOS_FEED_TOKEN_URL", oidc + "/token"),
                feedClient,
                feedSecret,
                (int) number(env, "CUSTOS_FHIR_AUDIT_QUEUE", 10_000, 1, 1_000_000),
                (int) number(env, "CUSTOS_FHIR_AUDIT_BATCH", 100, 1, 1000),
                optional(env, "CUSTOS_FHIR_TENANT"),
                !"false".equalsIgnoreCase(env.getOrDefault("CUSTOS_FHIR_SEED_DEMO", "true")));
    }

    private static String required(Map<String, String> env, String key) throws ConfigException {
        return optional(env, key).orElseThrow(() -> new ConfigException(key + " is not set"));
    }

    private static Optional<String> optional(Map<String, String> env, String key) {
        return Optional.ofNullable(env.get(key)).map(String::trim).filter(v -> !v.isEmpty());
    }

    private static long number(Map<String, String> env, String key, long dflt, long min, long max)
            throws ConfigException {
        Optional<String> raw = optional(env, key);
        if (raw.isEmpty()) {
            return dflt;
        }
        try {
            long v = Long.parseLong(raw.get());
            if (v < min || v > max) {
                throw new ConfigException(key + " must be between " + min + " and " + max);
            }
            return v;
        } catch (NumberFormatException e) {
            throw new ConfigException(key + " must be a number");
        }
    }

    private static URI uri(Map<String, String> env, String key, String dflt) throws ConfigException {
        String v = optional(env, key).orElse(dflt);
        try {
            URI u = URI.create(v);
            if (u.getScheme() == null || u.getHost() == null) {
                throw new ConfigException(key + " must be an absolute http(s) URL");
            }
            return u;
        } catch (IllegalArgumentException e) {
            throw new ConfigException(key + " is not a URL");
        }
    }

    private static String trimSlash(String v) {
        return v.endsWith("/") ? v.substring(0, v.length() - 1) : v;
    }
}
