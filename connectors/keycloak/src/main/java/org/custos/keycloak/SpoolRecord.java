package org.custos.keycloak;

/**
 * One event on its way to Kafka: the record key and the event JSON.
 *
 * @param key the Kafka record key (realm and user)
 * @param value the event JSON (UTF-8)
 */
record SpoolRecord(byte[] key, byte[] value) {
    /** Bytes this record takes in a spool segment (header included). */
    int spoolSize() {
        return Spool.HEADER + 4 + key.length + value.length;
    }
}
