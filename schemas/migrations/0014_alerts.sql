-- Incident response (issue 17): alerts raised by the detectors of custos-alerts, the workflow
-- actions on them, the break-glass review decisions, and the detectors' saved state.
-- Record tables are versioned (ReplacingMergeTree: a replay that writes a row again collapses
-- into it, so read with FINAL) and chained by custos.ledger. Subject and patient columns hold
-- the audit rows' stored values (pseudonyms where the audit row has them), never raw ids.

-- One row per revision of an alert. `alert_id` is derived from (tenant, detector, dedup_key),
-- so one incident keeps one alert; a revision is written when its evidence grows.
CREATE TABLE IF NOT EXISTS custos.alerts
(
    alert_id        String,
    revision        UInt32,
    tenant          LowCardinality(String),
    detector        LowCardinality(String),
    severity        LowCardinality(String),
    dedup_key       String,
    subject         String,
    user_kind       LowCardinality(String),
    client_id       LowCardinality(String),
    session_id      String,
    token_jti       String,
    patient         String,
    first_seen      DateTime64(3, 'UTC'),
    last_seen       DateTime64(3, 'UTC'),
    evidence        Array(String),
    evidence_count  UInt32,
    summary         String,
    token_theft     Bool,
    INDEX idx_jti token_jti TYPE bloom_filter(0.01) GRANULARITY 2,
    INDEX idx_subject subject TYPE bloom_filter(0.01) GRANULARITY 2
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(first_seen)
ORDER BY (tenant, alert_id, revision)
TTL toDateTime(first_seen) + INTERVAL {retention_days} DAY;

-- Workflow and responses on an alert: acknowledge, assign, close, reopen (by a person through
-- the alert API) and notify / auto_revoke (by custos-alerts, `detail` holds the receipt).
CREATE TABLE IF NOT EXISTS custos.alert_actions
(
    action_id       String,
    alert_id        String,
    tenant          LowCardinality(String),
    action          LowCardinality(String),
    actor           String,
    assignee        String,
    note            String,
    detail          String,
    at              DateTime64(3, 'UTC'),
    alert_first_seen DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(alert_first_seen)
ORDER BY (tenant, alert_id, at, action_id)
TTL toDateTime(alert_first_seen) + INTERVAL {retention_days} DAY;

-- Decisions of the break-glass review queue. A review item is a break-glass opening in
-- custos.audit_events (`review_id` = its event_key), due a tenant-configured time after it.
CREATE TABLE IF NOT EXISTS custos.break_glass_reviews
(
    review_id       String,
    decision_id     String,
    tenant          LowCardinality(String),
    decision        LowCardinality(String),
    note            String,
    actor           String,
    decided_at      DateTime64(3, 'UTC'),
    opened_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(opened_at)
ORDER BY (tenant, review_id, decision_id)
TTL toDateTime(opened_at) + INTERVAL {retention_days} DAY;

-- The detectors' state, saved with the input offsets it covers; on start custos-alerts loads
-- the latest and replays the input topics from those offsets.
CREATE TABLE IF NOT EXISTS custos.detector_state
(
    consumer        LowCardinality(String),
    saved_at        DateTime64(3, 'UTC'),
    offsets         String,
    state           String
)
ENGINE = MergeTree
ORDER BY (consumer, saved_at)
TTL toDateTime(saved_at) + INTERVAL 7 DAY;
