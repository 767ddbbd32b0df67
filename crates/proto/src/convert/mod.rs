//! Conversions between wire messages and domain types, one module per API: [`sequencer`]
//! (submissions and sequenced events) and [`ledger`] (the participant's Ledger API). Decoding
//! validates every field, so a malformed message becomes a [`WireError`] naming the field,
//! never a panic.

pub mod ledger;
pub mod sequencer;

use meridian_core::{IdError, MemberId};

pub use sequencer::{
    envelope_from_wire, envelope_to_wire, event_from_wire, event_to_wire, submission_from_wire,
    submission_to_wire,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("invalid `{field}`: {source}")]
    InvalidId {
        field: &'static str,
        #[source]
        source: IdError,
    },
    /// A field of an application's request, by its path as the API documents it
    /// (`act_as[1]`, `commands[0].create.payload_json`): the message is what the application
    /// reads, so it leads with the path.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl WireError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        WireError::Invalid {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

pub(crate) fn id<T>(
    field: &'static str,
    value: String,
    parse: impl FnOnce(String) -> Result<T, IdError>,
) -> Result<T, WireError> {
    parse(value).map_err(|source| WireError::InvalidId { field, source })
}

pub fn member_id(field: &'static str, value: String) -> Result<MemberId, WireError> {
    id(field, value, MemberId::new)
}
