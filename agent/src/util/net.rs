// SPDX-License-Identifier: GPL-3.0-or-later
//! Network names and numbers as the configuration and the maps write them: IP networks
//! (`192.0.2.0/24`, IPv4-mapped IPv6 folded to IPv4), `HOST:PORT`, and DNS names.

use std::net::IpAddr;

use serde::Deserialize;

use crate::error::{Result, bail};

/// A DNS name as compared everywhere: trimmed, no trailing dot, lower case.
pub fn normalise_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// An IP network (an address with a prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are IPv4 addresses for lookup.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

impl Net {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, width) = bits(self.addr);
        let (b, w2) = bits(canonical_ip(ip));
        if width != w2 {
            return false;
        }
        if self.prefix == 0 {
            return true;
        }
        let shift = u32::from(width - self.prefix);
        (a >> shift) == (b >> shift)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))?;
        let addr = canonical_ip(addr);
        let width = bits(addr).1;
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= width)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={width}"))?,
            None => width,
        };
        Ok(Self { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `HOST:PORT` (an IPv6 host in brackets) as host and port.
pub fn split_host_port(s: &str) -> Result<(&str, u16)> {
    let Some((host, port)) = s.rsplit_once(':') else {
        bail!("`{s}`: give HOST:PORT");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.parse::<u16>() {
        Ok(p) => Ok((host, p)),
        Err(_) => bail!("`{s}`: the port is not a number"),
    }
}

/// A DNS name in normal form ([`normalise_name`]) when it is one: at most 253 characters, at
/// least two labels of 1–63 letters, digits and `-`, none starting or ending with `-`.
pub fn domain_name(name: &str) -> Option<String> {
    let d = normalise_name(name);
    let labels_ok = d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    });
    (d.len() <= 253 && d.contains('.') && labels_ok).then_some(d)
}

/// Checks and normalises a domain name (as [`domain_name`]), with an error that says what to
/// give.
pub fn validate_domain(domain: &str) -> Result<String> {
    domain_name(domain).ok_or_else(|| {
        crate::error::err!(
            "`{domain}` is not a domain name (e.g. customer.example); IDNs go in their xn-- form"
        )
    })
}
