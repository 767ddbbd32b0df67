//! Loading a node's TOML configuration file into the caller's own config struct. Callers mark
//! their structs `#[serde(deny_unknown_fields)]` so a misspelt key is an error rather than a
//! silently ignored setting; this module makes every such error a single line that names the
//! file, the offending key and its line and column, because an operator reads it in a log line
//! from a process that refused to start.
//!
//! It also holds what the role configs share: the [`Endpoints`] of a replicated service, the
//! keys every member node repeats ([`MemberConfig`]) and the error naming a key whose value
//! cannot work ([`InvalidSetting`]). Configs are values: whatever writes a config file builds
//! the role's struct and serializes it with [`to_toml`], so a renamed field fails to compile
//! instead of at a node's start.

use std::io::Read;
use std::path::{Path, PathBuf};

use meridian_core::crypto::PublicKey;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Config files larger than this are refused: a node config is a few kilobytes, and reading an
/// unbounded file (a mistyped path to a log or a device) into memory must not take a node down.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why a config file could not be turned into the caller's config struct.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be opened or read (missing, unreadable, not UTF-8).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("config file {} is larger than {limit_bytes} bytes", path.display())]
    TooLarge { path: PathBuf, limit_bytes: u64 },
    /// The file is not valid TOML or does not match the config struct: unknown key, wrong type,
    /// missing required key. `message` is one line naming the key and where it is.
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

/// Reads and parses the TOML config file at `path`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = read_bounded(path)?;
    parse_toml_at(&text, path.to_path_buf())
}

/// Loads a role's config file and runs its `check`, which gets the file's path to name in
/// messages; one shape for every role's `load`, so every load error names the file and the key.
pub fn load_checked<T, E>(
    path: &Path,
    check: impl FnOnce(&T, &str) -> Result<(), E>,
) -> Result<T, E>
where
    T: DeserializeOwned,
    E: From<ConfigError>,
{
    let config: T = load_toml(path)?;
    check(&config, &path.display().to_string())?;
    Ok(config)
}

/// Parses config `text`; `origin` names where it came from in error messages (a path, or
/// something like `<test>`).
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    parse_toml_at(text, PathBuf::from(origin))
}

fn parse_toml_at<T: DeserializeOwned>(text: &str, path: PathBuf) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|err| {
        let key = err.path().to_string();
        ConfigError::Parse {
            message: describe(err.inner(), &key, text),
            path,
        }
    })
}

/// A config as the TOML text its role's `load` reads back; for deployments and tests that
/// write config files.
pub fn to_toml<T: Serialize>(config: &T) -> Result<String, toml::ser::Error> {
    toml::to_string(config)
}

/// Writes `config` as the TOML file `path`, for a node started with `--config path`.
pub fn write_toml<T: Serialize>(path: &Path, config: &T) -> std::io::Result<()> {
    let text = to_toml(config).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

/// Writes each config as the file `file_name` in a fresh temporary directory and loads it back
/// with `load`, panicking unless it comes back equal: every role's tests show this way that a
/// config built in code survives its own file.
pub fn assert_round_trips<T, E>(
    file_name: &str,
    configs: impl IntoIterator<Item = T>,
    load: impl Fn(&Path) -> Result<T, E>,
) where
    T: Serialize + PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    let dir = tempfile::tempdir().expect("a temporary directory for the config file");
    let file = dir.path().join(file_name);
    for config in configs {
        write_toml(&file, &config).expect("the config file is written");
        assert_eq!(load(&file).expect("the written config loads"), config);
    }
}

fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    // Read one byte past the limit rather than trusting metadata, which lies for pipes and
    // procfs files.
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            limit_bytes: MAX_CONFIG_BYTES,
        });
    }
    Ok(text)
}

/// Most endpoints one service may list; a synchronizer runs a handful of instances.
pub const MAX_ENDPOINTS: usize = 16;

/// The gRPC endpoints of one service that has several processes: the instances of the
/// sequencer (all active, one shared database) or the replicas of the topology manager (one
/// active). Clients spread over them or find the active one, and fail over between them. In
/// TOML either `"https://host:port"` or `["https://a:port", "https://b:port"]` (`http://` with
/// `[tls] plaintext = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints(Vec<String>);

impl<'de> serde::Deserialize<'de> for Endpoints {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(
            untagged,
            expecting = "an endpoint string or a list of endpoint strings"
        )]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(endpoint) => Self(vec![endpoint]),
            OneOrMany::Many(endpoints) => Self(endpoints),
        })
    }
}

impl serde::Serialize for Endpoints {
    /// Always a list, the form that round-trips whatever the count.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl Endpoints {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self(endpoints)
    }

    /// A single endpoint: an unreplicated service.
    pub fn one(endpoint: impl Into<String>) -> Self {
        Self(vec![endpoint.into()])
    }

    /// Refuses an empty or overlong list, an endpoint that is not `http(s)://host...`, and
    /// repeats (which would double one instance's share of the load). The reason is one line.
    pub fn check(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("needs at least one endpoint".into());
        }
        if self.0.len() > MAX_ENDPOINTS {
            return Err(format!(
                "lists {} endpoints; at most {MAX_ENDPOINTS} are allowed",
                self.0.len()
            ));
        }
        for (index, endpoint) in self.0.iter().enumerate() {
            let host = endpoint
                .strip_prefix("https://")
                .or_else(|| endpoint.strip_prefix("http://"))
                .unwrap_or_default();
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(format!(
                    "{endpoint:?} must be https://host:port (or http://host:port with [tls] plaintext = true)"
                ));
            }
            if self.0[..index].contains(endpoint) {
                return Err(format!("{endpoint:?} is listed twice"));
            }
        }
        Ok(())
    }

    /// The endpoints in the configured order (at least one once checked).
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The first endpoint, where the client starts.
    pub fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl FromIterator<String> for Endpoints {
    fn from_iter<I: IntoIterator<Item = String>>(endpoints: I) -> Self {
        Self(endpoints.into_iter().collect())
    }
}

/// A value the config's types accept but the node cannot work with: the file, the key (as its
/// full path, e.g. `replication.replica_id`) and why, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {key}: {reason}")]
pub struct InvalidSetting {
    pub path: String,
    pub key: &'static str,
    pub reason: String,
}

impl InvalidSetting {
    pub fn new(path: &str, key: &'static str, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            key,
            reason: reason.into(),
        }
    }

    /// Turns a `(key, reason)` pair, as [`ReplicationConfig::check`] returns it, into an error
    /// naming the file `path`.
    ///
    /// [`ReplicationConfig::check`]: crate::replication::ReplicationConfig::check
    pub fn in_file(path: &str) -> impl Fn((&'static str, String)) -> Self + '_ {
        move |(key, reason)| Self::new(path, key, reason)
    }
}

/// The keys every member node of the synchronizer repeats at the top level of its config: its
/// own key file, the owner's key it verifies topology against, and where the sequencer and
/// the topology manager are. The topology manager has no `owner_public_key` (it holds the
/// owner's signing key) and no `topology_endpoints` (it is what they name).
///
/// The role configs keep these keys as their own fields, borrowed here by their `member_config()`:
/// `#[serde(flatten)]` would keep the file's shape but makes serde buffer the table, so an
/// unknown key would lose its line and column and the list of expected keys. What is shared
/// is what matters — the checks and their messages, written once.
#[derive(Debug, Clone, Copy)]
pub struct MemberConfig<'a> {
    pub key_file: &'a Path,
    pub owner_public_key: Option<&'a str>,
    pub sequencer_endpoints: &'a Endpoints,
    pub topology_endpoints: Option<&'a Endpoints>,
}

impl MemberConfig<'_> {
    /// Refuses an empty key file path, an owner key that is not a hex ed25519 public key and
    /// endpoint lists [`Endpoints::check`] refuses; the error names the key and the file
    /// `path`.
    pub fn check(&self, path: &str) -> Result<(), InvalidSetting> {
        if self.key_file.as_os_str().is_empty() {
            return Err(InvalidSetting::new(
                path,
                "key_file",
                "must name a file (it is created if missing)",
            ));
        }
        if let Some(owner) = self.owner_public_key {
            PublicKey::from_hex(owner).map_err(|error| {
                InvalidSetting::new(
                    path,
                    "owner_public_key",
                    format!("not a hex ed25519 public key: {error}"),
                )
            })?;
        }
        let endpoints = [
            Some(("sequencer_endpoints", self.sequencer_endpoints)),
            self.topology_endpoints.map(|e| ("topology_endpoints", e)),
        ];
        for (key, endpoints) in endpoints.into_iter().flatten() {
            endpoints
                .check()
                .map_err(|reason| InvalidSetting::new(path, key, reason))?;
        }
        Ok(())
    }
}

/// Where a member finds the synchronizer's services: what a deployment gives every member
/// alike when it builds their configs (each member puts its first choice first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEndpoints {
    pub sequencer: Endpoints,
    pub topology: Endpoints,
}

/// One line naming the key (as a full path such as `store.url` or `peers[1].url`, which toml's
/// own message lacks for wrong types and nested tables) and its line and column. toml's
/// multi-line rendering is not used: it quotes the offending line, which may hold a password or
/// a connection string.
fn describe(err: &toml::de::Error, key: &str, text: &str) -> String {
    let message = err.message().trim_end();
    let mut described = if key == "." || message.contains(&format!("`{key}`")) {
        // Top level, or toml already names the key in full.
        message.to_owned()
    } else if message.starts_with("missing field") {
        // The path then leads to the table that lacks the field.
        format!("in table `{key}`: {message}")
    } else {
        format!("key `{key}`: {message}")
    };
    if let Some(span) = err.span() {
        let (line, column) = line_column(text, span.start);
        described.push_str(&format!(" at line {line} column {column}"));
    }
    described
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::Write;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        listen_address: String,
        #[serde(default)]
        workers: u32,
        #[serde(default)]
        store: Option<Store>,
        #[serde(default)]
        peers: Vec<Store>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Store {
        url: String,
        #[serde(default)]
        pool_size: u32,
    }

    fn parse_err(text: &str) -> String {
        parse_toml::<Config>(text, "/x/seq.toml")
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn unknown_top_level_key_names_key_file_and_line() {
        let msg = parse_err("workers = 2\n\nlisten_adress = \"127.0.0.1:1\"\n");
        assert!(msg.starts_with("config file /x/seq.toml: "), "{msg}");
        assert!(msg.contains("unknown field `listen_adress`"), "{msg}");
        assert!(msg.contains("expected one of"), "{msg}");
        assert!(msg.contains("line 3 column 1"), "{msg}");
        assert!(!msg.contains('\n'), "message must be one line: {msg:?}");
    }

    #[test]
    fn unknown_nested_key_names_its_full_path() {
        let msg = parse_err(
            "listen_address = \"a\"\n\n[store]\nurl = \"sqlite://x\"\n  pool_sise = 3 # typo\n",
        );
        assert_eq!(
            msg,
            "config file /x/seq.toml: key `store.pool_sise`: unknown field `pool_sise`, \
             expected `url` or `pool_size` at line 5 column 3"
        );
        let msg = parse_err("listen_address = \"a\"\nstore = { url = \"x\", bad = 1 }\n");
        assert!(
            msg.contains("key `store.bad`: unknown field `bad`"),
            "{msg}"
        );
        assert!(msg.contains("line 2 column 22"), "{msg}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let msg = parse_err("listen_address = \"a\"\nworkers = \"four\"\n");
        assert_eq!(
            msg,
            "config file /x/seq.toml: key `workers`: invalid type: string \"four\", \
             expected u32 at line 2 column 11"
        );
        let msg = parse_err("listen_address = \"a\"\n[[peers]]\nurl = \"x\"\n[[peers]]\nurl = 2\n");
        assert!(msg.contains("key `peers[1].url`: invalid type"), "{msg}");
        assert!(msg.contains("line 5 column 7"), "{msg}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let msg = parse_err("workers = 1\n");
        assert!(msg.contains("missing field `listen_address`"), "{msg}");
        let msg = parse_err("listen_address = \"a\"\n[store]\npool_size = 1\n");
        assert!(
            msg.contains("in table `store`: missing field `url` at line 2"),
            "{msg}"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Member {
        #[serde(alias = "sequencer_endpoint")]
        sequencer_endpoints: Endpoints,
    }

    #[test]
    fn sequencer_endpoints_take_one_or_many_and_are_checked() {
        let one: Member = parse_toml("sequencer_endpoint = \"http://a:1\"\n", "<test>").unwrap();
        assert_eq!(one.sequencer_endpoints.as_slice(), ["http://a:1"]);
        assert!(one.sequencer_endpoints.check().is_ok());
        let many: Member = parse_toml(
            "sequencer_endpoints = [\"http://a:1\", \"http://b:2\"]\n",
            "<test>",
        )
        .unwrap();
        assert_eq!(many.sequencer_endpoints.first(), "http://a:1");
        assert_eq!(
            many.sequencer_endpoints.to_string(),
            "http://a:1, http://b:2"
        );
        let wrong = parse_toml::<Member>("sequencer_endpoints = 3\n", "<test>")
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("an endpoint string or a list"), "{wrong}");
        for (endpoints, reason) in [
            (vec![], "at least one"),
            (vec!["a:1".to_owned()], "http://host:port"),
            (vec!["http://".to_owned()], "http://host:port"),
            (
                vec!["http://a:1".to_owned(), "http://a:1".to_owned()],
                "twice",
            ),
            (vec!["http://a:1".to_owned(); 17], "at most 16"),
        ] {
            let error = Endpoints::new(endpoints).check().unwrap_err();
            assert!(error.contains(reason), "{error}");
        }
    }

    #[test]
    fn member_check_names_the_key_and_the_file() {
        let owner = meridian_core::crypto::SigningKey::from_seed([3; 32])
            .public_key()
            .to_string();
        let sequencer = Endpoints::one("http://a:1");
        let topology = Endpoints::new(vec!["http://t:1".to_owned(), "http://t:2".to_owned()]);
        let member = MemberConfig {
            key_file: Path::new("m.key"),
            owner_public_key: Some(&owner),
            sequencer_endpoints: &sequencer,
            topology_endpoints: Some(&topology),
        };
        assert_eq!(member.check("m.toml"), Ok(()));
        // The topology manager has neither an owner public key nor topology endpoints.
        let manager = MemberConfig {
            owner_public_key: None,
            topology_endpoints: None,
            ..member
        };
        assert_eq!(manager.check("tm.toml"), Ok(()));

        let schemeless = Endpoints::one("t:1");
        let repeated: Endpoints = ["http://a:1", "http://a:1"]
            .map(String::from)
            .into_iter()
            .collect();
        for (broken, key, reason) in [
            (
                MemberConfig {
                    key_file: Path::new(""),
                    ..member
                },
                "key_file",
                "must name a file",
            ),
            (
                MemberConfig {
                    owner_public_key: Some("zz"),
                    ..member
                },
                "owner_public_key",
                "not a hex ed25519 public key",
            ),
            (
                MemberConfig {
                    sequencer_endpoints: &repeated,
                    ..member
                },
                "sequencer_endpoints",
                "listed twice",
            ),
            (
                MemberConfig {
                    topology_endpoints: Some(&schemeless),
                    ..member
                },
                "topology_endpoints",
                "http://host:port",
            ),
        ] {
            let error = broken.check("m.toml").expect_err(key);
            assert_eq!((error.path.as_str(), error.key), ("m.toml", key));
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("m.toml: {key}: ")),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
        }
    }

    #[test]
    fn replication_pairs_become_errors_naming_the_file() {
        let replication = crate::replication::ReplicationConfig {
            lease_timeout_ms: 0,
            ..crate::replication::ReplicationConfig::new("a")
        };
        let error = replication
            .check()
            .map_err(InvalidSetting::in_file("r.toml"))
            .unwrap_err();
        assert_eq!(error.key, "replication.lease_timeout_ms");
        assert!(error
            .to_string()
            .starts_with("r.toml: replication.lease_timeout_ms: "));
    }

    #[test]
    fn syntax_error_is_one_line_with_position() {
        let msg = parse_err("listen_address = \"a\nworkers = 1\n");
        assert!(msg.contains("line 1"), "{msg}");
        assert!(!msg.contains('\n'), "{msg:?}");
    }

    #[test]
    fn missing_file_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = load_toml::<Config>(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot read config file "), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn valid_file_loads() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(
            file,
            "listen_address = \"127.0.0.1:7000\"\nworkers = 4\n[store]\nurl = \"sqlite://m.db\"\n"
        )
        .unwrap();
        let config: Config = load_toml(file.path()).unwrap();
        assert_eq!(
            config,
            Config {
                listen_address: "127.0.0.1:7000".into(),
                workers: 4,
                store: Some(Store {
                    url: "sqlite://m.db".into(),
                    pool_size: 0
                }),
                peers: vec![],
            }
        );
    }

    #[test]
    fn parse_error_from_file_names_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "listen_address = \"a\"\nbogus = 1\n").unwrap();
        let err = load_toml::<Config>(file.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(msg.contains(&file.path().display().to_string()), "{msg}");
        assert!(msg.contains("unknown field `bogus`"), "{msg}");
    }

    #[test]
    fn oversized_file_is_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let filler = "#".repeat(usize::try_from(MAX_CONFIG_BYTES).unwrap() + 1);
        write!(file, "{filler}").unwrap();
        let err = load_toml::<Config>(file.path()).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err:?}");
    }
}
