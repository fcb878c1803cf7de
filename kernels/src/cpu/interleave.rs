//! Weights repacked at load so that decode reads 8 rows as one stream: the layout of
//! llama.cpp's CPU_REPACK buffers, in our own arrangement.
//!
//! In a GGUF file a matrix is row after row. A decode kernel reading one or two rows at a
//! time loads each activation block once per row pair and ends every block with a
//! horizontal sum per row. Interleaved, the rows of a group of [`GROUP`] sit side by side
//! block by block:
//!
//! ```text
//! group g, block i:  field 1 (row 0) … field 1 (row 7)     each header field of the 8 rows
//!                    field 2 (row 0) … field 2 (row 7)     (d; Q4_1's m; Q5_0's fifth bits)
//!                    quants[0..4](row 0) … (row 7)         32 bytes: one 4-byte chunk a row
//!                    quants[4..8](row 0) … (row 7)
//!                    …                                     (quant bytes / 4 chunks)
//! ```
//!
//! so one 32-byte load holds the same 4 bytes of all 8 rows, and an integer multiply-add
//! against those 4 activation bytes broadcast leaves each row's partial sum in its own lane:
//! 8 rows take one scale conversion and one fused multiply-add per block, and no horizontal
//! sums. The bytes are the file's, only moved: the same size, and every other reader of the
//! matrix ([`block_range_of_row`]) gets the original blocks back exactly.

use std::ops::Range;

use super::pool::{SharedMut, ThreadPool};
use crate::dtype::DType;

/// Rows interleaved together.
pub const GROUP: usize = 8;

/// The sizes of the fields before the quants in a block of a type that can be interleaved,
/// or None: the types of 32-value blocks whose quants are whole 4-byte chunks.
pub fn header_fields(dtype: DType) -> Option<&'static [usize]> {
    match dtype {
        DType::Q4_0 | DType::Q8_0 => Some(&[2]),
        DType::Q4_1 => Some(&[2, 2]),
        DType::Q5_0 => Some(&[2, 4]),
        _ => None,
    }
}

/// Each header field as (offset in a block, offset in a group block, size).
fn field_offsets(dtype: DType) -> impl Iterator<Item = (usize, usize, usize)> {
    let fields = header_fields(dtype).expect("interleaved only for types with header fields");
    fields.iter().scan(0, |offset, &size| {
        let field = (*offset, GROUP * *offset, size);
        *offset += size;
        Some(field)
    })
}

fn header_bytes(dtype: DType) -> usize {
    header_fields(dtype).map_or(0, |fields| fields.iter().sum())
}

/// Whole groups of rows (`row_bytes` each, row after row) interleaved into `out` (same length).
pub fn interleave(dtype: DType, row_bytes: usize, rows: &[u8], out: &mut [u8]) {
    assert_eq!(rows.len() % (GROUP * row_bytes), 0, "{} bytes are not whole groups of {GROUP} rows of {row_bytes}", rows.len());
    for (src, dst) in rows.chunks_exact(GROUP * row_bytes).zip(out.chunks_exact_mut(GROUP * row_bytes)) {
        interleave_group(dtype, src, dst);
    }
}

/// [`interleave`] with the groups split across the pool: what the loader runs (one pass
/// over the tensor, which load time pays).
pub fn interleave_in_parallel(pool: &ThreadPool, dtype: DType, row_bytes: usize, rows: &[u8], out: &mut [u8]) {
    let group_bytes = GROUP * row_bytes;
    assert_eq!(rows.len(), out.len());
    let n_groups = rows.len() / group_bytes;
    let dst = SharedMut(out.as_mut_ptr());
    pool.for_ranges(n_groups, n_groups.div_ceil(4 * pool.n_threads()), |groups| {
        let bytes = groups.start * group_bytes..groups.end * group_bytes;
        // SAFETY: these groups' bytes are written by this range alone, inside `out`.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.at(bytes.start), bytes.len()) };
        interleave(dtype, row_bytes, &rows[bytes], out);
    });
}

/// `rows` (GROUP rows of one matrix, row after row) interleaved into `group` (same length).
fn interleave_group(dtype: DType, rows: &[u8], group: &mut [u8]) {
    let header = header_bytes(dtype);
    let block = dtype.type_size();
    assert_eq!(rows.len(), group.len());
    assert_eq!(rows.len() % (GROUP * block), 0, "{} bytes are not {GROUP} rows of whole blocks", rows.len());
    let row_bytes = rows.len() / GROUP;
    for (i, dst) in group.chunks_exact_mut(GROUP * block).enumerate() {
        let srcs: [&[u8]; GROUP] = std::array::from_fn(|r| &rows[r * row_bytes + i * block..][..block]);
        let (headers, quants) = dst.split_at_mut(GROUP * header);
        for (at_row, at_group, size) in field_offsets(dtype) {
            for (r, src) in srcs.iter().enumerate() {
                headers[at_group + r * size..][..size].copy_from_slice(&src[at_row..][..size]);
            }
        }
        // Written in order: chunk c of row 0, of row 1, ...
        for (c, out) in quants.chunks_exact_mut(4 * GROUP).enumerate() {
            for (src, word) in srcs.iter().zip(out.chunks_exact_mut(4)) {
                word.copy_from_slice(&src[header + 4 * c..][..4]);
            }
        }
    }
}

/// Row `r` (< GROUP) of an interleaved `group`, blocks `blocks`, in the file's layout: into
/// `out`, which must hold exactly those blocks.
pub fn block_range_of_row(dtype: DType, group: &[u8], r: usize, blocks: Range<usize>, out: &mut [u8]) {
    let header = header_bytes(dtype);
    let block = dtype.type_size();
    assert!(r < GROUP);
    assert_eq!(out.len(), blocks.len() * block);
    for (i, dst) in blocks.zip(out.chunks_exact_mut(block)) {
        let src = &group[i * GROUP * block..(i + 1) * GROUP * block];
        for (at_row, at_group, size) in field_offsets(dtype) {
            dst[at_row..][..size].copy_from_slice(&src[at_group + r * size..][..size]);
        }
        for (c, chunk) in dst[header..].chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&src[GROUP * header + (c * GROUP + r) * 4..][..4]);
        }
    }
}

/// How one block of an interleaved group of `dtype` goes into the 8-bit prefill's panel,
/// where a type has such a path: levels 4g..4g + 4 of row r at levels[g·32 + 4r..], and each
/// row's scale and offset (those of the type's `unpack_levels`). The group's quant chunks
/// are whole 32-byte runs of the panel already, where a row-major matrix is unpacked row by
/// row and scattered.
pub fn panel_block(dtype: DType) -> Option<fn(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32])> {
    match dtype {
        DType::Q4_0 => Some(q4_0_panel_block),
        DType::Q8_0 => Some(q8_0_panel_block),
        DType::Q5_0 => Some(q5_0_panel_block),
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
    for (c, chunk) in block[HEADER..].chunks_exact(32).enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Interleaving moves bytes only: every row's blocks come back exactly, for every type
    /// that can be interleaved, whole rows and inner block ranges alike.
    #[test]
    fn interleaved_rows_come_back_exactly() {
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q8_0] {
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
}
