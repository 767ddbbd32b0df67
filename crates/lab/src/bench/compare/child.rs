//! Runs one side's bench as a child process for `bench compare`: its stdout captured (the
//! JSON report), its stderr passed through to ours as it comes (the bench's progress) with the
//! last few KiB kept for the error if it fails, and a timeout. The child leads its own process
//! group, so that stopping it also stops the nodes it started, even if it is killed before it
//! could stop them itself.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::{CompareError, Plan, Side};

/// Bound on the stdout read: a bench prints one JSON object of a few KiB.
const MAX_STDOUT_BYTES: u64 = 16 * 1024 * 1024;
/// How much of a failed bench's stderr the error repeats (it was passed through as well).
const STDERR_TAIL_BYTES: usize = 4 * 1024;
/// Lines of that tail shown.
const STDERR_TAIL_LINES: usize = 20;
/// After SIGTERM, how long a bench gets to stop its deployment before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// `--version` and `git rev-parse` answer at once; a binary that does not is reported as such.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which binary a side was: its path, what it says its version is, and the commit its
/// directory's git checkout is at now (when it lies in one — the build may be older).
#[derive(Debug, Clone, Serialize)]
pub struct BinaryInfo {
    pub path: PathBuf,
    pub version: Option<String>,
    pub checkout_head: Option<String>,
}

impl BinaryInfo {
    /// Asks the binary for `--version` and git for the commit of the checkout it is in;
    /// either may be missing (an old or foreign binary, a copy outside any checkout).
    pub async fn probe(path: &Path) -> Self {
        let version = first_line(Command::new(path).arg("--version")).await;
        let checkout_head = match path.parent() {
            Some(dir) => {
                first_line(Command::new("git").arg("-C").arg(dir).args([
                    "rev-parse",
                    "--short",
                    "HEAD",
                ]))
                .await
            }
            None => None,
        };
        Self {
            path: path.to_path_buf(),
            version,
            checkout_head,
        }
    }
}

impl std::fmt::Display for BinaryInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        let notes: Vec<String> = self
            .version
            .iter()
            .cloned()
            .chain(
                self.checkout_head
                    .iter()
                    .map(|head| format!("its checkout at {head}")),
            )
            .collect();
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        Ok(())
    }
}

/// The first line of what `command` prints on success, within [`PROBE_TIMEOUT`].
async fn first_line(command: &mut Command) -> Option<String> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROBE_TIMEOUT, output)
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.chars().take(200).collect())
}

/// Kills the child's process group if the child was not seen to exit: on a timeout, an
/// interrupt, or an error on the way out. A child that exited on its own stopped its nodes.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Why a run was stopped before it ended on its own.
enum Stop {
    Timeout,
    Interrupt,
}

/// Runs `<binary> bench <plan's args>` and returns its JSON report.
pub async fn run_bench(
    binary: &Path,
    plan: &Plan,
    round: u64,
    side: Side,
    shutdown: &CancellationToken,
) -> Result<serde_json::Value, CompareError> {
    let mut command = Command::new(binary);
    command
        .arg("bench")
        .args(&plan.child_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: the terminal's Ctrl-C reaches us only, and we stop the child (and
        // everything it started) ourselves, gracefully first.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| CompareError::Spawn {
        side,
        path: binary.display().to_string(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let mut guard = pid.map(|pgid| GroupGuard { pgid, armed: true });
    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(read_stdout(out)));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(pass_stderr(err)));

    let stopped = tokio::select! {
        status = child.wait() => Ok(status),
        () = tokio::time::sleep(plan.timeout) => Err(Stop::Timeout),
        () = shutdown.cancelled() => Err(Stop::Interrupt),
    };
    let status = match stopped {
        Ok(status) => status.map_err(|source| CompareError::Output { side, source })?,
        Err(stop) => {
            terminate(&mut child, pid).await;
            let stderr_tail = tail(stderr).await;
            return Err(match stop {
                Stop::Timeout => CompareError::TimedOut {
                    round,
                    side,
                    timeout_s: plan.timeout.as_secs(),
                    stderr_tail,
                },
                Stop::Interrupt => CompareError::Interrupted { round, side },
            });
        }
    };
    if let Some(guard) = guard.as_mut() {
        guard.armed = false;
    }
    let stdout = match stdout {
        Some(task) => task
            .await
            .map_err(|e| CompareError::Output {
                side,
                source: std::io::Error::other(e),
            })?
            .map_err(|source| CompareError::Output { side, source })?,
        None => Vec::new(),
    };
    let stderr_tail = tail(stderr).await;
    if !status.success() {
        return Err(CompareError::BenchFailed {
            round,
            side,
            status: status.to_string(),
            stderr_tail,
        });
    }
    last_json_object(&stdout).map_err(|detail| CompareError::NoReport {
        round,
        side,
        detail,
    })
}

/// SIGTERM (the bench's graceful shutdown stops its deployment), then SIGKILL of the whole
/// group if it has not exited within [`STOP_GRACE`].
async fn terminate(child: &mut Child, pid: Option<Pid>) {
    if let Some(pid) = pid {
        let _ = kill(pid, Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        if let Some(pid) = pid {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
    // Nodes still in the group after the bench itself exited are killed too.
    if let Some(pid) = pid {
        let _ = killpg(pid, Signal::SIGKILL);
    }
}

async fn read_stdout(out: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    out.take(MAX_STDOUT_BYTES).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

/// Copies the child's stderr to ours as it arrives, keeping its last [`STDERR_TAIL_BYTES`].
async fn pass_stderr(mut err: impl AsyncRead + Unpin) -> VecDeque<u8> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_BYTES);
    let mut ours = tokio::io::stderr();
    let mut buffer = [0u8; 8192];
    loop {
        let n = match err.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Our stderr gone is no reason to stop measuring.
        let _ = ours.write_all(&buffer[..n]).await;
        tail.extend(&buffer[..n]);
        let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..excess);
    }
    tail
}

/// The last [`STDERR_TAIL_LINES`] lines the stderr task kept (it ends when the child's
/// stderr closes: at its exit, or its group's).
async fn tail(task: Option<tokio::task::JoinHandle<VecDeque<u8>>>) -> String {
    let Some(task) = task else {
        return String::new();
    };
    let bytes = match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(bytes)) => bytes,
        _ => return "(stderr not available)".into(),
    };
    let bytes = Vec::from(bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    if tail.trim().is_empty() {
        "(nothing)".into()
    } else {
        tail
    }
}

/// The last line of `stdout` that is a JSON object: the bench's report (anything it printed
/// before is not).
fn last_json_object(stdout: &[u8]) -> Result<serde_json::Value, String> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('{'))
        .ok_or_else(|| format!("{} bytes, no line starting with `{{`", stdout.len()))?;
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err("its last `{` line is not an object".into()),
        Err(e) => Err(format!("its last `{{` line is not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_the_last_json_line() {
        let out = b"some note\n{\"a\":1}\n{\"tx_per_s\":2.5}\n\n";
        assert_eq!(
            last_json_object(out).unwrap()["tx_per_s"].as_f64(),
            Some(2.5)
        );
        assert!(last_json_object(b"no json here\n").is_err());
        assert!(last_json_object(b"{not json\n")
            .unwrap_err()
            .contains("not JSON"));
    }
}
