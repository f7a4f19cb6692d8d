// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp doctor`: checks a deployment before mail flows and says what to fix. Each check
//! is a [`Check`] — its name, `ok` / `warn` / `FAIL`, what was found and, when it is not ok,
//! what to do — in the order an operator fixes them: the config, the RPC endpoint and its
//! chain id, the registry, the writer key and its balance, the store, the writer record of
//! every domain the agent stamps for, the listen addresses. A check that needs an earlier one
//! that failed is not run (the earlier failure is what to fix). Nothing here changes the
//! deployment, except that opening the store creates and migrates it, as the daemons would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider};
use mailstamp_core::WriterAuth;
use mailstamp_core::writers::{RECORD_LABEL, WriterRecord};
use serde::Serialize;

use crate::chain::{self, Chain};
use crate::config::{Config, Overrides};
use crate::dns::Authority;
use crate::error::Error;
use crate::keys;
use crate::onboard;
use crate::store::Store;
use crate::util::normalise_name;

use crate::chain::{STAMP_GAS, eth};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth a look (printed with what to do; does not fail the run).
    Warn,
    /// Broken: mail will not flow as configured until it is fixed.
    Fail,
}

impl Status {
    /// As printed: `ok`, `warn`, `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`config`, `rpc`, `chain id`, `registry`, `writer key`, `balance`,
    /// `store`, `writer record a.example`, `listen inet:127.0.0.1:8891`).
    pub name: String,
    /// How it came out.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, when it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            ..Self::fail(name, detail, fix)
        }
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file (`--config`), if any.
    pub config: Option<PathBuf>,
    /// Flags and environment over the file.
    pub over: Overrides,
    /// `--keystore`, over `writer.keystore`.
    pub keystore: Option<PathBuf>,
    /// More domains whose writer record to check (`--domain`), besides `[trust]`'s and, in
    /// provider mode, the active customer domains.
    pub domains: Vec<String>,
    /// Listen addresses to try (`inet:HOST:PORT`, `unix:/path`, `HOST:PORT`); none:
    /// `relay.listen`. The milter's (`inet:`, `unix:`) are also looked for in Postfix's
    /// `smtpd_milters`.
    pub listen: Vec<String>,
    /// Postfix's configuration directory (`postconf -c DIR`); none: the system's, when
    /// Postfix is installed (no `postconf`: no Postfix checks).
    pub postfix: Option<PathBuf>,
}

/// Whether every check passed (warnings allowed).
pub fn all_pass(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}

/// Runs every check.
pub async fn run(opts: &Options) -> Vec<Check> {
    let mut out = Vec::new();
    let cfg = match Config::load(opts.config.as_deref(), &opts.over) {
        Ok(cfg) => {
            let from = opts
                .config
                .as_deref()
                .map_or("defaults (no config file)".to_owned(), |p| {
                    p.display().to_string()
                });
            out.push(Check::ok("config", format!("{from}: every section checks")));
            cfg
        }
        Err(e) => {
            out.push(Check::fail(
                "config",
                format!("{e:#}"),
                "correct the file at that key (every key is documented in mailstamp.example.toml); the other checks need the config",
            ));
            return out;
        }
    };
    let timeout = Duration::from_secs(cfg.chain.timeout_secs);
    let node = rpc_checks(&cfg, timeout, &mut out).await;
    if let Some((provider, _)) = &node {
        out.push(registry_check(&cfg, provider, timeout).await);
    }
    let writer = writer_checks(
        &cfg,
        opts.keystore.as_deref(),
        node.as_ref(),
        timeout,
        &mut out,
    )
    .await;
    let store = store_check(&cfg, &mut out).await;
    record_checks(&cfg, opts, writer, store.as_ref(), &mut out).await;
    for l in listen_addresses(&cfg, opts) {
        out.push(listen_check(&l).await);
    }
    postfix_checks(opts, &mut out).await;
    out
}

async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = std::result::Result<T, alloy::transports::TransportError>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

/// Every endpoint answers `eth_chainId`, all with the same chain id (the configured one), and
/// enough of them answer for `chain.quorum`. Endpoints are named by scheme, host and port only.
async fn rpc_checks(
    cfg: &Config,
    timeout: Duration,
    out: &mut Vec<Check>,
) -> Option<(DynProvider, u64)> {
    let key = if cfg.chain.rpc_urls.is_empty() {
        "chain.rpc_url / MAILSTAMP_RPC_URL"
    } else {
        "chain.rpc_urls"
    };
    let mut first: Option<(DynProvider, u64)> = None;
    let mut reached = 0;
    let endpoints = cfg.chain.endpoints();
    for url in &endpoints {
        let label = chain::redact_url(url);
        let provider = match chain::provider(url, None) {
            Ok(p) => p,
            Err(e) => {
                out.push(Check::fail(
                    "rpc",
                    format!("{e:#}"),
                    format!("correct {key}"),
                ));
                continue;
            }
        };
        let id = match within(timeout, provider.get_chain_id()).await {
            Ok(id) => id,
            Err(e) => {
                out.push(Check::fail(
                    "rpc",
                    format!("{label}: {e}"),
                    format!("start the node or correct {key} (is it reachable from here?)"),
                ));
                continue;
            }
        };
        reached += 1;
        match &first {
            Some((_, want)) if *want != id => out.push(Check::fail(
                "rpc",
                format!("{label} is chain {id}, the first endpoint chain {want}"),
                format!("every entry of {key} must be a node of the same chain"),
            )),
            _ => out.push(Check::ok("rpc", format!("{label} answers: chain {id}"))),
        }
        if first.is_none() {
            first = Some((provider, id));
        }
    }
    if endpoints.len() > 1 || cfg.chain.quorum > 1 {
        out.push(if reached >= cfg.chain.quorum {
            Check::ok(
                "quorum",
                format!(
                    "{reached} of {} endpoints answer; chain.quorum = {}",
                    endpoints.len(),
                    cfg.chain.quorum
                ),
            )
        } else {
            Check::fail(
                "quorum",
                format!(
                    "only {reached} of {} endpoints answer; chain.quorum = {}: every lookup is a temporary failure",
                    endpoints.len(),
                    cfg.chain.quorum
                ),
                "bring the endpoints back, or lower chain.quorum",
            )
        });
    }
    let (provider, id) = first?;
    out.push(match cfg.chain.chain_id {
        Some(want) if want == id => Check::ok("chain id", format!("{id}, as chain.chain_id says")),
        Some(want) => Check::fail(
            "chain id",
            format!("the node is chain {id}, but chain.chain_id says {want}"),
            format!(
                "point {key} at a node of chain {want}, or set chain.chain_id = {id} if that chain is meant"
            ),
        ),
        None => Check::warn(
            "chain id",
            format!("chain.chain_id is not set; the node is chain {id}"),
            format!("set chain.chain_id = {id}, so that a wrong endpoint is refused"),
        ),
    });
    Some((provider, id))
}

/// The registry has code and answers `version()`, and its code is this agent's
/// `StampRegistry` (other code that answers is a `warn`: another build or version).
async fn registry_check(cfg: &Config, provider: &DynProvider, timeout: Duration) -> Check {
    let registry = match cfg.registry() {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                "registry",
                format!("{e}"),
                "set chain.registry (or MAILSTAMP_REGISTRY) to the address `mailstamp deploy` printed",
            );
        }
    };
    // The chain id was checked above: connect whatever it is, to check the registry anyway.
    let mut chain_cfg = cfg.chain.clone();
    chain_cfg.chain_id = None;
    let checked = match Chain::connect(&chain_cfg, registry, None).await {
        Ok(c) => c.check_registry().await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(v) => {
            let code = within(
                timeout,
                std::future::IntoFuture::into_future(provider.get_code_at(registry)),
            )
            .await;
            match code {
                Ok(c) if c == chain::StampRegistry::DEPLOYED_BYTECODE => {
                    Check::ok("registry", format!("{registry}: StampRegistry {v}"))
                }
                // Proof mode reads only the registry whose code hash it pins: nothing else verifies.
                _ if cfg.verify.mode == crate::config::ReadMode::Proof => Check::fail(
                    "registry",
                    format!(
                        "{registry} answers version() = {v}, but its code is not this agent's StampRegistry: verify.mode = \"proof\" cannot read it (every lookup would be a temporary failure)"
                    ),
                    format!(
                        "use the registry this version deploys (`mailstamp deploy`: {}), or set verify.mode = \"call\"",
                        chain::predicted_address()
                    ),
                ),
                _ => Check::warn(
                    "registry",
                    format!(
                        "{registry} answers version() = {v}, but its code is not this agent's StampRegistry"
                    ),
                    format!(
                        "use the registry this version deploys (`mailstamp deploy`: {}), or make sure that code is meant (verify it on an explorer)",
                        chain::predicted_address()
                    ),
                ),
            }
        }
        Err(e) => Check::fail(
            "registry",
            format!("{e:#}"),
            format!(
                "deploy the registry (`mailstamp deploy`, same address on every chain: {}) or correct chain.registry",
                chain::predicted_address()
            ),
        ),
    }
}

/// The writer key loads; its balance pays for stamps.
async fn writer_checks(
    cfg: &Config,
    keystore: Option<&Path>,
    node: Option<&(DynProvider, u64)>,
    timeout: Duration,
    out: &mut Vec<Check>,
) -> Option<Address> {
    let configured = keystore.is_some()
        || cfg.writer.keystore.is_some()
        || std::env::var_os(keys::PRIVATE_KEY_ENV).is_some();
    if !configured {
        out.push(Check::warn(
            "writer key",
            "no writer key: the daemons only verify, outbound mail meets milter.on_stamp_error",
            format!(
                "set {} or writer.keystore (with {} or writer.password_file) to stamp",
                keys::PRIVATE_KEY_ENV,
                keys::PASSWORD_ENV
            ),
        ));
        return None;
    }
    let writer = match keys::load(&cfg.writer, keystore) {
        Ok(s) => s.address(),
        Err(e) => {
            out.push(Check::fail(
                "writer key",
                format!("{e:#}"),
                "give a readable key: the keystore path and password, or a 32-byte hex key",
            ));
            return None;
        }
    };
    out.push(Check::ok("writer key", format!("writer {writer:#x}")));
    if let Some((provider, chain_id)) = node {
        out.push(balance_check(provider, *chain_id, writer, timeout).await);
    }
    Some(writer)
}

async fn balance_check(
    provider: &DynProvider,
    chain_id: u64,
    writer: Address,
    timeout: Duration,
) -> Check {
    let balance = match within(
        timeout,
        std::future::IntoFuture::into_future(provider.get_balance(writer)),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            return Check::fail(
                "balance",
                format!("eth_getBalance: {e}"),
                "check the RPC endpoint",
            );
        }
    };
    let fund = format!(
        "send ETH on chain {chain_id} to {writer:#x} (one direct stamp is about {STAMP_GAS} gas)"
    );
    if balance.is_zero() {
        return Check::fail(
            "balance",
            format!("writer {writer:#x} has 0 ETH: every stamp would fail"),
            fund,
        );
    }
    // The node's current fee: EIP-1559 max fee, else the legacy gas price.
    let fee = match within(timeout, provider.estimate_eip1559_fees()).await {
        Ok(f) => Some(f.max_fee_per_gas),
        Err(_) => within(timeout, provider.get_gas_price()).await.ok(),
    };
    let Some(fee) = fee.filter(|f| *f > 0) else {
        return Check::ok(
            "balance",
            format!("{} ETH (no fee estimate from the node)", eth(balance)),
        );
    };
    let per_stamp = U256::from(fee) * U256::from(STAMP_GAS);
    let stamps = balance / per_stamp;
    let detail = format!(
        "{} ETH: about {stamps} direct stamps at {:.3} gwei × {STAMP_GAS} gas",
        eth(balance),
        fee as f64 / 1e9
    );
    if stamps.is_zero() {
        Check::fail("balance", detail, fund)
    } else {
        Check::ok("balance", detail)
    }
}

/// The store opens and migrates (on the blocking pool).
async fn store_check(cfg: &Config, out: &mut Vec<Check>) -> Option<Arc<Store>> {
    let sc = cfg.store.clone();
    let opened = tokio::task::spawn_blocking(move || Store::connect(&sc, None))
        .await
        .map_err(Error::from)
        .and_then(|r| r);
    let shared = cfg.store.url.is_some();
    match opened {
        Ok(s) => {
            let detail = if shared {
                format!(
                    "PostgreSQL opens, schema current; this host is `{}` among the hosts sharing it: each host has its own writer, and every customer domain's _mailstamp record must list all of them",
                    s.host()
                )
            } else {
                format!("{} opens, schema current", cfg.store.path.display())
            };
            out.push(Check::ok("store", detail));
            Some(Arc::new(s))
        }
        Err(e) => {
            let fix = if shared {
                "check store.url (postgres://USER:PASSWORD@HOST:PORT/DATABASE), that PostgreSQL runs and that pg_hba.conf lets this host in".to_owned()
            } else {
                format!(
                    "make {} a writable file in a writable directory for the user mailstamp runs as, or set store.path / --store",
                    cfg.store.path.display()
                )
            };
            out.push(Check::fail("store", format!("{e:#}"), fix));
            None
        }
    }
}

/// The domains to check: `[trust]`'s, the active customer domains (provider mode), `--domain`.
/// Each with, for a customer domain, the fix onboarding prints.
async fn domains(
    cfg: &Config,
    opts: &Options,
    store: Option<&Arc<Store>>,
    out: &mut Vec<Check>,
) -> Vec<(String, Option<String>)> {
    let mut ds: Vec<(String, Option<String>)> = cfg
        .trust
        .keys()
        .map(|d| (normalise_name(d), None))
        .collect();
    if cfg.provider.enabled
        && let Some(store) = store
    {
        match store.call(|s| s.domains()).await {
            Ok(rows) => {
                for r in rows
                    .into_iter()
                    .filter(|r| r.status == crate::store::DomainStatus::Active)
                {
                    let names = cfg.provider.names(&r.account);
                    let cname = onboard::customer_records(&cfg.provider, &r.domain, &names)
                        .pop()
                        .unwrap_or_default();
                    ds.push((r.domain, Some(cname)));
                }
            }
            Err(e) => out.push(Check::fail(
                "customer domains",
                format!("{e:#}"),
                "check the store",
            )),
        }
    }
    ds.extend(opts.domains.iter().map(|d| (normalise_name(d), None)));
    let mut seen = std::collections::BTreeSet::new();
    ds.retain(|(d, _)| seen.insert(d.clone()));
    ds
}

/// Every domain's writer record (or trust-map entry) lists the writer.
async fn record_checks(
    cfg: &Config,
    opts: &Options,
    writer: Option<Address>,
    store: Option<&Arc<Store>>,
    out: &mut Vec<Check>,
) {
    let ds = domains(cfg, opts, store, out).await;
    if ds.is_empty() {
        return;
    }
    let Some(writer) = writer.or_else(|| cfg.provider.writers.first().copied()) else {
        out.push(Check::warn(
            "writer records",
            format!("{} domain(s) not checked: no writer key", ds.len()),
            "give the writer key to check that each domain lists it",
        ));
        return;
    };
    let authority = match Authority::with_cache(&cfg.dns, &cfg.trust, false) {
        Ok(a) => a,
        Err(e) => {
            out.push(Check::fail(
                "dns",
                format!("{e:#}"),
                "set dns.nameservers or fix /etc/resolv.conf",
            ));
            return;
        }
    };
    let record = WriterRecord::format(&[writer.0.0]);
    for (d, customer) in ds {
        let name = format!("writer record {d}");
        let pinned = cfg.trust.keys().any(|k| normalise_name(k) == d);
        out.push(match authority.check(&d, writer).await {
            WriterAuth::Pass(why) => Check::ok(name, why),
            WriterAuth::TempError(e) => Check::fail(
                name,
                format!("cannot check now: {e}"),
                "check dns.nameservers (or /etc/resolv.conf) and that the domain's servers answer",
            ),
            other => {
                let fix = if pinned {
                    format!("add \"{writer:#x}\" to [trust] \"{d}\" in the config")
                } else if let Some(cname) = customer {
                    format!(
                        "the customer publishes {cname} (and the provider zone the account's TXT: `mailstamp onboard zone`)"
                    )
                } else {
                    format!("publish {RECORD_LABEL}.{d} TXT \"{record}\" (or pin the writer in [trust])")
                };
                Check::fail(name, other.detail().to_owned(), fix)
            }
        });
    }
}

fn listen_addresses(cfg: &Config, opts: &Options) -> Vec<String> {
    if opts.listen.is_empty() {
        vec![cfg.relay.listen.clone()]
    } else {
        opts.listen.clone()
    }
}

/// Binds `addr` and drops it: `inet:HOST:PORT` or `HOST:PORT` (TCP), `unix:/path`.
pub async fn listen_check(addr: &str) -> Check {
    let name = format!("listen {addr}");
    if let Some(path) = addr.strip_prefix("unix:") {
        return unix_check(name, Path::new(path));
    }
    let hp = addr.strip_prefix("inet:").unwrap_or(addr);
    let sa: SocketAddr = match tokio::net::lookup_host(hp).await.map(|mut a| a.next()) {
        Ok(Some(sa)) => sa,
        Ok(None) | Err(_) => {
            return Check::fail(
                name,
                format!("`{hp}` is not HOST:PORT"),
                "give inet:HOST:PORT, unix:/path or HOST:PORT",
            );
        }
    };
    match tokio::net::TcpListener::bind(sa).await {
        Ok(l) => {
            drop(l);
            Check::ok(name, format!("{sa} can be bound"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::warn(
            name,
            format!("{sa} is in use"),
            "fine if the mailstamp daemon is running there; else stop what holds it or pick another port",
        ),
        Err(e) => Check::fail(
            name,
            format!("cannot bind {sa}: {e}"),
            "pick an address of this host and a port the mailstamp user may bind (≥ 1024 without privileges)",
        ),
    }
}

fn unix_check(name: String, path: &Path) -> Check {
    if path.exists() {
        return if std::os::unix::net::UnixStream::connect(path).is_ok() {
            Check::warn(
                name,
                format!("{} is in use", path.display()),
                "fine if the mailstamp milter is running there; else stop what holds it",
            )
        } else {
            Check::ok(
                name,
                format!("{}: a stale socket file, removed at start", path.display()),
            )
        };
    }
    match std::os::unix::net::UnixListener::bind(path) {
        Ok(l) => {
            drop(l);
            let _ = std::fs::remove_file(path);
            Check::ok(name, format!("{} can be bound", path.display()))
        }
        Err(e) => Check::fail(
            name,
            format!("cannot bind {}: {e}", path.display()),
            "create its directory, writable by the mailstamp user (and reachable by the MTA)",
        ),
    }
}

/// The `main.cf` parameters the Postfix checks read, in this order.
const POSTFIX_PARAMS: [&str; 4] = [
    "smtpd_milters",
    "non_smtpd_milters",
    "milter_protocol",
    "milter_default_action",
];

/// The system's Postfix configuration (Debian's place); without it, and without
/// `--postfix-config`, Postfix is not set up here and is not checked.
const SYSTEM_MAIN_CF: &str = "/etc/postfix/main.cf";

/// `postconf -x -h` of [`POSTFIX_PARAMS`] (values expanded); `None` when Postfix is not
/// installed (or, without `dir`, not set up: no [`SYSTEM_MAIN_CF`]).
async fn postconf(dir: Option<&Path>) -> Option<std::result::Result<Vec<String>, String>> {
    if dir.is_none() && !Path::new(SYSTEM_MAIN_CF).exists() {
        return None;
    }
    for exe in ["postconf", "/usr/sbin/postconf"] {
        let mut cmd = tokio::process::Command::new(exe);
        if let Some(d) = dir {
            cmd.arg("-c").arg(d);
        }
        cmd.args(["-x", "-h"]).args(POSTFIX_PARAMS);
        return Some(match cmd.output().await {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let v: Vec<String> = text.lines().map(str::to_owned).collect();
                if v.len() == POSTFIX_PARAMS.len() {
                    Ok(v)
                } else {
                    Err(format!("unexpected output: {text}"))
                }
            }
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| !l.contains("warning:"))
                .collect::<Vec<_>>()
                .join("; ")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => Err(e.to_string()),
        });
    }
    None
}

/// The milter address as Postfix names it: a socket under Postfix's chroot
/// (`/var/spool/postfix`) is written relative to it.
fn postfix_form(addr: &str) -> String {
    match addr.strip_prefix("unix:/var/spool/postfix/") {
        Some(rest) => format!("unix:/{rest}"),
        None => addr.to_owned(),
    }
}

/// Whether a `*_milters` value lists `addr` (as given, or in its chroot-relative form).
fn lists_milter(value: &str, addr: &str) -> bool {
    let want = [addr.to_owned(), postfix_form(addr)];
    value
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}'))
        .any(|t| want.iter().any(|w| w == t))
}

/// Postfix's milter settings match what the agent needs (when Postfix is installed).
async fn postfix_checks(opts: &Options, out: &mut Vec<Check>) {
    let vals = match postconf(opts.postfix.as_deref()).await {
        None if opts.postfix.is_none() => return,
        None => {
            out.push(Check::fail(
                "postfix",
                "postconf not found",
                "install Postfix, or leave out --postfix-config",
            ));
            return;
        }
        Some(Err(e)) => {
            out.push(Check::fail(
                "postfix",
                format!("postconf: {e}"),
                "give Postfix's configuration directory (--postfix-config DIR, where main.cf is)",
            ));
            return;
        }
        Some(Ok(v)) => v,
    };
    let (smtpd, non_smtpd, protocol, default_action) = (&vals[0], &vals[1], &vals[2], &vals[3]);
    out.push(if protocol.trim() == "6" {
        Check::ok("postfix milter_protocol", "6")
    } else {
        Check::fail(
            "postfix milter_protocol",
            format!("{protocol}: the milter refuses it (it needs LEADING_SPACE, protocol 6)"),
            "set milter_protocol = 6 in main.cf",
        )
    });
    out.push(if default_action.trim() == "tempfail" {
        Check::ok("postfix milter_default_action", "tempfail")
    } else {
        Check::warn(
            "postfix milter_default_action",
            format!("{default_action}: while the milter is down, mail is not deferred"),
            "set milter_default_action = tempfail in main.cf (mail waits instead)",
        )
    });
    let milters: Vec<&String> = opts
        .listen
        .iter()
        .filter(|l| l.starts_with("inet:") || l.starts_with("unix:"))
        .collect();
    if milters.is_empty() {
        if smtpd.trim().is_empty() {
            out.push(Check::warn(
                "postfix smtpd_milters",
                "empty: Postfix passes no mail to a milter",
                "set smtpd_milters = inet:127.0.0.1:8891 (the milter's --listen; give it to doctor as --listen)",
            ));
        }
        return;
    }
    // One of the milter addresses given is where Postfix must send mail.
    let forms: Vec<String> = milters.iter().map(|m| postfix_form(m)).collect();
    let found = |value: &str| {
        milters
            .iter()
            .zip(&forms)
            .find(|(m, _)| lists_milter(value, m))
    };
    out.push(match found(smtpd) {
        Some((_, pf)) => Check::ok("postfix smtpd_milters", format!("lists {pf}")),
        None => Check::fail(
            "postfix smtpd_milters",
            format!("`{smtpd}` lists none of {}", forms.join(", ")),
            format!(
                "set smtpd_milters = {} in main.cf (then `postfix reload`)",
                forms[0]
            ),
        ),
    });
    out.push(match found(non_smtpd) {
        Some((_, pf)) => Check::ok("postfix non_smtpd_milters", format!("lists {pf}")),
        None => Check::warn(
            "postfix non_smtpd_milters",
            format!(
                "`{non_smtpd}` lists none of {}: local submissions (sendmail) are not stamped",
                forms.join(", ")
            ),
            "set non_smtpd_milters = $smtpd_milters in main.cf",
        ),
    });
}

/// The result of a whole run as one value, for `--json`.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// Whether every check passed.
    pub ok: bool,
    /// The checks, in order.
    pub checks: &'a [Check],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milters_are_found_in_postfix_values() {
        let v = "inet:127.0.0.1:8891, { unix:/mailstamp/milter.sock, default_action = accept }";
        assert!(lists_milter(v, "inet:127.0.0.1:8891"));
        assert!(lists_milter(
            v,
            "unix:/var/spool/postfix/mailstamp/milter.sock"
        ));
        assert!(!lists_milter(v, "inet:127.0.0.1:8892"));
        assert!(!lists_milter("", "inet:127.0.0.1:8891"));
        assert_eq!(
            postfix_form("unix:/var/spool/postfix/m.sock"),
            "unix:/m.sock"
        );
        assert_eq!(postfix_form("inet:[::1]:1"), "inet:[::1]:1");
    }

    #[test]
    fn balances_print_in_eth() {
        assert_eq!(eth(U256::ZERO), "0.000000");
        assert_eq!(eth(U256::from(1_500_000_000_000_000_000u128)), "1.500000");
        assert_eq!(eth(U256::from(1_234_567_000_000u128)), "0.000001");
    }

    #[tokio::test]
    async fn a_bound_port_is_in_use_and_a_bad_directory_fails() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        assert_eq!(
            listen_check(&format!("inet:{a}")).await.status,
            Status::Warn
        );
        drop(l);
        assert_eq!(listen_check(&a.to_string()).await.status, Status::Ok);
        let c = listen_check("unix:/nonexistent-dir-mailstamp/m.sock").await;
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert_eq!(listen_check("inet:nope").await.status, Status::Fail);
    }
}
