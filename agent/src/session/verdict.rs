// SPDX-License-Identifier: GPL-3.0-or-later
//! THE mapping from a verdict to an action ([`action_for`]) and the SMTP refusal of an action.
//! Both adapters take their answer from here: one policy, one place.

use mailstamp_core::Verdict;

use crate::config::{MilterConfig, TroublePolicy, VerdictAction};
use crate::maps::VerifyPolicy;

use super::Refusal;

/// THE mapping from a verdict to an action. The action is the configured one for the
/// verdict, overridden per sender/recipient by `verify` policies; with several recipients
/// the strictest action wins (one message, one answer). `temperror` follows `on_temperror`:
/// a slow chain never makes spam.
pub fn action_for(
    verdict: Verdict,
    mc: &MilterConfig,
    sender: Option<&VerifyPolicy>,
    rcpts: &[Option<VerifyPolicy>],
) -> VerdictAction {
    match mc.actions.get(verdict) {
        None => match mc.on_temperror {
            TroublePolicy::Tempfail => VerdictAction::Tempfail,
            TroublePolicy::Pass => VerdictAction::AddHeader,
        },
        Some(global) => {
            let for_rcpt = |p: &Option<VerifyPolicy>| {
                p.as_ref()
                    .and_then(|p| p.action(verdict))
                    .or_else(|| sender.and_then(|p| p.action(verdict)))
                    .unwrap_or(global)
            };
            if rcpts.is_empty() {
                for_rcpt(&None)
            } else {
                rcpts.iter().map(for_rcpt).max().unwrap_or(global)
            }
        }
    }
}

/// The SMTP refusal of a verdict's action (`tempfail` and `reject` only).
pub fn verdict_refusal(action: VerdictAction, verdict: Verdict) -> Option<Refusal> {
    let v = verdict.as_str();
    match action {
        VerdictAction::Tempfail => Some(Refusal {
            code: 451,
            xcode: "4.7.1".to_owned(),
            text: if verdict == Verdict::Temperror {
                "mailstamp: the stamp cannot be checked now, try again later".to_owned()
            } else {
                format!("mailstamp: message deferred (verdict {v})")
            },
        }),
        VerdictAction::Reject => Some(Refusal {
            code: 550,
            xcode: "5.7.1".to_owned(),
            text: format!("mailstamp: message refused, its stamp verdict is {v}"),
        }),
        VerdictAction::Accept
        | VerdictAction::AddHeader
        | VerdictAction::Quarantine
        | VerdictAction::Discard => None,
    }
}

/// Whether the result headers go on a message for `action`.
pub fn adds_headers(action: VerdictAction) -> bool {
    matches!(action, VerdictAction::AddHeader | VerdictAction::Quarantine)
}
