//! The queue between a node's processing loop and its commit loop (the participant's writer,
//! the mediator's event loop): processed work waits here while a commit is in progress, and
//! the next commit takes all of it that fits into one transaction, as one batch would have
//! held it before the commits were pipelined.

use tokio::sync::mpsc;

/// Processed work that one commit can write together with the work processed after it.
pub trait Mergeable {
    /// What counts against a transaction's bound (events, commands).
    fn size(&self) -> usize;
    /// Appends `later`, processed after `self`.
    fn merge(&mut self, later: Self);
}

/// The commit loop's end of the queue.
pub struct CommitQueue<T> {
    queue: mpsc::Receiver<T>,
    /// Taken from the queue but left out of the last commit: it did not fit.
    carried: Option<T>,
    max_size: usize,
}

impl<T: Mergeable> CommitQueue<T> {
    /// Merges what `queue` holds into commits of at most `max_size` (one item larger than
    /// that is a commit of its own).
    pub fn new(queue: mpsc::Receiver<T>, max_size: usize) -> Self {
        Self {
            queue,
            carried: None,
            max_size,
        }
    }

    /// The next commit's work and how many items it merges; waits for an item when none is
    /// queued, and `None` once the sending side is gone and everything was taken.
    pub async fn next(&mut self) -> Option<(T, u64)> {
        let mut work = match self.carried.take() {
            Some(work) => work,
            None => self.queue.recv().await?,
        };
        let mut merged = 1;
        while let Ok(later) = self.queue.try_recv() {
            if work.size() + later.size() > self.max_size {
                self.carried = Some(later);
                break;
            }
            work.merge(later);
            merged += 1;
        }
        Some((work, merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Mergeable for Vec<u32> {
        fn size(&self) -> usize {
            self.len()
        }
        fn merge(&mut self, later: Self) {
            self.extend(later);
        }
    }

    #[tokio::test]
    async fn queued_work_is_merged_in_order_within_the_bound() {
        let (tx, rx) = mpsc::channel(8);
        let mut commits = CommitQueue::new(rx, 4);
        for work in [
            vec![1],
            vec![2, 3],
            vec![4, 5],
            vec![6],
            vec![7, 8, 9, 10, 11],
        ] {
            tx.send(work).await.expect("the queue is open");
        }
        drop(tx);
        // 1 + 2,3 fit; 4,5 would make 5 and waits for the next commit, with 6; the large
        // item alone.
        assert_eq!(commits.next().await, Some((vec![1, 2, 3], 2)));
        assert_eq!(commits.next().await, Some((vec![4, 5, 6], 2)));
        assert_eq!(commits.next().await, Some((vec![7, 8, 9, 10, 11], 1)));
        assert_eq!(commits.next().await, None);
    }
}
