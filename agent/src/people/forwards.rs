// SPDX-License-Identifier: GPL-3.0-or-later
//! A user's other addresses that forward to them (issue 13 point 3, docs/PROTOCOL.md §5c):
//! `bob@forward.example` lists `bob@b.example` when b.example resends his mail there without
//! running an agent. A stamp whose envelope recipients cover one of them — rather than the
//! address the message arrived for — was addressed to the user, so it is judged as if it had
//! arrived for that address; without the list, such a forward cannot be told from a replay.
//!
//! Only the user (or the operator for them) says which addresses are theirs: the list is
//! checked against nothing else. Its cost if wrong is the replay protection of the listed
//! address alone (mail stamped for it, replayed to the user, counts as the user's) — never of
//! anyone else's. The statements are `store::people`; the rules (normalised addresses, not the
//! user's own, a cap) are here.

use crate::error::{Result, bail};
use crate::store::{ForwardRow, Store};

use super::normalise_address;

/// Most other addresses a user may list: a person has a handful; this bounds the store work
/// of each stamped message (one read per recipient).
pub const MAX_PER_USER: u64 = 100;

/// Adds `address` as one of `user`'s other addresses (both normalised here); whether it is
/// new. Refused: an address that is not one, the user's own address, more than
/// [`MAX_PER_USER`].
pub fn add(store: &Store, user: &str, address: &str, now: u64) -> Result<bool> {
    let user = normalise_address(user)?;
    let address = normalise_address(address)?;
    if address == user {
        bail!("{address} is {user}'s own address: list the addresses that forward to it");
    }
    if store.forward_count(&user)? >= MAX_PER_USER {
        bail!(
            "{user} already has {MAX_PER_USER} other addresses: remove one first (`mailstamp forwards remove --user {user} ADDRESS`)"
        );
    }
    store.insert_forward(&user, &address, now)
}

/// Removes one of `user`'s other addresses; whether it was there.
pub fn remove(store: &Store, user: &str, address: &str) -> Result<bool> {
    store.delete_forward(&normalise_address(user)?, &normalise_address(address)?)
}

/// The other addresses of `user` (lower case), for the judging of a stamp.
pub fn of(store: &Store, user: &str) -> Result<Vec<String>> {
    let user = normalise_address(user)?;
    Ok(store
        .forward_rows(Some(&user))?
        .into_iter()
        .map(|r| r.address)
        .collect())
}

/// Every user's (or one user's) other addresses.
pub fn list(store: &Store, user: Option<&str>) -> Result<Vec<ForwardRow>> {
    let user = user.map(normalise_address).transpose()?;
    store.forward_rows(user.as_deref())
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)]
    use super::*;

    crate::store::on_both_backends!(fn a_user_lists_other_addresses_once_never_their_own_and_at_most_the_cap(store) {
        let store = &store;
        assert!(add(store, "Bob@Forward.example", "<bob@B.example>", 1).unwrap());
        assert!(!add(store, "bob@forward.example", "bob@b.example", 2).unwrap());
        assert_eq!(of(store, "bob@forward.example").unwrap(), ["bob@b.example"]);
        let e = add(store, "bob@forward.example", "BOB@forward.example", 3).unwrap_err();
        assert!(e.to_string().contains("own address"), "{e}");
        let e = add(store, "bob@forward.example", "not an address", 3).unwrap_err();
        assert!(e.to_string().contains("not a mail address"), "{e}");
        for i in 1..MAX_PER_USER {
            add(store, "bob@forward.example", &format!("b{i}@b.example"), 4).unwrap();
        }
        let e = add(store, "bob@forward.example", "one@more.example", 5).unwrap_err();
        assert!(e.to_string().contains("already has 100"), "{e}");
        assert!(remove(store, "bob@forward.example", "bob@b.example").unwrap());
        assert!(!remove(store, "bob@forward.example", "bob@b.example").unwrap());
        assert_eq!(list(store, None).unwrap().len(), 99);
        assert!(of(store, "carol@forward.example").unwrap().is_empty());
    });
}
