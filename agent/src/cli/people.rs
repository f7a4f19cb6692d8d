// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp senders …`, `mailstamp allowlist …` and `mailstamp forwards …`: the CLI faces of
//! `mailstamp::people::senders` (seed 003), `mailstamp::people::allowlist` (seed 004) and
//! `mailstamp::people::forwards` (issue 13).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use mailstamp::{
    config::Config,
    people::allowlist::{self, AllowlistEntry},
    people::{forwards, normalise_address, senders},
    store::Store,
    util,
};

#[derive(Subcommand)]
pub(crate) enum SendersCmd {
    /// Authorise senders for a user: addresses (ann@example.org) or whole domains
    /// (example.org or @example.org).
    Add {
        /// The local user (their address).
        #[arg(long)]
        user: String,
        /// Addresses or domains.
        #[arg(required = true)]
        senders: Vec<String>,
    },
    /// Remove authorised senders of a user.
    Remove {
        /// The local user (their address).
        #[arg(long)]
        user: String,
        /// Addresses or domains, as added.
        #[arg(required = true)]
        senders: Vec<String>,
    },
    /// List authorised senders (of one user, or everyone's).
    List {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// One JSON object per entry.
        #[arg(long)]
        json: bool,
    },
    /// Import authorised senders from a file: one address or domain a line, `#` comments.
    /// A bad line stops the import before anything is added.
    Import {
        /// The local user (their address).
        #[arg(long)]
        user: String,
        /// The file (`-` for standard input).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum ForwardsCmd {
    /// Add a user's other addresses: addresses whose mail is resent to the user by a server
    /// that runs no mailstamp agent (an alias or `.forward` at another provider).
    Add {
        /// The local user (their address here).
        #[arg(long)]
        user: String,
        /// Their other addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Remove other addresses of a user.
    Remove {
        /// The local user (their address here).
        #[arg(long)]
        user: String,
        /// Other addresses, as added.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// List other addresses (of one user, or everyone's).
    List {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// One JSON object per entry.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum AllowlistCmd {
    /// List allowlist entries (of one user, or everyone's), most recent first.
    List {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// One JSON object per entry.
        #[arg(long)]
        json: bool,
    },
    /// Show one entry.
    Show {
        /// The local user (their address).
        #[arg(long)]
        user: String,
        /// The correspondent's address.
        correspondent: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Forget one correspondent of a user, or with --all every entry of the user.
    Forget {
        /// The local user (their address).
        #[arg(long)]
        user: String,
        /// The correspondent's address.
        correspondent: Option<String>,
        /// Forget every entry of the user.
        #[arg(long, conflicts_with = "correspondent")]
        all: bool,
    },
    /// Delete the entries idle longer than allowlist.expire_days now (the milter also does it
    /// as it learns).
    Expire,
}

fn open_store(cfg: &Config) -> Result<Store> {
    Store::connect(&cfg.store, None)
        .context("set store.path in the config, MAILSTAMP_STORE or --store")
}

fn user_arg(u: &str) -> Result<String> {
    normalise_address(u).map_err(|e| anyhow::anyhow!("--user: {e}"))
}

pub(crate) fn senders(cfg: &Config, cmd: SendersCmd) -> Result<u8> {
    match cmd {
        SendersCmd::Add { user, senders } => {
            let user = user_arg(&user)?;
            // Check them all before adding any.
            for s in &senders {
                senders::parse_pattern(s)?;
            }
            let store = open_store(cfg)?;
            for s in &senders {
                let (p, kind) = senders::parse_pattern(s)?;
                let new = store.add_sender(&user, s, None, util::now())?;
                println!(
                    "{user}: {p} ({kind:?}) {}",
                    if new {
                        "authorised"
                    } else {
                        "already authorised"
                    }
                );
            }
            Ok(0)
        }
        SendersCmd::Remove { user, senders } => {
            let user = user_arg(&user)?;
            for s in &senders {
                senders::parse_pattern(s)?;
            }
            let store = open_store(cfg)?;
            let mut missing = 0;
            for s in &senders {
                let (p, _) = senders::parse_pattern(s)?;
                if store.remove_sender(&user, s)? {
                    println!("{user}: {p} removed");
                } else {
                    eprintln!(
                        "{user}: {p} was not authorised (see `mailstamp senders list --user {user}`)"
                    );
                    missing += 1;
                }
            }
            Ok(u8::from(missing > 0))
        }
        SendersCmd::List { user, json } => {
            let user = user.as_deref().map(user_arg).transpose()?;
            let rows = open_store(cfg)?.senders(user.as_deref())?;
            for r in &rows {
                if json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!(
                        "{}\t{}\t{:?}\tadded {}{}",
                        r.user,
                        r.pattern,
                        r.kind,
                        util::rfc3339(r.added),
                        r.note
                            .as_deref()
                            .map(|n| format!("\t{n}"))
                            .unwrap_or_default()
                    );
                }
            }
            if rows.is_empty() && !json {
                eprintln!("no authorised senders");
            }
            Ok(0)
        }
        SendersCmd::Import { user, file } => {
            let user = user_arg(&user)?;
            let (text, source) = if file.as_os_str() == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                    .context("cannot read standard input")?;
                (t, "standard input".to_owned())
            } else {
                let t = std::fs::read_to_string(&file).with_context(|| {
                    format!(
                        "cannot read {} (one address or domain a line)",
                        file.display()
                    )
                })?;
                (t, file.display().to_string())
            };
            let store = open_store(cfg)?;
            let sum = senders::import(&store, &user, &text, &source, util::now())?;
            println!(
                "{user}: {} authorised senders added, {} already there",
                sum.added, sum.present
            );
            Ok(0)
        }
    }
}

fn print_entry(e: &AllowlistEntry, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
    } else {
        println!(
            "{}\t{}\t{:?}\tsent {}\treceived {}\tfirst {}\tlast {}{}",
            e.user,
            e.address,
            e.state,
            e.sent,
            e.received,
            util::rfc3339(e.first_seen),
            util::rfc3339(e.last_seen),
            e.display_name
                .as_deref()
                .map(|n| format!("\t\"{n}\""))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub(crate) fn allowlist(cfg: &Config, cmd: AllowlistCmd) -> Result<u8> {
    match cmd {
        AllowlistCmd::List { user, json } => {
            let user = user.as_deref().map(user_arg).transpose()?;
            let rows = allowlist::list(&open_store(cfg)?, user.as_deref())?;
            for e in &rows {
                print_entry(e, json)?;
            }
            if rows.is_empty() && !json {
                eprintln!("the allowlist is empty (it fills from stamped outbound mail)");
            }
            Ok(0)
        }
        AllowlistCmd::Show {
            user,
            correspondent,
            json,
        } => {
            let user = user_arg(&user)?;
            let c = normalise_address(&correspondent)?;
            match allowlist::show(&open_store(cfg)?, &user, &c)? {
                Some(e) => {
                    print_entry(&e, json)?;
                    Ok(0)
                }
                None => bail!(
                    "{user} has no allowlist entry for {c} (see `mailstamp allowlist list --user {user}`)"
                ),
            }
        }
        AllowlistCmd::Forget {
            user,
            correspondent,
            all,
        } => {
            let user = user_arg(&user)?;
            let c = match (&correspondent, all) {
                (Some(c), false) => Some(normalise_address(c)?),
                (None, true) => None,
                _ => bail!(
                    "name the correspondent to forget, or give --all to forget every entry of {user}"
                ),
            };
            let n = allowlist::forget(&open_store(cfg)?, &user, c.as_deref())?;
            if n == 0 {
                bail!(
                    "{user} has no allowlist entry {}; nothing forgotten",
                    c.map(|c| format!("for {c}")).unwrap_or_default()
                );
            }
            println!("{user}: {n} allowlist entries forgotten");
            Ok(0)
        }
        AllowlistCmd::Expire => {
            let n = allowlist::expire(&open_store(cfg)?, &cfg.allowlist, util::now())?;
            println!(
                "{n} entries idle for more than {} days deleted",
                cfg.allowlist.expire_days
            );
            Ok(0)
        }
    }
}

pub(crate) fn forwards(cfg: &Config, cmd: ForwardsCmd) -> Result<u8> {
    match cmd {
        ForwardsCmd::Add { user, addresses } => {
            let user = user_arg(&user)?;
            // Check them all before adding any.
            for a in &addresses {
                normalise_address(a)?;
            }
            let store = open_store(cfg)?;
            for a in &addresses {
                let new = forwards::add(&store, &user, a, util::now())?;
                let a = normalise_address(a)?;
                println!(
                    "{user}: {a} {}",
                    if new { "added" } else { "already listed" }
                );
            }
            Ok(0)
        }
        ForwardsCmd::Remove { user, addresses } => {
            let user = user_arg(&user)?;
            for a in &addresses {
                normalise_address(a)?;
            }
            let store = open_store(cfg)?;
            let mut missing = 0;
            for a in &addresses {
                let a = normalise_address(a)?;
                if forwards::remove(&store, &user, &a)? {
                    println!("{user}: {a} removed");
                } else {
                    eprintln!(
                        "{user}: {a} was not listed (see `mailstamp forwards list --user {user}`)"
                    );
                    missing += 1;
                }
            }
            Ok(u8::from(missing > 0))
        }
        ForwardsCmd::List { user, json } => {
            let user = user.as_deref().map(user_arg).transpose()?;
            let rows = forwards::list(&open_store(cfg)?, user.as_deref())?;
            for r in &rows {
                if json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!(
                        "{}\t{}\tadded {}",
                        r.user,
                        r.address,
                        util::rfc3339(r.added)
                    );
                }
            }
            if rows.is_empty() && !json {
                eprintln!("no other addresses");
            }
            Ok(0)
        }
    }
}
