//! The retry schedule of every client call: [`meridian_core::backoff`], re-exported here where
//! the client's users have always found it. Nodes use the same type through
//! `meridian_node::retry`, so a client and the node it runs in back off alike.

pub use meridian_core::backoff::{Backoff, Delays};
