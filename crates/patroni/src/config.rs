//! One member's Patroni configuration, built as a value (no I/O) and written as JSON: YAML is a
//! superset of JSON, so Patroni's YAML loader reads it and we need no YAML writer. The
//! `bootstrap.dcs` part only matters to the member that initialises the cluster, which stores
//! it in etcd for all; every member carries it so that any of them can be that member.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::{MemberSpec, Timing};

/// The superuser the nodes and Patroni itself log in as. Patroni needs a superuser for its own
/// checks and `pg_rewind`; the nodes use it too, as on the lab's single servers.
pub const SUPERUSER: &str = "meridian";
/// The role standbys stream as; it can replicate and nothing else.
pub const REPLICATION_USER: &str = "replicator";

/// Everything that differs between members and clusters.
#[derive(Debug, Clone)]
pub struct MemberConfig<'a> {
    pub scope: &'a str,
    pub member: &'a MemberSpec,
    /// `host:port` of etcd's client endpoint.
    pub etcd_endpoint: &'a str,
    pub api_port: u16,
    pub pg_port: u16,
    /// The member's own directory: data directory, socket, pgpass.
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub superuser_password: &'a str,
    pub replication_password: &'a str,
    pub timing: Timing,
    /// `synchronous_mode_strict`: no commit without a synchronous standby, ever.
    pub strict: bool,
}

impl MemberConfig<'_> {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The whole configuration file.
    pub fn to_value(&self) -> Value {
        let api = format!("127.0.0.1:{}", self.api_port);
        let pg = format!("127.0.0.1:{}", self.pg_port);
        json!({
            "scope": self.scope,
            "namespace": "/meridian/",
            "name": self.member.name.as_str(),
            "restapi": { "listen": api, "connect_address": api },
            // etcd 3.4 serves the v2 API only with --enable-v2; Patroni's etcd3 client speaks
            // the v3 gRPC gateway (it picks the /v3 prefix from etcd's /version).
            "etcd3": { "hosts": [self.etcd_endpoint] },
            "bootstrap": self.bootstrap(),
            "postgresql": {
                "listen": pg,
                "connect_address": pg,
                "data_dir": self.data_dir(),
                "bin_dir": self.bin_dir,
                "pgpass": self.dir.join("pgpass"),
                "authentication": {
                    "superuser": { "username": SUPERUSER, "password": self.superuser_password },
                    "replication": {
                        "username": REPLICATION_USER,
                        "password": self.replication_password,
                    },
                },
                // The default socket directory may belong to a system server or not exist.
                "parameters": { "unix_socket_directories": self.dir },
                "pg_hba": pg_hba(),
            },
            // Patroni's watchdog needs /dev/watchdog (softdog), which a test machine lacks.
            "watchdog": { "mode": "off" },
            "tags": {
                "nofailover": self.member.nofailover,
                "nosync": self.member.nosync,
                "noloadbalance": false,
                "clonefrom": false,
            },
        })
    }

    fn bootstrap(&self) -> Value {
        json!({
            "dcs": {
                "ttl": self.timing.ttl_s,
                "loop_wait": self.timing.loop_wait_s,
                "retry_timeout": self.timing.retry_timeout_s,
                // A commit returns only once the synchronous standby has flushed it, and only
                // that standby may be promoted: RPO 0 within the region.
                "synchronous_mode": true,
                "synchronous_mode_strict": self.strict,
                "synchronous_node_count": 1,
                "postgresql": {
                    // A crashed old leader rejoins as a standby by rewinding its divergent WAL.
                    "use_pg_rewind": true,
                    "use_slots": true,
                    "parameters": {
                        "fsync": "on",
                        "synchronous_commit": "on",
                        "max_connections": 300,
                        "password_encryption": "scram-sha-256",
                        // After a failover a standby's first connection to the new leader
                        // fails until the leader has created its slot; PostgreSQL's default
                        // 5 s before the next try is the bulk of the time a remaining
                        // standby needs to stream (and in strict mode, of the failover).
                        "wal_retrieve_retry_interval": "1s",
                    },
                },
            },
            "initdb": [
                { "encoding": "UTF8" },
                { "locale": "C" },
                // The new cluster is throwaway; the server itself still runs with fsync=on.
                "no-sync",
            ],
        })
    }
}

/// Loopback only, passwords everywhere over TCP; the Unix socket sits in a directory only the
/// server's user can enter.
fn pg_hba() -> Value {
    json!([
        "local all all trust",
        format!("host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256"),
        "host all all 127.0.0.1/32 scram-sha-256",
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(member: &MemberSpec) -> Value {
        MemberConfig {
            scope: "participant1",
            member,
            etcd_endpoint: "127.0.0.1:2379",
            api_port: 18008,
            pg_port: 15432,
            dir: PathBuf::from("/tmp/x/db1"),
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            superuser_password: "pw",
            replication_password: "rpw",
            timing: Timing::TUNED,
            strict: false,
        }
        .to_value()
    }

    #[test]
    fn carries_timing_sync_mode_and_ports() {
        let value = config(&MemberSpec::new("db1").expect("name"));
        let dcs = &value["bootstrap"]["dcs"];
        assert_eq!(dcs["ttl"], 7);
        assert_eq!(dcs["loop_wait"], 1);
        assert_eq!(dcs["retry_timeout"], 3);
        assert_eq!(dcs["synchronous_mode"], true);
        assert_eq!(value["restapi"]["listen"], "127.0.0.1:18008");
        assert_eq!(value["postgresql"]["listen"], "127.0.0.1:15432");
        assert_eq!(value["postgresql"]["data_dir"], "/tmp/x/db1/data");
        assert_eq!(value["etcd3"]["hosts"][0], "127.0.0.1:2379");
        assert_eq!(value["tags"]["nofailover"], false);
    }

    #[test]
    fn remote_members_are_tagged() {
        let mut member = MemberSpec::new("db3").expect("name");
        member.nofailover = true;
        member.nosync = true;
        let value = config(&member);
        assert_eq!(value["tags"]["nofailover"], true);
        assert_eq!(value["tags"]["nosync"], true);
    }

    #[test]
    fn only_loopback_with_passwords() {
        let value = config(&MemberSpec::new("db1").expect("name"));
        let hba: Vec<&str> = value["postgresql"]["pg_hba"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for line in hba.iter().filter(|line| line.starts_with("host")) {
            assert!(line.contains("127.0.0.1/32 scram-sha-256"), "{line}");
        }
    }
}
