//! Loading a node's TOML configuration file into the caller's own config struct. Callers mark
//! their structs `#[serde(deny_unknown_fields)]` so a misspelt key is an error rather than a
//! silently ignored setting; this module makes every such error a single line that names the
//! file, the offending key and its line and column, because an operator reads it in a log line
//! from a process that refused to start.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

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
