-- Immutable audit records. ReplacingMergeTree keyed by the event identity (event_key at the
-- end of the sorting key) collapses replays of the same event; reports read with FINAL
-- (or the audit_events_dedup view) so a redelivered batch never shows twice.
-- ORDER BY leads with (tenant, patient, event_time) for patient-access reports; bloom
-- filters serve the user, token and session lookups.
CREATE TABLE IF NOT EXISTS custos.audit_events
(
    event_key          String,
    event_id           String,
    event_source       String,
    event_type         LowCardinality(String),
    source_format      LowCardinality(String),
    tenant             LowCardinality(String),
    event_time         DateTime64(3, 'UTC'),
    ingested_at        DateTime64(3, 'UTC'),
    outcome            LowCardinality(String),
    issuer             LowCardinality(String),
    user_sub           String,
    user_kind          LowCardinality(String),
    fhir_user          String,
    client_id          LowCardinality(String),
    session_id         String,
    token_jti          String,
    token_type         LowCardinality(String),
    scopes             Array(LowCardinality(String)),
    interaction        LowCardinality(String),
    resource_type      LowCardinality(String),
    resource_id        String,
    patient            String,
    encounter          String,
    consent_id         String,
    purpose_of_use     Array(LowCardinality(String)),
    break_glass_reason String,
    decision           LowCardinality(String),
    http_status        UInt16,
    source_ip          String,
    user_agent         String,
    returned_ids       Array(String),
    error              LowCardinality(String),
    reason             String,
    actor              String,
    request_id         String,
    active             Nullable(Bool),
    period_start       Nullable(DateTime64(3, 'UTC')),
    expires_at         Nullable(DateTime64(3, 'UTC')),
    kafka_topic        LowCardinality(String),
    kafka_partition    Int32,
    kafka_offset       Int64,
    INDEX idx_user_sub user_sub TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_fhir_user fhir_user TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_jti token_jti TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_session session_id TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_event_key event_key TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_type event_type TYPE set(32) GRANULARITY 2
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant, patient, event_time, event_key)
TTL toDateTime(event_time) + INTERVAL {retention_days} DAY;

CREATE VIEW IF NOT EXISTS custos.audit_events_dedup AS
SELECT * FROM custos.audit_events FINAL;
