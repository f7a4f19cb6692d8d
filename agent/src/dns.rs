// SPDX-License-Identifier: GPL-3.0-or-later
//! DNS: the writer records domains publish (`_mailstamp.<domain>` TXT) and the records
//! onboarding checks (MX, CNAME), through hickory's resolver — the system's resolv.conf, or the
//! name servers in `[dns]`. The operator's trust map (`[trust]`) pins writers for named domains
//! and wins over DNS. Any failure to get an answer (timeout, SERVFAIL, refused) is a temporary
//! error; only an authoritative "no such record" is "none".

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::DnsConfig;
use crate::error::{Context, Result};
use crate::util::normalise_name as normalise;
use alloy::primitives::Address;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use mailstamp_core::WriterAuth;
use mailstamp_core::writers::{RECORD_LABEL, authorise};

/// What a DNS question got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// Records.
    Records(T),
    /// The name or the type does not exist (NXDOMAIN or NODATA).
    NoRecords,
    /// No answer could be had: timeout, SERVFAIL, refused, network.
    Trouble(String),
}

/// The resolver plus the operator's trust map.
#[derive(Clone)]
pub struct Authority {
    resolver: TokioResolver,
    /// Shared by every clone: a verification context is made per message.
    trust: std::sync::Arc<BTreeMap<String, Vec<Address>>>,
    timeout: Duration,
}

/// The name servers and options of `cfg`: its `nameservers` (UDP and TCP, any port), else the
/// system's (/etc/resolv.conf); timeout and attempts from `cfg`. Shared by the writer-record
/// resolver and the DMARC authenticator ([`crate::auth`]), so both ask the same servers.
pub(crate) fn resolver_config(cfg: &DnsConfig) -> Result<(ResolverConfig, ResolverOpts)> {
    let (config, mut opts) = if cfg.nameservers.is_empty() {
        hickory_resolver::system_conf::read_system_conf().context(
            "cannot read the system resolver configuration (/etc/resolv.conf); set dns.nameservers",
        )?
    } else {
        let servers = cfg
            .nameservers
            .iter()
            .map(|sa| {
                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                for c in &mut ns.connections {
                    c.port = sa.port();
                }
                ns
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    opts.timeout = Duration::from_secs(cfg.timeout_secs.max(1));
    opts.attempts = cfg.attempts.max(1);
    Ok((config, opts))
}

fn build_resolver(cfg: &DnsConfig, cache: bool) -> Result<TokioResolver> {
    let (config, opts) = resolver_config(cfg)?;
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = opts;
    if !cache {
        builder.options_mut().cache_size = 0;
    }
    builder.build().context("cannot build the DNS resolver")
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trusted_domains", &self.trust.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A resolver per `cfg` (answers cached by TTL) and the trust map (domain → writers).
    pub fn new(cfg: &DnsConfig, trust: &BTreeMap<String, Vec<Address>>) -> Result<Self> {
        Self::with_cache(cfg, trust, true)
    }

    /// As [`Authority::new`]; without a cache every question goes to the server (onboarding
    /// checks want what the customer published a minute ago, not a cached "no").
    pub fn with_cache(
        cfg: &DnsConfig,
        trust: &BTreeMap<String, Vec<Address>>,
        cache: bool,
    ) -> Result<Self> {
        let trust = std::sync::Arc::new(
            trust
                .iter()
                .map(|(d, w)| (normalise(d), w.clone()))
                .collect(),
        );
        let timeout = Duration::from_secs(cfg.timeout_secs.max(1) * cfg.attempts.max(1) as u64 + 1);
        Ok(Self {
            resolver: build_resolver(cfg, cache)?,
            trust,
            timeout,
        })
    }

    async fn lookup(&self, name: &str, rt: RecordType) -> Answer<Vec<RData>> {
        let fqdn = format!("{}.", normalise(name));
        match tokio::time::timeout(self.timeout, self.resolver.lookup(fqdn.as_str(), rt)).await {
            Err(_) => Answer::Trouble(format!(
                "no DNS answer for {fqdn} {rt} within {}s",
                self.timeout.as_secs()
            )),
            Ok(Err(e)) if e.is_no_records_found() => Answer::NoRecords,
            Ok(Err(e)) => Answer::Trouble(describe(&fqdn, rt, &e)),
            Ok(Ok(l)) => {
                let data: Vec<RData> = l
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rt)
                    .map(|r| r.data.clone())
                    .collect();
                if data.is_empty() {
                    Answer::NoRecords
                } else {
                    Answer::Records(data)
                }
            }
        }
    }

    /// TXT records at `name`, each record's character-strings concatenated.
    pub async fn txt(&self, name: &str) -> Answer<Vec<String>> {
        match self.lookup(name, RecordType::TXT).await {
            Answer::Records(rs) => Answer::Records(
                rs.iter()
                    .filter_map(|r| match r {
                        RData::TXT(t) => Some(
                            t.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s))
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect(),
            ),
            Answer::NoRecords => Answer::NoRecords,
            Answer::Trouble(e) => Answer::Trouble(e),
        }
    }

    /// The CNAME target of `name` (lower case, no trailing dot).
    pub async fn cname(&self, name: &str) -> Answer<String> {
        match self.lookup(name, RecordType::CNAME).await {
            Answer::Records(rs) => rs
                .iter()
                .find_map(|r| match r {
                    RData::CNAME(c) => Some(Answer::Records(normalise(&c.0.to_string()))),
                    _ => None,
                })
                .unwrap_or(Answer::NoRecords),
            Answer::NoRecords => Answer::NoRecords,
            Answer::Trouble(e) => Answer::Trouble(e),
        }
    }

    /// The MX exchanges of `domain` (lower case, no trailing dot), by preference.
    pub async fn mx(&self, domain: &str) -> Answer<Vec<String>> {
        match self.lookup(domain, RecordType::MX).await {
            Answer::Records(rs) => {
                let mut v: Vec<(u16, String)> = rs
                    .iter()
                    .filter_map(|r| match r {
                        RData::MX(m) => Some((m.preference, normalise(&m.exchange.to_string()))),
                        _ => None,
                    })
                    .collect();
                v.sort();
                Answer::Records(v.into_iter().map(|(_, n)| n).collect())
            }
            Answer::NoRecords => Answer::NoRecords,
            Answer::Trouble(e) => Answer::Trouble(e),
        }
    }

    /// May `writer` stamp for `domain`? The trust map first, then `_mailstamp.<domain>` TXT.
    pub async fn check(&self, domain: &str, writer: Address) -> WriterAuth {
        let a = self.check_inner(domain, writer).await;
        crate::metrics::METRICS
            .writer_checks
            .get_or_create(&crate::metrics::labels(&[("result", a.as_str())]))
            .inc();
        a
    }

    async fn check_inner(&self, domain: &str, writer: Address) -> WriterAuth {
        let d = normalise(domain);
        let w = format!("{writer:#x}");
        if let Some(ws) = self.trust.get(&d) {
            return if ws.contains(&writer) {
                WriterAuth::Pass(format!("trust map pins {w} for {d}"))
            } else {
                WriterAuth::Fail(format!("trust map for {d} does not list {w}"))
            };
        }
        if d.is_empty() {
            return WriterAuth::None("the message has no From domain".into());
        }
        match self.txt(&format!("{RECORD_LABEL}.{d}")).await {
            Answer::Records(txts) => authorise(&d, &txts, &writer.0.0),
            Answer::NoRecords => authorise(&d, &[], &writer.0.0),
            Answer::Trouble(e) => WriterAuth::TempError(e),
        }
    }
}

fn describe(fqdn: &str, rt: RecordType, e: &NetError) -> String {
    format!("DNS lookup of {fqdn} {rt} failed: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_trust_map_wins_and_needs_no_dns() {
        let w: Address = "0x00000000000000000000000000000000000000aa"
            .parse()
            .unwrap();
        let other: Address = "0x00000000000000000000000000000000000000bb"
            .parse()
            .unwrap();
        // A name server nobody answers on: any DNS question would be trouble.
        let cfg = DnsConfig {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout_secs: 1,
            attempts: 1,
        };
        let trust = [("Partner.Example.".to_owned(), vec![w])]
            .into_iter()
            .collect();
        let a = Authority::new(&cfg, &trust).unwrap();
        assert_eq!(a.check("partner.example", w).await.as_str(), "pass");
        assert_eq!(a.check("PARTNER.example", other).await.as_str(), "fail");
        assert_eq!(a.check("elsewhere.example", w).await.as_str(), "temperror");
        assert_eq!(a.check("", w).await.as_str(), "none");
    }
}
