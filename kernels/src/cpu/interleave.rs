//! Weights repacked at load so that decode reads 8 rows as one stream: the layout of
//! llama.cpp's CPU_REPACK buffers, in our own arrangement.
//!
//! In a GGUF file a matrix is row after row. A decode kernel reading one or two rows at a
//! time loads each activation block once per row pair and ends every block with a
//! horizontal sum per row. Interleaved, the rows of a group of [`GROUP`] sit side by side
//! block by block, field by field (a block's fields: its scales, its quants, …), each field
//! in chunks of 4 bytes (or whole, if shorter):
//!
//! ```text
//! group g, block i:  d (row 0) … d (row 7)                 a 2-byte field: 8 × 2 bytes
//!                    quants[0..4](row 0) … (row 7)         32 bytes: one 4-byte chunk a row
//!                    quants[4..8](row 0) … (row 7)
//!                    …                                     (field bytes / 4 chunks)
//! ```
//!
//! so one 32-byte load holds the same 4 bytes of all 8 rows, and an integer multiply-add
//! against those 4 activation bytes broadcast leaves each row's partial sum in its own lane:
//! 8 rows take one scale conversion and one fused multiply-add per block, and no horizontal
//! sums. The bytes are the file's, only moved (one exception: Q6_K's levels are recoded, see
//! [`recoded_field`]): the same size, and every other reader of the matrix
//! ([`block_range_of_row`]) gets the original blocks back exactly.

use std::ops::Range;

use super::matmul::Layout;
use super::pool::{SharedMut, ThreadPool};
use crate::dtype::DType;
use crate::quants::k_quants::{q6_k, QK_K};

/// Rows interleaved together.
pub const GROUP: usize = 8;

/// A block's fields as (offset in the block, size), in the order the group lays them out
/// (the order the decode kernel reads them: scales first, so a group streams front to back),
/// for the types that can be interleaved. Every field is at most 4 bytes or whole 4-byte
/// chunks, and the fields cover the block.
pub fn fields(dtype: DType) -> Option<&'static [(usize, usize)]> {
    match dtype {
        DType::Q4_0 => Some(&[(0, 2), (2, 16)]),                     // d, qs
        DType::Q4_1 => Some(&[(0, 2), (2, 2), (4, 16)]),             // d, m, qs
        DType::Q5_0 => Some(&[(0, 2), (2, 4), (6, 16)]),             // d, qh, qs
        DType::Q5_1 => Some(&[(0, 2), (2, 2), (4, 4), (8, 16)]),     // d, m, qh, qs
        DType::Q8_0 => Some(&[(0, 2), (2, 32)]),                     // d, qs
        DType::Q4_K => Some(&[(0, 2), (2, 2), (4, 12), (16, 128)]),  // d, dmin, packed scales and mins, qs
        DType::Q6_K => Some(&[(192, 16), (0, q6_k::LEVEL_BYTES), (208, 2)]), // scales, levels (recoded), d
        _ => None,
    }
}

/// The field (offset in the block) whose bytes are recoded rather than moved: Q6_K's levels,
/// which [`q6_k_levels_into_group`] lays out so that the decode kernel unpacks 4 vectors of
/// levels from 3 loads with 11 operations where ql/qh took 17 (`simd::avx2::q6_kx8_q8_k`).
fn recoded_field(dtype: DType) -> Option<usize> {
    (dtype == DType::Q6_K).then_some(0)
}

/// Each field's chunks as (offset in a block, offset in a group block, chunk size, chunk
/// count): chunk c of row r lies at the group offset + (c·GROUP + r)·size.
fn field_chunks(dtype: DType) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let fields = fields(dtype).expect("interleaved only for types with fields");
    fields.iter().scan(0, |group_offset, &(offset, size)| {
        let chunk = size.min(4);
        let field = (offset, *group_offset, chunk, size / chunk);
        *group_offset += GROUP * size;
        Some(field)
    })
}

/// Whole groups of rows (`row_bytes` each, row after row) interleaved into `out` (same length).
pub fn interleave(dtype: DType, row_bytes: usize, rows: &[u8], out: &mut [u8]) {
    assert_eq!(rows.len() % (GROUP * row_bytes), 0, "{} bytes are not whole groups of {GROUP} rows of {row_bytes}", rows.len());
    for (src, dst) in rows.chunks_exact(GROUP * row_bytes).zip(out.chunks_exact_mut(GROUP * row_bytes)) {
        interleave_group(dtype, src, dst);
    }
}

/// A matrix (`rows`, row after row, `row_bytes` each) written into `out` (same length) in
/// `layout`, interleaved or copied as it is, with the rows split across the pool: what the
/// loader runs (one pass over the weights, which load time pays).
pub fn repack_in_parallel(pool: &ThreadPool, layout: Layout, dtype: DType, row_bytes: usize, rows: &[u8], out: &mut [u8]) {
    let unit_bytes = match layout {
        Layout::Interleaved8 => GROUP * row_bytes,
        Layout::Rows => row_bytes,
    };
    assert_eq!(rows.len(), out.len());
    assert_eq!(rows.len() % unit_bytes, 0, "{} bytes are not whole units of {unit_bytes}", rows.len());
    let n_units = rows.len() / unit_bytes;
    let dst = SharedMut(out.as_mut_ptr());
    pool.for_ranges(n_units, n_units.div_ceil(4 * pool.n_threads()), |units| {
        let bytes = units.start * unit_bytes..units.end * unit_bytes;
        // SAFETY: these units' bytes are written by this range alone, inside `out`.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.at(bytes.start), bytes.len()) };
        match layout {
            Layout::Interleaved8 => interleave(dtype, row_bytes, &rows[bytes], out),
            Layout::Rows => out.copy_from_slice(&rows[bytes]),
        }
    });
}

/// `rows` (GROUP rows of one matrix, row after row) interleaved into `group` (same length).
fn interleave_group(dtype: DType, rows: &[u8], group: &mut [u8]) {
    let block = dtype.type_size();
    assert_eq!(rows.len(), group.len());
    assert_eq!(rows.len() % (GROUP * block), 0, "{} bytes are not {GROUP} rows of whole blocks", rows.len());
    let row_bytes = rows.len() / GROUP;
    for (i, dst) in group.chunks_exact_mut(GROUP * block).enumerate() {
        let srcs: [&[u8]; GROUP] = std::array::from_fn(|r| &rows[r * row_bytes + i * block..][..block]);
        for (at_row, at_group, size, count) in field_chunks(dtype) {
            if recoded_field(dtype) == Some(at_row) {
                q6_k_levels_into_group(srcs.map(|src| &src[at_row..]), &mut dst[at_group..][..GROUP * q6_k::LEVEL_BYTES]);
                continue;
            }
            // Written in order: chunk c of row 0, of row 1, ...
            for (c, out) in dst[at_group..][..GROUP * size * count].chunks_exact_mut(GROUP * size).enumerate() {
                for (src, chunk) in srcs.iter().zip(out.chunks_exact_mut(size)) {
                    copy_chunk(chunk, &src[at_row + c * size..][..size]);
                }
            }
        }
    }
}

/// A chunk's copy with its size known to the compiler in the usual cases: a copy of a
/// run-time length is a call to memmove, which was a third of the loader's repacking time.
#[inline(always)]
fn copy_chunk(dst: &mut [u8], src: &[u8]) {
    match dst.len() {
        4 => dst[..4].copy_from_slice(&src[..4]),
        2 => dst[..2].copy_from_slice(&src[..2]),
        _ => dst.copy_from_slice(src),
    }
}

/// Row `r` (< GROUP) of an interleaved `group`, blocks `blocks`, in the file's layout: into
/// `out`, which must hold exactly those blocks.
pub fn block_range_of_row(dtype: DType, group: &[u8], r: usize, blocks: Range<usize>, out: &mut [u8]) {
    let block = dtype.type_size();
    assert!(r < GROUP);
    assert_eq!(out.len(), blocks.len() * block);
    for (i, dst) in blocks.zip(out.chunks_exact_mut(block)) {
        let src = &group[i * GROUP * block..(i + 1) * GROUP * block];
        for (at_row, at_group, size, count) in field_chunks(dtype) {
            if recoded_field(dtype) == Some(at_row) {
                q6_k_levels_of_row(&src[at_group..][..GROUP * q6_k::LEVEL_BYTES], r, &mut dst[at_row..][..q6_k::LEVEL_BYTES]);
                continue;
            }
            for (c, chunk) in dst[at_row..][..size * count].chunks_exact_mut(size).enumerate() {
                copy_chunk(chunk, &src[at_group + (c * GROUP + r) * size..][..size]);
            }
        }
    }
}

/// Q6_K's levels in a group: 16 runs of 96 bytes, one per 16 values g (one scale), each three
/// 32-byte vectors V0, V1, V2 whose lane r holds row r's 4 bytes. Byte b of vector i carries
/// level 16g + 4i + b in its low 6 bits, and 2 bits of level 16g + 12 + b in its top 2: bits
/// 4-5 in V0, 2-3 in V1, 0-1 in V2. The fourth vector of levels is then the three tops
/// shifted together, `((V2 & 0xc0) >> 2 | V1 & 0xc0) >> 2 | V0 & 0xc0) >> 2`, which 16-bit
/// shifts compute without masks in between (a masked byte has nothing to shift into its
/// neighbour).
fn q6_k_levels_into_group(rows: [&[u8]; GROUP], group_levels: &mut [u8]) {
    let levels: [[u8; QK_K]; GROUP] = rows.map(q6_k::six_bit_levels);
    for (g, run) in group_levels.chunks_exact_mut(96).enumerate() {
        for (i, vector) in run.chunks_exact_mut(32).enumerate() {
            for (r, lane) in vector.chunks_exact_mut(4).enumerate() {
                for (b, byte) in lane.iter_mut().enumerate() {
                    let top = (levels[r][16 * g + 12 + b] >> (4 - 2 * i)) & 3;
                    *byte = levels[r][16 * g + 4 * i + b] | (top << 6);
                }
            }
        }
    }
}

/// Row `r`'s ql and qh back from a group's recoded levels ([`q6_k_levels_into_group`]).
fn q6_k_levels_of_row(group_levels: &[u8], r: usize, ql_qh: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    for (g, run) in group_levels.chunks_exact(96).enumerate() {
        for (i, vector) in run.chunks_exact(32).enumerate() {
            for (b, &byte) in vector[4 * r..][..4].iter().enumerate() {
                levels[16 * g + 4 * i + b] = byte & 0x3f;
                levels[16 * g + 12 + b] |= (byte >> 6) << (4 - 2 * i);
            }
        }
    }
    q6_k::pack_six_bit_levels(&levels, ql_qh);
}

/// How one block of an interleaved group of `dtype` goes into the 8-bit prefill's panel,
/// where a type has such a path: of each 32 values j of the block, levels 4g..4g + 4 of row
/// r at levels[j·256 + g·32 + 4r..], and its scale and offset (those of the type's
/// `unpack_levels`) at [j·GROUP + r]. The group's quant chunks
/// are whole 32-byte runs of the panel already, where a row-major matrix is unpacked row by
/// row and scattered.
pub fn panel_block(dtype: DType) -> Option<fn(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32])> {
    match dtype {
        DType::Q4_0 => Some(q4_0_panel_block),
        DType::Q4_1 => Some(q4_1_panel_block),
        DType::Q8_0 => Some(q8_0_panel_block),
        DType::Q5_0 => Some(q5_0_panel_block),
        DType::Q4_K => Some(q4_k_panel_block),
        _ => None,
    }
}

/// Q4_0: chunk c holds bytes 4c.. of every row, whose low nibbles are levels 4c.. and high
/// nibbles levels 16 + 4c..; scale d, offset −8d.
fn q4_0_panel_block(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    const HEADER: usize = 2 * GROUP;
    assert_eq!(block.len(), GROUP * crate::quants::q4_0::BLOCK_BYTES);
    for r in 0..GROUP {
        let d = crate::quants::f16_at(block, 2 * r);
        (scales[r], offsets[r]) = (d, -8.0 * d);
    }
    nibble_panel_levels(&block[HEADER..], levels);
}

/// Q4_1: as Q4_0 after the 8 rows' d and then their m; scale d, offset m.
fn q4_1_panel_block(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    const HEADER: usize = 4 * GROUP;
    assert_eq!(block.len(), GROUP * crate::quants::q4_1::BLOCK_BYTES);
    for r in 0..GROUP {
        (scales[r], offsets[r]) = (crate::quants::f16_at(block, 2 * r), crate::quants::f16_at(block, 2 * GROUP + 2 * r));
    }
    nibble_panel_levels(&block[HEADER..], levels);
}

/// The 4 chunks of a Q4_0/Q4_1 group block's nibbles: chunk c's low nibbles are levels 4c..
/// of every row, its high nibbles levels 16 + 4c...
fn nibble_panel_levels(chunks: &[u8], levels: &mut [u8]) {
    for (c, chunk) in chunks.chunks_exact(32).enumerate() {
        for (i, &q) in chunk.iter().enumerate() {
            levels[c * 32 + i] = q & 0x0f;
            levels[(c + 4) * 32 + i] = q >> 4;
        }
    }
}

/// Q5_0: as Q4_0, with each level's fifth bit from its row's qh (bit j for value j, the 8
/// rows' u32 after the scales); scale d, offset −16d.
fn q5_0_panel_block(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    const HEADER: usize = 6 * GROUP;
    assert_eq!(block.len(), GROUP * crate::quants::q5_0::BLOCK_BYTES);
    let qh: [u32; GROUP] = std::array::from_fn(|r| u32::from_le_bytes(block[2 * GROUP + 4 * r..][..4].try_into().unwrap()));
    for r in 0..GROUP {
        let d = crate::quants::f16_at(block, 2 * r);
        (scales[r], offsets[r]) = (d, -16.0 * d);
    }
    for (c, chunk) in block[HEADER..].chunks_exact(32).enumerate() {
        for (i, &q) in chunk.iter().enumerate() {
            let (r, value) = (i / 4, 4 * c + i % 4);
            let fifth_bit = |j: usize| ((qh[r] >> j) & 1) as u8 * 16;
            levels[c * 32 + i] = (q & 0x0f) | fifth_bit(value);
            levels[(c + 4) * 32 + i] = (q >> 4) | fifth_bit(value + 16);
        }
    }
}

/// Q8_0: chunk c holds levels 4c.. of every row as they are; scale d, offset 0.
fn q8_0_panel_block(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    const HEADER: usize = 2 * GROUP;
    assert_eq!(block.len(), GROUP * crate::quants::q8_0::BLOCK_BYTES);
    for r in 0..GROUP {
        (scales[r], offsets[r]) = (crate::quants::f16_at(block, 2 * r), 0.0);
    }
    levels[..block.len() - HEADER].copy_from_slice(&block[HEADER..]);
}

/// Q4_K: the 8 rows' d, dmin and packed scales (three words), then 32 chunks: chunk 8p + c
/// holds bytes 32p + 4c.. of every row, whose low nibbles are levels 4c.. of the 32 values
/// 2p and high nibbles those of 2p + 1. Scales and offsets as `q4_k::unpack_levels`.
fn q4_k_panel_block(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    const HEADER: usize = 16 * GROUP;
    const SUB_BLOCKS: usize = crate::quants::k_quants::QK_K / 32;
    assert_eq!(block.len(), GROUP * crate::quants::k_quants::q4_k::BLOCK_BYTES);
    for r in 0..GROUP {
        // Row r's 16 header bytes as in the file: d, dmin, the three packed words.
        let mut header = [0u8; 16];
        header[..2].copy_from_slice(&block[2 * r..][..2]);
        header[2..4].copy_from_slice(&block[2 * GROUP + 2 * r..][..2]);
        for w in 0..3 {
            header[4 + 4 * w..][..4].copy_from_slice(&block[4 * GROUP + 4 * (w * GROUP + r)..][..4]);
        }
        let (mut row_scales, mut row_offsets) = ([0f32; SUB_BLOCKS], [0f32; SUB_BLOCKS]);
        crate::quants::k_quants::affine_k4_scales(&header, &mut row_scales, &mut row_offsets);
        for j in 0..SUB_BLOCKS {
            (scales[j * GROUP + r], offsets[j * GROUP + r]) = (row_scales[j], row_offsets[j]);
        }
    }
    for (chunk, quants) in block[HEADER..].chunks_exact(32).enumerate() {
        let (p, c) = (chunk / 8, chunk % 8);
        for (i, &q) in quants.iter().enumerate() {
            levels[2 * p * 256 + c * 32 + i] = q & 0x0f;
            levels[(2 * p + 1) * 256 + c * 32 + i] = q >> 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interleaving moves bytes only: every row's blocks come back exactly, for every type
    /// that can be interleaved, whole rows and inner block ranges alike.
    #[test]
    fn interleaved_rows_come_back_exactly() {
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4_K, DType::Q6_K] {
            let mut fields = fields(dtype).unwrap().to_vec();
            fields.sort();
            let end = fields.iter().try_fold(0, |end, &(offset, size)| (offset == end).then_some(end + size));
            assert_eq!(end, Some(dtype.type_size()), "{dtype}: the fields {fields:?} do not tile the block");
            let n_blocks = 5;
            let row_bytes = n_blocks * dtype.type_size();
            let rows: Vec<u8> = (0..GROUP * row_bytes).map(|i| (i * 131 % 251) as u8).collect();
            let mut group = vec![0u8; rows.len()];
            interleave(dtype, row_bytes, &rows, &mut group);
            assert_ne!(group, rows, "{dtype}: the layout moved nothing");
            for r in 0..GROUP {
                for blocks in [0..n_blocks, 1..4, 4..5] {
                    let mut out = vec![0u8; blocks.len() * dtype.type_size()];
                    block_range_of_row(dtype, &group, r, blocks.clone(), &mut out);
                    let expected = &rows[r * row_bytes + blocks.start * dtype.type_size()..r * row_bytes + blocks.end * dtype.type_size()];
                    assert_eq!(out, expected, "{dtype} row {r} blocks {blocks:?}");
                }
            }
        }
    }

    /// The loader's parallel pass writes what the one-thread forms do: the groups of
    /// [`interleave`], or the rows unchanged.
    #[test]
    fn parallel_repacking_matches_the_serial_forms() {
        let (dtype, row_bytes) = (DType::Q8_0, 3 * DType::Q8_0.type_size());
        let rows: Vec<u8> = (0..5 * GROUP * row_bytes).map(|i| (i * 131 % 251) as u8).collect();
        let mut serial = vec![0u8; rows.len()];
        interleave(dtype, row_bytes, &rows, &mut serial);
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let mut out = vec![0u8; rows.len()];
            repack_in_parallel(&pool, Layout::Interleaved8, dtype, row_bytes, &rows, &mut out);
            assert_eq!(out, serial, "interleaved, {threads} threads");
            let mut out = vec![0u8; rows.len()];
            repack_in_parallel(&pool, Layout::Rows, dtype, row_bytes, &rows, &mut out);
            assert_eq!(out, rows, "rows, {threads} threads");
        }
    }
}
