// SPDX-License-Identifier: GPL-3.0-or-later
//! A forward across three sites (issue 13), each a real Postfix beside its own `mailstamp
//! milter` process on a loopback address of its own: the sender a.example (127.0.0.2, stamps
//! directly), the forwarder b.example (127.0.0.3: verifies, and forwards its alias
//! bob@b.example to bob@forward.example under its own hop, batched), the receiver
//! forward.example (127.0.0.4: verifies the whole chain). One anvil, the DNS fixture
//! publishing each site's writer record for its own domain, swaks and sendmail to submit.
//!
//! Alice's message reaches bob at forward.example `wanted`, reported as forwarded by
//! b.example with the chain in `Authentication-Results`; the forwarded copy replayed to
//! another forward.example user is spam; with the chain down, submission is deferred and
//! nothing is lost.

use std::path::Path;
use std::time::{Duration, Instant};

use mailstamp_core::writers::WriterRecord;

use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, key_hex, signer};
use crate::postfix::{
    MilterProc, Postfix, anvil_at, chown, delivered, ensure_postfix, free_port, maildir,
    stop_anvil, swaks, wait_for,
};

const A: &str = "127.0.0.2";
const F: &str = "127.0.0.3";
const B: &str = "127.0.0.4";

pub(crate) fn has(msg: &[u8], needle: &str) -> bool {
    String::from_utf8_lossy(msg).contains(needle)
}

pub(crate) fn unfolded(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg)
        .replace("\r\n", "\n")
        .replace("\n\t", " ")
        .replace("\n ", " ")
}

/// The main.cf lines of Maildir delivery for `users` of `domain` under `mail`.
pub(crate) fn mailbox(mail: &Path, domain: &str, users: &[&str]) -> String {
    let maps: Vec<String> = users.iter().map(|u| format!("{u}@{domain}={u}/")).collect();
    format!(
        "virtual_mailbox_domains = {domain}\nvirtual_mailbox_base = {}\n\
         virtual_mailbox_maps = inline:{{ {} }}\n\
         virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n",
        mail.display(),
        maps.join(", ")
    )
}

/// Every site of one run; prints every log if the test failed.
pub(crate) struct Lab {
    pub(crate) postfix: Vec<(&'static str, Postfix)>,
    pub(crate) milters: Vec<MilterProc>,
    pub(crate) dir: TempDir,
}

impl Lab {
    /// One `mailstamp milter` process per site `(domain, writer key, config lines)`: the
    /// chain, the DNS fixture, a SQLite store and `authserv_id = "mx.<domain>"` each.
    pub(crate) fn start_milters(
        &mut self,
        rpc: &str,
        registry: alloy::primitives::Address,
        dns: &DnsServer,
        sites: &[(&str, Option<String>, String)],
    ) {
        let root = self.dir.0.clone();
        for (site, key, rest) in sites {
            let cfg = root.join(format!("{site}.toml"));
            let text = format!(
                "[chain]\nrpc_url = \"{rpc}\"\nregistry = \"{registry}\"\ntimeout_secs = 3\n\
                 [dns]\nnameservers = [\"{}\"]\ntimeout_secs = 2\nattempts = 1\n\
                 [store]\npath = \"{}\"\n\
                 [milter]\nauthserv_id = \"mx.{site}\"\nlookup_tx = false\n{rest}",
                dns.addr,
                root.join(format!("{site}.sqlite")).display()
            );
            std::fs::write(&cfg, text).unwrap();
            self.milters.push(MilterProc::start(
                &cfg,
                key.as_deref(),
                root.join(format!("milter-{site}.log")),
            ));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, p) in &self.postfix {
                eprintln!("===== {name} Postfix maillog\n{}", p.maillog());
            }
            for m in &self.milters {
                eprintln!(
                    "===== milter log {}\n{}",
                    m.log.display(),
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                );
            }
        }
        self.postfix.clear();
        self.milters.clear();
        let _ = &self.dir;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_across_three_postfix_sites_is_wanted_and_its_replay_is_not() {
    ensure_postfix();
    let started = Instant::now();
    let mut lab = Lab {
        postfix: Vec::new(),
        milters: Vec::new(),
        dir: TempDir::new("three-sites"),
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
    let dns = DnsServer::start(
        &["example", "a.example", "b.example", "forward.example"],
        &[
            format!("_mailstamp.a.example. 60 IN TXT \"{}\"", rec(1)),
            format!("_mailstamp.b.example. 60 IN TXT \"{}\"", rec(2)),
        ],
    )
    .await;
    // a.example: its users submit on 127.0.0.1 (outbound: stamped directly).
    // b.example: verifies, forwards bob's mail under a batched hop.
    // forward.example: verifies.
    let sites = [
        (
            "a.example",
            Some(key_hex(&anvil, 1)),
            "trusted_networks = [\"127.0.0.1/32\"]\n".to_owned(),
        ),
        (
            "b.example",
            Some(key_hex(&anvil, 2)),
            "trusted_networks = [\"127.0.0.1/32\"]\n\
             [stamp]\nmode = \"batch\"\nbatch_wait_ms = 300\n\
             [forward]\naliases = { \"bob@b.example\" = [\"bob@forward.example\"] }\n"
                .to_owned(),
        ),
        ("forward.example", None, String::new()),
    ];
    lab.start_milters(&rpc, registry, &dns, &sites);
    let mail_f = root.join("mail-f");
    let mail_b = root.join("mail-b");
    for m in [&mail_f, &mail_b] {
        std::fs::create_dir_all(m).unwrap();
        chown(m, "65534:65534");
    }
    let pb = Postfix::start_on(
        B,
        root.join("pf-b"),
        "forward.example",
        Some(lab.milters[2].port),
        &mailbox(&mail_b, "forward.example", &["bob", "eve"]),
    );
    let b_server = format!("{B}:{}", pb.port);
    let pf = Postfix::start_on(
        F,
        root.join("pf-f"),
        "b.example",
        Some(lab.milters[1].port),
        &format!(
            "{}transport_maps = inline:{{ forward.example=smtp:[{B}]:{} }}\n",
            mailbox(&mail_f, "b.example", &["bob", "carol"]),
            pb.port
        ),
    );
    let pa = Postfix::start_on(
        A,
        root.join("pf-a"),
        "a.example",
        Some(lab.milters[0].port),
        &format!(
            "transport_maps = inline:{{ b.example=smtp:[{F}]:{} }}\n",
            pf.port
        ),
    );
    let a_server = format!("{A}:{}", pa.port);
    lab.postfix.push(("b (forward.example)", pb));
    lab.postfix.push(("f (b.example)", pf));
    lab.postfix.push(("a (a.example)", pa));
    eprintln!("three sites up in {:.1}s", started.elapsed().as_secs_f64());

    // Alice → bob@b.example, forwarded by b.example to bob@forward.example: wanted there.
    let (ok, t) = swaks(&[
        "--server",
        &a_server,
        "--from",
        "alice@a.example",
        "--to",
        "bob@b.example",
        "--header",
        "From: Alice <alice@a.example>",
        "--header",
        "Subject: the plans",
        "--body",
        "Bob, the plans for Thursday are attached below.",
    ]);
    assert!(ok, "{t}");
    let got = delivered(&mail_b, "bob", 1).expect("forwarded to bob@forward.example");
    let text = unfolded(&got);
    assert!(
        text.contains("mailstamp=pass (wanted"),
        "wanted at forward.example:\n{text}"
    );
    assert!(
        text.contains("forwarded by b.example, author alice@a.example verified there"),
        "{text}"
    );
    assert!(
        text.contains("policy.author=alice@a.example")
            && text.contains("policy.hop2-domain=b.example"),
        "the chain in Authentication-Results:\n{text}"
    );
    assert!(
        text.contains("policy.hop2-batch="),
        "b.example's hop is batched:\n{text}"
    );
    assert_eq!(
        text.matches("Mail-Stamp:").count(),
        2,
        "the originator's stamp and the hop:\n{text}"
    );
    assert!(
        maildir(&mail_f, "bob").is_empty(),
        "not delivered at b.example"
    );

    // b.example's copy replayed to another forward.example user: spam at the top hop.
    let file = root.join("replay.eml");
    // The replayer sends the message as delivered, without forward.example's own headers.
    let body_at = got
        .windows(12)
        .position(|w| w == b"Mail-Stamp: ")
        .expect("the hop field");
    std::fs::write(&file, &got[body_at..]).unwrap();
    let (ok, t) = swaks(&[
        "--server",
        &b_server,
        "--from",
        "mallory@evil.example",
        "--to",
        "eve@forward.example",
        "--data",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{t}");
    let replayed = delivered(&mail_b, "eve", 1).expect("delivered, judged");
    let text = unfolded(&replayed);
    assert!(
        text.contains("mailstamp=fail (spam"),
        "a replayed hop copy is spam:\n{text}"
    );

    // The chain goes down: Alice's next message waits in a.example's queue (4xx at the milter),
    // nothing is lost; back up, it is stamped, forwarded and verified.
    stop_anvil(anvil);
    let (ok, t) = swaks(&[
        "--server",
        &a_server,
        "--from",
        "alice@a.example",
        "--to",
        "bob@b.example",
        "--header",
        "Subject: during the outage",
    ]);
    assert!(!ok, "deferred while the chain is down:\n{t}");
    assert!(t.contains("451 4.7.1"), "{t}");
    let anvil = anvil_at(chain_port, &state);
    let (ok, t) = swaks(&[
        "--server",
        &a_server,
        "--from",
        "alice@a.example",
        "--to",
        "bob@b.example",
        "--header",
        "From: Alice <alice@a.example>",
        "--header",
        "Subject: after the outage",
    ]);
    assert!(ok, "{t}");
    let got = wait_for(60, || {
        maildir(&mail_b, "bob")
            .into_iter()
            .filter_map(|f| std::fs::read(f).ok())
            .find(|m| has(m, "after the outage"))
    })
    .expect("delivered once the chain is back");
    assert!(
        unfolded(&got).contains("mailstamp=pass (wanted"),
        "{}",
        unfolded(&got)
    );
    eprintln!(
        "three sites end to end: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    drop(lab);
    drop(anvil);
}
