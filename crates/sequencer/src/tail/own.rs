//! This instance's own committed writes, handed to the reader tail by the writer.
//!
//! On every protocol hop the tail read back from the store the events the writer had just
//! committed (one store call per advance of the safe point). When no other instance has
//! written anything the ring has not read yet, the events between the ring's end and the safe
//! point are exactly this instance's own, so the tail takes them from here instead. The store
//! stays the source of truth whenever that cannot be shown: another instance's events, a
//! failed write (its outcome unknown), a gap in the chain of commits, or more than the bounds
//! hold all send the tail back to the store. Sans I/O.
//!
//! Why the chain is complete: only the writer of the current incarnation commits events for
//! this instance index, each commit's events lie in `(previous watermark, new watermark]`, and
//! every event of an earlier incarnation lies at or below the watermark this one started
//! from. A commit whose predecessor is known ([`OwnCommit::after`]) therefore carries all of
//! the instance's events above it.

use std::collections::VecDeque;

use meridian_core::Timestamp;
use meridian_store::RoutedEvent;

use super::cost_bytes;

/// One commit of this instance, as the writer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCommit {
    /// The watermark of the writer's previous commit, when nothing of this instance can have
    /// been committed since (no write failed in between, whose outcome would be unknown, and
    /// the incarnation is the same; after a start or rejoin, the watermark it began at).
    /// `None` breaks the chain.
    pub after: Option<Timestamp>,
    /// The watermark this commit wrote.
    pub watermark: Timestamp,
    /// The events it sequenced (not the duplicates), in timestamp order.
    pub events: Vec<RoutedEvent>,
    /// The safe point and the other instances' newest event, as the commit read them (see
    /// [`meridian_store::Committed`]).
    pub safe_point: Timestamp,
    pub others_latest_event: Option<Timestamp>,
}

/// The own events the tail may still need, and what makes them sufficient.
#[derive(Debug)]
pub struct OwnWrites {
    /// This instance's events above the tail's position, in timestamp order.
    events: VecDeque<RoutedEvent>,
    bytes: usize,
    /// `(from, through)`: every event of this instance in `(from, through]` that is above the
    /// tail's position is in `events`.
    chain: Option<(Timestamp, Timestamp)>,
    /// The latest commit's safe point and the other instances' newest event as of it.
    view: Option<(Timestamp, Option<Timestamp>)>,
    max_events: usize,
    max_bytes: usize,
}

impl OwnWrites {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            chain: None,
            view: None,
            max_events,
            max_bytes,
        }
    }

    /// Records a commit; `position` is how far the tail has read (events at or below it are in
    /// the ring already and are not kept).
    pub fn record(&mut self, commit: OwnCommit, position: Timestamp) {
        self.view = Some((commit.safe_point, commit.others_latest_event));
        let from = match (self.chain, commit.after) {
            (Some((from, through)), Some(after)) if after == through => from,
            (_, Some(after)) => {
                self.clear();
                after
            }
            // What came between is unknown: the chain starts after this commit.
            (_, None) => {
                self.clear();
                self.chain = Some((commit.watermark, commit.watermark));
                return;
            }
        };
        self.chain = Some((from, commit.watermark.max(from)));
        for event in commit.events {
            if event.timestamp > position {
                self.bytes += cost_bytes(&event);
                self.events.push_back(event);
            }
        }
        if self.events.len() > self.max_events || self.bytes > self.max_bytes {
            // The tail is far behind (or reads nothing): the store serves it.
            self.clear();
            self.chain = None;
        }
    }

    /// The events of `(position, through]` and `through`, the furthest point toward `up_to`
    /// up to which they are all there is; `None` when only the store can say.
    pub fn take(
        &mut self,
        position: Timestamp,
        up_to: Timestamp,
    ) -> Option<(Vec<RoutedEvent>, Timestamp)> {
        let (safe_point, others_latest) = self.view?;
        let (from, chain_through) = self.chain?;
        let through = up_to.min(safe_point).min(chain_through);
        let others_all_read = others_latest.is_none_or(|latest| latest <= position);
        if through <= position || from > position || !others_all_read {
            return None;
        }
        self.discard_through(position);
        let count = self.events.partition_point(|e| e.timestamp <= through);
        let taken: Vec<RoutedEvent> = self.events.drain(..count).collect();
        self.bytes -= taken.iter().map(cost_bytes).sum::<usize>();
        Some((taken, through))
    }

    /// The tail has everything up to `position` (from the store, or it restarted there).
    pub fn discard_through(&mut self, position: Timestamp) {
        while let Some(event) = self.events.front() {
            if event.timestamp > position {
                break;
            }
            self.bytes -= cost_bytes(event);
            self.events.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests;
