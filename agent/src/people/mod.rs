// SPDX-License-Identifier: GPL-3.0-or-later
//! The people around a local user: who a message is from ([`identity`]), the senders the user
//! authorised ([`senders`], seed 003) and the allowlist outbound mail trains ([`allowlist`],
//! seed 004). The folder decision that reads them is `crate::inbound`. A user's other
//! addresses that forward to them ([`forwards`], issue 13) are read when a stamp is judged.

pub mod allowlist;
pub mod forwards;
pub mod identity;
pub mod senders;

pub use identity::{FromIdentity, MatchKind, normalise_address, normalise_domain, user_of};

#[cfg(test)]
mod tests {
    use super::allowlist::EntryState;
    use super::senders::SenderKind;

    #[test]
    fn the_stored_kinds_and_states_read_back_what_they_write() {
        for v in SenderKind::ALL {
            assert_eq!(v.as_str().parse::<SenderKind>(), Ok(*v));
        }
        for v in EntryState::ALL {
            assert_eq!(v.as_str().parse::<EntryState>(), Ok(*v));
        }
        assert!("partial ".parse::<EntryState>().is_err());
        assert!("Domain".parse::<SenderKind>().is_err());
    }
}
