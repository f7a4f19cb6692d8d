// SPDX-License-Identifier: GPL-3.0-or-later
//! The log lines of the real binary: `[log] format = "json"` with `MAILSTAMP_LOG=info` gives
//! one JSON object per stderr line, one `mail` line per message with the same fields from
//! both directions, and never the writer key or a word of a message.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;

use serde_json::Value;

use crate::harness::{TempDir, key_hex, tamper_body};
use crate::milter::{INBOUND, Smtp, T, chain, chain_toml, play, with_stamp};
use crate::relay::{Sink, deliver};

/// A sentence that appears nowhere but in the body of the test message.
const SECRET_SENTENCE: &str = "The blue heron counts seventeen pebbles at dawn";

fn message() -> String {
    format!(
        "From: Alice <alice@a.example>\r\n\
         To: Bob <bob@b.example>\r\n\
         Subject: figures\r\n\
         Date: Tue, 24 Nov 2026 03:00:00 +0000\r\n\
         Message-ID: <logs1@a.example>\r\n\
         \r\n\
         Hello Bob,\r\n\
         \r\n\
         {SECRET_SENTENCE}. Regards, Alice\r\n"
    )
}

/// Waits for the line of `log` that contains `s`; returns the whole text.
fn wait_for(log: &std::path::Path, s: &str) -> String {
    let end = std::time::Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(s) {
            return text;
        }
        assert!(std::time::Instant::now() < end, "no {s:?} in:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A daemon binary with `MAILSTAMP_LOG=info` and the writer key `key` (none if empty), its
/// stderr in `log`; see [`stop`].
fn spawn(
    cfg: &std::path::Path,
    args: &[&str],
    key: &str,
    log: &std::path::Path,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_mailstamp"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("MAILSTAMP_CONFIG")
        .env_remove("MAILSTAMP_PRIVATE_KEY")
        .envs((!key.is_empty()).then_some(("MAILSTAMP_PRIVATE_KEY", key)))
        .env("MAILSTAMP_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Stops a daemon with SIGTERM; its log, and every line parsed as JSON.
fn stop(mut child: std::process::Child, log: &std::path::Path) -> (String, Vec<Value>) {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(log).unwrap();
    let lines = BufReader::new(text.as_bytes())
        .lines()
        .map(|l| {
            let l = l.unwrap();
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .collect();
    (text, lines)
}

/// The per-message lines.
fn mails(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["message"].as_str() == Some("mail"))
        .collect()
}

/// Neither the key (with or without 0x, in any case) nor a word of the body is in `text`.
fn nothing_secret(text: &str, key: &str) {
    let bare = key.trim_start_matches("0x");
    for needle in [key, bare, SECRET_SENTENCE, "blue heron", "Hello Bob"] {
        assert!(!text.contains(needle), "{needle:?} is in the log:\n{text}");
    }
    assert!(!text.to_lowercase().contains(&bare.to_lowercase()));
}

/// The address of the `listening on ADDR` notice after `prefix`.
fn listening(text: &str, prefix: &str) -> SocketAddr {
    text.split(prefix)
        .nth(1)
        .unwrap()
        .split(['"', ','])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn json_logs_carry_one_line_per_message_and_no_secret_or_content() {
    let (a, registry, writer) = chain().await;
    let dir = TempDir::new("logs");
    let cfg = dir.0.join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n[store]\npath = \"{}\"\n\
             [log]\nformat = \"json\"\n",
            chain_toml(&a.endpoint(), registry, writer),
            dir.0.join("state.sqlite").display()
        ),
    )
    .unwrap();
    let key = key_hex(&a, 0);
    let log = dir.0.join("milter.log");
    let child = spawn(
        &cfg,
        &["milter", "--listen", "inet:127.0.0.1:0"],
        &key,
        &log,
    );
    let addr = listening(&wait_for(&log, "listening on inet:"), "listening on inet:");

    // Outbound from a trusted network: stamped.
    let raw = message();
    let submit = Smtp {
        ip: "127.0.0.1",
        host: "localhost",
        ..INBOUND
    };
    let out = play(addr, &submit, raw.as_bytes()).await;
    assert!(out.stop.is_none(), "{out:?}");
    let stamped = with_stamp(&out, raw.as_bytes());
    // Inbound: the stamped message (wanted), then a copy with one letter of the body changed.
    let o = play(addr, &INBOUND, &stamped).await;
    assert_eq!(
        o.header("X-Mailstamp-Verdict").as_deref(),
        Some(" wanted"),
        "{o:?}"
    );
    let tampered = tamper_body(&stamped).expect("a letter to change");
    let o = play(addr, &INBOUND, &tampered).await;
    assert_ne!(o.header("X-Mailstamp-Verdict").as_deref(), Some(" wanted"));

    let (text, lines) = stop(child, &log);
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str() == Some("mailstamp milter: stopped")),
        "{text}"
    );
    let mails = mails(&lines);
    assert_eq!(mails.len(), 3, "one line per message:\n{text}");
    let w = format!("{writer:#x}");
    let out = mails[0];
    assert_eq!(out["level"], "INFO");
    assert_eq!(out["queue_id"], "QID1");
    assert_eq!(out["direction"], "outbound");
    assert_eq!(out["verdict"], "stamped");
    assert_eq!(out["writer"], w.as_str());
    let token = out["token"].as_str().expect("a token");
    let tx = out["tx"].as_str().expect("a tx");
    assert!(token.len() == 66 && tx.len() == 66, "{out}");
    let wanted = mails[1];
    assert_eq!(wanted["direction"], "inbound");
    assert_eq!(wanted["queue_id"], "QID1");
    assert_eq!(wanted["verdict"], "wanted");
    assert_eq!(wanted["score"], 1.0);
    assert_eq!(wanted["action"], "add-header");
    assert_eq!(wanted["token"], token);
    assert_eq!(wanted["writer"], w.as_str());
    assert_eq!(wanted["tx"], tx);
    assert_eq!(wanted["differed"], "");
    let changed = mails[2];
    assert_eq!(changed["direction"], "inbound");
    assert_ne!(changed["verdict"], "wanted");
    assert_eq!(changed["token"], token);
    let differed = changed["differed"].as_str().unwrap();
    assert!(differed.starts_with("text"), "{changed}");

    // Nothing secret, nothing from the message.
    nothing_secret(&text, &key);
}

/// The relay's lines carry the same fields, with its own queue id (it has no MTA's).
#[tokio::test]
async fn the_relay_logs_the_same_fields() {
    let (a, registry, writer) = chain().await;
    let sink = Sink::start().await;
    let dir = TempDir::new("logs-relay");
    let base = format!(
        "{}[store]\npath = \"{}\"\n[log]\nformat = \"json\"\n",
        chain_toml(&a.endpoint(), registry, writer),
        dir.0.join("state.sqlite").display()
    );
    // b.example's relay (inbound) in front of the sink; a.example's (outbound) in front of it.
    let in_cfg = dir.0.join("in.toml");
    std::fs::write(
        &in_cfg,
        format!("{base}[relay]\nnext_hop = \"{}\"\n", sink.addr),
    )
    .unwrap();
    let in_log = dir.0.join("in.log");
    let inbound = spawn(&in_cfg, &["relay", "--listen", "127.0.0.1:0"], "", &in_log);
    let in_addr = listening(&wait_for(&in_log, "listening on "), "listening on ");
    let out_cfg = dir.0.join("out.toml");
    std::fs::write(
        &out_cfg,
        format!("{base}[relay]\nnext_hop = \"{in_addr}\"\noutbound = true\n"),
    )
    .unwrap();
    let key = key_hex(&a, 0);
    let out_log = dir.0.join("out.log");
    let outbound = spawn(
        &out_cfg,
        &["relay", "--listen", "127.0.0.1:0"],
        &key,
        &out_log,
    );
    let out_addr = listening(&wait_for(&out_log, "listening on "), "listening on ");

    let r = deliver(
        out_addr,
        "alice@a.example",
        &["bob@b.example"],
        message().as_bytes(),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(sink.got().len(), 1);

    let (out_text, out_lines) = stop(outbound, &out_log);
    let (in_text, in_lines) = stop(inbound, &in_log);
    let (o, i) = (mails(&out_lines), mails(&in_lines));
    assert_eq!((o.len(), i.len()), (1, 1), "{out_text}\n{in_text}");
    let (o, i) = (o[0], i[0]);
    for l in [o, i] {
        let q = l["queue_id"].as_str().unwrap();
        assert!(q.starts_with('R') && q.len() > 4, "{l}");
        assert_eq!(l["writer"], format!("{writer:#x}").as_str(), "{l}");
        assert_eq!(l["rcpts"], 1);
    }
    assert_eq!(o["direction"], "outbound");
    assert_eq!(o["verdict"], "stamped");
    assert_eq!(i["direction"], "inbound");
    assert_eq!(i["verdict"], "wanted");
    assert_eq!(i["token"], o["token"]);
    assert_eq!(i["tx"], o["tx"]);
    assert_eq!(i["differed"], "");
    nothing_secret(&out_text, &key);
    nothing_secret(&in_text, &key);
}

/// A config mistake is still said clearly: in the format the file asks for (a JSON line at
/// `ERROR` naming the file and key), or as text when `[log]` itself is wrong.
#[test]
fn a_config_mistake_is_reported_in_the_chosen_format() {
    let dir = TempDir::new("logs-config");
    let cfg = dir.0.join("m.toml");
    let p = cfg.display().to_string();
    std::fs::write(&cfg, "[log]\nformat = \"json\"\n[chain]\nrpc = 1\n").unwrap();
    let out = crate::harness::mailstamp(
        &["--config", &p, "milter", "--listen", "inet:127.0.0.1:0"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert_eq!(lines[0]["level"], "ERROR");
    let msg = lines[0]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("mailstamp: {p}: chain.rpc: unknown field `rpc`")),
        "{msg}"
    );
    std::fs::write(&cfg, "[log]\nformat = \"xml\"\n").unwrap();
    let out = crate::harness::mailstamp(&["--config", &p, "verify"], &[], Some(b""));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!(
            "mailstamp: {p}: log.format: unknown variant `xml`"
        )),
        "{err}"
    );
}
