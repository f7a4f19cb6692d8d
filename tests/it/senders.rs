// SPDX-License-Identifier: GPL-3.0-or-later
//! Per-user authorised senders (seed 003): the `mailstamp senders` CLI on a real SQLite store,
//! then the real milter deciding folders from them — an authenticated authorised sender
//! (address or whole domain) → INBOX, a stranger or an unauthenticated authorised From → the
//! separate folder — and the provided Sieve rule (contrib/mailstamp.sieve) run by Pigeonhole's
//! `sieve-test` (Debian's dovecot-sieve) on what the milter produced, per recipient.

use std::path::Path;
use std::process::Command;

use indymilter_test::EomAction;

use crate::allowlist::{
    DkimKey, GOOD_IP, OTHER_IP, Outcome, auth_zone, chain, message, play, site_toml, start_in,
};
use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, mailstamp, root};

fn run(store: &Path, args: &[&str], input: Option<&[u8]>) -> std::process::Output {
    let mut all = vec!["--store", store.to_str().unwrap(), "senders"];
    all.extend_from_slice(args);
    mailstamp(&all, &[], input)
}

#[test]
fn senders_cli_adds_removes_lists_imports_with_clear_errors() {
    let dir = TempDir::new("senders-cli");
    let store = dir.0.join("state.sqlite");
    let o = run(
        &store,
        &[
            "add",
            "--user",
            "Bob@B.example",
            "Carol@C.example",
            "@d.example",
        ],
        None,
    );
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("carol@c.example (Address) authorised"),
        "{out}"
    );
    assert!(out.contains("d.example (Domain) authorised"), "{out}");
    let o = run(
        &store,
        &["add", "--user", "bob@b.example", "d.example"],
        None,
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("already authorised"),
        "{o:?}"
    );

    // Import: comments and blanks skipped; a bad line names the line and adds nothing.
    let list = dir.0.join("senders.txt");
    std::fs::write(
        &list,
        "# partners\nerin@e.example\n\nf.example  # all of F\n",
    )
    .unwrap();
    let o = run(
        &store,
        &["import", "--user", "bob@b.example", list.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("2 authorised senders added, 0 already there")
    );
    std::fs::write(&list, "g.example\nnot a sender\n").unwrap();
    let o = run(
        &store,
        &["import", "--user", "bob@b.example", list.to_str().unwrap()],
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        err.contains("line 2") && err.contains("nothing was imported"),
        "{err}"
    );
    let o = run(
        &store,
        &["import", "--user", "bob@b.example", "-"],
        Some(b"h.example\n"),
    );
    assert!(o.status.success(), "{o:?}");

    let o = run(&store, &["list", "--user", "bob@b.example", "--json"], None);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let patterns: Vec<&str> = rows
        .iter()
        .map(|r| r["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(
        patterns,
        [
            "carol@c.example",
            "d.example",
            "erin@e.example",
            "f.example",
            "h.example"
        ]
    );
    assert_eq!(rows[1]["kind"], "domain");

    // Remove: present → gone; absent → exit 1 saying so.
    let o = run(
        &store,
        &["remove", "--user", "bob@b.example", "@f.example"],
        None,
    );
    assert!(o.status.success(), "{o:?}");
    let o = run(
        &store,
        &["remove", "--user", "bob@b.example", "f.example"],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("was not authorised"));

    // Bad input everywhere: exit 1, a message saying what is wrong, nothing changed.
    for (args, want) in [
        (&["add", "--user", "bob", "carol@c.example"][..], "--user"),
        (
            &["add", "--user", "bob@b.example", "x@"][..],
            "not a domain name",
        ),
        (
            &["add", "--user", "bob@b.example", "ok.example", "nodot"][..],
            "neither a mail address",
        ),
        (
            &["import", "--user", "bob@b.example", "/nonexistent/list"][..],
            "cannot read",
        ),
        (&["list", "--user", "@b.example"][..], "--user"),
    ] {
        let o = run(&store, args, None);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let o = run(&store, &["list", "--user", "bob@b.example"], None);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("ok.example"),
        "{o:?}"
    );
    // clap's own errors (a missing --user) are exit 2 with usage.
    let o = run(&store, &["add", "carol@c.example"], None);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

/// The message as delivered: the headers the milter added (Authentication-Results on top),
/// then `raw`.
fn delivered(out: &Outcome, raw: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for a in &out.eom.actions {
        if let EomAction::AddHeader { name, value } | EomAction::InsertHeader { name, value, .. } =
            a
        {
            m.extend_from_slice(name.as_bytes());
            m.push(b':');
            m.extend_from_slice(value.to_string_lossy().replace('\n', "\r\n").as_bytes());
            m.extend_from_slice(b"\r\n");
        }
    }
    m.extend_from_slice(raw);
    m
}

/// Installs Pigeonhole's sieve-test (dovecot-sieve) from Debian's packages unless present.
fn ensure_sieve_test() {
    crate::harness::ensure_debian_packages(&[("/usr/bin/sieve-test", "dovecot-sieve")]);
}

/// The folder contrib/mailstamp.sieve files `msg` into for envelope recipient `rcpt`.
fn sieve_folder(dir: &Path, msg: &[u8], rcpt: &str) -> String {
    ensure_sieve_test();
    let script = dir.join("mailstamp.sieve");
    std::fs::copy(root().join("contrib/mailstamp.sieve"), &script).unwrap();
    let file = dir.join("msg.eml");
    std::fs::write(&file, msg).unwrap();
    // Pigeonhole refuses to run as root; an unprivileged uid reads the world-readable files.
    let o = Command::new("/usr/bin/sieve-test")
        .args([
            "-o",
            "mail_uid=65534",
            "-o",
            "mail_gid=65534",
            "-o",
            "first_valid_uid=1",
        ])
        .args(["-r", rcpt, "-a", rcpt])
        .arg(&script)
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "sieve-test: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines()
        .find_map(|l| l.trim().strip_prefix("* store message in folder: "))
        .unwrap_or_else(|| panic!("no folder in sieve-test's answer: {text}"))
        .to_owned()
}

#[tokio::test]
async fn authorised_senders_reach_the_inbox_strangers_the_separate_folder() {
    let (a, registry, writer) = chain().await;
    let key = DkimKey::new();
    let mut lines = auth_zone("c.example", &key);
    lines.extend(auth_zone("d.example", &key));
    lines.extend(auth_zone("e.example", &key));
    let dns = DnsServer::start(&["example", "c.example", "d.example", "e.example"], &lines).await;
    let dir = TempDir::new("senders-milter");
    let store = dir.0.join("state.sqlite");
    let m = start_in(
        &dir.0,
        "mailstamp.toml",
        &site_toml(
            &a.endpoint(),
            registry,
            writer,
            dns.addr,
            &store,
            "folder = \"Strangers\"\n",
        ),
        None,
    )
    .await;
    // While the milter runs (its store connection open): the operator authorises an address
    // and a whole domain for bob.
    let o = run(
        &store,
        &[
            "add",
            "--user",
            "bob@b.example",
            "carol@c.example",
            "d.example",
        ],
        None,
    );
    assert!(o.status.success(), "{o:?}");

    // Authorised address, DKIM-authenticated → INBOX, reported as a trusted authorised hit.
    let carol = key.sign(
        "c.example",
        &message("Carol <carol@c.example>", "bob@b.example", "hi"),
    );
    let out = play(
        m.addr,
        OTHER_IP,
        "carol@c.example",
        &["bob@b.example"],
        &carol,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("INBOX"), "{out:?}");
    let l = out.header("X-Mailstamp-List").unwrap();
    assert!(
        l.contains("list=authorised; match=full; weight=1.00; entry=carol@c.example; trusted=yes; auth=dmarc"),
        "{l}"
    );
    assert_eq!(
        sieve_folder(&dir.0, &delivered(&out, &carol), "bob@b.example"),
        "INBOX"
    );

    // Whole domain, SPF-authenticated (unsigned, from the domain's server) → INBOX.
    let dora = message("Dora <dora@d.example>", "bob@b.example", "minutes");
    let out = play(
        m.addr,
        GOOD_IP,
        "dora@d.example",
        &["bob+lists@b.example"],
        &dora,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("INBOX"), "{out:?}");
    assert!(
        out.header("X-Mailstamp-List")
            .unwrap()
            .contains("entry=d.example")
    );

    // The authorised From without authentication → the separate folder, hit reported.
    let fake = message("Carol <carol@c.example>", "bob@b.example", "urgent invoice");
    let out = play(
        m.addr,
        OTHER_IP,
        "carol@c.example",
        &["bob@b.example"],
        &fake,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("Strangers"), "{out:?}");
    assert!(
        out.header("X-Mailstamp-List")
            .unwrap()
            .contains("trusted=no; auth=none")
    );
    assert_eq!(
        sieve_folder(&dir.0, &delivered(&out, &fake), "bob@b.example"),
        "Strangers"
    );

    // A stranger (authenticated for their own domain) → the separate folder.
    let erin = key.sign(
        "e.example",
        &message("Erin <erin@e.example>", "bob@b.example", "offer"),
    );
    let out = play(m.addr, GOOD_IP, "erin@e.example", &["bob@b.example"], &erin).await;
    assert_eq!(out.folder().as_deref(), Some("Strangers"), "{out:?}");
    assert!(out.header("X-Mailstamp-List").is_none());

    // One message, two recipients, only bob authorised Carol: the folder header names the
    // separate folder and Inbox-For names bob; the Sieve rule files it per recipient.
    let out = play(
        m.addr,
        OTHER_IP,
        "carol@c.example",
        &["bob@b.example", "alice@b.example"],
        &carol,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("Strangers"), "{out:?}");
    assert_eq!(
        out.header("X-Mailstamp-Inbox-For").as_deref(),
        Some(" <bob@b.example>")
    );
    let msg = delivered(&out, &carol);
    assert_eq!(sieve_folder(&dir.0, &msg, "bob@b.example"), "INBOX");
    assert_eq!(sieve_folder(&dir.0, &msg, "alice@b.example"), "Strangers");

    // Removing the sender takes effect on the next message.
    let o = run(
        &store,
        &["remove", "--user", "bob@b.example", "carol@c.example"],
        None,
    );
    assert!(o.status.success(), "{o:?}");
    let out = play(
        m.addr,
        OTHER_IP,
        "carol@c.example",
        &["bob@b.example"],
        &carol,
    )
    .await;
    assert_eq!(out.folder().as_deref(), Some("Strangers"), "{out:?}");
}

#[test]
fn a_bad_folder_name_is_refused_with_a_clear_error() {
    let dir = TempDir::new("senders-folder");
    let cfg = dir.0.join("mailstamp.toml");
    for bad in ["INBOX", "has space", "../up", ""] {
        std::fs::write(&cfg, format!("[inbound]\nfolder = \"{bad}\"\n")).unwrap();
        let o = mailstamp(
            &["--config", cfg.to_str().unwrap(), "senders", "list"],
            &[],
            None,
        );
        assert_eq!(o.status.code(), Some(1), "{bad}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not a safe folder name"), "{bad}: {err}");
    }
}
