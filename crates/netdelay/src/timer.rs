//! A sleep precise to tens of microseconds, for holding chunks. tokio's timer counts whole
//! milliseconds and rounds every deadline up to the next one, then wakes on a ms-rounded
//! timeout: each hold would last up to about two milliseconds too long, and at the 0.5 ms
//! one-way delay of a 1 ms round trip the link would be several times slower than asked. So
//! each proxy has one timer thread that waits on a std channel with a timeout — a futex wait,
//! which the kernel times with a high-resolution timer — and wakes the waiting task through a
//! tokio oneshot when its deadline comes.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};

use tokio::sync::oneshot;
use tokio::time::Instant;

/// The handle of a proxy's timer thread; the thread ends when the handle is dropped.
#[derive(Debug)]
pub(crate) struct PreciseTimer {
    /// Unbounded, and bounded all the same: every direction of every connection waits for its
    /// one request before it makes another, so there are at most two per open connection.
    requests: mpsc::Sender<Request>,
}

#[derive(Debug)]
struct Request {
    deadline: std::time::Instant,
    /// Orders requests with equal deadlines by arrival.
    sequence: u64,
    fire: oneshot::Sender<()>,
}

impl PreciseTimer {
    pub(crate) fn start() -> io::Result<Self> {
        let (requests, received) = mpsc::channel();
        std::thread::Builder::new()
            .name("netdelay-timer".to_owned())
            .spawn(move || run(received))?;
        Ok(Self { requests })
    }

    /// Returns at `deadline` (at once if it has passed).
    pub(crate) async fn sleep_until(&self, deadline: Instant) {
        if deadline <= Instant::now() {
            return;
        }
        let (fire, fired) = oneshot::channel();
        let request = Request {
            deadline: deadline.into_std(),
            sequence: 0,
            fire,
        };
        let sent = self.requests.send(request).is_ok();
        if !sent || fired.await.is_err() {
            // The timer thread is gone (it cannot panic, but if it did): tokio's own timer,
            // less precise, still holds the chunk for at least the delay.
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// The timer thread: fires every due request, then waits for the next deadline or request.
fn run(received: mpsc::Receiver<Request>) {
    let mut pending = BinaryHeap::new();
    let mut sequence = 0u64;
    loop {
        let now = std::time::Instant::now();
        while pending
            .peek()
            .is_some_and(|Earliest(first)| first.deadline <= now)
        {
            if let Some(Earliest(due)) = pending.pop() {
                // The waiter may be gone (its connection was cut); nothing to do then.
                let _ = due.fire.send(());
            }
        }
        let next = match pending.peek() {
            Some(Earliest(first)) => received.recv_timeout(first.deadline - now),
            None => received.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(mut request) => {
                sequence += 1;
                request.sequence = sequence;
                pending.push(Earliest(request));
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The proxy is gone.
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Orders the max-heap so that its top is the earliest deadline (first come first on ties).
struct Earliest(Request);

impl Ord for Earliest {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.0.deadline, other.0.sequence).cmp(&(self.0.deadline, self.0.sequence))
    }
}

impl PartialOrd for Earliest {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Earliest {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Earliest {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_at_the_deadline_not_a_millisecond_later() {
        let timer = PreciseTimer::start().expect("timer thread");
        let mut lateness = Vec::new();
        for _ in 0..20 {
            let deadline = Instant::now() + Duration::from_micros(500);
            timer.sleep_until(deadline).await;
            let woke = Instant::now();
            assert!(woke >= deadline, "woke before the deadline");
            lateness.push(woke - deadline);
        }
        lateness.sort();
        let median = lateness[lateness.len() / 2];
        println!("timer lateness: median {median:?}, max {:?}", lateness[19]);
        // tokio's timer would be about a millisecond late every time.
        assert!(
            median < Duration::from_micros(700),
            "median lateness {median:?}"
        );
    }
}
