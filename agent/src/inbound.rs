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

use mailstamp_core::{Report, Status, Verdict, WriterAuth};
use serde::Serialize;

use crate::auth::AuthOutcome;
use crate::config::Config;
use crate::error::Result;
use crate::people::{FromIdentity, MatchKind, allowlist};
use crate::store::Store;

/// Header naming the folder the milter/relay chose: `INBOX` or the separate folder.
pub const FOLDER_HEADER: &str = "X-Mailstamp-Folder";
/// Header listing the recipients (`<addr>`, comma separated) for whom the message goes to the
/// INBOX although [`FOLDER_HEADER`] names the separate folder (recipients disagree).
pub const INBOX_FOR_HEADER: &str = "X-Mailstamp-Inbox-For";
/// Header reporting a list hit for one recipient (trusted or not), one field per recipient.
pub const LIST_HEADER: &str = "X-Mailstamp-List";

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

crate::store::stored_enum!(Reason, "folder reason", {
    StampWanted => "stamp_wanted",
    StampRejected => "stamp_rejected",
    AuthorisedSender => "authorised_sender",
    Allowlisted => "allowlisted",
    UnauthenticatedHit => "unauthenticated_hit",
    WeakHit => "weak_hit",
    Stranger => "stranger",
    NoFrom => "no_from",
});

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

/// Decides the folder of a message for `user` (a lower-case address, see [`user_of`]) from
/// `cfg` (`[inbound]`, `[allowlist]`), the From identity (`None`: no usable From), the stamp
/// report (`None`: not verified, treated as unstamped) and the DMARC outcome. Reads the store
/// only; call [`learn`] afterwards to complete allowlist entries. Part B (`recover`): call it
/// per message with `FromIdentity::of_message`, `verifying::verify`'s report and
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
    use crate::config::people::check_folder;
    use crate::people::user_of;

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

    /// A stamp whose message has a field RFC 5322 allows once twice (core: `spam` for From,
    /// To, Cc, Subject, Date, Message-ID; `invalid` for the others) or two `Mail-Stamp:`
    /// fields (`invalid`) never authenticates and is filed as junk, even when an authorised
    /// sender matches and DMARC passes: `recover` keeps it too (it files by `decide`).
    #[test]
    fn a_stamp_with_duplicate_fields_never_authenticates() {
        let s = Store::in_memory().unwrap();
        let cfg = Config::default();
        let me = "me@ours.example";
        s.add_sender(me, "a.example", None, 1).unwrap();
        let ann = FromIdentity::new("ann@a.example", Some("Ann")).unwrap();
        for (verdict, why) in [
            (
                Verdict::Spam,
                "more than one From field (RFC 5322 allows one)",
            ),
            (
                Verdict::Invalid,
                "more than one Reply-To field (RFC 5322 allows one)",
            ),
            (
                Verdict::Invalid,
                "Mail-Stamp header: more than one Mail-Stamp field",
            ),
        ] {
            let mut r = Report::bare(verdict, why, None);
            r.writer_auth = Some(WriterAuth::Pass("record".into()));
            assert!(!stamp_authenticates(&r), "{why}");
            let d = decide(&s, &cfg, me, Some(&ann), Some(&r), &pass(), 10).unwrap();
            assert_eq!(
                (d.folder, d.reason),
                (Folder::Junk, Reason::StampRejected),
                "{why}"
            );
            assert_ne!(d.auth_method, Some("stamp"), "{why}");
        }
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
