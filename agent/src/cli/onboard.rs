// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp onboard …`: the CLI face of `mailstamp::onboard` (seed 000).

use std::time::{Duration, Instant};

use alloy::primitives::Address;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use mailstamp::{
    config::Config,
    dns::Authority,
    keys,
    onboard::{self, Problem},
    store::{DomainStatus, Store},
    util,
};
use serde_json::json;

#[derive(Subcommand)]
pub(crate) enum OnboardCmd {
    /// Register a customer domain as pending and print the records the customer must publish.
    Add {
        /// The customer's domain.
        domain: String,
        /// The customer account (a DNS label: a-z, 0-9, '-').
        #[arg(long)]
        account: String,
    },
    /// Print the provider-side zone lines (account mail hosts and writer records).
    Zone,
    /// Check the customer's DNS records and mark the domain active when they are right.
    Verify {
        /// The customer's domain.
        domain: String,
        /// Keep checking until the records are right (or --timeout).
        #[arg(long)]
        wait: bool,
        /// Seconds to keep checking with --wait.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Seconds between checks with --wait.
        #[arg(long, default_value_t = 10)]
        interval: u64,
    },
    /// List onboarded domains.
    List {
        /// One JSON object per domain.
        #[arg(long)]
        json: bool,
    },
    /// Forget a domain (its mail is no longer stamped or accepted in provider mode).
    Remove {
        /// The customer's domain.
        domain: String,
    },
}

fn open_store(cfg: &Config) -> Result<Store> {
    Store::connect(&cfg.store, None)
        .context("set store.path in the config, MAILSTAMP_STORE or --store")
}

/// The writers to publish: provider.writers, else the writer key's address.
fn writers(cfg: &Config) -> Result<Vec<Address>> {
    if !cfg.provider.writers.is_empty() {
        return Ok(cfg.provider.writers.clone());
    }
    let key = keys::load(&cfg.writer, None).context(
        "no writers to publish: set provider.writers in the config, or give the writer key",
    )?;
    Ok(vec![key.address()])
}

pub(crate) async fn run(cfg: &Config, cmd: OnboardCmd) -> Result<u8> {
    cfg.provider.require()?;
    let p = &cfg.provider;
    match cmd {
        OnboardCmd::Add { domain, account } => {
            let domain = onboard::validate_domain(&domain)?;
            onboard::validate_account(&account)?;
            let store = open_store(cfg)?;
            let row = store.add_domain(&domain, &account, util::now())?;
            let names = p.names(&account);
            println!("{domain}: {:?} for account {account}", row.status);
            println!("Ask the customer to publish, in the zone of {domain}:");
            for line in onboard::customer_records(p, &domain, &names) {
                println!("  {line}");
            }
            println!("then run `mailstamp onboard verify {domain}`.");
            Ok(0)
        }
        OnboardCmd::Zone => {
            let store = open_store(cfg)?;
            let writers = writers(cfg)?;
            // A zone-file comment: the lines stay loadable as they are.
            println!(
                "; each mail host has its own writer key: the writer record below must list every host's writer ({} listed now; provider.writers on every host)",
                writers.len()
            );
            if cfg.store.url.is_some() {
                let hosts: Vec<String> = store
                    .hosts()?
                    .into_iter()
                    .map(|h| h.0)
                    .filter(|h| !h.is_empty())
                    .collect();
                println!(
                    "; hosts sharing this store that have journalled batches or stamps: {}",
                    if hosts.is_empty() {
                        "none yet".to_owned()
                    } else {
                        hosts.join(", ")
                    }
                );
            }
            for line in onboard::zone_lines(p, &store, &writers)? {
                println!("{line}");
            }
            Ok(0)
        }
        OnboardCmd::Verify {
            domain,
            wait,
            timeout,
            interval,
        } => verify(cfg, &domain, wait, timeout, interval).await,
        OnboardCmd::List { json } => {
            let store = open_store(cfg)?;
            let rows = store.domains()?;
            if json {
                for r in &rows {
                    println!("{}", json!(r));
                }
            } else {
                println!(
                    "{:<32} {:<20} {:<8} VERIFIED",
                    "DOMAIN", "ACCOUNT", "STATUS"
                );
                for r in &rows {
                    let status = if r.status == DomainStatus::Active {
                        "active"
                    } else {
                        "pending"
                    };
                    let when = r.verified.map(util::rfc3339).unwrap_or_else(|| "-".into());
                    println!("{:<32} {:<20} {status:<8} {when}", r.domain, r.account);
                }
            }
            Ok(0)
        }
        OnboardCmd::Remove { domain } => {
            let domain = onboard::validate_domain(&domain)?;
            if open_store(cfg)?.remove_domain(&domain)? {
                println!("{domain}: removed");
                Ok(0)
            } else {
                bail!("{domain} is not onboarded (see `mailstamp onboard list`)");
            }
        }
    }
}

/// `onboard verify`: checks the customer's records, `--wait` until they are right.
async fn verify(cfg: &Config, domain: &str, wait: bool, timeout: u64, interval: u64) -> Result<u8> {
    let p = &cfg.provider;
    let domain = onboard::validate_domain(domain)?;
    let store = open_store(cfg)?;
    let Some(row) = store.domain(&domain)? else {
        bail!("{domain} is not onboarded: run `mailstamp onboard add {domain} --account ID` first");
    };
    // No cache: the customer may have published a record a minute ago.
    let dns = Authority::with_cache(&cfg.dns, &Default::default(), false)?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let problems = onboard::check(&dns, p, &domain, &row.account).await;
        if problems.is_empty() {
            store.set_active(&domain, util::now())?;
            println!(
                "{domain}: active (account {}): MX and writer CNAME verified",
                row.account
            );
            return Ok(0);
        }
        let temporary = problems.iter().all(|p| matches!(p, Problem::Dns(_)));
        if !wait || Instant::now() >= deadline {
            eprintln!("{domain}: still {:?}; DNS is not right yet:", row.status);
            for pr in &problems {
                eprintln!("  - {pr}");
            }
            return Ok(if temporary { 75 } else { 3 });
        }
        eprintln!(
            "{domain}: {} record(s) not right yet; checking again in {interval}s",
            problems.len()
        );
        tokio::time::sleep(Duration::from_secs(interval.max(1))).await;
    }
}
