//! The topology manager: the one place that authors the synchronizer's topology — which
//! participants and mediators exist with which keys, and which participants host which parties.
//!
//! Every change is a [`TopologyTransaction`](meridian_core::topology::TopologyTransaction)
//! with the next serial, signed with the synchronizer owner key, and distributed through the
//! sequencer to every member; its sequencing timestamp is its effective time, so all members
//! switch to it at the same point of the event stream. Members that join later catch up with
//! `GetTopology`, verifying each entry against the owner key they were configured with.
//!
//! Layout, from pure to effectful:
//! - [`request`]: validation of admin requests (sans-I/O),
//! - [`authority`]: who may change a party's hosting — its submission hosts, or the owner —
//!   and the check of a participant's signed request (sans-I/O),
//! - [`history`]: what is in force and whether a request changes it (sans-I/O),
//! - [`publisher`]: registration, sends and send-outcome recovery at the sequencer,
//! - [`manager`]: the serialized change path with intent-before-send crash recovery,
//! - [`service`]: the gRPC handlers, [`node`]: wiring and start-up,
//! - [`meridian_node::replication`]: the shared role loop of active/passive replicas sharing
//!   one database (lease and fencing); [`node`] supplies what this role does when active.

pub mod authority;
pub mod config;
pub mod history;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod publisher;
pub mod request;
pub mod service;

pub use config::TopologyManagerConfig;
pub use node::run;
