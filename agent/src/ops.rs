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

use crate::chain::{Chain, Recorded};

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

/// Stamps one message: computes the components with a fresh salt, records the commitment,
/// and returns the message with the header only once the record is in a block.
pub async fn stamp(chain: &Chain, raw: &[u8], env: &Envelope, sel: &Selection) -> Result<Stamped> {
    if raw.len() > MAX_MESSAGE_BYTES {
        bail!(
            "message is {} bytes, more than the {MAX_MESSAGE_BYTES} this agent stamps",
            raw.len()
        );
    }
    let writer = chain.writer.context("stamping needs a writer key")?;
    let msg = parse(raw).context("not an RFC 5322 message: no header section found")?;
    let chain_ref = ChainRef {
        chain_id: chain.chain_id,
        registry: chain.registry.0.0,
        writer: writer.0.0,
    };
    let p = prepare(&msg, env, fresh_salt()?, &chain_ref, sel)?;
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
#[derive(Debug, Clone)]
pub struct VerifyContext {
    /// Registries whose records count.
    pub trusted: Vec<Address>,
    /// Matching policy.
    pub policy: Policy,
    /// Verification time (unix seconds) for the replay check.
    pub now: Option<u64>,
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
    let lookup = chain
        .lookup(Address::from(header.writer), B256::from(header.token()))
        .await;
    evaluate(&msg, &header, env, &lookup, &ctx.policy, ctx.now)
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
