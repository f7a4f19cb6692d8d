// SPDX-License-Identifier: GPL-3.0-or-later
//! The verbs of the `mailstamp` binary, one file per family: flags in, library calls, output.

pub(crate) mod audit;
pub(crate) mod daemon;
pub(crate) mod deploy;
pub(crate) mod doctor;
pub(crate) mod onboard;
pub(crate) mod people;
pub(crate) mod recover;
pub(crate) mod stamp;
pub(crate) mod store;
pub(crate) mod verify;

/// Whether the log lines are JSON (`log.format = "json"`), set once at start.
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// The target of the daemons' notices (listening, reloaded, stopped…): always shown, whatever
/// `MAILSTAMP_LOG` says, as they were before there were log formats.
const NOTICE: &str = "mailstamp_notice";

/// Sets up the log lines on stderr: the level from `MAILSTAMP_LOG` (default `warn`), the
/// format from `[log]`. JSON puts each event's fields at the top level of its object.
pub(crate) fn init_logs(format: mailstamp::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MAILSTAMP_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn"))
        .add_directive(
            format!("{NOTICE}=info")
                .parse()
                .expect("a constant directive parses"),
        );
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let json = format == mailstamp::config::LogFormat::Json;
    let _ = JSON_LOGS.set(json);
    if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        fmt.init();
    }
}

/// A daemon's notice to the operator: as plain text (as before log formats existed), or as
/// one JSON log line, so that in JSON mode every line on stderr is JSON.
pub(crate) fn notice_at_info(msg: std::fmt::Arguments<'_>) {
    if JSON_LOGS.get().copied().unwrap_or(false) {
        tracing::info!(target: NOTICE, "{msg}");
    } else {
        eprintln!("{msg}");
    }
}

/// As [`notice_at_info`], for an error (level `ERROR` in JSON).
pub(crate) fn notice_error(msg: std::fmt::Arguments<'_>) {
    if JSON_LOGS.get().copied().unwrap_or(false) {
        tracing::error!(target: NOTICE, "{msg}");
    } else {
        eprintln!("{msg}");
    }
}

/// A daemon's notice ([`notice_at_info`]) from a format string.
macro_rules! notice {
    ($($t:tt)*) => { $crate::cli::notice_at_info(format_args!($($t)*)) };
}
pub(crate) use notice;
