// SPDX-License-Identifier: GPL-3.0-or-later
//! A mailing list and an alias across three sites (issue 13), each a real Postfix beside its
//! own `mailstamp milter` process on a loopback address of its own: the sender a.example
//! (127.0.0.2, stamps directly; its users alice@a.example, whose domain publishes DMARC
//! `p=reject`, and dave@lax.example, whose domain publishes no DMARC), the list host
//! lists.f.example (127.0.0.3: verifies, runs the list dev@lists.f.example behind Postfix and
//! the alias fwd@lists.f.example → bob@b.example, its hops batched), the receiver b.example
//! (127.0.0.4: verifies the whole chain). One anvil, the DNS fixture (each site's writer
//! record, the senders' DKIM keys and DMARC), swaks to submit.
//!
//! The list server is Mailman 3's shape, written here: Postfix delivers the list's mail to
//! it over LMTP (Mailman's LMTP runner) and it sends one copy to the subscribers by SMTP
//! through the same Postfix with the envelope sender dev-bounces@lists.f.example (Mailman's
//! outgoing runner), having made Mailman's changes: the subject prefix `[dev]`, a footer of
//! three lines, `List-*` fields, and for an author whose domain publishes DMARC reject or
//! quarantine, From munged to the list with the author in Reply-To (`dmarc_mitigate_action
//! = munge_from`). Mailman itself is not packaged for a test (a Django site, a REST runner,
//! a database); what the agent sees of it is exactly this.
//!
//! Every copy reaches b.example `wanted` with the path reported; the same messages, DKIM-signed
//! at a.example, are checked for DKIM at b.example: the side-by-side table per path is
//! printed (`-- --nocapture`). A list copy replayed to another b.example user is spam, a hop
//! forged by a writer lists.f.example does not list is spam, and with the chain down the
//! list's copy is deferred at lists.f.example (451) and delivered once it is back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{B256, FixedBytes};
use mailstamp::auth::{AuthResult, Authenticator};
use mailstamp::chain::Chain;
use mailstamp::config::{ChainConfig, Confirmations};
use mailstamp::dns::{Answer, Authority};
use mailstamp_core::hops::{HopSpec, ListSettings, insert_hop, list_changes, prepare_hop};
use mailstamp_core::writers::WriterRecord;
use mailstamp_core::{ChainRef, Envelope, Selection};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::allowlist::{DkimKey, auth_zone};
use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, key_hex, signer};
use crate::postfix::{
    Postfix, anvil_at, chown, ensure_postfix, free_port, maildir, stop_anvil, swaks, wait_for,
};
use crate::three_sites::{Lab, has, mailbox, unfolded};

const A: &str = "127.0.0.2";
const F: &str = "127.0.0.3";
const B: &str = "127.0.0.4";
const LIST: &str = "dev@lists.f.example";
const SUBSCRIBERS: [&str; 2] = ["bob@b.example", "carol@b.example"];
const FOOTER: [&str; 3] = [
    "_______________________________________________",
    "dev mailing list -- dev@lists.f.example",
    "To unsubscribe send an email to dev-leave@lists.f.example",
];

/// What the list server did.
#[derive(Default)]
struct ListState {
    /// Messages Postfix delivered to it.
    received: usize,
    /// Hold copies until [`ListServer::release`] (a moderator's queue).
    hold: bool,
    held: Vec<Vec<u8>>,
    /// Every copy it made, as it sent it.
    copies: Vec<Vec<u8>>,
    /// Each submission attempt's outcome: `ok` or the error.
    attempts: Vec<String>,
}

/// The list server: LMTP in, the list's changes, SMTP out to `submit` (retried every second
/// while it is refused for now, as Mailman's outgoing runner retries).
struct ListServer {
    addr: SocketAddr,
    state: Arc<Mutex<ListState>>,
}

impl ListServer {
    async fn start(submit: SocketAddr, dns: Authority) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ListState::default()));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (st, dns) = (st.clone(), dns.clone());
                tokio::spawn(async move {
                    for raw in lmtp_session(conn).await {
                        let munge = strict_dmarc(&dns, &raw).await;
                        let copy = mailman(&raw, munge);
                        let go = {
                            let mut s = st.lock().unwrap();
                            s.received += 1;
                            s.copies.push(copy.clone());
                            if s.hold {
                                s.held.push(copy.clone());
                            }
                            !s.hold
                        };
                        if go {
                            tokio::spawn(send_copy(submit, copy, st.clone()));
                        }
                    }
                });
            }
        });
        Self { addr, state }
    }

    fn received(&self) -> usize {
        self.state.lock().unwrap().received
    }

    fn release(&self, submit: SocketAddr) {
        let held = std::mem::take(&mut self.state.lock().unwrap().held);
        for copy in held {
            tokio::spawn(send_copy(submit, copy, self.state.clone()));
        }
    }
}

/// Sends `copy` to the subscribers through `submit`, every second until it is taken (at most
/// 120 tries).
async fn send_copy(submit: SocketAddr, copy: Vec<u8>, st: Arc<Mutex<ListState>>) {
    for _ in 0..120 {
        let sent = async {
            let mut client =
                mail_send::SmtpClientBuilder::new(submit.ip().to_string(), submit.port())
                    .map_err(|_| mail_send::Error::InvalidTLSName)?
                    .helo_host("lists.f.example")
                    .timeout(Duration::from_secs(30))
                    .connect_plain()
                    .await?;
            let m = mail_send::smtp::message::Message {
                mail_from: "dev-bounces@lists.f.example".into(),
                rcpt_to: SUBSCRIBERS.iter().map(|r| (*r).into()).collect(),
                body: copy.as_slice().into(),
            };
            client.send(m).await?;
            let _ = client.quit().await;
            Ok::<_, mail_send::Error>(())
        }
        .await;
        let outcome = match &sent {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        st.lock().unwrap().attempts.push(outcome);
        if sent.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One LMTP session: every message delivered in it (a 250 for each recipient).
async fn lmtp_session(conn: tokio::net::TcpStream) -> Vec<Vec<u8>> {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    let mut out = Vec::new();
    let mut rcpts = 0;
    let mut line = String::new();
    let _ = w.write_all(b"220 lists.f.example LMTP\r\n").await;
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return out;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "LHLO" => b"250-lists.f.example\r\n250 8BITMIME\r\n",
            "MAIL" => {
                rcpts = 0;
                b"250 2.1.0 ok\r\n"
            }
            "RCPT" => {
                rcpts += 1;
                b"250 2.1.5 ok\r\n"
            }
            "DATA" => {
                let _ = w.write_all(b"354 go ahead\r\n").await;
                let mut msg = Vec::new();
                let mut l = Vec::new();
                loop {
                    l.clear();
                    if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                        return out;
                    }
                    if l == b".\r\n" || l == b".\n" {
                        break;
                    }
                    // Dot-unstuffing.
                    msg.extend_from_slice(if l.starts_with(b"..") { &l[1..] } else { &l });
                }
                out.push(msg);
                for _ in 0..rcpts {
                    let _ = w.write_all(b"250 2.0.0 delivered to the list\r\n").await;
                }
                continue;
            }
            "QUIT" => {
                let _ = w.write_all(b"221 bye\r\n").await;
                return out;
            }
            _ => b"250 ok\r\n",
        };
        let _ = w.write_all(reply).await;
    }
}

/// The author's From field value (unfolded) and its domain.
fn author(raw: &[u8]) -> (String, String) {
    let msg = mailstamp_core::parse(raw).expect("a message");
    let from = mailstamp_core::component::from_address(&msg);
    let value = msg
        .header_raw("From")
        .unwrap_or_default()
        .replace(['\r', '\n'], "")
        .trim()
        .to_owned();
    let domain = from.rsplit_once('@').map_or("", |(_, d)| d).to_owned();
    (value, domain)
}

/// Whether the author's domain publishes DMARC reject or quarantine (Mailman's test for
/// munging From).
async fn strict_dmarc(dns: &Authority, raw: &[u8]) -> bool {
    let (_, domain) = author(raw);
    match dns.txt(&format!("_dmarc.{domain}")).await {
        Answer::Records(r) => r
            .iter()
            .any(|t| t.contains("p=reject") || t.contains("p=quarantine")),
        _ => false,
    }
}

/// Mailman's changes to a received message (CRLF): subject prefix (unless there), footer,
/// `List-*` fields, From munged to the list when `munge`.
fn mailman(raw: &[u8], munge: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").expect("a header section");
    let mut fields: Vec<String> = Vec::new();
    for line in head.lines() {
        match fields.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => {
                last.push('\n');
                last.push_str(line);
            }
            _ => fields.push(line.to_owned()),
        }
    }
    let (from, _) = author(raw);
    let mut out = Vec::new();
    for f in fields {
        let (name, value) = f.split_once(':').unwrap_or((&f, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "subject" if !value.contains("[dev]") => {
                out.push(format!("Subject: [dev] {}", value.trim()));
            }
            "from" | "reply-to" if munge => {}
            _ => out.push(f),
        }
    }
    if munge {
        let name = from
            .split('<')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"')
            .to_owned();
        out.push(format!("From: \"{name} via dev\" <{LIST}>"));
        out.push(format!("Reply-To: {from}"));
    }
    out.push("List-Id: <dev.lists.f.example>".into());
    out.push(format!("List-Post: <mailto:{LIST}>"));
    out.push("List-Unsubscribe: <mailto:dev-leave@lists.f.example>".into());
    out.push("Precedence: list".into());
    let mut body = body.to_owned();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    for l in FOOTER {
        body.push_str(l);
        body.push('\n');
    }
    format!("{}\n\n{body}", out.join("\n"))
        .replace('\n', "\r\n")
        .into_bytes()
}

/// A message from `from` (`Name <addr>`) to `to`, DKIM-signed at `domain` with `key`.
fn signed(key: &DkimKey, domain: &str, from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    let id = subject.replace(' ', "-");
    let raw = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{id}@{domain}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}\r\n"
    );
    key.sign(domain, raw.as_bytes())
}

/// The message of `user` at b.example whose text has `needle`, waited for.
fn wait_mail(mail: &std::path::Path, user: &str, needle: &str, secs: u64) -> Option<Vec<u8>> {
    wait_for(secs, || {
        maildir(mail, user)
            .into_iter()
            .filter_map(|f| std::fs::read(f).ok())
            .find(|m| has(m, needle))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_and_an_alias_across_three_postfix_sites_are_wanted_with_dkim_side_by_side() {
    ensure_postfix();
    let started = Instant::now();
    let mut lab = Lab {
        postfix: Vec::new(),
        milters: Vec::new(),
        dir: TempDir::new("list-sites"),
    };
    let root = lab.dir.0.clone();
    let chain_port = free_port();
    let state = root.join("anvil-state.json");
    let anvil = anvil_at(chain_port, &state);
    let rpc = anvil.endpoint();
    let registry = mailstamp::chain::deploy(&rpc, signer(&anvil, 0), true, Duration::from_secs(10))
        .await
        .unwrap()
        .address;
    let rec = |i: usize| WriterRecord::format(&[signer(&anvil, i).address().0.0]);
    let (key_a, key_lax) = (DkimKey::new(), DkimKey::new());
    let mut zone = vec![
        format!("_mailstamp.a.example. 60 IN TXT \"{}\"", rec(1)),
        format!("_mailstamp.lax.example. 60 IN TXT \"{}\"", rec(1)),
        format!("_mailstamp.lists.f.example. 60 IN TXT \"{}\"", rec(2)),
        format!("s1._domainkey.lax.example 60 IN TXT \"{}\"", key_lax.txt),
    ];
    zone.extend(auth_zone("a.example", &key_a));
    let dns = DnsServer::start(
        &[
            "example",
            "a.example",
            "lax.example",
            "lists.f.example",
            "b.example",
        ],
        &zone,
    )
    .await;
    // a.example: its users submit on 127.0.0.1 (outbound, stamped directly).
    // lists.f.example: the list server submits on 127.0.0.1 (outbound); hops batched.
    // b.example: verifies.
    let sites = [
        (
            "a.example",
            Some(key_hex(&anvil, 1)),
            "trusted_networks = [\"127.0.0.1/32\"]\n".to_owned(),
        ),
        (
            "lists.f.example",
            Some(key_hex(&anvil, 2)),
            "trusted_networks = [\"127.0.0.1/32\"]\n\
             [stamp]\nmode = \"batch\"\nbatch_wait_ms = 300\n\
             [forward]\naliases = { \"fwd@lists.f.example\" = [\"bob@b.example\"] }\n\
             [forward.lists.\"dev@lists.f.example\"]\nsubject_tag = \"[dev]\"\n"
                .to_owned(),
        ),
        ("b.example", None, String::new()),
    ];
    lab.start_milters(&rpc, registry, &dns, &sites);
    let mail_b = root.join("mail-b");
    std::fs::create_dir_all(&mail_b).unwrap();
    chown(&mail_b, "65534:65534");
    let pb = Postfix::start_on(
        B,
        root.join("pf-b"),
        "b.example",
        Some(lab.milters[2].port),
        &mailbox(&mail_b, "b.example", &["bob", "carol", "eve"]),
    );
    let b_server = format!("{B}:{}", pb.port);
    // The list host's Postfix: its port is known before it starts, so the list server can
    // be told where to submit.
    let f_port = free_port();
    let f_submit: SocketAddr = format!("{F}:{f_port}").parse().unwrap();
    let list = ListServer::start(
        f_submit,
        Authority::new(&dns.config(), &Default::default()).unwrap(),
    )
    .await;
    let pf = Postfix::start_on_port(
        F,
        f_port,
        root.join("pf-f"),
        "lists.f.example",
        Some(lab.milters[1].port),
        &format!(
            "relay_domains = lists.f.example\n\
             transport_maps = inline:{{ lists.f.example=lmtp:[127.0.0.1]:{}, b.example=smtp:[{B}]:{} }}\n",
            list.addr.port(),
            pb.port
        ),
    );
    let pa = Postfix::start_on(
        A,
        root.join("pf-a"),
        "a.example",
        Some(lab.milters[0].port),
        &format!(
            "transport_maps = inline:{{ lists.f.example=smtp:[{F}]:{}, b.example=smtp:[{B}]:{} }}\n",
            pf.port, pb.port
        ),
    );
    let a_server = format!("{A}:{}", pa.port);
    lab.postfix.push(("b (b.example)", pb));
    lab.postfix.push(("f (lists.f.example)", pf));
    lab.postfix.push(("a (a.example)", pa));
    eprintln!("three sites up in {:.1}s", started.elapsed().as_secs_f64());

    // Four paths, each message DKIM-signed at its author's domain and submitted at a.example.
    let alice = "Alice <alice@a.example>";
    let dave = "Dave <dave@lax.example>";
    let paths = [
        (
            "direct",
            signed(
                &key_a,
                "a.example",
                alice,
                "carol@b.example",
                "path direct",
                "To Carol, straight.",
            ),
            "alice@a.example",
            "carol@b.example",
            "carol",
        ),
        (
            "forward (alias)",
            signed(
                &key_a,
                "a.example",
                alice,
                "fwd@lists.f.example",
                "path forward",
                "To the alias.",
            ),
            "alice@a.example",
            "fwd@lists.f.example",
            "bob",
        ),
        (
            "list (tag + footer)",
            signed(
                &key_lax,
                "lax.example",
                dave,
                LIST,
                "path list",
                "To the list, from a lax domain.",
            ),
            "dave@lax.example",
            LIST,
            "carol",
        ),
        (
            "list with From rewrite",
            signed(
                &key_a,
                "a.example",
                alice,
                LIST,
                "path munged",
                "To the list, from a strict domain.",
            ),
            "alice@a.example",
            LIST,
            "bob",
        ),
    ];
    for (name, raw, from, to, _) in &paths {
        let file = root.join(format!("{}.eml", name.replace(' ', "_")));
        std::fs::write(&file, raw).unwrap();
        let (ok, t) = swaks(&[
            "--server",
            &a_server,
            "--from",
            from,
            "--to",
            to,
            "--data",
            file.to_str().unwrap(),
        ]);
        assert!(ok, "{name}: {t}");
    }
    let authn = Authenticator::new(&dns.config(), "mx.b.example").unwrap();
    let mut table = Vec::new();
    let mut got = Vec::new();
    for (name, _, _, _, user) in &paths {
        let subject = format!("path {}", name.split(' ').next().unwrap());
        let needle = match *name {
            "list (tag + footer)" => "path list".to_owned(),
            "list with From rewrite" => "path munged".to_owned(),
            _ => subject,
        };
        let m = wait_mail(&mail_b, user, &needle, 60)
            .unwrap_or_else(|| panic!("{name}: delivered to {user}@b.example"));
        let text = unfolded(&m);
        let dkim = authn.authenticate(&m, None, "", "").await.dkim;
        let wanted = text.contains("mailstamp=pass (wanted");
        table.push((*name, dkim, wanted));
        got.push((*name, text));
    }
    println!("| path | DKIM (author's domain) at b.example | mailstamp at b.example |");
    println!("|------|------|------|");
    for (name, dkim, wanted) in &table {
        println!(
            "| {name} | {} | {} |",
            dkim.as_str(),
            if *wanted { "wanted" } else { "not wanted" }
        );
    }
    let text = |name: &str| &got.iter().find(|(n, _)| *n == name).unwrap().1;
    for (name, _, wanted) in &table {
        assert!(wanted, "{name}: wanted at b.example:\n{}", text(name));
    }
    // A list's changes break the author's signature (mail-auth reports a body hash mismatch
    // as `neutral`, a bad signature as `fail`: neither passes).
    let dkim: Vec<bool> = table.iter().map(|r| r.1 == AuthResult::Pass).collect();
    assert_eq!(dkim, [true, true, false, false], "DKIM passes per path");
    let t = text("forward (alias)");
    assert!(
        t.contains("forwarded by lists.f.example, author alice@a.example verified there"),
        "{t}"
    );
    let t = text("list (tag + footer)");
    assert!(
        t.contains("via list at lists.f.example, author dave@lax.example verified there"),
        "{t}"
    );
    assert!(t.contains("Subject: [dev] path list"), "{t}");
    let t = text("list with From rewrite");
    assert!(
        t.contains("via list dev@lists.f.example, author alice@a.example verified there"),
        "{t}"
    );
    assert!(
        t.contains("policy.author=alice@a.example")
            && t.contains("policy.hop2-domain=lists.f.example")
            && t.contains("policy.hop2-batch="),
        "the chain in Authentication-Results, the list's hop batched:\n{t}"
    );
    assert!(
        t.contains("From: \"Alice via dev\" <dev@lists.f.example>"),
        "{t}"
    );
    assert_eq!(t.matches("Mail-Stamp:").count(), 2, "{t}");
    // Both subscribers got each list copy.
    for needle in ["path list", "path munged"] {
        for user in ["bob", "carol"] {
            assert!(
                wait_mail(&mail_b, user, needle, 30).is_some(),
                "{needle} to {user}"
            );
        }
    }

    // The list's own message (a notice From its domain, no stamp in it) is stamped as any
    // outbound mail; an unstamped post is sent on as it came, with no stamp of the list's.
    let notice = format!(
        "From: dev-owner@lists.f.example\r\nTo: {LIST}\r\nSubject: list notice\r\n\
         Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <notice@lists.f.example>\r\n\r\n\
         The list moves to a new server on Friday.\r\n"
    );
    send_copy(f_submit, notice.into_bytes(), list.state.clone()).await;
    let t = unfolded(&wait_mail(&mail_b, "bob", "list notice", 60).expect("the notice"));
    assert!(t.contains("mailstamp=pass (wanted"), "{t}");
    assert_eq!(
        t.matches("Mail-Stamp:").count(),
        1,
        "an ordinary stamp:\n{t}"
    );
    // From another site's address (not in lists.f.example's trusted network): inbound.
    let (ok, tr) = swaks(&[
        "--server",
        &format!("{F}:{f_port}"),
        "--local-interface",
        "127.0.0.9",
        "--from",
        "zed@lax.example",
        "--to",
        LIST,
        "--header",
        "From: Zed <zed@lax.example>",
        "--header",
        "Subject: unstamped post",
        "--body",
        "From a site without mailstamp.",
    ]);
    assert!(ok, "{tr}");
    let t = unfolded(&wait_mail(&mail_b, "bob", "unstamped post", 60).expect("the post"));
    assert!(
        t.contains("Subject: [dev] unstamped post") && !t.contains("Mail-Stamp:"),
        "sent on by the list as it came:\n{t}"
    );

    // The list copy replayed to another b.example user: spam at the top hop.
    let bobs = wait_mail(&mail_b, "bob", "path munged", 5).unwrap();
    let at = bobs
        .windows(12)
        .position(|w| w == b"Mail-Stamp: ")
        .expect("the hop field");
    let file = root.join("replay.eml");
    std::fs::write(&file, &bobs[at..]).unwrap();
    let (ok, t) = swaks(&[
        "--server",
        &b_server,
        "--from",
        "mallory@evil.example",
        "--to",
        "eve@b.example",
        "--data",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{t}");
    let replayed = wait_mail(&mail_b, "eve", "path munged", 30).expect("delivered, judged");
    assert!(
        unfolded(&replayed).contains("mailstamp=fail (spam"),
        "a replayed list copy is spam:\n{}",
        unfolded(&replayed)
    );

    // A forged hop: the list's copy as it left the list server (below the list's hop), under a
    // hop that claims lists.f.example but is recorded by a writer lists.f.example does not list.
    let copy = list.state.lock().unwrap().copies[1].clone();
    assert!(has(&copy, "path munged"), "the munged copy");
    let attacker = 5;
    let chain = Chain::connect(
        &ChainConfig {
            rpc_url: rpc.clone(),
            confirmations: Confirmations::Depth(1),
            timeout_secs: 5,
            ..Default::default()
        },
        registry,
        Some(signer(&anvil, attacker)),
    )
    .await
    .unwrap();
    let msg = mailstamp_core::parse(&copy).unwrap();
    let settings = ListSettings {
        subject_tag: Some("[dev]"),
        domain: "lists.f.example",
    };
    let changes = list_changes(&msg, &settings).expect("the list's changes");
    let spec = HopSpec {
        changes: &changes,
        domain: "lists.f.example",
        received_for: LIST,
    };
    let at = ChainRef {
        chain_id: chain.chain_id,
        registry: registry.0.0,
        writer: signer(&anvil, attacker).address().0.0,
    };
    let env = Envelope {
        rcpts: vec!["eve@b.example".into()],
        client_ip: None,
    };
    let hop = prepare_hop(&msg, &env, [9; 16], &at, &Selection::all(), &spec).unwrap();
    chain
        .stamp(B256::from(hop.token), FixedBytes::from(hop.commitment))
        .await
        .unwrap();
    // A field no component covers, to find this copy in eve's mailbox.
    let forged = [
        &b"X-Test-Case: forged\r\n"[..],
        &insert_hop(&copy, &hop.field),
    ]
    .concat();
    std::fs::write(&file, forged).unwrap();
    let (ok, t) = swaks(&[
        "--server",
        &b_server,
        "--from",
        "mallory@evil.example",
        "--to",
        "eve@b.example",
        "--data",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{t}");
    let forged = wait_mail(&mail_b, "eve", "X-Test-Case: forged", 30).expect("delivered, judged");
    let t = unfolded(&forged);
    assert!(
        t.contains("mailstamp=fail (spam") && t.contains("hop i=2 (lists.f.example)"),
        "a hop its domain does not authorise is spam, at the hop:\n{t}"
    );

    // The chain goes down while the list holds a post: its copy is deferred at
    // lists.f.example (451 at the milter: the hop cannot be recorded), nothing is lost; back
    // up, it is sent under the list's hop and delivered wanted.
    list.state.lock().unwrap().hold = true;
    let before = list.received();
    let raw = signed(
        &key_a,
        "a.example",
        alice,
        LIST,
        "during the outage",
        "Held, then sent.",
    );
    let file = root.join("outage.eml");
    std::fs::write(&file, &raw).unwrap();
    let (ok, t) = swaks(&[
        "--server",
        &a_server,
        "--from",
        "alice@a.example",
        "--to",
        LIST,
        "--data",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{t}");
    assert!(
        wait_for(30, || (list.received() > before).then_some(())).is_some(),
        "the list got the post"
    );
    stop_anvil(anvil);
    let tries = list.state.lock().unwrap().attempts.len();
    list.release(f_submit);
    let refused = wait_for(60, || {
        let s = list.state.lock().unwrap();
        s.attempts[tries..].first().cloned()
    })
    .expect("a submission attempt");
    assert!(
        refused.contains("451") || refused.contains("4.7.1"),
        "the list's copy is deferred while the chain is down: {refused}"
    );
    eprintln!("the list's copy during the outage: {refused}");
    let anvil = anvil_at(chain_port, &state);
    let got = wait_mail(&mail_b, "bob", "during the outage", 90)
        .expect("delivered once the chain is back");
    assert!(
        unfolded(&got).contains("via list dev@lists.f.example"),
        "{}",
        unfolded(&got)
    );
    eprintln!(
        "list sites end to end: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    drop(lab);
    drop(anvil);
}
