// SPDX-License-Identifier: GPL-3.0-or-later
//! A provider with two hosts (issue 17), each a real Postfix beside its own `mailstamp milter`
//! process, on loopback addresses of their own (mx1 = 127.0.0.2, mx2 = 127.0.0.3), sharing one
//! real PostgreSQL store; a third site, c.example (127.0.0.4, Postfix + milter on SQLite), that
//! receives their outbound mail and verifies it through the DNS writer record; the
//! correspondents' SMTP client on 127.0.0.9; a real anvil; the DNS fixture.
//!
//! Onboarding on mx1 decides RCPT at mx2; outbound learning on mx1 files the authenticated
//! reply at mx2 in INBOX; both hosts stamp in batch mode at once with their own writers (no
//! nonce clash, all verified at c.example); mx1 killed mid-batch leaves mx2 unaffected and its
//! message is stamped once mx1 is back; PostgreSQL stopped mid-run gives temporary failures
//! only, and everything queued meanwhile is delivered once it is back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use alloy::primitives::Address;
use mailstamp::config::StoreConfig;
use mailstamp::people::allowlist::{self, EntryState};
use mailstamp::store::{Store, scratch::Cluster};

use crate::allowlist::{DkimKey, auth_zone, message};
use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, anvil, key_hex, mailstamp, signer};
use crate::postfix::{
    MilterProc, Postfix, chown, delivered, ensure_postfix, free_port, maildir, refused_at, swaks,
    wait_for,
};

const MX1: &str = "127.0.0.2";
const MX2: &str = "127.0.0.3";
const SITE_C: &str = "127.0.0.4";
/// The correspondents' client: not a trusted network of either host (inbound there).
const OUTSIDE: &str = "127.0.0.9";

/// One provider host: its Postfix, its milter, its config.
struct Host {
    name: &'static str,
    ip: &'static str,
    config: PathBuf,
    listen: String,
    key: String,
    postfix: Option<Postfix>,
    milter: Option<MilterProc>,
    starts: usize,
}

impl Host {
    fn server(&self) -> String {
        format!("{}:{}", self.ip, self.postfix.as_ref().unwrap().port)
    }

    fn start_milter(&mut self, dir: &Path) {
        self.starts += 1;
        let log = dir.join(format!("milter-{}-{}.log", self.name, self.starts));
        self.milter = Some(MilterProc::start_at(
            &self.config,
            Some(&self.key),
            log,
            &self.listen,
        ));
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = mailstamp(&all, &[], None);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Local submission (`sendmail`): Postfix keeps the message in its queue whatever the
    /// milter says.
    fn sendmail(&self, from: &str, to: &str, msg: &str) {
        let pf = self.postfix.as_ref().unwrap();
        let mut sm = Command::new("sendmail")
            .args(["-C", &pf.conf(), "-f", from, to])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            sm.stdin.take().unwrap().write_all(msg.as_bytes()).unwrap();
        }
        assert!(sm.wait().unwrap().success());
    }

    fn flush(&self) {
        let out = self.postfix.as_ref().unwrap().cmd("postqueue", &["-f"]);
        assert!(out.status.success());
    }
}

/// Everything of the run; prints every log if the test failed.
struct Lab {
    hosts: Vec<Host>,
    site_c: Option<Postfix>,
    site_c_milter: Option<MilterProc>,
    dir: TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for h in &self.hosts {
                if let Some(p) = &h.postfix {
                    eprintln!("===== {} Postfix maillog\n{}", h.name, p.maillog());
                }
            }
            if let Some(p) = &self.site_c {
                eprintln!("===== c.example Postfix maillog\n{}", p.maillog());
            }
            for e in std::fs::read_dir(&self.dir.0)
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    eprintln!(
                        "===== {}\n{}",
                        p.display(),
                        std::fs::read_to_string(&p).unwrap_or_default()
                    );
                }
            }
        }
        // Postfix first (it talks to the milters), then the milters.
        for h in &mut self.hosts {
            h.postfix = None;
        }
        self.site_c = None;
        for h in &mut self.hosts {
            h.milter = None;
        }
        self.site_c_milter = None;
    }
}

fn shared(url: &str) -> Store {
    let cfg = StoreConfig {
        url: Some(url.to_owned()),
        host: Some("test".to_owned()),
        ..Default::default()
    };
    Store::connect(&cfg, None).unwrap()
}

/// The host's config: the shared store as `name`, provider mode for c3.example's provider,
/// batch stamping, loopback submission (127.0.0.1) as its users' outbound mail.
fn host_toml(
    rpc: &str,
    registry: Address,
    dns: std::net::SocketAddr,
    url: &str,
    name: &str,
    writers: &[Address],
) -> String {
    let writers: Vec<String> = writers.iter().map(|w| format!("\"{w}\"")).collect();
    format!(
        "[chain]\nrpc_url = \"{rpc}\"\nregistry = \"{registry}\"\ntimeout_secs = 3\n\
         [dns]\nnameservers = [\"{dns}\"]\ntimeout_secs = 2\nattempts = 1\n\
         [store]\nurl = \"{url}\"\nhost = \"{name}\"\n\
         [milter]\nauthserv_id = \"{name}.provider.example\"\ntrusted_networks = [\"127.0.0.1/32\"]\n\
         [inbound]\nenabled = true\n\
         [stamp]\nmode = \"batch\"\nbatch_wait_ms = 2500\n\
         [provider]\nenabled = true\nzone = \"provider.example\"\n\
         mail_host_addresses = [\"{MX1}\", \"{MX2}\"]\nwriters = [{}]\n",
        writers.join(", ")
    )
}

fn mailbox_maps(mail: &Path, domains: &str, users: &[&str]) -> String {
    let maps: Vec<String> = users
        .iter()
        .map(|u| format!("{u}={}/", u.split('@').next().unwrap()))
        .collect();
    format!(
        "virtual_mailbox_domains = {domains}\nvirtual_mailbox_base = {}\n\
         virtual_mailbox_maps = inline:{{ {} }}\n\
         virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n",
        mail.display(),
        maps.join(", ")
    )
}

fn has(msg: &[u8], needle: &str) -> bool {
    String::from_utf8_lossy(msg).contains(needle)
}

/// Carol's messages in c.example's Maildir whose Subject contains `subject`.
fn at_c(mail: &Path, subject: &str) -> Vec<Vec<u8>> {
    maildir(mail, "carol")
        .into_iter()
        .filter_map(|f| std::fs::read(f).ok())
        .filter(|m| has(m, &format!("Subject: {subject}")))
        .collect()
}

/// Waits until c.example holds `n` messages with `subject`; each verified `wanted` there.
fn wanted_at_c(mail: &Path, subject: &str, n: usize) -> Vec<Vec<u8>> {
    let got = wait_for(60, || {
        let v = at_c(mail, subject);
        (v.len() >= n).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "{subject}: {} of {n} at c.example",
            at_c(mail, subject).len()
        )
    });
    assert_eq!(got.len(), n, "{subject}: delivered once each");
    for m in &got {
        assert!(
            has(m, "mailstamp=pass (wanted"),
            "{subject}: not wanted at c.example:\n{}",
            String::from_utf8_lossy(m)
        );
    }
    got
}

/// The `w=` (writer) of a message's Mail-Stamp, unfolded, lower case.
fn writer_of(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg)
        .replace("\r\n\t", "")
        .replace("\n\t", "");
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("Mail-Stamp:"))
        .expect("stamped");
    v.split(';')
        .find_map(|t| t.trim().strip_prefix("w="))
        .unwrap()
        .trim()
        .to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postfix_hosts_share_one_postgres_store() {
    ensure_postfix();
    let started = Instant::now();
    let mut pg = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let url = pg.database("two_postfix").unwrap();
    let a = anvil();
    let rpc = a.endpoint();
    let registry = mailstamp::chain::deploy(
        &rpc,
        signer(&a, 0),
        true,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap()
    .address;
    let (w1, w2) = (signer(&a, 1).address(), signer(&a, 2).address());
    let key = DkimKey::new();
    let dns = DnsServer::start(
        &[
            "example",
            "provider.example",
            "c3.example",
            "c4.example",
            "c.example",
        ],
        &auth_zone("c.example", &key),
    )
    .await;
    let mut lab = Lab {
        hosts: Vec::new(),
        site_c: None,
        site_c_milter: None,
        dir: TempDir::new("two-postfix"),
    };
    let root = lab.dir.0.clone();

    // c.example: Postfix on 127.0.0.4 with a verifying milter (its own SQLite store); the
    // writers for c3.example come from DNS (the CNAME onboarding publishes).
    let mail_c = root.join("mail-c");
    std::fs::create_dir_all(&mail_c).unwrap();
    chown(&mail_c, "65534:65534");
    let c_toml = root.join("c.toml");
    std::fs::write(
        &c_toml,
        format!(
            "[chain]\nrpc_url = \"{rpc}\"\nregistry = \"{registry}\"\ntimeout_secs = 3\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_secs = 2\nattempts = 1\n\
             [store]\npath = \"{}\"\n[milter]\nauthserv_id = \"mx.c.example\"\n",
            dns.addr,
            root.join("c.sqlite").display()
        ),
    )
    .unwrap();
    let mc = MilterProc::start(&c_toml, None, root.join("milter-c.log"));
    let site_c = Postfix::start_on(
        SITE_C,
        root.join("c"),
        "c.example",
        Some(mc.port),
        &mailbox_maps(&mail_c, "c.example", &["carol@c.example"]),
    );
    let c_port = site_c.port;
    lab.site_c = Some(site_c);
    lab.site_c_milter = Some(mc);

    // The provider's two hosts: same domains, own writers, one store.
    let mail_p = root.join("mail-p");
    std::fs::create_dir_all(&mail_p).unwrap();
    chown(&mail_p, "65534:65534");
    for (i, (name, ip)) in [("mx1", MX1), ("mx2", MX2)].into_iter().enumerate() {
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            host_toml(&rpc, registry, dns.addr, &url, name, &[w1, w2]),
        )
        .unwrap();
        let mut h = Host {
            name,
            ip,
            config,
            listen: format!("inet:127.0.0.1:{}", free_port()),
            key: key_hex(&a, i + 1),
            postfix: None,
            milter: None,
            starts: 0,
        };
        h.start_milter(&root);
        let port = h.milter.as_ref().unwrap().port;
        h.postfix = Some(Postfix::start_on(
            ip,
            root.join(name),
            "provider.example",
            Some(port),
            &format!(
                "{}transport_maps = inline:{{ c.example=smtp:[{SITE_C}]:{c_port} }}\n",
                mailbox_maps(
                    &mail_p,
                    "c3.example, c4.example",
                    &["ann@c3.example", "dan@c3.example", "eve@c4.example"]
                )
            ),
        ));
        lab.hosts.push(h);
    }
    eprintln!("lab up in {:.1}s", started.elapsed().as_secs_f64());
    let (mx1, mx2) = (lab.hosts[0].server(), lab.hosts[1].server());
    let inbound = |server: &str, to: &str, subject: &str| {
        swaks(&[
            "--server",
            server,
            "--local-interface",
            OUTSIDE,
            "--from",
            "carol@c.example",
            "--to",
            to,
            "--header",
            &format!("Subject: {subject}"),
        ])
    };

    // 1. Onboarding on mx1 decides RCPT at mx2. Before: c3.example is no customer domain.
    let (ok, t) = inbound(&mx2, "ann@c3.example", "too early");
    assert!(!ok, "{t}");
    let (cmd, reply) = refused_at(&t).unwrap_or_else(|| panic!("no refusal in:\n{t}"));
    assert!(
        cmd == "RCPT" && reply.starts_with("550 5.1.2"),
        "{cmd}: {reply}"
    );
    for d in ["c3.example", "c4.example"] {
        let (ok, text) = lab.hosts[0].cli(&["onboard", "add", d, "--account", "acme"]);
        assert!(ok, "{text}");
        if d == "c3.example" {
            for l in text.lines().filter(|l| l.starts_with("  ")) {
                dns.add(l.trim()).await;
            }
        }
    }
    let (ok, text) = lab.hosts[0].cli(&["onboard", "verify", "c3.example"]);
    assert!(ok, "{text}");
    let (ok, zone) = lab.hosts[0].cli(&["onboard", "zone"]);
    assert!(ok, "{zone}");
    let txt = zone
        .lines()
        .find(|l| l.contains(" TXT "))
        .unwrap_or_else(|| panic!("{zone}"));
    for w in [w1, w2] {
        assert!(
            txt.to_lowercase().contains(&format!("{w:#x}")),
            "every host's writer is published: {txt}"
        );
    }
    for l in zone
        .lines()
        .filter(|l| !l.starts_with(';') && l.contains(" IN "))
    {
        dns.add(l.trim()).await;
    }
    let (ok, t) = inbound(&mx2, "ann@c3.example", "welcome");
    assert!(ok, "an active domain is accepted at the other host:\n{t}");
    assert!(delivered(&mail_p, "ann", 1).is_some());
    let (ok, t) = inbound(&mx2, "eve@c4.example", "pending");
    assert!(!ok, "{t}");
    let (cmd, reply) = refused_at(&t).unwrap();
    assert!(
        cmd == "RCPT" && reply.starts_with("550 5.1.2"),
        "a pending domain is refused: {cmd}: {reply}"
    );

    // 2. Both hosts stamp in batch mode at once (their users submit on 127.0.0.1), each
    //    with its own writer; c.example verifies every message. Ann's mail via mx1 teaches
    //    the shared allowlist.
    let n = 4;
    let threads: Vec<_> = [(mx1.clone(), "ann"), (mx2.clone(), "dan")]
        .into_iter()
        .flat_map(|(server, user)| {
            (0..n).map(move |i| {
                let server = server.clone();
                std::thread::spawn(move || {
                    swaks(&[
                        "--server",
                        &server,
                        "--from",
                        &format!("{user}@c3.example"),
                        "--to",
                        "carol@c.example",
                        "--header",
                        &format!("Subject: from {user} {i}"),
                    ])
                })
            })
        })
        .collect();
    for t in threads {
        let (ok, text) = t.join().unwrap();
        assert!(ok, "{text}");
    }
    for (user, w) in [("ann", w1), ("dan", w2)] {
        for m in wanted_at_c(&mail_c, &format!("from {user} "), n) {
            assert_eq!(
                writer_of(&m),
                format!("{w:#x}"),
                "{user}: its host's writer"
            );
        }
    }
    for h in &lab.hosts {
        let log = std::fs::read_to_string(&h.milter.as_ref().unwrap().log).unwrap();
        assert!(!log.to_lowercase().contains("nonce"), "{}: {log}", h.name);
    }
    let u = url.clone();
    let e = tokio::task::spawn_blocking(move || {
        allowlist::show(&shared(&u), "ann@c3.example", "carol@c.example").unwrap()
    })
    .await
    .unwrap()
    .expect("mx1's outbound mail taught the shared allowlist");
    assert_eq!(e.state, EntryState::Partial);

    // 3. Carol's DKIM-signed reply reaches mx2: INBOX. The same From unsigned: the separate
    //    folder (her SPF does not cover 127.0.0.9).
    for (signed, subject, folder) in [
        (true, "re plans", "INBOX"),
        (false, "re plans 2", "Unknown"),
    ] {
        let raw = message("Carol <carol@c.example>", "ann@c3.example", subject);
        let raw = if signed {
            key.sign("c.example", &raw)
        } else {
            raw
        };
        let file = root.join(format!("{}.eml", subject.replace(' ', "-")));
        std::fs::write(&file, raw).unwrap();
        let (ok, t) = swaks(&[
            "--server",
            &mx2,
            "--local-interface",
            OUTSIDE,
            "--from",
            "carol@c.example",
            "--to",
            "ann@c3.example",
            "--data",
            file.to_str().unwrap(),
        ]);
        assert!(ok, "{t}");
        let got = wait_for(30, || {
            maildir(&mail_p, "ann")
                .into_iter()
                .filter_map(|f| std::fs::read(f).ok())
                .find(|m| {
                    has(m, &format!("Subject: {subject}\r"))
                        || has(m, &format!("Subject: {subject}\n"))
                })
        })
        .unwrap_or_else(|| panic!("{subject} not delivered"));
        assert!(
            has(&got, &format!("X-Mailstamp-Folder: {folder}")),
            "{subject}: {}",
            String::from_utf8_lossy(&got)
        );
    }

    // 4. mx1 dies mid-batch: its message waits in its queue, mx2 goes on; once mx1 is back
    //    the message is stamped and verified, once.
    lab.hosts[0].sendmail(
        "ann@c3.example",
        "carol@c.example",
        "From: Ann <ann@c3.example>\nTo: Carol <carol@c.example>\nSubject: killed mid-batch\n\
         Date: Tue, 24 Nov 2026 03:00:00 +0000\nMessage-ID: <killed-1@c3.example>\n\n\
         This one was in mx1's open batch when mx1 died.\n",
    );
    let open = wait_for(20, || {
        let (_, text) = lab.hosts[1].cli(&["store", "hosts"]);
        text.contains("mx1\tpending batches 1").then_some(())
    });
    assert!(open.is_some(), "mx1 never opened a batch");
    lab.hosts[0].milter.as_mut().unwrap().kill();
    let (ok, t) = swaks(&[
        "--server",
        &mx2,
        "--from",
        "dan@c3.example",
        "--to",
        "carol@c.example",
        "--header",
        "Subject: while mx1 is down",
    ]);
    assert!(ok, "mx2 is unaffected:\n{t}");
    wanted_at_c(&mail_c, "while mx1 is down", 1);
    assert!(at_c(&mail_c, "killed mid-batch").is_empty());
    let q = lab.hosts[0].postfix.as_ref().unwrap().queue();
    assert!(
        q.iter().any(|(_, r)| r == &["carol@c.example"]),
        "the message waits in mx1's queue: {q:?}"
    );
    lab.hosts[0].milter = None;
    lab.hosts[0].start_milter(&root);
    lab.hosts[0].flush();
    wanted_at_c(&mail_c, "killed mid-batch", 1);
    let left = wait_for(20, || {
        let (_, text) = lab.hosts[1].cli(&["store", "hosts"]);
        (!text.contains("mx1\tpending batches 1")).then_some(text)
    });
    assert!(
        left.is_some(),
        "mx1's dead batch was handled at its restart"
    );

    // 5. PostgreSQL stops mid-run: RCPT for a customer domain gets a temporary failure (the
    //    domain cannot be checked), outbound mail waits in the queue (the batch journal is
    //    in the store); nothing is lost: back up, everything is delivered.
    let pg_stopped = Instant::now();
    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let (ok, t) = inbound(&mx2, "ann@c3.example", "store down");
    assert!(!ok, "{t}");
    let (cmd, reply) = refused_at(&t).unwrap();
    assert!(
        cmd == "RCPT" && reply.starts_with("451 4.3.0"),
        "a temporary failure: {cmd}: {reply}"
    );
    lab.hosts[1].sendmail(
        "dan@c3.example",
        "carol@c.example",
        "From: Dan <dan@c3.example>\nTo: Carol <carol@c.example>\nSubject: queued while the store is down\n\
         Date: Tue, 24 Nov 2026 03:00:00 +0000\nMessage-ID: <pgdown-1@c3.example>\n\n\
         This one waits for PostgreSQL.\n",
    );
    let pf2 = lab.hosts[1].postfix.as_ref().unwrap();
    let deferred = wait_for(30, || {
        pf2.maillog()
            .contains("milter-reject: END-OF-MESSAGE")
            .then_some(())
    });
    assert!(
        deferred.is_some(),
        "the local submission did not meet the milter"
    );
    assert!(at_c(&mail_c, "queued while the store is down").is_empty());
    pg = tokio::task::spawn_blocking(move || {
        pg.launch().unwrap();
        pg
    })
    .await
    .unwrap();
    eprintln!(
        "PostgreSQL down for {:.1}s",
        pg_stopped.elapsed().as_secs_f64()
    );
    lab.hosts[1].flush();
    wanted_at_c(&mail_c, "queued while the store is down", 1);
    let (ok, t) = inbound(&mx2, "ann@c3.example", "store back");
    assert!(ok, "RCPT accepted again:\n{t}");
    eprintln!(
        "two Postfix hosts on one PostgreSQL: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    drop(lab);
    drop(pg);
}
