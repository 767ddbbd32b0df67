//! The sequencer: total-order multicast for synchronizer members.
//!
//! Layout, from pure to effectful:
//! - [`engine`]: timestamp issuing and deadline checks (sans-I/O),
//! - [`validate`]: submission checks against limits and the member directory (sans-I/O),
//! - [`writer`]: batches queued submissions into one durable transaction each,
//! - [`tail`]: one shared read of every member's new events per safe-point advance, kept in a
//!   bounded ring,
//! - [`reader`]: streams each subscriber's events up to the safe point, from the tail or the
//!   store,
//! - [`registration`]: who may register a member (owner-signed topology, or open),
//! - [`clock`]: bounding this instance's clock skew, [`liveness`]: which peers are dead,
//! - [`service`]: the gRPC handlers, [`node`]: wiring and start-up checks.
//!
//! Several instances may share one database (active-active): each issues timestamps from its
//! own residue class, commits events together with its watermark, and readers deliver only up
//! to the minimum watermark of online instances (the safe point). Each process claims its
//! instance's row with a new incarnation and writes only while it still holds it, so a paused
//! zombie or a second process with the same index writes nothing (see [`writer`] and [`node`]).

pub mod auth;
pub mod clock;
pub mod config;
pub mod directory;
pub mod engine;
pub mod error;
pub mod liveness;
pub mod metrics;
pub mod node;
pub mod reader;
pub mod registration;
pub mod service;
pub mod tail;
pub mod validate;
pub mod writer;

pub use config::SequencerConfig;
pub use node::run;
