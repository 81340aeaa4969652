package org.custos.keycloak;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class SpoolTest {
    @TempDir
    Path dir;

    static SpoolRecord rec(int i) {
        return new SpoolRecord(("k" + i).getBytes(StandardCharsets.UTF_8),
                ("{\"id\":\"e" + i + "\"}").getBytes(StandardCharsets.UTF_8));
    }

    static List<SpoolRecord> recs(int from, int to) {
        List<SpoolRecord> out = new ArrayList<>();
        for (int i = from; i < to; i++) {
            out.add(rec(i));
        }
        return out;
    }

    static List<String> values(List<Spool.Entry> entries) {
        List<String> out = new ArrayList<>();
        for (Spool.Entry e : entries) {
            out.add(new String(e.record().value(), StandardCharsets.UTF_8));
        }
        return out;
    }

    private long segmentFiles() throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.filter(p -> p.getFileName().toString().endsWith(".spool")).count();
        }
    }

    @Test
    void readsBackInOrderAndCommitsMoveTheCursor() throws IOException {
        try (Spool s = new Spool(dir, 1 << 20, 1 << 20)) {
            assertEquals(10, s.append(recs(0, 10)));
            assertEquals(10, s.pendingEvents());
            List<Spool.Entry> first = s.read(4);
            assertEquals(List.of("{\"id\":\"e0\"}", "{\"id\":\"e1\"}", "{\"id\":\"e2\"}", "{\"id\":\"e3\"}"),
                    values(first));
            assertEquals(values(first), values(s.read(4)), "reading does not move the cursor");
            s.commit(first.get(3), 4);
            assertEquals(6, s.pendingEvents());
            assertEquals("{\"id\":\"e4\"}", values(s.read(1)).get(0));
        }
    }

    @Test
    void survivesAReopenWithTheCursorKept() throws IOException {
        try (Spool s = new Spool(dir, 1 << 20, 1 << 20)) {
            s.append(recs(0, 5));
            List<Spool.Entry> e = s.read(2);
            s.commit(e.get(1), 2);
        }
        try (Spool s = new Spool(dir, 1 << 20, 1 << 20)) {
            assertEquals(3, s.pendingEvents());
            s.append(recs(5, 7));
            assertEquals(List.of("{\"id\":\"e2\"}", "{\"id\":\"e3\"}", "{\"id\":\"e4\"}", "{\"id\":\"e5\"}",
                    "{\"id\":\"e6\"}"), values(s.read(100)));
        }
    }

    @Test
    void aTornTailIsCutOnOpen() throws IOException {
        try (Spool s = new Spool(dir, 1 << 20, 1 << 20)) {
            s.append(recs(0, 3));
        }
        Path seg;
        try (Stream<Path> files = Files.list(dir)) {
            seg = files.filter(p -> p.toString().endsWith(".spool")).findFirst().orElseThrow();
        }
        try (FileChannel ch = FileChannel.open(seg, StandardOpenOption.WRITE)) {
            ch.truncate(ch.size() - 3);
        }
        try (Spool s = new Spool(dir, 1 << 20, 1 << 20)) {
            assertEquals(2, s.pendingEvents());
            s.append(recs(3, 4));
            assertEquals(List.of("{\"id\":\"e0\"}", "{\"id\":\"e1\"}", "{\"id\":\"e3\"}"), values(s.read(100)));
        }
    }

    @Test
    void rollsSegmentsAndDeletesSentOnes() throws IOException {
        try (Spool s = new Spool(dir, 1 << 20, 100)) {
            s.append(recs(0, 20));
            assertTrue(segmentFiles() > 3, "several segments");
            int total = 0;
            while (true) {
                List<Spool.Entry> e = s.read(3);
                if (e.isEmpty()) {
                    break;
                }
                for (Spool.Entry x : e) {
                    assertEquals("{\"id\":\"e" + total + "\"}", new String(x.record().value(), StandardCharsets.UTF_8));
                    total++;
                }
                s.commit(e.get(e.size() - 1), e.size());
            }
            assertEquals(20, total);
            assertEquals(0, s.pendingEvents());
            assertEquals(0, s.pendingBytes());
            assertEquals(1, segmentFiles(), "only the active segment stays");
        }
    }

    @Test
    void refusesRecordsOverTheByteLimit() throws IOException {
        int size = rec(0).spoolSize();
        try (Spool s = new Spool(dir, 1L << 16, 1 << 20)) {
            int fits = (1 << 16) / size;
            List<SpoolRecord> same = new ArrayList<>(Collections.nCopies(fits + 5, rec(0)));
            assertEquals(fits, s.append(same));
            assertEquals(0, s.append(recs(0, 1)));
            List<Spool.Entry> e = s.read(10);
            s.commit(e.get(9), 10);
            assertEquals(1, s.append(recs(0, 1)), "room again after a commit");
        }
    }
}
