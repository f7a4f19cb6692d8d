// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp`: the command-line face of the agent. It parses flags, loads the configuration
//! and key, and prints; the work is done in the library. One file per verb family in `cli/`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use alloy::primitives::Address;
use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use mailstamp::config::{Config, Confirmations, LogConfig, Overrides};
use mailstamp_core::Envelope;

mod cli;

use cli::{onboard as onboard_cmd, people as people_cmd, recover as recover_cmd};

/// Exit status of `verify`: the most severe verdict among the messages.
const EXIT_HELP: &str = "Exit status of verify: 0 all wanted; 10 suspect; 11 unstamped; 15 inapplicable (a sound \
stamp that does not apply here: a forward or list without an agent); 12 invalid; 13 spam; 14 temperror (the most \
severe among the messages wins: 0, 1, 10, 11, 15, 12, 13, 14). 1: error (config, I/O, chain); 2: bad usage.";

#[derive(Parser)]
#[command(name = "mailstamp", version, about = "Stamp outgoing mail on an EVM chain; verify incoming mail against its stamp.", after_help = EXIT_HELP)]
struct Cli {
    /// Configuration file (TOML; see mailstamp.example.toml).
    #[arg(long, short, env = "MAILSTAMP_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// JSON-RPC endpoint (overrides chain.rpc_url and chain.rpc_urls, with chain.quorum 1).
    #[arg(long, env = "MAILSTAMP_RPC_URL", global = true)]
    rpc_url: Option<String>,
    /// Registry contract address (overrides chain.registry).
    #[arg(long, env = "MAILSTAMP_REGISTRY", global = true)]
    registry: Option<Address>,
    /// When a record counts: a depth (1 = latest block) or latest|safe|finalized.
    #[arg(long, env = "MAILSTAMP_CONFIRMATIONS", global = true)]
    confirmations: Option<Confirmations>,
    /// The agent's state file (overrides store.path).
    #[arg(long, env = "MAILSTAMP_STORE", global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deploy the StampRegistry (via the CREATE2 deployer: same address on every chain).
    Deploy {
        /// Encrypted keystore of the deployer (else MAILSTAMP_PRIVATE_KEY).
        #[arg(long)]
        keystore: Option<PathBuf>,
        /// Deploy with a plain CREATE (for chains without the CREATE2 deployer).
        #[arg(long)]
        no_create2: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Stamp messages: stdin to stdout, or FILES into --out-dir.
    Stamp {
        /// Message files (none or `-`: read stdin, write stdout).
        files: Vec<PathBuf>,
        /// Directory for stamped copies (required with files).
        #[arg(long, short)]
        out_dir: Option<PathBuf>,
        /// Envelope recipient (repeat); default: the To, Cc and Bcc addresses.
        #[arg(long = "rcpt")]
        rcpts: Vec<String>,
        /// IP address this server delivers the message from (its egress address); stamps the
        /// `origin` component, which receivers compare with their SMTP client IP.
        #[arg(long)]
        client_ip: Option<IpAddr>,
        /// Encrypted keystore of the writer (else writer.keystore or MAILSTAMP_PRIVATE_KEY).
        #[arg(long)]
        keystore: Option<PathBuf>,
        /// Print one JSON object per message on stdout (files mode).
        #[arg(long)]
        json: bool,
        /// Batched mode: one Merkle root for all FILES, anchored in one transaction; each
        /// header carries its proof. Needs the store (journal) and --out-dir.
        #[arg(long, conflicts_with = "resume")]
        batch: bool,
        /// Finish batches a crash left pending (anchor once, deliver the spooled messages).
        #[arg(long)]
        resume: bool,
    },
    /// Verify messages against their stamps.
    #[command(after_help = EXIT_HELP)]
    Verify {
        /// Message files or directories (none or `-`: stdin).
        paths: Vec<PathBuf>,
        /// Envelope recipient as received (repeat); default: X-Original-To / Delivered-To,
        /// else To/Cc.
        #[arg(long = "rcpt")]
        rcpts: Vec<String>,
        /// Client IP of the receiving session (checks the `origin` component).
        #[arg(long)]
        client_ip: Option<IpAddr>,
        /// Verify as of this unix time (default: now), for the replay check.
        #[arg(long)]
        at: Option<u64>,
        /// One JSON object per message instead of a table.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for a record not confirmed or not found yet (default:
        /// verify.confirm_wait_secs).
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Seconds during which a stamp without a record is `temperror`, counted from now: a
        /// one-shot check has no earlier sighting (default: verify.missing_grace_secs; 0 calls
        /// a missing record `spam` at once, for a chain known to be settled).
        #[arg(long, value_name = "SECS")]
        grace: Option<u64>,
    },
    /// Run beside an MTA as a milter: stamp outbound mail, verify inbound mail, apply the
    /// connection / sender / recipient maps ([milter] and [maps] in the config; docs/MTA.md).
    /// SIGHUP reloads the config and maps; SIGTERM stops after the commands under way.
    Milter {
        /// Where to listen: inet:HOST:PORT (port 0: any free port) or unix:/path/to/socket.
        #[arg(long)]
        listen: String,
        /// Encrypted keystore of the writer (else writer.keystore or MAILSTAMP_PRIVATE_KEY;
        /// without a key outbound mail meets milter.on_stamp_error).
        #[arg(long)]
        keystore: Option<PathBuf>,
    },
    /// Run as an SMTP hop for MTAs without milter support: take mail, stamp outbound /
    /// verify inbound exactly as the milter does, forward to relay.next_hop ([relay], [milter]
    /// and [maps] in the config; docs/MTA.md). SIGHUP reloads; SIGTERM stops after the
    /// messages under way.
    Relay {
        /// Where to listen, HOST:PORT (default: relay.listen; port 0: any free port).
        #[arg(long)]
        listen: Option<String>,
        /// Encrypted keystore of the writer (else writer.keystore or MAILSTAMP_PRIVATE_KEY;
        /// without a key outbound mail meets milter.on_stamp_error).
        #[arg(long)]
        keystore: Option<PathBuf>,
    },
    /// Show the on-chain record of a stamp: by token, or by a stamped message file; or, with
    /// --serve, the read-only audit page in a browser (docs/AUDIT.md).
    Audit {
        /// A token (0x + 64 hex) or a message file.
        #[arg(required_unless_present = "serve", conflicts_with = "serve")]
        target: Option<String>,
        /// Serve the audit page (a writer's stamps and anchors, one record, verify a dropped
        /// message, health) on audit.listen, loopback by default. Read-only: no key is needed;
        /// a configured key only names the writer shown first and its balance.
        #[arg(long)]
        serve: bool,
        /// Where the page listens, HOST:PORT (default: audit.listen; port 0: any free port).
        #[arg(long, requires = "serve")]
        listen: Option<String>,
        /// Allow a non-loopback --listen address and any Host name (put a TLS proxy in front).
        #[arg(long, requires = "serve")]
        public: bool,
        /// Encrypted keystore of the writer to show (else writer.keystore or
        /// MAILSTAMP_PRIVATE_KEY when set); only its address is kept.
        #[arg(long, requires = "serve")]
        keystore: Option<PathBuf>,
        /// The writer, when auditing by token (default: any writer).
        #[arg(long)]
        writer: Option<Address>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Onboard customer domains (provider mode): account-specific DNS names, proof of control.
    #[command(subcommand)]
    Onboard(onboard_cmd::OnboardCmd),
    /// Re-examine mail another filter filed as spam (a Maildir folder such as Junk) against
    /// stamps, authorised senders and the allowlist: release (back to the inbox) or keep,
    /// with a reason. Dry run unless --apply (docs/MTA.md, "Recovery").
    Recover(recover_cmd::RecoverArgs),
    /// Each user's authorised senders (seed 003): unstamped mail from them (authenticated)
    /// goes to the inbox.
    #[command(subcommand)]
    Senders(people_cmd::SendersCmd),
    /// The self-training allowlist (seed 004): look at and correct what outbound mail taught.
    #[command(subcommand)]
    Allowlist(people_cmd::AllowlistCmd),
    /// Each user's other addresses that forward to them without an agent (issue 13): mail
    /// stamped for one of them that arrives for the user was addressed to the user.
    #[command(subcommand)]
    Forwards(people_cmd::ForwardsCmd),
    /// Check a deployment and say what to fix: config, RPC and chain id, registry, writer key
    /// and balance, store, each domain's writer record, listen addresses. Exit 0 when every
    /// check passes (warnings allowed), 1 otherwise.
    Doctor(cli::doctor::DoctorArgs),
    /// The store several hosts share (store.url): list the hosts, take over one that is gone.
    #[command(subcommand)]
    Store(cli::store::StoreCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The log format comes from the config file's [log], read before the whole file is loaded
    // and checked (a mistake in it is reported by that load, in the format chosen here).
    let format = cli
        .config
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| LogConfig::peek(&t).format)
        .unwrap_or_default();
    cli::init_logs(format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            cli::notice_error(format_args!(
                "mailstamp: cannot start the async runtime: {e}"
            ));
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            cli::notice_error(format_args!("mailstamp: {e:#}"));
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<u8> {
    let over = Overrides {
        rpc_url: cli.rpc_url,
        registry: cli.registry,
        confirmations: cli.confirmations,
        store: cli.store,
    };
    // The milter reads [milter] and [maps] from the same file, and reloads it on SIGHUP.
    if let Cmd::Milter { listen, keystore } = cli.cmd {
        let listen = cli::daemon::Listen::Milter(listen);
        return cli::daemon::run(cli.config, over, listen, keystore.as_deref()).await;
    }
    if let Cmd::Relay { listen, keystore } = cli.cmd {
        let listen = cli::daemon::Listen::Relay(listen);
        return cli::daemon::run(cli.config, over, listen, keystore.as_deref()).await;
    }
    // The doctor loads the config itself: a mistake in it is its first finding.
    if let Cmd::Doctor(args) = cli.cmd {
        return cli::doctor::run(cli.config, over, args).await;
    }
    let cfg = Config::load(cli.config.as_deref(), &over)?;
    match cli.cmd {
        Cmd::Milter { .. } => bail!("the milter is started before the config is loaded"),
        Cmd::Relay { .. } => bail!("the relay is started before the config is loaded"),
        Cmd::Doctor(_) => bail!("the doctor is run before the config is loaded"),
        Cmd::Deploy {
            keystore,
            no_create2,
            json,
        } => cli::deploy::run(&cfg, keystore.as_deref(), !no_create2, json).await,
        Cmd::Stamp {
            files,
            out_dir,
            rcpts,
            client_ip,
            keystore,
            json,
            batch,
            resume,
        } => {
            let env = Envelope { rcpts, client_ip };
            if batch || resume {
                return cli::stamp::batched(
                    &cfg,
                    keystore.as_deref(),
                    &files,
                    out_dir.as_deref(),
                    &env,
                    resume,
                )
                .await;
            }
            cli::stamp::run(
                &cfg,
                keystore.as_deref(),
                &files,
                out_dir.as_deref(),
                &env,
                json,
            )
            .await
        }
        Cmd::Verify {
            paths,
            rcpts,
            client_ip,
            at,
            json,
            wait,
            grace,
        } => {
            let env = Envelope { rcpts, client_ip };
            let mut cfg = cfg;
            if let Some(w) = wait {
                cfg.verify.confirm_wait_secs = w;
            }
            if let Some(g) = grace {
                cfg.verify.missing_grace_secs = g;
            }
            cli::verify::run(&cfg, &paths, &env, at, json).await
        }
        Cmd::Audit {
            target,
            writer,
            json,
            serve,
            listen,
            public,
            keystore,
        } => match target {
            Some(target) if !serve => cli::audit::run(&cfg, &target, writer, json).await,
            _ => {
                let opts = cli::audit::ServeArgs {
                    listen,
                    public,
                    writer,
                    keystore,
                };
                cli::audit::serve(cfg, opts).await
            }
        },
        Cmd::Onboard(cmd) => onboard_cmd::run(&cfg, cmd).await,
        Cmd::Recover(args) => recover_cmd::run(&cfg, args).await,
        Cmd::Senders(cmd) => people_cmd::senders(&cfg, cmd),
        Cmd::Allowlist(cmd) => people_cmd::allowlist(&cfg, cmd),
        Cmd::Forwards(cmd) => people_cmd::forwards(&cfg, cmd),
        Cmd::Store(cmd) => cli::store::run(&cfg, cmd),
    }
}
