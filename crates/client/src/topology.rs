//! Fetching the synchronizer's topology history from the topology manager. Members use it to
//! catch up on topology transactions sequenced before they joined; every entry is verified
//! against the owner key the member was configured with, never against a key the server sends.

use meridian_core::crypto::PublicKey;
use meridian_core::topology::{SignedTopologyTransaction, TopologyState};
use meridian_core::Timestamp;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_proto::v1::GetTopologyRequest;

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
    let mut client = TopologyAdminServiceClient::connect(endpoint.to_owned())
        .await
        .map_err(|e| ClientError::Unavailable {
            endpoint: endpoint.to_owned(),
            attempts: 1,
            last_error: e.to_string(),
        })?;
    let response = client
        .get_topology(GetTopologyRequest {})
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable => ClientError::Unavailable {
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
        if state
            .add(effective, &signed)
            .map_err(|e| ClientError::Protocol(format!("topology from the manager: {e}")))?
        {
            added += 1;
        }
    }
    Ok(added)
}

/// Parses a hex owner key from configuration, with a message naming the setting.
pub fn owner_key(hex: &str) -> Result<PublicKey, ClientError> {
    PublicKey::from_hex(hex)
        .map_err(|e| ClientError::InvalidConfig(format!("owner_public_key: {e}")))
}
