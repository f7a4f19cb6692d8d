// SPDX-License-Identifier: GPL-3.0-or-later
//! The library's one error type. What matters to a mail flow is whether trying again later can
//! help: [`Error::Refused`] is permanent (the same message would be refused again: a From domain
//! that does not authorise our writer, no writer key, not a message at all), [`Error::Config`]
//! names the configuration key that is wrong, and everything else ([`Error::Trouble`]: the
//! chain, an RPC endpoint, DNS, the store, the file system) is temporary — the MTA keeps the
//! mail and retries (DESIGN property 7). Errors are plain data (`Clone`), so one answer can be
//! handed to every task waiting for it (a batch's messages).
//!
//! `anyhow` is for the binary and the tests; the library builds its messages with [`bail!`],
//! [`err!`] and [`Context`], which keep anyhow's formatting: `{}` shows the outermost message,
//! `{:#}` the whole chain joined by `": "`.

use std::fmt;
use std::sync::Arc;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A configuration value is wrong; `key` names it (`chain.rpc_url`, `milter.authserv_id`).
    #[error("{}{key}: {problem}", file.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Config {
        /// The configuration file, once known.
        file: Option<String>,
        /// The dotted key.
        key: String,
        /// What is wrong and what to give instead.
        problem: String,
    },
    /// Refused for good: asking again gives the same answer.
    #[error("{reason}")]
    Refused {
        /// The RFC 3463 enhanced status code a mail reply carries (`5.7.1`, `5.6.0`…).
        xcode: &'static str,
        /// Why, and what would fix it.
        reason: String,
    },
    /// Anything else: temporary trouble for a mail flow (the message is kept and retried).
    #[error(transparent)]
    Trouble(Trouble),
}

/// A message with the chain of its causes, outermost first.
#[derive(Clone, PartialEq, Eq)]
pub struct Trouble {
    msg: Arc<str>,
    cause: Option<Box<Error>>,
}

impl fmt::Debug for Trouble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:#}")
    }
}

impl fmt::Display for Trouble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if f.alternate()
            && let Some(c) = &self.cause
        {
            write!(f, ": {c:#}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Trouble {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        format!("{self:#}") == format!("{other:#}")
    }
}

impl Eq for Error {}

impl Error {
    /// Temporary trouble with this message.
    pub fn msg(msg: impl fmt::Display) -> Self {
        Self::Trouble(Trouble {
            msg: msg.to_string().into(),
            cause: None,
        })
    }

    /// A wrong configuration value.
    pub fn config(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Config {
            file: None,
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// This error as found in the configuration file `path`: a config error names the file,
    /// anything else gets it in front.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Self::Config { key, problem, .. } => Self::Config {
                file: Some(path.display().to_string()),
                key,
                problem,
            },
            other => other.context(format!("config file {}", path.display())),
        }
    }

    /// A permanent refusal with its enhanced status code.
    pub fn refused(xcode: &'static str, reason: impl Into<String>) -> Self {
        Self::Refused {
            xcode,
            reason: reason.into(),
        }
    }

    /// This error with `msg` in front. A refusal stays a refusal (and a config error stays
    /// one): what kind of error it is does not change with the context it is reported in.
    pub fn context(self, msg: impl fmt::Display) -> Self {
        match self {
            Self::Refused { xcode, reason } => Self::Refused {
                xcode,
                reason: format!("{msg}: {reason}"),
            },
            other => Self::Trouble(Trouble {
                msg: msg.to_string().into(),
                cause: Some(Box::new(other)),
            }),
        }
    }

    /// Whether asking again later cannot help (a refusal or a configuration mistake).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::Config { .. })
    }

    /// The refusal this error is, if it is one: its enhanced status code and reason. A
    /// configuration mistake is not one: mail waits (4xx) while the operator fixes it.
    pub fn refusal(&self) -> Option<(&'static str, &str)> {
        match self {
            Self::Refused { xcode, reason } => Some((xcode, reason)),
            Self::Config { .. } | Self::Trouble(_) => None,
        }
    }

    /// From a standard error, keeping its chain of sources as messages.
    fn from_std(e: &(dyn std::error::Error + 'static)) -> Self {
        Self::Trouble(Trouble {
            msg: e.to_string().into(),
            cause: e.source().map(|s| Box::new(Self::from_std(s))),
        })
    }
}

/// Every foreign error the library meets becomes temporary trouble, its sources kept.
macro_rules! from_std {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Self::from_std(&e)
            }
        }
    )*};
}

from_std!(
    std::io::Error,
    std::fmt::Error,
    std::num::ParseIntError,
    std::str::Utf8Error,
    std::string::FromUtf8Error,
    std::net::AddrParseError,
    rusqlite::Error,
    postgres::Error,
    r2d2::Error,
    toml::de::Error,
    serde_json::Error,
    hex::FromHexError,
    alloy::hex::FromHexError,
    alloy::transports::TransportError,
    alloy::providers::PendingTransactionError,
    alloy::contract::Error,
    alloy::signers::local::LocalSignerError,
    alloy::signers::Error,
    alloy::sol_types::Error,
    std::num::TryFromIntError,
    std::env::VarError,
    tokio::task::JoinError,
    mail_auth::Error,
    hickory_resolver::net::NetError,
);

/// `.context(…)` and `.with_context(|| …)` on results and options, as in anyhow.
pub trait Context<T> {
    /// Puts `msg` in front of the error (or makes `None` an error saying `msg`).
    fn context(self, msg: impl fmt::Display) -> Result<T>;
    /// As [`Context::context`], the message made only on error.
    fn with_context<M: fmt::Display>(self, f: impl FnOnce() -> M) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, msg: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(msg))
    }
    fn with_context<M: fmt::Display>(self, f: impl FnOnce() -> M) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, msg: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::msg(msg))
    }
    fn with_context<M: fmt::Display>(self, f: impl FnOnce() -> M) -> Result<T> {
        self.ok_or_else(|| Error::msg(f()))
    }
}

/// An [`Error::Trouble`] from a format string.
macro_rules! err {
    ($($t:tt)*) => { $crate::error::Error::msg(format!($($t)*)) };
}

/// Returns an [`Error::Trouble`] from a format string.
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::error::err!($($t)*)) };
}

pub(crate) use {bail, err};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_format_as_anyhow_does() {
        let e: Result<()> = Err(std::io::Error::other("disk full").into());
        let e = e.context("cannot write x").context("stamping").unwrap_err();
        assert_eq!(format!("{e}"), "stamping");
        assert_eq!(format!("{e:#}"), "stamping: cannot write x: disk full");
        assert!(!e.is_permanent());
    }

    #[test]
    fn a_refusal_stays_a_refusal_under_context() {
        let e = Error::refused("5.7.1", "domain x does not list our writer").context("a.eml");
        assert!(e.is_permanent());
        assert_eq!(
            e.refusal(),
            Some(("5.7.1", "a.eml: domain x does not list our writer"))
        );
        let t = Error::msg("RPC down").context("stamping");
        assert!(!t.is_permanent() && t.refusal().is_none());
        let c = Error::config("chain.rpc_url", "`x` is not a URL");
        assert_eq!(c.to_string(), "chain.rpc_url: `x` is not a URL");
        let c = c.in_file(std::path::Path::new("/etc/m.toml"));
        assert_eq!(
            c.to_string(),
            "/etc/m.toml: chain.rpc_url: `x` is not a URL"
        );
        assert!(c.is_permanent());
    }

    #[test]
    fn options_become_errors() {
        let e = None::<u8>.context("no writer key").unwrap_err();
        assert_eq!(e.to_string(), "no writer key");
    }
}
