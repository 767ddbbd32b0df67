//! `meridian-lab`: what runs whole deployments on one machine — launching node processes,
//! whole deployments, the IOU workload with its audit, the demo, the benchmarks and the drills.
//! The `meridian` binary's lab subcommands call into it, and the black-box tests drive it too.
//! Nothing here runs inside a node.

pub mod admin;
pub mod attribution;
pub mod bench;
pub mod clockshift;
pub mod controller;
pub mod ctl;
pub mod demo;
pub mod deployment;
pub mod drill;
pub mod experiment;
pub mod fault;
pub mod fork;
pub mod launch;
pub mod lb;
pub mod machine_cpu;
pub mod nemesis;
pub mod proc_stat;
pub mod promotion;
pub mod region;
pub mod replicas;
pub mod secrets;
mod stats;
pub mod timed_run;
pub mod tls;
pub mod token;
pub mod workload;
