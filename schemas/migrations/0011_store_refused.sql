-- Rows that passed decoding but that ClickHouse refused for good (a constraint, a value a
-- column cannot hold) are dead-lettered by the writer, and recorded here with their whole
-- content: the audit row as JSON, already pseudonymized, hashes in hex. They were chained
-- before the store refused them, so `verify` reads them from here to prove the chain
-- through them; an empty value means a message rejected while decoding (not chained).
ALTER TABLE custos.ingest_rejections ADD COLUMN IF NOT EXISTS refused_row String DEFAULT '';
