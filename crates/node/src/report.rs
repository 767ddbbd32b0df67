//! An error and its causes as one line, each said once: the exit message of every node and
//! lab command. Many errors already include their cause in their own message (`cannot read
//! key file x: Is a directory (os error 21)`) and also expose it as their source; printing
//! the chain blindly would say it twice. A cause whose text the line already holds is left
//! out.

/// `error` and its chain of causes, joined by ": ", without repeating a cause.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A directory where a file is expected: the operator's typo the message must name.
        let read = crate::config::load_toml::<toml::Table>(dir.path())
            .context("loading the participant config");
        let line = one_line(&read.unwrap_err());
        assert!(
            line.starts_with("loading the participant config: cannot read config file"),
            "{line}"
        );
        let cause = std::io::Error::from_raw_os_error(21).to_string();
        assert_eq!(line.matches(&cause).count(), 1, "{line}");
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let error = anyhow::anyhow!("the disk is full").context("writing the checkpoint");
        assert_eq!(one_line(&error), "writing the checkpoint: the disk is full");
    }
}
