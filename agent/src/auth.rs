// SPDX-License-Identifier: GPL-3.0-or-later
//! Sender authentication for the allowlist's trust rule: DMARC (RFC 7489 / 9989) — SPF and
//! DKIM aligned with the From domain — checked with Stalwart's mail-auth crate, asking the
//! name servers of `[dns]` (or the system's). Without a client IP (mail the agent did not
//! receive over SMTP, e.g. `mailstamp recover` on a Maildir) SPF is `none` and only DKIM can
//! pass. Any DNS trouble is `temperror`: never a pass.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use crate::error::Result;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, SpfOutput, SpfResult,
    dmarc::verify::DmarcParameters,
};
use serde::Serialize;

use crate::config::DnsConfig;

/// One method's result, as in `Authentication-Results:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    /// Passed.
    Pass,
    /// Failed.
    Fail,
    /// Soft fail / neutral (SPF).
    Neutral,
    /// Nothing to check (no record, no signature, no IP).
    None,
    /// DNS trouble: try again later.
    TempError,
    /// Broken records or signatures.
    PermError,
}

impl AuthResult {
    /// The RFC 8601 word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Neutral => "neutral",
            Self::None => "none",
            Self::TempError => "temperror",
            Self::PermError => "permerror",
        }
    }
}

/// What authentication found for one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthOutcome {
    /// The RFC 5322 From domain DMARC was evaluated for.
    pub from_domain: Option<String>,
    /// SPF for the MAIL FROM (or HELO) identity; `none` without a client IP.
    pub spf: AuthResult,
    /// The best DKIM result among the signatures (pass if any passes).
    pub dkim: AuthResult,
    /// DMARC: pass when SPF or DKIM passed *aligned* with the From domain.
    pub dmarc: AuthResult,
    /// Which aligned method passed (`dkim`, `spf`), for reports.
    pub aligned: Option<&'static str>,
}

impl AuthOutcome {
    /// Nothing checked (no authenticator, or a message mail-auth cannot parse).
    pub fn none() -> Self {
        Self {
            from_domain: None,
            spf: AuthResult::None,
            dkim: AuthResult::None,
            dmarc: AuthResult::None,
            aligned: None,
        }
    }

    /// Whether DMARC passed: the From domain is authenticated.
    pub fn pass(&self) -> bool {
        self.dmarc == AuthResult::Pass
    }

    /// `spf=… dkim=… dmarc=…` for a header or a report.
    pub fn summary(&self) -> String {
        format!(
            "spf={} dkim={} dmarc={}{}",
            self.spf.as_str(),
            self.dkim.as_str(),
            self.dmarc.as_str(),
            self.from_domain
                .as_deref()
                .map(|d| format!(" header.from={d}"))
                .unwrap_or_default()
        )
    }
}

/// The DMARC checker: a mail-auth authenticator on the configured name servers.
pub struct Authenticator {
    inner: MessageAuthenticator,
    host: String,
    timeout: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("host", &self.host)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator asking the name servers of `dns` (the system's when empty). `host` is
    /// this host's name (SPF's `%{r}`). Part B: build one per run from `cfg.dns`.
    pub fn new(dns: &DnsConfig, host: &str) -> Result<Self> {
        let (config, opts) = crate::dns::resolver_config(dns)?;
        let inner = MessageAuthenticator::new(config, opts)
            .map_err(|e| crate::error::err!("cannot build the DMARC resolver: {e}"))?;
        // SPF may take up to 10 lookups, DKIM one per signature, DMARC a tree walk.
        let timeout =
            Duration::from_secs(dns.timeout_secs.max(1) * dns.attempts.max(1) as u64 * 4 + 2);
        Ok(Self {
            inner,
            host: host.to_owned(),
            timeout,
        })
    }

    /// Checks SPF (when `client_ip` is known), DKIM and DMARC for the raw message `raw` (CRLF
    /// or LF), received from `client_ip` that said `helo` and gave `mail_from` (empty for the
    /// null sender). Never fails: trouble is `temperror`, an unparsable message `none`.
    pub async fn authenticate(
        &self,
        raw: &[u8],
        client_ip: Option<IpAddr>,
        helo: &str,
        mail_from: &str,
    ) -> AuthOutcome {
        let Some(msg) = AuthenticatedMessage::parse(raw) else {
            return AuthOutcome::none();
        };
        self.within_timeout(self.check(msg, client_ip, helo, mail_from))
            .await
    }

    async fn within_timeout(&self, check: impl Future<Output = AuthOutcome>) -> AuthOutcome {
        match tokio::time::timeout(self.timeout, check).await {
            Ok(o) => o,
            Err(_) => AuthOutcome {
                dmarc: AuthResult::TempError,
                ..AuthOutcome::none()
            },
        }
    }

    async fn check(
        &self,
        msg: AuthenticatedMessage<'_>,
        client_ip: Option<IpAddr>,
        helo: &str,
        mail_from: &str,
    ) -> AuthOutcome {
        let dkim = self.inner.verify_dkim(&msg).await;
        let helo = helo.trim().trim_end_matches('.');
        let mail_from = crate::util::bare_address(mail_from);
        let mail_from_domain = mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .to_ascii_lowercase();
        let spf = match client_ip {
            Some(ip) => {
                self.inner
                    .verify_spf(SpfParameters::verify_mail_from(
                        ip, helo, &self.host, mail_from,
                    ))
                    .await
            }
            None => SpfOutput::new(mail_from_domain.clone()).with_result(SpfResult::None),
        };
        let dmarc = self
            .inner
            .verify_dmarc(DmarcParameters::new(&msg, &dkim, &mail_from_domain, &spf))
            .await;
        let dkim_best = dkim
            .iter()
            .map(|d| dkim_result(d.result()))
            .min_by_key(|r| rank(*r))
            .unwrap_or(AuthResult::None);
        let aligned = if dmarc.dkim_result() == &DmarcResult::Pass {
            Some("dkim")
        } else if dmarc.spf_result() == &DmarcResult::Pass {
            Some("spf")
        } else {
            None
        };
        // `result()`: pass, else the most telling error, else fail (not aligned) when the
        // domain publishes a policy, else none.
        let result = dmarc_result(&dmarc.result());
        let from_domain = Some(dmarc.domain().to_owned()).filter(|d| !d.is_empty());
        AuthOutcome {
            from_domain,
            spf: spf_result(spf.result()),
            dkim: dkim_best,
            dmarc: result,
            aligned,
        }
    }
}

/// Order for "the best of several": pass first, then fail (a definite answer), then the rest.
fn rank(r: AuthResult) -> u8 {
    match r {
        AuthResult::Pass => 0,
        AuthResult::Fail => 1,
        AuthResult::TempError => 2,
        AuthResult::PermError => 3,
        AuthResult::Neutral => 4,
        AuthResult::None => 5,
    }
}

fn dkim_result(r: &DkimResult) -> AuthResult {
    match r {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(_) => AuthResult::PermError,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::None => AuthResult::None,
    }
}

fn spf_result(r: SpfResult) -> AuthResult {
    match r {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail | SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn dmarc_result(r: &DmarcResult) -> AuthResult {
    match r {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::TempError,
        DmarcResult::PermError(_) => AuthResult::PermError,
        DmarcResult::None => AuthResult::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dmarc_pass_authenticates_and_the_summary_says_why() {
        let none = AuthOutcome::none();
        assert!(!none.pass());
        assert_eq!(none.summary(), "spf=none dkim=none dmarc=none");
        let dkim_only = AuthOutcome {
            from_domain: Some("c.example".into()),
            dkim: AuthResult::Pass,
            dmarc: AuthResult::Fail,
            ..AuthOutcome::none()
        };
        // A DKIM signature of another domain passes DKIM but not DMARC: not authenticated.
        assert!(!dkim_only.pass());
        assert_eq!(
            dkim_only.summary(),
            "spf=none dkim=pass dmarc=fail header.from=c.example"
        );
        assert_eq!(rank(AuthResult::Pass), 0);
        assert_eq!(spf_result(SpfResult::SoftFail), AuthResult::Neutral);
        assert_eq!(
            dmarc_result(&DmarcResult::TempError(mail_auth::Error::Io("x".into()))),
            AuthResult::TempError
        );
    }

    #[tokio::test]
    async fn an_unparsable_message_or_no_answer_is_never_a_pass() {
        // A name server that never answers (discard port): DNS trouble, not a pass.
        let dns = DnsConfig {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout_secs: 1,
            attempts: 1,
        };
        let a = Authenticator::new(&dns, "mx.b.example").unwrap();
        let o = a.authenticate(b"", None, "", "").await;
        assert!(!o.pass());
        let raw = b"From: a@c.example\r\nSubject: x\r\n\r\nbody\r\n";
        let o = a
            .authenticate(raw, None, "mail.c.example", "a@c.example")
            .await;
        assert!(!o.pass(), "{o:?}");
        assert_eq!(o.spf, AuthResult::None, "no client IP: no SPF");
    }
}
