//! FHIR R4 AuditEvent (placeholder being written by a teammate).
use crate::error::DecodeError;
use crate::event::Event;
/// Decodes a FHIR R4 AuditEvent resource.
pub fn decode_fhir_audit_event(_bytes: &[u8]) -> Result<Event, DecodeError> {
    Err(DecodeError::UnknownFormat("fhir decoder not yet written"))
}
