// SPDX-License-Identifier: GPL-3.0-or-later
//! Small helpers every layer uses and that no library offers in the form needed here: the
//! clock and the few dates the agent prints, printable text for replies and headers, this
//! host's name, address brackets, and (in [`net`]) IP networks, `HOST:PORT` and domain names.

pub mod net;

pub use net::{Net, normalise_name, split_host_port, validate_domain};

/// Current unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A unix time as (year, month 1–12, day 1–31, seconds into the day), UTC — Howard Hinnant's
/// civil-from-days, so no date crate is needed for the few dates the agent prints.
pub fn civil(t: u64) -> (i64, i64, i64, u64) {
    let z = (t / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d, t % 86_400)
}

/// A unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(t: u64) -> String {
    let (y, m, d, secs) = civil(t);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `Tue, 24 Nov 2026 03:00:00 +0000` for a unix time (UTC).
pub fn rfc5322_date(t: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t / 86_400;
    let (y, m, d, secs) = civil(t);
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Printable ASCII only, at most `max` characters.
pub fn clean(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// An address as written in SMTP commands and headers, without the surrounding white space
/// and angle brackets (`<ann@example.org>` → `ann@example.org`).
pub fn bare_address(a: &str) -> &str {
    a.trim().trim_start_matches('<').trim_end_matches('>')
}

/// This host's name (`/proc/sys/kernel/hostname`), or `localhost` when it cannot be read or
/// is not one token.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A fault-injection point for crash tests: when `MAILSTAMP_FAULT` names this point, the
/// process exits at once (as a crash or a kill would), leaving the journal as it is.
pub(crate) fn fault(point: &str) {
    if std::env::var("MAILSTAMP_FAULT").is_ok_and(|f| f == point) {
        eprintln!("mailstamp: MAILSTAMP_FAULT={point}: exiting here on purpose");
        std::process::exit(86);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_points() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_489_200),
            "Tue, 24 Nov 2026 03:00:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn addresses_lose_their_brackets() {
        assert_eq!(bare_address(" <ann@example.org> "), "ann@example.org");
        assert_eq!(bare_address("ann@example.org"), "ann@example.org");
        assert_eq!(bare_address("<>"), "");
    }
}
