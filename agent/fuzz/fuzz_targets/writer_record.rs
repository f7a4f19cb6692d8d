// SPDX-License-Identifier: GPL-3.0-or-later
//! The DNS TXT writer records at `_mailstamp.<domain>`: `WriterRecord::parse` and `authorise`
//! over several records (the input split at NUL, as a resolver returns one string per
//! record). A record that parses lists 1 to `MAX_WRITERS` writers and formats back to itself;
//! `authorise` must say pass / fail / permerror / none exactly as the records say.
//! Squeezed by `agent/fuzz/dict/writer_record.dict`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailstamp_core::writers::{MAX_WRITERS, RecordError, WriterRecord, authorise};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let txts: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let mut listed: Vec<[u8; 20]> = Vec::new();
    let mut malformed = false;
    for t in &txts {
        match WriterRecord::parse(t) {
            Ok(r) => {
                assert!(!r.writers.is_empty() && r.writers.len() <= MAX_WRITERS);
                let again = WriterRecord::parse(&WriterRecord::format(&r.writers));
                assert_eq!(again.as_ref(), Ok(&r), "format does not parse back");
                listed.extend(&r.writers);
            }
            Err(RecordError::NotOurs) => {}
            Err(RecordError::Malformed(_)) => malformed = true,
        }
    }
    let stranger = (0u8..=255)
        .map(|b| [b; 20])
        .find(|w| !listed.contains(w))
        .expect("fewer than 256 writers listed");
    for writer in listed.first().into_iter().chain([&stranger]) {
        let want = if listed.contains(writer) {
            "pass"
        } else if !listed.is_empty() {
            "fail"
        } else if malformed {
            "permerror"
        } else {
            "none"
        };
        let got = authorise("a.example", &txts, writer);
        assert_eq!(got.as_str(), want, "{got:?} for {txts:?}");
    }
});
