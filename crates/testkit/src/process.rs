//! Child processes and ports for process-level tests. A failing test must not leave a stray
//! server behind or hold a port the next test wants, so children are owned by a guard that kills
//! them on drop, including during a panic's unwinding.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// Owns a child process and kills it (SIGKILL) and reaps it when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// The child's process id, e.g. to send it SIGSTOP in a fault-injection test.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl From<Child> for ChildGuard {
    fn from(child: Child) -> Self {
        Self(child)
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Both fail only if the child was already reaped, which is the state we want anyway.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port on 127.0.0.1 that is free now and reserved for this test process (see
/// [`meridian_node::ports`]): no other test, in this process or another, is given it.
pub fn free_port() -> u16 {
    meridian_node::ports::free_loopback_port().unwrap_or_else(|error| panic!("{error}"))
}
