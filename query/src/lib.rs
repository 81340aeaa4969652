//! Placeholder crate root (filled by the query issue).
