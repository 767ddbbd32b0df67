//! Values that only move forward, published on a tokio `watch` channel: a sequencer's safe
//! point, a participant's ledger end. Publishing an older value (a slower task's, a stale
//! read's) must neither move it back nor wake the watchers.

use tokio::sync::watch;

/// Publishes `value` on `channel` if it is above the current one; watchers wake only then.
pub fn advance_to<T: PartialOrd>(channel: &watch::Sender<T>, value: T) {
    channel.send_if_modified(|current| {
        let advanced = value > *current;
        if advanced {
            *current = value;
        }
        advanced
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_higher_value_is_published_and_wakes_the_watchers() {
        let (sender, mut receiver) = watch::channel(5_u64);
        receiver.mark_unchanged();
        advance_to(&sender, 3);
        advance_to(&sender, 5);
        assert_eq!(*receiver.borrow(), 5);
        assert!(
            !receiver.has_changed().expect("open"),
            "not moved back, nobody woken"
        );
        advance_to(&sender, 8);
        assert!(receiver.has_changed().expect("open"));
        assert_eq!(*receiver.borrow_and_update(), 8);
    }
}
