//! Fetching the synchronizer's topology history from the topology manager. Members use it to
//! catch up on topology transactions sequenced before they joined; every entry is verified
//! against the owner key the member was configured with, never against a key the server sends.

use meridian_core::crypto::PublicKey;
use meridian_core::topology::{SignedTopologyTransaction, TopologyError, TopologyState};
use meridian_core::Timestamp;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_proto::v1::GetTopologyRequest;

use crate::error::Peer;
use crate::ClientError;

/// Fetches the signed topology history (effective time, transaction) from the first of the
/// topology manager's replicas that answers. Every replica, passive ones included, serves the
/// history from the shared database, and the entries are verified by the caller either way.
pub async fn fetch_topology(
    endpoints: &[String],
) -> Result<Vec<(Timestamp, SignedTopologyTransaction)>, ClientError> {
    let mut last_error = ClientError::InvalidConfig("no topology manager endpoint given".into());
    for endpoint in endpoints {
        match fetch_topology_from(endpoint).await {
            Ok(entries) => return Ok(entries),
            Err(error @ ClientError::Unavailable { .. }) => last_error = error,
            Err(error) => return Err(error),
        }
    }
    Err(last_error)
}

async fn fetch_topology_from(
    endpoint: &str,
) -> Result<Vec<(Timestamp, SignedTopologyTransaction)>, ClientError> {
    let channel = crate::tls::endpoint(endpoint, None, "topology manager endpoint")?
        .connect()
        .await
        .map_err(|e| ClientError::Unavailable {
            peer: Peer::TopologyManager,
            endpoint: endpoint.to_owned(),
            attempts: 1,
            last_error: e.to_string(),
        })?;
    let mut client = TopologyAdminServiceClient::new(channel);
    let response = client
        .get_topology(GetTopologyRequest {})
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable => ClientError::Unavailable {
                peer: Peer::TopologyManager,
                endpoint: endpoint.to_owned(),
                attempts: 1,
                last_error: status.message().to_owned(),
            },
            code => ClientError::Rejected {
                code,
                message: status.message().to_owned(),
            },
        })?
        .into_inner();
    Ok(response
        .entries
        .into_iter()
        .map(|entry| {
            (
                Timestamp::from_micros(entry.effective_us),
                SignedTopologyTransaction {
                    transaction_json: entry.transaction_json,
                    signature: entry.signature,
                },
            )
        })
        .collect())
}

/// Fetches the history and adds it to `state`, verifying every signature with the state's
/// owner key. Returns how many entries were new.
pub async fn sync_topology(
    endpoints: &[String],
    state: &mut TopologyState,
) -> Result<usize, ClientError> {
    let mut added = 0;
    for (effective, signed) in fetch_topology(endpoints).await? {
        if add_entry(state, effective, &signed)? {
            added += 1;
        }
    }
    Ok(added)
}

/// Verifies one entry of the manager's history and adds it to `state`; whether it was new.
fn add_entry(
    state: &mut TopologyState,
    effective: Timestamp,
    signed: &SignedTopologyTransaction,
) -> Result<bool, ClientError> {
    state.add(effective, signed).map_err(|error| match error {
        // The manager's entries are the owner's: one that does not verify means the
        // configured key is not the owner's (or the manager serves another synchronizer).
        TopologyError::Signature(_) => ClientError::OwnerKeyMismatch {
            owner: state.owner().to_string(),
            detail: error.to_string(),
        },
        other => ClientError::InvalidAnswer {
            peer: Peer::TopologyManager,
            detail: format!("topology history: {other}"),
        },
    })
}

/// Parses a hex owner key from configuration, with a message naming the setting.
pub fn owner_key(hex: &str) -> Result<PublicKey, ClientError> {
    PublicKey::from_hex(hex)
        .map_err(|e| ClientError::InvalidConfig(format!("owner_public_key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::crypto::SigningKey;
    use meridian_core::topology::{TopologyMapping, TopologyTransaction};
    use meridian_core::MemberId;

    #[test]
    fn history_signed_by_another_key_names_the_owner_key_setting() {
        let owner = SigningKey::from_seed([1; 32]);
        let configured = SigningKey::from_seed([2; 32]).public_key();
        let transaction = TopologyTransaction {
            serial: 1,
            mapping: TopologyMapping::Mediator {
                mediator: MemberId::new("mediator").expect("valid id"),
                public_key: SigningKey::from_seed([3; 32]).public_key().to_string(),
            },
        };
        let signed = SignedTopologyTransaction::sign(&transaction, &owner);
        let mut state = TopologyState::new(configured);
        let error = add_entry(&mut state, Timestamp::from_micros(1), &signed).unwrap_err();
        assert!(
            matches!(error, ClientError::OwnerKeyMismatch { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("owner_public_key {configured}")),
            "{message}"
        );
        assert!(!message.contains("protocol violation"), "{message}");
        let mut right = TopologyState::new(owner.public_key());
        assert!(add_entry(&mut right, Timestamp::from_micros(1), &signed).expect("verifies"));
    }
}
