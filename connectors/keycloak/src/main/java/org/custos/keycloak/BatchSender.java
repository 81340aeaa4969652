package org.custos.keycloak;

import java.io.Closeable;
import java.util.List;

/** Sends spooled records to their destination, in order. */
interface BatchSender extends Closeable {
    /**
     * Sends {@code records} and waits for their acknowledgement.
     *
     * @return for each record, whether the destination acknowledged it (records of different
     *     partitions may fail independently)
     */
    boolean[] send(List<SpoolRecord> records);

    /** A short description of the last failure (no record content), or null. */
    String lastError();

    @Override
    void close();
}
