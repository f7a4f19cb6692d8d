// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp`: the command-line face of the agent. It parses flags, loads the configuration
//! and key, and prints; the work is done in the library (`mailstamp::ops`, `mailstamp::chain`).

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alloy::primitives::{Address, B256};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mailstamp::{
    chain::{self, Chain},
    config::{Config, Confirmations, Overrides},
    keys,
    ops::{self, StampContext, VerifyContext},
    store::Store,
};

mod onboard_cmd;
mod people_cmd;
mod recover_cmd;
use mailstamp_core::{Envelope, Inspection, Report, Status, Verdict, inspect};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

/// Exit status of `verify`: the most severe verdict among the messages.
const EXIT_HELP: &str = "Exit status of verify: 0 all wanted; 10 suspect; 11 unstamped; 12 invalid; 13 spam; \
14 temperror (the highest among the messages wins). 1: error (config, I/O, chain); 2: bad usage.";

#[derive(Parser)]
#[command(name = "mailstamp", version, about = "Stamp outgoing mail on an EVM chain; verify incoming mail against its stamp.", after_help = EXIT_HELP)]
struct Cli {
    /// Configuration file (TOML; see mailstamp.example.toml).
    #[arg(long, short, env = "MAILSTAMP_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// JSON-RPC endpoint (overrides chain.rpc_url).
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
    /// Show the on-chain record of a stamp: by token, or by a stamped message file.
    Audit {
        /// A token (0x + 64 hex) or a message file.
        target: String,
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAILSTAMP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailstamp: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mailstamp: {e:#}");
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
        return milter(cli.config, over, &listen, keystore.as_deref()).await;
    }
    if let Cmd::Relay { listen, keystore } = cli.cmd {
        return relay(cli.config, over, listen, keystore.as_deref()).await;
    }
    let cfg = Config::load(cli.config.as_deref(), &over)?;
    match cli.cmd {
        Cmd::Milter { .. } => bail!("the milter is started before the config is loaded"),
        Cmd::Relay { .. } => bail!("the relay is started before the config is loaded"),
        Cmd::Deploy {
            keystore,
            no_create2,
            json,
        } => deploy(&cfg, keystore.as_deref(), !no_create2, json).await,
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
                return stamp_batched(
                    &cfg,
                    keystore.as_deref(),
                    &files,
                    out_dir.as_deref(),
                    &env,
                    resume,
                )
                .await;
            }
            stamp(
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
        } => {
            let env = Envelope { rcpts, client_ip };
            verify(&cfg, &paths, &env, at, json).await
        }
        Cmd::Audit {
            target,
            writer,
            json,
        } => audit(&cfg, &target, writer, json).await,
        Cmd::Onboard(cmd) => onboard_cmd::run(&cfg, cmd).await,
        Cmd::Recover(args) => recover_cmd::run(&cfg, args).await,
        Cmd::Senders(cmd) => people_cmd::senders(&cfg, cmd),
        Cmd::Allowlist(cmd) => people_cmd::allowlist(&cfg, cmd),
    }
}

async fn deploy(cfg: &Config, keystore: Option<&Path>, create2: bool, json: bool) -> Result<u8> {
    let signer = keys::load(&cfg.writer, keystore)?;
    let timeout = std::time::Duration::from_secs(cfg.chain.timeout_secs);
    let d = chain::deploy(&cfg.chain.rpc_url, signer, create2, timeout).await?;
    if json {
        println!("{}", serde_json::to_string(&d)?);
    } else if d.already_deployed {
        println!(
            "StampRegistry already deployed at {} on chain {} (nothing to do)",
            d.address, d.chain_id
        );
    } else {
        let tx = d.tx.map(|t| t.to_string()).unwrap_or_default();
        println!(
            "StampRegistry deployed at {} on chain {} (tx {tx})",
            d.address, d.chain_id
        );
        if let Some(link) = cfg.tx_link(&tx) {
            println!("explorer: {link}");
        }
    }
    Ok(0)
}

fn read_input(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(mailstamp_core::MAX_MESSAGE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading stdin")?;
    } else {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        f.take(mailstamp_core::MAX_MESSAGE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(buf)
}

async fn stamp(
    cfg: &Config,
    keystore: Option<&Path>,
    files: &[PathBuf],
    out_dir: Option<&Path>,
    env: &Envelope,
    json: bool,
) -> Result<u8> {
    let stdin_mode = files.is_empty() || (files.len() == 1 && files[0] == Path::new("-"));
    if !stdin_mode && out_dir.is_none() {
        bail!(
            "stamping files needs --out-dir DIR for the stamped copies (or pipe one message through stdin)"
        );
    }
    let signer = keys::load(&cfg.writer, keystore)?;
    let chain = Chain::connect(&cfg.chain, cfg.registry()?, Some(signer)).await?;
    chain.check_registry().await?;
    let ctx = StampContext::from_config(cfg)?;
    if stdin_mode {
        let raw = read_input(Path::new("-"))?;
        let s = ops::stamp(&chain, &ctx, &raw, env).await?;
        std::io::stdout().write_all(&s.message)?;
        eprintln!(
            "stamped: token {} tx {} block {}",
            s.token, s.recorded.tx, s.recorded.block
        );
        return Ok(0);
    }
    let dir = out_dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut failed = 0;
    if !json {
        println!("{:<40} {:<68} {:<68} BLOCK", "FILE", "TOKEN", "TX");
    }
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "message".into());
        let r = async {
            let raw = read_input(f)?;
            let s = ops::stamp(&chain, &ctx, &raw, env).await?;
            let out = dir.join(&name);
            std::fs::write(&out, &s.message)
                .with_context(|| format!("cannot write {}", out.display()))?;
            Ok::<_, anyhow::Error>(s)
        }
        .await;
        match r {
            Ok(s) if json => println!(
                "{}",
                json!({"file": f, "token": s.token, "tx": s.recorded.tx, "block": s.recorded.block,
                       "explorer": cfg.tx_link(&s.recorded.tx.to_string())})
            ),
            Ok(s) => println!(
                "{name:<40} {:<68} {:<68} {}",
                s.token.to_string(),
                s.recorded.tx.to_string(),
                s.recorded.block
            ),
            Err(e) => {
                failed += 1;
                eprintln!("mailstamp: {}: {e:#}", f.display());
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// `stamp --batch` and `stamp --resume`.
async fn stamp_batched(
    cfg: &Config,
    keystore: Option<&Path>,
    files: &[PathBuf],
    out_dir: Option<&Path>,
    env: &Envelope,
    resume: bool,
) -> Result<u8> {
    let store = Store::open(&cfg.store.path)
        .context("batched mode journals in the store (store.path / --store)")?;
    let signer = keys::load(&cfg.writer, keystore)?;
    let chain = Chain::connect(&cfg.chain, cfg.registry()?, Some(signer)).await?;
    chain.check_registry().await?;
    if resume {
        let done = ops::resume_batches(&chain, &store).await?;
        if done.is_empty() {
            println!("no pending batch");
        }
        for (row, rec) in done {
            match rec {
                Some(r) => println!(
                    "batch {} ({} stamps): anchored now in tx {} block {}, delivered to {}",
                    row.batch_id, row.size, r.tx, r.block, row.out_dir
                ),
                None => println!(
                    "batch {} ({} stamps): already anchored; delivered to {}",
                    row.batch_id, row.size, row.out_dir
                ),
            }
        }
        return Ok(0);
    }
    let dir = out_dir.context("batched stamping needs --out-dir DIR")?;
    if files.is_empty() {
        bail!("batched stamping takes message files (stdin holds only one message)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut inputs = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "message".into());
        inputs.push(ops::BatchInput {
            name,
            raw: read_input(f)?,
            env: env.clone(),
        });
    }
    let out = ops::stamp_batch(
        &chain,
        &StampContext::from_config(cfg)?,
        &store,
        inputs,
        dir,
    )
    .await?;
    for (name, why) in &out.refused {
        eprintln!("mailstamp: {name}: {why}");
    }
    let tx = out
        .recorded
        .as_ref()
        .map(|r| r.tx.to_string())
        .unwrap_or_else(|| "-".into());
    println!(
        "batch {} of {} stamps anchored in tx {tx} → {}",
        out.batch,
        out.size,
        dir.display()
    );
    if let Some(link) = cfg.tx_link(&tx) {
        println!("explorer: {link}");
    }
    Ok(if out.refused.is_empty() { 0 } else { 1 })
}

fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Ok(vec![PathBuf::from("-")]);
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn exit_code(v: Verdict) -> u8 {
    match v {
        Verdict::Wanted => 0,
        Verdict::Suspect => 10,
        Verdict::Unstamped => 11,
        Verdict::Invalid => 12,
        Verdict::Spam => 13,
        Verdict::Temperror => 14,
    }
}

fn differing(r: &Report) -> String {
    let d: Vec<&str> = r
        .components
        .iter()
        .filter(|c| {
            !matches!(
                c.status,
                Status::Match | Status::Explained | Status::Unavailable
            )
        })
        .map(|c| c.name.as_str())
        .collect();
    d.join(",")
}

async fn verify(
    cfg: &Config,
    paths: &[PathBuf],
    env: &Envelope,
    at: Option<u64>,
    json: bool,
) -> Result<u8> {
    let files = expand(paths)?;
    // A chain that cannot be reached is not an error here: each message becomes `temperror`.
    let registry = cfg.registry()?;
    let chain = Chain::connect(&cfg.chain, registry, None)
        .await
        .map_err(|e| format!("{e:#}"));
    let ctx = VerifyContext::from_config(cfg, Some(at.unwrap_or_else(ops::now)))?;
    if !json {
        println!(
            "{:<36} {:<10} {:>5}  {:<28} {:<14} REASON",
            "FILE", "VERDICT", "SCORE", "DIFFERS", "TX"
        );
    }
    let mut worst = 0u8;
    for f in &files {
        let raw = match read_input(f) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("mailstamp: {e:#}");
                worst = worst.max(1);
                continue;
            }
        };
        let report = ops::verify(chain.as_ref().map_err(String::as_str), &ctx, &raw, env).await;
        let ev = match &chain {
            Ok(c) => ops::recording_tx(c, &report, cfg.chain.from_block).await,
            Err(_) => None,
        };
        let (tx, block) = (ev.as_ref().map(|e| e.tx), ev.as_ref().map(|e| e.block));
        worst = worst.max(exit_code(report.verdict));
        let file = f.display().to_string();
        if json {
            let s = report.stamp.as_ref();
            let comps: Vec<_> = report
                .components
                .iter()
                .map(|c| json!({"name": c.name, "match": c.status, "weight": c.weight, "note": c.note}))
                .collect();
            println!(
                "{}",
                json!({
                    "file": file, "verdict": report.verdict, "score": report.score, "reason": report.reason,
                    "components": comps,
                    "chain_id": s.map(|s| s.chain_id), "registry": s.map(|s| &s.registry),
                    "writer": s.map(|s| &s.writer), "token": s.map(|s| &s.token),
                    "time": s.and_then(|s| s.time),
                    "writer_auth": report.writer_auth.as_ref().map(|w| w.as_str()),
                    "writer_auth_detail": report.writer_auth.as_ref().map(|w| w.detail()), "tx": tx, "block": block,
                    "explorer": tx.and_then(|t| cfg.tx_link(&t.to_string())),
                })
            );
        } else {
            let name = Path::new(&file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(file.clone());
            let score = report
                .score
                .map(|s| format!("{s:.2}"))
                .unwrap_or_else(|| "-".into());
            let txs = tx
                .map(|t| {
                    let s = t.to_string();
                    format!("{}…{}", &s[..8], &s[s.len() - 4..])
                })
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<36} {:<10} {:>5}  {:<28} {:<14} {}",
                trunc(&name, 36),
                report.verdict.as_str(),
                score,
                trunc(&differing(&report), 28),
                txs,
                report.reason.as_deref().unwrap_or("")
            );
        }
    }
    Ok(worst)
}

fn trunc(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

async fn audit(cfg: &Config, target: &str, writer: Option<Address>, json: bool) -> Result<u8> {
    let chain = Chain::connect(&cfg.chain, cfg.registry()?, None).await?;
    let (key, writer, header) = if Path::new(target).is_file() {
        let raw = read_input(Path::new(target))?;
        let msg = mailstamp_core::parse(&raw).context("not an RFC 5322 message")?;
        match inspect(&msg) {
            Inspection::Stamped(h) => (
                chain::RecordKey::of(&h),
                Some(Address::from(h.writer)),
                Some(h),
            ),
            Inspection::Unstamped => bail!("{target} has no Mail-Stamp header"),
            Inspection::Invalid(why) => bail!("{target}: Mail-Stamp header does not decode: {why}"),
        }
    } else {
        let t: B256 = target.parse().with_context(|| {
            format!("`{target}` is neither a file nor a token (0x followed by 64 hex digits)")
        })?;
        (chain::RecordKey::Stamp(t), writer, None)
    };
    let (token, batch) = match key {
        chain::RecordKey::Stamp(t) => (t, None),
        chain::RecordKey::Batch(b) => (
            B256::from(header.as_ref().map(|h| h.token()).unwrap_or_default()),
            Some(b),
        ),
    };
    // Find the event first: it names the writer when only the token is known.
    let ev = chain.find_event(writer, key, cfg.chain.from_block).await?;
    let Some((w, rec)) = ev else {
        bail!(
            "no event for {key:?} in registry {} from block {}",
            chain.registry,
            cfg.chain.from_block
        );
    };
    let lookup = chain.lookup(w, key).await;
    let (commitment, time) = match &lookup {
        mailstamp_core::Lookup::Found { commitment, time } => {
            (Some(format!("0x{}", hex::encode(commitment))), Some(*time))
        }
        _ => (None, chain.block_time(rec.block).await.ok().flatten()),
    };
    // The record holds the commitment (direct) or the batch root its proof leads to.
    let matches = header.as_ref().map(|h| {
        commitment.as_deref()
            == Some(&format!(
                "0x{}",
                hex::encode(mailstamp_core::verify::recorded_value(h))
            ))
    });
    let confirmed = matches!(lookup, mailstamp_core::Lookup::Found { .. });
    let link = cfg.tx_link(&rec.tx.to_string());
    if json {
        println!(
            "{}",
            json!({"chain_id": chain.chain_id, "registry": chain.registry, "writer": w, "token": token, "batch": batch,
                   "commitment": commitment, "time": time, "block": rec.block, "tx": rec.tx,
                   "confirmed": confirmed, "header_matches": matches, "explorer": link})
        );
    } else {
        println!("chain       {}", chain.chain_id);
        println!("registry    {}", chain.registry);
        println!("writer      {w}");
        println!("token       {token}");
        if let Some(b) = batch {
            println!(
                "batch       {b} (the record is the batch root; the header carries the proof)"
            );
        }
        println!(
            "commitment  {}",
            commitment.as_deref().unwrap_or("(not confirmed yet)")
        );
        if let Some(t) = time {
            println!("time        {} ({t})", ops::rfc3339(t));
        }
        println!("block       {}", rec.block);
        println!("tx          {}", rec.tx);
        println!("confirmed   {}", if confirmed { "yes" } else { "no" });
        if let Some(m) = matches {
            println!(
                "header      {}",
                if m {
                    "matches the record"
                } else {
                    "DOES NOT match the record"
                }
            );
        }
        if let Some(l) = link {
            println!("explorer    {l}");
        }
    }
    Ok(0)
}

/// The settings of a daemon and its writer key, if one is configured: without one it still
/// verifies inbound mail, and outbound mail follows `milter.on_stamp_error`.
fn daemon_settings(
    what: &str,
    config: Option<&Path>,
    over: &Overrides,
    keystore: Option<&Path>,
) -> Result<(
    mailstamp::milter::Settings,
    Option<alloy::signers::local::PrivateKeySigner>,
)> {
    let settings = mailstamp::milter::Settings::load(config, over)?;
    let has_key = keystore.is_some()
        || settings.cfg.writer.keystore.is_some()
        || std::env::var_os(keys::PRIVATE_KEY_ENV).is_some();
    let signer = if has_key {
        Some(keys::load(&settings.cfg.writer, keystore)?)
    } else {
        eprintln!(
            "mailstamp {what}: no writer key: outbound mail cannot be stamped (milter.on_stamp_error applies)"
        );
        None
    };
    Ok((settings, signer))
}

/// How often the daemons delete old ended batches from the journal (`stamp.journal_retention_days`).
const JOURNAL_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// `mailstamp milter`: binds, serves until SIGTERM/SIGINT, reloads on SIGHUP.
async fn milter(
    config: Option<PathBuf>,
    over: Overrides,
    listen: &str,
    keystore: Option<&Path>,
) -> Result<u8> {
    use mailstamp::milter::{self, Milter};
    let (settings, signer) = daemon_settings("milter", config.as_deref(), &over, keystore)?;
    let m = std::sync::Arc::new(
        Milter::new(settings, signer, config.map(|p| (p, over)))
            .with_owner(format!("milter {listen}")),
    );
    // The batches a previous run left are read before serving, and dealt with beside it:
    // the MTA must not see the milter missing while an anchor waits for the chain.
    let pending = m.pending_batches().await;
    let (listener, addr) = milter::bind(listen).await?;
    eprintln!("mailstamp milter: listening on {addr}");
    let rm = m.clone();
    tokio::spawn(async move {
        let r = match pending {
            Ok(p) => rm.recover_batches(p).await,
            Err(e) => Err(e),
        };
        report_recovery("milter", r);
        loop {
            if let Err(e) = rm.prune_journal().await {
                eprintln!("mailstamp milter: cannot prune the batch journal: {e:#}");
            }
            tokio::time::sleep(JOURNAL_PRUNE_EVERY).await;
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(milter::run(
        listener,
        m.clone(),
        stop.clone().cancelled_owned(),
    ));
    let result = supervise("milter", server, stop, || m.reload()).await;
    milter::unbind(listen);
    result
}

/// `mailstamp relay`: binds, serves until SIGTERM/SIGINT, reloads on SIGHUP.
async fn relay(
    config: Option<PathBuf>,
    over: Overrides,
    listen: Option<String>,
    keystore: Option<&Path>,
) -> Result<u8> {
    use mailstamp::relay::{self, Relay};
    let (settings, signer) = daemon_settings("relay", config.as_deref(), &over, keystore)?;
    let listen = listen.unwrap_or_else(|| settings.cfg.relay.listen.clone());
    let next_hop = settings.cfg.relay.next_hop.clone();
    let r = std::sync::Arc::new(
        Relay::new(settings, signer, config.map(|p| (p, over)))?
            .with_owner(format!("relay {listen}")),
    );
    let pending = r.pending_batches().await;
    let (listener, addr) = relay::bind(&listen).await?;
    eprintln!("mailstamp relay: listening on {addr}, next hop {next_hop}");
    let rr = r.clone();
    tokio::spawn(async move {
        let res = match pending {
            Ok(p) => rr.recover_batches(p).await,
            Err(e) => Err(e),
        };
        report_recovery("relay", res);
        loop {
            if let Err(e) = rr.prune_journal().await {
                eprintln!("mailstamp relay: cannot prune the batch journal: {e:#}");
            }
            tokio::time::sleep(JOURNAL_PRUNE_EVERY).await;
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(relay::run(
        listener,
        r.clone(),
        stop.clone().cancelled_owned(),
    ));
    supervise("relay", server, stop, || r.reload()).await
}

/// Says what became of the batches a previous run left pending (batched mode). A failure is
/// not fatal: the daemon still serves, and the batches wait for the next start.
fn report_recovery(what: &str, r: Result<Vec<mailstamp::batcher::Recovered>>) {
    match r {
        Ok(done) => {
            for b in done {
                eprintln!(
                    "mailstamp {what}: pending batch {} ({} leaves): {}{}",
                    b.batch,
                    b.leaves,
                    b.outcome,
                    b.tx.map(|t| format!(", tx {t}")).unwrap_or_default()
                );
            }
        }
        Err(e) => eprintln!("mailstamp {what}: {e:#}"),
    }
}

/// Runs a daemon until SIGTERM or SIGINT (graceful: the server is told to stop and awaited)
/// or until it ends by itself; SIGHUP calls `reload`, and a failed reload keeps the old config.
async fn supervise<F: std::future::Future<Output = Result<()>>>(
    what: &str,
    mut server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio_util::sync::CancellationToken,
    reload: impl Fn() -> F,
) -> Result<u8> {
    let (mut term, mut int, mut hup) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
        signal(SignalKind::hangup())?,
    );
    let result = loop {
        tokio::select! {
            _ = term.recv() => break Ok(0),
            _ = int.recv() => break Ok(0),
            _ = hup.recv() => match reload().await {
                Ok(()) => eprintln!("mailstamp {what}: reloaded the config and maps"),
                Err(e) => eprintln!("mailstamp {what}: reload failed, the old config and maps stay in force: {e:#}"),
            },
            res = &mut server => break match res {
                Ok(Ok(())) => Ok(0),
                Ok(Err(e)) => Err(anyhow::anyhow!("the {what} stopped: {e}")),
                Err(e) => Err(anyhow::anyhow!("the {what} task failed: {e}")),
            },
        }
    };
    stop.cancel();
    if !server.is_finished() {
        let _ = server.await;
    }
    eprintln!("mailstamp {what}: stopped");
    result
}
