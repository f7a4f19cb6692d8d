// SPDX-License-Identifier: GPL-3.0-or-later
//! The operations behind the CLI verbs, on one message at a time: stamp (decompose, record,
//! add the header) and verify (find the stamp, ask the chain, decide). The milter and relay
//! will call the same functions.

use alloy::primitives::{Address, B256, FixedBytes};
use anyhow::{Context, Result, bail};
use mailstamp_core::{
    ChainRef, Envelope, Inspection, Lookup, MAX_MESSAGE_BYTES, Policy, Report, Selection, Verdict,
    evaluate, insert_header, inspect, parse, prepare,
};

use std::sync::Arc;

use mailstamp_core::WriterAuth;
use mailstamp_core::writers::{RECORD_LABEL, WriterRecord};

use crate::chain::{Chain, RecordKey, Recorded};
use crate::config::Config;
use crate::dns::Authority;
use crate::store::{BatchRow, Store};

/// A stamped message and where its record landed.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// The message with its `Mail-Stamp:` header.
    pub message: Vec<u8>,
    /// The registry key.
    pub token: B256,
    /// The recording transaction (for a batched stamp, its batch's anchor).
    pub recorded: Recorded,
    /// Batched mode: the batch and the message's leaf index in it.
    pub batch: Option<(B256, u32)>,
}

/// A fresh per-message salt from the operating system's CSPRNG.
pub fn fresh_salt() -> Result<mailstamp_core::digest::Salt> {
    let mut salt = [0u8; mailstamp_core::digest::SALT_LEN];
    getrandom::fill(&mut salt)
        .map_err(|e| anyhow::anyhow!("the system random generator failed: {e}"))?;
    Ok(salt)
}

/// What outbound stamping needs besides the chain.
#[derive(Clone, Debug)]
pub struct StampContext {
    /// Families to stamp.
    pub selection: Selection,
    /// Writer records and the trust map.
    pub authority: Authority,
    /// Refuse From domains that do not list our writer.
    pub check_writer: bool,
    /// Provider mode: stamp only for active customer domains.
    pub active_only: Option<Arc<Store>>,
}

impl StampContext {
    /// Outbound options from the config: selection, writer check, provider mode (which opens
    /// the store). Build it once and reuse it: it holds the resolver and its cache.
    pub fn from_config(cfg: &Config) -> Result<Self> {
        let active_only = if cfg.provider.enabled {
            let store = Store::open(&cfg.store.path)
                .context("provider mode needs the store (store.path / --store)")?;
            Some(Arc::new(store))
        } else {
            None
        };
        Ok(Self {
            selection: cfg.stamp.selection(),
            authority: Authority::new(&cfg.dns, &cfg.trust)?,
            check_writer: cfg.stamp.check_writer,
            active_only,
        })
    }
}

/// Stamps one message: checks that we may write for its From domain, computes the components
/// with a fresh salt, records the commitment, and returns the message with the header only once
/// the record is in a block.
pub async fn stamp(
    chain: &Chain,
    ctx: &StampContext,
    raw: &[u8],
    env: &Envelope,
) -> Result<Stamped> {
    let writer = chain.writer.context("stamping needs a writer key")?;
    let p = check_and_prepare(ctx, writer, &chain.chain_ref(writer), raw, env).await?;
    let recorded = chain
        .stamp(B256::from(p.token), FixedBytes::from(p.commitment))
        .await?;
    Ok(Stamped {
        message: insert_header(raw, &p.header),
        token: B256::from(p.token),
        recorded,
        batch: None,
    })
}

/// Stamps one message in batched mode (docs/PROTOCOL.md §5a) through the daemon's shared
/// `batcher`: the same checks and preparation as [`stamp`], then the commitment goes into the
/// open batch and this waits — at most `hold` — for that batch's anchor to be mined. Only then
/// does the message get its header (mode `b`, its leaf's proof). Past `hold` it is an error:
/// the caller defers the message, which never carries this stamp.
pub async fn stamp_batched(
    chain: &Chain,
    ctx: &StampContext,
    batcher: &Arc<crate::batcher::Batcher>,
    cut: crate::batcher::Cut,
    hold: std::time::Duration,
    raw: &[u8],
    env: &Envelope,
) -> Result<Stamped> {
    let writer = chain.writer.context("stamping needs a writer key")?;
    let mut p = check_and_prepare(ctx, writer, &chain.chain_ref(writer), raw, env).await?;
    let rx = batcher.submit(chain, p.commitment, cut).await?;
    let leaf = match tokio::time::timeout(hold, rx).await {
        Ok(Ok(Ok(leaf))) => leaf,
        Ok(Ok(Err(why))) => bail!("{why}"),
        Ok(Err(_)) => bail!("the batcher stopped before the batch was anchored"),
        Err(_) => bail!(
            "the batch anchor was not mined within stamp.hold_timeout_ms ({} ms)",
            hold.as_millis()
        ),
    };
    p.header.mode = mailstamp_core::header::Mode::Batch {
        batch: leaf.batch.0,
        proof: leaf.proof,
    };
    Ok(Stamped {
        message: insert_header(raw, &p.header),
        token: B256::from(p.token),
        recorded: leaf.recorded,
        batch: Some((leaf.batch, leaf.index)),
    })
}

/// What verification needs besides the message.
#[derive(Clone, Debug)]
pub struct VerifyContext {
    /// Writer records and the trust map.
    pub authority: Authority,
    /// Registries whose records count.
    pub trusted: Vec<Address>,
    /// Matching policy.
    pub policy: Policy,
    /// Verification time (unix seconds) for the replay check.
    pub now: Option<u64>,
}

impl VerifyContext {
    /// Inbound options from the config (trusted registries, policy, writer checks), with the
    /// replay check as of `now`. Build it once and reuse it: it holds the resolver and its cache.
    pub fn from_config(cfg: &Config, now: Option<u64>) -> Result<Self> {
        Ok(Self {
            authority: Authority::new(&cfg.dns, &cfg.trust)?,
            trusted: cfg.trusted_registries(),
            policy: cfg.verify.policy(),
            now,
        })
    }
}

/// Verifies one message. Never fails: every problem is a verdict (`invalid`, `temperror`…).
/// `chain` is the connection, or why there is none: an unstamped or garbled message is judged
/// without the chain, a stamped one is `temperror` until the chain answers.
pub async fn verify(
    chain: Result<&Chain, &str>,
    ctx: &VerifyContext,
    raw: &[u8],
    env: &Envelope,
) -> Report {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Report::bare(
            Verdict::Invalid,
            format!(
                "message is {} bytes, more than the {MAX_MESSAGE_BYTES} verified",
                raw.len()
            ),
            None,
        );
    }
    let Some(msg) = parse(raw) else {
        return Report::bare(
            Verdict::Invalid,
            "not an RFC 5322 message: no header section",
            None,
        );
    };
    let header = match inspect(&msg) {
        Inspection::Unstamped => {
            return Report::bare(Verdict::Unstamped, "no Mail-Stamp header", None);
        }
        Inspection::Invalid(why) => {
            return Report::bare(Verdict::Invalid, format!("Mail-Stamp header: {why}"), None);
        }
        Inspection::Stamped(h) => h,
    };
    let chain = match chain {
        Ok(c) => c,
        Err(why) => {
            return Report::bare(
                Verdict::Temperror,
                format!("chain unavailable: {why}"),
                Some(&header),
            );
        }
    };
    if header.chain_id != chain.chain_id {
        return Report::bare(
            Verdict::Invalid,
            format!(
                "stamp is on chain {}, this agent reads chain {}",
                header.chain_id, chain.chain_id
            ),
            Some(&header),
        );
    }
    let registry = Address::from(header.registry);
    if !ctx.trusted.contains(&registry) {
        return Report::bare(
            Verdict::Invalid,
            format!(
                "stamp names registry {registry}, which is not trusted (chain.registry / verify.trusted_registries)"
            ),
            Some(&header),
        );
    }
    // The record and the writer check are independent: ask the chain and DNS at once.
    let writer = Address::from(header.writer);
    let from = mailstamp_core::component::from_address(&msg);
    let (_, domain) = mailstamp_core::canon::split_address(&from);
    let (lookup, auth) = tokio::join!(
        chain.lookup(writer, RecordKey::of(&header)),
        ctx.authority.check(domain, writer)
    );
    evaluate(&msg, &header, env, &lookup, &auth, &ctx.policy, ctx.now)
}

/// The transaction that recorded a found stamp (its `Stamped` event, or its batch's
/// `Anchored` event), for audit headers and reports; `None` when not found.
pub async fn recording_tx(chain: &Chain, report: &Report, from_block: u64) -> Option<Recorded> {
    let s = report.stamp.as_ref().filter(|s| s.time.is_some())?;
    let w = s.writer.parse::<Address>().ok()?;
    let key = match &s.batch {
        Some(b) => RecordKey::Batch(b.parse().ok()?),
        None => RecordKey::Stamp(s.token.parse().ok()?),
    };
    chain
        .find_event(Some(w), key, from_block)
        .await
        .ok()
        .flatten()
        .map(|(_, r)| r)
}

/// Current unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A unix time as (year, month 1–12, day 1–31, seconds into the day), UTC — Howard Hinnant's
/// civil-from-days, so no date crate is needed for the few dates the agent prints.
pub fn civil(t: u64) -> (i64, i64, i64, u64) {
    let z = (t / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d, t % 86_400)
}

/// A unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: u64) -> String {
    let (y, m, d, secs) = civil(t);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_known_points() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}

/// Refuses From domains we may not stamp for: not an active customer domain in provider mode,
/// or (with `check_writer`) a domain whose writer record does not list us.
async fn check_from_domain(
    ctx: &StampContext,
    writer: Address,
    msg: &mailstamp_core::mail_parser::Message<'_>,
) -> Result<()> {
    let from = mailstamp_core::component::from_address(msg);
    let (_, domain) = mailstamp_core::canon::split_address(&from);
    if let Some(store) = &ctx.active_only
        && !store.is_active(domain)?
    {
        bail!(
            "From domain `{domain}` is not an active customer domain here: onboard it first \
             (`mailstamp onboard add {domain} --account ID`, then `onboard verify`)"
        );
    }
    if ctx.check_writer {
        match ctx.authority.check(domain, writer).await {
            WriterAuth::Pass(_) => {}
            WriterAuth::TempError(e) => {
                bail!("cannot check the writer record of `{domain}` now (retry later): {e}")
            }
            other => bail!(
                "refusing to stamp for `{domain}`: {}; publish {RECORD_LABEL}.{domain} TXT \"{}\" \
                 (or pin it in [trust]), else receivers will not count the stamp",
                other.detail(),
                WriterRecord::format(&[writer.0.0])
            ),
        }
    }
    Ok(())
}

/// A fault-injection point for crash tests: when `MAILSTAMP_FAULT` names this point, the
/// process exits at once (as a crash or a kill would), leaving the journal as it is.
pub(crate) fn fault(point: &str) {
    if std::env::var("MAILSTAMP_FAULT").is_ok_and(|f| f == point) {
        eprintln!("mailstamp: MAILSTAMP_FAULT={point}: exiting here on purpose");
        std::process::exit(86);
    }
}

/// One message given to a batch.
#[derive(Debug, Clone)]
pub struct BatchInput {
    /// A name for it (the file name in the output directory).
    pub name: String,
    /// The message.
    pub raw: Vec<u8>,
    /// Its envelope.
    pub env: Envelope,
}

/// What happened to a batch.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    /// The batch id (the anchor's key).
    pub batch: B256,
    /// How many messages it holds.
    pub size: u32,
    /// The anchoring transaction; `None` when it was found already on chain (a resumed batch).
    pub recorded: Option<Recorded>,
    /// Messages refused before batching, with why.
    pub refused: Vec<(String, String)>,
}

/// Stamps messages in batched mode (docs/PROTOCOL.md §5a): every message is checked and
/// prepared as for a direct stamp, one Merkle tree is built over their commitments, each header
/// gets its proof, and ONE `anchor` transaction records the root. Durable across a crash: the
/// stamped messages are written to a spool directory and the batch journalled in `store`
/// before the anchor is sent, and moved to `out_dir` only after it is mined; [`resume_batches`]
/// finishes what a crash left, anchoring each batch at most once.
pub async fn stamp_batch(
    chain: &Chain,
    ctx: &StampContext,
    store: &Store,
    inputs: Vec<BatchInput>,
    out_dir: &std::path::Path,
) -> Result<BatchOutcome> {
    let writer = chain.writer.context("stamping needs a writer key")?;
    let chain_ref = chain.chain_ref(writer);
    let mut prepared = Vec::new();
    let mut refused = Vec::new();
    for i in inputs {
        match check_and_prepare(ctx, writer, &chain_ref, &i.raw, &i.env).await {
            Ok(p) => prepared.push((i, p)),
            Err(e) => refused.push((i.name, format!("{e:#}"))),
        }
    }
    let mut batch_id = [0u8; 32];
    getrandom::fill(&mut batch_id)
        .map_err(|e| anyhow::anyhow!("the system random generator failed: {e}"))?;
    let mut stamps: Vec<mailstamp_core::Prepared> =
        prepared.iter().map(|(_, p)| p.clone()).collect();
    let Some(root) = mailstamp_core::stamp::into_batch(&mut stamps, batch_id) else {
        bail!("nothing to stamp: every message was refused");
    };
    let size = u32::try_from(stamps.len()).context("batch too large")?;
    let batch = B256::from(batch_id);
    let spool = out_dir.join(format!(".mailstamp-batch-{batch}"));
    std::fs::create_dir_all(&spool)
        .with_context(|| format!("cannot create {}", spool.display()))?;
    for ((input, _), p) in prepared.iter().zip(&stamps) {
        let path = spool.join(&input.name);
        std::fs::write(&path, insert_header(&input.raw, &p.header))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let row = BatchRow {
        batch_id: batch.to_string(),
        root: format!("0x{}", hex::encode(mailstamp_core::merkle::short(&root))),
        size,
        spool: spool.to_string_lossy().into_owned(),
        out_dir: out_dir.to_string_lossy().into_owned(),
        tx: None,
    };
    store.add_batch(&row, now())?;
    fault("before-anchor");
    let recorded = finish_batch(chain, store, &row).await?;
    Ok(BatchOutcome {
        batch,
        size,
        recorded,
        refused,
    })
}

/// The writer and provider checks of [`stamp`], then the stamp itself (not recorded).
async fn check_and_prepare(
    ctx: &StampContext,
    writer: Address,
    chain_ref: &ChainRef,
    raw: &[u8],
    env: &Envelope,
) -> Result<mailstamp_core::Prepared> {
    if raw.len() > MAX_MESSAGE_BYTES {
        bail!(
            "message is {} bytes, more than the {MAX_MESSAGE_BYTES} this agent stamps",
            raw.len()
        );
    }
    let msg = parse(raw).context("not an RFC 5322 message: no header section found")?;
    check_from_domain(ctx, writer, &msg).await?;
    Ok(prepare(
        &msg,
        env,
        fresh_salt()?,
        chain_ref,
        &ctx.selection,
    )?)
}

/// Anchors a journalled batch unless its anchor is already on chain, then moves its messages
/// to their output directory and closes the journal entry. Safe to repeat.
pub async fn finish_batch(
    chain: &Chain,
    store: &Store,
    row: &BatchRow,
) -> Result<Option<Recorded>> {
    let writer = chain
        .writer
        .context("finishing a batch needs the writer key")?;
    let batch: B256 = row.batch_id.parse().context("journal: bad batch id")?;
    let root: FixedBytes<24> = row.root.parse().context("journal: bad root")?;
    let recorded = match chain.lookup(writer, RecordKey::Batch(batch)).await {
        Lookup::Found { commitment, .. } if commitment == root.0 => None,
        Lookup::Found { .. } => {
            bail!("batch {batch} is anchored on chain with another root: not touching it")
        }
        // Mined, not yet deep enough: it counts once its root is the journalled one.
        Lookup::Unconfirmed => match chain.anchor_at_head(writer, batch).await? {
            Some(r) if r == root => None,
            Some(_) => {
                bail!("batch {batch} is anchored on chain with another root: not touching it")
            }
            None => bail!(
                "batch {batch}: the anchor is neither confirmed nor at the head block; retry later"
            ),
        },
        Lookup::NotFound => Some(chain.anchor(batch, root, row.size).await?),
        Lookup::Unavailable(e) => bail!("cannot read the registry (retry later): {e}"),
    };
    fault("after-anchor");
    let spool = std::path::Path::new(&row.spool);
    let out = std::path::Path::new(&row.out_dir);
    if spool.exists() {
        for entry in
            std::fs::read_dir(spool).with_context(|| format!("cannot list {}", spool.display()))?
        {
            let entry = entry?;
            std::fs::rename(entry.path(), out.join(entry.file_name())).with_context(|| {
                format!(
                    "cannot move {} to {}",
                    entry.path().display(),
                    out.display()
                )
            })?;
        }
        std::fs::remove_dir(spool).with_context(|| format!("cannot remove {}", spool.display()))?;
    }
    store.finish_batch(
        &row.batch_id,
        recorded.as_ref().map(|r| r.tx.to_string()).as_deref(),
    )?;
    Ok(recorded)
}

/// Finishes every batch a crash left pending: anchors what is not on chain yet (once) and
/// delivers the spooled messages.
pub async fn resume_batches(
    chain: &Chain,
    store: &Store,
) -> Result<Vec<(BatchRow, Option<Recorded>)>> {
    let mut done = Vec::new();
    for row in store.pending_batches()? {
        let r = finish_batch(chain, store, &row).await?;
        done.push((row, r));
    }
    Ok(done)
}
