-- Signed checkpoints outlive the audit rows they cover. Verification after retention anchors
-- the remaining records of a chain at the checkpoint whose range holds the expired ones (see
-- ingest/src/verify.rs), so the checkpoints must still be there when the rows they cover are
-- gone: 0003 gave them the same TTL as the audit rows; they are now kept (a few hundred bytes
-- per checkpoint). Guarded (schemas/src/migrations.rs): skipped once the table has no TTL.
ALTER TABLE custos.chain_checkpoints REMOVE TTL;
