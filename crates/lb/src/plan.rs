//! What the load balancer routes, as data, and the HAProxy configuration it renders to.
//!
//! A participant's replicas are active/passive: only the active one answers `/readyz` with
//! 200, so HAProxy's health check alone keeps the passives out of rotation — no registry, no
//! sidecar. Replicas outside the active region are `backup` servers: a cold replica that comes
//! up in the other region while the old region still answers does not get traffic until the
//! plan is moved (the controller's `MoveLoadBalancer` step). Ledger API frontends proxy gRPC
//! per request over HTTP/2 (`mode http`), so a failover costs the client one failed or
//! retried request, not a reconnect. The sequencer frontend balances per connection
//! (`mode tcp`, least connections): a member's session and its subscription stream belong to
//! the instance that authenticated it, and a per-request balancer would send its calls to
//! instances that never saw the session.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How HAProxy probes each replica's `/readyz`. A server that is down is probed often and
/// comes up at its first good answer: that is what a failover waits for. An up server goes
/// down only after `fall` bad answers about 0.1 s apart, because the replica it would take out
/// is usually the only active one, and a database call stalled for a second (which makes
/// `/readyz` answer 503 while it lasts) is no reason to refuse every request. A killed replica
/// is not waited for: the first connection it refuses marks it down (`observe layer4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthChecks {
    /// Between checks of a server that is up.
    pub interval_ms: u64,
    /// Between checks of a server that is going up or down (after one failed or passed check).
    pub fast_interval_ms: u64,
    /// Between checks of a server that is down.
    pub down_interval_ms: u64,
    /// Passed checks that bring a down server up.
    pub rise: u32,
    /// Failed checks that take an up server down.
    pub fall: u32,
    /// How long one check may take.
    pub timeout_ms: u64,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self {
            interval_ms: 250,
            fast_interval_ms: 100,
            down_interval_ms: 100,
            rise: 1,
            fall: 4,
            timeout_ms: 500,
        }
    }
}

/// How HAProxy talks to clients and to the replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum LbTls {
    /// HTTP/2 cleartext end to end (`proto h2`): only for deployments that run plaintext.
    Plaintext,
    /// TLS on both sides with mutual authentication, as the nodes run it: clients present a
    /// certificate from `ca_file`; HAProxy presents `identity_pem` (certificate chain and key
    /// in one PEM file, as HAProxy wants it) to the replicas and checks theirs against
    /// `ca_file`.
    Mutual {
        ca_file: PathBuf,
        identity_pem: PathBuf,
    },
}

/// What a frontend carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Traffic {
    /// A participant's Ledger API: gRPC over HTTP/2, routed per request to the active replica.
    Ledger,
    /// The sequencer API: per connection, over every healthy instance (TLS passes through).
    Sequencer,
}

/// One replica behind a frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// The replica's name (`participant1-a`), also the server's name in HAProxy.
    pub name: String,
    /// The region it runs in: outside the plan's active region it is a backup.
    pub region: String,
    /// Where its gRPC traffic goes.
    pub grpc: SocketAddr,
    /// Where its `/readyz` is probed (the admin port).
    pub admin: SocketAddr,
}

/// One address clients use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    /// The node it fronts (`participant1`, `sequencer`), also the frontend's and backend's
    /// name in HAProxy.
    pub name: String,
    pub traffic: Traffic,
    pub bind: SocketAddr,
    pub servers: Vec<Server>,
}

/// Everything HAProxy's configuration is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbPlan {
    /// The region whose replicas take traffic; the others are backups.
    pub active_region: String,
    /// The runtime API socket (`show stat`, and the listeners a reload hands over).
    pub runtime_socket: PathBuf,
    pub tls: LbTls,
    pub checks: HealthChecks,
    pub frontends: Vec<Frontend>,
}

/// Why a plan cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the load balancer has nothing to front: a plan needs at least one frontend")]
    NoFrontend,
    #[error("frontend {0} has no server")]
    NoServer(String),
    #[error("{0:?} cannot be an HAProxy name: use letters, digits, '-', '_' and '.'")]
    BadName(String),
    #[error("two frontends are named {0}")]
    DuplicateFrontend(String),
    #[error("{first} and {second} both listen on {address}")]
    PortClash {
        address: SocketAddr,
        first: String,
        second: String,
    },
    #[error("no server of the plan runs in the active region {0}")]
    UnknownRegion(String),
    #[error("the runtime socket path {0} is longer than a Unix socket address allows ({1} bytes at most): use a shorter data directory")]
    SocketPathTooLong(PathBuf, usize),
}

/// The errors HAProxy itself answers on a Ledger API frontend, each turned into gRPC
/// UNAVAILABLE with this reason: nothing was processed, or the outcome is unknown, and a retry
/// with the same command id is safe either way.
const GRPC_UNAVAILABLE_ERRORS: [(u16, &str); 3] = [
    (502, "the replica broke off the request"),
    (503, "no replica of the participant is ready"),
    (504, "the replica did not answer in time"),
];

/// A Unix socket address holds at most 107 bytes of path (108 with the terminating NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LbPlan {
    /// Every reason this plan cannot run: names, ports (HAProxy's own listeners against each
    /// other and against every replica's), the active region, the socket path.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.frontends.is_empty() {
            return Err(PlanError::NoFrontend);
        }
        let socket_bytes = self.runtime_socket.as_os_str().len();
        if socket_bytes > MAX_SOCKET_PATH_BYTES {
            return Err(PlanError::SocketPathTooLong(
                self.runtime_socket.clone(),
                MAX_SOCKET_PATH_BYTES,
            ));
        }
        let mut names = BTreeSet::new();
        // Every address something listens on, with who: a frontend bound to a replica's port
        // would route to itself or fail to start.
        let mut listeners: Vec<(SocketAddr, String)> = Vec::new();
        for frontend in &self.frontends {
            if !valid_name(&frontend.name) {
                return Err(PlanError::BadName(frontend.name.clone()));
            }
            if !names.insert(frontend.name.as_str()) {
                return Err(PlanError::DuplicateFrontend(frontend.name.clone()));
            }
            if frontend.servers.is_empty() {
                return Err(PlanError::NoServer(frontend.name.clone()));
            }
            listeners.push((
                frontend.bind,
                format!("load balancer frontend {}", frontend.name),
            ));
            for server in &frontend.servers {
                if !valid_name(&server.name) {
                    return Err(PlanError::BadName(server.name.clone()));
                }
                listeners.push((server.grpc, format!("{} (gRPC)", server.name)));
                listeners.push((server.admin, format!("{} (admin)", server.name)));
            }
        }
        for (index, (address, who)) in listeners.iter().enumerate() {
            let clash = listeners[..index]
                .iter()
                .find(|(other, _)| other.port() == address.port() && overlaps(*other, *address));
            if let Some((_, first)) = clash {
                return Err(PlanError::PortClash {
                    address: *address,
                    first: first.clone(),
                    second: who.clone(),
                });
            }
        }
        let regions: BTreeSet<&str> = self
            .frontends
            .iter()
            .flat_map(|f| f.servers.iter().map(|s| s.region.as_str()))
            .collect();
        if !regions.contains(self.active_region.as_str()) {
            return Err(PlanError::UnknownRegion(self.active_region.clone()));
        }
        Ok(())
    }

    /// Where HAProxy saves its servers' states across a reload: beside the runtime socket.
    pub fn server_state_file(&self) -> PathBuf {
        self.runtime_socket.with_file_name("servers.state")
    }

    /// The frontend of `name`.
    pub fn frontend(&self, name: &str) -> Option<&Frontend> {
        self.frontends.iter().find(|f| f.name == name)
    }
}

/// Whether two listeners on one port collide: the same IP, or either is a wildcard.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

/// The HAProxy configuration of `plan`, after [`LbPlan::validate`].
pub fn render(plan: &LbPlan) -> Result<String, PlanError> {
    plan.validate()?;
    let mut out = String::new();
    let checks = plan.checks;
    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(
        out,
        "# Written by Meridian from the deployment (active region {}).\n\
         # Do not edit: `meridian lb config` and the controller rewrite it.",
        plan.active_region
    );
    let _ = writeln!(
        out,
        "\nglobal\n    \
         # Listeners are handed to the new worker on a reload: no connection is refused.\n    \
         stats socket {} mode 600 level admin expose-fd listeners\n    \
         stats timeout 10s\n    \
         maxconn 4096\n    \
         # After a reload the old worker finishes its streams, for 30 s at most.\n    \
         hard-stop-after 30s\n    \
         # The servers' states, saved before a reload and read by the new worker: without it\n    \
         # every server starts up, fenced replicas included, until their first check.\n    \
         server-state-file {}",
        plan.runtime_socket.display(),
        plan.server_state_file().display()
    );
    if let LbTls::Mutual { .. } = plan.tls {
        let _ = writeln!(out, "    ssl-server-verify required");
    }
    let _ = writeln!(
        out,
        "\ndefaults\n    \
         timeout connect 1s\n    \
         # gRPC streams (transaction streams, sequencer subscriptions) stay open for long.\n    \
         timeout client 1h\n    \
         timeout server 1h\n    \
         timeout tunnel 1h\n    \
         timeout check {}ms\n    \
         load-server-state-from-file global\n    \
         # A connection a server refuses marks it down at once, before its next check.\n    \
         default-server inter {}ms fastinter {}ms downinter {}ms rise {} fall {} \
         observe layer4 error-limit 1 on-error mark-down",
        checks.timeout_ms,
        checks.interval_ms,
        checks.fast_interval_ms,
        checks.down_interval_ms,
        checks.rise,
        checks.fall,
    );
    for frontend in &plan.frontends {
        render_frontend(&mut out, plan, frontend);
    }
    Ok(out)
}

fn render_frontend(out: &mut String, plan: &LbPlan, frontend: &Frontend) {
    let name = &frontend.name;
    let (mode, bind_options) = match (frontend.traffic, &plan.tls) {
        (Traffic::Ledger, LbTls::Plaintext) => ("http", " proto h2".to_owned()),
        (
            Traffic::Ledger,
            LbTls::Mutual {
                ca_file,
                identity_pem,
            },
        ) => (
            "http",
            format!(
                " ssl crt {} ca-file {} verify required alpn h2",
                identity_pem.display(),
                ca_file.display()
            ),
        ),
        // TLS passes through: the member authenticates to the instance itself.
        (Traffic::Sequencer, _) => ("tcp", String::new()),
    };
    let _ = writeln!(
        out,
        "\nfrontend {name}\n    mode {mode}\n    bind {}{bind_options}\n    default_backend {name}",
        frontend.bind
    );
    let _ = writeln!(
        out,
        "\nbackend {name}\n    mode {mode}\n    option httpchk GET /readyz\n    http-check expect status 200"
    );
    match frontend.traffic {
        Traffic::Ledger => {
            // A request whose connection to a dead replica fails is sent again, to another
            // server; commands carry their id, so a second delivery is deduplicated anyway.
            let _ = writeln!(
                out,
                "    retries 2\n    option redispatch 1\n    retry-on conn-failure empty-response"
            );
            // HAProxy's own errors (no replica ready, a replica gone mid-request, a timeout)
            // are HTML pages that gRPC clients cannot read: tonic reports them as INTERNAL
            // "invalid compression flag", which no client retries. Answer them as gRPC
            // UNAVAILABLE instead (grpc-status in the headers, no body: tonic reads the status
            // from the headers, grpc-go maps the HTTP status), which every client retries.
            for (status, why) in GRPC_UNAVAILABLE_ERRORS {
                let _ = writeln!(
                    out,
                    "    http-error status {status} hdr grpc-status 14 hdr grpc-message \"load balancer: {why} (HTTP {status})\""
                );
            }
        }
        Traffic::Sequencer => {
            // A connection to a dead instance is tried again on another one.
            // A subscription to an instance marked down is closed, so that the member
            // reconnects to a healthy one instead of waiting for its keep-alive to lapse.
            // (Ledger calls are not cut: an active replica marked down by a passing stall
            // finishes what it has, and there is no other replica that could.)
            let _ = writeln!(
                out,
                "    balance leastconn\n    retries 2\n    option redispatch 1\n    \
                 default-server on-marked-down shutdown-sessions"
            );
        }
    }
    for server in &frontend.servers {
        let backup = if server.region == plan.active_region {
            ""
        } else {
            " backup"
        };
        let traffic = match (frontend.traffic, &plan.tls) {
            // The replica's gRPC port speaks HTTP/2; its admin port, which the check probes,
            // HTTP/1.1.
            (Traffic::Ledger, LbTls::Plaintext) => " proto h2 check-proto h1".to_owned(),
            (Traffic::Ledger, LbTls::Mutual { .. }) => {
                " ssl alpn h2 check-alpn http/1.1".to_owned()
            }
            (Traffic::Sequencer, _) => String::new(),
        };
        let check_tls = match &plan.tls {
            LbTls::Plaintext => String::new(),
            LbTls::Mutual {
                ca_file,
                identity_pem,
            } => format!(
                " check-ssl verify required ca-file {} crt {}",
                ca_file.display(),
                identity_pem.display()
            ),
        };
        let _ = writeln!(
            out,
            "    server {} {}{traffic} check port {}{check_tls}{backup}",
            server.name,
            server.grpc,
            server.admin.port(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn server(name: &str, region: &str, grpc: u16) -> Server {
        Server {
            name: name.to_owned(),
            region: region.to_owned(),
            grpc: address(grpc),
            admin: address(grpc + 1),
        }
    }

    pub(crate) fn two_region_plan(tls: LbTls) -> LbPlan {
        LbPlan {
            active_region: "region-1".to_owned(),
            runtime_socket: PathBuf::from("/tmp/lb/haproxy.sock"),
            tls,
            checks: HealthChecks::default(),
            frontends: vec![
                Frontend {
                    name: "sequencer".to_owned(),
                    traffic: Traffic::Sequencer,
                    bind: address(4700),
                    servers: vec![
                        server("sequencer-a", "region-1", 5000),
                        server("sequencer-c", "region-2", 5002),
                    ],
                },
                Frontend {
                    name: "participant1".to_owned(),
                    traffic: Traffic::Ledger,
                    bind: address(4701),
                    servers: vec![
                        server("participant1-a", "region-1", 5100),
                        server("participant1-b", "region-1", 5102),
                        server("participant1-c", "region-2", 5104),
                    ],
                },
            ],
        }
    }

    fn server_line<'a>(config: &'a str, name: &str) -> &'a str {
        config
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("server {name} ")))
            .unwrap_or_else(|| panic!("no server line for {name} in\n{config}"))
    }

    #[test]
    fn replicas_outside_the_active_region_are_backups_and_moving_the_region_swaps_them() {
        let mut plan = two_region_plan(LbTls::Plaintext);
        let config = render(&plan).expect("renders");
        assert!(!server_line(&config, "participant1-a").contains("backup"));
        assert!(!server_line(&config, "participant1-b").contains("backup"));
        assert!(server_line(&config, "participant1-c").ends_with(" backup"));
        plan.active_region = "region-2".to_owned();
        let config = render(&plan).expect("renders");
        assert!(server_line(&config, "participant1-a").ends_with(" backup"));
        assert!(!server_line(&config, "participant1-c").contains("backup"));
    }

    #[test]
    fn ledger_frontends_speak_h2_per_request_and_the_sequencer_balances_connections() {
        let config = render(&two_region_plan(LbTls::Plaintext)).expect("renders");
        assert!(config.contains("bind 127.0.0.1:4701 proto h2"), "{config}");
        assert!(server_line(&config, "participant1-a")
            .contains("127.0.0.1:5100 proto h2 check-proto h1 check port 5101"));
        let sequencer = config
            .split("\nbackend sequencer\n")
            .nth(1)
            .expect("a sequencer backend");
        assert!(sequencer.contains("mode tcp"), "{config}");
        assert!(sequencer.contains("balance leastconn"), "{config}");
        assert!(config.contains("option httpchk GET /readyz"));
    }

    #[test]
    fn haproxys_own_errors_reach_grpc_clients_as_unavailable() {
        let config = render(&two_region_plan(LbTls::Plaintext)).expect("renders");
        let ledger = config
            .split("\nbackend participant1\n")
            .nth(1)
            .expect("a participant backend");
        for status in [502, 503, 504] {
            assert!(
                ledger.contains(&format!("http-error status {status} hdr grpc-status 14 ")),
                "{config}"
            );
        }
        // The sequencer's frontend is TCP: HAProxy answers nothing there itself.
        let sequencer = config
            .split("\nbackend sequencer\n")
            .nth(1)
            .and_then(|b| b.split("\nbackend ").next())
            .expect("a sequencer backend");
        assert!(!sequencer.contains("http-error"), "{config}");
    }

    #[test]
    fn mutual_tls_checks_and_proxies_with_the_load_balancers_certificate() {
        let config = render(&two_region_plan(LbTls::Mutual {
            ca_file: "/d/tls/ca.crt".into(),
            identity_pem: "/d/tls/load-balancer.pem".into(),
        }))
        .expect("renders");
        assert!(config.contains(
            "bind 127.0.0.1:4701 ssl crt /d/tls/load-balancer.pem ca-file /d/tls/ca.crt verify required alpn h2"
        ));
        let line = server_line(&config, "participant1-a");
        assert!(line.contains(" ssl alpn h2 "), "{line}");
        assert!(
            line.contains(
                "check-ssl verify required ca-file /d/tls/ca.crt crt /d/tls/load-balancer.pem"
            ),
            "{line}"
        );
        // The sequencer's TLS passes through to the instance; only its health check is TLS.
        let line = server_line(&config, "sequencer-a");
        assert!(!line.contains(" ssl "), "{line}");
        assert!(line.contains("check-ssl"), "{line}");
    }

    #[test]
    fn bad_plans_are_refused_naming_what_is_wrong() {
        let mut plan = two_region_plan(LbTls::Plaintext);
        plan.frontends.clear();
        assert_eq!(render(&plan), Err(PlanError::NoFrontend));

        let mut plan = two_region_plan(LbTls::Plaintext);
        plan.frontends[1].bind = address(5102);
        let error = render(&plan).expect_err("a frontend on a replica's port");
        assert_eq!(
            error.to_string(),
            "load balancer frontend participant1 and participant1-b (gRPC) both listen on 127.0.0.1:5102"
        );

        let mut plan = two_region_plan(LbTls::Plaintext);
        plan.frontends[1].bind = SocketAddr::from(([0, 0, 0, 0], 4700));
        assert!(matches!(render(&plan), Err(PlanError::PortClash { .. })));

        let mut plan = two_region_plan(LbTls::Plaintext);
        plan.frontends[1].servers[0].name = "participant one".to_owned();
        assert!(matches!(render(&plan), Err(PlanError::BadName(_))));

        let mut plan = two_region_plan(LbTls::Plaintext);
        plan.active_region = "region-9".to_owned();
        assert_eq!(
            render(&plan),
            Err(PlanError::UnknownRegion("region-9".to_owned()))
        );

        let mut plan = two_region_plan(LbTls::Plaintext);
        plan.runtime_socket = PathBuf::from(format!("/{}", "x".repeat(120)));
        assert!(matches!(
            render(&plan),
            Err(PlanError::SocketPathTooLong(..))
        ));

        let mut plan = two_region_plan(LbTls::Plaintext);
        plan.frontends[1].servers.clear();
        assert_eq!(
            render(&plan),
            Err(PlanError::NoServer("participant1".to_owned()))
        );
    }
}
