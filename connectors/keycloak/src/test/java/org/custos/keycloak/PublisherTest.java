package org.custos.keycloak;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class PublisherTest {
    @TempDir
    Path dir;

    /** A destination that can be switched off; it keeps what it acknowledged. */
    static class FakeKafka implements BatchSender {
        final List<String> delivered = Collections.synchronizedList(new ArrayList<>());
        final AtomicBoolean up = new AtomicBoolean(true);

        @Override
        public boolean[] send(List<SpoolRecord> records) {
            boolean[] acked = new boolean[records.size()];
            if (!up.get()) {
                return acked;
            }
            // Acknowledge half of a batch of more than one, to exercise partial progress.
            int n = records.size() > 1 && delivered.size() % 2 == 1 ? records.size() / 2 : records.size();
            for (int i = 0; i < n; i++) {
                delivered.add(new String(records.get(i).value(), StandardCharsets.UTF_8));
                acked[i] = true;
            }
            return acked;
        }

        @Override
        public String lastError() {
            return up.get() ? null : "down";
        }

        @Override
        public void close() {}
    }

    /** Fails every other record of the first few batches: partitions failing independently. */
    static final class FlakyPartitions extends FakeKafka {
        int calls;

        @Override
        public boolean[] send(List<SpoolRecord> records) {
            boolean[] acked = new boolean[records.size()];
            boolean flaky = calls++ < 3;
            for (int i = 0; i < records.size(); i++) {
                if (!flaky || i % 2 == 0) {
                    delivered.add(new String(records.get(i).value(), StandardCharsets.UTF_8));
                    acked[i] = true;
                }
            }
            return acked;
        }
    }

    @Test
    void recordsAcknowledgedBesideFailedOnesAreNotSentAgain() throws Exception {
        FlakyPartitions kafka = new FlakyPartitions();
        Publisher p = new Publisher(config(1000), new Spool(dir, 1L << 30, 4096), kafka);
        for (int i = 0; i < 40; i++) {
            p.submit(SpoolTest.rec(i));
        }
        p.start();
        waitFor(() -> kafka.delivered.size() >= 40 && p.spoolEvents() == 0);
        p.close();
        List<String> sorted = new ArrayList<>(kafka.delivered);
        Collections.sort(sorted);
        List<String> want = expected(0, 40);
        Collections.sort(want);
        assertEquals(want, sorted, "every event exactly once");
    }

    private ListenerConfig config(int capacity) {
        return new ListenerConfig("x:1", "t", "c", capacity, dir, 1L << 30, 4096, false, 1000, 3600, "fhirUser");
    }

    private static void waitFor(java.util.function.BooleanSupplier cond) throws InterruptedException {
        long deadline = System.nanoTime() + 20_000_000_000L;
        while (!cond.getAsBoolean()) {
            assertTrue(System.nanoTime() < deadline, "timed out");
            Thread.sleep(20);
        }
    }

    private static List<String> expected(int from, int to) {
        List<String> out = new ArrayList<>();
        for (int i = from; i < to; i++) {
            out.add("{\"id\":\"e" + i + "\"}");
        }
        return out;
    }

    @Test
    void anOutageLosesNothingAndKeepsTheOrder() throws Exception {
        FakeKafka kafka = new FakeKafka();
        Publisher p = new Publisher(config(16), new Spool(dir, 1L << 30, 4096), kafka);
        p.start();
        for (int i = 0; i < 50; i++) {
            p.submit(SpoolTest.rec(i));
        }
        waitFor(() -> kafka.delivered.size() == 50);
        kafka.up.set(false);
        for (int i = 50; i < 400; i++) {
            p.submit(SpoolTest.rec(i)); // the small queue overflows into the spool
        }
        waitFor(() -> p.spoolEvents() == 350 && p.queueDepth() == 0);
        assertEquals(50, kafka.delivered.size());
        kafka.up.set(true);
        waitFor(() -> kafka.delivered.size() == 400);
        p.close();
        assertEquals(expected(0, 400), kafka.delivered, "every event once, in order");
        assertEquals(0, p.droppedEvents());
    }

    @Test
    void aRestartWithAFullSpoolSendsItFirst() throws Exception {
        FakeKafka kafka = new FakeKafka();
        kafka.up.set(false);
        Publisher p = new Publisher(config(1000), new Spool(dir, 1L << 30, 4096), kafka);
        p.start();
        for (int i = 0; i < 100; i++) {
            p.submit(SpoolTest.rec(i));
        }
        p.close();
        assertEquals(List.of(), kafka.delivered);

        kafka.up.set(true);
        Publisher again = new Publisher(config(1000), new Spool(dir, 1L << 30, 4096), kafka);
        assertEquals(100, again.spoolEvents());
        again.start();
        for (int i = 100; i < 120; i++) {
            again.submit(SpoolTest.rec(i));
        }
        waitFor(() -> kafka.delivered.size() == 120);
        again.close();
        assertEquals(expected(0, 120), kafka.delivered);
    }

    @Test
    void aFullSpoolDropsAndCounts() throws Exception {
        FakeKafka kafka = new FakeKafka();
        kafka.up.set(false);
        int size = SpoolTest.rec(0).spoolSize();
        ListenerConfig c = new ListenerConfig("x:1", "t", "c", 4, dir, 1L << 16, 4096, false, 1000, 3600, "fhirUser");
        Publisher p = new Publisher(c, new Spool(dir, 1L << 16, 4096), kafka);
        p.start();
        int n = (1 << 16) / size + 30;
        for (int i = 0; i < n; i++) {
            p.submit(SpoolTest.rec(i));
        }
        waitFor(() -> p.queueDepth() == 0 && p.spoolEvents() + p.droppedEvents() == n);
        assertTrue(p.droppedEvents() >= 30, "dropped " + p.droppedEvents());
        assertTrue(p.status().contains("dropped=" + p.droppedEvents()), p.status());
        p.close();
    }

    @Test
    void submitNeverBlocksWhileKafkaIsDown() throws IOException {
        FakeKafka kafka = new FakeKafka();
        kafka.up.set(false);
        Publisher p = new Publisher(config(8), new Spool(dir, 1L << 30, 1 << 20), kafka);
        p.start();
        long start = System.nanoTime();
        for (int i = 0; i < 2000; i++) {
            p.submit(SpoolTest.rec(i));
        }
        long millis = (System.nanoTime() - start) / 1_000_000;
        p.close();
        assertTrue(millis < 10_000, "took " + millis + " ms");
        assertEquals(2000, p.spoolEvents());
    }
}
