// SPDX-License-Identifier: GPL-3.0-or-later
//! Seed 002's maps: an action per connecting client (IP / CIDR, hostname, HELO name), per
//! envelope sender and per envelope recipient, read from plain text files (format in
//! docs/MTA.md). This module owns parsing and lookup order only; `crate::session::stages`
//! decides what an action does to the SMTP session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use mailstamp_core::Verdict;

use crate::config::{MapsConfig, VerdictAction};
use crate::util::{Net, bare_address};

/// A verify policy attached to a sender or recipient: a threshold and actions per verdict
/// that override the global `[milter.actions]` table for messages to (or from) that address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyPolicy {
    /// Weighted share at or above which a partial match is `suspect` rather than `spam`.
    pub threshold: Option<f64>,
    /// Actions for particular verdicts.
    pub actions: Vec<(Verdict, VerdictAction)>,
}

impl VerifyPolicy {
    /// The action this policy sets for `v`, if any.
    pub fn action(&self, v: Verdict) -> Option<VerdictAction> {
        self.actions.iter().find(|(w, _)| *w == v).map(|(_, a)| *a)
    }
}

/// What the connection map says about a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnAction {
    /// Take mail from this client; its senders are not looked up in the sender map.
    Accept,
    /// Refuse the connection without taking any mail (5xx), with an optional text.
    Reject(Option<String>),
    /// Refuse for now (4xx), with an optional text.
    Tempfail(Option<String>),
    /// No decision here: stop looking up less specific keys and go on with the next check.
    Continue,
}

/// What the sender or recipient map says about an address.
#[derive(Debug, Clone, PartialEq)]
pub enum AddrAction {
    /// Take it (stops the lookup; verification still runs).
    Accept,
    /// Refuse it (5xx), with an optional text.
    Reject(Option<String>),
    /// Refuse it for now (4xx), with an optional text.
    Tempfail(Option<String>),
    /// Accept the whole message and drop it (as Postfix access(5) DISCARD).
    Discard,
    /// No decision (stops the lookup of less specific keys).
    Continue,
    /// Verify messages for this address with this policy.
    Verify(VerifyPolicy),
}

/// A map file that could not be read or has a malformed line.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file could not be read.
    #[error("cannot read map {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line that does not parse.
    #[error("{path}:{line}: {msg}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
}

impl From<MapError> for crate::error::Error {
    fn from(e: MapError) -> Self {
        Self::msg(e)
    }
}

/// Parent-domain keys of `domain`, most specific first: `a.b.example` gives `.b.example`,
/// `.example` (a domain's own name is looked up separately, as in Postfix).
fn parent_domains(domain: &str) -> impl Iterator<Item = &str> {
    domain
        .char_indices()
        .filter(|&(i, c)| c == '.' && i > 0)
        .map(move |(i, _)| &domain[i..])
}

/// The connection map: client IP / CIDR, client hostname, HELO name.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMap {
    nets: Vec<(Net, ConnAction)>,
    hosts: HashMap<String, ConnAction>,
    helos: HashMap<String, ConnAction>,
}

impl ConnectionMap {
    /// Parses map text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, MapError> {
        let mut m = Self::default();
        for (line, key, action, rest) in lines(text) {
            let err = |msg: String| MapError::Line {
                path: path.to_owned(),
                line,
                msg,
            };
            let a = match action {
                "accept" => ConnAction::Accept,
                "continue" => ConnAction::Continue,
                "reject" => ConnAction::Reject(rest),
                "tempfail" => ConnAction::Tempfail(rest),
                other => {
                    return Err(err(format!(
                        "`{other}` is not a connection action: accept | reject | tempfail | continue"
                    )));
                }
            };
            if let Some(h) = key.strip_prefix("helo:") {
                if h.is_empty() {
                    return Err(err("`helo:` needs a name".into()));
                }
                m.helos.insert(h.to_ascii_lowercase(), a);
            } else if key.contains(':')
                || key.starts_with('[')
                || key
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '/')
            {
                let net: Net = key.parse().map_err(err)?;
                m.nets.push((net, a));
            } else {
                m.hosts.insert(key.to_ascii_lowercase(), a);
            }
        }
        // Longest prefix first, so the first network that contains an address is the most
        // specific one (an exact address is a /32 or /128).
        m.nets.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix()));
        Ok(m)
    }

    /// At CONNECT: the client IP (most specific network), then the client hostname (exact, then
    /// parent domains). `unknown` or `[…]` names (no reverse DNS) are not looked up.
    pub fn at_connect(&self, ip: Option<IpAddr>, hostname: &str) -> Option<&ConnAction> {
        if let Some(ip) = ip
            && let Some((_, a)) = self.nets.iter().find(|(n, _)| n.contains(ip))
        {
            return Some(a);
        }
        let h = hostname.trim_end_matches('.').to_ascii_lowercase();
        if h.is_empty() || h == "unknown" || h.starts_with('[') {
            return None;
        }
        lookup_domain(&self.hosts, &h)
    }

    /// At HELO: the HELO name (exact, then parent domains).
    pub fn at_helo(&self, helo: &str) -> Option<&ConnAction> {
        let h = helo.trim_end_matches('.').to_ascii_lowercase();
        if h.is_empty() {
            return None;
        }
        lookup_domain(&self.helos, &h)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.nets.len() + self.hosts.len() + self.helos.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lookup_domain<'m, A>(map: &'m HashMap<String, A>, name: &str) -> Option<&'m A> {
    map.get(name)
        .or_else(|| parent_domains(name).find_map(|p| map.get(p)))
}

/// A sender or recipient map, keyed by address, domain and `user+tag` forms.
#[derive(Debug, Clone, Default)]
pub struct AddrMap {
    entries: HashMap<String, AddrAction>,
}

/// The keys tried for `address`, in Postfix access(5) order: `user+tag@domain`,
/// `user@domain`, `domain`, parent domains (`.domain`, …), `user+tag@`, `user@`. The null
/// sender is looked up as `<>`.
pub fn lookup_keys(address: &str, delimiter: Option<char>) -> Vec<String> {
    let a = bare_address(address).to_ascii_lowercase();
    if a.is_empty() {
        return vec!["<>".to_owned()];
    }
    let Some((local, domain)) = a.rsplit_once('@') else {
        return vec![a];
    };
    let base = delimiter
        .and_then(|d| local.split_once(d))
        .map(|(u, _)| u)
        .filter(|u| !u.is_empty() && *u != local);
    let mut keys = vec![a.clone()];
    if let Some(u) = base {
        keys.push(format!("{u}@{domain}"));
    }
    if !domain.is_empty() {
        keys.push(domain.to_owned());
        keys.extend(parent_domains(domain).map(str::to_owned));
    }
    keys.push(format!("{local}@"));
    if let Some(u) = base {
        keys.push(format!("{u}@"));
    }
    keys
}

impl AddrMap {
    /// Parses map text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, MapError> {
        let mut m = Self::default();
        for (line, key, action, rest) in lines(text) {
            let err = |msg: String| MapError::Line {
                path: path.to_owned(),
                line,
                msg,
            };
            let a = match action {
                "accept" => AddrAction::Accept,
                "continue" => AddrAction::Continue,
                "discard" => AddrAction::Discard,
                "reject" => AddrAction::Reject(rest),
                "tempfail" => AddrAction::Tempfail(rest),
                "verify" => AddrAction::Verify(parse_policy(rest.as_deref()).map_err(err)?),
                other => {
                    return Err(err(format!(
                        "`{other}` is not an address action: accept | reject | tempfail | discard | continue | verify …"
                    )));
                }
            };
            m.entries.insert(key.to_ascii_lowercase(), a);
        }
        Ok(m)
    }

    /// The action for `address`: the first key of [`lookup_keys`] present in the map.
    pub fn lookup(&self, address: &str, delimiter: Option<char>) -> Option<&AddrAction> {
        lookup_keys(address, delimiter)
            .iter()
            .find_map(|k| self.entries.get(k))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn verdict_named(s: &str) -> Option<Verdict> {
    [
        Verdict::Wanted,
        Verdict::Suspect,
        Verdict::Spam,
        Verdict::Unstamped,
        Verdict::Invalid,
        Verdict::Temperror,
        Verdict::Inapplicable,
    ]
    .into_iter()
    .find(|v| v.as_str() == s)
}

/// `threshold=0.9 spam=reject suspect=quarantine …`
fn parse_policy(args: Option<&str>) -> Result<VerifyPolicy, String> {
    let mut p = VerifyPolicy::default();
    for kv in args.unwrap_or("").split_whitespace() {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            format!("`{kv}`: verify takes key=value pairs (threshold=0.9 spam=reject …)")
        })?;
        if k == "threshold" {
            let t: f64 = v
                .parse()
                .ok()
                .filter(|t| (0.0..=1.0).contains(t))
                .ok_or_else(|| format!("threshold `{v}` must be a share between 0 and 1"))?;
            p.threshold = Some(t);
        } else if let Some(verdict) = verdict_named(k) {
            if verdict == Verdict::Temperror {
                return Err("temperror is handled by milter.on_temperror, not per address".into());
            }
            p.actions.push((verdict, v.parse()?));
        } else {
            return Err(format!(
                "unknown verify key `{k}`: threshold, wanted, suspect, spam, unstamped, invalid, inapplicable"
            ));
        }
    }
    Ok(p)
}

/// Significant lines: (line number, key, action, rest of the line). `#` starts a comment at
/// the beginning of a line or after whitespace.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str, &str, Option<String>)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = match l.find(" #").or_else(|| l.find("\t#")) {
            Some(c) => &l[..c],
            None => l,
        };
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let mut it = l.splitn(2, char::is_whitespace);
        let key = it.next().unwrap_or("");
        let rest = it.next().unwrap_or("").trim_start();
        let mut it = rest.splitn(2, char::is_whitespace);
        let action = it.next().unwrap_or("");
        let args = it
            .next()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        Some((i + 1, key, action, args))
    })
}

/// The three maps, loaded.
#[derive(Debug, Clone, Default)]
pub struct Maps {
    /// At CONNECT and HELO.
    pub connection: ConnectionMap,
    /// At MAIL FROM.
    pub sender: AddrMap,
    /// At RCPT TO.
    pub recipient: AddrMap,
    /// The `user+tag` delimiter.
    pub delimiter: Option<char>,
}

impl Maps {
    /// Reads the files `cfg` names; relative paths are taken from `base` (the config file's
    /// directory). An absent key is an empty map; a missing file or malformed line an error.
    pub fn load(cfg: &MapsConfig, base: &Path) -> Result<Self, MapError> {
        fn read(p: &Option<PathBuf>, base: &Path) -> Result<Option<(String, PathBuf)>, MapError> {
            let Some(p) = p else { return Ok(None) };
            let path = base.join(p);
            std::fs::read_to_string(&path)
                .map(|t| Some((t, path.clone())))
                .map_err(|source| MapError::Io { path, source })
        }
        let mut m = Self {
            delimiter: cfg.delimiter.chars().next(),
            ..Self::default()
        };
        if let Some((t, p)) = read(&cfg.connection, base)? {
            m.connection = ConnectionMap::parse(&t, &p)?;
        }
        if let Some((t, p)) = read(&cfg.sender, base)? {
            m.sender = AddrMap::parse(&t, &p)?;
        }
        if let Some((t, p)) = read(&cfg.recipient, base)? {
            m.recipient = AddrMap::parse(&t, &p)?;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("test.map")
    }

    #[test]
    fn lookup_keys_follow_postfix_access_order() {
        assert_eq!(
            lookup_keys("<User+Tag@Mail.B.Example>", Some('+')),
            [
                "user+tag@mail.b.example",
                "user@mail.b.example",
                "mail.b.example",
                ".b.example",
                ".example",
                "user+tag@",
                "user@"
            ]
        );
        assert_eq!(
            lookup_keys("bob@b.example", Some('+')),
            ["bob@b.example", "b.example", ".example", "bob@"]
        );
        assert_eq!(
            lookup_keys("a+b@x.example", None),
            ["a+b@x.example", "x.example", ".example", "a+b@"]
        );
        assert_eq!(lookup_keys("<>", Some('+')), ["<>"]);
        assert_eq!(lookup_keys("postmaster", Some('+')), ["postmaster"]);
        // A leading delimiter is part of the name, not a tag.
        assert_eq!(lookup_keys("+x@d.example", Some('+'))[1], "d.example");
    }

    #[test]
    fn the_most_specific_address_key_wins() {
        let m = AddrMap::parse(
            "# comment\n\
             .example        reject no example mail\n\
             b.example       continue\n\
             bob@b.example   accept\n\
             bob+spam@b.example discard   # tagged spam trap\n\
             carol@          tempfail try later\n\
             ceo@b.example   verify threshold=0.95 spam=reject suspect=quarantine\n\
             <>              accept\n",
            p(),
        )
        .unwrap();
        let d = Some('+');
        assert_eq!(
            m.lookup("bob+spam@b.example", d),
            Some(&AddrAction::Discard)
        );
        assert_eq!(m.lookup("bob+news@b.example", d), Some(&AddrAction::Accept));
        assert_eq!(m.lookup("alice@b.example", d), Some(&AddrAction::Continue));
        assert_eq!(
            m.lookup("x@c.example", d),
            Some(&AddrAction::Reject(Some("no example mail".into())))
        );
        assert_eq!(
            m.lookup("x@sub.c.example", d),
            Some(&AddrAction::Reject(Some("no example mail".into())))
        );
        // A domain key matches its domain, not subdomains (`.b.example` would).
        assert_eq!(
            m.lookup("x@sub.b.example", d),
            Some(&AddrAction::Reject(Some("no example mail".into())))
        );
        assert_eq!(
            m.lookup("carol@elsewhere.org", d),
            Some(&AddrAction::Tempfail(Some("try later".into())))
        );
        assert_eq!(m.lookup("dave@elsewhere.org", d), None);
        assert_eq!(m.lookup("<>", d), Some(&AddrAction::Accept));
        let AddrAction::Verify(pol) = m.lookup("CEO@B.Example", d).unwrap() else {
            panic!("verify policy expected")
        };
        assert_eq!(pol.threshold, Some(0.95));
        assert_eq!(pol.action(Verdict::Spam), Some(VerdictAction::Reject));
        assert_eq!(
            pol.action(Verdict::Suspect),
            Some(VerdictAction::Quarantine)
        );
        assert_eq!(pol.action(Verdict::Wanted), None);
    }

    #[test]
    fn connection_map_prefers_ip_then_longest_prefix_then_names() {
        let m = ConnectionMap::parse(
            "127.0.0.0/8       accept\n\
             127.0.0.66        reject go away\n\
             10.0.0.0/8        continue\n\
             2001:db8::/32     tempfail\n\
             .spam.example     reject listed\n\
             good.spam.example accept\n\
             helo:friend.example accept\n\
             helo:.bad.example   reject bad helo\n",
            p(),
        )
        .unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            m.at_connect(ip("127.0.0.1"), "localhost"),
            Some(&ConnAction::Accept)
        );
        assert_eq!(
            m.at_connect(ip("127.0.0.66"), "x"),
            Some(&ConnAction::Reject(Some("go away".into())))
        );
        assert_eq!(
            m.at_connect(ip("::ffff:127.0.0.66"), "x"),
            Some(&ConnAction::Reject(Some("go away".into())))
        );
        assert_eq!(
            m.at_connect(ip("10.1.2.3"), "x"),
            Some(&ConnAction::Continue)
        );
        assert_eq!(
            m.at_connect(ip("2001:db8::5"), "x"),
            Some(&ConnAction::Tempfail(None))
        );
        assert_eq!(
            m.at_connect(ip("192.0.2.1"), "mx.spam.example"),
            Some(&ConnAction::Reject(Some("listed".into())))
        );
        assert_eq!(
            m.at_connect(ip("192.0.2.1"), "good.spam.example"),
            Some(&ConnAction::Accept)
        );
        assert_eq!(m.at_connect(ip("192.0.2.1"), "unknown"), None);
        assert_eq!(m.at_connect(None, "[192.0.2.1]"), None);
        assert_eq!(m.at_helo("Friend.Example."), Some(&ConnAction::Accept));
        assert_eq!(
            m.at_helo("x.bad.example"),
            Some(&ConnAction::Reject(Some("bad helo".into())))
        );
        assert_eq!(m.at_helo("bad.example"), None);
        assert_eq!(m.len(), 8);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let e = ConnectionMap::parse("# ok\n\n127.0.0.1 accept\n300.1.1.1 reject\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.map:4: "), "{e}");
        let e = ConnectionMap::parse("10.0.0.0/33 accept\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1: ") && e.contains("prefix"), "{e}");
        let e = AddrMap::parse("a@b\nb@c bounce\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.map:1: ") && e.contains("``"), "{e}");
        let e = AddrMap::parse("a@b accept\nb@c bounce\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.map:2: ") && e.contains("bounce"), "{e}");
        let e = AddrMap::parse("a@b verify threshold=2\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("threshold"), "{e}");
        let e = AddrMap::parse("a@b verify spam=bounce\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bounce"), "{e}");
    }

    #[test]
    fn nets() {
        let n: Net = "192.0.2.0/24".parse().unwrap();
        assert!(n.contains("192.0.2.200".parse().unwrap()));
        assert!(!n.contains("192.0.3.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let all: Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Net = "::1".parse().unwrap();
        assert_eq!(v6.prefix(), 128);
        assert!(v6.contains("::1".parse().unwrap()));
        assert!("1.2.3.4/x".parse::<Net>().is_err());
    }

    #[test]
    fn load_reads_relative_paths_and_reports_missing_files() {
        let dir = std::env::temp_dir().join(format!("mailstamp-maps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rcpt.map"), "bob@b.example reject\n").unwrap();
        let cfg = MapsConfig {
            recipient: Some("rcpt.map".into()),
            ..MapsConfig::default()
        };
        let m = Maps::load(&cfg, &dir).unwrap();
        assert_eq!(m.recipient.len(), 1);
        assert!(m.connection.is_empty() && m.sender.is_empty());
        let cfg = MapsConfig {
            sender: Some("nope.map".into()),
            ..MapsConfig::default()
        };
        let e = Maps::load(&cfg, &dir).unwrap_err().to_string();
        assert!(e.contains("nope.map"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
