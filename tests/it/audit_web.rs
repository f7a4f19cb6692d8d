// SPDX-License-Identifier: GPL-3.0-or-later
//! The audit page (`mailstamp audit --serve`, issue 16) end to end in headless Chromium:
//! anvil, the registry, corpus messages stamped in direct and batch mode through the binary,
//! the page served by the binary, and Debian's chromium driven through chromedriver
//! (WebDriver, fantoccini). It finds the writer's stamps and anchor, opens a record and checks
//! a leaf with `verifyStamp`, uploads a stamped, a tampered and a hostile message and reads
//! the verdicts and the differing component from the DOM, and reads the health view. One
//! screenshot per view goes to `target/audit-shots/`. Without a browser: the safety rules
//! over plain HTTP (Host names, methods, the upload cap, the loopback-only listen).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use mailstamp_core::header::Mode;
use mailstamp_core::{Inspection, inspect};
use serde_json::json;

use crate::harness::{
    TempDir, anvil, corpus, ensure_debian_packages, key_hex, mailstamp, signer, tamper_body,
    trust_config_toml,
};

const RCPT: &str = "bob@b.example";
const HOSTILE_SUBJECT: &str = "<script>window.__pwned='subject'</script> \"><img src=x onerror=\"window.__pwned='subject-img'\">";
const HOSTILE_NAME: &str = "\"><img src=x onerror=window.__pwned=1>";
const HOSTILE_FILE: &str = "\"><img src=x onerror=alert(1)>.eml";

/// A child process killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shots_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp: the shots go beside it.
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new("target"))
        .join("audit-shots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts `mailstamp audit --serve` on a free loopback port; the page's base URL.
fn serve(env: &[(&str, &str)], extra: &[&str]) -> (Kill, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailstamp"));
    cmd.args(["audit", "--serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("MAILSTAMP_CONFIG")
        .env_remove("MAILSTAMP_PRIVATE_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("mailstamp runs");
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in the first line: {line:?}"))
        .to_owned();
    (Kill(child), url)
}

/// One HTTP/1.1 request over a fresh connection; (status, body).
fn http(base: &str, request: &str) -> (u16, String) {
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.replace("{addr}", &addr).as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// chromedriver and the Chromium it starts, in a process group of their own: a test that
/// fails before it closes its session leaves no browser behind (killing chromedriver alone
/// would orphan Chromium).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser() -> (Driver, Client) {
    ensure_debian_packages(&[
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Driver(
        Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-crash-reporter", "--disable-breakpad",
                     "--no-first-run", "--window-size=1200,1400"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    // chromedriver takes a moment to listen.
    for _ in 0..100 {
        if let Ok(c) = ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            return (driver, c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver on {url} did not start a Chromium session");
}

async fn wait_css(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => {
            let err = match c.find(Locator::Id("error")).await {
                Ok(el) => el.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("no `{css}` on the page ({e}); page error: {err:?}");
        }
    }
}

async fn text(c: &Client, css: &str) -> String {
    wait_css(c, css).await.text().await.unwrap()
}

async fn shot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    let p = shots_dir().join(name);
    std::fs::write(&p, png).unwrap();
    p
}

/// Uploads `path` through the page's file input and waits for the report.
async fn upload(c: &Client, path: &Path) {
    c.execute(
        "document.getElementById('report').hidden = true; document.getElementById('verdict').textContent = '';",
        vec![],
    )
    .await
    .unwrap();
    let input = wait_css(c, "#verify-file").await;
    input.send_keys(path.to_str().unwrap()).await.unwrap();
    wait_css(c, "#report:not([hidden])").await;
}

/// The batched header's (commitment, proof) as the page's leaf form takes them.
fn leaf_of(raw: &[u8]) -> (String, String) {
    let msg = mailstamp_core::parse(raw).unwrap();
    let Inspection::Stamped(h) = inspect(&msg) else {
        panic!("a stamped message")
    };
    let Mode::Batch { proof, .. } = &h.mode else {
        panic!("a batched stamp")
    };
    let proof: Vec<String> = proof
        .iter()
        .map(|n| format!("0x{}", alloy::hex::encode(n)))
        .collect();
    (
        format!("0x{}", alloy::hex::encode(h.commitment())),
        proof.join(","),
    )
}

/// A message whose From name and Subject are markup, From a trusted corpus domain.
fn hostile_message(from_addr: &str) -> Vec<u8> {
    let name = HOSTILE_NAME.replace('"', "\\\"");
    format!(
        "From: \"{name}\" <{from_addr}>\r\nTo: {RCPT}\r\nSubject: {HOSTILE_SUBJECT}\r\n\
         Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <hostile.1@audit.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Body with <b>markup</b> and <script>window.__pwned='body'</script>.\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_page_in_chromium_shows_stamps_records_and_verdicts() {
    let a = anvil();
    let url = a.endpoint();
    let key = key_hex(&a, 0);
    let writer = signer(&a, 0).address();
    let o = mailstamp(
        &["deploy", "--json"],
        &[
            ("MAILSTAMP_RPC_URL", url.as_str()),
            ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let registry = d["address"].as_str().unwrap().to_owned();

    let dir = TempDir::new("audit-web");
    let config = dir.0.join("mailstamp.toml");
    let toml = format!(
        "[chain]\nexplorer_tx_url = \"https://explorer.invalid/tx/{{tx}}\"\n\n\
         [audit]\nlog_range_blocks = 2\n\n{}\n[store]\npath = \"{}\"\n",
        trust_config_toml(writer),
        dir.0.join("state.sqlite").display()
    );
    std::fs::write(&config, toml).unwrap();
    let env = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
        ("MAILSTAMP_REGISTRY", registry.as_str()),
        ("MAILSTAMP_CONFIG", config.to_str().unwrap()),
    ];

    // Three messages stamped directly, one hostile one too, four in one batch.
    let msgs: Vec<_> = corpus().into_iter().step_by(501).take(7).collect();
    let (inbox, direct, batched) = (dir.0.join("in"), dir.0.join("direct"), dir.0.join("batch"));
    std::fs::create_dir_all(&inbox).unwrap();
    let mut files = Vec::new();
    for (i, (_, raw)) in msgs.iter().enumerate() {
        let p = inbox.join(format!("m{i}.eml"));
        std::fs::write(&p, raw).unwrap();
        files.push(p.to_string_lossy().into_owned());
    }
    let from0 = {
        let m = mailstamp_core::parse(&msgs[0].1).unwrap();
        mailstamp_core::component::from_address(&m)
    };
    let hostile_in = inbox.join(HOSTILE_FILE);
    std::fs::write(&hostile_in, hostile_message(&from0)).unwrap();
    let mut args = vec!["stamp", "--rcpt", RCPT, "-o", direct.to_str().unwrap()];
    args.extend(files[..3].iter().map(String::as_str));
    args.push(hostile_in.to_str().unwrap());
    let o = mailstamp(&args, &env, None);
    assert!(o.status.success(), "direct: {}", stderr(&o));
    let mut args = vec![
        "stamp",
        "--batch",
        "--rcpt",
        RCPT,
        "-o",
        batched.to_str().unwrap(),
    ];
    args.extend(files[3..].iter().map(String::as_str));
    let o = mailstamp(&args, &env, None);
    assert!(o.status.success(), "batch: {}", stderr(&o));
    let batched_msg = std::fs::read(batched.join("m3.eml")).unwrap();
    let direct_msg = std::fs::read(direct.join("m1.eml")).unwrap();
    let tampered = dir.0.join("tampered.eml");
    std::fs::write(&tampered, tamper_body(&direct_msg).unwrap()).unwrap();

    // The page reads the chain through an RPC URL with credentials in it: they never show.
    let secret_url = url.replacen("http://", "http://auditor:s3cr3tpass@", 1);
    let serve_env = [
        ("MAILSTAMP_RPC_URL", secret_url.as_str()),
        ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
        ("MAILSTAMP_REGISTRY", registry.as_str()),
        ("MAILSTAMP_CONFIG", config.to_str().unwrap()),
    ];
    let (_server, base) = serve(&serve_env, &[]);

    // Paging over the JSON endpoint, two events a page, the events read two blocks per
    // eth_getLogs (audit.log_range_blocks): every event once, newest first.
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let q = match &next {
            Some(n) => format!("limit=2&before={n}"),
            None => "limit=2".to_owned(),
        };
        let (s, body) = http(
            &base,
            &format!(
                "GET /api/activity?{q} HTTP/1.1\r\nHost: {{addr}}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let items = v["page"]["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|i| i["block"].as_u64().unwrap()));
        next = v["page"]["next"].as_str().map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(seen, [6, 5, 4, 3, 2], "each event once, newest first");

    let (_driver, c) = browser().await;

    // 1. Activity: the configured writer's four stamps and one anchor, newest first; the chart
    // counts eight messages.
    c.goto(&format!("{base}#/activity")).await.unwrap();
    wait_css(&c, "body[data-ready='activity']").await;
    wait_css(&c, "#chart-svg").await;
    assert_eq!(
        c.find(Locator::Id("writer-input"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .map(|w| w.to_lowercase()),
        Some(format!("{writer:#x}")),
        "the configured key's writer is shown first"
    );
    let rows = c
        .find_all(Locator::Css("#activity-table tbody tr"))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    for r in &rows {
        kinds.push(r.attr("data-kind").await.unwrap().unwrap_or_default());
    }
    assert_eq!(
        kinds,
        ["anchor", "stamp", "stamp", "stamp", "stamp"],
        "newest (the batch) first"
    );
    let anchor_row = rows[0].text().await.unwrap();
    assert!(
        anchor_row.contains("anchor (batch)") && anchor_row.contains(" 4 "),
        "{anchor_row}"
    );
    let total = c
        .find(Locator::Id("chart-svg"))
        .await
        .unwrap()
        .attr("data-total")
        .await
        .unwrap();
    assert_eq!(total.as_deref(), Some("8"), "4 direct + 4 batched messages");
    let tx_link = c
        .find(Locator::Css("#activity-table tbody tr td.mono a"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        tx_link.starts_with("https://explorer.invalid/tx/0x"),
        "{tx_link}"
    );
    let p = shot(&c, "activity.png").await;
    eprintln!("screenshot {}", p.display());

    // 2. One record: the anchor, opened from its row; verifyStamp of a batched leaf.
    rows[0]
        .find(Locator::Css("a[data-id]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_css(&c, "body[data-ready='record']").await;
    assert!(
        text(&c, "#record-kind").await.starts_with("anchor"),
        "the batch's record"
    );
    let confirmations: u64 = text(&c, "#record-confirmations")
        .await
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(confirmations >= 1);
    let (commitment, proof) = leaf_of(&batched_msg);
    c.find(Locator::Id("leaf-commitment"))
        .await
        .unwrap()
        .send_keys(&commitment)
        .await
        .unwrap();
    c.find(Locator::Id("leaf-proof"))
        .await
        .unwrap()
        .send_keys(&proof)
        .await
        .unwrap();
    c.find(Locator::Id("leaf-go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let r = wait_css(&c, "#leaf-result[data-result]").await;
    assert_eq!(
        r.attr("data-result").await.unwrap().as_deref(),
        Some("true")
    );
    let p = shot(&c, "record.png").await;
    eprintln!("screenshot {}", p.display());
    // A changed leaf is not in the batch.
    let wrong = format!("{}00", &commitment[..commitment.len() - 2]);
    let wrong = if wrong == commitment {
        format!("{}11", &commitment[..commitment.len() - 2])
    } else {
        wrong
    };
    c.execute(
        "document.getElementById('leaf-commitment').value = arguments[0]; document.getElementById('leaf-result').removeAttribute('data-result');",
        vec![json!(wrong)],
    )
    .await
    .unwrap();
    c.find(Locator::Id("leaf-go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let r = wait_css(&c, "#leaf-result[data-result]").await;
    assert_eq!(
        r.attr("data-result").await.unwrap().as_deref(),
        Some("false")
    );

    // 3. Verify: a batched message is wanted (and the contract agrees), a tampered one is not,
    // with its body text shown as differing.
    c.goto(&format!("{base}#/verify")).await.unwrap();
    wait_css(&c, "body[data-ready='verify']").await;
    c.find(Locator::Id("verify-rcpt"))
        .await
        .unwrap()
        .send_keys(RCPT)
        .await
        .unwrap();
    upload(&c, &batched.join("m3.eml")).await;
    assert_eq!(text(&c, "#verdict").await, "wanted");
    assert_eq!(text(&c, "#report-verify-stamp").await, "true");
    assert_eq!(text(&c, "#report-differs").await, "nothing");
    assert!(text(&c, "#report-auth").await.starts_with("pass"));
    let p = shot(&c, "verify-wanted.png").await;
    eprintln!("screenshot {}", p.display());

    upload(&c, &tampered).await;
    let verdict = text(&c, "#verdict").await;
    assert!(
        verdict == "spam" || verdict == "suspect",
        "tampered: {verdict}"
    );
    let differs = c
        .find_all(Locator::Css("#components tbody tr.differs"))
        .await
        .unwrap();
    assert!(!differs.is_empty(), "a differing component row");
    let name = differs[0].attr("data-name").await.unwrap().unwrap();
    assert!(name.starts_with("text"), "the body text differs: {name}");
    assert_eq!(
        differs[0].attr("data-status").await.unwrap().as_deref(),
        Some("mismatch")
    );
    assert!(differs[0].text().await.unwrap().contains("differs"));
    assert!(text(&c, "#report-differs").await.contains(&name));
    let p = shot(&c, "verify-tampered.png").await;
    eprintln!("screenshot {}", p.display());

    // Hostile names, subject and file name stay text: no element made, no script run.
    upload(&c, &direct.join(HOSTILE_FILE)).await;
    assert_eq!(text(&c, "#verdict").await, "wanted");
    assert_eq!(text(&c, "#report-subject").await, HOSTILE_SUBJECT);
    assert_eq!(text(&c, "#report-file").await, HOSTILE_FILE);
    assert!(text(&c, "#report-from").await.starts_with(HOSTILE_NAME));
    let pwned = c
        .execute(
            "return [typeof window.__pwned, document.querySelectorAll('img, main script').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        pwned,
        json!(["undefined", 0]),
        "markup from the message ran"
    );
    let p = shot(&c, "verify-hostile.png").await;
    eprintln!("screenshot {}", p.display());

    // 4. Health: chain id, head, the RPC endpoint without its credentials, the balance.
    c.goto(&format!("{base}#/health")).await.unwrap();
    wait_css(&c, "body[data-ready='health']").await;
    assert_eq!(text(&c, "#health-chain").await, "31337");
    let rpc = text(&c, "#health-rpc").await;
    assert_eq!(rpc, url.trim_end_matches('/'), "scheme://host:port only");
    let head: u64 = text(&c, "#health-head").await.parse().unwrap();
    assert!(head >= 6, "deploy, four stamps, one anchor: {head}");
    assert!(text(&c, "#health-balance").await.ends_with(" ETH"));
    let source = c.source().await.unwrap();
    assert!(!source.contains("s3cr3tpass") && !source.contains(&key[2..]));
    let p = shot(&c, "health.png").await;
    eprintln!("screenshot {}", p.display());
    c.close().await.unwrap();
}

#[test]
fn the_audit_server_is_read_only_bounded_and_loopback_only() {
    let a = anvil();
    let url = a.endpoint();
    let key = key_hex(&a, 0);
    let o = mailstamp(
        &["deploy", "--json"],
        &[
            ("MAILSTAMP_RPC_URL", url.as_str()),
            ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let registry = d["address"].as_str().unwrap().to_owned();
    let dir = TempDir::new("audit-http");
    let config = dir.0.join("mailstamp.toml");
    std::fs::write(&config, "[milter]\nmax_message_bytes = 2048\n").unwrap();
    let env = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_REGISTRY", registry.as_str()),
        ("MAILSTAMP_CONFIG", config.to_str().unwrap()),
    ];

    // A non-loopback address needs --public.
    let o = mailstamp(&["audit", "--serve", "--listen", "0.0.0.0:0"], &env, None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--public"), "{}", stderr(&o));

    let (_server, base) = serve(&env, &[]);
    let (s, body) = http(
        &base,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(s, 200);
    assert!(body.contains("<title>mailstamp audit</title>"));
    // A name other than loopback is refused (DNS rebinding).
    let (s, body) = http(
        &base,
        "GET /api/health HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(s, 421, "{body}");
    assert!(body.contains("--public"));
    // No write route.
    for m in ["PUT", "DELETE", "PATCH"] {
        let (s, _) = http(
            &base,
            &format!(
                "{m} /api/verify HTTP/1.1\r\nHost: {{addr}}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(s, 405, "{m}");
    }
    // The upload cap is milter.max_message_bytes, declared or streamed.
    let big = "x".repeat(4096);
    let (s, body) = http(
        &base,
        &format!(
            "POST /api/verify HTTP/1.1\r\nHost: {{addr}}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            big.len()
        ),
    );
    assert_eq!(s, 413, "{body}");
    assert!(body.contains("2048"), "{body}");
    let (s, body) = http(
        &base,
        &format!(
            "POST /api/verify HTTP/1.1\r\nHost: {{addr}}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
            big.len()
        ),
    );
    assert_eq!(s, 413, "{body}");
    // An unstamped message is judged; a bad id gets a clear answer.
    let msg = "From: a@a.example\r\nSubject: hi\r\n\r\nhello\r\n";
    let (s, body) = http(
        &base,
        &format!(
            "POST /api/verify?rcpt=bob@b.example HTTP/1.1\r\nHost: {{addr}}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        ),
    );
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["verdict"], "unstamped");
    let (s, body) = http(
        &base,
        "GET /api/record?id=0x12 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(s, 400);
    assert!(body.contains("64 hex digits"), "{body}");
    let (s, body) = http(
        &base,
        &format!(
            "GET /api/record?id=0x{} HTTP/1.1\r\nHost: {{addr}}\r\nConnection: close\r\n\r\n",
            "ab".repeat(32)
        ),
    );
    assert_eq!(s, 404);
    assert!(body.contains("no stamp or anchor"), "{body}");
    // Every answer carries the page's security headers.
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut st = TcpStream::connect(addr).unwrap();
    st.write_all(
        format!("GET /api/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut head = String::new();
    st.read_to_string(&mut head).unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-security-policy: default-src 'none'"));
    assert!(head.contains("x-content-type-options: nosniff"));
}
