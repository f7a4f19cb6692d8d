// SPDX-License-Identifier: GPL-3.0-or-later
//! The verbs of the `mailstamp` binary, one file per family: flags in, library calls, output.

pub(crate) mod audit;
pub(crate) mod daemon;
pub(crate) mod deploy;
pub(crate) mod onboard;
pub(crate) mod people;
pub(crate) mod recover;
pub(crate) mod stamp;
pub(crate) mod verify;
