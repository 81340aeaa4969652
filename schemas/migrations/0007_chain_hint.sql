-- The predecessor's event key beside prev_hash (not hashed): lets verify prove that a missing
-- chain position is a producer duplicate collapsed by deduplication (see schemas/src/chain.rs,
-- collapsed_copy), not a deleted record.
ALTER TABLE custos.audit_events ADD COLUMN IF NOT EXISTS prev_event_key String DEFAULT '';
