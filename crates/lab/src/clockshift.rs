//! Shifting a node's wall clock from outside, for clock-skew tests and the drill's nemesis.
//! A node launched with the `clockshift` shim (`tools/clockshift/clockshift.c`, preloaded with
//! `LD_PRELOAD`) reads its wall clock through it: `clock_gettime(CLOCK_REALTIME)`,
//! `gettimeofday` and `time` return the true time plus an offset read from a file, which the
//! shim re-reads every 100 ms — so the offset can change while the node runs, which is what a
//! nemesis needs. The kernel's clock, the database server's and the monotonic clocks stay
//! true, as they do when a host's clock is wrong.
//!
//! The shim is compiled at run time with the system's C compiler (`cc`), as the lab runs
//! where the tests and drills are built.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::launch::NodeProcess;

/// The shim's source, compiled by [`build_shim`].
pub const SHIM_SOURCE: &str = include_str!("../../../tools/clockshift/clockshift.c");
/// The environment variable naming the file that holds the offset in milliseconds.
pub const OFFSET_FILE_ENV: &str = "MERIDIAN_CLOCKSHIFT_FILE";
const LIBRARY_NAME: &str = "libclockshift.so";

/// Compiles the shim into `dir` and returns the library's absolute path. Compiled under a
/// name of its own and renamed into place, so concurrent builds (parallel tests) and running
/// processes that have the previous library mapped never see a half-written file.
pub fn build_shim(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let source = dir.join(format!("clockshift-{}.c", std::process::id()));
    let building = dir.join(format!("{LIBRARY_NAME}.{}", std::process::id()));
    std::fs::write(&source, SHIM_SOURCE)
        .with_context(|| format!("writing {}", source.display()))?;
    let output = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&building)
        .arg(&source)
        .arg("-ldl")
        .output()
        .context("running cc to build the clock shift shim")?;
    let _ = std::fs::remove_file(&source);
    if !output.status.success() {
        bail!(
            "cc could not build the clock shift shim ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let library = dir.join(LIBRARY_NAME);
    std::fs::rename(&building, &library)
        .with_context(|| format!("moving the shim to {}", library.display()))?;
    Ok(library)
}

/// One node's clock shift: the shim and the node's own offset file.
#[derive(Debug, Clone)]
pub struct ClockShift {
    library: PathBuf,
    offset_file: PathBuf,
}

impl ClockShift {
    /// Builds the shim into `dir` and creates the offset file `dir/<name>.clockshift` at 0.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let library = build_shim(dir)?;
        let shift = Self {
            offset_file: library.with_file_name(format!("{name}.clockshift")),
            library,
        };
        shift.set_offset_ms(0)?;
        Ok(shift)
    }

    /// Makes `process` read its wall clock through this shift from its next (re)start on.
    pub fn apply(&self, process: &mut NodeProcess) {
        process.set_env("LD_PRELOAD", &self.library);
        process.set_env(OFFSET_FILE_ENV, &self.offset_file);
    }

    /// Sets the offset: the node's wall clock runs `offset_ms` ahead (behind, if negative)
    /// within about 100 ms. Written to a temporary file and renamed, so the shim never reads
    /// half a number.
    pub fn set_offset_ms(&self, offset_ms: i64) -> anyhow::Result<()> {
        let mut temporary = self.offset_file.clone().into_os_string();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        std::fs::write(&temporary, format!("{offset_ms}\n"))
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &self.offset_file)
            .with_context(|| format!("writing {}", self.offset_file.display()))
    }

    pub fn offset_ms(&self) -> anyhow::Result<i64> {
        let text = std::fs::read_to_string(&self.offset_file)
            .with_context(|| format!("reading {}", self.offset_file.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds no offset", self.offset_file.display()))
    }

    pub fn library(&self) -> &Path {
        &self.library
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim really shifts a child's wall clock, and follows the file while it runs.
    #[test]
    fn a_shifted_child_reads_the_offset_clock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let shift = ClockShift::new(dir.path(), "node").expect("shim builds");
        shift.set_offset_ms(-3_600_000).expect("offset set");
        assert_eq!(shift.offset_ms().expect("offset read"), -3_600_000);
        let output = Command::new("date")
            .arg("+%s")
            .env("LD_PRELOAD", shift.library())
            .env(OFFSET_FILE_ENV, &shift.offset_file)
            .output()
            .expect("date runs");
        let shifted: i64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("date prints seconds");
        let true_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let behind = i64::try_from(true_now).expect("fits") - shifted;
        assert!((3_590..=3_610).contains(&behind), "shifted by {behind} s");
    }
}
