//! Process-wide logging setup: every node logs through `tracing` to stderr, as human-readable
//! text for a terminal or as one JSON object per line for log shippers, filtered by `RUST_LOG`
//! (default `info`). Installing is idempotent because tests and embedded nodes may share a
//! process with a subscriber already in place.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, event fields at the top level.
    Json,
}

impl LogFormat {
    /// Every format, in the order help text should list them.
    pub const ALL: [LogFormat; 2] = [LogFormat::Text, LogFormat::Json];

    /// The name accepted by [`FromStr`] and printed by [`Display`](fmt::Display).
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log format name that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format `{0}`, expected `text` or `json`")]
pub struct ParseLogFormatError(pub String);

impl FromStr for LogFormat {
    type Err = ParseLogFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogFormat::ALL
            .into_iter()
            .find(|format| format.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseLogFormatError(s.to_owned()))
    }
}

/// Installs the global `tracing` subscriber writing to stderr in `format`, filtered by
/// `RUST_LOG` (default `info`). If a subscriber is already installed this does nothing, so it is
/// safe to call more than once.
pub fn init_tracing(format: LogFormat) {
    // An invalid RUST_LOG falls back to `info` rather than refusing to start, but says so once
    // the subscriber exists: silently ignoring a typo would hide the logs being asked for.
    let (filter, bad_filter) = match EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
    {
        Ok(filter) => (filter, None),
        Err(err) => (EnvFilter::new("info"), Some(err)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if installed.is_ok() {
        if let Some(err) = bad_filter {
            tracing::warn!(error = %err, "RUST_LOG is invalid; logging at info");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_round_trip() {
        for format in LogFormat::ALL {
            assert_eq!(format.to_string().parse::<LogFormat>(), Ok(format));
        }
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
    }

    #[test]
    fn rejects_unknown_format_with_choices() {
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown log format `yaml`, expected `text` or `json`"
        );
    }
}
