// SPDX-License-Identifier: GPL-3.0-or-later
//! Canonical forms: what a component *means*, independent of how a relay encoded it.
//!
//! Everything here works on text mail-parser has already decoded (RFC 2047 words, QP, base64,
//! charsets), so re-encoding never reaches a hash. On top of that we normalise line endings and
//! whitespace the way DKIM's "relaxed" canonicalisation does, but on decoded text. Owns the
//! canonical forms of text ([`collapse_whitespace`], body [`Lines`] and the signature cut),
//! of mailbox addresses, of line endings, and the list-tag cuts of a subject.

/// Collapses every run of whitespace (including line breaks) into one space and trims the ends.
/// Used for one-line values (Subject) and for HTML, where whitespace carries no meaning.
pub fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_relaxed(s, &mut out);
    out
}

/// ASCII bytes that `char::is_whitespace` accepts (note: VT, 0x0B, is one of them).
fn ascii_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether eight bytes (little-endian in `x`) can be copied as they are inside a word run:
/// all printable ASCII (0x20..=0x7E, or DEL), spaces only single and not the last byte, so
/// every space in them sits between two word bytes. SWAR: a byte below 0x20 borrows into its
/// high bit, a byte above 0x7F has it set, and a zero byte of `x ^ spaces` marks a space.
fn copyable(x: u64) -> bool {
    if ((x.wrapping_sub(ONES * 0x20) & !x) | x) & HIGH != 0 {
        return false;
    }
    let y = x ^ (ONES * 0x20);
    let spaces = !(((y & !HIGH).wrapping_add(!HIGH)) | y | !HIGH);
    spaces & (spaces >> 8) == 0 && spaces >> 56 == 0
}

/// Appends `s` to `out` as `s.split_whitespace()` joined by single spaces (whitespace in the
/// sense of `char::is_whitespace`, Unicode included), in one pass and without an iterator
/// per word: ASCII is classified byte by byte, anything else is decoded first. Text between
/// whitespace runs that are a single ASCII space is copied in one piece.
fn push_relaxed(s: &str, out: &mut String) {
    let mut i = 0;
    let mut wrote = false;
    while let Some(start) = skip_space(s, i) {
        i = run_end(s, start);
        if wrote {
            out.push(' ');
        }
        out.push_str(&s[start..i]);
        wrote = true;
    }
}

/// The first index at or after `i` that does not start a whitespace character, or `None` at
/// the end of `s`. `i` must be a character boundary.
fn skip_space(s: &str, i: usize) -> Option<usize> {
    scan_space(s, i, false)
}

/// The index of the first character at or after `i` that is not whitespace, or (with
/// `stop_at_breaks`) is CR or LF; `None` at the end of `s`. `i` must be a character boundary.
#[inline]
fn scan_space(s: &str, mut i: usize, stop_at_breaks: bool) -> Option<usize> {
    let b = s.as_bytes();
    while let Some(&c) = b.get(i) {
        if c < 0x80 {
            if !ascii_space(c) || (stop_at_breaks && (c == b'\r' || c == b'\n')) {
                return Some(i);
            }
            i += 1;
        } else {
            match s[i..].chars().next() {
                Some(ch) if ch.is_whitespace() => i += ch.len_utf8(),
                _ => return Some(i),
            }
        }
    }
    None
}

/// From `start`, which begins a non-whitespace character, the end of the longest run of
/// words separated by single ASCII spaces: the run can be copied as it is. The run stops at
/// any other whitespace (line breaks included), a space that is not followed by an ASCII word
/// byte, or the end.
fn run_end(s: &str, start: usize) -> usize {
    let b = s.as_bytes();
    let mut i = start;
    loop {
        // Eight bytes at a time while they are words and single spaces. Inside a run the
        // byte before `i` is a word byte, so a leading space is a single one too.
        while let Some(chunk) = b.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !copyable(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        let Some(&c) = b.get(i) else { return i };
        if c > b' ' && c < 0x80 {
            i += 1;
        } else if c == b' ' {
            if b.get(i + 1).is_some_and(|&n| n > b' ' && n < 0x80) {
                i += 2;
            } else {
                return i;
            }
        } else if c < 0x80 {
            if ascii_space(c) {
                return i;
            }
            i += 1;
        } else {
            match s[i..].chars().next() {
                Some(ch) if !ch.is_whitespace() => i += ch.len_utf8(),
                _ => return i,
            }
        }
    }
}

/// Body text as canonical lines, all in one buffer: the lines joined by LF (exactly what is
/// hashed) and where each line ends. Built by [`text_lines`] without an allocation per line.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Lines {
    text: String,
    /// End offset in `text` of every line; line `i` starts one byte after line `i - 1` ends.
    ends: Vec<usize>,
}

impl Lines {
    /// Lines as given (each one must already be canonical: no line breaks inside).
    pub fn from_lines<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Self {
        let mut out = Self::default();
        for l in lines {
            if !out.ends.is_empty() {
                out.text.push('\n');
            }
            out.text.push_str(l.as_ref());
            out.ends.push(out.text.len());
        }
        out
    }

    /// How many lines.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no line at all.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] + 1 }
    }

    /// Line `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        self.text.get(self.start(i)..end)
    }

    /// The lines in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The first line.
    pub fn first(&self) -> Option<&str> {
        self.get(0)
    }

    /// The last line.
    pub fn last(&self) -> Option<&str> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// The canonical text of the first `k` lines (all of them when `k` is larger) with
    /// trailing empty lines dropped: those lines joined by LF. This is what is hashed.
    pub fn prefix(&self, k: usize) -> &str {
        let mut k = k.min(self.len());
        while k > 0 && self.ends[k - 1] == self.start(k - 1) {
            k -= 1;
        }
        if k == 0 {
            ""
        } else {
            &self.text[..self.ends[k - 1]]
        }
    }

    /// Lines `a..z` with empty lines at both ends dropped, as a new value.
    fn sub(&self, mut a: usize, mut z: usize) -> Lines {
        while z > a && self.ends[z - 1] == self.start(z - 1) {
            z -= 1;
        }
        while a < z && self.ends[a] == self.start(a) {
            a += 1;
        }
        if a == z {
            return Lines::default();
        }
        let base = self.start(a);
        Lines {
            text: self.text[base..self.ends[z - 1]].to_owned(),
            ends: self.ends[a..z].iter().map(|e| e - base).collect(),
        }
    }

    /// The index of the RFC 3676 signature separator (`-- `, which canonicalises to `--`),
    /// the first one in the text, if any. The first, not the last: lists append footers that
    /// start with their own `-- ` (ILUG, many Majordomo lists), and with the last separator
    /// such a footer would push the author's signature into the text and replace the
    /// signature, so neither component would still be a prefix of what was stamped. Lists
    /// only append, so the first separator stays where the author put it.
    pub fn signature_separator(&self) -> Option<usize> {
        self.iter().position(|l| l == "--")
    }

    /// Cuts the signature block off at the first separator: `self` keeps the lines before
    /// it, the lines after it are returned; the separator goes, and both sides lose empty
    /// lines at their ends. Without a separator nothing changes and the signature is empty.
    pub fn split_signature(&mut self) -> Lines {
        let Some(sep) = self.signature_separator() else {
            return Lines::default();
        };
        let signature = self.sub(sep + 1, self.len());
        *self = if self.first().is_some_and(|l| !l.is_empty()) {
            // No leading empty line (the usual case): truncate in place.
            let mut text = std::mem::take(self);
            let mut z = sep;
            while z > 0 && text.ends[z - 1] == text.start(z - 1) {
                z -= 1;
            }
            text.text
                .truncate(if z == 0 { 0 } else { text.ends[z - 1] });
            text.ends.truncate(z);
            text
        } else {
            self.sub(0, sep)
        };
        signature
    }
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Body text as canonical lines: CR, LF and CRLF all end a line, each line is relaxed, and
/// empty lines at the start and the end are dropped (relays and MUAs add and remove them).
pub fn text_lines(s: &str) -> Lines {
    let mut out = Lines {
        text: String::with_capacity(s.len()),
        ends: Vec::with_capacity(s.len() / 32 + 1),
    };
    let b = s.as_bytes();
    // Empty lines seen since the last non-empty one; written only if another one follows,
    // so empty lines at either end never reach the buffer.
    let mut pending = 0usize;
    // Whether the current line has a word yet.
    let mut wrote = false;
    let mut i = 0;
    loop {
        let word = skip_space_in_line(s, i);
        if let Some(start) = word {
            i = run_end(s, start);
            if wrote {
                out.text.push(' ');
            } else {
                if !out.ends.is_empty() {
                    let at = out.text.len();
                    out.ends.extend((1..=pending).map(|j| at + j));
                    out.text.extend(std::iter::repeat_n('\n', pending + 1));
                }
                pending = 0;
                wrote = true;
            }
            out.text.push_str(&s[start..i]);
            continue;
        }
        // End of the line: CRLF, a bare LF or a bare CR (old Mac mail), or the end of `s`.
        i = match word_or_break(s, i) {
            Some(br) => {
                br + if b[br] == b'\r' && b.get(br + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                }
            }
            None => b.len(),
        };
        if wrote {
            out.ends.push(out.text.len());
            wrote = false;
        } else if !out.ends.is_empty() {
            pending += 1;
        }
        if i >= b.len() {
            break;
        }
    }
    out
}

/// Like [`skip_space`], but stops at a line break (CR or LF): the index of the next word
/// character on this line, or `None` when the line (or `s`) ends first.
fn skip_space_in_line(s: &str, i: usize) -> Option<usize> {
    let j = word_or_break(s, i)?;
    (!matches!(s.as_bytes()[j], b'\r' | b'\n')).then_some(j)
}

/// The index of the next character at or after `i` that is not whitespace other than CR and
/// LF: a word character or a line break; `None` at the end of `s`.
fn word_or_break(s: &str, i: usize) -> Option<usize> {
    scan_space(s, i, true)
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
        assert_eq!(a, Lines::from_lines(["Hello world", "", "bye"]));
        assert_eq!(a.prefix(9), "Hello world\n\nbye");
        assert_eq!(a.prefix(2), "Hello world");
    }

    #[test]
    fn bare_cr_is_a_line_break() {
        assert_eq!(text_lines("a\rb"), Lines::from_lines(["a", "b"]));
    }

    #[test]
    fn signature_separator_is_the_first_dash_dash_space_line() {
        let lines = text_lines("body\n-- \nAlice\n-- \nlist footer\n");
        assert_eq!(lines.signature_separator(), Some(1));
        assert_eq!(text_lines("> -- \nquoted sig").signature_separator(), None);
        assert_eq!(text_lines("no sig").signature_separator(), None);
        let mut text = text_lines("\n\nHi\n\n-- \n\nAlice\n\n-- \nfooter\n\n");
        let sig = text.split_signature();
        assert_eq!(text, Lines::from_lines(["Hi"]));
        assert_eq!(sig, Lines::from_lines(["Alice", "", "--", "footer"]));
        let mut text = text_lines("-- \nonly a signature");
        assert_eq!(
            text.split_signature(),
            Lines::from_lines(["only a signature"])
        );
        assert!(text.is_empty());
        let mut text = text_lines("no separator");
        assert!(text.split_signature().is_empty());
        assert_eq!(text, Lines::from_lines(["no separator"]));
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
    fn copyable_is_exact() {
        let reference = |w: &[u8; 8]| {
            w.iter().all(|&v| (0x20..0x80).contains(&v))
                && w.windows(2).all(|p| p != b"  ")
                && w[7] != b' '
        };
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = [
            b' ', b'a', b'~', 0x7f, 0x1f, 0x20, 0x21, 0x80, 0xff, 0x00, b'\t',
        ];
        for round in 0..200_000 {
            let mut w = [b'a'; 8];
            for (pos, byte) in w.iter_mut().enumerate() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if round < 256 * 8 {
                    // Every byte value at every position first.
                    if pos == round / 256 {
                        *byte = (round % 256) as u8;
                    }
                } else {
                    *byte = alphabet[(rng % alphabet.len() as u64) as usize];
                }
            }
            assert_eq!(copyable(u64::from_le_bytes(w)), reference(&w), "{w:?}");
        }
    }

    #[test]
    fn prefix_skips_trailing_empties() {
        let l = Lines::from_lines(["a", "", "b", "", ""]);
        assert_eq!(l.prefix(5), "a\n\nb");
        assert_eq!(l.prefix(2), "a");
        assert_eq!(l.prefix(0), "");
        assert_eq!(l.get(2), Some("b"));
        assert_eq!(l.last(), Some(""));
    }

    /// The old definition: `split_whitespace` joined by one space.
    fn relaxed_reference(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The old definition of [`text_lines`]: one `String` per line, then empty ends dropped.
    fn text_lines_reference(s: &str) -> Vec<String> {
        let mut lines = Vec::new();
        for raw in s.split('\n') {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            for piece in raw.split('\r') {
                lines.push(relaxed_reference(piece));
            }
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let lead = lines.iter().take_while(|l| l.is_empty()).count();
        lines.drain(..lead);
        lines
    }

    #[test]
    fn one_pass_canonicalisation_equals_the_reference() {
        let samples = [
            "",
            " ",
            "\n\n",
            "a",
            " a  b\t\tc \u{a0}d\u{2003}e\u{3000} ",
            "x\u{0b}y\u{0c}z\u{85}w",
            "\u{a0}",
            "é è  ü\r\n\r\n\r\nß\rq\n",
            "a\r\r\nb\n\r\nc \n \n\t\n",
            "-- \nsig\n",
            "日本語 テキスト\u{3000}です\n\n\n次",
        ];
        for s in samples {
            assert_eq!(collapse_whitespace(s), relaxed_reference(s), "{s:?}");
            let got = text_lines(s);
            let want = text_lines_reference(s);
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{s:?}");
            assert_eq!(got.prefix(usize::MAX), want.join("\n"), "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn one_pass_canonicalisation_equals_the_reference_on_any_text(
            s in "[ a-z\t\r\n\u{0b}\u{0c}\u{85}\u{a0}\u{2000}-\u{200b}\u{3000}é日-]{0,80}",
            words in "[ a-zA-Z0-9.,\\t\\r\\n\\u{a0}é\\-]{0,200}"
        ) {
            proptest::prop_assert_eq!(collapse_whitespace(&s), relaxed_reference(&s));
            let got = text_lines(&s);
            let want = text_lines_reference(&s);
            proptest::prop_assert_eq!(got.iter().collect::<Vec<_>>(), want.clone());
            proptest::prop_assert_eq!(got.prefix(usize::MAX), want.join("\n"));
            proptest::prop_assert_eq!(collapse_whitespace(&words), relaxed_reference(&words));
            let got = text_lines(&words);
            let want = text_lines_reference(&words);
            proptest::prop_assert_eq!(got.iter().collect::<Vec<_>>(), want.clone());
            proptest::prop_assert_eq!(got.prefix(usize::MAX), want.join("\n"));
        }
    }
}
