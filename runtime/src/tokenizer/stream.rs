//! Incremental detokenization: token bytes in, complete UTF-8 text out.

/// Turns a stream of token bytes into text without ever splitting a UTF-8 character.
///
/// [`push`](StreamDecoder::push) returns the text that is complete so far and keeps an
/// unfinished character's leading bytes for the next call. A byte sequence that can no longer
/// become valid UTF-8 becomes U+FFFD (one per maximal invalid subsequence, as
/// `String::from_utf8_lossy` counts them), and [`finish`](StreamDecoder::finish) turns an
/// unfinished tail into U+FFFD. So the concatenation of everything returned equals
/// `String::from_utf8_lossy` of all the bytes pushed.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds `bytes` and returns the text now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by construction.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            // An unfinished character at the end: wait for more bytes.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drop = self.pending.len() - keep;
        self.pending.drain(..drop);
        out
    }

    /// Bytes held back because they may still become a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut d = StreamDecoder::new();
        let parts: Vec<String> = chunks.iter().map(|c| d.push(c)).collect();
        (parts, d.finish())
    }

    #[test]
    fn holds_back_split_characters() {
        let (parts, end) = stream(&[b"a\xe4", b"\xbd", b"\xa0b"]);
        assert_eq!(parts, ["a", "", "你b"]);
        assert_eq!(end, "");
    }

    #[test]
    fn invalid_bytes_become_replacement_once_hopeless() {
        // 0xFF can never start a character; "\xe4\xbd" followed by 'x' can never finish.
        let (parts, end) = stream(&[b"\xff", b"\xe4\xbd", b"x", b"\xf0\x9f"]);
        assert_eq!(parts, ["\u{fffd}", "", "\u{fffd}x", ""]);
        assert_eq!(end, "\u{fffd}");
    }

    #[test]
    fn matches_lossy_on_random_splits() {
        let data: &[u8] = "héllo 你好 🙂👍🏽\u{200d}".as_bytes();
        let mut bytes = data.to_vec();
        bytes.extend_from_slice(b"\xed\xa0\x80\xc3(\xf4\x90\x80\x80\xe2\x82");
        let want = String::from_utf8_lossy(&bytes).into_owned();
        for step in 1..6 {
            let mut d = StreamDecoder::new();
            let mut got = String::new();
            for c in bytes.chunks(step) {
                got.push_str(&d.push(c));
            }
            got.push_str(&d.finish());
            assert_eq!(got, want, "chunk size {step}");
        }
    }
}
