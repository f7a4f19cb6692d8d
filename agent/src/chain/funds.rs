// SPDX-License-Identifier: GPL-3.0-or-later
//! The writer's funds: its balance, the runway at the rate it spends, and an "insufficient
//! funds" answer of the node turned into an error that names the writer, its balance and what
//! the write needs (temporary: the mail is kept and retried once the writer is funded).

use alloy::primitives::U256;
use alloy::providers::Provider;

use crate::error::{Error, Result, err};

use super::{Chain, within};

/// Gas of one direct stamp, rounded up (docs/PERFORMANCE.md: 46.3k), for the runway.
pub const STAMP_GAS: u64 = 47_000;

/// `wei` in ETH with up to 6 decimals.
pub fn eth(wei: U256) -> String {
    let unit = U256::from(10u64).pow(U256::from(18u64));
    let whole = wei / unit;
    let micro = (wei % unit) / U256::from(10u64).pow(U256::from(12u64));
    format!("{whole}.{micro:0>6}")
}

/// Whether a node's error says the sender cannot pay (geth, reth, anvil and most hosted
/// endpoints word it "insufficient funds").
pub(super) fn is_insufficient_funds(e: &impl std::fmt::Display) -> bool {
    e.to_string()
        .to_ascii_lowercase()
        .contains("insufficient funds")
}

/// What the writer's balance tells, against what it spends: the warning to log, if any.
/// `spent_per_hour` is the rate observed so far (`None`: nothing spent yet), `fee` the max
/// fee per gas now; low means fewer than `low_hours` of stamping at the observed rate, or,
/// before any spend, fewer than 100 direct stamps at the current fee.
pub fn funds_warning(
    balance: U256,
    spent_per_hour: Option<U256>,
    fee: u128,
    low_hours: u64,
) -> Option<String> {
    match spent_per_hour.filter(|r| !r.is_zero()) {
        Some(rate) => {
            let hours = balance / rate;
            (hours < U256::from(low_hours)).then(|| {
                format!(
                    "the writer has {} ETH: about {hours} h of stamping left at the rate since start ({} ETH/h), under chain.low_funds_hours ({low_hours} h)",
                    eth(balance),
                    eth(rate)
                )
            })
        }
        None if balance.is_zero() => Some(
            "the writer has 0 ETH: every stamp and anchor will fail until it is funded".to_owned(),
        ),
        None => {
            let per_stamp = U256::from(fee) * U256::from(STAMP_GAS);
            let stamps = balance.checked_div(per_stamp).unwrap_or(U256::MAX);
            (stamps < U256::from(100u64)).then(|| {
                format!(
                    "the writer has {} ETH: about {stamps} direct stamps at {:.3} gwei, fewer than 100",
                    eth(balance),
                    fee as f64 / 1e9
                )
            })
        }
    }
}

impl Chain {
    /// The writer's balance at the head (`None` without a writer key).
    pub async fn balance(&self) -> Result<Option<U256>> {
        let Some(w) = self.writer else {
            return Ok(None);
        };
        within(self.timeout, "eth_getBalance", async {
            Ok(Some(self.provider.get_balance(w).await?))
        })
        .await
    }

    /// The node's max fee per gas now (EIP-1559 estimate).
    pub async fn max_fee(&self) -> Result<u128> {
        within(self.timeout, "eth_feeHistory", async {
            Ok(self.provider.estimate_eip1559_fees().await?.max_fee_per_gas)
        })
        .await
    }

    /// The clear error of a write the writer cannot pay for: writer, balance, and the most
    /// the write may cost (`gas` × `max_fee`). Temporary: once funded, the retry goes through.
    pub(super) async fn no_funds(&self, what: &str, gas: u64, max_fee: u128) -> Error {
        let writer = self
            .writer
            .map_or_else(|| "?".to_owned(), |w| format!("{w:#x}"));
        let balance = match self.balance().await {
            Ok(Some(b)) => format!("{} ETH", eth(b)),
            _ => "unknown".to_owned(),
        };
        let need = U256::from(gas) * U256::from(max_fee);
        err!(
            "writer {writer} cannot pay for the {what}: balance {balance}, the transaction needs up to {} ETH \
             ({gas} gas × {:.3} gwei); send ETH on chain {} to {writer} (the mail is kept and retried)",
            eth(need),
            max_fee as f64 / 1e9,
            self.chain_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GWEI: u128 = 1_000_000_000;

    #[test]
    fn the_runway_is_judged_by_the_observed_rate_or_else_by_a_hundred_stamps() {
        let eth1 = U256::from(10u64).pow(U256::from(18u64));
        // 1 ETH at 0.1 ETH/h: 10 h, under 24 h.
        let w = funds_warning(eth1, Some(eth1 / U256::from(10u64)), GWEI, 24).unwrap();
        assert!(w.contains("about 10 h") && w.contains("24 h"), "{w}");
        assert!(funds_warning(eth1, Some(eth1 / U256::from(100u64)), GWEI, 24).is_none());
        // Nothing spent yet: 1 ETH at 1 gwei is ~21k stamps, fine; 0.001 ETH is ~21.
        assert!(funds_warning(eth1, None, GWEI, 24).is_none());
        let w = funds_warning(eth1 / U256::from(1000u64), None, GWEI, 24).unwrap();
        assert!(w.contains("about 21 direct stamps"), "{w}");
        // Empty: a warning whatever the fee (even when the node gave none).
        let w = funds_warning(U256::ZERO, None, 0, 24).unwrap();
        assert!(w.contains("0 ETH"), "{w}");
    }

    #[test]
    fn insufficient_funds_is_recognised_in_the_usual_wordings() {
        assert!(is_insufficient_funds(
            &"insufficient funds for gas * price + value"
        ));
        assert!(is_insufficient_funds(
            &"server returned an error response: error code -32003: Insufficient funds for gas * price + value"
        ));
        assert!(!is_insufficient_funds(&"nonce too low"));
    }
}
