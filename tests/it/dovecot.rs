// SPDX-License-Identifier: GPL-3.0-or-later
//! Real delivery: Postfix → the mailstamp milter → Dovecot LMTP → Pigeonhole Sieve
//! (`contrib/mailstamp.sieve`) → Maildir, with Debian's packages (installed here when
//! missing), a private Dovecot instance (own base_dir, config and Maildirs under a temp dir;
//! no system service), a local anvil and the DNS fixture publishing a DKIM key and DMARC
//! record for d.example. Proves the folder choice by reading the Maildirs:
//!
//! - a stamped message from a.example (`wanted`) → INBOX;
//! - a stranger (unstamped) → the separate folder `Unknown`;
//! - a stamped message altered on the way (`spam`) → Junk;
//! - an authorised sender (DKIM/DMARC pass) → INBOX; the same From unsigned → `Unknown`;
//! - one message to bob (who authorised the sender) and dave (who did not) → bob's INBOX,
//!   dave's `Unknown` (`X-Mailstamp-Inbox-For` and the Sieve `envelope` test).
//!
//! Then `mailstamp recover --apply` on bob's real Junk, where "another spam filter" (a Sieve
//! rule on `X-Spam-Flag: YES`, run before ours) filed wanted mail too: the false positives
//! go back to INBOX, nothing is lost or doubled (files and Message-IDs counted before and
//! after), and a re-run is a no-op.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mailstamp::chain;
use mailstamp::store::Store;

use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, anvil, key_hex, root, signer, tamper_body};
use crate::postfix::{
    MilterProc, Postfix, chown, ensure_postfix, free_port, sigterm, swaks, wait_for,
};
use crate::recover::{dkim_sign, message_ids, recover};

/// Installs Dovecot's LMTP server and Pigeonhole Sieve from Debian's packages unless they
/// are there. The image's policy-rc.d keeps the system instance from starting.
fn ensure_dovecot() {
    crate::harness::ensure_debian_packages(&[
        ("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
        ("/usr/bin/sievec", "dovecot-sieve"),
    ]);
}

/// The stand-in for another spam filter (rspamd, SpamAssassin): it files what it marked.
const OTHER_FILTER: &str = "require [\"fileinto\", \"mailbox\"];\n\
    if header :is \"X-Spam-Flag\" \"YES\" {\n    fileinto :create \"Junk\";\n    stop;\n}\n";

/// A private Dovecot (LMTP only) in the foreground; stopped on drop.
struct Dovecot {
    child: Child,
    port: u16,
    log: PathBuf,
    mail: PathBuf,
}

impl Dovecot {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let (run, state, mail, sieve) = (
            dir.join("run"),
            dir.join("state"),
            dir.join("mail"),
            dir.join("sieve"),
        );
        for d in [&run, &state, &mail, &sieve] {
            std::fs::create_dir_all(d).unwrap();
        }
        chown(&mail, "65534:65534");
        std::fs::write(sieve.join("filter.sieve"), OTHER_FILTER).unwrap();
        std::fs::copy(
            root().join("contrib/mailstamp.sieve"),
            sieve.join("mailstamp.sieve"),
        )
        .unwrap();
        let log = dir.join("dovecot.log");
        let conf = dir.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "base_dir = {run}\nstate_dir = {state}\nlog_path = {log}\n\
                 protocols = lmtp\nlisten = 127.0.0.1\nssl = no\nhostname = mx.b.example\n\
                 mail_location = maildir:{mail}/%n\nfirst_valid_uid = 1\n\
                 passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
                 userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={mail}/%n\n}}\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n\
                 service anvil {{\n  chroot =\n}}\n\
                 protocol lmtp {{\n  mail_plugins = sieve\n  postmaster_address = postmaster@b.example\n}}\n\
                 plugin {{\n  sieve_before = {s}/filter.sieve\n  sieve_before2 = {s}/mailstamp.sieve\n}}\n",
                run = run.display(),
                state = state.display(),
                log = log.display(),
                mail = mail.display(),
                s = sieve.display(),
            ),
        )
        .unwrap();
        // Compiled up front: the delivering user may not write next to the scripts.
        for s in ["filter.sieve", "mailstamp.sieve"] {
            let out = Command::new("sievec")
                .arg("-c")
                .arg(&conf)
                .arg(sieve.join(s))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "sievec {s}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dovecot starts");
        let up = wait_for(15, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let d = Self {
            child,
            port,
            log,
            mail,
        };
        assert!(up.is_some(), "dovecot did not listen:\n{}", d.log());
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A user's Maildir root (INBOX); sub-folders are `.Name` inside.
    fn maildir(&self, user: &str) -> PathBuf {
        self.mail.join(user)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        sigterm(self.child.id());
        if wait_for(10, || self.child.try_wait().ok().flatten()).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The Subjects of the messages in a Maildir folder (empty when it does not exist), sorted.
fn subjects(dir: &Path) -> Vec<String> {
    if !mailstamp::maildir::is_folder(dir) {
        return Vec::new();
    }
    let mut v: Vec<String> = mailstamp::maildir::list(dir)
        .unwrap()
        .iter()
        .filter_map(|e| {
            let raw = std::fs::read(&e.path).ok()?;
            mailstamp_core::parse(&raw)?.subject().map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

/// Every Message-ID of a user's Maildir (INBOX and every sub-folder).
fn all_ids(root: &Path) -> Vec<String> {
    let mut v = message_ids(root);
    for e in std::fs::read_dir(root).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') && e.path().is_dir() {
            v.extend(message_ids(&e.path()));
        }
    }
    v.sort();
    v
}

/// Everything of one run; prints the logs if the test failed.
struct Lab {
    receiving: Option<Postfix>,
    sending: Option<Postfix>,
    milters: Vec<MilterProc>,
    dovecot: Option<Dovecot>,
    _dir: TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in [&self.sending, &self.receiving].into_iter().flatten() {
                eprintln!("===== Postfix maillog\n{}", p.maillog());
            }
            for m in &self.milters {
                eprintln!(
                    "===== milter log\n{}",
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                );
            }
            if let Some(d) = &self.dovecot {
                eprintln!("===== dovecot log\n{}", d.log());
            }
        }
        self.sending = None;
        self.receiving = None;
        self.milters.clear();
        self.dovecot = None;
    }
}

/// A message as swaks sends it with `--data`.
fn message(from: &str, to: &str, subject: &str, extra: &str) -> String {
    let id = format!(
        "<{}.{}@test>",
        subject.replace(' ', "-"),
        std::process::id()
    );
    format!(
        "From: {from}\nTo: {to}\nSubject: {subject}\nMessage-ID: {id}\nDate: Tue, 24 Nov 2026 05:00:00 +0000\n{extra}\nHello,\n\nthis is {subject}.\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_milter_lmtp_sieve_file_by_folder_and_recover_releases_from_real_junk() {
    ensure_postfix();
    ensure_dovecot();
    let dir = TempDir::new("dovecot");
    let base = dir.0.clone();
    let mut lab = Lab {
        receiving: None,
        sending: None,
        milters: Vec::new(),
        dovecot: None,
        _dir: dir,
    };

    // Chain, DNS (d.example signs with DKIM and publishes DMARC), store with bob's list.
    let a = anvil();
    let rpc = a.endpoint();
    let registry = chain::deploy(&rpc, signer(&a, 0), true, Duration::from_secs(10))
        .await
        .unwrap()
        .address;
    let writer = signer(&a, 0).address();
    let der = mail_auth::common::crypto::Ed25519Key::generate_pkcs8().unwrap();
    let public = mail_auth::common::crypto::Ed25519Key::from_pkcs8_der(&der)
        .unwrap()
        .public_key();
    use base64::Engine;
    let p = base64::engine::general_purpose::STANDARD.encode(public);
    let dns = DnsServer::start(
        &["example"],
        &[
            format!("s1._domainkey.d.example 60 IN TXT \"v=DKIM1; k=ed25519; p={p}\""),
            "_dmarc.d.example 60 IN TXT \"v=DMARC1; p=reject\"".to_owned(),
        ],
    )
    .await;
    let store_path = base.join("state.sqlite");
    Store::open(&store_path)
        .unwrap()
        .add_sender("bob@b.example", "carol@d.example", None, 1)
        .unwrap();
    let cfg = |rest: &str| {
        format!(
            "[chain]\nrpc_url = \"{rpc}\"\nregistry = \"{registry}\"\ntimeout_secs = 3\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_secs = 1\nattempts = 1\n\
             [trust]\n\"a.example\" = [\"{writer}\"]\n\
             [store]\npath = \"{}\"\n{rest}",
            dns.addr,
            store_path.display()
        )
    };
    std::fs::write(
        base.join("s.toml"),
        cfg("[inbound]\nenabled = false\n[milter]\nauthserv_id = \"mx.a.example\"\ntrusted_networks = [\"127.0.0.0/8\"]\n"),
    )
    .unwrap();
    let r_toml = base.join("r.toml");
    std::fs::write(
        &r_toml,
        cfg(
            "[verify]\nthreshold = 0.9\n[inbound]\nenabled = true\n[milter]\nauthserv_id = \"mx.b.example\"\n[recover]\nmta_hosts = [\"mx.b.example\"]\n",
        ),
    )
    .unwrap();
    lab.milters.push(MilterProc::start(
        &base.join("s.toml"),
        Some(&key_hex(&a, 0)),
        base.join("milter-s.log"),
    ));
    lab.milters
        .push(MilterProc::start(&r_toml, None, base.join("milter-r.log")));
    let (ms, mr) = (lab.milters[0].port, lab.milters[1].port);

    let dovecot = Dovecot::start(&base.join("dovecot"));
    let lmtp = dovecot.port;
    let bob = dovecot.maildir("bob");
    let dave = dovecot.maildir("dave");
    lab.dovecot = Some(dovecot);
    let receiving = Postfix::start(
        base.join("r"),
        "b.example",
        Some(mr),
        &format!(
            "virtual_mailbox_domains = b.example\n\
             virtual_mailbox_maps = inline:{{ bob@b.example=bob, dave@b.example=dave }}\n\
             virtual_transport = lmtp:inet:127.0.0.1:{lmtp}\n"
        ),
    );
    let rport = receiving.port;
    let r_server = format!("127.0.0.1:{rport}");
    lab.receiving = Some(receiving);
    let sending = Postfix::start(
        base.join("s"),
        "a.example",
        Some(ms),
        &format!("transport_maps = inline:{{ b.example=smtp:[127.0.0.1]:{rport} }}\n"),
    );
    let s_server = format!("127.0.0.1:{}", sending.port);
    lab.sending = Some(sending);

    let send = |server: &str, from: &str, to: &[&str], data: &str| {
        let file = base.join(format!("msg-{}.eml", free_port()));
        std::fs::write(&file, data).unwrap();
        let to = to.join(",");
        let d = format!("@{}", file.display());
        let args = [
            "--server", server, "--from", from, "--to", &to, "--data", &d,
        ];
        let (ok, t) = swaks(&args);
        assert!(ok, "{t}");
    };
    let signed = |m: String| String::from_utf8(dkim_sign(&der, "d.example", m.as_bytes())).unwrap();
    let spam_flag = "X-Spam-Flag: YES\nX-Spam-Status: Yes, score=7.2 required=5.0\n";

    // Folder choice.
    send(
        &s_server,
        "alice@a.example",
        &["bob@b.example"],
        &message("alice@a.example", "bob@b.example", "stamped from alice", ""),
    );
    send(
        &r_server,
        "eve@c.example",
        &["bob@b.example"],
        &message("eve@c.example", "bob@b.example", "from a stranger", ""),
    );
    send(
        &r_server,
        "carol@d.example",
        &["bob@b.example"],
        &signed(message(
            "carol@d.example",
            "bob@b.example",
            "signed by carol",
            "",
        )),
    );
    send(
        &r_server,
        "carol@d.example",
        &["bob@b.example"],
        &message("carol@d.example", "bob@b.example", "carol forged", ""),
    );
    send(
        &r_server,
        "carol@d.example",
        &["bob@b.example", "dave@b.example"],
        &signed(message(
            "carol@d.example",
            "bob@b.example, dave@b.example",
            "carol to two",
            "",
        )),
    );
    // Wait for the stamped one to be in INBOX, then alter a copy of it: spam.
    let first = wait_for(30, || {
        mailstamp::maildir::list(&bob)
            .ok()?
            .into_iter()
            .find_map(|e| {
                let raw = std::fs::read(&e.path).ok()?;
                String::from_utf8_lossy(&raw)
                    .contains("stamped from alice")
                    .then_some(raw)
            })
    })
    .expect("the stamped message reaches bob's INBOX");
    let tampered = tamper_body(&first).unwrap();
    let t = String::from_utf8_lossy(&tampered).replace("stamped from alice", "altered on the way");
    send(&r_server, "alice@a.example", &["bob@b.example"], &t);

    // What "another spam filter" marked: wanted mail among it.
    send(
        &s_server,
        "alice@a.example",
        &["bob@b.example"],
        &message(
            "alice@a.example",
            "bob@b.example",
            "alice marked spam",
            spam_flag,
        ),
    );
    for i in 0..3 {
        send(
            &r_server,
            "carol@d.example",
            &["bob@b.example"],
            &signed(message(
                "carol@d.example",
                "bob@b.example",
                &format!("carol marked spam {i}"),
                spam_flag,
            )),
        );
    }
    for i in 0..2 {
        send(
            &r_server,
            "eve@c.example",
            &["bob@b.example"],
            &message(
                "eve@c.example",
                "bob@b.example",
                &format!("eve marked spam {i}"),
                spam_flag,
            ),
        );
    }
    send(
        &r_server,
        "carol@d.example",
        &["bob@b.example"],
        &message(
            "carol@d.example",
            "bob@b.example",
            "carol forged marked spam",
            spam_flag,
        ),
    );

    let (junk, unknown) = (bob.join(".Junk"), bob.join(".Unknown"));
    let total_bob = 5 + 1 + 1 + 3 + 2 + 1;
    let all_in = wait_for(60, || {
        let n = subjects(&bob).len() + subjects(&junk).len() + subjects(&unknown).len();
        (n >= total_bob && !subjects(&dave.join(".Unknown")).is_empty()).then_some(())
    });
    let heads = |dir: &Path| -> String {
        mailstamp::maildir::list(dir)
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let t = std::fs::read_to_string(&e.path).unwrap_or_default();
                t.split("\n\n").next().unwrap_or("").to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };
    assert!(
        all_in.is_some(),
        "not everything was delivered: INBOX {:?} Junk {:?} Unknown {:?}\n{}",
        subjects(&bob),
        subjects(&junk),
        subjects(&unknown),
        heads(&bob)
    );
    assert_eq!(
        subjects(&bob),
        vec!["carol to two", "signed by carol", "stamped from alice"]
    );
    assert_eq!(subjects(&unknown), vec!["carol forged", "from a stranger"]);
    assert_eq!(subjects(&dave.join(".Unknown")), vec!["carol to two"]);
    assert!(subjects(&dave).is_empty());
    let mut junk_expected = vec![
        "alice marked spam",
        "altered on the way",
        "carol forged marked spam",
        "carol marked spam 0",
        "carol marked spam 1",
        "carol marked spam 2",
        "eve marked spam 0",
        "eve marked spam 1",
    ];
    junk_expected.sort();
    assert_eq!(subjects(&junk), junk_expected);

    // recover --apply on the real Junk.
    let ids_before = all_ids(&bob);
    assert_eq!(ids_before.len(), total_bob);
    let junk_s = junk.display().to_string();
    let r_cfg = r_toml.clone();
    let j = junk_s.clone();
    let (lines, sum) = tokio::task::spawn_blocking(move || {
        recover(&r_cfg, &[&j, "--user", "bob@b.example", "--apply"])
    })
    .await
    .unwrap();
    let reasons: Vec<String> = lines
        .iter()
        .map(|l| format!("{} {} {}", l["action"], l["reason"], l["file"]))
        .collect();
    assert_eq!(sum["released"], 4, "{reasons:#?}");
    assert_eq!(sum["kept"], 4, "{reasons:#?}");
    assert_eq!(sum["by_reason"]["release:stamp_wanted"], 1, "{reasons:#?}");
    assert_eq!(
        sum["by_reason"]["release:authorised_sender"], 3,
        "{reasons:#?}"
    );
    assert_eq!(sum["by_reason"]["keep:stamp_rejected"], 1, "{reasons:#?}");
    assert_eq!(
        sum["by_reason"]["keep:unauthenticated_hit"], 1,
        "{reasons:#?}"
    );
    assert_eq!(
        subjects(&bob),
        vec![
            "alice marked spam",
            "carol marked spam 0",
            "carol marked spam 1",
            "carol marked spam 2",
            "carol to two",
            "signed by carol",
            "stamped from alice",
        ]
    );
    assert_eq!(
        subjects(&junk),
        vec![
            "altered on the way",
            "carol forged marked spam",
            "eve marked spam 0",
            "eve marked spam 1",
        ]
    );
    assert_eq!(all_ids(&bob), ids_before, "a message was lost or doubled");
    // Dovecot reads the moved files: its own listing agrees.
    let out = Command::new("doveadm")
        .arg("-c")
        .arg(base.join("dovecot/dovecot.conf"))
        .args(["search", "-u", "bob", "mailbox", "INBOX", "ALL"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        7,
        "doveadm search: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A re-run changes nothing.
    let r_cfg = r_toml.clone();
    let (_, sum) = tokio::task::spawn_blocking(move || {
        recover(&r_cfg, &[&junk_s, "--user", "bob@b.example", "--apply"])
    })
    .await
    .unwrap();
    assert_eq!(
        (sum["released"].as_u64(), sum["kept"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(all_ids(&bob), ids_before);
    assert_eq!(subjects(&bob).len(), 7);
    drop(lab);
    drop(a);
}
