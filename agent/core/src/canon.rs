// SPDX-License-Identifier: GPL-3.0-or-later
//! Canonical forms: what a component *means*, independent of how a relay encoded it.
//!
//! Everything here works on text mail-parser has already decoded (RFC 2047 words, QP, base64,
//! charsets), so re-encoding never reaches a hash. On top of that we normalise line endings and
//! whitespace the way DKIM's "relaxed" canonicalisation does, but on decoded text.

/// Collapses every run of whitespace (including line breaks) into one space and trims the ends.
/// Used for one-line values (Subject) and for HTML, where whitespace carries no meaning.
pub fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// One canonical line of body text: inner whitespace runs become one space, ends trimmed.
fn canon_line(line: &str, out: &mut String) {
    out.clear();
    for word in line.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
}

/// Body text as canonical lines: CR, LF and CRLF all end a line, each line is relaxed, and
/// empty lines at the start and the end are dropped (relays and MUAs add and remove them).
pub fn text_lines(s: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut buf = String::new();
    for raw in s.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        // A bare CR is a line break too (old Mac mail); split on it as well.
        for piece in raw.split('\r') {
            canon_line(piece, &mut buf);
            lines.push(buf.clone());
        }
    }
    trim_empty_ends(&mut lines);
    lines
}

/// Drops empty lines at both ends of a canonical line list.
pub fn trim_empty_ends(lines: &mut Vec<String>) {
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let lead = lines.iter().take_while(|l| l.is_empty()).count();
    lines.drain(..lead);
}

/// Length of `lines[..k]` once trailing empty lines are dropped.
pub fn trimmed_len(lines: &[String], k: usize) -> usize {
    let mut k = k.min(lines.len());
    while k > 0 && lines[k - 1].is_empty() {
        k -= 1;
    }
    k
}

/// The index of the RFC 3676 signature separator (`-- `, which canonicalises to `--`),
/// the first one in the text, if any. The first, not the last: lists append footers that
/// start with their own `-- ` (ILUG, many Majordomo lists), and with the last separator such
/// a footer would push the author's signature into the text and replace the signature, so
/// neither component would still be a prefix of what was stamped. Lists only append, so
/// the first separator stays where the author put it.
pub fn signature_separator(lines: &[String]) -> Option<usize> {
    lines.iter().position(|l| l == "--")
}

/// A mailbox address in canonical form: trimmed, angle brackets removed, lower case.
/// Local parts are case-sensitive in theory and case-insensitive in every deployed system;
/// we follow practice.
pub fn address(a: &str) -> String {
    let a = a.trim();
    let a = a
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(a);
    a.trim().to_lowercase()
}

/// Splits a canonical address into (local part, domain) at the last `@`.
pub fn split_address(a: &str) -> (&str, &str) {
    match a.rfind('@') {
        Some(i) => (&a[..i], &a[i + 1..]),
        None => (a, ""),
    }
}

/// Line endings to LF, for binary-ish content that is really text (nested messages, text
/// attachments), so an LF/CRLF conversion by a relay does not change their hash.
pub fn lf_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The subject with one, two, … leading `[tag]` prefixes removed, shortest removal first:
/// a list adds its tag in front of whatever tags the subject already had, so each cut is a
/// candidate for what the sender wrote. Empty when there is no tag.
pub fn subject_tag_cuts(s: &str) -> Vec<&str> {
    let mut cuts = Vec::new();
    let mut rest = s.trim_start();
    while let Some(tail) = rest.strip_prefix('[') {
        let Some(end) = tail.find(']') else { break };
        if end == 0 || end > 64 || cuts.len() >= 4 {
            break;
        }
        rest = tail[end + 1..].trim_start();
        cuts.push(rest);
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_ignore_line_endings_and_trailing_space() {
        let a = text_lines("Hello  world \r\n\r\nbye\t\r\n\r\n");
        let b = text_lines("\nHello world\n\nbye\n");
        assert_eq!(a, b);
        assert_eq!(a, vec!["Hello world", "", "bye"]);
    }

    #[test]
    fn bare_cr_is_a_line_break() {
        assert_eq!(text_lines("a\rb"), vec!["a", "b"]);
    }

    #[test]
    fn signature_separator_is_the_first_dash_dash_space_line() {
        let lines = text_lines("body\n-- \nAlice\n-- \nlist footer\n");
        assert_eq!(signature_separator(&lines), Some(1));
        assert_eq!(signature_separator(&text_lines("> -- \nquoted sig")), None);
        assert_eq!(signature_separator(&text_lines("no sig")), None);
    }

    #[test]
    fn addresses_are_case_folded_and_unbracketed() {
        assert_eq!(address(" <Alice@Example.COM> "), "alice@example.com");
        assert_eq!(split_address("a@b@c.d"), ("a@b", "c.d"));
        assert_eq!(split_address("nobody"), ("nobody", ""));
    }

    #[test]
    fn subject_tags_are_cut_one_at_a_time() {
        assert_eq!(
            subject_tag_cuts("[list] [ILUG] Hello"),
            vec!["[ILUG] Hello", "Hello"]
        );
        assert!(subject_tag_cuts("Hello [list]").is_empty());
        assert!(subject_tag_cuts("[] Hello").is_empty());
        assert!(subject_tag_cuts("[unterminated Hello").is_empty());
    }

    #[test]
    fn lf_bytes_only_touches_crlf() {
        assert_eq!(lf_bytes(b"a\r\nb\rc\n"), b"a\nb\rc\n");
    }

    #[test]
    fn trimmed_len_skips_trailing_empties() {
        let l: Vec<String> = ["a", "", "b", "", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(trimmed_len(&l, 5), 3);
        assert_eq!(trimmed_len(&l, 2), 1);
        assert_eq!(trimmed_len(&l, 0), 0);
    }
}
