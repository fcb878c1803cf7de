//! out = x · Wᵀ (+ bias) for a weight matrix W of any dtype, in three forms:
//!
//! - [`matmul`], exact, several tokens (prefill): weight rows are dequantized into packed
//!   panels of [`NR`] rows, k in slices of [`KC`], and multiplied by f32 activations in the
//!   register-blocked micro-kernel of `gemm.rs`. Dequantization is paid once per panel and
//!   shared by every token.
//! - [`matvecs`], one token against one to four matrices: each weight row dotted in place
//!   with the f32 activations (exact), or with the activations quantized to 8 bits (the
//!   table's `vec_dot_type`) by [`quantize_activations`]: integer dot products, 3-4x less
//!   arithmetic per weight than dequantizing to f32, so decode stays bound by memory rather
//!   than cores.
//!
//! Work is split over output rows (panels), so threads never write the same element.

use std::ops::Range;

use super::gemm::{pack_panel, pack_panel_widening, pack_tokens, tile, tiles_along_tokens, Tokens as TileTokens, MR, NR};
use super::gemm_i8::{tile_i8, Tokens, MR8, NR8};
use super::interleave::{self, GROUP};
use super::pool::{SharedMut, ThreadPool};
use super::simd::{self, VecDot};
use super::vec::grow;
use crate::dtype::{AffineLevels, DType};

/// Elements of k per packed panel: a multiple of every block size (1, 32, 256), so a slice
/// of a row is whole blocks; the panel (16 KiB) stays in L1 while the tokens stream past.
const KC: usize = 256;

/// A weight matrix: `rows` rows of `k` values of `dtype`, as stored in GGUF (`Layout::Rows`)
/// or repacked for decode (`Layout::Interleaved8`).
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    pub bytes: &'a [u8],
    pub dtype: DType,
    pub k: usize,
    pub rows: usize,
    pub layout: Layout,
}

/// How a matrix's rows lie in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row after row, as in the file.
    Rows,
    /// Groups of 8 rows interleaved block by block ([`super::interleave`]): for the types
    /// whose `VecDot` has a group kernel, with a row count that is a multiple of 8.
    Interleaved8,
}

/// Bytes of the longest block range read from an interleaved row at once (KC_8BIT values
/// of the widest interleavable block, Q8_0's), gathered back into the file's layout.
const GATHER_BYTES: usize = KC_8BIT / 32 * crate::quants::q8_0::BLOCK_BYTES;

impl Matrix<'_> {
    fn row_bytes(&self) -> usize {
        let row_bytes = self.dtype.row_bytes(self.k).expect("row length is whole blocks of the dtype");
        assert_eq!(self.bytes.len(), row_bytes * self.rows, "{} weight bytes for {} rows of {}", self.bytes.len(), self.rows, self.k);
        if self.layout == Layout::Interleaved8 {
            assert!(self.rows % GROUP == 0 && interleave::fields(self.dtype).is_some(), "{} rows of {} cannot be interleaved", self.rows, self.dtype);
        }
        row_bytes
    }

    /// Row j, whole (row-major matrices only).
    fn row(&self, j: usize, row_bytes: usize) -> &[u8] {
        debug_assert_eq!(self.layout, Layout::Rows);
        &self.bytes[j * row_bytes..(j + 1) * row_bytes]
    }

    /// Asks for blocks `blocks` of `rows` from memory ahead of their use. Row-major matrices
    /// only: an interleaved one's blocks are gathered, so there is no one range to ask for.
    fn prefetch_rows(&self, rows: Range<usize>, blocks: Range<usize>, row_bytes: usize) {
        if self.layout != Layout::Rows {
            return;
        }
        let type_size = self.dtype.type_size();
        for j in rows {
            simd::prefetch(&self.row(j, row_bytes)[blocks.start * type_size..blocks.end * type_size]);
        }
    }

    /// Blocks `blocks` of row j in the file's layout: a view of a row-major matrix, or
    /// gathered into `buf` (at least GATHER_BYTES) from an interleaved one.
    fn row_blocks<'b>(&'b self, j: usize, blocks: Range<usize>, row_bytes: usize, buf: &'b mut [u8]) -> &'b [u8] {
        let type_size = self.dtype.type_size();
        match self.layout {
            Layout::Rows => &self.row(j, row_bytes)[blocks.start * type_size..blocks.end * type_size],
            Layout::Interleaved8 => {
                let out = &mut buf[..blocks.len() * type_size];
                interleave::block_range_of_row(self.dtype, self.group(j / GROUP, row_bytes), j % GROUP, blocks, out);
                out
            }
        }
    }

    /// The g-th group of GROUP interleaved rows.
    fn group(&self, g: usize, row_bytes: usize) -> &[u8] {
        &self.bytes[g * GROUP * row_bytes..(g + 1) * GROUP * row_bytes]
    }

    /// Row j · x, exact, in f32 (`dot`: the dtype's `dot_f32`); an interleaved row is
    /// gathered and dotted a KC_8BIT slice at a time.
    fn exact_row_dot(&self, dot: fn(&[u8], &[f32]) -> f32, j: usize, row_bytes: usize, x: &[f32], buf: &mut [u8]) -> f32 {
        if self.layout == Layout::Rows {
            return dot(self.row(j, row_bytes), x);
        }
        let block = self.dtype.block_size();
        let (n_blocks, slice_blocks) = (self.k / block, KC_8BIT / block);
        (0..n_blocks)
            .step_by(slice_blocks)
            .map(|b0| {
                let blocks = b0..(b0 + slice_blocks).min(n_blocks);
                let values = blocks.start * block..blocks.end * block;
                dot(self.row_blocks(j, blocks, row_bytes, buf), &x[values])
            })
            .sum()
    }
}

/// `x`: n_tokens × k, row-major; `out`: n_tokens × rows. Exact f32 arithmetic.
pub fn matmul(pool: &ThreadPool, x: &[f32], n_tokens: usize, w: Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
    if n_tokens > 1 {
        matmuls(pool, x, n_tokens, &mut [Product { w, bias, out }], false);
        return;
    }
    matvecs(pool, [Matvec { x: TokenInput::Exact(x), w, bias, out }]);
}

/// One of several matmuls of the same activations: out = x · wᵀ (+ bias).
pub struct Product<'a> {
    pub w: Matrix<'a>,
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
}

/// Matmuls that read the same n_tokens × k activations `x` (q, k and v; gate and up): the
/// tokens are prepared (packed, or quantized) once for all of them, and the panels of every
/// matrix share one hand-out, so the threads wait for each other once per group rather than
/// once per matrix. With `eight_bit`, the matrices whose type has integer levels take
/// [`matmul_8bit`]'s arithmetic; the rest, or all without it, are exact.
pub fn matmuls(pool: &ThreadPool, x: &[f32], n_tokens: usize, products: &mut [Product], eight_bit: bool) {
    if n_tokens == 1 && !eight_bit {
        for group in products.chunks_mut(MAX_GROUPED_MATVECS) {
            matvecs(pool, group.iter_mut().map(|p| Matvec { x: TokenInput::Exact(x), w: p.w, bias: p.bias, out: &mut *p.out }));
        }
        return;
    }
    let parts: Vec<Part> = products.iter_mut().map(|p| Part::new(p, x, n_tokens)).collect();
    let (by_levels, exact): (Vec<Part>, Vec<Part>) = parts.into_iter().partition(|p| eight_bit && p.w.dtype.traits().levels.is_some());
    if !by_levels.is_empty() {
        matmuls_by_levels(pool, x, n_tokens, &by_levels);
    }
    if !exact.is_empty() {
        matmuls_exact(pool, x, n_tokens, &exact);
    }
}

/// A checked [`Product`], as the threads share it: its output a pointer, and where its
/// panels start in the group's numbering.
#[derive(Clone, Copy)]
struct Part<'a> {
    w: Matrix<'a>,
    row_bytes: usize,
    bias: Option<&'a [f32]>,
    out: SharedMut<f32>,
    first_panel: usize,
}

impl<'a> Part<'a> {
    fn new(p: &'a mut Product, x: &[f32], n_tokens: usize) -> Part<'a> {
        let row_bytes = p.w.row_bytes();
        assert_eq!(x.len(), n_tokens * p.w.k);
        assert_eq!(p.out.len(), n_tokens * p.w.rows);
        if let Some(bias) = p.bias {
            assert_eq!(bias.len(), p.w.rows);
        }
        Part { w: p.w, row_bytes, bias: p.bias, out: SharedMut(p.out.as_mut_ptr()), first_panel: 0 }
    }
}

/// Numbers the panels (of `width` rows) of every part one after the other; returns the total.
fn number_panels(parts: &mut [Part], width: usize) -> usize {
    let mut total = 0;
    for p in parts.iter_mut() {
        p.first_panel = total;
        total += p.w.rows.div_ceil(width);
    }
    total
}

/// Calls `body(part, its panels)` for the panels of `range` (the group's numbering), split
/// where one part's panels end and the next one's begin.
fn for_parts_in(parts: &[Part], width: usize, range: Range<usize>, mut body: impl FnMut(&Part, Range<usize>)) {
    for p in parts {
        let end = p.first_panel + p.w.rows.div_ceil(width);
        let (start, stop) = (range.start.max(p.first_panel), range.end.min(end));
        if start < stop {
            body(p, start - p.first_panel..stop - p.first_panel);
        }
    }
}

fn matmuls_exact(pool: &ThreadPool, x: &[f32], n_tokens: usize, parts: &[Part]) {
    let mut parts = parts.to_vec();
    let n_panels = number_panels(&mut parts, NR);
    PACKED_TOKENS.with(|packed| {
        let mut packed = packed.borrow_mut();
        let packed = pack_all_tokens(pool, x, n_tokens, parts[0].w.k, &mut packed);
        pool.for_ranges_guided(n_panels, TASK_PANELS, |range| {
            PANELS.with(|scratch| {
                let scratch = &mut scratch.borrow_mut();
                for_parts_in(&parts, NR, range, |p, panels| panels_times_tokens(packed, n_tokens, p.w, p.row_bytes, panels, p.bias, p.out, scratch));
            });
        });
    });
}

/// Panels multiplied together per task, at most: their slices of k (16 KiB each) stay in L2
/// next to a chunk of tokens, which each panel of the task then reads from L2.
const TASK_PANELS: usize = 8;
/// Blocks of MR tokens per chunk: 96 tokens, a 96 KiB slice of them.
const CHUNK_BLOCKS: usize = 16;

thread_local! {
    /// The calling thread's packed tokens, and each thread's dequantized rows and packed
    /// panels, kept between matmuls: fresh buffers of megabytes would be zeroed every time.
    static PACKED_TOKENS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static PANELS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each thread's 8-bit panel, made on its first use: one per handed-out range had been
    /// an allocation and zeroing of ~20 KiB per panel of 8 rows.
    static PANEL8: std::cell::RefCell<Option<Panel8>> = const { std::cell::RefCell::new(None) };
}

/// Every block of MR tokens of `x` packed as the tile reads them ([`pack_tokens`]): block b's
/// element i of token t at [(b·k + i)·MR + t]. The tile then streams one buffer, where rows
/// of x would be MR strided streams, each far from the next.
fn pack_all_tokens<'p>(pool: &ThreadPool, x: &[f32], n_tokens: usize, k: usize, packed: &'p mut Vec<f32>) -> &'p [f32] {
    let n_blocks = n_tokens.div_ceil(MR);
    // Every value is written below (zeros past the last token), so old contents may stay;
    // the buffer only grows, as zeroing its growth anew for every matmul of a wider k was a
    // serial memset.
    let len = n_blocks * k * MR;
    grow(packed, len);
    let packed = &mut packed[..len];
    let dst = SharedMut(packed.as_mut_ptr());
    pool.for_ranges(n_blocks, 1, |blocks| {
        for b in blocks {
            // SAFETY: block b alone writes its k·MR values, inside the buffer.
            let block = unsafe { std::slice::from_raw_parts_mut(dst.at(b * k * MR), k * MR) };
            pack_tokens(x, k, b * MR, block);
        }
    });
    packed
}

/// The output columns of `panels` (NR weight rows each, the matrix's last panel maybe
/// fewer) for every token. Each slice of k of the panels is dequantized and packed once, then
/// the tokens go past in chunks, each chunk meeting every panel while it is in L2.
#[allow(clippy::too_many_arguments)]
fn panels_times_tokens(packed: &[f32], n_tokens: usize, w: Matrix, row_bytes: usize, panels: Range<usize>, bias: Option<&[f32]>, out: SharedMut<f32>, scratch: &mut Vec<f32>) {
    let k = w.k;
    let block = w.dtype.block_size();
    let to_f32 = simd::to_f32(w.dtype);
    let mut buf = [0u8; GATHER_BYTES];
    scratch.resize((panels.len() + 1) * KC * NR, 0.0);
    let (rows_f32, packed_panels) = scratch.split_at_mut(KC * NR);
    let cols_of = |p: usize| p * NR..((p + 1) * NR).min(w.rows);
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for (p, panel) in panels.clone().zip(packed_panels.chunks_exact_mut(KC * NR)) {
            let cols = cols_of(p);
            if k0 == 0 && p + 1 < panels.end {
                // The next panel's first slice, from memory while this one converts: the
                // later slices are fetched while the tiles run (below), the first had no
                // such time and stalled on every row.
                w.prefetch_rows(cols_of(p + 1), 0..kc / block, row_bytes);
            }
            if let (Layout::Rows, NR) = (w.layout, cols.len()) {
                let rows = &w.bytes[cols.start * row_bytes + k0 / block * w.dtype.type_size()..];
                if pack_panel_widening(w.dtype, rows, row_bytes, kc, &mut panel[..kc * NR]) {
                    continue;
                }
            }
            for (c, j) in cols.clone().enumerate() {
                to_f32(w.row_blocks(j, k0 / block..(k0 + kc) / block, row_bytes, &mut buf), &mut rows_f32[c * KC..][..kc]);
            }
            pack_panel(rows_f32, KC, cols.len(), kc, &mut panel[..kc * NR]);
        }
        for t0 in (0..n_tokens).step_by(CHUNK_BLOCKS * MR) {
            let chunk = (CHUNK_BLOCKS * MR).min(n_tokens - t0);
            let x = &packed[(t0 / MR * k + k0) * MR..];
            for (p, panel) in panels.clone().zip(packed_panels.chunks_exact(KC * NR)) {
                let cols = cols_of(p);
                if t0 == 0 && k0 + KC < k {
                    // The next slice of this panel's rows, from memory into L2 while the
                    // tiles run: converting it had stalled on every row's first line.
                    w.prefetch_rows(cols.clone(), (k0 + KC) / block..(k0 + 2 * KC).min(k) / block, row_bytes);
                }
                if cols.len() == NR {
                    // SAFETY: the tiles cover tokens t0..t0 + chunk and this panel's NR
                    // columns, inside the n_tokens × rows output, and no other thread
                    // writes this panel.
                    unsafe { tiles_along_tokens(chunk, kc, x, k * MR, panel, NR, out.at(t0 * w.rows + cols.start), w.rows, k0 > 0) };
                    continue;
                }
                // The last, partial panel goes through a local tile.
                for b0 in (0..chunk).step_by(MR) {
                    let mr = MR.min(chunk - b0);
                    let mut acc = [0f32; MR * NR];
                    // SAFETY: acc holds MR rows of NR.
                    unsafe { tile(mr, kc, TileTokens::Packed(&x[b0 / MR * k * MR..]), panel, NR, acc.as_mut_ptr(), NR, false) };
                    store_partial_tile(&acc, NR, mr, t0 + b0, cols.clone(), w.rows, k0 > 0, out);
                }
            }
        }
    }
    for p in panels {
        add_bias(bias, n_tokens, cols_of(p), w.rows, out);
    }
}

/// A tile of `mr` tokens computed into `acc` (rows of `nr`) for a panel narrower than the
/// tile (`cols`, the matrix's last rows): stored, or added when `accumulate` (k slices after
/// the first), into the n_tokens × `rows` output.
#[allow(clippy::too_many_arguments)]
fn store_partial_tile(acc: &[f32], nr: usize, mr: usize, t0: usize, cols: Range<usize>, rows: usize, accumulate: bool, out: SharedMut<f32>) {
    for t in 0..mr {
        for (c, j) in cols.clone().enumerate() {
            // SAFETY: columns `cols` belong to the caller's panel, which no other thread
            // writes, and (t0 + t, j) lies inside the output.
            unsafe {
                let o = out.at((t0 + t) * rows + j);
                *o = if accumulate { *o + acc[t * nr + c] } else { acc[t * nr + c] };
            }
        }
    }
}

/// Adds the bias of output columns `cols` for every token, once the panel is done.
fn add_bias(bias: Option<&[f32]>, n_tokens: usize, cols: Range<usize>, rows: usize, out: SharedMut<f32>) {
    let Some(bias) = bias else { return };
    for t in 0..n_tokens {
        for j in cols.clone() {
            // SAFETY: as in `store_partial_tile`.
            unsafe { *out.at(t * rows + j) += bias[j] };
        }
    }
}

/// `x`: n_tokens × k, row-major; `out`: n_tokens × rows, with the activations quantized to 8
/// bits per 32 values (Q8_1's rounding) and the weights read as integer levels (the table's
/// [`crate::dtype::TypeTraits::levels`]): the prefill counterpart of [`matvec_quantized`], as
/// accurate as the one-token steps. Returns false, computing nothing, for a weight type
/// without levels; the caller then uses [`matmul`].
pub fn matmul_8bit(pool: &ThreadPool, x: &[f32], n_tokens: usize, w: Matrix, bias: Option<&[f32]>, out: &mut [f32]) -> bool {
    if w.dtype.traits().levels.is_none() {
        return false;
    }
    matmuls(pool, x, n_tokens, &mut [Product { w, bias, out }], true);
    true
}

/// [`matmul_8bit`] for parts that all have levels, quantizing the tokens once.
fn matmuls_by_levels(pool: &ThreadPool, x: &[f32], n_tokens: usize, parts: &[Part]) {
    let mut parts = parts.to_vec();
    let n_panels = number_panels(&mut parts, NR8);
    let k = parts[0].w.k;
    let tokens = TokenLevels::quantize(pool, x, n_tokens, k);
    let tokens = Tokens { levels: &tokens.levels, scales: &tokens.scales, sums: &tokens.sums, k };
    pool.for_ranges(n_panels, 1, |range| {
        PANEL8.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let scratch = scratch.get_or_insert_with(Panel8::new);
            for_parts_in(&parts, NR8, range, |p, panels| {
                let levels = p.w.dtype.traits().levels.expect("parts with levels only");
                for panel in panels {
                    let cols = panel * NR8..((panel + 1) * NR8).min(p.w.rows);
                    panel_times_tokens_8bit(&tokens, n_tokens, p.w, p.row_bytes, levels, cols, p.bias, p.out, scratch);
                }
            });
        });
    });
}

/// Activations quantized as Q8_1 (the decode kernels' rounding), unpacked for the 8-bit tile.
struct TokenLevels {
    levels: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

impl TokenLevels {
    /// Laid out as [`Tokens`] describes, n_tokens rounded up to MR8 with zero tokens.
    fn quantize(pool: &ThreadPool, x: &[f32], n_tokens: usize, k: usize) -> TokenLevels {
        let nb = k / 32;
        let padded = n_tokens.div_ceil(MR8) * MR8;
        let mut t = TokenLevels { levels: vec![0; padded * k], scales: vec![0.0; padded * nb], sums: vec![0.0; padded * nb] };
        let quantize = simd::quantize_activations(DType::Q8_1);
        let (levels, scales, sums) = (SharedMut(t.levels.as_mut_ptr()), SharedMut(t.scales.as_mut_ptr()), SharedMut(t.sums.as_mut_ptr()));
        pool.for_ranges(n_tokens, 4, |range| {
            let mut blocks = vec![0u8; nb * crate::quants::q8_1::BLOCK_BYTES];
            for token in range {
                quantize(&x[token * k..(token + 1) * k], &mut blocks);
                for (b, block) in blocks.chunks_exact(crate::quants::q8_1::BLOCK_BYTES).enumerate() {
                    // d·Σq from the levels in f32, not Q8_1's f16 s: the offset types
                    // multiply it by their offset, and f16 would cost 11 bits there.
                    let d = crate::quants::f16_at(block, 0);
                    let level_sum: i32 = block[4..].iter().map(|&q| q as i8 as i32).sum();
                    let at = Tokens::block_at(k, token, b);
                    // SAFETY: a token's levels, scales and sums belong to this range alone;
                    // `level_at` and `block_at` stay inside the padded buffers.
                    unsafe {
                        *scales.at(at) = d;
                        *sums.at(at) = d * level_sum as f32;
                        for g in 0..8 {
                            std::ptr::copy_nonoverlapping(block[4 + 4 * g..].as_ptr(), levels.at(Tokens::level_at(k, token, b * 32 + 4 * g)).cast::<u8>(), 4);
                        }
                    }
                }
            }
        });
        t
    }
}

/// Elements of k per 8-bit panel: the levels are a quarter of f32's size, so a panel of 8
/// rows × 2048 (16 KiB) still sits in L1, and each tile call has 64 blocks of work.
const KC_8BIT: usize = 2048;
const KC_BLOCKS_8BIT: usize = KC_8BIT / 32;
// An interleaved group is one 8-bit panel.
const _: () = assert!(NR8 == GROUP);

/// One thread's 8-bit panel: levels interleaved as the tile reads them, scales and offsets,
/// and one row's unpacked slice on its way in.
struct Panel8 {
    levels: Vec<u8>,
    scales: Vec<f32>,
    offsets: Vec<f32>,
    row_levels: Vec<u8>,
    row_scales: Vec<f32>,
    row_offsets: Vec<f32>,
    gathered: Vec<u8>,
}

impl Panel8 {
    fn new() -> Panel8 {
        Panel8 {
            levels: vec![0; KC_8BIT * NR8],
            scales: vec![0.0; KC_BLOCKS_8BIT * NR8],
            offsets: vec![0.0; KC_BLOCKS_8BIT * NR8],
            row_levels: vec![0; KC_8BIT],
            row_scales: vec![0.0; KC_BLOCKS_8BIT],
            row_offsets: vec![0.0; KC_BLOCKS_8BIT],
            gathered: vec![0; GATHER_BYTES],
        }
    }
}

impl Panel8 {
    /// Rows `cols` (≤ NR8) of `w`, values k0..k0 + kc, unpacked into the panel.
    fn fill(&mut self, w: &Matrix, row_bytes: usize, levels: AffineLevels, cols: Range<usize>, k0: usize, kc: usize) {
        let (block, type_size) = (w.dtype.block_size(), w.dtype.type_size());
        if let (Layout::Interleaved8, Some(panel_block)) = (w.layout, interleave::panel_block(w.dtype)) {
            // The group is the panel's 8 rows: its chunks unpack straight into place.
            let group = w.group(cols.start / GROUP, row_bytes);
            let (group_block, per_block) = (GROUP * type_size, block / 32);
            for b in 0..kc / block {
                let group_block = &group[(k0 / block + b) * group_block..][..group_block];
                let (levels, scales) = (b * NR8 * block..(b + 1) * NR8 * block, b * NR8 * per_block..(b + 1) * NR8 * per_block);
                panel_block(group_block, &mut self.levels[levels], &mut self.scales[scales.clone()], &mut self.offsets[scales]);
            }
            return;
        }
        // Rows past the matrix stay zero (scale and offset 0: they add nothing).
        self.levels[..kc * NR8].fill(0);
        self.scales.fill(0.0);
        self.offsets.fill(0.0);
        let n_blocks = kc / 32;
        for (r, j) in cols.enumerate() {
            let bytes = w.row_blocks(j, k0 / block..(k0 + kc) / block, row_bytes, &mut self.gathered);
            for (i, weight_block) in bytes.chunks_exact(type_size).enumerate() {
                let (values, groups) = (i * block..(i + 1) * block, i * block / 32..(i + 1) * block / 32);
                (levels.unpack)(weight_block, &mut self.row_levels[values], &mut self.row_scales[groups.clone()], &mut self.row_offsets[groups]);
            }
            for b in 0..n_blocks {
                for g in 0..8 {
                    self.levels[(b * 8 + g) * 32 + 4 * r..][..4].copy_from_slice(&self.row_levels[b * 32 + 4 * g..][..4]);
                }
                self.scales[b * NR8 + r] = self.row_scales[b];
                self.offsets[b * NR8 + r] = self.row_offsets[b];
            }
        }
    }
}

/// Weight rows `cols` (≤ NR8) for every token, 8-bit: each KC_8BIT slice of the rows is unpacked
/// into levels interleaved as the tile reads them, then every token tile runs over it.
#[allow(clippy::too_many_arguments)]
fn panel_times_tokens_8bit(tokens: &Tokens, n_tokens: usize, w: Matrix, row_bytes: usize, levels: AffineLevels, cols: Range<usize>, bias: Option<&[f32]>, out: SharedMut<f32>, panel: &mut Panel8) {
    let k = w.k;
    for k0 in (0..k).step_by(KC_8BIT) {
        let kc = KC_8BIT.min(k - k0);
        let n_blocks = kc / 32;
        panel.fill(&w, row_bytes, levels, cols.clone(), k0, kc);
        let (panel_levels, scales, offsets) = (&panel.levels[..], &panel.scales[..], &panel.offsets[..]);
        for t0 in (0..n_tokens).step_by(MR8) {
            let mr = MR8.min(n_tokens - t0);
            if cols.len() == NR8 {
                // SAFETY: the tile covers tokens t0..t0 + mr and this panel's NR8 columns,
                // inside the n_tokens × rows output, and no other thread writes this panel.
                unsafe { tile_i8(mr, tokens, t0, k0 / 32, n_blocks, panel_levels, scales, offsets, levels.range, out.at(t0 * w.rows + cols.start), w.rows, k0 > 0) };
            } else {
                let mut acc = [0f32; MR8 * NR8];
                // SAFETY: acc holds MR8 rows of NR8.
                unsafe { tile_i8(mr, tokens, t0, k0 / 32, n_blocks, panel_levels, scales, offsets, levels.range, acc.as_mut_ptr(), NR8, false) };
                store_partial_tile(&acc, NR8, mr, t0, cols.clone(), w.rows, k0 > 0, out);
            }
        }
    }
    add_bias(bias, n_tokens, cols, w.rows, out);
}

/// One token against a matrix, its activations `xq` quantized to `kernel.act_type` by
/// [`quantize_activations`]; `out` has one value per weight row.
pub fn matvec_quantized(pool: &ThreadPool, xq: &[u8], kernel: VecDot, w: Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
    matvecs(pool, [Matvec { x: TokenInput::Quantized { xq, kernel }, w, bias, out }]);
}

/// The most matrices [`matvecs`] takes at once (q, k and v are three).
pub const MAX_GROUPED_MATVECS: usize = 4;

/// One token's activations as a matvec reads them: quantized to `kernel.act_type` (integer
/// dot products), or f32 (exact: the 16-bit float types, and `--exact`).
#[derive(Clone, Copy)]
pub enum TokenInput<'a> {
    Quantized { xq: &'a [u8], kernel: VecDot },
    Exact(&'a [f32]),
}

/// One token against a matrix: an operand of [`matvecs`].
pub struct Matvec<'a> {
    pub x: TokenInput<'a>,
    pub w: Matrix<'a>,
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
}

/// One token against several matrices (q, k and v; gate and up): the rows of all of them
/// are handed out as one set of ranges, so the threads meet once per group rather than once
/// per matrix (a SmolLM2 decode step had 240 meetings, 90 of them saved this way). At most
/// [`MAX_GROUPED_MATVECS`] matrices; nothing is allocated (decode allocates nothing).
pub fn matvecs<'a>(pool: &ThreadPool, products: impl IntoIterator<Item = Matvec<'a>>) {
    let mut shares: [Option<MatvecShare>; MAX_GROUPED_MATVECS] = [const { None }; MAX_GROUPED_MATVECS];
    let mut n_ranges = 0;
    for (i, p) in products.into_iter().enumerate() {
        assert!(i < MAX_GROUPED_MATVECS, "more than {MAX_GROUPED_MATVECS} matvecs in one group");
        let share = MatvecShare::new(p, pool, n_ranges);
        n_ranges += share.w.rows.div_ceil(share.step);
        shares[i] = Some(share);
    }
    pool.for_ranges(n_ranges, 1, |ranges| {
        for r in ranges {
            let share = shares.iter().flatten().rev().find(|s| s.first_range <= r).expect("range 0 is the first share's");
            let start = (r - share.first_range) * share.step;
            share.rows(start..(start + share.step).min(share.w.rows));
        }
    });
}

/// A checked [`Matvec`] as the threads share it: its output a pointer, its rows cut into
/// ranges of `step`, numbered from `first_range` in the group.
struct MatvecShare<'a> {
    x: TokenInput<'a>,
    w: Matrix<'a>,
    row_bytes: usize,
    bias: Option<&'a [f32]>,
    out: SharedMut<f32>,
    step: usize,
    first_range: usize,
}

impl<'a> MatvecShare<'a> {
    fn new(p: Matvec<'a>, pool: &ThreadPool, first_range: usize) -> MatvecShare<'a> {
        let row_bytes = p.w.row_bytes();
        match p.x {
            TokenInput::Quantized { xq, kernel } => {
                assert_eq!(Some(xq.len()), kernel.act_type.row_bytes(p.w.k), "activations quantized for another length");
                assert!(p.w.layout == Layout::Rows || kernel.group.is_some(), "matrices are interleaved only for types with a group kernel");
            }
            TokenInput::Exact(x) => assert_eq!(x.len(), p.w.k),
        }
        assert_eq!(p.out.len(), p.w.rows);
        if let Some(bias) = p.bias {
            assert_eq!(bias.len(), p.w.rows);
        }
        let step = match p.w.layout {
            Layout::Interleaved8 => grain(pool, p.w.rows).next_multiple_of(GROUP),
            Layout::Rows => grain(pool, p.w.rows),
        };
        MatvecShare { x: p.x, w: p.w, row_bytes, bias: p.bias, out: SharedMut(p.out.as_mut_ptr()), step, first_range }
    }

    fn bias_of(&self, j: usize) -> f32 {
        self.bias.map_or(0.0, |b| b[j])
    }

    /// Output rows `rows` (whole groups, for an interleaved matrix).
    fn rows(&self, rows: Range<usize>) {
        match self.x {
            TokenInput::Quantized { xq, kernel } => self.quantized_rows(xq, kernel, rows),
            TokenInput::Exact(x) => self.exact_rows(x, rows),
        }
    }

    fn quantized_rows(&self, xq: &[u8], kernel: VecDot, rows: Range<usize>) {
        let (w, out, row_bytes) = (self.w, self.out, self.row_bytes);
        if let (Layout::Interleaved8, Some(group_kernel)) = (w.layout, kernel.group) {
            for g in rows.start / GROUP..rows.end / GROUP {
                for (r, value) in group_kernel(w.group(g, row_bytes), xq).into_iter().enumerate() {
                    let j = g * GROUP + r;
                    // SAFETY: the rows of group g belong to this range alone.
                    unsafe { *out.at(j) = value + self.bias_of(j) };
                }
            }
            return;
        }
        let mut j = rows.start;
        if let Some(pair) = kernel.pair {
            while j + 2 <= rows.end {
                let [a, b] = pair(w.row(j, row_bytes), w.row(j + 1, row_bytes), xq);
                // SAFETY: rows j and j + 1 belong to this range alone, inside `out` (w.rows long).
                unsafe { (*out.at(j), *out.at(j + 1)) = (a + self.bias_of(j), b + self.bias_of(j + 1)) };
                j += 2;
            }
        }
        for j in j..rows.end {
            // SAFETY: row j belongs to this range alone and j < w.rows = out.len().
            unsafe { *out.at(j) = (kernel.dot)(w.row(j, row_bytes), xq) + self.bias_of(j) };
        }
    }

    /// Rows dotted in place with the f32 activations: a run of rows in one call where this
    /// CPU has such a kernel (the 16-bit floats), else row by row (gathered from a group).
    fn exact_rows(&self, x: &[f32], rows: Range<usize>) {
        let (w, row_bytes) = (self.w, self.row_bytes);
        if let (Layout::Rows, Some(dot_rows)) = (w.layout, simd::dot_rows_f32(w.dtype)) {
            // SAFETY: these rows belong to this range alone, inside `out` (w.rows long).
            let out = unsafe { std::slice::from_raw_parts_mut(self.out.at(rows.start), rows.len()) };
            dot_rows(&w.bytes[rows.start * row_bytes..rows.end * row_bytes], x, out);
            if let Some(bias) = self.bias {
                out.iter_mut().zip(&bias[rows]).for_each(|(o, b)| *o += b);
            }
            return;
        }
        let dot = simd::dot_f32(w.dtype);
        let mut buf = [0u8; GATHER_BYTES];
        for j in rows {
            // SAFETY: row j belongs to this range alone and j < w.rows = out.len().
            unsafe { *self.out.at(j) = w.exact_row_dot(dot, j, row_bytes, x, &mut buf) + self.bias_of(j) };
        }
    }
}

/// x quantized to `act_type` (the weight type's `vec_dot_type`) into `out`, which must hold
/// exactly `act_type.row_bytes(x.len())` bytes.
pub fn quantize_activations(x: &[f32], act_type: DType, out: &mut [u8]) {
    simd::quantize_activations(act_type)(x, out);
}

/// Rows per handed-out range in the one-token forms: about 8 ranges per thread, so a thread
/// slowed down by another process gives its share away, and no fewer than 16 rows so the
/// hand-out stays cheap next to the work.
fn grain(pool: &ThreadPool, rows: usize) -> usize {
    (rows / (8 * pool.n_threads())).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        k: usize,
        rows: usize,
        w_f32: Vec<f32>,
        bias: Vec<f32>,
    }

    fn random(seed: &mut u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (*seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn quantized(dtype: DType, case: &Case) -> (Vec<u8>, Vec<f32>) {
        let row_bytes = dtype.row_bytes(case.k).unwrap();
        let mut w = vec![0u8; row_bytes * case.rows];
        for (src, dst) in case.w_f32.chunks_exact(case.k).zip(w.chunks_exact_mut(row_bytes)) {
            (dtype.traits().from_f32.unwrap())(src, dst);
        }
        let mut deq = vec![0f32; case.k * case.rows];
        (dtype.traits().to_f32)(&w, &mut deq);
        (w, deq)
    }

    /// The 8-bit prefill against an f64 triple loop over the dequantized weight and the
    /// dequantized Q8_1 activations (what it multiplies, so only f32 rounding separates
    /// them), for every type with levels: partial panels and tiles, two k slices, 1 and 3
    /// threads, a bias. Types without levels decline.
    #[test]
    fn matmul_8bit_matches_its_dequantized_reference() {
        let mut seed = 5u32;
        // k spans two KC_8BIT slices, the second partial.
        let (k, rows) = (KC_8BIT + 512, 37);
        let case = Case { k, rows, w_f32: random(&mut seed, k * rows), bias: random(&mut seed, rows) };
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for &dtype in DType::ALL {
                if dtype.traits().from_f32.is_none() || dtype.row_bytes(k).is_none() {
                    continue;
                }
                let (w, deq) = quantized(dtype, &case);
                let matrix = Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows };
                for n_tokens in [2, 5, 9] {
                    let x = random(&mut seed, n_tokens * k);
                    let mut out = vec![f32::NAN; n_tokens * rows];
                    let handled = matmul_8bit(&pool, &x, n_tokens, matrix, Some(&case.bias), &mut out);
                    assert_eq!(handled, dtype.traits().levels.is_some(), "{dtype}");
                    if !handled {
                        continue;
                    }
                    for t in 0..n_tokens {
                        let mut xq = vec![0u8; DType::Q8_1.row_bytes(k).unwrap()];
                        quantize_activations(&x[t * k..(t + 1) * k], DType::Q8_1, &mut xq);
                        let mut xd = vec![0f32; k];
                        (DType::Q8_1.traits().to_f32)(&xq, &mut xd);
                        for j in 0..rows {
                            let exact: f64 = (0..k).map(|i| deq[j * k + i] as f64 * xd[i] as f64).sum::<f64>() + case.bias[j] as f64;
                            let magnitude: f64 = (0..k).map(|i| (deq[j * k + i] as f64 * xd[i] as f64).abs()).sum::<f64>();
                            let got = out[t * rows + j] as f64;
                            assert!((got - exact).abs() <= 1e-5 * magnitude + 1e-6, "{dtype} threads={threads} n_tokens={n_tokens} t={t} j={j}: {got} vs {exact}");
                        }
                    }
                }
            }
        }
    }

    /// A group of matmuls of one input gives each matrix's own result bit for bit (the same
    /// tiles over the same k slices): mixed types, with and without levels and with and
    /// without a bias, row counts that end in partial panels and make ranges cross from one
    /// matrix to the next, exact and 8-bit, 1 and 3 threads.
    #[test]
    fn grouped_matmuls_equal_separate_ones() {
        let mut seed = 11u32;
        let k = 512;
        let shapes = [(DType::Q4_0, 40), (DType::F16, 21), (DType::Q6_K, 16), (DType::Q8_0, 75)];
        let weights: Vec<(DType, usize, Vec<u8>, Vec<f32>)> = shapes
            .iter()
            .map(|&(dtype, rows)| {
                let case = Case { k, rows, w_f32: random(&mut seed, k * rows), bias: random(&mut seed, rows) };
                (dtype, rows, quantized(dtype, &case).0, case.bias)
            })
            .collect();
        fn matrix((dtype, rows, w, _): &(DType, usize, Vec<u8>, Vec<f32>)) -> Matrix<'_> {
            Matrix { bytes: w, dtype: *dtype, k: 512, rows: *rows, layout: Layout::Rows }
        }
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for eight_bit in [false, true] {
                // One token: the exact form only (the one-token matvecs, grouped).
                for n_tokens in [1, 2, 13].into_iter().filter(|&n| n > 1 || !eight_bit) {
                    let x = random(&mut seed, n_tokens * k);
                    let bias = |i: usize| (i % 2 == 0).then_some(&weights[i].3[..]);
                    let mut separate: Vec<Vec<f32>> = weights.iter().map(|w| vec![f32::NAN; n_tokens * w.1]).collect();
                    for (i, out) in separate.iter_mut().enumerate() {
                        let m = matrix(&weights[i]);
                        if !(eight_bit && matmul_8bit(&pool, &x, n_tokens, m, bias(i), out)) {
                            matmul(&pool, &x, n_tokens, m, bias(i), out);
                        }
                    }
                    let mut grouped: Vec<Vec<f32>> = weights.iter().map(|w| vec![f32::NAN; n_tokens * w.1]).collect();
                    let mut products: Vec<Product> = grouped.iter_mut().enumerate().map(|(i, out)| Product { w: matrix(&weights[i]), bias: bias(i), out }).collect();
                    matmuls(&pool, &x, n_tokens, &mut products, eight_bit);
                    for (i, (a, b)) in separate.iter().zip(&grouped).enumerate() {
                        let same = a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} threads={threads} eight_bit={eight_bit} n_tokens={n_tokens}", weights[i].0);
                    }
                }
            }
        }
    }

    /// One token against several matrices at once (quantized activations of two types,
    /// interleaved and row-major matrices, row counts that leave partial ranges) writes every
    /// row as one matrix at a time does, bit for bit.
    #[test]
    fn grouped_matvecs_equal_separate_ones() {
        let mut seed = 12u32;
        let k = 512;
        let kernels: Vec<VecDot> = [DType::Q4_0, DType::Q4_K, DType::Q6_K, DType::Q8_0].map(|dtype| simd::vec_dot(dtype).unwrap()).to_vec();
        // Interleaved where this CPU has the group kernel.
        let interleaved = |i: usize, wanted: Layout| if kernels[i].group.is_some() { wanted } else { Layout::Rows };
        let shapes = [(DType::Q4_0, 40, Layout::Rows), (DType::Q4_K, 16, interleaved(1, Layout::Interleaved8)), (DType::Q6_K, 72, interleaved(2, Layout::Interleaved8)), (DType::Q8_0, 75, Layout::Rows)];
        let weights: Vec<(Vec<u8>, Vec<f32>)> = shapes
            .iter()
            .map(|&(dtype, rows, layout)| {
                let case = Case { k, rows, w_f32: random(&mut seed, k * rows), bias: random(&mut seed, rows) };
                let w = quantized(dtype, &case).0;
                let w = match layout {
                    Layout::Rows => w,
                    Layout::Interleaved8 => {
                        let mut out = vec![0u8; w.len()];
                        interleave::interleave(dtype, dtype.row_bytes(k).unwrap(), &w, &mut out);
                        out
                    }
                };
                (w, case.bias)
            })
            .collect();
        let x = random(&mut seed, k);
        let xq: Vec<Vec<u8>> = kernels
            .iter()
            .map(|kernel| {
                let mut xq = vec![0u8; kernel.act_type.row_bytes(k).unwrap()];
                quantize_activations(&x, kernel.act_type, &mut xq);
                xq
            })
            .collect();
        let matrix = |i: usize| {
            let (dtype, rows, layout) = shapes[i];
            Matrix { bytes: &weights[i].0, dtype, k, rows, layout }
        };
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let bias = |i: usize| (i % 2 == 0).then_some(&weights[i].1[..]);
            let mut separate: Vec<Vec<f32>> = shapes.iter().map(|s| vec![f32::NAN; s.1]).collect();
            for (i, out) in separate.iter_mut().enumerate() {
                matvec_quantized(&pool, &xq[i], kernels[i], matrix(i), bias(i), out);
            }
            let mut grouped: Vec<Vec<f32>> = shapes.iter().map(|s| vec![f32::NAN; s.1]).collect();
            let products = grouped.iter_mut().enumerate().map(|(i, out)| Matvec { x: TokenInput::Quantized { xq: &xq[i], kernel: kernels[i] }, w: matrix(i), bias: bias(i), out });
            matvecs(&pool, products);
            for (i, (a, b)) in separate.iter().zip(&grouped).enumerate() {
                assert!(a.iter().all(|v| v.is_finite()), "{} threads={threads}: a row was not written", shapes[i].0);
                let same = a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{} threads={threads}", shapes[i].0);
            }
        }
    }

    /// Every path over an interleaved matrix gives the row-major matrix's results: the
    /// batch paths bit for bit (they read the same blocks), the one-token paths to f32
    /// summation order (the exact one sums k in slices, the group kernel in another order).
    /// k spans two slices, 40 rows are 5 groups, 1 and 3 threads.
    #[test]
    fn interleaved_matrices_give_the_row_major_results() {
        let mut seed = 9u32;
        let (k, rows) = (KC_8BIT + 512, 40);
        let case = Case { k, rows, w_f32: random(&mut seed, k * rows), bias: random(&mut seed, rows) };
        let interleavable = [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4_K, DType::Q6_K];
        for dtype in DType::ALL.iter().filter(|t| simd::vec_dot(**t).is_some_and(|kernel| kernel.group.is_some())) {
            assert!(interleavable.contains(dtype) && interleave::fields(*dtype).is_some(), "{dtype} has a group kernel but is not interleaved here");
        }
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for dtype in interleavable {
                let (w, _) = quantized(dtype, &case);
                let mut interleaved = vec![0u8; w.len()];
                interleave::interleave(dtype, dtype.row_bytes(k).unwrap(), &w, &mut interleaved);
                let row_major = Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows };
                let grouped = Matrix { bytes: &interleaved, layout: Layout::Interleaved8, ..row_major };
                let bias = Some(&case.bias[..]);
                let close = |a: &[f32], b: &[f32], what: &str| {
                    for (j, (a, b)) in a.iter().zip(b).enumerate() {
                        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{dtype} threads={threads} {what} row {j}: {a} vs {b}");
                    }
                };
                for n_tokens in [1, 3] {
                    let x = random(&mut seed, n_tokens * k);
                    let (mut expected, mut got) = (vec![0f32; n_tokens * rows], vec![f32::NAN; n_tokens * rows]);
                    matmul(&pool, &x, n_tokens, row_major, bias, &mut expected);
                    matmul(&pool, &x, n_tokens, grouped, bias, &mut got);
                    if n_tokens == 1 {
                        close(&got, &expected, "exact one token");
                    } else {
                        assert_eq!(got, expected, "{dtype} threads={threads} exact batch");
                    }
                    if matmul_8bit(&pool, &x, n_tokens, row_major, bias, &mut expected) {
                        assert!(matmul_8bit(&pool, &x, n_tokens, grouped, bias, &mut got));
                        assert_eq!(got, expected, "{dtype} threads={threads} 8-bit batch");
                    }
                }
                let Some(kernel) = simd::vec_dot(dtype).filter(|kernel| kernel.group.is_some()) else { continue };
                let x = random(&mut seed, k);
                let mut xq = vec![0u8; kernel.act_type.row_bytes(k).unwrap()];
                quantize_activations(&x, kernel.act_type, &mut xq);
                let (mut expected, mut got) = (vec![0f32; rows], vec![f32::NAN; rows]);
                matvec_quantized(&pool, &xq, kernel, row_major, bias, &mut expected);
                matvec_quantized(&pool, &xq, kernel, grouped, bias, &mut got);
                close(&got, &expected, "group kernel");
            }
        }
    }

    /// Exact paths against a plain f64 triple loop over the dequantized weight, for every
    /// type, one and many tokens (including token counts that leave partial tiles), a row
    /// count that leaves a partial panel, k spanning several KC slices, tokens in more than
    /// one chunk, 1 and 3 threads.
    #[test]
    fn matmul_matches_dequantized_reference() {
        let mut seed = 1u32;
        let (k, rows) = (768, 37);
        let case = Case { k, rows, w_f32: random(&mut seed, k * rows), bias: random(&mut seed, rows) };
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for &dtype in DType::ALL {
                let (w, deq) = quantized(dtype, &case);
                let matrix = Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows };
                for n_tokens in [1, 2, 7, 13, 101] {
                    let x = random(&mut seed, n_tokens * k);
                    let mut out = vec![f32::NAN; n_tokens * rows];
                    matmul(&pool, &x, n_tokens, matrix, Some(&case.bias), &mut out);
                    for t in 0..n_tokens {
                        for j in 0..rows {
                            let exact: f64 = (0..k).map(|i| deq[j * k + i] as f64 * x[t * k + i] as f64).sum::<f64>() + case.bias[j] as f64;
                            let got = out[t * rows + j] as f64;
                            assert!((got - exact).abs() < 1e-4, "{dtype} threads={threads} n_tokens={n_tokens} t={t} j={j}: {got} vs {exact}");
                        }
                    }
                }
            }
        }
    }

    /// The quantized-activation path against the same reference with x quantized the same
    /// way: only f32 rounding differs.
    #[test]
    fn matvec_quantized_matches_reference() {
        let mut seed = 5u32;
        let (k, rows) = (512, 45);
        let case = Case { k, rows, w_f32: random(&mut seed, k * rows), bias: random(&mut seed, rows) };
        let pool = ThreadPool::new(2).unwrap();
        for &dtype in DType::ALL {
            let Some(kernel) = simd::vec_dot(dtype) else { continue };
            let (w, deq) = quantized(dtype, &case);
            let x = random(&mut seed, k);
            let mut xq = vec![0u8; kernel.act_type.row_bytes(k).unwrap()];
            quantize_activations(&x, kernel.act_type, &mut xq);
            let mut xd = vec![0f32; k];
            (kernel.act_type.traits().to_f32)(&xq, &mut xd);
            let mut out = vec![f32::NAN; rows];
            matvec_quantized(&pool, &xq, kernel, Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows }, Some(&case.bias), &mut out);
            for j in 0..rows {
                let w = &deq[j * k..(j + 1) * k];
                let exact: f64 = w.iter().zip(&xd).map(|(&w, &x)| w as f64 * x as f64).sum::<f64>() + case.bias[j] as f64;
                let tolerance = 1e-4 + simd::q8_1_sum_rounding(kernel.act_type, w, &xd);
                assert!((out[j] as f64 - exact).abs() < tolerance, "{dtype} j={j}: {} vs {exact}", out[j]);
            }
        }
    }
}
