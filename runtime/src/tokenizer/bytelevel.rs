//! The GPT-2 byte-level alphabet: every byte gets a printable code point, so that BPE over
//! byte sequences can be written as strings ("Ġthe" is " the").
//!
//! Bytes that are printable Latin-1 (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves;
//! the other 68 bytes, in increasing order, take U+0100, U+0101, ... (so space, 0x20, is
//! U+0120 'Ġ' and newline, 0x0A, is U+010A 'Ċ').

/// True for the bytes that stand for themselves.
const fn is_self(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if is_self(b as u8) {
            b as u32
        } else {
            shifted += 1;
            255 + shifted
        };
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
}

/// `BYTE_TO_CHAR[b]` is the code point that stands for byte `b`.
pub(crate) static BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

/// The number of bytes that do not stand for themselves (they map to U+0100..U+0100+N).
const SHIFTED: usize = 68;

const fn build_shifted_to_byte() -> [u8; SHIFTED] {
    let mut table = [0u8; SHIFTED];
    let mut n = 0usize;
    let mut b = 0usize;
    while b < 256 {
        if !is_self(b as u8) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    table
}

static SHIFTED_TO_BYTE: [u8; SHIFTED] = build_shifted_to_byte();

/// The byte that code point `c` stands for, if `c` is in the byte-level alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        return is_self(b).then_some(b);
    }
    let n = (cp - 256) as usize;
    SHIFTED_TO_BYTE.get(n).copied()
}

/// The bytes a token string stands for, the way Hugging Face's ByteLevel decoder reads it:
/// if every character is in the byte-level alphabet, the bytes they stand for; otherwise
/// (a token that is not byte-level text, like "<｜User｜>") the string's own UTF-8.
pub(crate) fn decode_token(token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => return token.as_bytes().to_vec(),
        }
    }
    out
}

/// Appends the byte-level spelling of `bytes` to `out`.
pub(crate) fn encode_bytes(bytes: &[u8], out: &mut String) {
    out.extend(bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c), "byte {b} maps to a repeated char");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte('｜'), None);
    }

    #[test]
    fn decode_token_falls_back_to_utf8() {
        assert_eq!(decode_token("Ġthe"), b" the");
        assert_eq!(decode_token("<｜User｜>"), "<｜User｜>".as_bytes());
        assert_eq!(decode_token("a b"), b"a b"); // a raw space is not byte-level text
        let mut s = String::new();
        encode_bytes("é\n".as_bytes(), &mut s);
        assert_eq!(s, "Ã©Ċ");
    }
}
