// SPDX-License-Identifier: GPL-3.0-or-later
//! The `mailstamp` binary end to end against anvil: deploy, stamp (stdin and files), verify
//! (table, JSON, exit status), audit, and the errors a user sees.

use crate::harness::{
    TempDir, anvil, corpus, key_hex, mailstamp, signer, tamper_body, trust_config_toml,
};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn deploy_stamp_verify_audit_through_the_binary() {
    let a = anvil();
    let url = a.endpoint();
    let key = key_hex(&a, 0);
    let env = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
    ];

    let o = mailstamp(&["deploy", "--json"], &env, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let d: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let registry = d["address"].as_str().unwrap().to_owned();
    // The key never shows up in anything we print.
    assert!(!stdout(&o).contains(&key[2..]) && !stderr(&o).contains(&key[2..]));

    // The corpus domains publish no writer records: the operator pins our writer for them in
    // the trust map, and DNS points at a closed port so nothing leaves the machine.
    let dir = TempDir::new("cli");
    let config = dir.0.join("mailstamp.toml");
    let writer = signer(&a, 0).address();
    let toml = trust_config_toml(writer);
    std::fs::write(&config, toml).unwrap();
    let env = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
        ("MAILSTAMP_REGISTRY", registry.as_str()),
        ("MAILSTAMP_CONFIG", config.to_str().unwrap()),
    ];

    // Files mode.
    let (inbox, out) = (dir.0.join("in"), dir.0.join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    let msgs: Vec<_> = corpus().into_iter().step_by(997).take(4).collect();
    let mut files = Vec::new();
    for (i, (_, raw)) in msgs.iter().enumerate() {
        let p = inbox.join(format!("m{i}.eml"));
        std::fs::write(&p, raw).unwrap();
        files.push(p.to_string_lossy().into_owned());
    }
    let mut args = vec![
        "stamp",
        "--rcpt",
        "bob@b.example",
        "--json",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(files.iter().map(String::as_str));
    let o = mailstamp(&args, &env, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 4);

    let o = mailstamp(
        &[
            "verify",
            "--rcpt",
            "bob@b.example",
            "--json",
            out.to_str().unwrap(),
        ],
        &env,
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    for line in stdout(&o).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["verdict"], "wanted", "{line}");
        assert_eq!(v["score"], 1.0);
        for k in ["file", "token", "writer", "tx", "block", "components"] {
            assert!(!v[k].is_null(), "{k} missing in {line}");
        }
        assert!(
            v["components"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["match"] == "match")
        );
    }

    // Stdin mode, then tamper, replay, strip, garble: each has its verdict and exit status.
    let (_, raw) = &msgs[1];
    let o = mailstamp(&["stamp", "--rcpt", "bob@b.example"], &env, Some(raw));
    assert!(o.status.success(), "{}", stderr(&o));
    let stamped = o.stdout.clone();
    // The default stamp.components include from.name: a version-2 stamp.
    assert!(stamped.starts_with(b"Mail-Stamp: v=2;"));
    assert!(stderr(&o).contains("tx 0x"));

    let verdict = |bytes: &[u8], rcpt: &str| {
        let o = mailstamp(&["verify", "--rcpt", rcpt, "--json"], &env, Some(bytes));
        let v: serde_json::Value =
            serde_json::from_str(stdout(&o).trim()).unwrap_or_else(|_| panic!("{}", stderr(&o)));
        (v["verdict"].as_str().unwrap().to_owned(), o.status.code())
    };
    assert_eq!(
        verdict(&stamped, "bob@b.example"),
        ("wanted".into(), Some(0))
    );
    // Sent to someone it was not stamped for: a replay or a forward without an agent — the
    // stamp is sound and its writer authorised, so it does not apply here (docs/PROTOCOL.md
    // §5c): `inapplicable`, exit 15, neither wanted nor spam.
    assert_eq!(
        verdict(&stamped, "eve@b.example"),
        ("inapplicable".into(), Some(15))
    );
    let t = tamper_body(&stamped).unwrap();
    let (v, code) = verdict(&t, "bob@b.example");
    assert_ne!(v, "wanted");
    assert!(matches!(code, Some(10) | Some(13)));
    assert_eq!(
        verdict(raw, "bob@b.example"),
        ("unstamped".into(), Some(11))
    );
    let garbled = String::from_utf8_lossy(&stamped).replacen("v=2;", "v=2; v=2;", 1);
    assert_eq!(
        verdict(garbled.as_bytes(), "bob@b.example"),
        ("invalid".into(), Some(12))
    );

    // The table names the verdicts.
    let o = mailstamp(
        &["verify", "--rcpt", "bob@b.example", out.to_str().unwrap()],
        &env,
        None,
    );
    assert!(
        stdout(&o).contains("VERDICT") && stdout(&o).matches("wanted").count() == 4,
        "{}",
        stdout(&o)
    );

    // Audit by file and by token.
    let f = dir.0.join("stamped.eml");
    std::fs::write(&f, &stamped).unwrap();
    let o = mailstamp(&["audit", "--json", f.to_str().unwrap()], &env, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["header_matches"], true);
    assert_eq!(v["confirmed"], true);
    let token = v["token"].as_str().unwrap().to_owned();
    let o = mailstamp(&["audit", &token], &env, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o).to_lowercase();
    assert!(
        text.contains("tx ") && text.contains(&registry.to_lowercase()),
        "{text}"
    );
}

/// A well-formed stamped message (no chain needed to build it).
fn stamped_sample() -> Vec<u8> {
    let raw = b"From: a@a.example\nTo: b@b.example\nSubject: x\n\nhi\n";
    let msg = mailstamp_core::parse(raw).unwrap();
    let chain = mailstamp_core::ChainRef {
        chain_id: 31337,
        registry: [1; 20],
        writer: [2; 20],
    };
    let p = mailstamp_core::prepare(
        &msg,
        &Default::default(),
        [3; 16],
        &chain,
        &Default::default(),
    )
    .unwrap();
    mailstamp_core::insert_header(raw, &p.header)
}

#[test]
fn errors_say_what_is_wrong_and_what_to_do() {
    let none: [(&str, &str); 0] = [];
    let o = mailstamp(&["verify"], &none, Some(b"Subject: x\n\nhi\n"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("MAILSTAMP_REGISTRY"), "{}", stderr(&o));

    let o = mailstamp(
        &[
            "stamp",
            "--registry",
            "0x0000000000000000000000000000000000000001",
        ],
        &none,
        Some(b""),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("MAILSTAMP_PRIVATE_KEY"),
        "{}",
        stderr(&o)
    );

    let o = mailstamp(&["verify", "--registry", "nope"], &none, None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--registry"), "{}", stderr(&o));

    let dir = TempDir::new("cfg");
    let cfg = dir.0.join("bad.toml");
    std::fs::write(&cfg, "[chain]\nrpc = 1\n").unwrap();
    let o = mailstamp(&["--config", cfg.to_str().unwrap(), "verify"], &none, None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("bad.toml") && stderr(&o).contains("rpc"),
        "{}",
        stderr(&o)
    );

    // A typo fails a daemon's start-up before it listens, naming the file and the key (it used
    // to surface only at the first message: `[chain]` was checked at the first connect).
    for (text, key) in [
        ("[chain]\nfee_bump_percent = 5\n", "chain.fee_bump_percent"),
        ("[chain]\nrpc_url = \"localhost:8545\"\n", "chain.rpc_url"),
        ("[milter]\nauthserv_id = \"mx b\"\n", "milter.authserv_id"),
        ("[relay]\nnext_hop = \"nohost\"\n", "relay.next_hop"),
        ("[stamp]\nmode = \"bulk\"\n", "stamp.mode"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        for verb in [
            &["milter", "--listen", "inet:127.0.0.1:0"][..],
            &["relay", "--listen", "127.0.0.1:0"],
        ] {
            let mut args = vec!["--config", cfg.to_str().unwrap()];
            args.extend_from_slice(verb);
            let o = mailstamp(&args, &none, None);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{verb:?} {text}: {err}");
            assert!(
                err.contains(&format!("{}: {key}: ", cfg.display())) && !err.contains("listening"),
                "{verb:?} {text}: {err}"
            );
        }
    }

    // Dead chain: verify says temperror per message (exit 14), it does not crash.
    let dead = [
        "verify",
        "--rpc-url",
        "http://127.0.0.1:9",
        "--registry",
        "0x0000000000000000000000000000000000000001",
    ];
    let o = mailstamp(&dead, &none, Some(stamped_sample().as_slice()));
    assert_eq!(o.status.code(), Some(14), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("temperror"));
    // …while an unstamped message needs no chain to be judged.
    let o = mailstamp(&dead, &none, Some(b"From: a@b.example\nSubject: x\n\nhi\n"));
    assert_eq!(o.status.code(), Some(11), "{}{}", stdout(&o), stderr(&o));

    for verb in ["deploy", "stamp", "verify", "audit"] {
        let o = mailstamp(&[verb, "--help"], &none, None);
        assert!(o.status.success() && stdout(&o).contains("Usage"), "{verb}");
    }
}

#[test]
fn the_writer_key_can_come_from_an_encrypted_keystore() {
    let a = anvil();
    let dir = TempDir::new("keystore");
    let key = key_hex(&a, 4);
    let st = std::process::Command::new(crate::harness::tool("cast"))
        .args(["wallet", "import", "writer", "--keystore-dir"])
        .arg(&dir.0)
        .args(["--private-key", &key, "--unsafe-password", "correct horse"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let ks = dir.0.join("writer");
    let url = a.endpoint();
    let env = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_KEYSTORE_PASSWORD", "correct horse"),
    ];
    let o = mailstamp(
        &["deploy", "--json", "--keystore", ks.to_str().unwrap()],
        &env,
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let wrong = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_KEYSTORE_PASSWORD", "wrong"),
    ];
    let o = mailstamp(
        &["deploy", "--keystore", ks.to_str().unwrap()],
        &wrong,
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot open keystore"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("correct horse"));

    let nopw = [("MAILSTAMP_RPC_URL", url.as_str())];
    let o = mailstamp(&["deploy", "--keystore", ks.to_str().unwrap()], &nopw, None);
    assert!(
        stderr(&o).contains("MAILSTAMP_KEYSTORE_PASSWORD"),
        "{}",
        stderr(&o)
    );
}
