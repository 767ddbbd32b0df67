//! What a running replica costs the machine, read from `/proc`: its resident memory, its
//! threads, its TCP sockets (listening and connected) and its open SQLite database files. The
//! standby benchmark prints it for warm passive replicas beside their RTO, since a cold
//! standby costs none of it (no process) and pays in recovery time instead. Linux only; a
//! process that is gone or unreadable gives an error naming the pid and the file.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// One process's footprint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcessCost {
    /// `VmRSS` of `/proc/PID/status`.
    pub rss_mib: f64,
    pub threads: u32,
    /// TCP sockets in state LISTEN.
    pub tcp_listening: u32,
    /// TCP sockets in state ESTABLISHED: its connections (gRPC, admin, database).
    pub tcp_established: u32,
    /// Open descriptors of SQLite main database files (`*.db`): one per open connection.
    pub sqlite_connections: u32,
    /// Open descriptors of any SQLite file (`*.db`, `*.db-wal`, `*.db-shm`).
    pub sqlite_files: u32,
}

/// Reads the footprint of process `pid`.
pub fn measure(pid: u32) -> anyhow::Result<ProcessCost> {
    let proc_dir = format!("/proc/{pid}");
    let status_path = format!("{proc_dir}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("reading {status_path} (is process {pid} gone?)"))?;
    let (rss_kib, threads) = parse_status(&status)
        .with_context(|| format!("{status_path} has no VmRSS or Threads line"))?;
    let fd_dir = format!("{proc_dir}/fd");
    let mut socket_inodes = HashSet::new();
    let (mut sqlite_connections, mut sqlite_files) = (0, 0);
    for entry in std::fs::read_dir(&fd_dir).with_context(|| format!("listing {fd_dir}"))? {
        // A descriptor closed while we list is no error: it is not there any more.
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = socket_inode(&target) {
            socket_inodes.insert(inode);
        } else {
            match sqlite_kind(&target) {
                Some(SqliteFile::Main) => {
                    sqlite_connections += 1;
                    sqlite_files += 1;
                }
                Some(SqliteFile::Side) => sqlite_files += 1,
                None => {}
            }
        }
    }
    let (mut tcp_listening, mut tcp_established) = (0, 0);
    for table in ["tcp", "tcp6"] {
        let path = format!("{proc_dir}/net/{table}");
        // A kernel without IPv6 has no tcp6 table.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (inode, state) in tcp_sockets(&text) {
            if socket_inodes.contains(&inode) {
                match state {
                    TCP_ESTABLISHED => tcp_established += 1,
                    TCP_LISTEN => tcp_listening += 1,
                    _ => {}
                }
            }
        }
    }
    Ok(ProcessCost {
        rss_mib: rss_kib as f64 / 1024.0,
        threads,
        tcp_listening,
        tcp_established,
        sqlite_connections,
        sqlite_files,
    })
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0A;

/// `VmRSS` in KiB and `Threads` of a `/proc/PID/status` text.
fn parse_status(text: &str) -> Option<(u64, u32)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
    };
    let rss = field("VmRSS:")?.parse().ok()?;
    let threads = field("Threads:")?.parse().ok()?;
    Some((rss, threads))
}

/// The inode of a `socket:[INODE]` descriptor target.
fn socket_inode(target: &Path) -> Option<u64> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

enum SqliteFile {
    Main,
    Side,
}

fn sqlite_kind(target: &Path) -> Option<SqliteFile> {
    let name = target.file_name()?.to_str()?;
    if name.ends_with(".db") {
        Some(SqliteFile::Main)
    } else if name.ends_with(".db-wal") || name.ends_with(".db-shm") {
        Some(SqliteFile::Side)
    } else {
        None
    }
}

/// (inode, state) of each socket line of a `/proc/net/tcp` table.
fn tcp_sockets(text: &str) -> impl Iterator<Item = (u64, u8)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
        let inode = fields.get(9)?.parse().ok()?;
        Some((inode, state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_and_tcp_tables_parse() {
        let status = "Name:\tmeridian\nVmRSS:\t   23456 kB\nThreads:\t9\n";
        assert_eq!(parse_status(status), Some((23_456, 9)));
        assert_eq!(parse_status("Name: x\n"), None);
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n   \
            1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0 20 4 30 10 -1\n";
        assert_eq!(
            tcp_sockets(table).collect::<Vec<_>>(),
            vec![(4242, 0x0A), (4343, 0x01)]
        );
        assert_eq!(socket_inode(Path::new("socket:[4343]")), Some(4343));
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn this_process_is_measured_with_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let _client = std::net::TcpStream::connect(listener.local_addr().expect("an address"))
            .expect("connects");
        let cost = measure(std::process::id()).expect("measures itself");
        assert!(cost.rss_mib > 0.0, "{cost:?}");
        assert!(cost.threads >= 1, "{cost:?}");
        assert!(cost.tcp_listening >= 1, "{cost:?}");
        assert!(cost.tcp_established >= 1, "{cost:?}");
        let error = measure(u32::MAX).expect_err("no such process").to_string();
        assert!(error.contains(&u32::MAX.to_string()), "{error}");
    }
}
