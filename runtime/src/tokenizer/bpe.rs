//! Byte-pair encoding of one pre-tokenized piece, the way Hugging Face's `BPE` model does it.
//!
//! A piece starts as one symbol per byte (the token for that byte's byte-level character; a
//! byte whose character is not in the vocabulary is dropped, as HF does without an unknown
//! token). Then, repeatedly, the adjacent pair with the lowest merge rank (leftmost among
//! equals) is merged, until no adjacent pair has a merge. Pieces are cached.

use std::collections::{BinaryHeap, HashMap};
use std::cmp::Reverse;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

/// A small multiplicative hasher (FxHash) for the integer keys on the hot path; the default
/// SipHash is several times slower here and denial-of-service resistance is not needed.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        for &b in chunks.remainder() {
            self.add(b as u64);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;
pub(crate) type FxHashMap<K, V> = HashMap<K, V, FxBuild>;

/// Pieces longer than this (in bytes) are not cached; HF caches words under 256 characters.
const CACHE_MAX_PIECE: usize = 256;
/// The cache is emptied when it reaches this many pieces, bounding its memory.
const CACHE_CAPACITY: usize = 1 << 16;

/// Piece bytes → its tokens.
type PieceCache = Mutex<FxHashMap<Box<[u8]>, Box<[u32]>>>;

#[derive(Debug)]
pub(crate) struct Bpe {
    /// (left, right) → (rank, merged token).
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    /// The token of each byte's byte-level character, if the vocabulary has one.
    byte_ids: [Option<u32>; 256],
    cache: PieceCache,
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: i32,
    next: i32,
    /// False once merged into its left neighbour.
    alive: bool,
}

impl Bpe {
    pub(crate) fn new(merges: FxHashMap<(u32, u32), (u32, u32)>, byte_ids: [Option<u32>; 256]) -> Bpe {
        Bpe { merges, byte_ids, cache: Mutex::new(FxHashMap::default()) }
    }

    /// Appends the tokens of `piece` (raw bytes, not byte-level text) to `out`.
    pub(crate) fn encode(&self, piece: &[u8], out: &mut Vec<u32>) {
        let cacheable = piece.len() <= CACHE_MAX_PIECE;
        if cacheable {
            if let Ok(cache) = self.cache.lock() {
                if let Some(ids) = cache.get(piece) {
                    out.extend_from_slice(ids);
                    return;
                }
            }
        }
        let start = out.len();
        self.merge(piece, out);
        if cacheable {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(piece.into(), out[start..].into());
            }
        }
    }

    fn merge(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(piece.len());
        for &b in piece {
            if let Some(id) = self.byte_ids[b as usize] {
                let n = symbols.len() as i32;
                symbols.push(Symbol { id, prev: n - 1, next: n + 1, alive: true });
            }
        }
        let Some(last) = symbols.last_mut() else { return };
        last.next = -1;
        if symbols.len() == 1 {
            out.push(symbols[0].id);
            return;
        }

        // Min-heap on (rank, position); the merged token rides along so that a stale entry
        // is recognized the way HF recognizes it (by the pair now there merging to the same
        // token).
        let mut queue: BinaryHeap<Reverse<(u32, u32, u32)>> = BinaryHeap::with_capacity(symbols.len());
        for i in 0..symbols.len() - 1 {
            if let Some(&(rank, new_id)) = self.merges.get(&(symbols[i].id, symbols[i + 1].id)) {
                queue.push(Reverse((rank, i as u32, new_id)));
            }
        }
        while let Some(Reverse((_, pos, new_id))) = queue.pop() {
            let pos = pos as usize;
            let cur = symbols[pos];
            if !cur.alive || cur.next < 0 {
                continue;
            }
            let next_pos = cur.next as usize;
            let right = symbols[next_pos];
            match self.merges.get(&(cur.id, right.id)) {
                Some(&(_, id)) if id == new_id => {}
                _ => continue,
            }
            symbols[pos].id = new_id;
            symbols[pos].next = right.next;
            symbols[next_pos].alive = false;
            if right.next >= 0 {
                symbols[right.next as usize].prev = pos as i32;
            }
            let cur = symbols[pos];
            if cur.prev >= 0 {
                let prev = cur.prev as usize;
                if let Some(&(rank, id)) = self.merges.get(&(symbols[prev].id, cur.id)) {
                    queue.push(Reverse((rank, prev as u32, id)));
                }
            }
            if cur.next >= 0 {
                if let Some(&(rank, id)) = self.merges.get(&(cur.id, symbols[cur.next as usize].id)) {
                    queue.push(Reverse((rank, pos as u32, id)));
                }
            }
        }
        let mut i = 0i32;
        while i >= 0 {
            let s = symbols[i as usize];
            out.push(s.id);
            i = s.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpe(merges: &[((u32, u32), u32)]) -> Bpe {
        let mut byte_ids = [None; 256];
        for (i, b) in b"abc".iter().enumerate() {
            byte_ids[*b as usize] = Some(i as u32);
        }
        let map = merges.iter().enumerate().map(|(rank, &(pair, id))| (pair, (rank as u32, id))).collect();
        Bpe::new(map, byte_ids)
    }

    #[test]
    fn lowest_rank_first_leftmost_on_ties() {
        // a=0 b=1 c=2; "b c"→bc=3 (rank 0), "a b"→ab=4 (rank 1), "a bc"→abc=5 (rank 2)
        let b = bpe(&[((1, 2), 3), ((0, 1), 4), ((0, 3), 5)]);
        let mut out = Vec::new();
        b.encode(b"abc", &mut out);
        assert_eq!(out, [5]);
        out.clear();
        // "a a" → aa=6; "aaa" merges the leftmost pair first.
        let b = bpe(&[((0, 0), 6)]);
        b.encode(b"aaa", &mut out);
        assert_eq!(out, [6, 0]);
        out.clear();
        b.encode(b"axa", &mut out); // 'x' is not in the vocabulary: dropped, then "aa" merges
        assert_eq!(out, [6]);
        out.clear();
        b.encode(b"", &mut out);
        assert!(out.is_empty());
    }
}
