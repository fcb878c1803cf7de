//! Added tokens (control and user-defined) found in the text before pre-tokenization, the way
//! Hugging Face's `AddedVocabulary` finds them: scanning left to right, the first position
//! where any added token starts wins, and among the tokens starting there the longest.

/// A byte trie over the added tokens' texts.
#[derive(Debug)]
pub(crate) struct AddedTokens {
    nodes: Vec<Node>,
    /// Bytes some added token starts with, to skip the rest quickly.
    first: [bool; 256],
}

impl Default for AddedTokens {
    fn default() -> AddedTokens {
        AddedTokens { nodes: Vec::new(), first: [false; 256] }
    }
}

#[derive(Debug, Default)]
struct Node {
    /// (byte, child node), sorted by byte.
    children: Vec<(u8, u32)>,
    token: Option<u32>,
}

/// A stretch of the input: plain text, or one added token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

impl AddedTokens {
    /// Adds `text` as token `id`; a text already present keeps its first id, an empty one is
    /// ignored (it could never be found).
    pub(crate) fn insert(&mut self, text: &str, id: u32) {
        let bytes = text.as_bytes();
        let Some(&first) = bytes.first() else { return };
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        self.first[first as usize] = true;
        let mut node = 0usize;
        for &b in bytes {
            node = match self.nodes[node].children.binary_search_by_key(&b, |&(k, _)| k) {
                Ok(i) => self.nodes[node].children[i].1 as usize,
                Err(i) => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[node].children.insert(i, (b, child as u32));
                    child
                }
            };
        }
        self.nodes[node].token.get_or_insert(id);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The longest added token at the start of `bytes`: (length, id).
    fn longest_at(&self, bytes: &[u8]) -> Option<(usize, u32)> {
        let mut node = 0usize;
        let mut best = None;
        for (i, &b) in bytes.iter().enumerate() {
            let children = &self.nodes[node].children;
            match children.binary_search_by_key(&b, |&(k, _)| k) {
                Ok(c) => node = children[c].1 as usize,
                Err(_) => break,
            }
            if let Some(id) = self.nodes[node].token {
                best = Some((i + 1, id));
            }
        }
        best
    }

    /// Cuts `text` into plain stretches and added tokens, in order; calls `f` for each.
    pub(crate) fn segments<'a>(&self, text: &'a str, mut f: impl FnMut(Segment<'a>)) {
        if self.is_empty() {
            if !text.is_empty() {
                f(Segment::Text(text));
            }
            return;
        }
        let bytes = text.as_bytes();
        let mut plain_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if self.first[bytes[i] as usize] {
                if let Some((len, id)) = self.longest_at(&bytes[i..]) {
                    // A match of valid UTF-8 in valid UTF-8 starts and ends on char boundaries.
                    if i > plain_start {
                        f(Segment::Text(&text[plain_start..i]));
                    }
                    f(Segment::Token(id));
                    i += len;
                    plain_start = i;
                    continue;
                }
            }
            i += 1;
        }
        if plain_start < bytes.len() {
            f(Segment::Text(&text[plain_start..]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut<'a>(a: &AddedTokens, text: &'a str) -> Vec<Segment<'a>> {
        let mut v = Vec::new();
        a.segments(text, |s| v.push(s));
        v
    }

    #[test]
    fn leftmost_then_longest() {
        let mut a = AddedTokens::default();
        a.insert("<a>", 1);
        a.insert("<a><b>", 2);
        a.insert("b><c", 3);
        a.insert("", 4);
        a.insert("<a>", 5); // duplicate text: first id stays
        use Segment::*;
        assert_eq!(cut(&a, "x<a><b>y"), [Text("x"), Token(2), Text("y")]);
        assert_eq!(cut(&a, "<a><b><c"), [Token(2), Text("<c")]);
        assert_eq!(cut(&a, "<a>b><c"), [Token(1), Token(3)]);
        assert_eq!(cut(&a, "<a"), [Text("<a")]);
        assert_eq!(cut(&a, ""), []);
        assert_eq!(cut(&AddedTokens::default(), "abc"), [Text("abc")]);
    }
}
