//! Keycloak event JSON (placeholder being written by a teammate).
use crate::error::DecodeError;
use crate::event::Event;
/// Decodes a Keycloak user or admin event.
pub fn decode_keycloak(_bytes: &[u8]) -> Result<Event, DecodeError> {
    Err(DecodeError::UnknownFormat("keycloak decoder not yet written"))
}
