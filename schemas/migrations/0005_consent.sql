-- Consent state and revocation push (consent service, issue 3). Every table is append-only;
-- ReplacingMergeTree collapses rows a replay writes again (same sorting key), so read with FINAL.
-- Patient and subject columns hold keyed pseudonyms only. The raw AS subject and patient id a
-- revocation push needs are kept AEAD-sealed (key id carried) in consent_sealed, never here.

-- Immutable consent history: one row per consent event applied, with the state after it.
CREATE TABLE IF NOT EXISTS custos.consent_history
(
    event_key       String,
    event_id        String,
    event_source    String,
    event_type      LowCardinality(String),
    source_format   LowCardinality(String),
    tenant          LowCardinality(String),
    consent_id      String,
    patient         String,
    subject         String,
    client_id       LowCardinality(String),
    issuer          LowCardinality(String),
    status          LowCardinality(String),
    effect          LowCardinality(String),
    version         UInt64,
    scopes          Array(LowCardinality(String)),
    purpose         Array(LowCardinality(String)),
    period_start    Nullable(DateTime64(3, 'UTC')),
    period_end      Nullable(DateTime64(3, 'UTC')),
    reason          String,
    actor           String,
    event_time      DateTime64(3, 'UTC'),
    recorded_at     DateTime64(3, 'UTC'),
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    INDEX idx_consent consent_id TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_subject subject TYPE bloom_filter(0.01) GRANULARITY 2
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant, patient, client_id, consent_id, event_key)
TTL toDateTime(event_time) + INTERVAL {retention_days} DAY;

-- Current state per consent: its latest version.
CREATE VIEW IF NOT EXISTS custos.consent_current AS
SELECT tenant, consent_id,
       argMax(patient, version) AS patient, argMax(subject, version) AS subject,
       argMax(client_id, version) AS client_id, argMax(issuer, version) AS issuer,
       argMax(status, version) AS status, max(version) AS current_version,
       argMax(scopes, version) AS scopes, argMax(purpose, version) AS purpose,
       argMax(period_start, version) AS period_start, argMax(period_end, version) AS period_end,
       argMax(event_time, version) AS updated_at
FROM custos.consent_history FINAL
GROUP BY tenant, consent_id;

-- Sealed raw identifiers of a consent (XChaCha20-Poly1305, `kid.base64url(nonce||ciphertext)`,
-- bound to tenant and consent id). Needed to push a revocation to the AS later.
CREATE TABLE IF NOT EXISTS custos.consent_sealed
(
    tenant          LowCardinality(String),
    consent_id      String,
    kid             LowCardinality(String),
    patient_sealed  String,
    subject_sealed  String,
    recorded_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(recorded_at)
ORDER BY (tenant, consent_id)
TTL toDateTime(recorded_at) + INTERVAL {retention_days} DAY;

-- Revocation lifecycle per (revocation, target): one row per state change
-- (requested, delivered, failed, skipped). `requested` is written before any attempt.
CREATE TABLE IF NOT EXISTS custos.revocations
(
    revocation_id   String,
    target          LowCardinality(String),
    state           LowCardinality(String),
    seq             UInt32,
    at              DateTime64(3, 'UTC'),
    tenant          LowCardinality(String),
    consent_id      String,
    patient         String,
    subject         String,
    client_id       LowCardinality(String),
    issuer          LowCardinality(String),
    cause           LowCardinality(String),
    reason          String,
    initiator       LowCardinality(String),
    scopes          Array(LowCardinality(String)),
    cause_event_key String,
    requested_at    DateTime64(3, 'UTC'),
    acked_at        Nullable(DateTime64(3, 'UTC')),
    latency_ms      Nullable(Int64),
    attempts        UInt32,
    set_jti         String,
    detail          String,
    INDEX idx_consent consent_id TYPE bloom_filter(0.01) GRANULARITY 2
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(requested_at)
ORDER BY (revocation_id, target, state, seq)
TTL toDateTime(requested_at) + INTERVAL {retention_days} DAY;

-- Every push attempt and the receiver's answer (HTTP status, error code, response excerpt).
CREATE TABLE IF NOT EXISTS custos.revocation_attempts
(
    revocation_id   String,
    target          LowCardinality(String),
    attempt         UInt32,
    started_at      DateTime64(3, 'UTC'),
    duration_ms     UInt32,
    outcome         LowCardinality(String),
    http_status     UInt16,
    error_code      LowCardinality(String),
    detail          String,
    receipt         String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(started_at)
ORDER BY (revocation_id, target, attempt)
TTL toDateTime(started_at) + INTERVAL {retention_days} DAY;

-- Latest state per (revocation, target): `failed` rows are the report of pushes that did not
-- reach their receiver; `requested` ones are still being attempted.
CREATE VIEW IF NOT EXISTS custos.revocation_status AS
SELECT revocation_id, target,
       argMax(state, (at, seq)) AS state, max(at) AS updated_at,
       any(tenant) AS tenant, any(consent_id) AS consent_id, any(client_id) AS client_id,
       any(cause) AS cause, min(requested_at) AS requested_at,
       max(acked_at) AS acked_at, max(latency_ms) AS latency_ms, max(attempts) AS attempts,
       argMax(detail, (at, seq)) AS detail
FROM custos.revocations FINAL
GROUP BY revocation_id, target;
