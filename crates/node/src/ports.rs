//! Loopback ports for deployments that run on one machine: `meridian demo`, drills, benchmarks
//! and the tests. A port is picked now and bound later by another task or process, so the pick
//! must not be handed to anyone else in between. Asking the kernel for port 0 does not give
//! that: the port is free again the moment the probe closes, the kernel hands it to the next
//! asker (another test, or an outgoing connection, which draw from the same ephemeral range),
//! and two nodes end up configured on one port. In CI that showed up as a test talking to
//! another test's participant.
//!
//! So ports come from below Linux's ephemeral range (which starts at 32768), where no outgoing
//! connection takes one, in blocks of [`BLOCK_LEN`]. A process reserves a whole block by holding
//! an exclusive lock on the block's file in the system temp directory for as long as it lives;
//! the kernel drops the lock when the process exits, however it exits. Within its blocks a
//! process hands each port out once, and only if it can bind it right now (something
//! unrelated may be listening there).

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

/// The first port handed out: above the usual fixed service ports.
const RANGE_START: u16 = 10_000;
/// One past the last: Linux's default ephemeral range starts at 32768.
const RANGE_END: u16 = 32_000;
/// Ports per reserved block; a deployment or a test uses a few dozen.
const BLOCK_LEN: u16 = 100;
const BLOCKS: u16 = (RANGE_END - RANGE_START) / BLOCK_LEN;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(
        "no free loopback port left: every port block in {RANGE_START}..{RANGE_END} is reserved by another process or in use"
    )]
    Exhausted,
}

/// The blocks this process holds and where it is in the newest one.
struct Reservation {
    /// Lock files of every block taken so far: ports handed out from older blocks may still
    /// be bound later, so their locks are kept too.
    locks: Vec<File>,
    /// The block ports are handed out from, and the next offset in it.
    current: Option<(u16, u16)>,
    /// Blocks tried so far, so that a process never scans the range twice.
    blocks_tried: u16,
}

static RESERVATION: Mutex<Reservation> = Mutex::new(Reservation {
    locks: Vec::new(),
    current: None,
    blocks_tried: 0,
});

/// A loopback TCP port that is free now and that no other caller, in this process or in any
/// other process using this function, is given while this process lives.
pub fn free_loopback_port() -> Result<u16, PortError> {
    let mut reservation = RESERVATION.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let (block, offset) = match reservation.current {
            Some((block, offset)) if offset < BLOCK_LEN => (block, offset),
            _ => {
                let block = reservation.reserve_block()?;
                (block, 0)
            }
        };
        reservation.current = Some((block, offset + 1));
        let port = RANGE_START + block * BLOCK_LEN + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

impl Reservation {
    /// Takes the next block no other process holds, starting from one derived from the pid so
    /// that concurrent processes rarely even try the same block.
    fn reserve_block(&mut self) -> Result<u16, PortError> {
        let first = (std::process::id() % u32::from(BLOCKS)) as u16;
        while self.blocks_tried < BLOCKS {
            let block = (first + self.blocks_tried) % BLOCKS;
            self.blocks_tried += 1;
            match lock_block(block) {
                BlockLock::Held(file) => {
                    self.locks.push(file);
                    return Ok(block);
                }
                // No lock directory to share (say, a read-only temp dir): fall back to the
                // bind check alone rather than refusing to run.
                BlockLock::Unavailable => return Ok(block),
                BlockLock::Taken => {}
            }
        }
        Err(PortError::Exhausted)
    }
}

enum BlockLock {
    Held(File),
    Taken,
    Unavailable,
}

fn lock_block(block: u16) -> BlockLock {
    let dir = lock_dir();
    let file = std::fs::create_dir_all(&dir).and_then(|()| {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("block-{block}.lock")))
    });
    let Ok(file) = file else {
        return BlockLock::Unavailable;
    };
    match file.try_lock() {
        Ok(()) => BlockLock::Held(file),
        Err(std::fs::TryLockError::WouldBlock) => BlockLock::Taken,
        Err(std::fs::TryLockError::Error(_)) => BlockLock::Unavailable,
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("meridian-port-blocks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_bindable_and_below_the_ephemeral_range() {
        let mut seen = std::collections::HashSet::new();
        // More than one block's worth, so the second reservation is exercised too.
        for _ in 0..(BLOCK_LEN + 20) {
            let port = free_loopback_port().expect("a port");
            assert!((RANGE_START..RANGE_END).contains(&port), "{port}");
            assert!(seen.insert(port), "port {port} handed out twice");
            TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }

    #[test]
    fn a_block_held_by_someone_else_is_skipped() {
        // Another "process": a second open file description on the same block file.
        let reserved = free_loopback_port().expect("a port");
        let block = (reserved - RANGE_START) / BLOCK_LEN;
        assert!(matches!(lock_block(block), BlockLock::Taken));
    }
}
