// SPDX-License-Identifier: GPL-3.0-or-later
//! The inbound folder decision (seeds 003, 004): where a message goes for one local user,
//! given its stamp verdict, its sender authentication and the user's two lists (authorised
//! senders, the self-training allowlist). Used by the milter and the relay at end of message
//! and by `mailstamp recover`. One rule for both lists: a hit counts only when the message is
//! authenticated for its From domain — a mailstamp stamp whose writer is authorised (verdict
//! `wanted`, or `suspect` with `writer_auth` pass and no component that differs unexplained)
//! or DMARC pass. Unauthenticated hits are reported, never trusted.
//!
//! Order: stamp `wanted` → inbox; stamp `spam`/`invalid` → junk (the verdict header and
//! `contrib/mailstamp.sieve` file it); otherwise (unstamped, suspect, temperror let through)
//! → inbox on a trusted list hit, else the separate folder (`[inbound] folder`).

use anyhow::{Result, bail};
use mailstamp_core::{Report, Status, Verdict, WriterAuth};
use serde::{Deserialize, Serialize};

use crate::allowlist;
use crate::auth::AuthOutcome;
use crate::config::Config;
use crate::senders::{normalise_address, normalise_domain};
use crate::store::Store;

/// Header naming the folder the milter/relay chose: `INBOX` or the separate folder.
pub const FOLDER_HEADER: &str = "X-Mailstamp-Folder";
/// Header listing the recipients (`<addr>`, comma separated) for whom the message goes to the
/// INBOX although [`FOLDER_HEADER`] names the separate folder (recipients disagree).
pub const INBOX_FOR_HEADER: &str = "X-Mailstamp-Inbox-For";
/// Header reporting a list hit for one recipient (trusted or not), one field per recipient.
pub const LIST_HEADER: &str = "X-Mailstamp-List";

/// `[inbound]` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// Decide a folder for inbound mail and add the folder headers; also turns on learning
    /// the allowlist from outbound mail. Needs the store (`[store] path`). Off by default so
    /// that an agent without a store or Sieve rule behaves as before.
    pub enabled: bool,
    /// The separate folder for mail from strangers (an IMAP folder name, never INBOX).
    pub folder: String,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            folder: "Unknown".to_owned(),
        }
    }
}

impl InboundConfig {
    /// Checks that `folder` is a safe IMAP folder name: 1–64 characters of letters, digits,
    /// `.`, `-`, `_` and `/` (hierarchy), no empty level, not `INBOX`.
    pub fn check(&self) -> Result<()> {
        check_folder(&self.folder)
    }
}

/// See [`InboundConfig::check`].
pub fn check_folder(f: &str) -> Result<()> {
    let ok = !f.is_empty()
        && f.len() <= 64
        && f.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
        && f.split(['/', '.']).all(|l| !l.is_empty())
        && !f.eq_ignore_ascii_case("inbox");
    if !ok {
        bail!(
            "inbound.folder = `{f}` is not a safe folder name: use 1-64 letters, digits, `.`, `-`, `_` (e.g. \"Unknown\"), not INBOX"
        );
    }
    Ok(())
}

/// The author of a message (RFC 5322 From), normalised: lower-case address, its domain, and
/// the display name if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FromIdentity {
    /// `local@domain`, lower case.
    pub address: String,
    /// The domain, lower case.
    pub domain: String,
    /// The display name (`"Ann Lee" <ann@…>`), trimmed.
    pub display_name: Option<String>,
}

impl FromIdentity {
    /// An identity from an address and an optional display name; `None` when the address is
    /// not a usable `local@domain`.
    pub fn new(address: &str, display_name: Option<&str>) -> Option<Self> {
        let address = normalise_address(address).ok()?;
        let domain = normalise_domain(address.rsplit_once('@')?.1).ok()?;
        Some(Self {
            address,
            domain,
            display_name: display_name
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty()),
        })
    }

    /// The first From address of a raw message; `None` when there is none usable. Parses the
    /// header section only (no body decoding): it runs once per inbound message beside the
    /// verifier's own parse.
    pub fn of_message(raw: &[u8]) -> Option<Self> {
        let msg = mailstamp_core::mail_parser::MessageParser::default().parse_headers(raw)?;
        let a = msg.from()?.first()?;
        Self::new(a.address()?, a.name())
    }

    /// The identities of `rcpts` (envelope recipients) with the display names the message's
    /// To/Cc give them (outbound learning).
    pub fn of_recipients(raw: &[u8], rcpts: &[String]) -> Vec<Self> {
        let msg = mailstamp_core::parse(raw);
        let named: Vec<(String, String)> = msg
            .iter()
            .flat_map(|m| m.to().into_iter().chain(m.cc()))
            .flat_map(|a| a.iter())
            .filter_map(|a| Some((a.address()?.to_ascii_lowercase(), a.name()?.to_owned())))
            .collect();
        rcpts
            .iter()
            .filter_map(|r| {
                let lower = r.trim().to_ascii_lowercase();
                let name = named
                    .iter()
                    .find(|(a, _)| *a == lower)
                    .map(|(_, n)| n.as_str());
                Self::new(r, name)
            })
            .collect()
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Folder {
    /// The user's inbox.
    Inbox,
    /// The separate folder for strangers (`[inbound] folder`).
    Separate(String),
    /// Junk: the stamp verdict is `spam` or `invalid` (filed by the verdict rule).
    Junk,
}

impl Folder {
    /// The IMAP name: `INBOX`, the separate folder, or `Junk`.
    pub fn name(&self) -> &str {
        match self {
            Self::Inbox => "INBOX",
            Self::Separate(f) => f,
            Self::Junk => "Junk",
        }
    }
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The stamp verdict is `wanted`.
    StampWanted,
    /// The stamp verdict is `spam` or `invalid`.
    StampRejected,
    /// An authenticated hit in the user's authorised senders.
    AuthorisedSender,
    /// An authenticated hit in the allowlist, heavy enough (`min_weight`).
    Allowlisted,
    /// A list hit, but the message is not authenticated for its From domain.
    UnauthenticatedHit,
    /// An authenticated allowlist hit lighter than `min_weight` (a partial match).
    WeakHit,
    /// No list knows the sender.
    Stranger,
    /// No usable From address.
    NoFrom,
}

impl Reason {
    /// The snake_case word used in headers and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StampWanted => "stamp_wanted",
            Self::StampRejected => "stamp_rejected",
            Self::AuthorisedSender => "authorised_sender",
            Self::Allowlisted => "allowlisted",
            Self::UnauthenticatedHit => "unauthenticated_hit",
            Self::WeakHit => "weak_hit",
            Self::Stranger => "stranger",
            Self::NoFrom => "no_from",
        }
    }
}

/// Which list a hit is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListName {
    /// The user's authorised senders.
    Authorised,
    /// The self-training allowlist.
    Allowlist,
}

impl ListName {
    /// `authorised` / `allowlist`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorised => "authorised",
            Self::Allowlist => "allowlist",
        }
    }
}

/// How a sender matched a list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// The exact address (or, for authorised senders, an authorised whole domain).
    Full,
    /// Partial: same display name and domain as an entry.
    PartialNameDomain,
    /// Partial: same domain as an entry.
    PartialDomain,
}

impl MatchKind {
    /// `full` / `name_domain` / `domain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::PartialNameDomain => "name_domain",
            Self::PartialDomain => "domain",
        }
    }
}

/// A list hit, reported whether trusted or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// Which list.
    pub list: ListName,
    /// How it matched.
    pub kind: MatchKind,
    /// Its weight (authorised senders: 1).
    pub weight: f64,
    /// The entry matched (address or domain).
    pub entry: String,
    /// Whether it decided the folder (authenticated and heavy enough).
    pub trusted: bool,
}

/// The decision for one message and one user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Where it goes.
    pub folder: Folder,
    /// Why.
    pub reason: Reason,
    /// The list hit, if any (also when not trusted).
    pub list_hit: Option<Hit>,
    /// Whether the message is authenticated for its From domain.
    pub authenticated: bool,
    /// How: `stamp`, `dmarc` (none when not authenticated).
    pub auth_method: Option<&'static str>,
}

impl Decision {
    /// The value of one [`LIST_HEADER`] field for recipient `user`, when there is a hit:
    /// `<user>; list=allowlist; match=full; weight=1.00; entry=…; trusted=yes; auth=dmarc`.
    pub fn list_header(&self, user: &str) -> Option<String> {
        let h = self.list_hit.as_ref()?;
        Some(format!(
            " <{user}>; list={}; match={}; weight={:.2}; entry={}; trusted={}; auth={}",
            h.list.as_str(),
            h.kind.as_str(),
            h.weight,
            h.entry,
            if h.trusted { "yes" } else { "no" },
            self.auth_method.unwrap_or("none"),
        ))
    }
}

/// Whether a stamp report authenticates the From domain: verdict `wanted`, or `suspect` with
/// the writer authorised for the From domain and every component either matching, explained
/// by further processing, or not computable here. A `suspect` stamp with a component that
/// differs unexplained (`mismatch`, `missing`, `added`) proves nothing about the message: a
/// co-recipient could re-send a real stamped message with another body and still score above
/// the threshold.
pub fn stamp_authenticates(r: &Report) -> bool {
    match r.verdict {
        Verdict::Wanted => true,
        Verdict::Suspect => {
            matches!(r.writer_auth, Some(WriterAuth::Pass(_)))
                && r.components.iter().all(|c| {
                    matches!(
                        c.status,
                        Status::Match | Status::Explained | Status::Unavailable
                    )
                })
        }
        _ => false,
    }
}

/// The local user a recipient address stands for: lower case, `user+tag` folded to `user`
/// with the recipient `delimiter` (none when `None`).
pub fn user_of(rcpt: &str, delimiter: Option<char>) -> String {
    let a = rcpt
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_ascii_lowercase();
    match (delimiter, a.rsplit_once('@')) {
        (Some(d), Some((local, domain))) => match local.split_once(d) {
            Some((u, _)) if !u.is_empty() => format!("{u}@{domain}"),
            _ => a,
        },
        _ => a,
    }
}

/// Decides the folder of a message for `user` (a lower-case address, see [`user_of`]) from
/// `cfg` (`[inbound]`, `[allowlist]`), the From identity (`None`: no usable From), the stamp
/// report (`None`: not verified, treated as unstamped) and the DMARC outcome. Reads the store
/// only; call [`learn`] afterwards to complete allowlist entries. Part B (`recover`): call it
/// per message with `FromIdentity::of_message`, `ops::verify`'s report and
/// `Authenticator::authenticate(raw, None, "", "")`.
pub fn decide(
    store: &Store,
    cfg: &Config,
    user: &str,
    from: Option<&FromIdentity>,
    stamp: Option<&Report>,
    auth: &AuthOutcome,
    now: u64,
) -> Result<Decision> {
    let by_stamp = stamp.is_some_and(stamp_authenticates);
    // DMARC speaks for the From domain mail-auth evaluated: it counts only when that is the
    // domain of the From identity the lists are searched with (two parsers reading a garbled
    // or doubled From could disagree).
    let by_dmarc = auth.pass()
        && match (from, auth.from_domain.as_deref()) {
            (Some(f), Some(d)) => d.trim_end_matches('.').eq_ignore_ascii_case(&f.domain),
            _ => false,
        };
    let authenticated = by_stamp || by_dmarc;
    let auth_method = if by_stamp {
        Some("stamp")
    } else if by_dmarc {
        Some("dmarc")
    } else {
        None
    };
    let separate = Folder::Separate(cfg.inbound.folder.clone());
    let mut d = Decision {
        folder: separate,
        reason: Reason::Stranger,
        list_hit: None,
        authenticated,
        auth_method,
    };
    match stamp.map(|r| r.verdict) {
        Some(Verdict::Wanted) => {
            d.folder = Folder::Inbox;
            d.reason = Reason::StampWanted;
            return Ok(d);
        }
        Some(Verdict::Spam | Verdict::Invalid) => {
            d.folder = Folder::Junk;
            d.reason = Reason::StampRejected;
            return Ok(d);
        }
        _ => {}
    }
    let Some(from) = from else {
        d.reason = Reason::NoFrom;
        return Ok(d);
    };
    let user = user.to_ascii_lowercase();
    let hit = if let Some(row) = store.authorised(&user, &from.address)? {
        Some(Hit {
            list: ListName::Authorised,
            kind: MatchKind::Full,
            weight: 1.0,
            entry: row.pattern,
            trusted: false,
        })
    } else {
        allowlist::lookup(store, &cfg.allowlist, &user, from, now)?.map(|(e, kind)| Hit {
            list: ListName::Allowlist,
            kind,
            weight: cfg.allowlist.weight(kind),
            entry: e.address,
            trusted: false,
        })
    };
    if let Some(mut h) = hit {
        let heavy = h.list == ListName::Authorised || h.weight >= cfg.allowlist.min_weight;
        h.trusted = authenticated && heavy;
        d.reason = match (authenticated, heavy, h.list) {
            (false, _, _) => Reason::UnauthenticatedHit,
            (true, false, _) => Reason::WeakHit,
            (true, true, ListName::Authorised) => Reason::AuthorisedSender,
            (true, true, ListName::Allowlist) => Reason::Allowlisted,
        };
        if h.trusted {
            d.folder = Folder::Inbox;
        }
        d.list_hit = Some(h);
    }
    Ok(d)
}

/// After [`decide`]: an authenticated message from `from` completes `user`'s allowlist entry
/// for that exact address (if one is live). Returns whether an entry was completed.
pub fn learn(
    store: &Store,
    cfg: &Config,
    user: &str,
    from: Option<&FromIdentity>,
    decision: &Decision,
    now: u64,
) -> Result<bool> {
    match from {
        Some(f) if decision.authenticated => {
            allowlist::complete(store, &cfg.allowlist, user, f, now)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthResult;

    fn pass() -> AuthOutcome {
        AuthOutcome {
            from_domain: Some("a.example".into()),
            dmarc: AuthResult::Pass,
            aligned: Some("dkim"),
            ..AuthOutcome::none()
        }
    }

    #[test]
    fn the_trust_rule_and_the_verdict_order() {
        let s = Store::in_memory().unwrap();
        let cfg = Config::default();
        let me = "me@ours.example";
        let ann = FromIdentity::new("ann@a.example", Some("Ann")).unwrap();
        let none = AuthOutcome::none();
        let d = decide(&s, &cfg, me, Some(&ann), None, &pass(), 10).unwrap();
        assert_eq!((d.folder.name(), d.reason), ("Unknown", Reason::Stranger));
        s.add_sender(me, "a.example", None, 1).unwrap();
        let d = decide(&s, &cfg, me, Some(&ann), None, &pass(), 10).unwrap();
        assert_eq!(
            (d.folder.clone(), d.reason),
            (Folder::Inbox, Reason::AuthorisedSender)
        );
        let d = decide(&s, &cfg, me, Some(&ann), None, &none, 10).unwrap();
        assert_eq!(
            (d.folder.name(), d.reason, d.list_hit.unwrap().trusted),
            ("Unknown", Reason::UnauthenticatedHit, false)
        );
        // DMARC passed for another domain than the From the lists are searched with: no.
        let elsewhere = AuthOutcome {
            from_domain: Some("evil.example".into()),
            ..pass()
        };
        let d = decide(&s, &cfg, me, Some(&ann), None, &elsewhere, 10).unwrap();
        assert_eq!(
            (d.reason, d.authenticated, d.folder.name()),
            (Reason::UnauthenticatedHit, false, "Unknown")
        );
        let spam = Report::bare(Verdict::Spam, "forged", None);
        let d = decide(&s, &cfg, me, Some(&ann), Some(&spam), &pass(), 10).unwrap();
        assert_eq!(d.folder, Folder::Junk);
        let wanted = Report::bare(Verdict::Wanted, "ok", None);
        let d = decide(&s, &cfg, me, None, Some(&wanted), &none, 10).unwrap();
        assert_eq!((d.folder, d.auth_method), (Folder::Inbox, Some("stamp")));
        let mut suspect = Report::bare(Verdict::Suspect, "partial", None);
        assert!(!stamp_authenticates(&suspect));
        suspect.writer_auth = Some(WriterAuth::Pass("record".into()));
        assert!(stamp_authenticates(&suspect));
    }

    #[test]
    fn a_suspect_stamp_authenticates_only_when_every_difference_is_explained() {
        use mailstamp_core::verify::ComponentResult;
        let c = |name: &str, status| ComponentResult {
            name: name.to_owned(),
            family: None,
            status,
            weight: 1,
            note: None,
        };
        let mut r = Report::bare(Verdict::Suspect, "x", None);
        r.writer_auth = Some(WriterAuth::Pass("record".into()));
        r.components = vec![
            c("from", Status::Match),
            c("subject", Status::Explained),
            c("origin", Status::Unavailable),
        ];
        assert!(stamp_authenticates(&r));
        for bad in [Status::Mismatch, Status::Missing, Status::Added] {
            r.components.push(c("text.0", bad));
            assert!(!stamp_authenticates(&r), "{bad:?}");
            r.components.pop();
        }
        // Not authenticated, the authorised-senders hit is reported, not trusted.
        let s = Store::in_memory().unwrap();
        let cfg = Config::default();
        s.add_sender("me@ours.example", "a.example", None, 1)
            .unwrap();
        let ann = FromIdentity::new("ann@a.example", None).unwrap();
        r.components.push(c("text.0", Status::Mismatch));
        let d = decide(
            &s,
            &cfg,
            "me@ours.example",
            Some(&ann),
            Some(&r),
            &AuthOutcome::none(),
            10,
        )
        .unwrap();
        assert_eq!(
            (d.reason, d.authenticated, d.folder.name()),
            (Reason::UnauthenticatedHit, false, "Unknown")
        );
    }

    #[test]
    fn folder_names_and_users() {
        for ok in ["Unknown", "Strangers", "INBOX.Unknown", "Mail/Unknown_1"] {
            check_folder(ok).unwrap();
        }
        for bad in ["", "inbox", "a b", "x\"y", "../x", "a//b", &"x".repeat(65)] {
            assert!(check_folder(bad).is_err(), "{bad}");
        }
        assert_eq!(
            user_of("<Bob+tag@Ours.example>", Some('+')),
            "bob@ours.example"
        );
        assert_eq!(
            user_of("bob+tag@ours.example", None),
            "bob+tag@ours.example"
        );
    }
}
