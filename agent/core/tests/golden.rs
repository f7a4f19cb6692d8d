// SPDX-License-Identifier: GPL-3.0-or-later
//! Golden files: the decomposition of every corpus and golden fixture, rendered as JSON and
//! compared with `fixtures/golden/<name>.json`, under LF and under CRLF.
//!
//! A mismatch writes `<name>.json.failed` next to the expected file (git-ignored) so the two
//! can be diffed; `MAILSTAMP_BLESS=1 cargo test -p mailstamp-core --test golden` rewrites the
//! expected files instead. Review a blessed diff like code: it is a change of protocol.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture_dir, to_crlf};
use mailstamp_core::component::{Value, decompose};
use mailstamp_core::digest::keccak256;
use mailstamp_core::{Envelope, Family, Selection, parse};
use serde_json::json;

/// Longest line excerpt shown for a text component (characters).
const EXCERPT: usize = 72;

/// `.eml` files of one fixture folder, sorted, as (stem, path). An absent folder is empty.
fn emls(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    v.sort();
    v
}

fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(EXCERPT).collect();
    if s.chars().count() > EXCERPT {
        out.push('…');
    }
    out
}

/// One component's value as JSON: one-line values as text; body parts and attachments by
/// digest, with enough beside it (line count, first and last line, file name) to review.
fn render_value(family: Family, v: &Value) -> serde_json::Value {
    let bytes = v.canonical_bytes();
    let keccak = hex::encode(keccak256(&bytes));
    match (family, v) {
        (_, Value::Lines(lines)) => {
            let n = lines.len();
            json!({
                "keccak256": keccak,
                "lines": n,
                "first": lines.first().map(excerpt),
                "last": lines.last().filter(|_| n > 1).map(excerpt),
            })
        }
        (Family::Attachment, Value::Bytes(b)) => {
            // name NUL keccak256(content)
            let cut = b.iter().position(|&x| x == 0).unwrap_or(b.len());
            json!({
                "keccak256": keccak,
                "name": String::from_utf8_lossy(&b[..cut]),
                "content": hex::encode(b.get(cut + 1..).unwrap_or_default()),
            })
        }
        (Family::Html, Value::Bytes(b)) => json!({
            "keccak256": keccak,
            "lines": b.split(|&x| x == b'\n').count(),
            "bytes": b.len(),
        }),
        (_, Value::Bytes(b)) => json!(String::from_utf8_lossy(b)),
    }
}

/// The decomposition as JSON, one component per line, in header order.
fn render(raw: &[u8]) -> String {
    let Some(msg) = parse(raw) else {
        return "null\n".to_owned();
    };
    let d = decompose(&msg, &Envelope::default(), &Selection::default());
    let mut out = String::from("{\n");
    for (i, (name, v)) in d.values.iter().enumerate() {
        let key = serde_json::to_string(&name.to_string()).unwrap();
        let val = serde_json::to_string(&render_value(name.family, v)).unwrap();
        let comma = if i + 1 < d.values.len() { "," } else { "" };
        out.push_str(&format!("  {key}: {val}{comma}\n"));
    }
    out.push_str("}\n");
    out
}

#[test]
fn decompositions_match_the_golden_files() {
    let golden = fixture_dir("golden");
    let bless = std::env::var_os("MAILSTAMP_BLESS").is_some_and(|v| v == "1");
    let mut inputs = emls(&fixture_dir("corpus"));
    inputs.extend(emls(&golden));

    let mut failed = Vec::new();
    for (name, path) in &inputs {
        let raw = std::fs::read(path).unwrap();
        let lf: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
        let crlf = to_crlf(&lf);
        let (got_lf, got_crlf) = (render(&lf), render(&crlf));
        let expected_path = golden.join(format!("{name}.json"));
        let failed_path = golden.join(format!("{name}.json.failed"));
        // LF and CRLF must agree whatever the expected file says; blessing cannot hide that.
        if got_lf != got_crlf {
            std::fs::write(&failed_path, format!("{got_lf}\n// CRLF:\n{got_crlf}")).unwrap();
            failed.push(format!("{name} (LF and CRLF differ)"));
            continue;
        }
        if bless {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(&expected_path, &got_lf).unwrap();
            let _ = std::fs::remove_file(&failed_path);
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(want) if want == got_lf => {
                let _ = std::fs::remove_file(&failed_path);
            }
            Ok(_) => {
                std::fs::write(&failed_path, &got_lf).unwrap();
                failed.push(name.clone());
            }
            Err(_) => {
                std::fs::write(&failed_path, &got_lf).unwrap();
                failed.push(format!("{name} (no expected file)"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} golden mismatch(es), see fixtures/golden/*.json.failed \
         (MAILSTAMP_BLESS=1 to accept): {}",
        failed.len(),
        failed.join(", ")
    );
    assert!(inputs.len() >= 30, "only {} fixtures ran", inputs.len());
}
