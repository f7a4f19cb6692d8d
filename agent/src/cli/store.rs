// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp store …`: the hosts sharing a store and their journals, and the takeover of a
//! host that is gone (docs/MTA.md, "Several hosts").

use anyhow::{Context, Result};
use clap::Subcommand;
use mailstamp::{config::Config, store::Store};

#[derive(Subcommand)]
pub(crate) enum StoreCmd {
    /// Which backend and host this is, and every host with rows in the batch and watch
    /// journals: its pending batches and watched writes.
    Hosts,
    /// Take over a host that is gone: its pending batches and watched writes become this
    /// host's (store.host), recovered and watched by this host's daemons on their next start.
    /// Only for a host that will not come back under that name: run it while that host is
    /// stopped.
    Takeover {
        /// The host that is gone, as `mailstamp store hosts` lists it.
        #[arg(long)]
        from: String,
    },
}

pub(crate) fn run(cfg: &Config, cmd: StoreCmd) -> Result<u8> {
    let store = Store::connect(&cfg.store, None)
        .context("set store.path or store.url in the config, MAILSTAMP_STORE or --store")?;
    match cmd {
        StoreCmd::Hosts => {
            println!(
                "backend {}, this host: {}",
                store.backend_name(),
                store.host()
            );
            let hosts = store.hosts()?;
            if hosts.is_empty() {
                println!("no host has journal rows yet");
            }
            for (host, pending, watched) in hosts {
                let name = if host.is_empty() {
                    "(before hosts were recorded)"
                } else {
                    &host
                };
                println!("{name}\tpending batches {pending}\twatched writes {watched}");
            }
        }
        StoreCmd::Takeover { from } => {
            let (batches, watched) = store.take_over(&from)?;
            println!(
                "{} took over {batches} pending batches and {watched} watched writes from {from}; restart this host's daemons to recover them",
                store.host()
            );
        }
    }
    Ok(0)
}
