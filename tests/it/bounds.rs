// SPDX-License-Identifier: GPL-3.0-or-later
//! Bounds through the binary (issue 12 item 5): `mailstamp stamp` and `verify` of a message
//! with 10,000 parts, nesting 1,000 deep, a 1 MB header section; 10,000 recipients refused
//! with a reason; a 64 KiB `Mail-Stamp:` and a message of minimal parts beyond
//! `MAX_DELIMITER_LINES` judged `invalid` with a reason, with no chain needed.

#[path = "../../agent/core/tests/common/bounds.rs"]
mod inputs;

use crate::harness::{
    TempDir, anvil, deploy_with_binary, key_hex, mailstamp, signer, trust_config_toml,
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn oversized_messages_get_a_clear_outcome_through_the_binary() {
    let a = anvil();
    let url = a.endpoint();
    let key = key_hex(&a, 0);
    let registry = deploy_with_binary(&a);
    let dir = TempDir::new("bounds");
    let config = dir.0.join("mailstamp.toml");
    // The generated messages are From alice@a.example: the trust map lists our writer.
    let writer = signer(&a, 0).address();
    let toml = format!(
        "{}\"a.example\" = [\"{writer:#x}\"]\n",
        trust_config_toml(writer)
    );
    std::fs::write(&config, &toml).unwrap();
    let env = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
        ("MAILSTAMP_REGISTRY", registry.as_str()),
        ("MAILSTAMP_CONFIG", config.to_str().unwrap()),
    ];

    let verdict = |raw: &[u8]| {
        let o = mailstamp(
            &["verify", "--rcpt", "bob@b.example", "--json"],
            &env,
            Some(raw),
        );
        let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim())
            .unwrap_or_else(|_| panic!("{}{}", text(&o.stdout), text(&o.stderr)));
        (v, o.status.code())
    };
    for (what, raw) in [
        ("10,000 parts", inputs::many_parts(10_000)),
        ("nesting 1,000 deep", inputs::deep_nesting(1_000)),
        ("1 MB of header fields", inputs::big_header(1 << 20)),
        ("a 1 MB Subject", inputs::big_subject(1 << 20)),
    ] {
        let o = mailstamp(&["stamp", "--rcpt", "bob@b.example"], &env, Some(&raw));
        assert!(o.status.success(), "{what}: {}", text(&o.stderr));
        assert!(o.stdout.starts_with(b"Mail-Stamp: v=2;"), "{what}");
        let (v, code) = verdict(&o.stdout);
        assert_eq!(
            (v["verdict"].as_str(), code),
            (Some("wanted"), Some(0)),
            "{what}: {v}"
        );
    }

    let raw = inputs::many_rcpts(10_000);
    let o = mailstamp(&["stamp"], &env, Some(&raw));
    assert!(!o.status.success(), "{what}", what = "10,000 recipients");
    assert!(
        text(&o.stderr).contains("10000 recipients, more than the 512"),
        "{}",
        text(&o.stderr)
    );

    let (v, code) = verdict(&inputs::big_stamp(64 << 10));
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("invalid"), Some(12)),
        "{v}"
    );
    assert!(
        v["reason"].as_str().unwrap().contains("more than the 8192"),
        "{v}"
    );

    let many = inputs::minimal_parts(mailstamp_core::MAX_DELIMITER_LINES);
    let (v, code) = verdict(&many);
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("invalid"), Some(12)),
        "{v}"
    );
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("lines starting with"),
        "{v}"
    );
    let o = mailstamp(&["stamp", "--rcpt", "bob@b.example"], &env, Some(&many));
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("lines starting with"),
        "{}",
        text(&o.stderr)
    );
}
