package org.custos.keycloak;

import java.io.Closeable;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeMap;
import java.util.zip.CRC32;
import org.jboss.logging.Logger;

/**
 * The durable, ordered spool between Keycloak and Kafka: append-only segment files and a cursor.
 *
 * <p>Every event is appended (and fsynced) here before it is sent, so an event survives a Kafka
 * outage and a Keycloak restart. Records are read back in append order from the cursor; the
 * sender {@link #commit commits} what Kafka acknowledged, which moves the cursor (written
 * atomically and fsynced) and deletes segments that are fully sent.
 *
 * <p>Segment file {@code segment-<20-digit sequence>.spool}: records of {@code int length},
 * {@code int CRC-32 of the payload}, payload = {@code int key length}, key, value. A torn record
 * at the end of the newest segment (a crash during a write) is truncated on open. Cursor file
 * {@code cursor}: {@code <sequence> <byte offset>}.
 */
final class Spool implements Closeable {
    /** Bytes before each record's payload: length and CRC-32. */
    static final int HEADER = 8;

    private static final Logger LOG = Logger.getLogger(Spool.class);
    private static final String PREFIX = "segment-";
    private static final String SUFFIX = ".spool";
    private static final int MAX_RECORD = 16 * 1024 * 1024;

    /** A record read back, with the position right after it. */
    record Entry(long segment, long end, SpoolRecord record) {}

    private final Path dir;
    private final long maxBytes;
    private final long segmentBytes;
    /** Sequence -> valid length of each segment file on disk. */
    private final TreeMap<Long, Long> segments = new TreeMap<>();

    private FileChannel active;
    private long activeSeq;
    private long cursorSeq;
    private long cursorOffset;
    private long pendingEvents;
    private boolean closed;

    /**
     * Opens (or creates) the spool in {@code dir}.
     *
     * @param maxBytes the most unsent bytes kept; appends beyond it are refused
     * @param segmentBytes the size at which a new segment file is started
     */
    Spool(Path dir, long maxBytes, long segmentBytes) throws IOException {
        this.dir = dir;
        this.maxBytes = maxBytes;
        this.segmentBytes = segmentBytes;
        Files.createDirectories(dir);
        try (DirectoryStream<Path> files = Files.newDirectoryStream(dir, PREFIX + "*" + SUFFIX)) {
            for (Path f : files) {
                String name = f.getFileName().toString();
                String digits = name.substring(PREFIX.length(), name.length() - SUFFIX.length());
                try {
                    segments.put(Long.parseLong(digits), Files.size(f));
                } catch (NumberFormatException e) {
                    LOG.warnf("custos-kafka: ignoring unexpected file %s in the spool directory", name);
                }
            }
        }
        Files.deleteIfExists(dir.resolve("cursor.tmp"));
        readCursor();
        scan();
        if (segments.isEmpty()) {
            segments.put(cursorSeq, 0L);
        }
        activeSeq = segments.lastKey();
        active = FileChannel.open(segment(activeSeq), StandardOpenOption.CREATE, StandardOpenOption.WRITE);
        active.truncate(segments.get(activeSeq));
        active.position(segments.get(activeSeq));
        dropSentSegments();
    }

    private void readCursor() throws IOException {
        Path cursor = dir.resolve("cursor");
        long seq = segments.isEmpty() ? 0 : segments.firstKey();
        long offset = 0;
        if (Files.exists(cursor)) {
            String[] parts = Files.readString(cursor, StandardCharsets.US_ASCII).trim().split(" ");
            try {
                seq = Long.parseLong(parts[0]);
                offset = Long.parseLong(parts[1]);
            } catch (RuntimeException e) {
                LOG.warn("custos-kafka: unreadable spool cursor; replaying the whole spool");
            }
        }
        if (!segments.isEmpty() && seq < segments.firstKey()) {
            seq = segments.firstKey();
            offset = 0;
        }
        // Segments wholly before the cursor were sent already.
        for (Long s : new ArrayList<>(segments.headMap(seq).keySet())) {
            Files.deleteIfExists(segment(s));
            segments.remove(s);
        }
        cursorSeq = seq;
        cursorOffset = offset;
    }

    /** Validates every record from the cursor on, counts them and cuts a torn tail. */
    private void scan() throws IOException {
        for (var e : new ArrayList<>(segments.tailMap(cursorSeq).entrySet())) {
            long seq = e.getKey();
            long from = seq == cursorSeq ? cursorOffset : 0;
            long valid = from;
            try (FileChannel ch = FileChannel.open(segment(seq), StandardOpenOption.READ)) {
                if (from > ch.size()) {
                    LOG.warnf("custos-kafka: spool cursor beyond segment %d; resending it from its start", seq);
                    cursorOffset = 0;
                    from = 0;
                    valid = 0;
                }
                while (true) {
                    SpoolRecord r = readAt(ch, valid);
                    if (r == null) {
                        break;
                    }
                    valid += r.spoolSize();
                    pendingEvents++;
                }
                if (valid < ch.size()) {
                    LOG.warnf("custos-kafka: spool segment %d has %d unreadable bytes at its end; they are cut",
                            seq, ch.size() - valid);
                }
            }
            if (valid < e.getValue()) {
                try (FileChannel ch = FileChannel.open(segment(seq), StandardOpenOption.WRITE)) {
                    ch.truncate(valid);
                    ch.force(true);
                }
            }
            segments.put(seq, valid);
        }
    }

    /** The record at {@code pos}, or null at the end or at a torn or corrupt record. */
    private static SpoolRecord readAt(FileChannel ch, long pos) throws IOException {
        ByteBuffer head = ByteBuffer.allocate(HEADER);
        if (readFully(ch, head, pos) < HEADER) {
            return null;
        }
        head.flip();
        int length = head.getInt();
        int crc = head.getInt();
        if (length < 4 || length > MAX_RECORD) {
            return null;
        }
        ByteBuffer payload = ByteBuffer.allocate(length);
        if (readFully(ch, payload, pos + HEADER) < length) {
            return null;
        }
        CRC32 sum = new CRC32();
        sum.update(payload.array());
        if ((int) sum.getValue() != crc) {
            return null;
        }
        payload.flip();
        int keyLength = payload.getInt();
        if (keyLength < 0 || keyLength > length - 4) {
            return null;
        }
        byte[] key = new byte[keyLength];
        payload.get(key);
        byte[] value = new byte[length - 4 - keyLength];
        payload.get(value);
        return new SpoolRecord(key, value);
    }

    private static int readFully(FileChannel ch, ByteBuffer buf, long pos) throws IOException {
        int total = 0;
        while (buf.hasRemaining()) {
            int n = ch.read(buf, pos + total);
            if (n < 0) {
                break;
            }
            total += n;
        }
        return total;
    }

    /**
     * Appends records in order and fsyncs once. Records that would take the unsent bytes over
     * the limit are refused.
     *
     * @return how many of {@code records} were appended (a prefix)
     */
    synchronized int append(List<SpoolRecord> records) throws IOException {
        ensureOpen();
        int appended = 0;
        long pending = pendingBytes();
        for (SpoolRecord r : records) {
            int size = r.spoolSize();
            if (pending + size > maxBytes) {
                break;
            }
            if (segments.get(activeSeq) >= segmentBytes) {
                roll();
            }
            ByteBuffer buf = ByteBuffer.allocate(size);
            int length = 4 + r.key().length + r.value().length;
            CRC32 sum = new CRC32();
            ByteBuffer payload = ByteBuffer.allocate(length).putInt(r.key().length).put(r.key()).put(r.value());
            sum.update(payload.array());
            buf.putInt(length).putInt((int) sum.getValue()).put(payload.array()).flip();
            while (buf.hasRemaining()) {
                active.write(buf);
            }
            segments.merge(activeSeq, (long) size, Long::sum);
            pending += size;
            appended++;
        }
        if (appended > 0) {
            active.force(false);
            pendingEvents += appended;
        }
        return appended;
    }

    private void roll() throws IOException {
        active.force(false);
        active.close();
        activeSeq++;
        segments.put(activeSeq, 0L);
        active = FileChannel.open(
                segment(activeSeq), StandardOpenOption.CREATE, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING);
        dropSentSegments();
    }

    /** Up to {@code max} unsent records from the cursor on, in order (the cursor stays). */
    synchronized List<Entry> read(int max) throws IOException {
        ensureOpen();
        List<Entry> out = new ArrayList<>();
        long seq = cursorSeq;
        long pos = cursorOffset;
        while (out.size() < max) {
            Long end = segments.get(seq);
            if (end == null) {
                break;
            }
            if (pos >= end) {
                Long next = segments.higherKey(seq);
                if (next == null) {
                    break;
                }
                seq = next;
                pos = 0;
                continue;
            }
            try (FileChannel ch = FileChannel.open(segment(seq), StandardOpenOption.READ)) {
                while (out.size() < max && pos < end) {
                    SpoolRecord r = readAt(ch, pos);
                    if (r == null) {
                        throw new IOException("spool segment " + seq + " is unreadable at offset " + pos);
                    }
                    pos += r.spoolSize();
                    out.add(new Entry(seq, pos, r));
                }
            }
        }
        return out;
    }

    /**
     * Marks every record up to and including {@code last} as sent: {@code count} records. The
     * cursor is written atomically and fsynced; fully sent segments are deleted.
     */
    synchronized void commit(Entry last, int count) throws IOException {
        ensureOpen();
        cursorSeq = last.segment();
        cursorOffset = last.end();
        pendingEvents = Math.max(0, pendingEvents - count);
        Path tmp = dir.resolve("cursor.tmp");
        try (FileChannel ch = FileChannel.open(
                tmp, StandardOpenOption.CREATE, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
            ch.write(ByteBuffer.wrap((cursorSeq + " " + cursorOffset + "\n").getBytes(StandardCharsets.US_ASCII)));
            ch.force(true);
        }
        try {
            Files.move(tmp, dir.resolve("cursor"), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (AtomicMoveNotSupportedException e) {
            Files.move(tmp, dir.resolve("cursor"), StandardCopyOption.REPLACE_EXISTING);
        }
        dropSentSegments();
    }

    /** Deletes segments before the cursor, and the cursor's segment once it is sent and full. */
    private void dropSentSegments() throws IOException {
        while (cursorSeq < activeSeq && cursorOffset >= segments.getOrDefault(cursorSeq, 0L)) {
            deleteSegment(cursorSeq);
            cursorSeq = segments.higherKey(cursorSeq);
            cursorOffset = 0;
        }
        for (Long s : new ArrayList<>(segments.headMap(cursorSeq).keySet())) {
            deleteSegment(s);
        }
    }

    private void deleteSegment(long seq) throws IOException {
        segments.remove(seq);
        try {
            Files.delete(segment(seq));
        } catch (NoSuchFileException e) {
            // Already gone.
        }
    }

    /** Records appended and not yet committed. */
    synchronized long pendingEvents() {
        return pendingEvents;
    }

    /** Bytes of records appended and not yet committed. */
    synchronized long pendingBytes() {
        long total = 0;
        for (var e : segments.tailMap(cursorSeq).entrySet()) {
            total += e.getValue();
        }
        return Math.max(0, total - cursorOffset);
    }

    /** Number of segment files on disk. */
    synchronized int segmentCount() {
        return segments.size();
    }

    private Path segment(long seq) {
        return dir.resolve(String.format("%s%020d%s", PREFIX, seq, SUFFIX));
    }

    private void ensureOpen() throws IOException {
        if (closed) {
            throw new IOException("spool is closed");
        }
    }

    @Override
    public synchronized void close() throws IOException {
        if (!closed) {
            closed = true;
            active.force(false);
            active.close();
        }
    }
}
