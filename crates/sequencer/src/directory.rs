//! An in-memory view of the registered members, so validation and delivery need no database
//! round trip per submission. The store is the truth: a miss triggers a (rate-limited)
//! reload, because another sequencer instance may have registered the member.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meridian_core::MemberId;
use meridian_store::{MemberRecord, MemberSeq, SequencerStore, StoreError};
use tokio::sync::Mutex;

/// Misses within this interval share one reload, so a flood of sends naming an unknown
/// recipient cannot turn into a flood of queries.
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

    /// Reloads unless another reload finished less than [`MIN_RELOAD_INTERVAL`] ago.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let mut last = self.last_reload.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_RELOAD_INTERVAL) {
            return Ok(());
        }
        self.reload_now().await?;
        *last = Some(Instant::now());
        Ok(())
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
