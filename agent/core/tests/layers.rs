// SPDX-License-Identifier: GPL-3.0-or-later
//! Source rules of the core crate, checked on its own source text: every module imports only
//! what its row of the layer table lets it (the table in `src/lib.rs`, copied below as data and
//! compared), so no circle of `crate::` imports can form; and no function is longer than
//! [`MAX_FN_LINES`]. Test modules (`#[cfg(test)] mod tests { … }`), comments and string and
//! character literals are not looked at.
//!
//! The reader is a small lexer, not a Rust parser: it knows comments, string, raw-string and
//! character literals and matches braces, which is all these rules need on rustfmt-formatted
//! code. Module files are `src/<module>.rs`; a module directory is reported, not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One row of the layer table.
struct Row {
    module: &'static str,
    layer: u8,
    may_import: &'static [&'static str],
}

/// The layer table of `src/lib.rs`, as data.
const LAYERS: &[Row] = &[
    Row {
        module: "canon",
        layer: 0,
        may_import: &[],
    },
    Row {
        module: "hex0x",
        layer: 0,
        may_import: &[],
    },
    Row {
        module: "name",
        layer: 0,
        may_import: &[],
    },
    Row {
        module: "digest",
        layer: 1,
        may_import: &["name"],
    },
    Row {
        module: "writers",
        layer: 1,
        may_import: &["hex0x"],
    },
    Row {
        module: "merkle",
        layer: 2,
        may_import: &["digest"],
    },
    Row {
        module: "component",
        layer: 3,
        may_import: &["canon", "digest", "name"],
    },
    Row {
        module: "header",
        layer: 3,
        may_import: &["digest", "hex0x", "merkle", "name"],
    },
    Row {
        module: "stamp",
        layer: 4,
        may_import: &["canon", "component", "digest", "header", "merkle", "name"],
    },
    Row {
        module: "verify",
        layer: 5,
        may_import: &[
            "canon",
            "component",
            "digest",
            "header",
            "hex0x",
            "merkle",
            "name",
            "stamp",
            "writers",
        ],
    },
    Row {
        module: "hops",
        layer: 6,
        may_import: &[
            "canon",
            "component",
            "digest",
            "header",
            "hex0x",
            "name",
            "stamp",
            "verify",
            "writers",
        ],
    },
];

/// Longest function allowed outside test modules, from its `fn` line to its closing brace.
const MAX_FN_LINES: usize = 100;

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `src` with comments and the insides of string and character literals replaced by spaces
/// (line breaks kept, so line numbers stay), lifetimes left alone.
fn blank(src: &str) -> Vec<char> {
    let c: Vec<char> = src.chars().collect();
    let mut o = c.clone();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let wipe = |o: &mut Vec<char>, from: usize, to: usize| {
        for x in &mut o[from..to.min(c.len())] {
            if *x != '\n' {
                *x = ' ';
            }
        }
    };
    let mut i = 0;
    while i < c.len() {
        let prev = if i == 0 { ' ' } else { c[i - 1] };
        let start = i;
        if at(i) == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= c.len() {
                    break;
                } else {
                    i += 1;
                }
            }
        } else if at(i) == 'r'
            && (!is_ident(prev) || (prev == 'b' && (i < 2 || !is_ident(c[i - 2]))))
            && matches!(at(i + 1), '"' | '#')
        {
            let hashes = c[i + 1..].iter().take_while(|&&x| x == '#').count();
            if at(i + 1 + hashes) != '"' {
                i += 1;
                continue;
            }
            i += 2 + hashes;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#')) {
                i += 1;
            }
            i += 1 + hashes;
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if at(i) == '\'' && at(i + 1) == '\\' {
            // An escaped character: `'\''`, `'\n'`, `'\u{…}'`.
            i += 3;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if at(i) == '\'' && at(i + 2) == '\'' {
            i += 3;
        } else {
            i += 1;
            continue;
        }
        wipe(&mut o, start, i);
    }
    o
}

/// The index just past the brace that closes the one at `open`.
fn matching_brace(c: &[char], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, &x) in c.iter().enumerate().skip(open) {
        match x {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    c.len()
}

fn starts_with(c: &[char], i: usize, s: &str) -> bool {
    s.chars().enumerate().all(|(k, x)| c.get(i + k) == Some(&x))
}

fn skip_ws(c: &[char], mut i: usize) -> usize {
    while c.get(i).is_some_and(|x| x.is_whitespace()) {
        i += 1;
    }
    i
}

/// Blanked source with every `#[cfg(test)] mod tests { … }` blanked too.
fn code(src: &str) -> Vec<char> {
    let mut c = blank(src);
    let mut i = 0;
    while i < c.len() {
        if starts_with(&c, i, "#[cfg(test)]") {
            let m = skip_ws(&c, i + "#[cfg(test)]".len());
            if starts_with(&c, m, "mod tests") {
                let open = skip_ws(&c, m + "mod tests".len());
                if c.get(open) == Some(&'{') {
                    let end = matching_brace(&c, open);
                    for x in &mut c[i..end] {
                        if *x != '\n' {
                            *x = ' ';
                        }
                    }
                    i = end;
                    continue;
                }
            }
        }
        i += 1;
    }
    c
}

fn line_of(c: &[char], i: usize) -> usize {
    1 + c[..i].iter().filter(|&&x| x == '\n').count()
}

fn ident_at(c: &[char], i: usize) -> String {
    c[i.min(c.len())..]
        .iter()
        .take_while(|&&x| is_ident(x))
        .collect()
}

/// Every `crate::<first segment>` in the code of `src`, with its line: inline paths, `use`
/// lines and each item of a `use crate::{a, b::C}` group.
fn crate_refs(src: &str) -> Vec<(usize, String)> {
    let c = code(src);
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let prev = if i == 0 { ' ' } else { c[i - 1] };
        if !starts_with(&c, i, "crate::") || is_ident(prev) || matches!(prev, '$' | ':') {
            i += 1;
            continue;
        }
        let line = line_of(&c, i);
        let j = skip_ws(&c, i + "crate::".len());
        if c.get(j) == Some(&'{') {
            let end = matching_brace(&c, j);
            let (mut depth, mut item_start) = (0usize, j + 1);
            for k in j + 1..end {
                match c[k] {
                    '{' => depth += 1,
                    '}' if depth > 0 => depth -= 1,
                    ',' | '}' if depth == 0 => {
                        let name = ident_at(&c, skip_ws(&c, item_start));
                        if !name.is_empty() && name != "self" {
                            out.push((line, name));
                        }
                        item_start = k + 1;
                    }
                    _ => {}
                }
            }
            i = end;
        } else {
            out.push((line, ident_at(&c, j)));
            i = j;
        }
    }
    out
}

/// Every circle of module edges, each once, as `a -> b -> a` starting at its smallest module.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    fn walk(
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        found: &mut BTreeSet<String>,
    ) {
        if let Some(k) = path.iter().position(|m| m == at) {
            let mut circle = path[k..].to_vec();
            let min = (0..circle.len()).min_by_key(|&i| &circle[i]).unwrap_or(0);
            circle.rotate_left(min);
            circle.push(circle[0].clone());
            found.insert(circle.join(" -> "));
            return;
        }
        path.push(at.to_owned());
        for next in edges.get(at).into_iter().flatten() {
            walk(next, edges, path, found);
        }
        path.pop();
    }
    let mut found = BTreeSet::new();
    for start in edges.keys() {
        walk(start, edges, &mut Vec::new(), &mut found);
    }
    found
}

/// Everything wrong with `sources` (module name → source text) under `table`, and with the
/// table itself; empty when all is well.
fn check(table: &[Row], sources: &BTreeMap<String, String>) -> Vec<String> {
    let row = |m: &str| table.iter().find(|r| r.module == m);
    let mut problems = Vec::new();
    for r in table {
        for &m in r.may_import {
            match row(m) {
                None => problems.push(format!("table: {} may import unknown `{m}`", r.module)),
                Some(t) if t.layer >= r.layer => problems.push(format!(
                    "table: {} (layer {}) may import {m} (layer {}), not a lower layer",
                    r.module, r.layer, t.layer
                )),
                Some(_) => {}
            }
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, src) in sources {
        let Some(from) = row(module) else {
            problems.push(format!("src/{module}.rs: not in the layer table"));
            continue;
        };
        for (line, target) in crate_refs(src) {
            let at = format!("src/{module}.rs:{line}: crate::{target}");
            if target == *module {
                continue;
            }
            edges
                .entry(module.clone())
                .or_default()
                .insert(target.clone());
            match row(&target) {
                None => problems.push(format!(
                    "{at} is not a module: import it from the module that owns it"
                )),
                Some(to) if to.layer >= from.layer => problems.push(format!(
                    "{at}: back-edge from {module} (layer {}) to {target} (layer {})",
                    from.layer, to.layer
                )),
                Some(_) if !from.may_import.contains(&target.as_str()) => problems.push(format!(
                    "{at}: {module} -> {target} is not in the layer table"
                )),
                Some(_) => {}
            }
        }
    }
    problems.extend(cycles(&edges).into_iter().map(|c| format!("cycle: {c}")));
    problems
}

/// (function name, first line, length in lines) of every function in the code of `src`.
fn fn_lengths(src: &str) -> Vec<(String, usize, usize)> {
    let c = code(src);
    let mut out = Vec::new();
    for i in 0..c.len() {
        let prev = if i == 0 { ' ' } else { c[i - 1] };
        if !starts_with(&c, i, "fn")
            || is_ident(prev)
            || !c.get(i + 2).is_some_and(|x| x.is_whitespace())
        {
            continue;
        }
        let name_at = skip_ws(&c, i + 2);
        let name = ident_at(&c, name_at);
        if name.is_empty() {
            continue;
        }
        let Some(open) = (name_at..c.len()).find(|&k| matches!(c[k], '{' | ';')) else {
            continue;
        };
        if c[open] == ';' {
            continue;
        }
        let end = matching_brace(&c, open);
        let first = line_of(&c, i);
        out.push((name, first, line_of(&c, end - 1) - first + 1));
    }
    out
}

fn src_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `src/<module>.rs` but `lib.rs`, by module name; a directory under `src/` is a problem.
fn module_sources() -> (BTreeMap<String, String>, Vec<String>) {
    let (mut sources, mut problems) = (BTreeMap::new(), Vec::new());
    for entry in std::fs::read_dir(src_dir()).expect("src/ readable") {
        let path = entry.expect("src/ entry").path();
        if path.is_dir() {
            problems.push(format!(
                "{}: module directories are not checked; extend tests/layers.rs",
                path.display()
            ));
            continue;
        }
        let (Some(stem), Some("rs")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        if stem != "lib" {
            let text = std::fs::read_to_string(&path).expect("module source readable");
            sources.insert(stem.to_owned(), text);
        }
    }
    (sources, problems)
}

#[test]
fn core_modules_import_only_down_the_layer_table() {
    let (sources, mut problems) = module_sources();
    assert_eq!(
        sources.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        LAYERS.iter().map(|r| r.module).collect::<BTreeSet<_>>(),
        "module files and layer table differ"
    );
    problems.extend(check(LAYERS, &sources));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The reader does see imports: the top layer uses the one below it.
    let verify = crate_refs(&sources["verify"]);
    assert!(verify.iter().any(|(_, m)| m == "stamp"), "{verify:?}");
}

#[test]
fn the_table_in_lib_rs_is_the_checked_table() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs readable");
    let mut documented = BTreeMap::new();
    for line in lib.lines().filter_map(|l| l.strip_prefix("//! |")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells[0] == "layer" || cells[0].starts_with('-') {
            continue;
        }
        let imports: BTreeSet<String> = cells[2]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != "—")
            .map(str::to_owned)
            .collect();
        documented.insert(cells[1].to_owned(), (cells[0].to_owned(), imports));
    }
    let data: BTreeMap<String, (String, BTreeSet<String>)> = LAYERS
        .iter()
        .map(|r| {
            let imports = r.may_import.iter().map(|m| m.to_string()).collect();
            (r.module.to_owned(), (r.layer.to_string(), imports))
        })
        .collect();
    assert_eq!(
        documented, data,
        "src/lib.rs table and tests/layers.rs LAYERS differ"
    );
}

#[test]
fn no_function_is_over_the_line_limit() {
    let (mut sources, _) = module_sources();
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs readable");
    sources.insert("lib".to_owned(), lib);
    let too_long: Vec<String> = sources
        .iter()
        .flat_map(|(m, src)| {
            fn_lengths(src)
                .into_iter()
                .filter(|&(_, _, n)| n > MAX_FN_LINES)
                .map(move |(f, line, n)| format!("src/{m}.rs:{line}: fn {f} is {n} lines"))
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "over {MAX_FN_LINES} lines:\n{}",
        too_long.join("\n")
    );
}

// The checker itself, on made-up trees.

fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(m, s)| (m.to_string(), s.to_string()))
        .collect()
}

const ABC: &[Row] = &[
    Row {
        module: "a",
        layer: 0,
        may_import: &[],
    },
    Row {
        module: "b",
        layer: 1,
        may_import: &["a"],
    },
    Row {
        module: "c",
        layer: 2,
        may_import: &["a", "b"],
    },
];

#[test]
fn a_clean_tree_passes() {
    let t = tree(&[
        ("a", "pub fn x() {}\n"),
        ("b", "use crate::a;\n"),
        ("c", "use crate::{a::X, b};\nfn f() { crate::b::y(); }\n"),
    ]);
    assert_eq!(check(ABC, &t), Vec::<String>::new());
}

#[test]
fn the_checker_fails_on_a_back_edge() {
    let t = tree(&[
        ("a", "fn f() -> crate::c::T { todo!() }\n"),
        ("b", "use crate::a;\n"),
        ("c", "\n"),
    ]);
    let p = check(ABC, &t);
    assert!(
        p.iter()
            .any(|x| x.starts_with("src/a.rs:1: crate::c: back-edge from a")),
        "{p:?}"
    );
}

#[test]
fn the_checker_fails_on_a_cycle() {
    let t = tree(&[
        ("a", "use crate::b::B;\n"),
        ("b", "use crate::c;\n"),
        ("c", "use crate::a::A;\n"),
    ]);
    let p = check(ABC, &t);
    assert!(p.contains(&"cycle: a -> b -> c -> a".to_owned()), "{p:?}");
    assert!(p.iter().any(|x| x.contains("back-edge from a")), "{p:?}");
    assert!(p.iter().any(|x| x.contains("back-edge from b")), "{p:?}");
}

#[test]
fn the_checker_refuses_a_table_that_allows_a_circle_and_unknown_paths() {
    let circular = &[
        Row {
            module: "a",
            layer: 0,
            may_import: &["b"],
        },
        Row {
            module: "b",
            layer: 0,
            may_import: &["a"],
        },
    ];
    let p = check(circular, &tree(&[("a", ""), ("b", "")]));
    assert_eq!(p.len(), 2, "{p:?}");
    let p = check(
        ABC,
        &tree(&[("a", ""), ("b", "use crate::Thing;\n"), ("d", "")]),
    );
    assert!(
        p.iter().any(|x| x.contains("crate::Thing is not a module")),
        "{p:?}"
    );
    assert!(
        p.contains(&"src/d.rs: not in the layer table".to_owned()),
        "{p:?}"
    );
}

#[test]
fn comments_literals_and_test_modules_are_not_imports() {
    let src = r##"//! Mentions crate::c in a doc comment.
use crate::{
    a::{X, Y},
    b,
};
/* crate::c, /* nested crate::c */ still a comment */
fn f<'a>(s: &'a str) -> char {
    let _ = "crate::c \" crate::c";
    let _ = r#"crate::c "quoted" crate::c"#;
    let _ = b'{';
    '}'
}
#[cfg(test)]
mod tests {
    use crate::c;
    fn g() { let _ = '{'; }
}
"##;
    let refs: Vec<String> = crate_refs(src).into_iter().map(|(_, m)| m).collect();
    assert_eq!(refs, ["a", "b"]);
    assert_eq!(fn_lengths(src), vec![("f".to_owned(), 7, 6)]);
}

#[test]
fn function_lengths_count_from_fn_to_its_closing_brace() {
    let body = |n: usize| format!("fn long() {{\n{}}}\n", "    x();\n".repeat(n - 2));
    assert_eq!(fn_lengths(&body(MAX_FN_LINES))[0].2, MAX_FN_LINES);
    assert_eq!(fn_lengths(&body(MAX_FN_LINES + 1))[0].2, MAX_FN_LINES + 1);
    let decl = "trait T {\n    fn a(&self);\n    fn b(&self) {}\n}\n";
    assert_eq!(fn_lengths(decl), vec![("b".to_owned(), 3, 1)]);
}
