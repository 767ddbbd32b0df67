//! The topology manager's state and its one write path.
//!
//! A change goes: validate → check the requester's authority ([`authority::authorize`]) →
//! decide against what is in force ([`History::plan`]) → sign the
//! next serial with the owner key → register the member at the sequencer (member mappings, so
//! the new member can be a recipient) → record the *intent* in the store → send it through the
//! sequencer to every member under message id `topology-<serial>` → record the sequencing
//! timestamp as its effective time → add it to the in-memory [`TopologyState`].
//!
//! Changes run one at a time (a tokio mutex), so serials are gap-free and effective times
//! follow serial order. Recording the intent before sending makes every crash recoverable: an
//! intent without effective time is finished before anything else — on start-up, by a
//! background retry, or at the start of the next change — by re-sending under the same message
//! id (the sequencer answers with the original timestamp) or, once the send's deadline has
//! passed, by looking for the event in the manager's own stream ([`Publisher::sequenced_at`]).
//! A transaction is therefore published at most once and never lost once recorded.

use std::sync::{Arc, RwLock};

use meridian_client::ClientError;
use meridian_core::crypto::{PublicKey, SigningKey};
use meridian_core::topology::{
    SignedTopologyTransaction, TopologyMapping, TopologyState, TopologyTransaction,
};
use meridian_core::{MemberId, ParticipantId, Timestamp};
use meridian_store::{TopologyRecord, TopologyStore, TopologyStoreError};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::authority::{self, Authority};
use crate::history::{History, InForce, Plan, Refusal};
use crate::publisher::{PublishError, Publisher, SEND_WINDOW};

/// The answer to a change request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeOutcome {
    pub serial: u64,
    pub effective: Timestamp,
    /// False when the same mapping was already in force.
    pub changed: bool,
}

/// Why a change was not made. Each variant is one gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// ALREADY_EXISTS: the member id is taken (other kind or other key).
    #[error("{0}")]
    AlreadyExists(String),
    /// FAILED_PRECONDITION: e.g. hosting on an unknown participant.
    #[error("{0}")]
    FailedPrecondition(String),
    /// PERMISSION_DENIED: the requester lacks the authority over the party's hosting.
    #[error("{0}")]
    PermissionDenied(String),
    /// UNAVAILABLE: the sequencer or the database is away, or an earlier change is still being
    /// published. Retrying the same call is safe.
    #[error("{0}")]
    Unavailable(String),
    /// INTERNAL: a broken invariant (corrupt store, a second manager on the same database).
    #[error("{0}")]
    Internal(String),
}

impl From<Refusal> for ChangeError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::MemberTaken(m) => ChangeError::AlreadyExists(m),
            Refusal::UnknownParticipant(m) => ChangeError::FailedPrecondition(m),
        }
    }
}

/// Whether a store error means this replica may no longer write: another replica of the
/// manager took over, or this one is passive (DESIGN.md §5).
pub fn is_fenced(error: &TopologyStoreError) -> bool {
    matches!(error, TopologyStoreError::Store(error) if meridian_node::replication::is_fenced(error))
}

fn store_error(context: &str, error: TopologyStoreError) -> ChangeError {
    if is_fenced(&error) {
        ChangeError::Unavailable(format!(
            "{context}: {error}; this replica is no longer the active topology manager, retry at the active one"
        ))
    } else if error.is_transient() {
        ChangeError::Unavailable(format!("{context}: {error}"))
    } else {
        ChangeError::Internal(format!("{context}: {error}"))
    }
}

/// The manager's topology, as loaded from the store: completed entries verified against the
/// owner key, and at most one unpublished intent.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub state: TopologyState,
    pub history: History,
    pub pending: Option<TopologyRecord>,
    pub highest_serial: u64,
}

impl Loaded {
    /// Rebuilds the topology from the store's records, verifying every signature against
    /// `owner` — a history signed by another key means the owner key file was swapped.
    pub fn from_records(owner: PublicKey, records: Vec<TopologyRecord>) -> anyhow::Result<Self> {
        let mut loaded = Loaded {
            state: TopologyState::new(owner),
            history: History::default(),
            pending: None,
            highest_serial: 0,
        };
        let count = records.len();
        for (position, record) in records.into_iter().enumerate() {
            let transaction = record.signed.verify(&owner).map_err(|e| {
                anyhow::anyhow!(
                    "topology serial {} in the store does not verify against the owner key in owner_key_file ({e}); was the key file replaced?",
                    record.serial
                )
            })?;
            if transaction.serial != record.serial {
                anyhow::bail!(
                    "topology serial {} in the store holds a transaction for serial {}",
                    record.serial,
                    transaction.serial
                );
            }
            loaded.highest_serial = record.serial;
            match record.effective {
                Some(effective) => loaded.apply(effective, &record.signed, transaction)?,
                None if position + 1 == count => loaded.pending = Some(record),
                None => anyhow::bail!(
                    "topology serial {} is unpublished but later serials exist",
                    record.serial
                ),
            }
        }
        Ok(loaded)
    }

    fn apply(
        &mut self,
        effective: Timestamp,
        signed: &SignedTopologyTransaction,
        transaction: TopologyTransaction,
    ) -> anyhow::Result<()> {
        self.state
            .add(effective, signed)
            .map_err(|e| anyhow::anyhow!("topology serial {}: {e}", transaction.serial))?;
        self.history.record(InForce {
            serial: transaction.serial,
            effective,
            mapping: transaction.mapping,
            signed: signed.clone(),
        });
        Ok(())
    }

    /// The owner-signed transaction that registers `member` with `key` as the topology manager:
    /// the one in force, the pending one, or `None` if a new one must be published. An id
    /// already used otherwise, or with another key, is an error an operator must resolve.
    pub fn own_registration(
        &self,
        member: &MemberId,
        key: &PublicKey,
        owner: &PublicKey,
    ) -> anyhow::Result<Option<SignedTopologyTransaction>> {
        let wanted = TopologyMapping::TopologyManager {
            manager: member.clone(),
            public_key: key.to_string(),
        };
        if let Some(current) = self.history.member(member) {
            if current.mapping == wanted {
                return Ok(Some(current.signed.clone()));
            }
            anyhow::bail!(
                "member_id {member} is registered by topology serial {} as {}, not as this manager with the key in key_file ({key}); restore the original key_file or choose another member_id",
                current.serial,
                current.signed.transaction_json
            );
        }
        if let Some(pending) = &self.pending {
            let transaction = pending.signed.verify(owner)?;
            if transaction.mapping == wanted {
                return Ok(Some(pending.signed.clone()));
            }
            anyhow::bail!(
                "topology serial {} is still unpublished and this manager ({member}) is not registered yet; start it with the member_id and key_file it had before",
                pending.serial
            );
        }
        Ok(None)
    }
}

/// The part only the change path touches, behind the mutex.
struct Writer {
    pending: Option<TopologyRecord>,
    highest_serial: u64,
    /// A store write failed ambiguously: re-read the store before the next change.
    resync: bool,
}

/// What readers see: replaced only by the change path, read without waiting for a change.
struct View {
    state: TopologyState,
    history: History,
}

pub struct Manager {
    member: MemberId,
    owner: SigningKey,
    store: Arc<dyn TopologyStore>,
    publisher: Publisher,
    writer: Mutex<Writer>,
    view: RwLock<View>,
    /// Mirrors `writer.pending.is_some()` for the status page, which must not wait on the lock.
    pending_serial: RwLock<Option<u64>>,
    /// Cancelled when a write finds this replica fenced, so the replica demotes itself at once
    /// instead of at the next lease renewal. Nobody listens on an unreplicated manager.
    fenced: CancellationToken,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// A point-in-time summary for `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub highest_published_serial: Option<u64>,
    pub pending_serial: Option<u64>,
    pub participants: usize,
    pub mediators: usize,
    pub parties: usize,
    pub last_effective: Option<Timestamp>,
}

impl Manager {
    pub fn new(
        member: MemberId,
        owner: SigningKey,
        store: Arc<dyn TopologyStore>,
        publisher: Publisher,
        loaded: Loaded,
    ) -> Self {
        let pending_serial = loaded.pending.as_ref().map(|p| p.serial);
        Self {
            member,
            owner,
            store,
            publisher,
            writer: Mutex::new(Writer {
                pending: loaded.pending,
                highest_serial: loaded.highest_serial,
                resync: false,
            }),
            view: RwLock::new(View {
                state: loaded.state,
                history: loaded.history,
            }),
            pending_serial: RwLock::new(pending_serial),
            fenced: CancellationToken::new(),
        }
    }

    /// Cancels `alarm` when a store write finds this replica fenced.
    pub fn with_fence_alarm(mut self, alarm: CancellationToken) -> Self {
        self.fenced = alarm;
        self
    }

    /// Raises the fence alarm for a fenced write; passes every error through.
    fn check_fence(&self, error: TopologyStoreError) -> TopologyStoreError {
        if is_fenced(&error) {
            tracing::warn!(%error, "a topology write found this replica fenced; demoting");
            self.fenced.cancel();
        }
        error
    }

    pub fn owner_public_key(&self) -> PublicKey {
        self.owner.public_key()
    }

    /// The completed history with effective times, ordered by effective time.
    pub fn signed_history(&self) -> Vec<(Timestamp, SignedTopologyTransaction)> {
        self.read_view(|view| view.state.signed_history())
    }

    pub fn summary(&self) -> Summary {
        let pending_serial = *self
            .pending_serial
            .read()
            .unwrap_or_else(|p| p.into_inner());
        self.read_view(|view| {
            let latest = view.state.latest();
            Summary {
                highest_published_serial: view.state.highest_serial(),
                pending_serial,
                participants: latest.participants().count(),
                mediators: latest.mediators().count(),
                parties: latest.parties().count(),
                last_effective: view.state.signed_history().last().map(|(t, _)| *t),
            }
        })
    }

    pub fn has_pending(&self) -> bool {
        self.pending_serial
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn read_view<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        // A panic while holding the lock cannot leave the view half-updated: it is replaced
        // field by field only after every fallible step.
        f(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn set_pending(&self, writer: &mut Writer, pending: Option<TopologyRecord>) {
        *self
            .pending_serial
            .write()
            .unwrap_or_else(|p| p.into_inner()) = pending.as_ref().map(|p| p.serial);
        writer.pending = pending;
    }

    /// Publishes the pending intent, if any. Used at start-up and by the background retry.
    pub async fn finish_pending(&self) -> Result<(), ChangeError> {
        let mut writer = self.writer.lock().await;
        self.prepare(&mut writer).await
    }

    /// The key `participant` is registered with, to check its signature. Keys never change
    /// (the manager refuses to), so this may be read outside the change path.
    pub fn participant_key(&self, participant: &ParticipantId) -> Option<PublicKey> {
        self.read_view(|view| view.history.participant_key(participant))
    }

    /// Applies `mapping` (already validated) if `authority` may make it and it changes the
    /// topology. The authority is judged here, under the change lock and after any pending
    /// change is published, so that two requests cannot both find a party hosted nowhere.
    pub async fn change(
        &self,
        mapping: TopologyMapping,
        authority: Authority,
    ) -> Result<ChangeOutcome, ChangeError> {
        let mut writer = self.writer.lock().await;
        self.prepare(&mut writer).await?;
        let plan = self.read_view(|view| {
            let hosts = match &mapping {
                TopologyMapping::PartyToParticipant { party, .. } => view.history.hosts(party),
                _ => Default::default(),
            };
            authority::authorize(&mapping, &authority, &hosts)
                .map_err(ChangeError::PermissionDenied)?;
            Ok::<_, ChangeError>(view.history.plan(&mapping)?)
        })?;
        if let Plan::Unchanged { serial, effective } = plan {
            return Ok(ChangeOutcome {
                serial,
                effective,
                changed: false,
            });
        }
        let serial = writer.highest_serial + 1;
        let transaction = TopologyTransaction {
            serial,
            mapping: mapping.clone(),
        };
        let signed = SignedTopologyTransaction::sign(&transaction, &self.owner);
        // Registration first: the new member must be registered to be a recipient of its own
        // topology transaction. It is idempotent and harmless if we stop right after.
        if mapping.member_key().is_some() {
            self.publisher
                .register(&signed)
                .await
                .map_err(|e| registration_error(&mapping, e))?;
        }
        let deadline = Timestamp::now().saturating_add(SEND_WINDOW);
        if let Err(error) = self.store.record_intent(serial, &signed, deadline).await {
            let error = self.check_fence(error);
            // The commit may or may not have happened; the store is the truth.
            writer.resync = true;
            return Err(store_error(
                &format!("recording topology serial {serial}"),
                error,
            ));
        }
        writer.highest_serial = serial;
        let record = TopologyRecord {
            serial,
            signed,
            max_sequencing_time: deadline,
            effective: None,
        };
        self.set_pending(&mut writer, Some(record));
        let effective = self.publish_pending(&mut writer).await.map_err(|error| {
            ChangeError::Unavailable(format!(
                "topology serial {serial} is signed and recorded but not yet confirmed by the sequencer ({error}); it is published before any other change, and retrying this call is safe"
            ))
        })?;
        Ok(ChangeOutcome {
            serial,
            effective,
            changed: true,
        })
    }

    /// Re-reads the store if needed and publishes a pending intent: what every change waits
    /// for, so that the next serial is planned against a complete topology.
    async fn prepare(&self, writer: &mut Writer) -> Result<(), ChangeError> {
        if writer.resync {
            self.resync(writer).await?;
        }
        if let Some(pending) = writer.pending.as_ref().map(|p| p.serial) {
            self.publish_pending(writer).await.map_err(|error| {
                ChangeError::Unavailable(format!(
                    "topology serial {pending} is not yet confirmed by the sequencer ({error}); no new change is made until it is"
                ))
            })?;
        }
        Ok(())
    }

    async fn resync(&self, writer: &mut Writer) -> Result<(), ChangeError> {
        let records = self
            .store
            .records()
            .await
            .map_err(|e| store_error("re-reading the topology store", e))?;
        let loaded = Loaded::from_records(self.owner.public_key(), records)
            .map_err(|e| ChangeError::Internal(e.to_string()))?;
        writer.highest_serial = loaded.highest_serial;
        writer.resync = false;
        self.set_pending(writer, loaded.pending);
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.state = loaded.state;
        view.history = loaded.history;
        Ok(())
    }

    /// Gets the pending intent sequenced (or learns when it was) and completes it.
    async fn publish_pending(&self, writer: &mut Writer) -> Result<Timestamp, String> {
        let Some(intent) = writer.pending.clone() else {
            return Err("nothing pending".to_owned());
        };
        let transaction = intent
            .signed
            .verify(&self.owner.public_key())
            .map_err(|e| format!("pending serial {}: {e}", intent.serial))?;
        if transaction.mapping.member_key().is_some() {
            self.publisher
                .register(&intent.signed)
                .await
                .map_err(|e| format!("registering the member at the sequencer: {e}"))?;
        }
        let recipients = self.read_view(|view| view.history.members_with(&transaction.mapping));
        let deadline = if Timestamp::now() < intent.max_sequencing_time {
            // Same message id, same deadline: if an earlier attempt was sequenced, the
            // sequencer's deduplication answers with its timestamp.
            intent.max_sequencing_time
        } else {
            match self.sequenced_after_deadline(&intent).await? {
                Some(effective) => {
                    tracing::info!(serial = intent.serial, %effective, "found the earlier send in the own event stream");
                    return self
                        .complete(writer, &intent, transaction.mapping, effective)
                        .await;
                }
                None => {
                    // The earlier attempt provably failed: a new attempt needs a new deadline,
                    // recorded first so that a crash during it is resolved against it.
                    let deadline = Timestamp::now().saturating_add(SEND_WINDOW);
                    self.store
                        .renew_intent(intent.serial, deadline)
                        .await
                        .map_err(|e| {
                            format!("renewing the send deadline: {}", self.check_fence(e))
                        })?;
                    let mut renewed = intent.clone();
                    renewed.max_sequencing_time = deadline;
                    self.set_pending(writer, Some(renewed));
                    deadline
                }
            }
        };
        let effective = self
            .publisher
            .send(intent.serial, &intent.signed, &recipients, deadline)
            .await
            .map_err(|e| e.to_string())?
            .timestamp;
        self.complete(writer, &intent, transaction.mapping, effective)
            .await
    }

    /// Records the effective time of the pending intent and adds it to the topology.
    async fn complete(
        &self,
        writer: &mut Writer,
        intent: &TopologyRecord,
        mapping: TopologyMapping,
        effective: Timestamp,
    ) -> Result<Timestamp, String> {
        self.store
            .complete(intent.serial, effective)
            .await
            .map_err(|e| {
                format!(
                    "recording the effective time {effective}: {}",
                    self.check_fence(e)
                )
            })?;
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = view.state.add(effective, &intent.signed) {
                // Unreachable while plan() mirrors TopologyState's rules; if it ever fires,
                // members will reject the transaction too, so say so loudly.
                tracing::error!(serial = intent.serial, %error, "published topology transaction does not apply");
            }
            view.history.record(InForce {
                serial: intent.serial,
                effective,
                mapping,
                signed: intent.signed.clone(),
            });
        }
        self.set_pending(writer, None);
        tracing::info!(serial = intent.serial, %effective, transaction = %intent.signed.transaction_json, "topology transaction published");
        Ok(effective)
    }

    /// Whether the pending intent's latest attempt, whose deadline has passed, was sequenced:
    /// `Some(time)` if so, `None` if it provably was not.
    async fn sequenced_after_deadline(
        &self,
        intent: &TopologyRecord,
    ) -> Result<Option<Timestamp>, String> {
        self.publisher
            .sequenced_at(intent.serial, intent.max_sequencing_time)
            .await
            .map_err(|e| match e {
                PublishError::Sequencer(e) => e.to_string(),
                PublishError::Inconclusive(reason) => reason,
            })
    }

    pub fn member(&self) -> &MemberId {
        &self.member
    }
}

fn registration_error(mapping: &TopologyMapping, error: ClientError) -> ChangeError {
    let member = mapping
        .member_key()
        .map(|(m, _)| m.to_string())
        .unwrap_or_default();
    match error {
        ClientError::Rejected {
            code: tonic::Code::AlreadyExists,
            message,
        } => ChangeError::AlreadyExists(format!(
            "the sequencer already has member {member} with a different key: {message}"
        )),
        ClientError::Rejected { code, message } => ChangeError::FailedPrecondition(format!(
            "the sequencer refused to register {member} ({code:?}): {message}"
        )),
        other => ChangeError::Unavailable(format!(
            "registering {member} at the sequencer failed: {other}"
        )),
    }
}
