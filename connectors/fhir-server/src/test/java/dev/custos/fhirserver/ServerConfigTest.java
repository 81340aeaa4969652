package dev.custos.fhirserver;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Map;
import org.junit.jupiter.api.Test;

class ServerConfigTest {
    private static final Map<String, String> MIN = Map.of(
            "CUSTOS_FHIR_ISSUER", "http://127.0.0.1:18080/realms/custos/",
            "CUSTOS_FHIR_CLIENT_SECRET", "s");

    @Test
    void defaults_follow_the_issuer() throws Exception {
        ServerConfig c = ServerConfig.fromEnv(MIN);
        assertEquals("http://127.0.0.1:18080/realms/custos", c.issuer());
        assertEquals("http://127.0.0.1:18080/realms/custos/protocol/openid-connect/certs", c.jwksUrl().toString());
        assertEquals("http://127.0.0.1:18080/realms/custos/protocol/openid-connect/token/introspect",
                c.introspectionUrl().toString());
        assertEquals("127.0.0.1", c.bindHost());
        assertEquals(18090, c.port());
        assertTrue(c.feedUrl().isEmpty());
        assertTrue(c.introspectionCacheTtl().compareTo(ServerConfig.MAX_INTROSPECTION_CACHE) <= 0);
    }

    @Test
    void bad_settings_are_named() {
        assertThrows(ServerConfig.ConfigException.class, () -> ServerConfig.fromEnv(Map.of()));
        Map<String, String> longCache = new java.util.HashMap<>(MIN);
        longCache.put("CUSTOS_FHIR_INTROSPECTION_CACHE_MS", "60000");
        ServerConfig.ConfigException e =
                assertThrows(ServerConfig.ConfigException.class, () -> ServerConfig.fromEnv(longCache));
        assertTrue(e.getMessage().contains("CUSTOS_FHIR_INTROSPECTION_CACHE_MS"));
        Map<String, String> feedWithoutSecret = new java.util.HashMap<>(MIN);
        feedWithoutSecret.put("CUSTOS_FEED_URL", "http://127.0.0.1:1/fhir");
        assertThrows(ServerConfig.ConfigException.class, () -> ServerConfig.fromEnv(feedWithoutSecret));
        Map<String, String> badPort = new java.util.HashMap<>(MIN);
        badPort.put("CUSTOS_FHIR_PORT", "http");
        assertThrows(ServerConfig.ConfigException.class, () -> ServerConfig.fromEnv(badPort));
    }
}
