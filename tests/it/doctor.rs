// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp doctor`, the real binary against a real anvil, registry and DNS server: all green
//! on a correct deployment; each broken part (wrong chain id, no registry code, unfunded writer,
//! missing writer record, unwritable store, a config mistake) found, with its fix named.

use alloy::primitives::Address;
use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;

use crate::dnsfix::DnsServer;
use crate::harness::{TempDir, key_hex, mailstamp};
use crate::milter::{chain, chain_toml};

/// Runs `mailstamp --config CFG doctor --json ARGS` with the writer key `key`; returns the exit
/// code and the checks by name.
async fn doctor(cfg: &str, key: &str, args: &[&str]) -> (i32, Vec<Value>) {
    let dir = TempDir::new("doctor");
    let path = dir.0.join("m.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut argv: Vec<String> = vec![
        "--config".into(),
        path.display().to_string(),
        "doctor".into(),
        "--json".into(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let key = key.to_owned();
    // The DNS server runs on this runtime: the binary is waited for off it.
    let out = tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        mailstamp(&argv, &[("MAILSTAMP_PRIVATE_KEY", key.as_str())], None)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["ok"], out.status.code() == Some(0), "{v:#}");
    (
        out.status.code().unwrap(),
        v["checks"].as_array().unwrap().clone(),
    )
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

/// Asserts the check `name` failed and its fix contains `fix`.
fn failed(checks: &[Value], name: &str, fix: &str) {
    let c = check(checks, name);
    assert_eq!(c["status"], "fail", "{c:#}");
    let f = c["fix"].as_str().unwrap_or_default();
    assert!(f.contains(fix), "{name}: fix {f:?} does not name {fix:?}");
}

/// A deployment's config: chain (with its id), DNS at `dns`, the store under `dir`.
fn config(
    rpc: &str,
    chain_id: u64,
    registry: Address,
    writer: Address,
    dns: &str,
    dir: &TempDir,
) -> String {
    chain_toml(rpc, registry, writer)
        .replace(
            "timeout_secs = 3\n",
            &format!("timeout_secs = 3\nchain_id = {chain_id}\n"),
        )
        .replace("\"127.0.0.1:9\"", &format!("\"{dns}\""))
        + &format!(
            "[store]\npath = \"{}\"\n",
            dir.0.join("state.sqlite").display()
        )
}

/// Whether Postfix's `postconf` is here (the Postfix checks are tested only then).
fn postconf_installed() -> bool {
    ["/usr/sbin/postconf", "/usr/bin/postconf"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

/// A Postfix configuration directory with `main` as its main.cf.
fn postfix_dir(dir: &TempDir, name: &str, main: &str) -> String {
    let d = dir.0.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("main.cf"), main).unwrap();
    std::fs::write(d.join("master.cf"), "").unwrap();
    d.display().to_string()
}

#[tokio::test]
async fn doctor_is_all_green_on_a_correct_deployment() {
    let (a, registry, writer) = chain().await;
    let record = format!("_mailstamp.c.example. 60 IN TXT \"v=mailstamp1; w={writer:#x}\"");
    let dns = DnsServer::start(&["c.example"], &[record]).await;
    let dir = TempDir::new("doctor-green");
    let cfg = config(
        &a.endpoint(),
        a.chain_id(),
        registry,
        writer,
        &dns.addr.to_string(),
        &dir,
    );
    let sock = dir.0.join("m.sock");
    let unix = format!("unix:{}", sock.display());
    // A free port for the milter, named in Postfix's main.cf too.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let milter = format!("inet:127.0.0.1:{port}");
    let main_cf = format!(
        "smtpd_milters = {milter}\nnon_smtpd_milters = $smtpd_milters\nmilter_protocol = 6\n\
         milter_default_action = tempfail\n"
    );
    let pf = postfix_dir(&dir, "postfix", &main_cf);
    let mut args = vec![
        "--domain",
        "c.example",
        "--listen",
        &milter,
        "--listen",
        &unix,
    ];
    let postfix = postconf_installed();
    if postfix {
        args.extend(["--postfix-config", &pf]);
    }
    let (code, checks) = doctor(&cfg, &key_hex(&a, 0), &args).await;
    for c in &checks {
        assert_eq!(c["status"], "ok", "{c:#}");
    }
    assert_eq!(code, 0);
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    let mut want = vec![
        "config".to_owned(),
        "rpc".into(),
        "chain id".into(),
        "registry".into(),
        "writer key".into(),
        "balance".into(),
        "store".into(),
        "writer record a.example".into(),
        "writer record c.example".into(),
        format!("listen {milter}"),
        format!("listen {unix}"),
    ];
    if postfix {
        want.extend([
            "postfix milter_protocol".to_owned(),
            "postfix milter_default_action".into(),
            "postfix smtpd_milters".into(),
            "postfix non_smtpd_milters".into(),
        ]);
    }
    assert_eq!(names, want);
    let reg = check(&checks, "registry")["detail"].as_str().unwrap();
    assert!(reg.contains("StampRegistry 1."), "{reg}");
    let bal = check(&checks, "balance")["detail"].as_str().unwrap();
    assert!(
        bal.contains(" ETH: about ") && bal.contains("direct stamps"),
        "{bal}"
    );
    assert!(!sock.exists(), "the trial socket is removed");
}

#[tokio::test]
async fn doctor_finds_each_broken_part_and_names_its_fix() {
    let (a, registry, writer) = chain().await;
    let dns = DnsServer::start(&["c.example", "cust.example"], &[]).await;
    let dns = dns.addr.to_string();
    let key = key_hex(&a, 0);
    let dir = TempDir::new("doctor-broken");
    let good = config(&a.endpoint(), a.chain_id(), registry, writer, &dns, &dir);

    // Wrong chain id.
    let wrong = good.replace(
        &format!("chain_id = {}", a.chain_id()),
        &format!("chain_id = {}", a.chain_id() + 1),
    );
    let (code, checks) = doctor(&wrong, &key, &[]).await;
    assert_eq!(code, 1);
    failed(&checks, "chain id", "chain.chain_id");
    assert_eq!(check(&checks, "registry")["status"], "ok", "still checked");

    // A registry address with no contract.
    let nowhere = good.replace(
        &registry.to_string(),
        "0x000000000000000000000000000000000000dEaD",
    );
    let (code, checks) = doctor(&nowhere, &key, &[]).await;
    assert_eq!(code, 1);
    failed(&checks, "registry", "mailstamp deploy");
    let d = check(&checks, "registry")["detail"].as_str().unwrap();
    assert!(d.contains("no contract"), "{d}");

    // Code that answers version() but is not this agent's registry: a warning, not a failure.
    let other_code: Address = "0x000000000000000000000000000000000000cafe"
        .parse()
        .unwrap();
    let p = alloy::providers::ProviderBuilder::new().connect_http(a.endpoint_url());
    let mut code = p.get_code_at(registry).await.unwrap().to_vec();
    code.push(0);
    let _: Value = p
        .raw_request(
            "anvil_setCode".into(),
            (other_code, alloy::hex::encode_prefixed(&code)),
        )
        .await
        .unwrap();
    let (code, checks) = doctor(
        &good.replace(&registry.to_string(), &other_code.to_string()),
        &key,
        &[],
    )
    .await;
    let c = check(&checks, "registry");
    assert_eq!(c["status"], "warn", "{c:#}");
    assert!(
        c["fix"].as_str().unwrap().contains("mailstamp deploy"),
        "{c:#}"
    );
    assert_eq!(code, 0, "a warning does not fail the run");

    // An unfunded writer: a fresh key (pinned for a.example, so only the balance fails).
    let fresh = PrivateKeySigner::random();
    let fresh_key = format!("0x{}", alloy::hex::encode(fresh.to_bytes()));
    let unfunded = good.replace(&writer.to_string(), &fresh.address().to_string());
    let (code, checks) = doctor(&unfunded, &fresh_key, &[]).await;
    assert_eq!(code, 1);
    failed(&checks, "balance", "send ETH");
    assert_eq!(check(&checks, "writer record a.example")["status"], "ok");

    // Missing writer records: the trust map pins another writer for a.example, and c.example
    // publishes nothing (the exact record to publish is named).
    let other = good.replace(
        &writer.to_string(),
        "0x000000000000000000000000000000000000bEEF",
    );
    let (code, checks) = doctor(&other, &key, &["--domain", "c.example"]).await;
    assert_eq!(code, 1);
    failed(
        &checks,
        "writer record a.example",
        &format!("add \"{writer:#x}\" to [trust] \"a.example\""),
    );
    failed(
        &checks,
        "writer record c.example",
        &format!("publish _mailstamp.c.example TXT \"v=mailstamp1; w={writer:#x}\""),
    );

    // Provider mode: an active customer domain whose `_mailstamp` CNAME is missing gets the
    // CNAME onboarding printed as its fix.
    let pdir = TempDir::new("doctor-provider");
    let pstore = pdir.0.join("state.sqlite");
    let store = mailstamp::store::Store::open(&pstore).unwrap();
    store.add_domain("cust.example", "acme", 1).unwrap();
    store.set_active("cust.example", 2).unwrap();
    store.add_domain("pending.example", "acme", 3).unwrap();
    drop(store);
    let provider = good.replace(
        &dir.0.join("state.sqlite").display().to_string(),
        &pstore.display().to_string(),
    ) + "[provider]\nenabled = true\nzone = \"provider.example\"\n";
    let (code, checks) = doctor(&provider, &key, &[]).await;
    assert_eq!(code, 1);
    failed(
        &checks,
        "writer record cust.example",
        "_mailstamp.cust.example. 3600 IN CNAME acme._mailstamp.provider.example.",
    );
    assert!(
        !checks
            .iter()
            .any(|c| c["name"] == "writer record pending.example"),
        "only active customer domains are stamped for: {checks:#?}"
    );

    // Postfix that would not give the milter its mail, or not with the leading space.
    if postconf_installed() {
        let pf = postfix_dir(&dir, "postfix-bad", "milter_protocol = 2\n");
        let (code, checks) = doctor(
            &good,
            &key,
            &["--listen", "inet:127.0.0.1:0", "--postfix-config", &pf],
        )
        .await;
        assert_eq!(code, 1);
        failed(&checks, "postfix milter_protocol", "milter_protocol = 6");
        failed(
            &checks,
            "postfix smtpd_milters",
            "smtpd_milters = inet:127.0.0.1:0",
        );
    }

    // An unwritable store: its directory would have to be where a file is.
    let file = dir.0.join("a-file");
    std::fs::write(&file, "").unwrap();
    let unwritable = good.replace(
        &dir.0.join("state.sqlite").display().to_string(),
        &file.join("state.sqlite").display().to_string(),
    );
    let (code, checks) = doctor(&unwritable, &key, &[]).await;
    assert_eq!(code, 1);
    failed(&checks, "store", "store.path");

    // A config mistake: the first finding, naming the file and the key; nothing else runs.
    let (code, checks) = doctor(&good.replace("[chain]\n", "[chain]\nrpc = 1\n"), &key, &[]).await;
    assert_eq!(code, 1);
    assert_eq!(checks.len(), 1);
    failed(&checks, "config", "mailstamp.example.toml");
    let d = check(&checks, "config")["detail"].as_str().unwrap();
    assert!(d.contains("m.toml: chain.rpc: unknown field"), "{d}");
}

#[tokio::test]
async fn doctor_prints_one_line_per_check_with_its_fix() {
    let dir = TempDir::new("doctor-text");
    let path = dir.0.join("m.toml");
    std::fs::write(
        &path,
        format!(
            "[chain]\nrpc_url = \"http://127.0.0.1:9\"\ntimeout_secs = 1\n[store]\npath = \"{}\"\n",
            dir.0.join("s.sqlite").display()
        ),
    )
    .unwrap();
    let p = path.display().to_string();
    let out = mailstamp(
        &["--config", &p, "doctor", "--listen", "127.0.0.1:0"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ok    config"), "{text}");
    assert!(
        lines[1].starts_with("FAIL  rpc") && lines[1].contains("-> fix: start the node"),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("warn  writer key")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.starts_with("ok    store")), "{text}");
}
