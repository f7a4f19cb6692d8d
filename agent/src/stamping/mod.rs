// SPDX-License-Identifier: GPL-3.0-or-later
//! Stamping outbound mail: the checks that we may write for the From domain (provider mode,
//! the writer record), the stamp prepared with a fresh salt, and its recording — one
//! transaction per message here ([`stamp`]), one anchor per batch in [`batch`] (the CLI) and
//! [`batcher`] (the daemons); [`watch`]: what the daemons recorded, watched until final and
//! sent again after a reorg. A check that fails for good is an [`Error::Refused`] (the MTA
//! bounces or passes the message unstamped by policy); chain or DNS trouble is temporary.

pub mod batch;
pub mod batcher;
pub mod watch;

use std::sync::Arc;

use alloy::primitives::{Address, B256, FixedBytes};
use mailstamp_core::Lookup;
use mailstamp_core::writers::{RECORD_LABEL, WriterRecord};
use mailstamp_core::{ChainRef, Envelope, Selection, WriterAuth, insert_header, parse, prepare};

use crate::chain::{Chain, RecordKey, Recorded};
use crate::config::Config;
use crate::dns::Authority;
use crate::error::{Context, Error, Result, err};
use crate::store::Store;

/// A stamped message and where its record landed.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// The message with its `Mail-Stamp:` header.
    pub message: Vec<u8>,
    /// The registry key.
    pub token: B256,
    /// The recording transaction (for a batched stamp, its batch's anchor; `None` for a
    /// batched stamp released when its batch closed, before the anchor is mined).
    pub recorded: Option<Recorded>,
    /// Batched mode: the batch and the message's leaf index in it.
    pub batch: Option<(B256, u32)>,
    /// Direct mode: the write, for a daemon to watch until it is final ([`watch`]; the
    /// batcher watches a batch's anchor itself).
    pub recording: Option<Box<watch::Recording>>,
}

/// A fresh per-message salt from the operating system's CSPRNG.
pub fn fresh_salt() -> Result<mailstamp_core::digest::Salt> {
    let mut salt = [0u8; mailstamp_core::digest::SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| err!("the system random generator failed: {e}"))?;
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
            let store = Store::connect(&cfg.store, None)
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
    let writer = writer_of(chain)?;
    let p = check_and_prepare(ctx, writer, &chain.chain_ref(writer), raw, env).await?;
    recorded_directly(chain, p.token, p.commitment, insert_header(raw, &p.header)).await
}

/// Records `commitment` under `token` in one transaction; `message` is what goes out with it.
async fn recorded_directly(
    chain: &Chain,
    token: [u8; 32],
    commitment: mailstamp_core::digest::Commitment,
    message: Vec<u8>,
) -> Result<Stamped> {
    let (token, commitment) = (B256::from(token), FixedBytes::from(commitment));
    let sent = chain.stamp_sent(token, commitment).await?;
    Ok(Stamped {
        message,
        token,
        recorded: Some(sent.recorded.clone()),
        batch: None,
        recording: Some(Box::new(watch::Recording {
            kind: crate::store::WatchKind::Stamp,
            key: token,
            value: commitment,
            size: 1,
            sent,
        })),
    })
}

/// How a hop is recorded: one transaction, or a leaf in the daemon's shared batch.
pub enum HopRecording<'a> {
    /// `stamp.mode = "direct"`.
    Direct,
    /// `stamp.mode = "batch"`: the batcher and how long the message waits.
    Batched(&'a Arc<batcher::Batcher>, batcher::Hold),
}

/// Adds this host's hop to `raw`, a stamped message it received and sends on to `env`'s
/// recipients (docs/PROTOCOL.md §5c): checks that the writer is authorised for the hop's
/// own domain (with `check_writer`), prepares the hop (the core refuses what every receiver
/// would), records it as any stamp and puts the field on top. The caller checked that the
/// chain it received is `wanted`.
pub async fn stamp_hop(
    chain: &Chain,
    ctx: &StampContext,
    how: HopRecording<'_>,
    raw: &[u8],
    env: &Envelope,
    spec: &mailstamp_core::hops::HopSpec<'_>,
) -> Result<Stamped> {
    let writer = writer_of(chain)?;
    if let Some(why) = mailstamp_core::oversized(raw) {
        return Err(Error::refused("5.3.4", format!("no hop: {why}")));
    }
    let msg = parse(raw)
        .ok_or_else(|| Error::refused("5.6.0", "not an RFC 5322 message: no header section"))?;
    if ctx.check_writer {
        check_writer_for(ctx, writer, spec.domain).await?;
    }
    let mut hop = mailstamp_core::prepare_hop(
        &msg,
        env,
        fresh_salt()?,
        &chain.chain_ref(writer),
        &ctx.selection,
        spec,
    )
    .map_err(|e| Error::refused("5.6.0", format!("no hop: {e}")))?;
    match how {
        HopRecording::Direct => {
            let message = mailstamp_core::hops::insert_hop(raw, &hop.field);
            recorded_directly(chain, hop.token, hop.commitment, message).await
        }
        HopRecording::Batched(b, hold) => {
            let leaf = batcher::leaf_of(b, chain, hop.commitment, hold).await?;
            hop.field.stamp.mode = mailstamp_core::header::Mode::Batch {
                batch: leaf.batch.0,
                proof: leaf.proof,
            };
            Ok(Stamped {
                message: mailstamp_core::hops::insert_hop(raw, &hop.field),
                token: B256::from(hop.token),
                recorded: leaf.recorded,
                batch: Some((leaf.batch, leaf.index)),
                recording: None,
            })
        }
    }
}

/// The writer record of `domain` must list `writer`; a temporary DNS failure is an error to
/// retry, anything else a refusal naming the record to publish.
async fn check_writer_for(ctx: &StampContext, writer: Address, domain: &str) -> Result<()> {
    match ctx.authority.check(domain, writer).await {
        WriterAuth::Pass(_) => Ok(()),
        WriterAuth::TempError(e) => Err(err!(
            "cannot check the writer record of `{domain}` now (retry later): {e}"
        )),
        other => Err(Error::refused(
            "5.7.1",
            format!(
                "refusing to stamp for `{domain}`: {}; publish {RECORD_LABEL}.{domain} TXT \"{}\" \
                 (or pin it in [trust]), else receivers will not count the stamp",
                other.detail(),
                WriterRecord::format(&[writer.0.0])
            ),
        )),
    }
}

/// The writer's address, or the refusal of a daemon started without a key.
pub(crate) fn writer_of(chain: &Chain) -> Result<Address> {
    chain.writer.ok_or_else(|| {
        Error::refused(
            "5.3.5",
            "stamping needs a writer key: set writer.keystore or MAILSTAMP_PRIVATE_KEY and restart",
        )
    })
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
    if let Some(store) = &ctx.active_only {
        let d = domain.to_owned();
        if !store.call(move |s| s.is_active(&d)).await? {
            return Err(Error::refused(
                "5.7.1",
                format!(
                    "From domain `{domain}` is not an active customer domain here: onboard it first \
                     (`mailstamp onboard add {domain} --account ID`, then `onboard verify`)"
                ),
            ));
        }
    }
    if ctx.check_writer {
        check_writer_for(ctx, writer, domain).await?;
    }
    Ok(())
}

/// The writer and provider checks of [`stamp`], then the stamp itself (not recorded).
pub(crate) async fn check_and_prepare(
    ctx: &StampContext,
    writer: Address,
    chain_ref: &ChainRef,
    raw: &[u8],
    env: &Envelope,
) -> Result<mailstamp_core::Prepared> {
    if let Some(why) = mailstamp_core::oversized(raw) {
        return Err(Error::refused("5.3.4", format!("not stamped: {why}")));
    }
    let msg = parse(raw).ok_or_else(|| {
        Error::refused("5.6.0", "not an RFC 5322 message: no header section found")
    })?;
    check_from_domain(ctx, writer, &msg).await?;
    // No From, no recipients, too many: the same message is refused again.
    prepare(&msg, env, fresh_salt()?, chain_ref, &ctx.selection)
        .map_err(|e| Error::refused("5.6.0", e.to_string()))
}

/// Where the anchor of a batch stands on chain, for a batch whose root is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnchorState {
    /// Anchored with this root (confirmed, or at the head block and so counting once deep
    /// enough): nothing to send.
    Ours,
    /// Not on chain at all: it may be sent.
    Absent,
}

/// Checks the anchor of (`writer`, `batch`) against the journalled `root`. Anchored with
/// another root, mined but neither confirmed nor at the head (a reorg under way), or the
/// registry unreadable: an error, and the batch is left alone.
pub(crate) async fn anchor_state(
    chain: &Chain,
    writer: Address,
    batch: B256,
    root: [u8; 24],
) -> Result<AnchorState> {
    let other = || err!("batch {batch} is anchored on chain with another root: not touching it");
    match chain.lookup(writer, RecordKey::Batch(batch)).await {
        Lookup::Found { commitment, .. } if commitment == root => Ok(AnchorState::Ours),
        Lookup::Found { .. } => Err(other()),
        // Mined but not yet as deep as the policy asks: it counts once its root is ours.
        Lookup::Unconfirmed => match chain.anchor_at_head(writer, batch).await? {
            Some(r) if r.0 == root => Ok(AnchorState::Ours),
            Some(_) => Err(other()),
            None => Err(err!(
                "batch {batch}: the anchor is neither confirmed nor at the head block; retry later"
            )),
        },
        // `NotFoundYet` is the verifier's grace, never a chain answer; treated as absent.
        Lookup::NotFound | Lookup::NotFoundYet(_) => Ok(AnchorState::Absent),
        Lookup::Unavailable(e) => Err(err!("cannot read the registry (retry later): {e}")),
    }
}
