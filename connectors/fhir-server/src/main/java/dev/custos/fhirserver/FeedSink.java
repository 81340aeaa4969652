package dev.custos.fhirserver;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.storage.interceptor.balp.IBalpAuditEventSink;
import com.nimbusds.jose.util.JSONObjectUtils;
import java.io.IOException;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.text.ParseException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingDeque;
import java.util.concurrent.LinkedBlockingDeque;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.hl7.fhir.r4.model.AuditEvent;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Posts AuditEvents to the Custos audit feed ({@code POST [base]} with a batch Bundle) from a
 * bounded in-memory queue, off the request thread: a feed outage never fails or slows a FHIR
 * request. Each batch is retried with capped exponential backoff until the feed takes it (the
 * events keep their ids, so a resend is deduplicated downstream). When the queue is full new
 * events are dropped and counted, and every drop is logged with the running count; events the
 * feed refuses as bad (a 4xx other than 401, 408 and 429, or a refused entry of a batch) are
 * counted and logged the same way. The feed's bearer token comes from the client-credentials
 * grant and is cached until shortly before it expires.
 */
public final class FeedSink implements IBalpAuditEventSink, AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(FeedSink.class);
    private static final Duration MIN_BACKOFF = Duration.ofMillis(500);
    private static final Duration MAX_BACKOFF = Duration.ofSeconds(30);

    private final ServerConfig config;
    private final AuditEnricher enricher;
    private final IParser parser;
    private final BlockingDeque<String> queue;
    private final HttpClient http;
    private final Thread worker;
    private final AtomicLong accepted = new AtomicLong();
    private final AtomicLong sent = new AtomicLong();
    private final AtomicLong dropped = new AtomicLong();
    private final AtomicLong rejected = new AtomicLong();
    private final AtomicLong failedAttempts = new AtomicLong();
    private volatile boolean running = true;
    private String token;
    private long tokenValidUntilMillis;

    /**
     * Starts the sender thread (when a feed URL is configured).
     *
     * @param config the server settings
     * @param fhir the FHIR context used to encode the events
     */
    public FeedSink(ServerConfig config, FhirContext fhir) {
        this.config = config;
        this.enricher = new AuditEnricher(config.tenant());
        this.parser = fhir.newJsonParser();
        this.queue = new LinkedBlockingDeque<>(config.auditQueueCapacity());
        this.http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(3)).build();
        this.worker = new Thread(this::run, "custos-audit-feed");
        this.worker.setDaemon(true);
        if (config.feedUrl().isPresent()) {
            worker.start();
        } else {
            LOG.warn("CUSTOS_FEED_URL is not set: AuditEvents are counted and dropped, not sent");
        }
    }

    @Override
    public void recordAuditEvent(AuditEvent event) {
        String json;
        synchronized (parser) {
            json = parser.encodeResourceToString(enricher.complete(event));
        }
        accepted.incrementAndGet();
        if (config.feedUrl().isEmpty() || !queue.offerLast(json)) {
            long n = dropped.incrementAndGet();
            LOG.error("audit event dropped ({}): {} dropped so far, queue {}/{}",
                    config.feedUrl().isEmpty() ? "no feed configured" : "queue full",
                    n, queue.size(), config.auditQueueCapacity());
        }
    }

    /** Counters for the health endpoint. */
    public Map<String, Long> stats() {
        return Map.of(
                "accepted", accepted.get(),
                "sent", sent.get(),
                "queued", (long) queue.size(),
                "dropped", dropped.get(),
                "rejected", rejected.get(),
                "failed_attempts", failedAttempts.get());
    }

    private void run() {
        Duration backoff = MIN_BACKOFF;
        List<String> batch = new ArrayList<>();
        while (running || !queue.isEmpty()) {
            try {
                if (batch.isEmpty()) {
                    String first = queue.pollFirst(500, TimeUnit.MILLISECONDS);
                    if (first == null) {
                        continue;
                    }
                    batch.add(first);
                    queue.drainTo(batch, config.auditBatchSize() - 1);
                }
                Outcome outcome = send(batch);
                if (outcome == Outcome.RETRY) {
                    failedAttempts.incrementAndGet();
                    if (!running) {
                        break;
                    }
                    Thread.sleep(backoff.toMillis());
                    backoff = backoff.multipliedBy(2).compareTo(MAX_BACKOFF) > 0 ? MAX_BACKOFF : backoff.multipliedBy(2);
                    continue; // the same batch again, same ids
                }
                backoff = MIN_BACKOFF;
                batch.clear();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            } catch (RuntimeException e) {
                failedAttempts.incrementAndGet();
                LOG.error("audit feed sender error: {}", e.getClass().getSimpleName());
                sleepQuietly(backoff);
            }
        }
        int left = batch.size() + queue.size();
        if (left > 0) {
            long n = dropped.addAndGet(left);
            LOG.error("audit feed stopped with {} events unsent: {} dropped in total", left, n);
        }
    }

    private enum Outcome { DONE, RETRY }

    private Outcome send(List<String> batch) throws InterruptedException {
        StringBuilder body = new StringBuilder(batch.size() * 2048);
        body.append("{\"resourceType\":\"Bundle\",\"type\":\"batch\",\"entry\":[");
        for (int i = 0; i < batch.size(); i++) {
            if (i > 0) {
                body.append(',');
            }
            body.append("{\"resource\":").append(batch.get(i))
                    .append(",\"request\":{\"method\":\"POST\",\"url\":\"AuditEvent\"}}");
        }
        body.append("]}");
        String bearer;
        try {
            bearer = bearer();
        } catch (IOException e) {
            LOG.warn("audit feed: no token from the authorization server ({}); {} events wait",
                    e.getMessage(), batch.size() + queue.size());
            return Outcome.RETRY;
        }
        HttpRequest req = HttpRequest.newBuilder(config.feedUrl().orElseThrow())
                .timeout(Duration.ofSeconds(10))
                .header("Content-Type", "application/fhir+json")
                .header("Accept", "application/fhir+json")
                .header("Authorization", "Bearer " + bearer)
                .POST(HttpRequest.BodyPublishers.ofString(body.toString()))
                .build();
        HttpResponse<String> resp;
        try {
            resp = http.send(req, HttpResponse.BodyHandlers.ofString());
        } catch (IOException e) {
            LOG.warn("audit feed unreachable ({}); {} events wait", e.getClass().getSimpleName(),
                    batch.size() + queue.size());
            return Outcome.RETRY;
        }
        int status = resp.statusCode();
        if (status == 401) {
            synchronized (this) {
                token = null;
            }
            LOG.warn("audit feed refused the token (401); fetching a new one");
            return Outcome.RETRY;
        }
        if (status == 408 || status == 429 || status >= 500) {
            LOG.warn("audit feed answered HTTP {}; {} events wait", status, batch.size() + queue.size());
            return Outcome.RETRY;
        }
        if (status >= 300) {
            long n = rejected.addAndGet(batch.size());
            LOG.error("audit feed refused a batch of {} events with HTTP {}: {} refused so far",
                    batch.size(), status, n);
            return Outcome.DONE;
        }
        int refused = refusedEntries(resp.body());
        sent.addAndGet(batch.size() - refused);
        if (refused > 0) {
            long n = rejected.addAndGet(refused);
            LOG.error("audit feed refused {} of {} events of a batch: {} refused so far", refused, batch.size(), n);
        }
        return Outcome.DONE;
    }

    /** The entries of a batch-response Bundle whose status is not 2xx. */
    private static int refusedEntries(String body) {
        try {
            Map<String, Object> bundle = JSONObjectUtils.parse(body);
            List<Object> entries = JSONObjectUtils.getJSONArray(bundle, "entry");
            if (entries == null) {
                return 0;
            }
            int refused = 0;
            for (Object e : entries) {
                if (e instanceof Map<?, ?> entry && entry.get("response") instanceof Map<?, ?> r
                        && r.get("status") instanceof String s && !s.trim().startsWith("2")) {
                    refused++;
                }
            }
            return refused;
        } catch (ParseException e) {
            return 0; // a 2xx without a readable Bundle (e.g. a single 201): taken as accepted
        }
    }

    private synchronized String bearer() throws IOException, InterruptedException {
        long now = System.currentTimeMillis();
        if (token != null && now < tokenValidUntilMillis) {
            return token;
        }
        String basic = Base64.getEncoder().encodeToString((enc(config.feedClientId()) + ":"
                + enc(config.feedClientSecret())).getBytes(StandardCharsets.UTF_8));
        HttpRequest req = HttpRequest.newBuilder(config.feedTokenUrl())
                .timeout(Duration.ofSeconds(5))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("Authorization", "Basic " + basic)
                .POST(HttpRequest.BodyPublishers.ofString("grant_type=client_credentials"))
                .build();
        HttpResponse<String> resp = http.send(req, HttpResponse.BodyHandlers.ofString());
        if (resp.statusCode() != 200) {
            throw new IOException("token endpoint answered HTTP " + resp.statusCode());
        }
        try {
            Map<String, Object> json = JSONObjectUtils.parse(resp.body());
            String access = JSONObjectUtils.getString(json, "access_token");
            Number expiresIn = json.get("expires_in") instanceof Number n ? n : 60;
            if (access == null) {
                throw new IOException("token response without access_token");
            }
            token = access;
            tokenValidUntilMillis = now + Math.max(5_000L, expiresIn.longValue() * 1000L - 30_000L);
            return token;
        } catch (ParseException e) {
            throw new IOException("token response is not JSON");
        }
    }

    private static String enc(String v) {
        return URLEncoder.encode(v, StandardCharsets.UTF_8);
    }

    private static void sleepQuietly(Duration d) {
        try {
            Thread.sleep(d.toMillis());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Stops taking new work and gives the sender up to five seconds to send what is queued. */
    @Override
    public void close() {
        running = false;
        if (worker.isAlive()) {
            try {
                worker.join(5_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            worker.interrupt();
        }
    }

}
