//! Placeholder crate root (filled by the consent issue).
