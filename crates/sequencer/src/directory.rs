//! An in-memory view of the registered members, so validation and delivery need no database
//! round trip per submission. The store is the truth: a miss triggers a (rate-limited)
//! reload, because another sequencer instance may have registered the member.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meridian_core::MemberId;
use meridian_store::{MemberRecord, MemberSeq, SequencerStore, StoreError};
use tokio::sync::Mutex;

/// Reloads start at most this often, so a flood of sends naming an unknown recipient cannot
/// turn into a flood of queries; misses in between share the next reload.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Maps {
    by_id: HashMap<MemberId, MemberRecord>,
    by_seq: HashMap<MemberSeq, MemberId>,
}

pub struct MemberDirectory {
    store: Arc<dyn SequencerStore>,
    maps: RwLock<Maps>,
    last_reload: Mutex<Option<Instant>>,
}

impl MemberDirectory {
    pub async fn load(store: Arc<dyn SequencerStore>) -> Result<Self, StoreError> {
        let directory = Self {
            store,
            maps: RwLock::new(Maps::default()),
            last_reload: Mutex::new(None),
        };
        directory.reload_now().await?;
        Ok(directory)
    }

    async fn reload_now(&self) -> Result<(), StoreError> {
        let members = self.store.members().await?;
        let mut maps = Maps::default();
        for record in members {
            maps.by_seq.insert(record.seq, record.id.clone());
            maps.by_id.insert(record.id.clone(), record);
        }
        *self.maps.write().unwrap_or_else(|p| p.into_inner()) = maps;
        Ok(())
    }

    /// Makes sure the view includes every member registered before this call: reloads, unless
    /// a reload that started after this call began already did. Reloads start at most once per
    /// [`MIN_RELOAD_INTERVAL`]; a miss in between waits for the next one rather than skipping
    /// it, because another instance may have registered the member a moment ago (a topology
    /// manager registers at one instance and sends through another).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let missed_at = Instant::now();
        let mut last_started = self.last_reload.lock().await;
        if last_started.is_some_and(|started| started >= missed_at) {
            return Ok(());
        }
        if let Some(started) = *last_started {
            let next_allowed = started + MIN_RELOAD_INTERVAL;
            if next_allowed > Instant::now() {
                tokio::time::sleep_until(next_allowed.into()).await;
            }
        }
        *last_started = Some(Instant::now());
        self.reload_now().await
    }

    pub fn insert(&self, record: MemberRecord) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        maps.by_seq.insert(record.seq, record.id.clone());
        maps.by_id.insert(record.id.clone(), record);
    }

    pub fn get(&self, id: &MemberId) -> Option<MemberRecord> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        maps.by_id.get(id).cloned()
    }

    pub fn seq(&self, id: &MemberId) -> Option<MemberSeq> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        maps.by_id.get(id).map(|r| r.seq)
    }

    pub fn id_of(&self, seq: MemberSeq) -> Option<MemberId> {
        let maps = self.maps.read().unwrap_or_else(|p| p.into_inner());
        maps.by_seq.get(&seq).cloned()
    }

    /// Looks a member up, reloading once on a miss.
    pub async fn get_or_reload(&self, id: &MemberId) -> Result<Option<MemberRecord>, StoreError> {
        if let Some(record) = self.get(id) {
            return Ok(Some(record));
        }
        self.reload().await?;
        Ok(self.get(id))
    }

    pub fn len(&self) -> usize {
        self.maps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::crypto::SigningKey;
    use meridian_core::Timestamp;
    use meridian_store::StorageConfig;

    #[tokio::test]
    async fn a_member_registered_at_another_instance_is_found_even_right_after_a_reload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = StorageConfig::Sqlite {
            path: dir.path().join("sequencer.db"),
        };
        let other_instance = meridian_store::open_sequencer_store(&storage)
            .await
            .expect("store");
        let store = meridian_store::open_sequencer_store(&storage)
            .await
            .expect("store");
        let directory = MemberDirectory::load(store).await.expect("directory");
        let key = SigningKey::generate().public_key();
        for name in ["mediator", "participant1", "participant2"] {
            // Registered elsewhere, then named in a send here: back to back, well within the
            // reload interval of the previous miss.
            let id = MemberId::new(name).expect("id");
            other_instance
                .register_member(&id, &key, Timestamp::now())
                .await
                .expect("registered");
            assert!(
                directory
                    .get_or_reload(&id)
                    .await
                    .expect("reload")
                    .is_some(),
                "{name} registered at another instance was not found"
            );
        }
        assert_eq!(directory.len(), 3);
    }
}
