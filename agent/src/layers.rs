// SPDX-License-Identifier: GPL-3.0-or-later
//! The layer table of `lib.rs`, enforced: every `crate::…` path in `src/**/*.rs` (the library's
//! modules; `main.rs` and `cli/` are the binary, above all of them) must name a module of a
//! row above the file's own, or a module of its own tree (`super::`, its own submodules). A
//! back-edge — or a reference between two modules of one row — fails the test with the file,
//! the line and the rule broken; so there can be no circle of imports.

use std::collections::BTreeMap;
use std::path::Path;

/// The rows of `lib.rs`, top first. A module may use the modules of earlier rows only.
const LAYERS: &[&[&str]] = &[
    &["error", "util", "metrics", "config"],
    &["store", "chain", "dns", "keys", "maildir", "maps"],
    &["auth"],
    &["people", "stamping", "verifying", "onboard"],
    &["inbound"],
    &["session", "recover", "doctor"],
    &["milter", "relay", "audit"],
];

/// Modules of row 0 that the others of row 0 may use (a leaf each: `error` uses nothing,
/// `util` only `error`, `metrics` those two, `config` all three).
const ROW0_ORDER: &[&str] = &["error", "util", "metrics", "config"];

/// A reference against the table.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BackEdge {
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) from: String,
    pub(crate) to: String,
}

fn row_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|r| r.contains(&module))
}

/// Whether `from` may use `to` under the table.
fn allowed(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    match (row_of(from), row_of(to)) {
        (Some(0), Some(0)) => {
            let pos = |m| ROW0_ORDER.iter().position(|x| *x == m);
            pos(to) < pos(from)
        }
        (Some(f), Some(t)) => t < f,
        _ => false,
    }
}

/// The top-level module a file of `src/` belongs to (`session/message.rs` → `session`);
/// `None` for the crate root, the binary and this test.
fn module_of(rel: &str) -> Option<String> {
    let first = rel.split('/').next()?;
    let m = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(m, "lib" | "main" | "cli" | "layers")).then(|| m.to_owned())
}

/// The code of a file without its `#[cfg(test)]` modules (tests may reach anywhere) and
/// without comments (doc links are not imports).
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to the line that closes it at its indentation.
            let indent = line.len() - t.len();
            if let Some((_, next)) = lines.peek()
                && next.trim_end().ends_with(';')
            {
                lines.next();
                continue;
            }
            for (_, l) in lines.by_ref() {
                if l.len() - l.trim_start().len() == indent && l.trim() == "}" {
                    break;
                }
            }
            continue;
        }
        let code = match t.find("//") {
            Some(c) => &t[..c],
            None => t,
        };
        out.push((i + 1, code.to_owned()));
    }
    out
}

/// Every `crate::module` a piece of code names, including inside `use crate::{a, b::c}`.
fn crate_refs(code: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        // `$crate::` in a macro is the crate too; `mailstamp_core::` is not ours.
        let before = &rest[..i];
        let foreign = before.ends_with(|c: char| c.is_alphanumeric() || c == '_');
        if !foreign {
            if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for part in group[..end].split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        refs.push(name);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.push(name);
                }
            }
        }
        rest = after;
    }
    refs
}

/// The references against the table in a tree given as (path relative to `src/`, text).
pub(crate) fn back_edges(files: &BTreeMap<String, String>) -> Vec<BackEdge> {
    let mut out = Vec::new();
    for (rel, text) in files {
        let Some(from) = module_of(rel) else {
            continue;
        };
        for (line, code) in code_lines(text) {
            for to in crate_refs(&code) {
                // The crate root re-exports `error`'s `Error` and `Result`.
                let to = match to.as_str() {
                    "Error" | "Result" => "error".to_owned(),
                    _ => to,
                };
                if !allowed(&from, &to) {
                    out.push(BackEdge {
                        file: rel.clone(),
                        line,
                        from: from.clone(),
                        to,
                    });
                }
            }
        }
    }
    out
}

fn read_tree(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            read_tree(&p, base, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(rel, std::fs::read_to_string(&p).unwrap());
        }
    }
}

#[test]
fn every_import_follows_the_layer_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_tree(&src, &src, &mut files);
    // Every module of the library is in the table (a new module must be placed).
    for rel in files.keys() {
        if let Some(m) = module_of(rel) {
            assert!(
                row_of(&m).is_some(),
                "{rel}: module `{m}` is not in the layer table"
            );
        }
    }
    // anyhow is the binary's and the tests'; the library says what failed with its own Error.
    for (rel, text) in &files {
        if module_of(rel).is_some() {
            for (line, code) in code_lines(text) {
                assert!(
                    !code.contains("anyhow"),
                    "src/{rel}:{line}: anyhow in the library"
                );
            }
        }
    }
    let bad = back_edges(&files);
    assert!(
        bad.is_empty(),
        "imports against the layer table (lib.rs):\n{}",
        bad.iter()
            .map(|b| format!("  src/{}:{}: {} uses {}", b.file, b.line, b.from, b.to))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_fails_on_a_back_edge_a_cycle_and_a_sibling() {
    let tree = |files: &[(&str, &str)]| {
        files
            .iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    // Fine: downward only, tests and comments ignored.
    let ok = tree(&[
        (
            "session/mod.rs",
            "use crate::{config::Config, store::Store};\n",
        ),
        (
            "chain/mod.rs",
            "use crate::config::ChainConfig; // not crate::session\n",
        ),
        (
            "store/mod.rs",
            "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::session::Daemon;\n}\n",
        ),
    ]);
    assert_eq!(back_edges(&ok), []);
    // A back-edge: infrastructure reaching up into the session layer.
    let up = tree(&[(
        "chain/mod.rs",
        "fn f() { crate::session::message::stamp(); }\n",
    )]);
    assert_eq!(
        back_edges(&up),
        [BackEdge {
            file: "chain/mod.rs".into(),
            line: 1,
            from: "chain".into(),
            to: "session".into(),
        }]
    );
    // A cycle between two layers: one of its two edges is always a back-edge.
    let cycle = tree(&[
        ("inbound.rs", "use crate::people::allowlist;\n"),
        (
            "people/allowlist.rs",
            "use crate::{inbound::FromIdentity, store::Store};\n",
        ),
    ]);
    let found = back_edges(&cycle);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].from.as_str(), found[0].to.as_str()),
        ("people", "inbound")
    );
    // Two modules of one row may not use each other (either way round would be a cycle).
    let sibling = tree(&[("milter.rs", "use crate::relay::bind;\n")]);
    assert_eq!(back_edges(&sibling).len(), 1);
    // In row 0, config may use util and error, but util may not use config.
    let row0 = tree(&[
        (
            "config/mod.rs",
            "use crate::util::Net;\nuse crate::error::Error;\n",
        ),
        ("util/mod.rs", "use crate::config::Config;\n"),
    ]);
    assert_eq!(back_edges(&row0).len(), 1);
}
