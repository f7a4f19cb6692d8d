// SPDX-License-Identifier: GPL-3.0-or-later
//! The texts of the headers mailstamp adds (`Authentication-Results:` per RFC 8601, the
//! verdict and score for Sieve, the unstamped mark) and which incoming fields claim to be
//! ours (they go before a Sieve rule could be fooled).

use alloy::primitives::B256;
use mailstamp_core::{Report, Verdict};

use crate::util::clean;

/// Name of the verdict header a Sieve rule can file on.
pub const VERDICT_HEADER: &str = "X-Mailstamp-Verdict";
/// Name of the score header (present when components were compared).
pub const SCORE_HEADER: &str = "X-Mailstamp-Score";
/// Header added to outbound mail passed unstamped by `on_stamp_error = "pass"`.
pub const UNSTAMPED_HEADER: &str = "X-Mailstamp-Unstamped";

/// Whether an incoming header field claims to be one of our results (and must go before a
/// Sieve rule could be fooled by a sender who writes it).
pub fn is_ours(name: &str, value: &[u8], authserv_id: &str) -> bool {
    // Every X-Mailstamp-* field (verdict, score, folder, inbox-for, list) is ours.
    name.get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("X-Mailstamp-"))
        || (name.eq_ignore_ascii_case("Authentication-Results")
            && authserv_id_of(value) == authserv_id.to_ascii_lowercase())
}

/// The authserv-id an `Authentication-Results:` value starts with.
pub fn authserv_id_of(value: &[u8]) -> String {
    let v = String::from_utf8_lossy(value);
    v.trim_start()
        .split([';', ' ', '\t', '\r', '\n'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The RFC 8601 result of a verdict for method `mailstamp`.
pub fn ar_result(v: Verdict) -> &'static str {
    match v {
        Verdict::Wanted => "pass",
        Verdict::Suspect => "neutral",
        Verdict::Spam => "fail",
        Verdict::Unstamped => "none",
        Verdict::Invalid => "permerror",
        Verdict::Temperror => "temperror",
        Verdict::Inapplicable => "neutral",
    }
}

/// The `Authentication-Results:` value (leading space, LF-folded) for a report.
pub fn ar_value(
    authserv_id: &str,
    report: &Report,
    from: Option<&str>,
    tx: Option<B256>,
) -> String {
    let mut v = format!(
        " {authserv_id};\n\tmailstamp={} ({}",
        ar_result(report.verdict),
        report.verdict.as_str()
    );
    if let Some(sc) = report.score {
        v.push_str(&format!(", score {sc:.2}"));
    }
    v.push(')');
    if let Some(r) = &report.reason {
        let r = clean(r, 200).replace(['"', '\\'], "'");
        v.push_str(&format!("\n\treason=\"{r}\""));
    }
    if let Some(d) = from {
        v.push_str(&format!("\n\theader.from={d}"));
    }
    // With hops (docs/PROTOCOL.md §5c) the policy.* of one stamp stay the originator's, so
    // that what parses a one-stamp result still finds them; each hop follows as hopN-*.
    let origin = report
        .chain
        .first()
        .map_or(report.stamp.as_ref(), |l| l.stamp.as_ref());
    if let Some(st) = origin {
        v.push_str(&format!(
            "\n\tpolicy.chain={} policy.writer={}\n\tpolicy.token={}",
            st.chain_id, st.writer, st.token
        ));
    }
    if let Some(tx) = tx {
        v.push_str(&format!("\n\tpolicy.tx={tx}"));
    }
    if let Some(a) = &report.author {
        v.push_str(&format!("\n\tpolicy.author={}", clean(a, 254)));
    }
    for l in report.chain.iter().skip(1) {
        let n = l.index;
        v.push_str(&format!(
            "\n\tpolicy.hop{n}-domain={}",
            clean(&l.domain, 253)
        ));
        if let Some(st) = &l.stamp {
            v.push_str(&format!("\n\tpolicy.hop{n}-writer={}", st.writer));
            match &st.batch {
                Some(b) => v.push_str(&format!("\n\tpolicy.hop{n}-batch={b}")),
                None => v.push_str(&format!("\n\tpolicy.hop{n}-token={}", st.token)),
            }
        }
        let kinds: Vec<&str> = l
            .changes
            .iter()
            .map(|c| c.split('/').next().unwrap_or(""))
            .collect();
        if !kinds.is_empty() {
            let kinds = clean(&kinds.join(","), 200).replace(['"', '\\'], "'");
            v.push_str(&format!("\n\tpolicy.hop{n}-changes=\"{kinds}\""));
        }
    }
    v
}

/// The value of the header that `stamping::stamp` put in front of `raw`, in milter form: the
/// leading space kept, folded lines joined by LF (the MTA adds the CR).
pub fn stamp_value(stamped: &[u8], raw_len: usize) -> Option<String> {
    let field = stamped.get(..stamped.len().checked_sub(raw_len)?)?;
    let field = std::str::from_utf8(field).ok()?;
    let (name, value) = field.split_once(':')?;
    if !name.eq_ignore_ascii_case(mailstamp_core::header::FIELD_NAME) {
        return None;
    }
    Some(value.trim_end_matches(['\r', '\n']).replace("\r\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_x_mailstamp_field_and_our_results_are_ours() {
        for name in [
            "X-Mailstamp-Verdict",
            "x-mailstamp-score",
            "X-Mailstamp-Folder",
            "X-MAILSTAMP-Inbox-For",
            "X-Mailstamp-List",
        ] {
            assert!(is_ours(name, b" INBOX", "mx.b.example"), "{name}");
        }
        assert!(is_ours(
            "Authentication-Results",
            b" MX.b.example; mailstamp=pass",
            "mx.b.example"
        ));
        for (name, value) in [
            ("Authentication-Results", &b" other.example; dkim=pass"[..]),
            ("X-Mailstamp", b" short"),
            ("X-Mailstampede", b" no dash"),
            ("Subject", b" X-Mailstamp-Folder: INBOX"),
        ] {
            assert!(!is_ours(name, value, "mx.b.example"), "{name}");
        }
    }
}
