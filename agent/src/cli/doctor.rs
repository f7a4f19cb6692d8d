// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp doctor`: runs the deployment checks of `mailstamp::doctor` and prints one line
//! per check (`ok` / `warn` / `FAIL`, what was found, what to do), or one JSON object.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mailstamp::config::Overrides;
use mailstamp::doctor::{self, Options, Summary};

/// `mailstamp doctor` flags.
#[derive(Args)]
pub(crate) struct DoctorArgs {
    /// Also check the writer record of this domain (repeat); `[trust]`'s domains and, in
    /// provider mode, the active customer domains are always checked.
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// A listen address to try binding (repeat): inet:HOST:PORT, unix:/path or HOST:PORT
    /// (default: relay.listen).
    #[arg(long)]
    listen: Vec<String>,
    /// Postfix's configuration directory (where main.cf is; `postconf -c DIR`). Default: the
    /// system's, when Postfix is installed.
    #[arg(long)]
    postfix_config: Option<PathBuf>,
    /// Encrypted keystore of the writer (else writer.keystore or MAILSTAMP_PRIVATE_KEY).
    #[arg(long)]
    keystore: Option<PathBuf>,
    /// One JSON object: {"ok": bool, "checks": [{name, status, detail, fix}]}.
    #[arg(long)]
    json: bool,
}

/// Exit status: 0 when every check passed (warnings allowed), 1 otherwise.
pub(crate) async fn run(config: Option<PathBuf>, over: Overrides, args: DoctorArgs) -> Result<u8> {
    let opts = Options {
        config,
        over,
        keystore: args.keystore,
        domains: args.domains,
        listen: args.listen,
        postfix: args.postfix_config,
    };
    let checks = doctor::run(&opts).await;
    let ok = doctor::all_pass(&checks);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Summary {
                ok,
                checks: &checks
            })?
        );
    } else {
        let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &checks {
            let fix = c
                .fix
                .as_deref()
                .map(|f| format!(" -> fix: {f}"))
                .unwrap_or_default();
            println!(
                "{:<4}  {:<width$}  {}{fix}",
                c.status.as_str(),
                c.name,
                c.detail
            );
        }
    }
    Ok(if ok { 0 } else { 1 })
}
