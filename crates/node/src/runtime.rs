//! The async runtime a `meridian` process runs on, and how many threads it gets.
//!
//! A node on a machine of its own wants tokio's multi-threaded scheduler with a worker per
//! core. Several nodes sharing a few cores (a lab deployment, `bench`, `demo`, the tests) do
//! not: each process's idle workers steal and wake one another across processes that already
//! fill the cores, and a protocol hop pays for the hand-offs. One thread per node runs every
//! task on the main thread (tokio's current-thread scheduler) and measured 1.25 times the
//! transfers per second of two workers per node on two cores (docs/benchmarks.md, issue 14).
//! So the thread count is a setting ([`RUNTIME_THREADS_ENV`] or `--runtime-threads`), and a
//! launcher that puts several nodes on one machine sets it ([`co_located_runtime_threads`]).

use std::num::NonZeroUsize;

/// The environment variable (and the `--runtime-threads` flag's fallback) that sets the
/// number of threads running a process's async tasks.
pub const RUNTIME_THREADS_ENV: &str = "MERIDIAN_RUNTIME_THREADS";

/// The node processes of the smallest deployment the lab starts on one machine (the `single`
/// preset: topology manager, sequencer, mediator, three participants).
const CO_LOCATED_NODES: usize = 6;

/// A runtime with `threads` threads running tasks: one runs them all on the calling thread
/// (current-thread scheduler), more runs tokio's work-stealing scheduler with that many
/// workers; `None` means one worker per core.
pub fn build_runtime(threads: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(threads) if threads.get() == 1 => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads.get());
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

/// The threads each node gets when a launcher starts a whole deployment on this machine: the
/// cores shared evenly by the smallest deployment's nodes, at least one.
pub fn co_located_runtime_threads() -> NonZeroUsize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    co_located_threads(cores)
}

fn co_located_threads(cores: usize) -> NonZeroUsize {
    NonZeroUsize::new(cores / CO_LOCATED_NODES).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn co_located_nodes_share_the_cores_and_get_at_least_one_thread() {
        assert_eq!(co_located_threads(1).get(), 1);
        assert_eq!(co_located_threads(2).get(), 1);
        assert_eq!(co_located_threads(11).get(), 1);
        assert_eq!(co_located_threads(12).get(), 2);
        assert_eq!(co_located_threads(64).get(), 10);
    }

    fn scheduler(threads: Option<usize>) -> tokio::runtime::RuntimeFlavor {
        let threads = threads.map(|n| NonZeroUsize::new(n).expect("test counts are positive"));
        build_runtime(threads)
            .expect("the runtime starts")
            .handle()
            .runtime_flavor()
    }

    #[test]
    fn one_thread_is_the_current_thread_scheduler_and_more_are_workers() {
        use tokio::runtime::RuntimeFlavor;
        assert_eq!(scheduler(Some(1)), RuntimeFlavor::CurrentThread);
        assert_eq!(scheduler(Some(3)), RuntimeFlavor::MultiThread);
        assert_eq!(scheduler(None), RuntimeFlavor::MultiThread);
    }

    #[test]
    fn a_runtime_of_several_workers_has_that_many() {
        let runtime = build_runtime(NonZeroUsize::new(3)).expect("the runtime starts");
        assert_eq!(runtime.metrics().num_workers(), 3);
    }
}
