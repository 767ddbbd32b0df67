//! The shared reader tail: one task per sequencer instance follows the safe point, reads every
//! member's new events once per advance (one [`SequencerStore::events_after`] call) and keeps
//! the most recent ones in a bounded ring that every subscription of the instance serves from.
//!
//! Without it each subscription ran its own store query on every commit, 5–8 queries per commit
//! for a typical synchronizer (issue 14). The store stays the source of truth: a subscription
//! whose position is older than the ring (a resume from an old timestamp, a slow client the
//! ring has moved past) reads its member's events from the store, page by page, and serves
//! from the ring again once it has caught up with it. [`next_step`] makes that decision and
//! [`Cursor`] keeps the subscription's position, both without I/O; [`crate::reader`] runs
//! them.
//!
//! The ring holds every event in `(from, to]`: `to` is how far the tail has read (never above
//! the safe point, so nothing can still be written below it), `from` the newest event it has
//! evicted (bounded by [`TAIL_MAX_EVENTS`] and [`TAIL_MAX_BYTES`]). A position `p` with
//! `from <= p` can be served from the ring with no gap; one below `from` cannot.
//!
//! An instance without subscriptions reads nothing: its ring just moves to the safe point.
//!
//! While no other instance has written since the ring's end, the tail takes this instance's
//! own commits from the writer ([`own`]) instead of reading them back: a single-writer
//! synchronizer then costs no store read per hop at all.
//!
//! A failed store read is published to every subscription (which ends its stream with
//! UNAVAILABLE, as a failed read of its own did before); the tail itself retries after
//! [`TAIL_RETRY`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use meridian_core::Timestamp;
use meridian_store::{MemberSeq, RoutedEvent, SequencerStore, StoredEvent};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{SequencerMetrics, TailSourceLabel};

pub mod own;

pub use own::{OwnCommit, OwnWrites};

/// At most this many events in the ring. A subscriber keeping up lags by milliseconds; this
/// covers well over that at saturation (about 0.5 s of `bench ledger`'s events), and one
/// lagging further reads the store, as every subscriber did before the tail.
pub const TAIL_MAX_EVENTS: usize = 4_096;
/// At most this many bytes of events in the ring (batches plus [`EVENT_OVERHEAD_BYTES`] each):
/// a bound on the sequencer's memory whatever the payload sizes. A 16 MiB ring measured
/// +16 MiB of sequencer peak RSS under `bench ledger`, for no delivery it needed.
pub const TAIL_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Events the tail reads per store query; a larger advance takes several.
pub const TAIL_PAGE_EVENTS: u32 = 1_000;
/// Events a subscription looks at per hold of the ring's lock, so that neither the tail nor
/// other subscriptions wait long for it.
pub const RING_SCAN_EVENTS: usize = 512;
/// Pause before the tail reads again after a failed read.
pub const TAIL_RETRY: Duration = Duration::from_millis(100);
/// What an event costs in the ring besides its batch: the struct, its message id and
/// recipients, the `Arc`.
pub const EVENT_OVERHEAD_BYTES: usize = 128;

/// The most recent events of all members, `(from, to]` complete. Sans I/O.
#[derive(Debug)]
pub struct TailRing {
    events: VecDeque<Arc<RoutedEvent>>,
    bytes: usize,
    from: Timestamp,
    to: Timestamp,
    max_events: usize,
    max_bytes: usize,
}

fn cost_bytes(event: &RoutedEvent) -> usize {
    EVENT_OVERHEAD_BYTES
        + event.batch.len()
        + event.message_id.as_str().len()
        + event.recipients.len() * std::mem::size_of::<MemberSeq>()
}

impl TailRing {
    /// An empty ring that has read everything up to `at` (and holds none of it).
    pub fn new(at: Timestamp, max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            from: at,
            to: at,
            max_events,
            max_bytes,
        }
    }

    /// Every event with `from < ts <= to` is in the ring.
    pub fn covers(&self) -> (Timestamp, Timestamp) {
        (self.from, self.to)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Empties the ring and starts it at `at`: what the tail does when it first learns the
    /// safe point, rather than reading the whole history into the ring.
    pub fn restart_at(&mut self, at: Timestamp) {
        self.events.clear();
        self.bytes = 0;
        self.from = at;
        self.to = at;
    }

    /// Appends the events of `(to, through]` (a store read: in timestamp order, all of them)
    /// and moves `to` to `through`; then evicts the oldest events beyond the bounds. Events
    /// outside `(to, through]` are ignored: they are either in the ring already or not yet
    /// safe to deliver.
    pub fn extend(&mut self, events: impl IntoIterator<Item = RoutedEvent>, through: Timestamp) {
        if through <= self.to {
            return;
        }
        for event in events {
            let newest = self.events.back().map_or(self.to, |e| e.timestamp);
            if event.timestamp <= newest || event.timestamp > through {
                continue;
            }
            self.bytes += cost_bytes(&event);
            self.events.push_back(Arc::new(event));
        }
        self.to = through;
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(evicted) = self.events.pop_front() else {
                break;
            };
            self.bytes -= cost_bytes(&evicted);
            self.from = evicted.timestamp;
        }
    }

    /// `member`'s events after `position`, looking at no more than `max_scan` events.
    pub fn read(
        &self,
        member: MemberSeq,
        position: Option<Timestamp>,
        max_scan: usize,
    ) -> RingRead {
        let Some(position) = position.filter(|p| *p >= self.from) else {
            return RingRead::Behind;
        };
        if position >= self.to {
            return RingRead::UpToDate;
        }
        let start = self.events.partition_point(|e| e.timestamp <= position);
        let mut events = Vec::new();
        let mut through = self.to;
        for (scanned, event) in self.events.range(start..).enumerate() {
            if scanned == max_scan.max(1) {
                // Everything before this event has been looked at.
                through = self.events[start + scanned - 1].timestamp;
                break;
            }
            if event.recipients.binary_search(&member).is_ok() {
                events.push(event.clone());
            }
        }
        RingRead::Events { events, through }
    }
}

/// What the ring has for a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingRead {
    /// The position is older than the ring (or unset): only the store has what comes next.
    Behind,
    /// Nothing after the position yet.
    UpToDate,
    /// The member's events after the position up to and including `through`, every event up
    /// to `through` having been looked at (`events` may be empty).
    Events {
        events: Vec<Arc<RoutedEvent>>,
        through: Timestamp,
    },
}

/// A subscription's place in its member's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Everything up to here has been considered (delivered if addressed to the member).
    position: Option<Timestamp>,
    /// The member's latest event at or before `position` (`Some(None)`: none at all), if known.
    /// Events read from the store carry theirs; ring events need it from here.
    previous: Option<Option<Timestamp>>,
}

impl Cursor {
    /// A subscription that has seen everything up to `after` (`None`: nothing yet).
    pub fn new(after: Option<Timestamp>) -> Self {
        Self {
            position: after,
            // From the very beginning, the first event has no predecessor.
            previous: if after.is_none() { Some(None) } else { None },
        }
    }

    pub fn position(&self) -> Option<Timestamp> {
        self.position
    }

    /// The member's latest event at or before the position, if known.
    pub fn previous(&self) -> Option<Option<Timestamp>> {
        self.previous
    }

    /// The store's answer to [`Step::LookUpPrevious`].
    pub fn set_previous(&mut self, previous: Option<Timestamp>) {
        self.previous = Some(previous);
    }

    /// An event of the member at `timestamp` (above the position) was delivered.
    pub fn delivered(&mut self, timestamp: Timestamp) {
        self.position = Some(timestamp);
        self.previous = Some(Some(timestamp));
    }

    /// Everything up to `through` has been considered; events delivered on the way were
    /// reported with [`Cursor::delivered`]. Never moves backwards.
    pub fn advance_to(&mut self, through: Timestamp) {
        if self.position.is_none_or(|p| p < through) {
            self.position = Some(through);
        }
    }

    /// A store page for `(position, up_to]` with at most `limit` events was delivered: a full
    /// page ends at its last event (more may follow), a shorter one covers the whole range.
    pub fn store_page_done(&mut self, page: &[StoredEvent], limit: u32, up_to: Timestamp) {
        if let Some(last) = page.last() {
            self.delivered(last.timestamp);
        }
        if page.len() < limit as usize {
            self.advance_to(up_to);
        }
    }
}

/// What a subscription does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to deliver until the tail moves.
    Wait,
    /// The position is older than the ring: read the member's events in `(after, up_to]`
    /// from the store, a page at a time, then ask again.
    ReadStore {
        after: Option<Timestamp>,
        up_to: Timestamp,
    },
    /// The ring has events for the member, but its previous event at `at` (the position) is
    /// not known: ask the store ([`SequencerStore::member_history_at`]), then ask again.
    LookUpPrevious { at: Timestamp },
    /// Deliver `events` (in order; the first one's previous event is the cursor's), then
    /// advance the cursor to `through`.
    Deliver {
        events: Vec<Arc<RoutedEvent>>,
        through: Timestamp,
    },
}

/// The decision for a subscription at `cursor` given the ring: from the ring when it covers
/// the position, else from the store up to what the ring has read (at or below the safe
/// point, so the store's answer is final and the ring continues exactly where it ends).
pub fn next_step(cursor: &Cursor, ring: &TailRing, member: MemberSeq, max_scan: usize) -> Step {
    let (_, to) = ring.covers();
    match ring.read(member, cursor.position, max_scan) {
        RingRead::UpToDate => Step::Wait,
        // `to == MIN`: the tail has not learnt the safe point yet; nothing is deliverable.
        RingRead::Behind if to > Timestamp::MIN && cursor.position.is_none_or(|p| p < to) => {
            Step::ReadStore {
                after: cursor.position,
                up_to: to,
            }
        }
        RingRead::Behind => Step::Wait,
        RingRead::Events { events, through } => match (events.is_empty(), cursor.previous) {
            (false, None) => Step::LookUpPrevious {
                // `read` returns events only for a position inside the ring.
                at: cursor.position.unwrap_or(Timestamp::MIN),
            },
            _ => Step::Deliver { events, through },
        },
    }
}

/// How far the tail has read, and how many of its reads failed; what subscriptions wait on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailProgress {
    pub to: Timestamp,
    pub failures: u64,
    /// The latest failure, for the status the subscriptions end with.
    pub last_error: Option<Arc<str>>,
}

/// How the tail advanced: counters of [`SequencerMetrics::tail_advances`].
#[derive(Debug, Clone, Default)]
struct Advances {
    from_store: Counter,
    from_own_writes: Counter,
}

/// The ring and its progress, shared by the tail task and every subscription, and the own
/// writes the writer hands it.
#[derive(Debug)]
pub struct ReaderTail {
    ring: RwLock<TailRing>,
    progress: watch::Sender<TailProgress>,
    own: Mutex<OwnWrites>,
    advances: Advances,
}

impl ReaderTail {
    /// A tail that has read nothing yet, to be started with [`ReaderTail::start`] once the
    /// writer (which reports to it) exists.
    pub fn with_metrics(metrics: &SequencerMetrics) -> Arc<Self> {
        let source = |source| {
            metrics
                .tail_advances
                .get_or_create(&TailSourceLabel { source })
                .clone()
        };
        let mut tail = Self::new(TAIL_MAX_EVENTS, TAIL_MAX_BYTES);
        tail.advances = Advances {
            from_store: source("store"),
            from_own_writes: source("own_writes"),
        };
        Arc::new(tail)
    }

    /// Starts the tail task, which follows `safe_point` until `shutdown`.
    pub fn start(
        self: &Arc<Self>,
        store: Arc<dyn SequencerStore>,
        safe_point: watch::Receiver<Timestamp>,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(follow(self.clone(), store, safe_point, shutdown));
    }

    /// A tail that has read nothing yet (to the safe point's initial `Timestamp::MIN`).
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        let (progress, _) = watch::channel(TailProgress {
            to: Timestamp::MIN,
            failures: 0,
            last_error: None,
        });
        Self {
            ring: RwLock::new(TailRing::new(Timestamp::MIN, max_events, max_bytes)),
            progress,
            own: Mutex::new(OwnWrites::new(max_events, max_bytes)),
            advances: Advances::default(),
        }
    }

    /// The writer's report of a commit; called before it publishes the commit's safe point, so
    /// that the tail, woken by it, finds the commit here.
    pub fn own_commit(&self, commit: OwnCommit) {
        let position = self.ring().covers().1;
        self.own().record(commit, position);
    }

    fn own(&self) -> std::sync::MutexGuard<'_, OwnWrites> {
        // Every mutation of the own writes completes before anything that could panic.
        self.own.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn progress(&self) -> watch::Receiver<TailProgress> {
        self.progress.subscribe()
    }

    /// The ring, for a short look; never held across an await.
    pub fn ring(&self) -> RwLockReadGuard<'_, TailRing> {
        // A panic while holding the lock leaves the ring consistent (every mutation is
        // complete before any call that could panic), so poisoning is no reason to stop.
        self.ring.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn ring_mut(&self) -> RwLockWriteGuard<'_, TailRing> {
        self.ring.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The tail task: reads `(to, safe point]` whenever the safe point moves.
async fn follow(
    tail: Arc<ReaderTail>,
    store: Arc<dyn SequencerStore>,
    mut safe_point: watch::Receiver<Timestamp>,
    shutdown: CancellationToken,
) {
    loop {
        let up_to = *safe_point.borrow_and_update();
        let to = tail.ring().covers().1;
        // The first safe point, or nobody subscribed (an idle instance): start the ring there
        // rather than read what no one waits for. Older events are served from the store.
        if up_to > to && (to == Timestamp::MIN || tail.progress.receiver_count() == 0) {
            tail.ring_mut().restart_at(up_to);
            tail.own().discard_through(up_to);
            tail.progress.send_modify(|p| p.to = up_to);
            continue;
        }
        if up_to > to {
            let own = tail.own().take(to, up_to);
            if let Some((events, through)) = own {
                tail.ring_mut().extend(events, through);
                tail.advances.from_own_writes.inc();
                tail.progress.send_modify(|p| p.to = through);
                // The safe point may be ahead of the writer's latest report (the peer poll
                // read it): the rest comes from the store.
                continue;
            }
            match store.events_after(Some(to), up_to, TAIL_PAGE_EVENTS).await {
                Ok(events) => {
                    let full = events.len() == TAIL_PAGE_EVENTS as usize;
                    let through = match events.last() {
                        Some(last) if full => last.timestamp,
                        _ => up_to,
                    };
                    tail.ring_mut().extend(events, through);
                    tail.own().discard_through(through);
                    tail.advances.from_store.inc();
                    tail.progress.send_modify(|p| p.to = through);
                    if full {
                        continue;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "the reader tail could not read events; retrying");
                    let message: Arc<str> = error.to_string().into();
                    tail.progress.send_modify(|p| {
                        p.failures += 1;
                        p.last_error = Some(message);
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(TAIL_RETRY) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tokio::select! {
            changed = safe_point.changed() => if changed.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests;
