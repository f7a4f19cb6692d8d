// SPDX-License-Identifier: GPL-3.0-or-later
//! The operations behind the CLI verbs, on one message at a time: stamp (decompose, record,
//! add the header) and verify (find the stamp, ask the chain, decide). The milter and relay
//! will call the same functions.

use alloy::primitives::{Address, B256, FixedBytes};
use anyhow::{Context, Result, bail};
use mailstamp_core::{
    ChainRef, Envelope, Inspection, MAX_MESSAGE_BYTES, Policy, Report, Selection, Verdict,
    evaluate, insert_header, inspect, parse, prepare,
};

use std::sync::Arc;

use mailstamp_core::WriterAuth;
use mailstamp_core::writers::{RECORD_LABEL, WriterRecord};

use crate::chain::{Chain, Recorded};
use crate::config::Config;
use crate::dns::Authority;
use crate::store::Store;

/// A stamped message and where its record landed.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// The message with its `Mail-Stamp:` header.
    pub message: Vec<u8>,
    /// The registry key.
    pub token: B256,
    /// The recording transaction.
    pub recorded: Recorded,
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
    if raw.len() > MAX_MESSAGE_BYTES {
        bail!(
            "message is {} bytes, more than the {MAX_MESSAGE_BYTES} this agent stamps",
            raw.len()
        );
    }
    let writer = chain.writer.context("stamping needs a writer key")?;
    let msg = parse(raw).context("not an RFC 5322 message: no header section found")?;
    let from = mailstamp_core::component::from_address(&msg);
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
    let chain_ref = ChainRef {
        chain_id: chain.chain_id,
        registry: chain.registry.0.0,
        writer: writer.0.0,
    };
    let p = prepare(&msg, env, fresh_salt()?, &chain_ref, &ctx.selection)?;
    let recorded = chain
        .stamp(B256::from(p.token), FixedBytes::from(p.commitment))
        .await?;
    Ok(Stamped {
        message: insert_header(raw, &p.header),
        token: B256::from(p.token),
        recorded,
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
        chain.lookup(writer, B256::from(header.token())),
        ctx.authority.check(domain, writer)
    );
    evaluate(&msg, &header, env, &lookup, &auth, &ctx.policy, ctx.now)
}

/// Current unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
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
