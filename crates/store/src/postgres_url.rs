//! PostgreSQL connection URLs as operators write them for a replicated database: libpq's
//! multi-host form `postgres://user@host1:port1,host2:port2/database?target_session_attrs=read-write`
//! as well as the plain single-host URL. sqlx connects to one host only, so this module splits
//! the host list into one set of connect options per host (everything else in the URL — user,
//! password, database, TLS and session options — is the same for every host and is parsed by
//! sqlx), and keeps the two parameters that are about choosing among the hosts:
//! `target_session_attrs` (which server to settle on) and `connect_timeout` (how long each host
//! is given to answer). Choosing the server is [`crate::follow`]'s job.
//!
//! Every error names the part of the URL that is wrong and never repeats the user information,
//! which may hold a password.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

/// libpq's default port, for hosts listed without one.
const DEFAULT_PORT: u16 = 5432;

/// How long one host is given to accept a connection and answer the writer check, unless the
/// URL says otherwise (`connect_timeout`, in seconds as in libpq): the bound a call has always
/// waited for a connection, so a single-host URL behaves as before.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest `connect_timeout` accepted: a bound, because every search for the writer waits
/// up to this long per host that does not answer.
const MAX_CONNECT_TIMEOUT_S: u64 = 60;

/// One server of the list, as `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostAddr {
    /// As written in the URL (an IPv6 address keeps its brackets).
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which server of the list a store settles on (libpq's `target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// The first server that accepts writes: not a standby and not read-only. The default,
    /// because every store writes.
    ReadWrite,
    /// The first server that answers, whatever it is (libpq's default): for an operator who
    /// has one address that always leads to the primary, e.g. a load balancer.
    Any,
}

/// What is wrong with a PostgreSQL URL; the bad part is named, the user information never.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the PostgreSQL URL must start with postgres:// or postgresql://")]
    Scheme,
    #[error(
        "the PostgreSQL URL names no host; write postgres://user@host:port/database, several \
         hosts as host1:port1,host2:port2"
    )]
    NoHost,
    #[error("entry {position} of the PostgreSQL URL's host list is empty (a stray comma?)")]
    EmptyHost { position: usize },
    #[error(
        "the port of host {host} in the PostgreSQL URL is {port:?}, not a number from 1 to 65535"
    )]
    BadPort { host: String, port: String },
    #[error("the IPv6 address {host:?} in the PostgreSQL URL lacks its closing ']'")]
    BadIpv6 { host: String },
    #[error(
        "target_session_attrs={0} in the PostgreSQL URL is not supported: a node writes to its \
         database, so only read-write (the default) and any are"
    )]
    UnsupportedTargetSessionAttrs(String),
    #[error(
        "connect_timeout={0:?} in the PostgreSQL URL is not a whole number of seconds from 1 to \
         {MAX_CONNECT_TIMEOUT_S}"
    )]
    BadConnectTimeout(String),
    #[error(
        "the PostgreSQL URL's {0} parameter lists several values; list several hosts in the \
         host part instead: postgres://user@host1:port1,host2:port2/database"
    )]
    ListInParameter(&'static str),
    #[error("the PostgreSQL URL is invalid for host {host}: {reason}")]
    Invalid { host: String, reason: String },
}

/// A parsed PostgreSQL URL: one set of connect options per host, in the order listed.
#[derive(Debug, Clone)]
pub struct PostgresUrl {
    hosts: Vec<(HostAddr, PgConnectOptions)>,
    target: TargetSessionAttrs,
    connect_timeout: Duration,
    /// The URL without the user information, for messages.
    display: String,
}

impl PostgresUrl {
    /// Parses `url`; see the module documentation for the accepted forms.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "postgres" | "postgresql"))
            .ok_or(UrlError::Scheme)?;
        // The authority ends at the path or the query, whichever comes first.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, host_list) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        let Parameters {
            kept,
            target,
            connect_timeout,
            host_parameter,
        } = parameters(query.unwrap_or(""))?;
        let hosts = if host_list.is_empty() && host_parameter {
            // `postgres:///db?host=...` (a Unix socket directory, say): sqlx parses it whole.
            vec![None]
        } else {
            split_hosts(host_list)?.into_iter().map(Some).collect()
        };
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let mut parsed = Vec::with_capacity(hosts.len());
        for host in hosts {
            let single = match &host {
                Some(host) => format!("{scheme}://{userinfo}{host}{path}{query}"),
                None => format!("{scheme}://{userinfo}{path}{query}"),
            };
            let options =
                PgConnectOptions::from_str(&single).map_err(|error| UrlError::Invalid {
                    host: host.as_ref().map_or_else(
                        || "given by the host parameter".to_owned(),
                        |h| h.to_string(),
                    ),
                    reason: describe_sqlx(&error),
                })?;
            let addr = host.unwrap_or_else(|| HostAddr {
                host: options.get_host().to_owned(),
                port: options.get_port(),
            });
            parsed.push((addr, options));
        }
        let display = describe(scheme, &parsed, path);
        Ok(Self {
            hosts: parsed,
            target,
            connect_timeout,
            display,
        })
    }

    /// Each host with its connect options, in the order listed.
    pub fn hosts(&self) -> &[(HostAddr, PgConnectOptions)] {
        &self.hosts
    }

    pub fn target(&self) -> TargetSessionAttrs {
        self.target
    }

    /// How long each host is given to connect and answer the writer check.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The same URL with `change` applied to every host's options (session settings a store
    /// adds, e.g. a statement timeout).
    pub fn map_options(&self, change: impl Fn(PgConnectOptions) -> PgConnectOptions) -> Self {
        Self {
            hosts: self
                .hosts
                .iter()
                .map(|(addr, options)| (addr.clone(), change(options.clone())))
                .collect(),
            ..self.clone()
        }
    }
}

/// The URL as an operator recognises it, without the password: `postgres://user@h1:p1,h2:p2/db`.
impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

fn describe(scheme: &str, hosts: &[(HostAddr, PgConnectOptions)], path: &str) -> String {
    let user = hosts
        .first()
        .map(|(_, options)| options.get_username().to_owned())
        .unwrap_or_default();
    let list: Vec<String> = hosts.iter().map(|(addr, _)| addr.to_string()).collect();
    let database = hosts
        .first()
        .and_then(|(_, options)| options.get_database())
        .map_or_else(|| path.to_owned(), |db| format!("/{db}"));
    format!("{scheme}://{user}@{}{database}", list.join(","))
}

/// sqlx's configuration errors carry the URL crate's message; nothing of the URL itself.
fn describe_sqlx(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Configuration(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// The query parameters: those passed on to sqlx (verbatim), and the ones this module owns.
struct Parameters<'a> {
    kept: Vec<&'a str>,
    target: TargetSessionAttrs,
    connect_timeout: Duration,
    /// Whether `host` or `hostaddr` is given as a parameter.
    host_parameter: bool,
}

fn parameters(query: &str) -> Result<Parameters<'_>, UrlError> {
    let mut parameters = Parameters {
        kept: Vec::new(),
        target: TargetSessionAttrs::ReadWrite,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        host_parameter: false,
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "target_session_attrs" => {
                parameters.target = match value {
                    "read-write" => TargetSessionAttrs::ReadWrite,
                    "any" => TargetSessionAttrs::Any,
                    other => return Err(UrlError::UnsupportedTargetSessionAttrs(other.to_owned())),
                };
            }
            "connect_timeout" => {
                let seconds = value
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=MAX_CONNECT_TIMEOUT_S).contains(s))
                    .ok_or_else(|| UrlError::BadConnectTimeout(value.to_owned()))?;
                parameters.connect_timeout = Duration::from_secs(seconds);
            }
            "host" | "hostaddr" | "port" => {
                // libpq's other spelling of a host list; one place for hosts is enough.
                if value.contains(',') || value.contains("%2C") || value.contains("%2c") {
                    return Err(UrlError::ListInParameter(match key {
                        "host" => "host",
                        "hostaddr" => "hostaddr",
                        _ => "port",
                    }));
                }
                parameters.host_parameter |= key != "port";
                parameters.kept.push(pair);
            }
            _ => parameters.kept.push(pair),
        }
    }
    Ok(parameters)
}

/// Splits `h1:p1,h2,[::1]:p3` into addresses; a host without a port gets 5432.
fn split_hosts(list: &str) -> Result<Vec<HostAddr>, UrlError> {
    if list.is_empty() {
        return Err(UrlError::NoHost);
    }
    list.split(',')
        .enumerate()
        .map(|(index, entry)| host_addr(index + 1, entry))
        .collect()
}

fn host_addr(position: usize, entry: &str) -> Result<HostAddr, UrlError> {
    let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
        let (address, after) = v6.split_once(']').ok_or_else(|| UrlError::BadIpv6 {
            host: entry.to_owned(),
        })?;
        let port = match after {
            "" => None,
            other => Some(other.strip_prefix(':').ok_or_else(|| UrlError::BadPort {
                host: format!("[{address}]"),
                port: other.to_owned(),
            })?),
        };
        (format!("[{address}]"), port)
    } else {
        match entry.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (entry.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(UrlError::EmptyHost { position });
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| UrlError::BadPort {
                host: host.clone(),
                port: text.to_owned(),
            })?,
    };
    Ok(HostAddr { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(url: &PostgresUrl) -> Vec<String> {
        url.hosts()
            .iter()
            .map(|(addr, options)| {
                // The options carry the same host and port as the address.
                let connects_to = format!("{}:{}", options.get_host(), options.get_port());
                assert_eq!(connects_to, addr.to_string());
                connects_to
            })
            .collect()
    }

    #[test]
    fn a_single_host_url_parses_as_before() {
        let url = PostgresUrl::parse("postgres://meridian:secret@127.0.0.1:5433/sequencer")
            .expect("valid");
        assert_eq!(addrs(&url), ["127.0.0.1:5433"]);
        let (_, options) = &url.hosts()[0];
        assert_eq!(options.get_username(), "meridian");
        assert_eq!(options.get_database(), Some("sequencer"));
        assert_eq!(url.target(), TargetSessionAttrs::ReadWrite);
        assert_eq!(url.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(
            url.to_string(),
            "postgres://meridian@127.0.0.1:5433/sequencer"
        );
    }

    #[test]
    fn several_hosts_keep_their_order_and_share_the_rest() {
        let url = PostgresUrl::parse(
            "postgresql://meridian:pw@db1:5433,db2,[::1]:5435/participant1\
             ?target_session_attrs=read-write&connect_timeout=2&application_name=p1",
        )
        .expect("valid");
        assert_eq!(addrs(&url), ["db1:5433", "db2:5432", "[::1]:5435"]);
        for (_, options) in url.hosts() {
            assert_eq!(options.get_database(), Some("participant1"));
            assert_eq!(options.get_application_name(), Some("p1"));
        }
        assert_eq!(url.connect_timeout(), Duration::from_secs(2));
        assert_eq!(
            url.to_string(),
            "postgresql://meridian@db1:5433,db2:5432,[::1]:5435/participant1",
            "no password in what is shown"
        );
        let any =
            PostgresUrl::parse("postgres://u@a:1,b:2/d?target_session_attrs=any").expect("valid");
        assert_eq!(any.target(), TargetSessionAttrs::Any);
    }

    #[test]
    fn bad_urls_name_the_bad_part_and_never_the_password() {
        let cases = [
            ("mysql://u@h/db", "postgres://"),
            ("postgres://u:pw@/db", "names no host"),
            ("postgres://u:pw@,/db", "entry 1"),
            ("postgres://u:pw@h1:5432,/db", "entry 2"),
            ("postgres://u:pw@h1:5432,,h3/db", "entry 2"),
            (
                "postgres://u:pw@h1:abc/db",
                "port of host h1 in the PostgreSQL URL is \"abc\"",
            ),
            ("postgres://u:pw@h1:5432,h2:99999/db", "port of host h2"),
            ("postgres://u:pw@h1:0/db", "port of host h1"),
            ("postgres://u:pw@h1:/db", "port of host h1"),
            ("postgres://u:pw@[::1/db", "closing ']'"),
            (
                "postgres://u:pw@h1,h2/db?target_session_attrs=read-only",
                "target_session_attrs=read-only",
            ),
            (
                "postgres://u:pw@h1/db?target_session_attrs=standby",
                "only read-write (the default) and any",
            ),
            (
                "postgres://u:pw@h1/db?connect_timeout=0",
                "connect_timeout=\"0\"",
            ),
            (
                "postgres://u:pw@h1/db?connect_timeout=soon",
                "connect_timeout",
            ),
            (
                "postgres://u:pw@h1/db?host=a,b",
                "host parameter lists several",
            ),
            ("postgres://u:pw@h1/db?sslmode=sometimes", "host h1:5432"),
        ];
        for (url, needle) in cases {
            let error = PostgresUrl::parse(url).expect_err(url).to_string();
            assert!(error.contains(needle), "{url}: {error}");
            assert!(!error.contains("pw"), "{url}: the password leaked: {error}");
        }
    }

    #[test]
    fn a_host_given_as_a_parameter_is_left_to_sqlx() {
        let url = PostgresUrl::parse("postgres:///db?host=/var/run/postgresql&user=meridian")
            .expect("valid");
        assert_eq!(url.hosts().len(), 1);
        assert_eq!(url.hosts()[0].1.get_username(), "meridian");
    }

    #[test]
    fn session_settings_apply_to_every_host() {
        let url = PostgresUrl::parse("postgres://u@a:1,b:2/d").expect("valid");
        let changed = url.map_options(|options| options.application_name("lease"));
        for (_, options) in changed.hosts() {
            assert_eq!(options.get_application_name(), Some("lease"));
        }
        assert_eq!(changed.hosts()[1].0.to_string(), "b:2");
    }
}
