//! Hostile config files (issue 11, item 6): arbitrary text, and TOML documents made from every
//! role's valid config (and every deployment preset) with keys replaced, added or removed and
//! values swapped for hostile ones, loaded through each role's `load` (parse and check) and
//! through the deployment file's `load` and check. Nothing may panic, neither while loading nor
//! in the run-time arithmetic a loaded config's timings feed (instants plus durations); an
//! error names the file.
//!
//! Case count: `MERIDIAN_HOSTILE_CASES` (see `meridian_testkit::hostile`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use meridian_core::crypto::SigningKey;
use meridian_core::ParticipantId;
use meridian_lab::deployment::{Description, Preset};
use meridian_mediator::MediatorConfig;
use meridian_node::config::{to_toml, Endpoints, MemberEndpoints};
use meridian_participant::ParticipantConfig;
use meridian_sequencer::SequencerConfig;
use meridian_store::StorageConfig;
use meridian_testkit::hostile::hostile_config;
use meridian_topology::TopologyManagerConfig;
use proptest::collection::vec;
use proptest::prelude::*;
use toml::Value;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The valid TOML of every role's config and of every deployment preset.
fn valid_documents() -> &'static [String] {
    static DOCUMENTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    DOCUMENTS.get_or_init(build_documents)
}

fn build_documents() -> Vec<String> {
    let owner = SigningKey::from_seed([1; 32]).public_key();
    let sqlite = StorageConfig::Sqlite {
        path: PathBuf::from("node.db"),
    };
    let endpoints = MemberEndpoints {
        sequencer: Endpoints::one("http://127.0.0.1:1"),
        topology: Endpoints::one("http://127.0.0.1:2"),
    };
    let mut documents = vec![
        to_toml(&SequencerConfig::new(addr(1), addr(2), sqlite.clone())).unwrap(),
        to_toml(&TopologyManagerConfig::new(
            "owner.key".into(),
            "tm.key".into(),
            Endpoints::one("http://127.0.0.1:1"),
            addr(3),
            addr(4),
            sqlite.clone(),
        ))
        .unwrap(),
        to_toml(&ParticipantConfig::new(
            ParticipantId::new("p1").unwrap(),
            "p1.key".into(),
            &owner,
            endpoints.clone(),
            addr(5),
            addr(6),
            sqlite.clone(),
        ))
        .unwrap(),
        to_toml(&MediatorConfig::new(
            "m.key".into(),
            &owner,
            endpoints,
            addr(7),
            sqlite,
        ))
        .unwrap(),
    ];
    // A replicated participant, so edits reach its own `[replication]` checks.
    let mut replicated = ParticipantConfig::new(
        ParticipantId::new("p2").unwrap(),
        "p2.key".into(),
        &owner,
        MemberEndpoints {
            sequencer: Endpoints::one("http://127.0.0.1:1"),
            topology: Endpoints::one("http://127.0.0.1:2"),
        },
        addr(8),
        addr(9),
        StorageConfig::Sqlite {
            path: PathBuf::from("p2.db"),
        },
    );
    replicated.replication = Some(meridian_participant::ReplicationConfig::new("a"));
    documents.push(to_toml(&replicated).unwrap());
    for preset in [Preset::Single, Preset::Replicated, Preset::TwoRegions] {
        documents.push(Description::preset(preset).to_toml().unwrap());
    }
    documents
}

fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => any::<String>().prop_map(Value::String),
        1 => Just(Value::String(String::new())),
        1 => "[a-z:/.0-9]{0,30}".prop_map(Value::String),
        // Integers most often: most settings are numbers, and their edges are where a checked
        // config can still overflow at run time.
        4 => prop_oneof![Just(i64::MIN), Just(-1i64), Just(0), Just(i64::MAX), any::<i64>()]
            .prop_map(Value::Integer),
        1 => any::<f64>().prop_map(Value::Float),
        1 => any::<bool>().prop_map(Value::Boolean),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z_]{1,12}", inner), 0..4)
                .prop_map(|fields| Value::Table(fields.into_iter().collect())),
        ]
    })
}

/// Every path to a value of `table`, as key lists (array elements by index).
fn paths(value: &Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
    if !at.is_empty() {
        out.push(at.clone());
    }
    match value {
        Value::Table(table) => {
            for (key, child) in table {
                let mut next = at.clone();
                next.push(key.clone());
                paths(child, next, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let mut next = at.clone();
                next.push(i.to_string());
                paths(child, next, out);
            }
        }
        _ => {}
    }
}

fn slot<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut here = value;
    for key in path {
        here = match here {
            Value::Table(table) => table.get_mut(key)?,
            Value::Array(items) => items.get_mut(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(here)
}

#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, Value),
    Remove(prop::sample::Index),
    Add(prop::sample::Index, String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), hostile_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Remove),
        1 => (any::<prop::sample::Index>(), "[a-z_]{1,16}", hostile_value())
            .prop_map(|(i, k, v)| Edit::Add(i, k, v)),
    ]
}

fn apply(document: &str, edits: &[Edit]) -> String {
    let mut value: Value = toml::from_str(document).unwrap();
    for edit in edits {
        let mut all = Vec::new();
        paths(&value, Vec::new(), &mut all);
        if all.is_empty() {
            continue;
        }
        match edit {
            Edit::Replace(at, new) => {
                if let Some(slot) = slot(&mut value, &all[at.index(all.len())]) {
                    *slot = new.clone();
                }
            }
            Edit::Remove(at) => {
                let path = &all[at.index(all.len())];
                let (last, parent) = path.split_last().unwrap();
                if let Some(Value::Table(table)) = slot(&mut value, parent) {
                    table.remove(last);
                }
            }
            Edit::Add(at, key, new) => {
                let path = &all[at.index(all.len())];
                match slot(&mut value, path) {
                    Some(Value::Table(table)) => {
                        table.insert(key.clone(), new.clone());
                    }
                    _ => {
                        if let Value::Table(table) = &mut value {
                            table.insert(key.clone(), new.clone());
                        }
                    }
                }
            }
        }
    }
    // A value toml cannot write (a table inside an array of scalars, say) is written as the
    // unedited document's text instead: the case is then a valid config, still worth loading.
    toml::to_string(&value).unwrap_or_else(|_| document.to_owned())
}

/// Loads `text` as the file `path` with every role's loader and the deployment loader.
fn load_everything(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let shown = path.display().to_string();
    let names_the_file = |error: String| {
        assert!(error.contains(&shown), "{error}");
    };
    // A config that loads is one a node starts with: the durations it adds to clock
    // instants must stay in range (a checked config must not panic the node later).
    match SequencerConfig::load(path) {
        Ok(config) => {
            let _ = Instant::now() + config.timing.token_ttl();
            let _ = meridian_sequencer::node::claim_patience(config.timing.offline_after());
        }
        Err(error) => names_the_file(error.to_string()),
    }
    match TopologyManagerConfig::load(path) {
        Ok(config) => {
            if let Some(settings) = config.replica_settings() {
                let _ = Instant::now() + settings.lease_timeout;
            }
        }
        Err(error) => names_the_file(error.to_string()),
    }
    match ParticipantConfig::load(path) {
        Ok(config) => {
            if let Some(settings) = config.replica_settings() {
                let _ = Instant::now() + settings.lease_timeout;
            }
        }
        Err(error) => names_the_file(error.to_string()),
    }
    match MediatorConfig::load(path) {
        Ok(config) => {
            if let Some(settings) = config.replica_settings() {
                let _ = Instant::now() + settings.lease_timeout;
            }
        }
        Err(error) => names_the_file(error.to_string()),
    }
    match Description::load(path) {
        Ok(description) => {
            // The deployment's own consistency check must answer, not panic.
            let _ = meridian_lab::deployment::check::check(&description);
        }
        Err(error) => names_the_file(format!("{error:#}")),
    }
}

/// Every role's parse and check, and the deployment's, on `text` in memory (what `load` does
/// after reading the file), with the same run-time arithmetic as [`load_everything`].
fn parse_everything(text: &str) {
    use meridian_node::config::parse_toml;
    const FILE: &str = "/etc/meridian/node.toml";
    let names_the_file = |error: String| assert!(error.contains(FILE), "{error}");
    match parse_toml::<SequencerConfig>(text, FILE) {
        Ok(config) => match config.check(FILE) {
            Ok(()) => {
                let _ = Instant::now() + config.timing.token_ttl();
                let _ = meridian_sequencer::node::claim_patience(config.timing.offline_after());
            }
            Err(error) => names_the_file(error.to_string()),
        },
        Err(error) => names_the_file(error.to_string()),
    }
    match parse_toml::<ParticipantConfig>(text, FILE) {
        Ok(config) => match config.check(FILE) {
            Ok(()) => {
                if let Some(settings) = config.replica_settings() {
                    let _ = Instant::now() + settings.lease_timeout;
                }
            }
            Err(error) => names_the_file(error.to_string()),
        },
        Err(error) => names_the_file(error.to_string()),
    }
    match parse_toml::<MediatorConfig>(text, FILE) {
        Ok(config) => match config.check(FILE) {
            Ok(()) => {
                if let Some(settings) = config.replica_settings() {
                    let _ = Instant::now() + settings.lease_timeout;
                }
            }
            Err(error) => names_the_file(error.to_string()),
        },
        Err(error) => names_the_file(error.to_string()),
    }
    match parse_toml::<TopologyManagerConfig>(text, FILE) {
        Ok(config) => match config.check(FILE) {
            Ok(()) => {
                if let Some(settings) = config.replica_settings() {
                    let _ = Instant::now() + settings.lease_timeout;
                }
            }
            Err(error) => names_the_file(error.to_string()),
        },
        Err(error) => names_the_file(error.to_string()),
    }
    match parse_toml::<Description>(text, FILE) {
        Ok(description) => {
            let _ = meridian_lab::deployment::check::check(&description);
        }
        Err(error) => names_the_file(error.to_string()),
    }
}

/// The paths of `document` whose value is an integer.
fn integer_paths(document: &Value) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    paths(document, Vec::new(), &mut all);
    all.retain(|path| {
        let mut copy = document.clone();
        matches!(slot(&mut copy, path), Some(Value::Integer(_)))
    });
    all
}

proptest! {
    #![proptest_config(hostile_config())]

    #[test]
    fn hostile_config_text_is_refused_naming_the_file(
        text in prop_oneof![
            any::<String>(),
            "[a-z_ =\\[\\]\"'.{},0-9\n#-]{0,200}",
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        load_everything(&dir.path().join("node.toml"), &text);
    }

    /// Every numeric setting of one document in turn set to the same hostile number: the
    /// edges a checked config can still overflow at run time with.
    #[test]
    fn hostile_numbers_in_every_setting_are_refused_or_safe(
        document in any::<prop::sample::Index>(),
        number in prop_oneof![
            Just(i64::MAX), Just(i64::MIN), Just(-1i64), Just(0), Just(1),
            Just(i64::from(u32::MAX) + 1), Just(i64::MAX / 1_000), any::<i64>(),
        ],
    ) {
        let documents = valid_documents();
        let original: Value = toml::from_str(&documents[document.index(documents.len())]).unwrap();
        for path in integer_paths(&original) {
            let mut edited = original.clone();
            if let Some(slot) = slot(&mut edited, &path) {
                *slot = Value::Integer(number);
            }
            parse_everything(&toml::to_string(&edited).unwrap());
        }
    }

    #[test]
    fn hostile_config_documents_load_or_name_the_file(
        document in any::<prop::sample::Index>(),
        edits in vec(edit(), 1..5),
    ) {
        let documents = valid_documents();
        let text = apply(&documents[document.index(documents.len())], &edits);
        let dir = tempfile::tempdir().unwrap();
        load_everything(&dir.path().join("node.toml"), &text);
    }
}
