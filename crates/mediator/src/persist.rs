//! The mapping between the engine's state changes and the store's rows. The store keeps
//! payloads as opaque JSON text; this module is the one place that encodes them and decodes
//! them back, so a row that does not decode is reported with its table and request rather
//! than crashing the mediator.

use meridian_core::protocol::{ConfirmationResponse, InformeeMessage, Signed, Verdict};
use meridian_core::{ParticipantId, Timestamp};
use meridian_store::mediator::{MediatorChange, PendingRequestRecord, VerdictRecord};

use crate::engine::{RestoredRequest, StateChange};

#[derive(Debug, thiserror::Error)]
#[error("corrupt mediator state: {what} of request {request_id}: {detail}")]
pub struct DecodeError {
    pub what: &'static str,
    pub request_id: Timestamp,
    pub detail: String,
}

pub fn to_store(change: &StateChange) -> MediatorChange {
    match change {
        StateChange::RequestAdded {
            request_id,
            deadline,
            informee,
        } => MediatorChange::RequestAdded {
            request_id: *request_id,
            deadline: *deadline,
            informee_json: encode(informee),
        },
        StateChange::ResponseAccepted {
            request_id,
            participant,
            signed,
        } => MediatorChange::ResponseAdded {
            request_id: *request_id,
            participant: participant.clone(),
            response_json: encode(signed),
        },
        StateChange::VerdictDecided {
            request_id,
            informee_participants,
            verdict,
        } => MediatorChange::VerdictDecided {
            request_id: *request_id,
            recipients: informee_participants
                .iter()
                .map(ParticipantId::as_member)
                .collect(),
            verdict_json: encode(verdict),
        },
    }
}

/// A pending request as the engine needs it back. Responses were verified when accepted, so
/// their payloads are decoded without checking the signatures again.
pub fn restored(record: PendingRequestRecord) -> Result<RestoredRequest, DecodeError> {
    let request_id = record.request_id;
    let informee: InformeeMessage =
        serde_json::from_str(&record.informee_json).map_err(|e| DecodeError {
            what: "informee message",
            request_id,
            detail: e.to_string(),
        })?;
    let responses = record
        .responses
        .iter()
        .map(|stored| {
            let corrupt = |detail: String| DecodeError {
                what: "response",
                request_id,
                detail: format!("of {}: {detail}", stored.participant),
            };
            let signed: Signed =
                serde_json::from_str(&stored.response_json).map_err(|e| corrupt(e.to_string()))?;
            let response: ConfirmationResponse = signed
                .decode_unverified()
                .map_err(|e| corrupt(e.to_string()))?;
            if response.request_id != request_id || response.participant != stored.participant {
                return Err(corrupt(format!(
                    "it answers request {} for {}",
                    response.request_id, response.participant
                )));
            }
            Ok(response)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RestoredRequest {
        request_id,
        deadline: record.deadline,
        informee,
        responses,
    })
}

/// A decided verdict to (re)send.
pub fn verdict(record: &VerdictRecord) -> Result<Verdict, DecodeError> {
    serde_json::from_str(&record.verdict_json).map_err(|e| DecodeError {
        what: "verdict",
        request_id: record.request_id,
        detail: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("protocol values always serialize")
}
