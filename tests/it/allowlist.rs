// SPDX-License-Identifier: GPL-3.0-or-later
//! The self-training allowlist end to end (seed 004): the real milter (indymilter-test playing
//! the MTA), a real anvil with the registry, real SQLite, and the DNS fixture publishing SPF,
//! DKIM (Ed25519, messages signed with mail-auth) and DMARC for the correspondents' domains.
//!
//! Our user bob@b.example writes (stamped, outbound) to Carol; her replies then decide the
//! folder: authenticated (DKIM or SPF aligned) → INBOX and the entry completes; the same From
//! unauthenticated → the separate folder, reported as an untrusted hit; partial matches with
//! their weights; idle entries expire; several milter sessions write the store at once.

use std::ffi::CString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::Address;
use base64::Engine;
use indymilter_test::{EomAction, EomActions, MacroStage, Status, TestConnection};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mailstamp::config::AllowlistConfig;
use mailstamp::config::Overrides;
use mailstamp::milter;
use mailstamp::people::FromIdentity;
use mailstamp::people::allowlist::{self, EntryState};
use mailstamp::session::{Daemon, Settings};
use mailstamp::store::Store;
use tokio_util::sync::CancellationToken;

use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, anvil, mailstamp, milter_split, own_store, signer, tamper_body};

const T: std::time::Duration = std::time::Duration::from_secs(10);
/// The correspondents' mail server: the only address their SPF records allow.
pub(crate) const GOOD_IP: &str = "192.0.2.20";
/// Anyone else.
pub(crate) const OTHER_IP: &str = "198.51.100.7";

/// An Ed25519 DKIM key (PKCS#8) and its record.
pub(crate) struct DkimKey {
    der: Vec<u8>,
    pub(crate) txt: String,
}

impl DkimKey {
    pub(crate) fn new() -> Self {
        let der = Ed25519Key::generate_pkcs8().unwrap();
        let public = Ed25519Key::from_pkcs8_der(&der).unwrap().public_key();
        let txt = format!(
            "v=DKIM1; k=ed25519; p={}",
            base64::engine::general_purpose::STANDARD.encode(public)
        );
        Self { der, txt }
    }

    /// `raw` with a DKIM-Signature for `domain` (selector s1) on top.
    pub(crate) fn sign(&self, domain: &str, raw: &[u8]) -> Vec<u8> {
        let sig = DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&self.der).unwrap())
            .domain(domain)
            .selector("s1")
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .sign(raw)
            .unwrap();
        let mut out = sig.to_header().into_bytes();
        out.extend_from_slice(raw);
        out
    }
}

/// The zone lines of a correspondent domain: SPF (only [`GOOD_IP`]), its DKIM key, DMARC.
/// Serve the parent zone `example` too: the DMARC tree walk (RFC 9989) asks `_dmarc.example`,
/// and a refusal there is a temporary error, never a pass.
pub(crate) fn auth_zone(domain: &str, key: &DkimKey) -> Vec<String> {
    vec![
        format!("{domain} 60 IN TXT \"v=spf1 ip4:{GOOD_IP} -all\""),
        format!("s1._domainkey.{domain} 60 IN TXT \"{}\"", key.txt),
        format!("_dmarc.{domain} 60 IN TXT \"v=DMARC1; p=reject\""),
    ]
}

/// A milter on 127.0.0.1:0 until dropped; 127.0.0.0/8 is the trusted (outbound) network.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) config: PathBuf,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The config of a receiving/sending site b.example: chain, the fixture's DNS, the store,
/// `[inbound] enabled`, and `extra` TOML.
pub(crate) fn site_toml(
    rpc: &str,
    registry: Address,
    writer: Address,
    dns: SocketAddr,
    store: &Path,
    extra: &str,
) -> String {
    format!(
        "[chain]\nrpc_url = \"{rpc}\"\nregistry = \"{registry}\"\ntimeout_secs = 3\n\
         [dns]\nnameservers = [\"{dns}\"]\ntimeout_secs = 2\nattempts = 1\n\
         [trust]\n\"b.example\" = [\"{writer}\"]\n\
         [store]\npath = \"{}\"\n\
         [milter]\nauthserv_id = \"mx.b.example\"\ntrusted_networks = [\"127.0.0.0/8\"]\n\
         [inbound]\nenabled = true\n{extra}",
        store.display()
    )
}

/// Starts a milter with config `toml` written to `dir/name`, stamping with anvil's first key
/// when `key` is given.
pub(crate) async fn start_in(
    dir: &Path,
    name: &str,
    toml: &str,
    key: Option<&AnvilInstance>,
) -> Running {
    let config = dir.join(name);
    std::fs::write(&config, own_store(toml, dir)).unwrap();
    let settings = Settings::load(Some(&config), &Overrides::default()).unwrap();
    let m = Arc::new(Daemon::new(settings, key.map(|a| signer(a, 0)), None));
    let (listener, addr) = milter::bind("inet:127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = addr.strip_prefix("inet:").unwrap().parse().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(milter::run(listener, m, stop.clone().cancelled_owned()));
    Running { addr, config, stop }
}

/// A chain with the registry deployed; returns (anvil, registry, writer address).
pub(crate) async fn chain() -> (AnvilInstance, Address, Address) {
    let a = anvil();
    let d = mailstamp::chain::deploy(&a.endpoint(), signer(&a, 0), true, T)
        .await
        .unwrap();
    let w = signer(&a, 0).address();
    (a, d.address, w)
}

/// What the milter did at end of message.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) status: Status,
    pub(crate) eom: EomActions,
}

impl Outcome {
    /// Every value added for header `name`, in order.
    pub(crate) fn headers(&self, name: &str) -> Vec<String> {
        self.eom
            .actions
            .iter()
            .filter_map(|a| match a {
                EomAction::AddHeader { name: n, value }
                | EomAction::InsertHeader { name: n, value, .. }
                    if n.to_str().unwrap().eq_ignore_ascii_case(name) =>
                {
                    Some(value.to_string_lossy().into_owned())
                }
                _ => None,
            })
            .collect()
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    /// The folder header's value, trimmed.
    pub(crate) fn folder(&self) -> Option<String> {
        self.header("X-Mailstamp-Folder")
            .map(|v| v.trim().to_owned())
    }
}

/// Plays one SMTP session with one message: client `ip`, MAIL FROM `from`, RCPT TO `rcpts`.
pub(crate) async fn play(
    addr: SocketAddr,
    ip: &str,
    from: &str,
    rcpts: &[&str],
    raw: &[u8],
) -> Outcome {
    let mut c = TestConnection::configure()
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .unwrap();
    let ip: std::net::IpAddr = ip.parse().unwrap();
    assert_eq!(
        c.connect("client.example", (ip, 25000)).await.unwrap(),
        Status::Continue
    );
    assert_eq!(c.helo("mail.c.example").await.unwrap(), Status::Continue);
    assert_eq!(
        c.mail([format!("<{from}>")]).await.unwrap(),
        Status::Continue
    );
    for r in rcpts {
        assert_eq!(c.rcpt([format!("<{r}>")]).await.unwrap(), Status::Continue);
    }
    let (fields, body) = milter_split(raw);
    for (n, v) in fields {
        assert_eq!(
            c.header(n, CString::new(v).unwrap()).await.unwrap(),
            Status::Continue
        );
    }
    assert_eq!(c.eoh().await.unwrap(), Status::Continue);
    if !body.is_empty() {
        assert_eq!(c.body(body).await.unwrap(), Status::Continue);
    }
    c.macros(MacroStage::Eom, [("i", "QID")]).await.unwrap();
    let (eom, status) = c.eom().await.unwrap();
    let _ = c.close().await;
    Outcome { status, eom }
}

/// A plain message.
pub(crate) fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Date: Tue, 24 Nov 2026 05:00:00 +0000\r\nMessage-ID: <{}@test>\r\n\r\n\
         Hello,\r\n\r\nabout {subject}.\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

fn entry(store: &Path, user: &str, addr: &str) -> Option<allowlist::AllowlistEntry> {
    allowlist::show(&Store::open(store).unwrap(), user, addr).unwrap()
}

#[tokio::test]
async fn outbound_stamps_teach_the_allowlist_and_only_authenticated_replies_are_trusted() {
    let (a, registry, writer) = chain().await;
    let key = DkimKey::new();
    let mut lines = auth_zone("c.example", &key);
    lines.extend(auth_zone("e.example", &key));
    let dns = DnsServer::start(&["example", "c.example", "e.example"], &lines).await;
    let dir = TempDir::new("allowlist");
    let store = dir.0.join("state.sqlite");
    let m = start_in(
        &dir.0,
        "mailstamp.toml",
        &site_toml(&a.endpoint(), registry, writer, dns.addr, &store, ""),
        Some(&a),
    )
    .await;

    // Outbound, stamped: creates a partial entry with the display name of the To header.
    let outbound = message(
        "Bob <bob@b.example>",
        "\"Carol Doe\" <Carol@C.example>",
        "plans",
    );
    let out = play(
        m.addr,
        "127.0.0.1",
        "bob@b.example",
        &["carol@c.example"],
        &outbound,
    )
    .await;
    assert_eq!(out.status, Status::Continue, "{out:?}");
    assert!(out.header("Mail-Stamp").is_some(), "stamped: {out:?}");
    assert!(out.folder().is_none(), "no folder header on outbound mail");
    let e = entry(&store, "bob@b.example", "carol@c.example").expect("a partial entry");
    assert_eq!((e.state, e.sent, e.received), (EntryState::Partial, 1, 0));
    assert_eq!(e.display_name.as_deref(), Some("Carol Doe"));

    // That stamped message arriving at a site with this agent (here: the same milter, from
    // outside): `wanted` → INBOX though Carol never wrote to bob, authenticated by the stamp
    // (no DMARC asked: b.example publishes none).
    let stamped = {
        let v = out.header("Mail-Stamp").unwrap();
        let mut m = format!("Mail-Stamp:{}\r\n", v.replace('\n', "\r\n")).into_bytes();
        m.extend_from_slice(&outbound);
        m
    };
    let out = play(
        m.addr,
        OTHER_IP,
        "bob@b.example",
        &["carol@c.example"],
        &stamped,
    )
    .await;
    assert_eq!(
        out.header("X-Mailstamp-Verdict").as_deref(),
        Some(" wanted"),
        "{out:?}"
    );
    assert_eq!(out.folder().as_deref(), Some("INBOX"), "{out:?}");
    // Altered on the way (`suspect`, the writer authorised for b.example, but the body differs
    // unexplained): the stamp does not authenticate the message — a co-recipient could re-send
    // it with another body — so carol's authorised-senders hit is reported, not trusted.
    Store::open(&store)
        .unwrap()
        .add_sender("carol@c.example", "b.example", None, 1)
        .unwrap();
    let t = tamper_body(&stamped).unwrap();
    let out = play(m.addr, OTHER_IP, "bob@b.example", &["carol@c.example"], &t).await;
    assert_eq!(
        out.header("X-Mailstamp-Verdict").as_deref(),
        Some(" suspect"),
        "{out:?}"
    );
    assert_eq!(out.folder().as_deref(), Some("Unknown"), "{out:?}");
    let l = out.header("X-Mailstamp-List").unwrap();
    assert!(
        l.contains("list=authorised") && l.contains("trusted=no; auth=none"),
        "{l}"
    );
    // A stamp that does not decode: `invalid`, no folder header (the verdict files it).
    let mut broken = b"Mail-Stamp: v=1; garbage\r\n".to_vec();
    broken.extend_from_slice(&outbound);
    let out = play(
        m.addr,
        OTHER_IP,
        "bob@b.example",
        &["carol@c.example"],
        &broken,
    )
    .await;
    assert_eq!(
        out.header("X-Mailstamp-Verdict").as_deref(),
        Some(" invalid"),
        "{out:?}"
    );
    assert!(out.folder().is_none(), "{out:?}");
    // The chain unreachable and `on_temperror = "pass"`: `temperror` proves nothing, so the
    // lists decide with DMARC only (b.example publishes none): the hit is not trusted.
    let down = start_in(
        &dir.0,
        "down.toml",
        &site_toml("http://127.0.0.1:1", registry, writer, dns.addr, &store, "").replace(
            "trusted_networks",
            "on_temperror = \"pass\"\ntrusted_networks",
        ),
        None,
    )
    .await;
    let out = play(
        down.addr,
        OTHER_IP,
        "bob@b.example",
        &["carol@c.example"],
        &stamped,
    )
    .await;
    assert_eq!(
        out.header("X-Mailstamp-Verdict").as_deref(),
        Some(" temperror"),
        "{out:?}"
    );
    assert_eq!(out.folder().as_deref(), Some("Unknown"), "{out:?}");
    let l = out.header("X-Mailstamp-List").unwrap();
    assert!(
        l.contains("list=authorised") && l.contains("trusted=no; auth=none"),
        "{l}"
    );
    drop(down);

    let reply = message(
        "\"Carol Doe\" <carol@c.example>",
        "bob@b.example",
        "re plans",
    );
    // The same From, not authenticated (unsigned, from an IP her SPF does not allow), with a
    // forged folder header: the separate folder, the hit reported as untrusted.
    let mut forged = b"X-Mailstamp-Folder: INBOX\r\n".to_vec();
    forged.extend_from_slice(&reply);
    let out = play(
        m.addr,
        OTHER_IP,
        "carol@c.example",
        &["bob@b.example"],
        &forged,
    )
    .await;
    assert_eq!(out.status, Status::Continue, "{out:?}");
    assert!(
        out.eom.has_delete_header("X-Mailstamp-Folder", 1),
        "{out:?}"
    );
    assert_eq!(out.folder().as_deref(), Some("Unknown"));
    let l = out.header("X-Mailstamp-List").expect("the hit is reported");
    assert!(
        l.contains("<bob@b.example>; list=allowlist; match=full; weight=1.00")
            && l.contains("trusted=no; auth=none")
            && l.contains("spf=fail")
            && l.contains("dmarc=fail"),
        "{l}"
    );
    assert_eq!(
        entry(&store, "bob@b.example", "carol@c.example")
            .unwrap()
            .state,
        EntryState::Partial,
        "an unauthenticated reply completes nothing"
    );

    // DKIM-signed by c.example (SPF still fails): DMARC pass → INBOX, the entry completes.
    let signed = key.sign("c.example", &reply);
    let out = play(
        m.addr,
        OTHER_IP,
        "carol@c.example",
        &["bob@b.example"],
        &signed,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("INBOX"), "{out:?}");
    let l = out.header("X-Mailstamp-List").unwrap();
    assert!(
        l.contains("trusted=yes; auth=dmarc") && l.contains("dkim=pass"),
        "{l}"
    );
    let e = entry(&store, "bob@b.example", "carol@c.example").unwrap();
    assert_eq!((e.state, e.received), (EntryState::Complete, 1));

    // Unsigned but from her domain's server: SPF aligned → DMARC pass → INBOX.
    let out = play(
        m.addr,
        GOOD_IP,
        "carol@c.example",
        &["bob@b.example"],
        &reply,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("INBOX"), "{out:?}");
    assert!(out.header("X-Mailstamp-List").unwrap().contains("spf=pass"));
    assert_eq!(
        entry(&store, "bob@b.example", "carol@c.example")
            .unwrap()
            .received,
        2
    );

    // Partial matches, authenticated, with their weights, reported but not trusted by
    // default: same display name and domain (0.45 < min_weight 0.50) — at a shared domain an
    // attacker can take any display name and pass DMARC — and only the same domain (0.30).
    let twin = key.sign(
        "c.example",
        &message(
            "Carol Doe <c.doe@c.example>",
            "bob@b.example",
            "second address",
        ),
    );
    let out = play(
        m.addr,
        OTHER_IP,
        "c.doe@c.example",
        &["bob@b.example"],
        &twin,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("Unknown"), "{out:?}");
    let l = out.header("X-Mailstamp-List").unwrap();
    assert!(
        l.contains("match=name_domain; weight=0.45; entry=carol@c.example; trusted=no"),
        "{l}"
    );
    let colleague = key.sign(
        "c.example",
        &message("Dave <dave@c.example>", "bob@b.example", "hello"),
    );
    let out = play(
        m.addr,
        OTHER_IP,
        "dave@c.example",
        &["bob@b.example"],
        &colleague,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("Unknown"), "{out:?}");
    let l = out.header("X-Mailstamp-List").unwrap();
    assert!(
        l.contains("match=domain; weight=0.30") && l.contains("trusted=no"),
        "{l}"
    );
    assert!(
        entry(&store, "bob@b.example", "dave@c.example").is_none(),
        "a partial match creates no entry"
    );

    // A stranger, authenticated or not: the separate folder, no hit to report.
    let stranger = key.sign(
        "e.example",
        &message("Erin <erin@e.example>", "bob@b.example", "offer"),
    );
    let out = play(
        m.addr,
        GOOD_IP,
        "erin@e.example",
        &["bob@b.example"],
        &stranger,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("Unknown"), "{out:?}");
    assert!(out.header("X-Mailstamp-List").is_none(), "{out:?}");

    // The other user at our site never wrote to Carol: her mail to him is a stranger's.
    let out = play(
        m.addr,
        GOOD_IP,
        "carol@c.example",
        &["alice@b.example"],
        &signed,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("Unknown"), "{out:?}");

    // Outbound (local submission) mail is stripped of sender-written X-Mailstamp-* fields
    // too: the Sieve rule at a receiving site — or ours, for a local recipient — must not
    // file by a folder name the sender chose.
    let mut forged =
        b"X-Mailstamp-Folder: ../../../etc\r\nX-Mailstamp-Inbox-For: <bob@b.example>\r\n".to_vec();
    forged.extend_from_slice(&message("Alice <alice@b.example>", "zed@z.example", "out"));
    let out = play(
        m.addr,
        "127.0.0.1",
        "alice@b.example",
        &["zed@z.example"],
        &forged,
    )
    .await;
    assert_eq!(out.status, Status::Continue, "{out:?}");
    assert!(out.header("Mail-Stamp").is_some(), "stamped: {out:?}");
    assert!(
        out.eom.has_delete_header("X-Mailstamp-Folder", 1)
            && out.eom.has_delete_header("X-Mailstamp-Inbox-For", 1),
        "{out:?}"
    );
}

#[tokio::test]
async fn idle_entries_expire_and_stop_matching() {
    let (a, registry, writer) = chain().await;
    let key = DkimKey::new();
    let dns = DnsServer::start(&["example", "c.example"], &auth_zone("c.example", &key)).await;
    let dir = TempDir::new("allowlist-expiry");
    let store_path = dir.0.join("state.sqlite");
    let m = start_in(
        &dir.0,
        "mailstamp.toml",
        &site_toml(
            &a.endpoint(),
            registry,
            writer,
            dns.addr,
            &store_path,
            "[allowlist]\nexpire_days = 2\n",
        ),
        None,
    )
    .await;
    let cfg = AllowlistConfig {
        expire_days: 2,
        ..AllowlistConfig::default()
    };
    let now = mailstamp::util::now();
    {
        let store = Store::open(&store_path).unwrap();
        let carol = FromIdentity::new("carol@c.example", None).unwrap();
        let fresh = FromIdentity::new("fred@c.example", None).unwrap();
        // Written to an hour ago, and three days ago (idle past expire_days; recorded last,
        // since learning deletes what has expired by its own clock).
        allowlist::record_outbound(&store, &cfg, "bob@b.example", &fresh, now - 3600).unwrap();
        // Fred wrote back (partial matches are only against complete entries).
        assert!(allowlist::complete(&store, &cfg, "bob@b.example", &fresh, now - 3500).unwrap());
        allowlist::record_outbound(&store, &cfg, "bob@b.example", &carol, now - 3 * 86_400)
            .unwrap();
    }
    let reply = key.sign(
        "c.example",
        &message("carol@c.example", "bob@b.example", "late reply"),
    );
    let out = play(
        m.addr,
        GOOD_IP,
        "carol@c.example",
        &["bob@b.example"],
        &reply,
    )
    .await;
    // The expired entry neither matches exactly nor completes; the fresh one at the same
    // domain gives only a (light) partial match.
    assert_eq!(out.folder().as_deref(), Some("Unknown"), "{out:?}");
    let l = out.header("X-Mailstamp-List").unwrap();
    assert!(
        l.contains("match=domain") && l.contains("entry=fred@c.example"),
        "{l}"
    );
    assert_eq!(
        entry(&store_path, "bob@b.example", "carol@c.example")
            .unwrap()
            .state,
        EntryState::Partial
    );
    let config = m.config.to_str().unwrap();
    let o = mailstamp(&["--config", config, "allowlist", "expire"], &[], None);
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("1 entries idle for more than 2 days"),
        "{o:?}"
    );
    assert!(entry(&store_path, "bob@b.example", "carol@c.example").is_none());
    assert!(entry(&store_path, "bob@b.example", "fred@c.example").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_milter_sessions_write_the_store_at_once() {
    let (a, registry, writer) = chain().await;
    let key = DkimKey::new();
    let dns = DnsServer::start(&["example", "c.example"], &auth_zone("c.example", &key)).await;
    let dir = TempDir::new("allowlist-concurrent");
    let store_path = dir.0.join("state.sqlite");
    // Two milters (two SQLite connections, as two processes would have) on one store file.
    let toml = site_toml(&a.endpoint(), registry, writer, dns.addr, &store_path, "");
    let m1 = start_in(&dir.0, "one.toml", &toml, None).await;
    let m2 = start_in(&dir.0, "two.toml", &toml, None).await;
    const N: usize = 24;
    let people: Vec<String> = (0..N).map(|i| format!("p{i}@c.example")).collect();
    {
        let store = Store::open(&store_path).unwrap();
        let cfg = AllowlistConfig::default();
        for p in &people {
            let id = FromIdentity::new(p, None).unwrap();
            allowlist::record_outbound(&store, &cfg, "bob@b.example", &id, mailstamp::util::now())
                .unwrap();
        }
    }
    let mut tasks = Vec::new();
    for (i, p) in people.iter().enumerate() {
        let addr = if i % 2 == 0 { m1.addr } else { m2.addr };
        let raw = key.sign(
            "c.example",
            &message(p, "bob@b.example", &format!("note {i}")),
        );
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            play(addr, GOOD_IP, &p, &["bob@b.example"], &raw).await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert_eq!(out.folder().as_deref(), Some("INBOX"), "{out:?}");
    }
    let store = Store::open(&store_path).unwrap();
    let all = allowlist::list(&store, Some("bob@b.example")).unwrap();
    assert_eq!(all.len(), N);
    assert!(
        all.iter()
            .all(|e| e.state == EntryState::Complete && e.received == 1),
        "every session's write landed exactly once: {all:?}"
    );
}

#[test]
fn allowlist_cli_lists_shows_forgets_with_clear_errors() {
    let dir = TempDir::new("allowlist-cli");
    let store_path = dir.0.join("state.sqlite");
    {
        let store = Store::open(&store_path).unwrap();
        let cfg = AllowlistConfig::default();
        for a in ["carol@c.example", "dave@d.example"] {
            let id = FromIdentity::new(a, Some("Someone")).unwrap();
            allowlist::record_outbound(&store, &cfg, "bob@b.example", &id, mailstamp::util::now())
                .unwrap();
        }
    }
    let s = store_path.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--store", s, "allowlist"];
        all.extend_from_slice(args);
        mailstamp(&all, &[], None)
    };
    let o = run(&["list", "--user", "Bob@B.example", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["state"], "partial");
    let o = run(&["show", "--user", "bob@b.example", "carol@c.example"]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("carol@c.example\tPartial\tsent 1"));
    // Bad input: a clear error, exit 1, nothing changed.
    for (args, want) in [
        (&["show", "--user", "bob", "carol@c.example"][..], "--user"),
        (
            &["show", "--user", "bob@b.example", "nobody@c.example"][..],
            "no allowlist entry",
        ),
        (&["forget", "--user", "bob@b.example"][..], "--all"),
        (
            &["forget", "--user", "bob@b.example", "not-an-address"][..],
            "not a mail address",
        ),
    ] {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let o = run(&["forget", "--user", "bob@b.example", "carol@c.example"]);
    assert!(o.status.success(), "{o:?}");
    let o = run(&["forget", "--user", "bob@b.example", "carol@c.example"]);
    assert_eq!(o.status.code(), Some(1), "forgetting twice says so: {o:?}");
    let o = run(&["forget", "--user", "bob@b.example", "--all"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 allowlist entries forgotten"));
    let o = run(&["list"]);
    assert!(o.status.success() && o.stdout.is_empty(), "{o:?}");
}

/// A next hop that takes every message and keeps its DATA.
async fn sink() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 sink\r\n").await.unwrap();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.to_ascii_uppercase();
                    if cmd.starts_with("DATA") {
                        w.write_all(b"354 go\r\n").await.unwrap();
                        let mut data = String::new();
                        loop {
                            line.clear();
                            r.read_line(&mut line).await.unwrap();
                            if line == ".\r\n" {
                                break;
                            }
                            data.push_str(line.strip_prefix('.').unwrap_or(&line));
                        }
                        keep.lock().unwrap().push(data);
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        w.write_all(b"250 ok\r\n").await.unwrap();
                    }
                }
            });
        }
    });
    (addr, got)
}

/// One message over SMTP to `addr`; the reply after the final dot.
async fn smtp_send(addr: SocketAddr, from: &str, rcpt: &str, raw: &[u8]) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }
    assert!(reply(&mut r).await.starts_with("220"));
    for cmd in [
        "EHLO mail.c.example".to_owned(),
        format!("MAIL FROM:<{from}>"),
        format!("RCPT TO:<{rcpt}>"),
        "DATA".to_owned(),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
        let rep = reply(&mut r).await;
        assert!(rep.starts_with('2') || rep.starts_with('3'), "{cmd}: {rep}");
    }
    let mut body = Vec::new();
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            body.push(b'.');
        }
        body.extend_from_slice(line);
    }
    body.extend_from_slice(b".\r\n");
    w.write_all(&body).await.unwrap();
    let rep = reply(&mut r).await;
    let _ = w.write_all(b"QUIT\r\n").await;
    rep
}

/// The values of header `name` in a DATA text.
fn fields(data: &str, name: &str) -> Vec<String> {
    data.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_learns_from_what_it_stamps_and_files_replies_by_authentication() {
    use mailstamp::relay;
    let (a, registry, writer) = chain().await;
    let key = DkimKey::new();
    let dns = DnsServer::start(&["example", "c.example"], &auth_zone("c.example", &key)).await;
    let dir = TempDir::new("allowlist-relay");
    let store_path = dir.0.join("state.sqlite");
    let (hop, got) = sink().await;
    let base = site_toml(&a.endpoint(), registry, writer, dns.addr, &store_path, "").replace(
        "trusted_networks = [\"127.0.0.0/8\"]",
        "trusted_networks = []",
    );
    let mut relays = Vec::new();
    let mut stops = Vec::new();
    for (name, outbound) in [("out.toml", true), ("in.toml", false)] {
        let path = dir.0.join(name);
        std::fs::write(
            &path,
            format!("{base}[relay]\nnext_hop = \"{hop}\"\noutbound = {outbound}\n"),
        )
        .unwrap();
        let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();
        let r = Arc::new(Daemon::new(settings, Some(signer(&a, 0)), None).with_owner("relay"));
        let (listener, addr) = relay::bind("127.0.0.1:0").await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(relay::run(listener, r, stop.clone().cancelled_owned()));
        relays.push(addr);
        stops.push(stop.drop_guard());
    }
    let (out_relay, in_relay) = (relays[0], relays[1]);

    let outbound = message(
        "Bob <bob@b.example>",
        "Carol <carol@c.example>",
        "relay plans",
    );
    let r = smtp_send(out_relay, "bob@b.example", "carol@c.example", &outbound).await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(fields(&got.lock().unwrap()[0], "Mail-Stamp").len(), 1);
    let e = entry(&store_path, "bob@b.example", "carol@c.example").expect("learned");
    assert_eq!(e.state, EntryState::Partial);

    // Unsigned, from 127.0.0.1 (not in her SPF), with a forged folder header: the relay
    // removes it and adds its own, the separate folder.
    let reply = message("Carol <carol@c.example>", "bob@b.example", "re relay plans");
    let mut forged = b"X-Mailstamp-Folder: INBOX\r\n".to_vec();
    forged.extend_from_slice(&reply);
    let r = smtp_send(in_relay, "carol@c.example", "bob@b.example", &forged).await;
    assert!(r.starts_with("250"), "{r}");
    let data = got.lock().unwrap()[1].clone();
    assert_eq!(fields(&data, "X-Mailstamp-Folder"), ["Unknown"], "{data}");
    assert!(
        fields(&data, "X-Mailstamp-List")[0].contains("trusted=no"),
        "{data}"
    );

    // DKIM-signed: INBOX, and the entry completes.
    let signed = key.sign("c.example", &reply);
    let r = smtp_send(in_relay, "carol@c.example", "bob@b.example", &signed).await;
    assert!(r.starts_with("250"), "{r}");
    let data = got.lock().unwrap()[2].clone();
    assert_eq!(fields(&data, "X-Mailstamp-Folder"), ["INBOX"], "{data}");
    let e = entry(&store_path, "bob@b.example", "carol@c.example").unwrap();
    assert_eq!((e.state, e.received), (EntryState::Complete, 1));

    // Outbound with a sender-written folder header: the relay removes it too.
    let mut forged = b"X-Mailstamp-Folder: ../../../etc\r\n".to_vec();
    forged.extend_from_slice(&outbound);
    let r = smtp_send(out_relay, "bob@b.example", "carol@c.example", &forged).await;
    assert!(r.starts_with("250"), "{r}");
    let data = got.lock().unwrap()[3].clone();
    assert_eq!(fields(&data, "Mail-Stamp").len(), 1, "{data}");
    assert!(fields(&data, "X-Mailstamp-Folder").is_empty(), "{data}");
}

/// Another writer (`recover --apply`, the CLI) holding the store's write lock holds no
/// session: store work runs on the blocking pool with a short busy timeout; the decision
/// (reads, WAL) still comes out right, learning is skipped (best effort) and happens again
/// with the next message once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_by_another_writer_costs_only_the_learning() {
    let (a, registry, writer) = chain().await;
    let key = DkimKey::new();
    let dns = DnsServer::start(&["example", "c.example"], &auth_zone("c.example", &key)).await;
    let dir = TempDir::new("allowlist-locked");
    let store_path = dir.0.join("state.sqlite");
    let m = start_in(
        &dir.0,
        "mailstamp.toml",
        &site_toml(&a.endpoint(), registry, writer, dns.addr, &store_path, ""),
        Some(&a),
    )
    .await;
    let now = mailstamp::util::now();
    {
        let store = Store::open(&store_path).unwrap();
        let carol = FromIdentity::new("carol@c.example", None).unwrap();
        allowlist::record_outbound(
            &store,
            &AllowlistConfig::default(),
            "bob@b.example",
            &carol,
            now,
        )
        .unwrap();
    }
    let lock = rusqlite::Connection::open(&store_path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    let reply = key.sign(
        "c.example",
        &message("Carol <carol@c.example>", "bob@b.example", "re"),
    );
    let out = play(
        m.addr,
        GOOD_IP,
        "carol@c.example",
        &["bob@b.example"],
        &reply,
    )
    .await;
    assert_eq!(out.status, Status::Continue, "{out:?}");
    assert_eq!(out.folder().as_deref(), Some("INBOX"), "{out:?}");
    let outbound = message("Bob <bob@b.example>", "dave@c.example", "hi");
    let out = play(
        m.addr,
        "127.0.0.1",
        "bob@b.example",
        &["dave@c.example"],
        &outbound,
    )
    .await;
    assert_eq!(out.status, Status::Continue, "{out:?}");
    assert!(out.header("Mail-Stamp").is_some(), "stamped: {out:?}");
    lock.execute_batch("ROLLBACK").unwrap();
    let e = entry(&store_path, "bob@b.example", "carol@c.example").unwrap();
    assert_eq!(
        (e.state, e.received),
        (EntryState::Partial, 0),
        "not completed under the lock"
    );
    assert!(entry(&store_path, "bob@b.example", "dave@c.example").is_none());

    // The lock gone, the next reply completes the entry.
    let out = play(
        m.addr,
        GOOD_IP,
        "carol@c.example",
        &["bob@b.example"],
        &reply,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("INBOX"), "{out:?}");
    let e = entry(&store_path, "bob@b.example", "carol@c.example").unwrap();
    assert_eq!((e.state, e.received), (EntryState::Complete, 1));
}
