// SPDX-License-Identifier: GPL-3.0-or-later
//! The self-training allowlist (seed 004): every outbound message the agent stamps creates or
//! refreshes a *partial* entry (our user, correspondent); an authenticated inbound message from
//! that correspondent to that user *completes* it. Entries carry first/last seen and counts and
//! expire after `[allowlist] expire_days` without traffic; a user keeps at most
//! `max_per_user` entries (the least recently seen go first). Nobody has to maintain it;
//! `mailstamp allowlist list|show|forget` lets an operator look and correct.
//!
//! Matching ([`lookup`]): a *full* match is the exact address; a *partial* match is the same
//! display name and domain, or (weaker) only the same domain, and only against a *complete*
//! entry — each with its own weight, configurable, and reported. [`crate::inbound::decide`]
//! trusts a hit only when the message is authenticated and the weight reaches `min_weight`.
//! By default both partial weights are below it: at a shared domain (gmail.com) anybody can
//! register an address with a correspondent's display name and pass DMARC, so a partial match
//! is reported, never trusted, unless an operator of a closed domain raises its weight.

use crate::error::Result;

use crate::config::{AllowlistConfig, PartialMatch};
use crate::people::{FromIdentity, MatchKind};
pub use crate::store::{AllowlistEntry, EntryState};
use crate::store::{OutboundEntry, Store};

impl AllowlistConfig {
    /// Seconds of idleness after which an entry expires.
    pub fn idle_secs(&self) -> u64 {
        self.expire_days.saturating_mul(86_400)
    }

    /// The weight of a match kind.
    pub fn weight(&self, kind: MatchKind) -> f64 {
        match kind {
            MatchKind::Full => self.weight_full,
            MatchKind::PartialNameDomain => self.weight_name_domain,
            MatchKind::PartialDomain => self.weight_domain,
        }
    }
}

fn clean_name(n: Option<&str>) -> Option<String> {
    n.map(|n| n.trim().trim_matches('"').trim().to_owned())
        .filter(|n| !n.is_empty())
        .map(|n| n.chars().take(200).collect())
}

/// Outbound: our `user` sent a stamped message to `to`. Creates a partial entry or refreshes
/// one (last seen, sent count, display name); a complete entry stays complete. Expired entries
/// are deleted on the way and the user's cap is enforced.
pub fn record_outbound(
    store: &Store,
    cfg: &AllowlistConfig,
    user: &str,
    to: &FromIdentity,
    now: u64,
) -> Result<()> {
    if !cfg.enabled {
        return Ok(());
    }
    let user = user.to_ascii_lowercase();
    let name = clean_name(to.display_name.as_deref());
    store.allowlist_outbound(&OutboundEntry {
        user: &user,
        address: &to.address,
        domain: &to.domain,
        display_name: name.as_deref(),
        now,
        cutoff: now.saturating_sub(cfg.idle_secs()),
        max_per_user: cfg.max_per_user as u64,
    })
}

/// Inbound: an authenticated message from `from` reached `user`. Completes (and refreshes) the
/// entry for that exact address if there is one that has not expired; returns whether it did.
/// Call it only for authenticated mail — a forged From must not complete anything.
pub fn complete(
    store: &Store,
    cfg: &AllowlistConfig,
    user: &str,
    from: &FromIdentity,
    now: u64,
) -> Result<bool> {
    if !cfg.enabled {
        return Ok(false);
    }
    store.allowlist_complete(
        &user.to_ascii_lowercase(),
        &from.address,
        clean_name(from.display_name.as_deref()).as_deref(),
        now,
        now.saturating_sub(cfg.idle_secs()),
    )
}

/// The best live (not expired) entry of `user` matching `from`, and how it matched: the exact
/// address, else the configured partial matches (name+domain before domain) against
/// *complete* entries only — a partial entry (we wrote to them, they never wrote back
/// authenticated) vouches for nobody but its own address.
pub fn lookup(
    store: &Store,
    cfg: &AllowlistConfig,
    user: &str,
    from: &FromIdentity,
    now: u64,
) -> Result<Option<(AllowlistEntry, MatchKind)>> {
    if !cfg.enabled {
        return Ok(None);
    }
    let user = user.to_ascii_lowercase();
    let cutoff = now.saturating_sub(cfg.idle_secs());
    if let Some(e) = store.allowlist_exact(&user, &from.address, cutoff)? {
        return Ok(Some((e, MatchKind::Full)));
    }
    let same_domain = store.allowlist_complete_at(&user, &from.domain, cutoff)?;
    let name = clean_name(from.display_name.as_deref());
    for p in [PartialMatch::NameDomain, PartialMatch::Domain] {
        if !cfg.partial.contains(&p) {
            continue;
        }
        let hit = match p {
            PartialMatch::NameDomain => name.as_ref().and_then(|n| {
                same_domain.iter().find(|e| {
                    e.display_name
                        .as_deref()
                        .is_some_and(|d| d.to_lowercase() == n.to_lowercase())
                })
            }),
            PartialMatch::Domain => same_domain.first(),
        };
        if let Some(e) = hit {
            let kind = match p {
                PartialMatch::NameDomain => MatchKind::PartialNameDomain,
                PartialMatch::Domain => MatchKind::PartialDomain,
            };
            return Ok(Some((e.clone(), kind)));
        }
    }
    Ok(None)
}

/// Deletes entries idle longer than `expire_days`; returns how many.
pub fn expire(store: &Store, cfg: &AllowlistConfig, now: u64) -> Result<usize> {
    store.allowlist_expire(now.saturating_sub(cfg.idle_secs()))
}

/// Entries of `user` (all users' with `None`), by user then most recent first.
pub fn list(store: &Store, user: Option<&str>) -> Result<Vec<AllowlistEntry>> {
    let user = user.map(str::to_ascii_lowercase);
    store.allowlist_entries(user.as_deref())
}

/// One entry.
pub fn show(store: &Store, user: &str, address: &str) -> Result<Option<AllowlistEntry>> {
    store.allowlist_entry(&user.to_ascii_lowercase(), &address.to_ascii_lowercase())
}

/// Forgets one correspondent of `user` (or, with `None`, every entry of `user`); returns how
/// many entries went.
pub fn forget(store: &Store, user: &str, address: Option<&str>) -> Result<usize> {
    let address = address.map(str::to_ascii_lowercase);
    store.allowlist_forget(&user.to_ascii_lowercase(), address.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(a: &str, n: Option<&str>) -> FromIdentity {
        FromIdentity::new(a, n).unwrap()
    }

    crate::store::on_both_backends!(fn outbound_creates_inbound_completes_idle_expires(s) {
        let cfg = AllowlistConfig::default();
        let ann = id("Ann@A.example", Some("Ann Lee"));
        record_outbound(&s, &cfg, "me@ours.example", &ann, 100).unwrap();
        record_outbound(&s, &cfg, "me@ours.example", &ann, 200).unwrap();
        let e = show(&s, "me@ours.example", "ann@a.example")
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.state, e.sent, e.first_seen, e.last_seen),
            (EntryState::Partial, 2, 100, 200)
        );
        // A partial entry gives no partial match: it vouches only for its own address.
        assert!(
            lookup(
                &s,
                &cfg,
                "me@ours.example",
                &id("lee@a.example", Some("ann lee")),
                200
            )
            .unwrap()
            .is_none()
        );
        assert!(complete(&s, &cfg, "me@ours.example", &ann, 300).unwrap());
        let e = show(&s, "me@ours.example", "ann@a.example")
            .unwrap()
            .unwrap();
        assert_eq!((e.state, e.received), (EntryState::Complete, 1));
        // Partial matches, with the configured kinds.
        let (_, k) = lookup(
            &s,
            &cfg,
            "me@ours.example",
            &id("lee@a.example", Some("ann lee")),
            300,
        )
        .unwrap()
        .unwrap();
        assert_eq!(k, MatchKind::PartialNameDomain);
        let (_, k) = lookup(&s, &cfg, "me@ours.example", &id("zed@a.example", None), 300)
            .unwrap()
            .unwrap();
        assert_eq!(k, MatchKind::PartialDomain);
        let only_full = AllowlistConfig {
            partial: vec![],
            ..cfg.clone()
        };
        assert!(
            lookup(
                &s,
                &only_full,
                "me@ours.example",
                &id("zed@a.example", None),
                300
            )
            .unwrap()
            .is_none()
        );
        // Idle past expiry: no longer matches, then deleted.
        let later = 300 + cfg.idle_secs() + 1;
        assert!(
            lookup(&s, &cfg, "me@ours.example", &ann, later)
                .unwrap()
                .is_none()
        );
        assert!(!complete(&s, &cfg, "me@ours.example", &ann, later).unwrap());
        assert_eq!(expire(&s, &cfg, later).unwrap(), 1);
        assert!(list(&s, None).unwrap().is_empty());
    });

    crate::store::on_both_backends!(fn the_cap_drops_the_least_recently_seen(s) {
        let cfg = AllowlistConfig {
            max_per_user: 2,
            ..AllowlistConfig::default()
        };
        for (i, a) in ["a@x.example", "b@x.example", "c@x.example"]
            .iter()
            .enumerate()
        {
            record_outbound(&s, &cfg, "me@ours.example", &id(a, None), 10 + i as u64).unwrap();
        }
        let left: Vec<_> = list(&s, Some("me@ours.example"))
            .unwrap()
            .into_iter()
            .map(|e| e.address)
            .collect();
        assert_eq!(left, ["c@x.example", "b@x.example"]);
        assert_eq!(
            forget(&s, "me@ours.example", Some("b@x.example")).unwrap(),
            1
        );
        assert_eq!(forget(&s, "me@ours.example", None).unwrap(), 1);
    });

    #[test]
    fn partial_matches_are_not_trusted_by_default() {
        // Carol Lee at a shared domain wrote back: an attacker's x@gmail.com named
        // "Carol Lee" (DMARC pass for gmail.com) must not weigh enough for the inbox.
        let cfg = AllowlistConfig::default();
        for k in [MatchKind::PartialNameDomain, MatchKind::PartialDomain] {
            assert!(cfg.weight(k) < cfg.min_weight, "{k:?}");
        }
        assert!(cfg.weight(MatchKind::Full) >= cfg.min_weight);
    }

    #[test]
    fn bad_weights_are_refused() {
        let c = AllowlistConfig {
            weight_domain: 1.5,
            ..AllowlistConfig::default()
        };
        assert!(c.check().unwrap_err().to_string().contains("weight_domain"));
    }
}
