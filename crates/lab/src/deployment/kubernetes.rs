//! `meridian deployment export --kubernetes`: a deployment description as Kubernetes
//! manifests. Per replica a StatefulSet (one pod, pinned to the replica's zone, `replicas: 0`
//! for a cold one), a headless Service (the stable DNS name the other nodes' endpoint lists
//! use) and a ConfigMap with its role config, built by the same builders the lab uses
//! ([`super::configs`]); per participant a Service selecting its replicas, which Kubernetes
//! routes to the ready one only — the active replica. Secrets, PostgreSQL and the image are
//! the operator's: the generated `NOTES.txt` lists what to provide.
//!
//! [`manifests`] is pure (description in, files out); [`write`] puts them into a new directory
//! all at once, so a failed export leaves nothing behind. Manifests are JSON, which `kubectl`
//! reads like YAML; no YAML writer is in the tree and JSON needs none.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use meridian_core::ParticipantId;
use meridian_node::config::Endpoints;
use meridian_node::replication::ReplicationConfig;
use meridian_node::tls::TlsConfig;
use meridian_store::StorageConfig;
use serde_json::{json, Value};

use super::configs::{self, Addresses, MediatorSettings, MemberContext, ParticipantSettings};
use super::description::{Backend, Description, NodePorts, NodeView, Replica, Role, Standby};

/// The namespace of `--namespace`'s default.
pub const DEFAULT_NAMESPACE: &str = "meridian";
/// The image of `--image`'s default: no image is published; build one holding `meridian`.
pub const DEFAULT_IMAGE: &str = "meridian:latest";
/// What the configs carry as `owner_public_key` until `--owner-public-key` is given: not a
/// key, so a member refuses its config naming `owner_public_key` rather than run with a wrong
/// one.
pub const OWNER_KEY_PLACEHOLDER: &str = "REPLACE-WITH-THE-OWNER-PUBLIC-KEY";
/// Ports of a replica whose description fixes none: every pod has its own address, so all
/// can use the same two.
pub const DEFAULT_PORTS: NodePorts = NodePorts::new(7000, 7001);
/// The port of the PostgreSQL Service the operator provides per cluster.
pub const POSTGRES_PORT: u16 = 5432;
/// The database user in the storage URLs; the password comes from `PGPASSWORD`.
pub const POSTGRES_USER: &str = "meridian";

/// Where a pod finds what it is given.
const CONFIG_DIR: &str = "/etc/meridian/config";
const CONFIG_FILE: &str = "meridian.toml";
const TLS_DIR: &str = "/etc/meridian/tls";
const KEYS_DIR: &str = "/etc/meridian/keys";
const ADMIN_TOKEN_DIR: &str = "/etc/meridian/admin";
const ADMIN_TOKEN_FILE: &str = "admin-token";
const LEDGER_AUTH_DIR: &str = "/etc/meridian/ledger-auth";
const LEDGER_AUTH_FILE: &str = "jwks.json";
const DATA_DIR: &str = "/var/lib/meridian";

/// The Secrets every export refers to by name (the per-replica TLS Secrets are
/// `<replica>-tls`).
const KEYS_SECRET: &str = "meridian-keys";
const ADMIN_TOKEN_SECRET: &str = "meridian-admin-token";
const LEDGER_AUTH_SECRET: &str = "meridian-ledger-auth";
const POSTGRES_SECRET: &str = "meridian-postgres";
/// Mounted secrets are read by their owner only: the nodes refuse key and token files that
/// group or others can read (`0400`).
const SECRET_MODE: u32 = 0o400;
/// The volume of a node's SQLite file; sized for a start, grow it to suit.
const DATA_VOLUME_SIZE: &str = "10Gi";

/// Labels every object carries; the per-replica and per-node ones are what Services select.
const LABEL_NAME: &str = "app.kubernetes.io/name";
const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
const LABEL_NODE: &str = "meridian/node";
const LABEL_REPLICA: &str = "meridian/replica";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What an export cannot be made from, naming the part to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("--namespace {0:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)")]
    Namespace(String),
    #[error("{what} {name:?} cannot name a Kubernetes Service (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit, at most 63 characters)")]
    Name { what: &'static str, name: String },
    #[error("{node} has {replicas} replicas on SQLite: its replicas share one database file, which pods on different machines cannot; export with --backend postgres, or give the node one replica")]
    SharedSqlite { node: String, replicas: usize },
    #[error("--owner-public-key is not a hex ed25519 public key (64 hex digits)")]
    OwnerKey,
    #[error("the config of {replica} cannot be written as TOML: {reason}")]
    Serialize { replica: String, reason: String },
    #[error("two objects would both be the {kind} {name:?}; rename a node or replica")]
    Duplicate { kind: &'static str, name: String },
}

/// The choices of an export besides the description.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub namespace: String,
    pub image: String,
    /// `None`: [`OWNER_KEY_PLACEHOLDER`] in every config that needs it.
    pub owner_public_key: Option<String>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            image: DEFAULT_IMAGE.to_owned(),
            owner_public_key: None,
        }
    }
}

/// One file of an export: its name in the output directory and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    pub name: String,
    pub text: String,
}

/// Every file of the export of `description`: one JSON manifest per object, named so that
/// `kubectl apply -f DIR` (which reads a directory in name order) creates the namespace
/// first, and `NOTES.txt`, which says what the operator provides. Checks everything first:
/// an error means no file.
pub fn manifests(
    description: &Description,
    options: &ExportOptions,
) -> Result<Vec<ExportFile>, ExportError> {
    let exporter = Exporter::new(description, options)?;
    let mut objects = vec![("00-namespace".to_owned(), exporter.namespace_object())];
    let keys = description.node_keys();
    let nodes = description.nodes(&keys);
    for node in &nodes {
        for (position, replica) in node.replicas.iter().enumerate() {
            let config = exporter.config(node, position, replica)?;
            let name = replica.name.as_str();
            objects.push((
                format!("10-configmap-{name}"),
                exporter.config_map(replica, config),
            ));
            objects.push((
                format!("20-service-{name}"),
                exporter.headless_service(node, replica),
            ));
            objects.push((
                format!("40-statefulset-{name}"),
                exporter.stateful_set(node, replica),
            ));
        }
        if node.role == Role::Participant {
            objects.push((
                format!("30-service-{}", ledger_service_name(node.name)),
                exporter.participant_service(node),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (_, object) in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if !seen.insert((kind.to_owned(), name.to_owned())) {
            return Err(ExportError::Duplicate {
                kind: kind_name(kind),
                name: name.to_owned(),
            });
        }
    }
    let mut files: Vec<ExportFile> = objects
        .into_iter()
        .map(|(stem, object)| ExportFile {
            name: format!("{stem}.json"),
            text: pretty(&object),
        })
        .collect();
    files.push(ExportFile {
        name: "NOTES.txt".to_owned(),
        text: notes(description, options, &nodes),
    });
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The static name of a kind for [`ExportError::Duplicate`].
fn kind_name(kind: &str) -> &'static str {
    match kind {
        "ConfigMap" => "ConfigMap",
        "Service" => "Service",
        "StatefulSet" => "StatefulSet",
        _ => "object",
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// The Service that routes a participant's Ledger API to its ready (active) replica.
pub fn ledger_service_name(participant: &str) -> String {
    format!("{participant}-ledger-api")
}

/// Writes `files` into `out`, which must not exist yet or be empty: all of them appear at
/// once (written into a new directory beside it, then renamed), or none.
pub fn write(out: &Path, files: &[ExportFile]) -> anyhow::Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            anyhow::bail!(
                "{} exists and is not empty; remove it or name a new directory",
                out.display()
            );
        }
    } else if out.exists() {
        anyhow::bail!("{} exists and is not a directory", out.display());
    }
    let parent = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".meridian-export-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot write into {}", parent.display()))?;
    for file in files {
        let path = staging.path().join(&file.name);
        std::fs::write(&path, &file.text)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        // A temporary directory is private; the export is not.
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} readable", staging.path().display()))?;
    }
    std::fs::rename(staging.path(), out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    Ok(())
}

/// A DNS-1123 label: what a namespace name must be.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A DNS-1035 label: what a Service name must be (a DNS label starting with a letter).
fn is_service_name(name: &str) -> bool {
    is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
}

struct Exporter<'a> {
    description: &'a Description,
    options: &'a ExportOptions,
    owner_public_key: String,
    context: MemberContext,
}

impl<'a> Exporter<'a> {
    /// Checks every name and the storage choice, and works out the endpoint lists.
    fn new(description: &'a Description, options: &'a ExportOptions) -> Result<Self, ExportError> {
        if !is_dns_label(&options.namespace) {
            return Err(ExportError::Namespace(options.namespace.clone()));
        }
        let owner_public_key = match &options.owner_public_key {
            Some(key) => {
                meridian_core::crypto::PublicKey::from_hex(key)
                    .map_err(|_| ExportError::OwnerKey)?;
                key.trim().to_owned()
            }
            None => OWNER_KEY_PLACEHOLDER.to_owned(),
        };
        let keys = description.node_keys();
        for node in description.nodes(&keys) {
            if description.storage.backend == Backend::Sqlite && node.replicas.len() > 1 {
                return Err(ExportError::SharedSqlite {
                    node: node.name.to_owned(),
                    replicas: node.replicas.len(),
                });
            }
            for replica in node.replicas {
                if !is_service_name(replica.name.as_str()) {
                    return Err(ExportError::Name {
                        what: "replica",
                        name: replica.name.to_string(),
                    });
                }
            }
            if node.role == Role::Participant && !is_service_name(&ledger_service_name(node.name)) {
                return Err(ExportError::Name {
                    what: "participant",
                    name: node.name.to_owned(),
                });
            }
        }
        for cluster in &description.postgres_clusters {
            let service = postgres_service_name(cluster.name.as_str());
            if !is_service_name(&service) {
                return Err(ExportError::Name {
                    what: "PostgreSQL cluster",
                    name: cluster.name.to_string(),
                });
            }
        }
        let mut exporter = Self {
            description,
            options,
            owner_public_key,
            context: MemberContext {
                owner_public_key: String::new(),
                keys_dir: PathBuf::from(KEYS_DIR),
                sequencer_endpoints: Vec::new(),
                cold_sequencer_endpoints: Vec::new(),
                topology_endpoints: Vec::new(),
                ledger_auth_jwks: Some(Path::new(LEDGER_AUTH_DIR).join(LEDGER_AUTH_FILE)),
            },
        };
        let grpc_endpoints = |replicas: &mut dyn Iterator<Item = &Replica>| -> Vec<String> {
            replicas
                .map(|r| exporter_endpoint(options, r, ports(r).grpc))
                .collect()
        };
        let sequencer = &description.sequencer.instances;
        let warm = |r: &&Replica| r.standby == Standby::Warm;
        let cold = |r: &&Replica| r.standby == Standby::Cold;
        let topology = &description.topology_manager.replicas;
        exporter.context.sequencer_endpoints = grpc_endpoints(&mut sequencer.iter().filter(warm));
        exporter.context.cold_sequencer_endpoints =
            grpc_endpoints(&mut sequencer.iter().filter(cold));
        exporter.context.topology_endpoints = grpc_endpoints(
            &mut topology
                .iter()
                .filter(warm)
                .chain(topology.iter().filter(cold)),
        );
        exporter.context.owner_public_key = exporter.owner_public_key.clone();
        Ok(exporter)
    }

    fn namespace(&self) -> &str {
        &self.options.namespace
    }

    fn endpoint(&self, replica: &Replica, port: u16) -> String {
        exporter_endpoint(self.options, replica, port)
    }

    fn storage(&self, node: &NodeView<'_>) -> StorageConfig {
        match self.description.storage.backend {
            Backend::Sqlite => StorageConfig::Sqlite {
                path: Path::new(DATA_DIR).join(format!("{}.db", node.name)),
            },
            Backend::Postgres => {
                let cluster = self
                    .description
                    .cluster_of(node)
                    .map_or("main", |c| c.name.as_str());
                StorageConfig::Postgres {
                    url: format!(
                        "postgres://{POSTGRES_USER}@{}.{}.svc:{POSTGRES_PORT}/{}",
                        postgres_service_name(cluster),
                        self.namespace(),
                        database_name(node.name)
                    ),
                    max_connections: configs::POSTGRES_POOL_CONNECTIONS,
                }
            }
        }
    }

    /// Server TLS with the replica's certificate, trusting the deployment's CA for the
    /// node's own clients. No client certificates are required: the kubelet's probes present
    /// none, and the Ledger API and admin routes have their tokens.
    fn tls(&self) -> TlsConfig {
        let dir = Path::new(TLS_DIR);
        TlsConfig::files(dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"))
    }

    fn replication(&self, node: &NodeView<'_>, replica: &Replica) -> Option<ReplicationConfig> {
        let port = match node.role {
            Role::Mediator => ports(replica).admin,
            _ => ports(replica).grpc,
        };
        node.is_replicated().then(|| {
            configs::advertised_replication(
                &replica.name,
                self.endpoint(replica, port),
                self.description.lease_timeout_ms,
            )
        })
    }

    /// The role config of `replica` as TOML, from the lab's builders.
    fn config(
        &self,
        node: &NodeView<'_>,
        position: usize,
        replica: &Replica,
    ) -> Result<String, ExportError> {
        let at = addresses(replica);
        let storage = self.storage(node);
        let admin_token_file = Some(Path::new(ADMIN_TOKEN_DIR).join(ADMIN_TOKEN_FILE));
        let replication = self.replication(node, replica);
        let text = match node.role {
            Role::Sequencer => {
                // The instance index is the position in the description, as in the lab, so a
                // cold instance keeps its own; the check bounds the instances far below u32.
                let index = u32::try_from(position).unwrap_or(u32::MAX);
                let mut config = configs::sequencer(at, index, storage, &self.owner_public_key)
                    .with_tls(self.tls());
                config.admin_token_file = admin_token_file;
                toml::to_string(&config)
            }
            Role::TopologyManager => {
                let sequencers = Endpoints::new(configs::warm_then_cold(
                    &self.context.sequencer_endpoints,
                    &self.context.cold_sequencer_endpoints,
                ));
                let mut config = configs::topology_manager(
                    at,
                    &self.context.keys_dir,
                    sequencers,
                    storage,
                    replication,
                )
                .with_tls(self.tls());
                config.admin_token_file = admin_token_file;
                toml::to_string(&config)
            }
            Role::Mediator => {
                let mut config = configs::mediator(
                    &self.context,
                    at.admin,
                    MediatorSettings::default(),
                    storage,
                    replication,
                )
                .with_tls(self.tls());
                config.admin_token_file = admin_token_file;
                toml::to_string(&config)
            }
            Role::Participant => {
                let id = ParticipantId::new(node.name).map_err(|_| ExportError::Name {
                    what: "participant",
                    name: node.name.to_owned(),
                })?;
                let mut config = configs::participant(
                    &self.context,
                    &id,
                    at,
                    ParticipantSettings::default(),
                    storage,
                    replication,
                )
                .with_tls(self.tls());
                config.admin_token_file = admin_token_file;
                toml::to_string(&config)
            }
        };
        text.map_err(|error| ExportError::Serialize {
            replica: replica.name.to_string(),
            reason: error.to_string(),
        })
    }

    fn metadata(&self, name: &str, labels: Value) -> Value {
        json!({ "name": name, "namespace": self.namespace(), "labels": labels })
    }

    fn namespace_object(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": self.namespace(), "labels": { LABEL_NAME: "meridian" } },
        })
    }

    fn config_map(&self, replica: &Replica, config: String) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(replica.name.as_str(), replica_labels_of(replica)),
            "data": { CONFIG_FILE: config },
        })
    }

    /// The replica's own DNS name, `<replica>.<namespace>.svc`. It lists the pod ready or
    /// not: the other nodes name every replica, and a passive one's refusal names the active.
    fn headless_service(&self, node: &NodeView<'_>, replica: &Replica) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(replica.name.as_str(), pod_labels(node, replica)),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": { LABEL_REPLICA: replica.name.as_str() },
                "ports": service_ports(node.role, replica),
            },
        })
    }

    /// The one address of a participant's Ledger API: it selects every replica of the
    /// participant, and Kubernetes routes only to ready pods — the active replica.
    fn participant_service(&self, node: &NodeView<'_>) -> Value {
        let port = node.replicas.first().map_or(DEFAULT_PORTS, ports).grpc;
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(
                &ledger_service_name(node.name),
                json!({ LABEL_NAME: "meridian", LABEL_COMPONENT: "participant", LABEL_NODE: node.name }),
            ),
            "spec": {
                "type": "ClusterIP",
                "selector": participant_selector(node.name),
                "ports": [{ "name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP" }],
            },
        })
    }

    fn stateful_set(&self, node: &NodeView<'_>, replica: &Replica) -> Value {
        let name = replica.name.as_str();
        let labels = pod_labels(node, replica);
        let sqlite = self.description.storage.backend == Backend::Sqlite;
        let mut mounts = vec![
            json!({ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true }),
            json!({ "name": "tls", "mountPath": TLS_DIR, "readOnly": true }),
            json!({ "name": "admin-token", "mountPath": ADMIN_TOKEN_DIR, "readOnly": true }),
        ];
        let mut volumes = vec![
            json!({ "name": "config", "configMap": { "name": name } }),
            secret_volume("tls", &format!("{name}-tls"), None),
            secret_volume(
                "admin-token",
                ADMIN_TOKEN_SECRET,
                Some(vec![ADMIN_TOKEN_FILE.to_owned()]),
            ),
        ];
        let keys = node_key_files(node);
        if !keys.is_empty() {
            mounts.push(json!({ "name": "keys", "mountPath": KEYS_DIR, "readOnly": true }));
            volumes.push(secret_volume("keys", KEYS_SECRET, Some(keys)));
        }
        if node.role == Role::Participant {
            mounts.push(
                json!({ "name": "ledger-auth", "mountPath": LEDGER_AUTH_DIR, "readOnly": true }),
            );
            volumes.push(secret_volume(
                "ledger-auth",
                LEDGER_AUTH_SECRET,
                Some(vec![LEDGER_AUTH_FILE.to_owned()]),
            ));
        }
        if sqlite {
            mounts.push(json!({ "name": "data", "mountPath": DATA_DIR }));
        }
        let mut container = json!({
            "name": "meridian",
            "image": self.options.image,
            "command": [
                "meridian",
                node.role.command(),
                "--config",
                format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            ],
            "ports": container_ports(node.role, replica),
            // Every second, out at the first failure: a passive participant leaves its Service
            // within about a second of a switchover, the new active joins as fast.
            "readinessProbe": probe("/readyz", 1, 1),
            "livenessProbe": probe("/livez", 5, 3),
            "volumeMounts": mounts,
        });
        if !sqlite {
            container["env"] = json!([{
                "name": "PGPASSWORD",
                "valueFrom": { "secretKeyRef": { "name": POSTGRES_SECRET, "key": "password" } },
            }]);
        }
        let mut spec = json!({
            "serviceName": name,
            // A cold replica is configured, not started: scaling it to 1 starts it.
            "replicas": if replica.standby == Standby::Warm { 1 } else { 0 },
            "selector": { "matchLabels": { LABEL_REPLICA: name } },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "affinity": { "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{ "matchExpressions": [{
                                "key": ZONE_LABEL,
                                "operator": "In",
                                "values": [replica.zone.as_str()],
                            }] }],
                        },
                    } },
                    // A step-down drains its accepted submissions for up to 5 s on SIGTERM.
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        });
        if sqlite {
            spec["volumeClaimTemplates"] = json!([{
                "metadata": { "name": "data" },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": DATA_VOLUME_SIZE } },
                },
            }]);
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": self.metadata(name, pod_labels(node, replica)),
            "spec": spec,
        })
    }
}

fn exporter_endpoint(options: &ExportOptions, replica: &Replica, port: u16) -> String {
    format!("https://{}.{}.svc:{port}", replica.name, options.namespace)
}

fn ports(replica: &Replica) -> NodePorts {
    replica.ports.unwrap_or(DEFAULT_PORTS)
}

/// Every pod listens on all its addresses.
fn addresses(replica: &Replica) -> Addresses {
    let ports = ports(replica);
    Addresses {
        grpc: SocketAddr::from(([0, 0, 0, 0], ports.grpc)),
        admin: SocketAddr::from(([0, 0, 0, 0], ports.admin)),
    }
}

/// The Service in front of a PostgreSQL cluster's writer, which the operator provides.
pub fn postgres_service_name(cluster: &str) -> String {
    format!("postgres-{cluster}")
}

/// The node's database, named as the lab names it.
pub fn database_name(node: &str) -> String {
    node.replace('-', "_")
}

/// What selects a participant's pods, and only them.
pub fn participant_selector(participant: &str) -> Value {
    json!({ LABEL_COMPONENT: "participant", LABEL_NODE: participant })
}

fn pod_labels(node: &NodeView<'_>, replica: &Replica) -> Value {
    json!({
        LABEL_NAME: "meridian",
        LABEL_COMPONENT: node.role.command(),
        LABEL_NODE: node.name,
        LABEL_REPLICA: replica.name.as_str(),
    })
}

fn replica_labels_of(replica: &Replica) -> Value {
    json!({ LABEL_NAME: "meridian", LABEL_REPLICA: replica.name.as_str() })
}

/// The key files of `node` in the keys Secret: the topology manager signs with the owner's
/// key too; the sequencer has none.
fn node_key_files(node: &NodeView<'_>) -> Vec<String> {
    match node.role {
        Role::Sequencer => Vec::new(),
        Role::TopologyManager => vec!["owner.key".to_owned(), format!("{}.key", node.name)],
        Role::Mediator | Role::Participant => vec![format!("{}.key", node.name)],
    }
}

/// A Secret volume, with only `items` when given, readable by the owner only.
fn secret_volume(volume: &str, secret: &str, items: Option<Vec<String>>) -> Value {
    let mut source = json!({ "secretName": secret, "defaultMode": SECRET_MODE });
    if let Some(items) = items {
        source["items"] = items
            .iter()
            .map(|key| json!({ "key": key, "path": key }))
            .collect();
    }
    json!({ "name": volume, "secret": source })
}

/// An HTTPS GET probe on the admin port (the kubelet does not check the certificate).
fn probe(path: &str, period_s: u32, failure_threshold: u32) -> Value {
    json!({
        "httpGet": { "path": path, "port": "admin", "scheme": "HTTPS" },
        "periodSeconds": period_s,
        "timeoutSeconds": 1,
        "failureThreshold": failure_threshold,
    })
}

fn container_ports(role: Role, replica: &Replica) -> Value {
    let ports = ports(replica);
    let admin = json!({ "name": "admin", "containerPort": ports.admin, "protocol": "TCP" });
    match role {
        // The mediator serves no gRPC.
        Role::Mediator => json!([admin]),
        _ => json!([
            { "name": "grpc", "containerPort": ports.grpc, "protocol": "TCP" },
            admin,
        ]),
    }
}

fn service_ports(role: Role, replica: &Replica) -> Value {
    let ports = ports(replica);
    let admin =
        json!({ "name": "admin", "port": ports.admin, "targetPort": "admin", "protocol": "TCP" });
    match role {
        Role::Mediator => json!([admin]),
        _ => json!([
            { "name": "grpc", "port": ports.grpc, "targetPort": "grpc", "protocol": "TCP" },
            admin,
        ]),
    }
}

/// `NOTES.txt`: what the operator provides before `kubectl apply -f DIR` — the Secrets, the
/// databases, the image — and how a cold replica is started.
fn notes(description: &Description, options: &ExportOptions, nodes: &[NodeView<'_>]) -> String {
    let ns = &options.namespace;
    let mut text = String::new();
    let mut line = |s: String| {
        text.push_str(&s);
        text.push('\n');
    };
    line("Generated by `meridian deployment export --kubernetes`; see docs/operations.md, \"Kubernetes\".".into());
    line(String::new());
    line(format!(
        "Namespace: {ns}. Image: {} (build one holding the `meridian` binary; none is published).",
        options.image
    ));
    line(String::new());
    line("Provide these Secrets before `kubectl apply -f .` (none is generated):".into());
    line(String::new());
    line(
        "1. TLS, one Secret per replica, `<replica>-tls` with ca.crt, tls.crt and tls.key. The"
            .into(),
    );
    line("   certificates must name the replica's Service (and, for a participant, its".into());
    line("   Ledger API Service). With the development CA:".into());
    line(String::new());
    let mut cert_nodes = Vec::new();
    let mut replicas = Vec::new();
    for node in nodes {
        for replica in node.replicas {
            let mut hosts = format!("{}.{ns}.svc", replica.name);
            if node.role == Role::Participant {
                hosts.push_str(&format!(",{}.{ns}.svc", ledger_service_name(node.name)));
            }
            cert_nodes.push(format!("--node {}={hosts}", replica.name));
            replicas.push(replica.name.to_string());
        }
    }
    line(format!(
        "   meridian certs --out tls {}",
        cert_nodes.join(" ")
    ));
    line(format!("   for r in {}; do", replicas.join(" ")));
    line(format!(
        "     kubectl -n {ns} create secret generic $r-tls --from-file=ca.crt=tls/ca.crt \\"
    ));
    line("       --from-file=tls.crt=tls/$r.crt --from-file=tls.key=tls/$r.key".into());
    line("   done".into());
    line(String::new());
    let mut key_files = vec!["owner.key".to_owned()];
    for node in nodes {
        if node.role != Role::Sequencer {
            key_files.push(format!("{}.key", node.name));
        }
    }
    line(format!(
        "2. Signing keys, Secret `{KEYS_SECRET}`: {} (each 64 hex digits,",
        key_files.join(", ")
    ));
    line("   e.g. `openssl rand -hex 32 > owner.key`). Each pod mounts only its own.".into());
    line(format!(
        "   kubectl -n {ns} create secret generic {KEYS_SECRET} {}",
        key_files
            .iter()
            .map(|f| format!("--from-file={f}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    line(String::new());
    line(format!(
        "3. The admin token, Secret `{ADMIN_TOKEN_SECRET}` with `{ADMIN_TOKEN_FILE}`:"
    ));
    line(format!("   openssl rand -hex 32 > {ADMIN_TOKEN_FILE}"));
    line(format!("   kubectl -n {ns} create secret generic {ADMIN_TOKEN_SECRET} --from-file={ADMIN_TOKEN_FILE}"));
    line(String::new());
    line(format!("4. The Ledger API token keys' JWKS, Secret `{LEDGER_AUTH_SECRET}` with `{LEDGER_AUTH_FILE}`:"));
    line("   meridian token keygen --out ledger-auth".into());
    line(format!("   kubectl -n {ns} create secret generic {LEDGER_AUTH_SECRET} --from-file={LEDGER_AUTH_FILE}=ledger-auth/ledger-auth.jwks.json"));
    line(String::new());
    if options.owner_public_key.is_none() {
        line(format!(
            "The configs say owner_public_key = \"{OWNER_KEY_PLACEHOLDER}\": export again with"
        ));
        line("--owner-public-key HEX (the topology manager logs it at start and shows it in /status).".into());
        line(String::new());
    }
    match description.storage.backend {
        Backend::Sqlite => {
            line(format!("Storage: SQLite, one file per node on the pod's volume ({DATA_VOLUME_SIZE}, claim `data`)."));
        }
        Backend::Postgres => {
            line("Storage: PostgreSQL, not generated: run it with Patroni or use a managed database.".into());
            line(format!("Provide, in namespace {ns}:"));
            for cluster in &description.postgres_clusters {
                line(format!(
                    "- Service `{}` on port {POSTGRES_PORT}, reaching cluster {}'s writer",
                    postgres_service_name(cluster.name.as_str()),
                    cluster.name
                ));
            }
            let databases: Vec<String> = nodes.iter().map(|n| database_name(n.name)).collect();
            line(format!(
                "- user `{POSTGRES_USER}` owning databases {}",
                databases.join(", ")
            ));
            line(format!(
                "- Secret `{POSTGRES_SECRET}` with `password` (the pods' PGPASSWORD):"
            ));
            line(format!("  kubectl -n {ns} create secret generic {POSTGRES_SECRET} --from-literal=password=..."));
        }
    }
    line(String::new());
    line(
        "Applications reach participant N at its Ledger API Service, which routes to the ready"
            .into(),
    );
    line("(active) replica only:".into());
    for node in nodes.iter().filter(|n| n.role == Role::Participant) {
        let port = node.replicas.first().map_or(DEFAULT_PORTS, ports).grpc;
        line(format!(
            "  {}: https://{}.{ns}.svc:{port}",
            node.name,
            ledger_service_name(node.name)
        ));
    }
    let cold: Vec<&str> = nodes
        .iter()
        .flat_map(|n| n.cold())
        .map(|r| r.name.as_str())
        .collect();
    if !cold.is_empty() {
        line(String::new());
        line("Cold replicas have `replicas: 0`. Start one by scaling it:".into());
        for name in cold {
            line(format!(
                "  kubectl -n {ns} scale statefulset {name} --replicas=1"
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::description::Preset;
    use meridian_node::config::parse_toml as parse;

    fn export(description: &Description) -> Vec<ExportFile> {
        manifests(description, &ExportOptions::default()).expect("exports")
    }

    fn object(files: &[ExportFile], name: &str) -> Value {
        let file = files.iter().find(|f| f.name == name).expect(name);
        serde_json::from_str(&file.text).expect("JSON")
    }

    #[test]
    fn a_cold_replica_is_configured_but_not_started() {
        let files = export(&Description::preset(Preset::TwoRegions));
        let warm = object(&files, "40-statefulset-participant1-a.json");
        let cold = object(&files, "40-statefulset-participant1-c.json");
        assert_eq!(warm["spec"]["replicas"], 1);
        assert_eq!(cold["spec"]["replicas"], 0);
        let notes = files.iter().find(|f| f.name == "NOTES.txt").expect("notes");
        assert!(notes
            .text
            .contains("scale statefulset participant1-c --replicas=1"));
    }

    #[test]
    fn configs_name_the_other_nodes_by_their_service_names() {
        let files = export(&Description::preset(Preset::TwoRegions));
        let map = object(&files, "10-configmap-participant2-b.json");
        let config = map["data"][CONFIG_FILE].as_str().expect("config");
        let parsed: meridian_participant::ParticipantConfig =
            toml::from_str(config).expect("a participant config");
        assert_eq!(
            parsed
                .topology_endpoints
                .as_slice()
                .last()
                .map(String::as_str),
            Some("https://topology-manager-c.meridian.svc:7000")
        );
        assert!(config.contains("postgres://meridian@postgres-main.meridian.svc:5432/participant2"));
        assert!(
            config.contains("advertised_endpoint = \"https://participant2-b.meridian.svc:7000\"")
        );
    }

    /// Every exported config is one its role loads and accepts: parsed with unknown keys
    /// refused, then through the role's own check (endpoints, owner key, replication).
    #[test]
    fn every_config_passes_its_roles_own_check() {
        let owner = meridian_core::crypto::SigningKey::generate().public_key();
        let options = ExportOptions {
            owner_public_key: Some(owner.to_string()),
            ..ExportOptions::default()
        };
        let description = Description::preset(Preset::TwoRegions);
        let files = manifests(&description, &options).expect("exports");
        let keys = description.node_keys();
        let mut checked = 0;
        for node in description.nodes(&keys) {
            for replica in node.replicas {
                let origin = format!("{}.toml", replica.name);
                let map = object(&files, &format!("10-configmap-{}.json", replica.name));
                let text = map["data"][CONFIG_FILE].as_str().expect("config");
                let checked_ok = match node.role {
                    Role::Sequencer => parse::<meridian_sequencer::SequencerConfig>(text, &origin)
                        .map(|c| c.check(&origin).map_err(|e| e.to_string())),
                    Role::TopologyManager => {
                        parse::<meridian_topology::TopologyManagerConfig>(text, &origin)
                            .map(|c| c.check(&origin).map_err(|e| e.to_string()))
                    }
                    Role::Mediator => parse::<meridian_mediator::MediatorConfig>(text, &origin)
                        .map(|c| c.check(&origin).map_err(|e| e.to_string())),
                    Role::Participant => {
                        parse::<meridian_participant::ParticipantConfig>(text, &origin)
                            .map(|c| c.check(&origin).map_err(|e| e.to_string()))
                    }
                };
                assert_eq!(
                    checked_ok.map_err(|e| e.to_string()),
                    Ok(Ok(())),
                    "{origin}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 18, "six nodes of three replicas");
    }

    #[test]
    fn sqlite_replicas_cannot_share_a_file_across_pods() {
        let error = manifests(
            &Description::preset(Preset::Replicated),
            &ExportOptions::default(),
        )
        .expect_err("replicated SQLite");
        assert!(error.to_string().contains("--backend postgres"), "{error}");
        let single = export(&Description::preset(Preset::Single));
        let set = object(&single, "40-statefulset-participant1.json");
        assert_eq!(
            set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
            "data"
        );
    }

    #[test]
    fn bad_options_are_refused_naming_them() {
        let description = Description::preset(Preset::Single);
        let bad_namespace = ExportOptions {
            namespace: "Meridian".into(),
            ..ExportOptions::default()
        };
        assert!(matches!(
            manifests(&description, &bad_namespace),
            Err(ExportError::Namespace(_))
        ));
        let bad_key = ExportOptions {
            owner_public_key: Some("zz".into()),
            ..ExportOptions::default()
        };
        assert_eq!(
            manifests(&description, &bad_key),
            Err(ExportError::OwnerKey)
        );
    }
}
