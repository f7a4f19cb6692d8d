// SPDX-License-Identifier: GPL-3.0-or-later
//! How bytes are written as text wherever a person or another program reads them: `0x` and
//! lower-case hex, the one form of addresses, tokens and batch ids in the `Mail-Stamp:`
//! header, in writer records and in reports. A leaf.

/// `0x` and lower-case hex, in one allocation.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("0x");
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_0x_and_the_hex_crate_s_lower_case() {
        for bytes in [&[][..], &[0], &[0x0f, 0xa0, 0xff], &[0x12; 20]] {
            assert_eq!(super::encode(bytes), format!("0x{}", hex::encode(bytes)));
        }
    }
}
