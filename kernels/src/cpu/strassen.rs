//! One level of Strassen's algorithm for the exact prefill matmul, C = X · Wᵀ: tokens, k and
//! weight rows each cut in halves make 2 × 2 blocks, and seven products of half-sized
//! matrices take the place of the eight that the blocks' plain product needs. The GEMM's
//! multiply-adds are then 7/8 of the plain count, which matters where the cores' arithmetic is
//! the limit (F16, BF16 and F32 prompts). The sums of blocks are formed as the operands are
//! packed (weights: the four quarter panels of a panel position dequantized once, the seven
//! products' panels added from them), and each product's tiles go straight into the one or
//! two blocks of C it belongs to, with their signs ("Strassen reloaded", Huang et al. 2016).
//!
//! The products (X_ab: token half a, k half b; W_cb: row half c, k half b; C_ac):
//!   M1 = (X11 + X22)(W11 + W22)ᵀ → C11, C22     M5 = (X11 + X12) W22ᵀ → -C11, C12
//!   M2 = (X21 + X22) W11ᵀ → C21, -C22           M6 = (X21 - X11)(W11 + W21)ᵀ → C22
//!   M3 = X11 (W21 - W22)ᵀ → C12, C22            M7 = (X12 - X22)(W12 + W22)ᵀ → C11
//!   M4 = X22 (W12 - W11)ᵀ → C11, C21
//! Rounding: each product adds one rounding of its summed operands; against the plain f32
//! product the results differ by a few f32 ulps of the largest terms, far below what an
//! F16 weight or an 8-bit activation carries.

use std::cell::RefCell;
use std::ops::Range;

use super::gemm::{pack_tokens, tiles_along_tokens, Dest, MR, NR};
use super::matmul::{add_bias, k_slices, panels_per_task, Matrix, CHUNK_BLOCKS, GATHER_BYTES, KC};
use super::pool::{SharedMut, ThreadPool};

/// Half (0 or 1) of the first dimension, half of the second, and the sign of the term.
type Term = (usize, usize, f32);

/// One of the seven products: the sums that make its operands and the blocks it adds to.
struct Product {
    /// Quarters of X: (token half, k half, sign).
    tokens: &'static [Term],
    /// Quarters of W: (row half, k half, sign).
    weights: &'static [Term],
    /// Blocks of C: (token half, row half, sign).
    dests: &'static [Term],
}

const PRODUCTS: [Product; 7] = [
    Product { tokens: &[(0, 0, 1.0), (1, 1, 1.0)], weights: &[(0, 0, 1.0), (1, 1, 1.0)], dests: &[(0, 0, 1.0), (1, 1, 1.0)] },
    Product { tokens: &[(1, 0, 1.0), (1, 1, 1.0)], weights: &[(0, 0, 1.0)], dests: &[(1, 0, 1.0), (1, 1, -1.0)] },
    Product { tokens: &[(0, 0, 1.0)], weights: &[(1, 0, 1.0), (1, 1, -1.0)], dests: &[(0, 1, 1.0), (1, 1, 1.0)] },
    Product { tokens: &[(1, 1, 1.0)], weights: &[(0, 1, 1.0), (0, 0, -1.0)], dests: &[(0, 0, 1.0), (1, 0, 1.0)] },
    Product { tokens: &[(0, 0, 1.0), (0, 1, 1.0)], weights: &[(1, 1, 1.0)], dests: &[(0, 0, -1.0), (0, 1, 1.0)] },
    Product { tokens: &[(1, 0, 1.0), (0, 0, -1.0)], weights: &[(0, 0, 1.0), (1, 0, 1.0)], dests: &[(1, 1, 1.0)] },
    Product { tokens: &[(0, 1, 1.0), (1, 1, -1.0)], weights: &[(0, 1, 1.0), (1, 1, 1.0)], dests: &[(0, 0, 1.0)] },
];

/// Below these the plain GEMM is as fast: the sums and the second destination cost what the
/// eighth saves. Measured (criterion `matmul_prefill_f16`, 512 tokens): 576 × 576 even,
/// 576 × 1536 and 1536 × 576 5-15% faster.
const MIN_TOKENS: usize = 128;
const MIN_SIDE: usize = 256;
const MIN_LONG_SIDE: usize = 1024;

/// Whether [`matmul`] should take a product of this shape: big enough, k in halves of whole
/// blocks, rows in halves of whole panels.
pub fn pays(n_tokens: usize, w: &Matrix) -> bool {
    let block = w.dtype.block_size();
    let big = n_tokens >= MIN_TOKENS && w.k.min(w.rows) >= MIN_SIDE && w.k.max(w.rows) >= MIN_LONG_SIDE;
    big && w.k % (2 * block) == 0 && w.rows % (2 * NR) == 0
}

thread_local! {
    /// The calling thread's packed token sums; each thread's quarter and product panels.
    static PACKED_SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// out = x · Wᵀ (+ bias) for an even `n_tokens` and a shape [`pays`] accepts.
pub fn matmul(pool: &ThreadPool, x: &[f32], n_tokens: usize, w: Matrix, bias: Option<&[f32]>, out: &mut [f32]) {
    assert!(n_tokens % 2 == 0 && pays(n_tokens, &w));
    assert!(x.len() == n_tokens * w.k && out.len() == n_tokens * w.rows);
    let half = Halves { tokens: n_tokens / 2, k: w.k / 2, rows: w.rows / 2 };
    let out = SharedMut(out.as_mut_ptr());
    PACKED_SUMS.with(|packed| {
        let mut packed = packed.borrow_mut();
        pack_token_sums(pool, x, w.k, &half, &mut packed);
        let packed: &[f32] = &packed;
        let n_panels = half.rows / NR;
        pool.for_ranges(n_panels, panels_per_task(n_panels, pool.n_threads()), |panels| {
            PANELS.with(|scratch| products_at(packed, &half, w, panels.clone(), out, &mut scratch.borrow_mut()));
            for p in panels_in_both_halves(&half, panels) {
                add_bias(bias, n_tokens, p, w.rows, out);
            }
        });
    });
}

struct Halves {
    tokens: usize,
    k: usize,
    rows: usize,
}

impl Halves {
    /// Values of one product's packed token sum: its blocks of MR tokens, k values each.
    fn packed_len(&self) -> usize {
        self.tokens.div_ceil(MR) * self.k * MR
    }
}

/// The columns of C that panels `panels` of the first row half cover, and of the second.
fn panels_in_both_halves(half: &Halves, panels: Range<usize>) -> [Range<usize>; 2] {
    let cols = panels.start * NR..panels.end * NR;
    [cols.clone(), cols.start + half.rows..cols.end + half.rows]
}

/// Each product's token operand, packed as the tile reads it: product i's block b (MR tokens)
/// at [(i·n_blocks + b)·k_half·MR ..]. The four quarters of x are packed once, into the slots
/// of the products that take a quarter alone and into scratch, and the sums added from them.
fn pack_token_sums(pool: &ThreadPool, x: &[f32], k: usize, half: &Halves, packed: &mut Vec<f32>) {
    let n_blocks = half.tokens.div_ceil(MR);
    let block_len = half.k * MR;
    let len = half.packed_len();
    packed.resize((PRODUCTS.len() + 4) * len, 0.0);
    let quarter_at = |q: usize| (PRODUCTS.len() + q) * len;
    let dst = SharedMut(packed.as_mut_ptr());
    pool.for_ranges(4 * n_blocks, 1, |tasks| {
        for task in tasks {
            let (q, b) = (task / n_blocks, task % n_blocks);
            let (token_half, k_half) = (q / 2, q % 2);
            // SAFETY: task (q, b) alone writes this block of quarter q's slot.
            let block = unsafe { std::slice::from_raw_parts_mut(dst.at(quarter_at(q) + b * block_len), block_len) };
            // Token half a, k half b: rows of k_half values, k apart.
            pack_tokens(&x[token_half * half.tokens * k + k_half * half.k..], k, half.k, half.tokens, b * MR, block);
        }
    });
    pool.for_ranges(PRODUCTS.len() * n_blocks, 1, |tasks| {
        for task in tasks {
            let (i, b) = (task / n_blocks, task % n_blocks);
            // SAFETY: task (i, b) alone writes block b of product i's slot, which lies before
            // the quarters' slots that it reads.
            let (sums, quarters) = unsafe { (std::slice::from_raw_parts_mut(dst.at(i * len + b * block_len), block_len), std::slice::from_raw_parts(dst.at(quarter_at(0)) as *const f32, 4 * len)) };
            for (n, &(token_half, k_half, sign)) in PRODUCTS[i].tokens.iter().enumerate() {
                let quarter = &quarters[(token_half * 2 + k_half) * len + b * block_len..][..block_len];
                if n == 0 {
                    sums.iter_mut().zip(quarter).for_each(|(v, q)| *v = sign * q);
                } else {
                    sums.iter_mut().zip(quarter).for_each(|(v, q)| *v += sign * q);
                }
            }
        }
    });
}

/// Every product at the panel positions `panels` (NR rows of each row half), for every
/// token: per slice of k, the four quarter panels are dequantized once and the seven
/// products' panels summed from them; then the tokens go past in chunks.
fn products_at(packed: &[f32], half: &Halves, w: Matrix, panels: Range<usize>, out: SharedMut<f32>, scratch: &mut Vec<f32>) {
    let row_bytes = w.row_bytes();
    let panel_len = KC * NR;
    let mut buf = [0u8; GATHER_BYTES];
    scratch.resize((1 + 4 + PRODUCTS.len()) * panel_len, 0.0);
    let (rows_f32, rest) = scratch.split_at_mut(panel_len);
    let (quarters, product_panels) = rest.split_at_mut(4 * panel_len);
    let first_writer = first_writers();
    for p in panels {
        for (k0, kc) in k_slices(half.k, w.dtype.block_size()) {
            for (q, quarter) in quarters.chunks_exact_mut(panel_len).enumerate() {
                let (row_half, k_half) = (q / 2, q % 2);
                let rows = row_half * half.rows + p * NR..row_half * half.rows + (p + 1) * NR;
                w.pack_panel(rows, k_half * half.k + k0, kc, row_bytes, rows_f32, &mut buf, &mut quarter[..kc * NR]);
            }
            for (product, panel) in PRODUCTS.iter().zip(product_panels.chunks_exact_mut(panel_len)) {
                let panel = &mut panel[..kc * NR];
                for (n, &(row_half, k_half, sign)) in product.weights.iter().enumerate() {
                    let quarter = &quarters[(row_half * 2 + k_half) * panel_len..][..kc * NR];
                    if n == 0 {
                        panel.iter_mut().zip(quarter).for_each(|(v, q)| *v = sign * q);
                    } else {
                        panel.iter_mut().zip(quarter).for_each(|(v, q)| *v += sign * q);
                    }
                }
            }
            for t0 in (0..half.tokens).step_by(CHUNK_BLOCKS * MR) {
                let chunk = (CHUNK_BLOCKS * MR).min(half.tokens - t0);
                for (i, (product, panel)) in PRODUCTS.iter().zip(product_panels.chunks_exact(panel_len)).enumerate() {
                    let x = &packed[i * half.packed_len() + (t0 / MR * half.k + k0) * MR..];
                    let mut dests = [Dest { out: std::ptr::null_mut(), sign: 1.0, accumulate: false }; 2];
                    for (d, &(token_half, row_half, sign)) in dests.iter_mut().zip(product.dests) {
                        let at = (token_half * half.tokens + t0) * w.rows + row_half * half.rows + p * NR;
                        // The first product to reach a block of C, in its first slice of k,
                        // stores; everything after adds.
                        let accumulate = k0 > 0 || first_writer[token_half * 2 + row_half] != i;
                        // SAFETY: `at` is inside the n_tokens × rows output.
                        *d = Dest { out: unsafe { out.at(at) }, sign, accumulate };
                    }
                    // SAFETY: the tiles cover tokens t0..t0 + chunk of each destination's
                    // token half and panel p's NR columns of its row half: inside the output,
                    // and written by this task alone.
                    unsafe { tiles_along_tokens(chunk, kc, x, half.k * MR, panel, NR, &dests[..product.dests.len()], w.rows) };
                }
            }
        }
    }
}

/// For each block of C (token half · 2 + row half), the first product that adds to it.
fn first_writers() -> [usize; 4] {
    let mut first = [usize::MAX; 4];
    for (i, product) in PRODUCTS.iter().enumerate() {
        for &(token_half, row_half, _) in product.dests {
            let slot = &mut first[token_half * 2 + row_half];
            *slot = (*slot).min(i);
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Layout;
    use crate::dtype::DType;

    fn random(seed: &mut u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (*seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// Every block of C gets its plain product: the seven products against an f64 triple loop
    /// over the dequantized weights, for float and block types, token counts that leave
    /// partial tiles and an odd last token, k over several slices, one and three threads.
    #[test]
    fn matches_the_plain_product() {
        let mut seed = 7u32;
        let (k, rows) = (1024, 288);
        let w_f32 = random(&mut seed, k * rows);
        let bias = random(&mut seed, rows);
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::Q6_K, DType::Q4_0] {
            let row_bytes = dtype.row_bytes(k).unwrap();
            let mut w = vec![0u8; row_bytes * rows];
            let mut deq = vec![0f32; k * rows];
            for j in 0..rows {
                (dtype.traits().from_f32.unwrap())(&w_f32[j * k..(j + 1) * k], &mut w[j * row_bytes..(j + 1) * row_bytes]);
                (dtype.traits().to_f32)(&w[j * row_bytes..(j + 1) * row_bytes], &mut deq[j * k..(j + 1) * k]);
            }
            let matrix = Matrix { bytes: &w, dtype, k, rows, layout: Layout::Rows };
            for n_tokens in [MIN_TOKENS, 200, 203] {
                assert!(pays(n_tokens, &matrix));
                let x = random(&mut seed, n_tokens * k);
                for threads in [1, 3] {
                    let pool = ThreadPool::new(threads).unwrap();
                    let mut out = vec![f32::NAN; n_tokens * rows];
                    crate::cpu::matmul(&pool, &x, n_tokens, matrix, Some(&bias), &mut out);
                    for t in 0..n_tokens {
                        for j in 0..rows {
                            let exact: f64 = (0..k).map(|i| deq[j * k + i] as f64 * x[t * k + i] as f64).sum::<f64>() + bias[j] as f64;
                            let got = out[t * rows + j] as f64;
                            assert!((got - exact).abs() < 2e-4, "{dtype} threads={threads} n_tokens={n_tokens} t={t} j={j}: {got} vs {exact}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_block_has_a_first_writer() {
        assert!(first_writers().iter().all(|&i| i < PRODUCTS.len()));
    }
}
