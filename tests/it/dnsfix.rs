// SPDX-License-Identifier: GPL-3.0-or-later
//! A real authoritative DNS server for the tests: hickory-server on 127.0.0.1 (UDP and TCP,
//! port chosen by the OS), serving in-memory zones that a test can add records to while it
//! runs, and stop to simulate an outage.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::{A, CNAME, MX, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// A running server and handles on its zones.
pub(crate) struct DnsServer {
    pub(crate) addr: SocketAddr,
    zones: BTreeMap<String, Arc<InMemoryZoneHandler>>,
    server: Option<Server<Catalog>>,
}

fn name(n: &str) -> Name {
    let fqdn = if n.ends_with('.') {
        n.to_owned()
    } else {
        format!("{n}.")
    };
    Name::from_str(&fqdn).unwrap_or_else(|e| panic!("bad name {n}: {e}"))
}

/// Parses one zone-file line of the forms our tools print:
/// `NAME TTL IN (MX PREF TARGET | CNAME TARGET | TXT "…" | A IP)`.
pub(crate) fn parse_line(line: &str) -> Record {
    let f: Vec<&str> = line.split_whitespace().collect();
    assert!(f.len() >= 5 && f[2] == "IN", "not a zone line: {line}");
    let (owner, ttl) = (name(f[0]), f[1].parse::<u32>().unwrap());
    let rdata = match f[3] {
        "MX" => RData::MX(MX::new(f[4].parse().unwrap(), name(f[5]))),
        "CNAME" => RData::CNAME(CNAME(name(f[4]))),
        "A" => RData::A(A(f[4].parse().unwrap())),
        "TXT" => {
            let start = line.find('"').unwrap();
            let end = line.rfind('"').unwrap();
            RData::TXT(TXT::new(vec![line[start + 1..end].to_owned()]))
        }
        other => panic!("unsupported type {other} in {line}"),
    };
    Record::from_rdata(owner, ttl, rdata)
}

impl DnsServer {
    /// Serves one zone per origin in `origins` (each with an SOA), plus `lines`.
    pub(crate) async fn start(origins: &[&str], lines: &[String]) -> Self {
        let mut zones = BTreeMap::new();
        let mut catalog = Catalog::new();
        for o in origins {
            let origin = name(o);
            let mut z =
                InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
            let soa = SOA::new(
                name(&format!("ns.{o}")),
                name(&format!("hostmaster.{o}")),
                1,
                3600,
                600,
                86400,
                5,
            );
            assert!(z.upsert_mut(Record::from_rdata(origin.clone(), 5, RData::SOA(soa)), 1));
            let z = Arc::new(z);
            catalog.upsert(LowerName::new(&origin), vec![z.clone()]);
            zones.insert(o.trim_end_matches('.').to_owned(), z);
        }
        // UDP and TCP on one port: the OS picks a free UDP port, which TCP may still hold (a
        // connection in TIME_WAIT after a busy test); then pick again.
        let mut tries = 0;
        let (udp, tcp, addr) = loop {
            let udp = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .unwrap();
            let addr = udp.local_addr().unwrap();
            match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => tries += 1,
                Err(e) => panic!("cannot listen on TCP {addr}: {e}"),
            }
        };
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        let s = Self {
            addr,
            zones,
            server: Some(server),
        };
        for l in lines {
            s.add(l).await;
        }
        s
    }

    /// Adds a record given as a zone-file line to the zone that contains it.
    pub(crate) async fn add(&self, line: &str) {
        let rec = parse_line(line);
        let owner = rec.name.to_string().trim_end_matches('.').to_lowercase();
        let (_, zone) = self
            .zones
            .iter()
            .filter(|(o, _)| owner == **o || owner.ends_with(&format!(".{o}")))
            .max_by_key(|(o, _)| o.len())
            .unwrap_or_else(|| panic!("no zone for {owner}"));
        assert!(zone.upsert(rec, 2).await, "record not added: {line}");
    }

    /// Stops answering (an outage).
    pub(crate) async fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.shutdown_gracefully().await;
        }
    }

    /// A `[dns]` config pointing at this server.
    pub(crate) fn config(&self) -> mailstamp::config::DnsConfig {
        mailstamp::config::DnsConfig {
            nameservers: vec![self.addr],
            timeout_secs: 1,
            attempts: 1,
        }
    }
}
