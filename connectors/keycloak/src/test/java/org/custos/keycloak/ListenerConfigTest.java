package org.custos.keycloak;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;

class ListenerConfigTest {
    @Test
    void defaults() {
        ListenerConfig c = ListenerConfig.from(k -> null, k -> null, "/opt/keycloak");
        assertEquals("127.0.0.1:9092", c.bootstrapServers());
        assertEquals("custos.as-events", c.topic());
        assertEquals(10_000, c.queueCapacity());
        assertEquals(Path.of("/opt/keycloak/data/custos-kafka-spool"), c.spoolDir());
        assertEquals(false, c.includeRepresentation());
        assertEquals("fhirUser", c.fhirUserAttribute());
        assertEquals(null, ListenerConfig.from(Map.of("fhir-user-attribute", "-")::get, k -> null, null).fhirUserAttribute());
    }

    @Test
    void spiOptionsWinOverEnvironment() {
        Map<String, String> spi = Map.of("topic", "t1", "queue-capacity", "5");
        Map<String, String> env = Map.of(
                "CUSTOS_EVENTS_TOPIC", "t2",
                "CUSTOS_EVENTS_SPOOL_DIR", "/var/spool/x",
                "CUSTOS_KAFKA_BROKERS", "k:1",
                "CUSTOS_EVENTS_INCLUDE_REPRESENTATION", "true");
        ListenerConfig c = ListenerConfig.from(spi::get, env::get, null);
        assertEquals("t1", c.topic());
        assertEquals(5, c.queueCapacity());
        assertEquals(Path.of("/var/spool/x"), c.spoolDir());
        assertEquals("k:1", c.bootstrapServers());
        assertTrue(c.includeRepresentation());
    }

    @Test
    void badValuesAreRefusedWithTheKeyNamed() {
        Map<String, String> spi = Map.of("queue-capacity", "lots");
        var e = assertThrows(ListenerConfig.InvalidSetting.class, () -> ListenerConfig.from(spi::get, k -> null, null));
        assertTrue(e.getMessage().contains("queue-capacity"));
        assertThrows(ListenerConfig.InvalidSetting.class,
                () -> ListenerConfig.from(Map.of("include-representation", "maybe")::get, k -> null, null));
        assertThrows(ListenerConfig.InvalidSetting.class,
                () -> ListenerConfig.from(Map.of("queue-capacity", "0")::get, k -> null, null));
    }
}
