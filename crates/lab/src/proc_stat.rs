//! A process's line of `/proc/PID/stat`, read once and split after the command name: the name
//! is in parentheses and may itself hold spaces and parentheses, so every field after it is
//! counted from its *last* closing parenthesis. The controller reads the state field, the
//! benches the CPU time.

/// The fields of a `/proc/PID/stat` line after the command name (the 3rd field, the state,
/// first).
#[derive(Debug)]
pub struct ProcStat {
    after_name: String,
}

impl ProcStat {
    /// `None` once the process is gone, or where `/proc` is missing.
    pub fn read(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    fn parse(line: &str) -> Option<Self> {
        let (_, after_name) = line.rsplit_once(')')?;
        Some(Self {
            after_name: after_name.to_owned(),
        })
    }

    /// The state: `R`, `S`, `D`, `T`, `t`, `Z`, `X`, ...
    pub fn state(&self) -> Option<&str> {
        self.after_name.split_whitespace().next()
    }

    /// CPU time used so far, user and system (`utime + stime`, the 14th and 15th fields), in
    /// jiffies.
    pub fn cpu_jiffies(&self) -> Option<u64> {
        // The state is the 3rd field: utime and stime are the 12th and 13th from it.
        let mut fields = self.after_name.split_whitespace().skip(11);
        let user: u64 = fields.next()?.parse().ok()?;
        let system: u64 = fields.next()?.parse().ok()?;
        Some(user + system)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_count_after_the_last_parenthesis_of_the_name() {
        let line = "4242 (meridian (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 \
                    731 129 0 0 20 0 7 0 1000 200000000 15000 18446744073709551615";
        let stat = ProcStat::parse(line).expect("a stat line");
        assert_eq!(stat.state(), Some("S"));
        assert_eq!(stat.cpu_jiffies(), Some(860));
        let short = ProcStat::parse("4242 (meridian) Z 1").expect("a stat line");
        assert_eq!(short.state(), Some("Z"));
        assert_eq!(short.cpu_jiffies(), None);
        assert!(ProcStat::parse("no parenthesis").is_none());
        let own = ProcStat::read(std::process::id()).expect("this process's own line");
        assert!(own.cpu_jiffies().is_some());
    }
}
