//! The dtype table: one row per GGUF tensor type, as ggml's type_traits. Everything the rest
//! of retort knows about a numeric format (its ggml id and name, block geometry, and how to
//! convert and dot it) is in its row; adding a type means adding a variant and a row.

use crate::quants::{float, k_quants, q4_0, q4_1, q5_0, q5_1, q8_0, q8_1};

/// A GGUF tensor type. The variants are declared in table order (see [`TABLE`]); the ggml id
/// is [`DType::ggml_id`].
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
}

/// One row of the table.
#[derive(Debug)]
pub struct TypeTraits {
    pub dtype: DType,
    /// ggml's enum ggml_type value, as stored in GGUF tensor infos.
    pub ggml_id: u32,
    /// ggml's type name (ggml_type_name).
    pub name: &'static str,
    /// Elements per block.
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
    /// Dequantize one row: src.len() == row_bytes(dst.len()).
    pub to_f32: fn(src: &[u8], dst: &mut [f32]),
    /// Reference quantizer (bit-exact with ggml's quantize_row_*_ref where ggml has one);
    /// None where not yet written.
    pub from_f32: Option<fn(src: &[f32], dst: &mut [u8])>,
    /// Exact dot product of a quantized row with f32 activations: sum_i dequant(row)_i * x_i,
    /// in f32, without a temporary buffer.
    pub dot_f32: fn(row: &[u8], x: &[f32]) -> f32,
    /// ggml's vec_dot_type: the 8-bit type activations are quantized to for the integer
    /// dot products of this weight type (`cpu::simd::vec_dot`); F32 where activations stay
    /// f32 (F32, F16, and the activation-only types themselves). BF16 takes BF16, as in
    /// ggml, where the CPU multiplies BF16 pairs (AVX-512 BF16); elsewhere it stays exact.
    /// Unlike ggml, Q4_0 and Q5_0 take Q8_1: its block sums turn their fixed offsets into
    /// one multiply a block.
    pub vec_dot_type: DType,
    /// The block as integer levels with a scale and an offset per 32 values, w = scale·u +
    /// offset, exactly: what the 8-bit prefill kernel multiplies (`cpu::matmul_8bit`). None
    /// for types that are not of that form (16-bit-scaled sub-blocks of 16, floats).
    pub levels: Option<AffineLevels>,
}

/// See [`TypeTraits::levels`].
#[derive(Clone, Copy, Debug)]
pub struct AffineLevels {
    pub range: LevelRange,
    /// One block → block_size levels in value order, and block_size / 32 scales and offsets.
    pub unpack: fn(block: &[u8], levels: &mut [u8], scales: &mut [f32], offsets: &mut [f32]),
}

/// The values a type's levels take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelRange {
    /// 0..=max (15 or 31): the level goes straight into `maddubs` as its unsigned operand.
    Unsigned(u8),
    /// −127..=127, the bytes of an i8 (Q8_0): multiplied as |w| times sign(w)·x.
    Signed,
}

/// The table, indexed by `DType as usize`.
static TABLE: [TypeTraits; DType::ALL.len()] = ROWS;

const ROWS: [TypeTraits; DType::ALL.len()] = [
    TypeTraits {
        dtype: DType::F32, ggml_id: 0, name: "f32", block_size: 1, type_size: 4,
        to_f32: float::f32_to_f32, from_f32: Some(float::f32_from_f32), dot_f32: float::f32_dot, vec_dot_type: DType::F32, levels: None,
    },
    TypeTraits {
        dtype: DType::F16, ggml_id: 1, name: "f16", block_size: 1, type_size: 2,
        to_f32: float::f16_to_f32, from_f32: Some(float::f16_from_f32), dot_f32: float::f16_dot, vec_dot_type: DType::F32, levels: None,
    },
    TypeTraits {
        dtype: DType::BF16, ggml_id: 30, name: "bf16", block_size: 1, type_size: 2,
        to_f32: float::bf16_to_f32, from_f32: Some(float::bf16_from_f32), dot_f32: float::bf16_dot, vec_dot_type: DType::BF16, levels: None,
    },
    TypeTraits {
        dtype: DType::Q4_0, ggml_id: 2, name: "q4_0", block_size: q4_0::QK, type_size: q4_0::BLOCK_BYTES,
        to_f32: q4_0::to_f32, from_f32: Some(q4_0::from_f32), dot_f32: q4_0::dot_f32, vec_dot_type: DType::Q8_1, levels: Some(AffineLevels { range: LevelRange::Unsigned(15), unpack: q4_0::unpack_levels }),
    },
    TypeTraits {
        dtype: DType::Q4_1, ggml_id: 3, name: "q4_1", block_size: q4_1::QK, type_size: q4_1::BLOCK_BYTES,
        to_f32: q4_1::to_f32, from_f32: Some(q4_1::from_f32), dot_f32: q4_1::dot_f32, vec_dot_type: DType::Q8_1, levels: Some(AffineLevels { range: LevelRange::Unsigned(15), unpack: q4_1::unpack_levels }),
    },
    TypeTraits {
        dtype: DType::Q5_0, ggml_id: 6, name: "q5_0", block_size: q5_0::QK, type_size: q5_0::BLOCK_BYTES,
        to_f32: q5_0::to_f32, from_f32: Some(q5_0::from_f32), dot_f32: q5_0::dot_f32, vec_dot_type: DType::Q8_1, levels: Some(AffineLevels { range: LevelRange::Unsigned(31), unpack: q5_0::unpack_levels }),
    },
    TypeTraits {
        dtype: DType::Q5_1, ggml_id: 7, name: "q5_1", block_size: q5_1::QK, type_size: q5_1::BLOCK_BYTES,
        to_f32: q5_1::to_f32, from_f32: Some(q5_1::from_f32), dot_f32: q5_1::dot_f32, vec_dot_type: DType::Q8_1, levels: Some(AffineLevels { range: LevelRange::Unsigned(31), unpack: q5_1::unpack_levels }),
    },
    TypeTraits {
        dtype: DType::Q8_0, ggml_id: 8, name: "q8_0", block_size: q8_0::QK, type_size: q8_0::BLOCK_BYTES,
        to_f32: q8_0::to_f32, from_f32: Some(q8_0::from_f32), dot_f32: q8_0::dot_f32, vec_dot_type: DType::Q8_0, levels: Some(AffineLevels { range: LevelRange::Signed, unpack: q8_0::unpack_levels }),
    },
    TypeTraits {
        dtype: DType::Q8_1, ggml_id: 9, name: "q8_1", block_size: q8_1::QK, type_size: q8_1::BLOCK_BYTES,
        to_f32: q8_1::to_f32, from_f32: Some(q8_1::from_f32), dot_f32: q8_1::dot_f32, vec_dot_type: DType::F32, levels: None,
    },
    TypeTraits {
        dtype: DType::Q2_K, ggml_id: 10, name: "q2_K", block_size: k_quants::QK_K, type_size: k_quants::q2_k::BLOCK_BYTES,
        to_f32: k_quants::q2_k::to_f32, from_f32: Some(k_quants::q2_k::from_f32), dot_f32: k_quants::q2_k::dot_f32, vec_dot_type: DType::Q8_K, levels: None,
    },
    TypeTraits {
        dtype: DType::Q3_K, ggml_id: 11, name: "q3_K", block_size: k_quants::QK_K, type_size: k_quants::q3_k::BLOCK_BYTES,
        to_f32: k_quants::q3_k::to_f32, from_f32: Some(k_quants::q3_k::from_f32), dot_f32: k_quants::q3_k::dot_f32, vec_dot_type: DType::Q8_K, levels: None,
    },
    TypeTraits {
        dtype: DType::Q4_K, ggml_id: 12, name: "q4_K", block_size: k_quants::QK_K, type_size: k_quants::q4_k::BLOCK_BYTES,
        to_f32: k_quants::q4_k::to_f32, from_f32: Some(k_quants::q4_k::from_f32), dot_f32: k_quants::q4_k::dot_f32, vec_dot_type: DType::Q8_K, levels: Some(AffineLevels { range: LevelRange::Unsigned(15), unpack: k_quants::q4_k::unpack_levels }),
    },
    TypeTraits {
        dtype: DType::Q5_K, ggml_id: 13, name: "q5_K", block_size: k_quants::QK_K, type_size: k_quants::q5_k::BLOCK_BYTES,
        to_f32: k_quants::q5_k::to_f32, from_f32: Some(k_quants::q5_k::from_f32), dot_f32: k_quants::q5_k::dot_f32, vec_dot_type: DType::Q8_K, levels: Some(AffineLevels { range: LevelRange::Unsigned(31), unpack: k_quants::q5_k::unpack_levels }),
    },
    TypeTraits {
        dtype: DType::Q6_K, ggml_id: 14, name: "q6_K", block_size: k_quants::QK_K, type_size: k_quants::q6_k::BLOCK_BYTES,
        to_f32: k_quants::q6_k::to_f32, from_f32: Some(k_quants::q6_k::from_f32), dot_f32: k_quants::q6_k::dot_f32, vec_dot_type: DType::Q8_K, levels: None,
    },
    TypeTraits {
        dtype: DType::Q8_K, ggml_id: 15, name: "q8_K", block_size: k_quants::QK_K, type_size: k_quants::q8_k::BLOCK_BYTES,
        to_f32: k_quants::q8_k::to_f32, from_f32: Some(k_quants::q8_k::from_f32), dot_f32: k_quants::q8_k::dot_f32, vec_dot_type: DType::F32, levels: None,
    },
];

// Row i must describe variant i: `traits()` indexes by discriminant.
const _: () = {
    let mut i = 0;
    while i < ROWS.len() {
        assert!(ROWS[i].dtype as usize == i, "dtype table rows out of enum order");
        assert!(DType::ALL[i] as usize == i, "DType::ALL out of enum order");
        i += 1;
    }
};

impl DType {
    /// Every type, in table order.
    pub const ALL: &'static [DType] = &[
        DType::F32, DType::F16, DType::BF16,
        DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q8_1,
        DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_K,
    ];

    /// The type of a GGUF tensor info's ggml type id; None for a type retort does not know.
    pub fn from_ggml_id(id: u32) -> Option<DType> {
        TABLE.iter().find(|row| row.ggml_id == id).map(|row| row.dtype)
    }

    pub fn ggml_id(self) -> u32 {
        self.traits().ggml_id
    }

    /// The table row.
    #[inline]
    pub fn traits(self) -> &'static TypeTraits {
        &TABLE[self as usize]
    }

    /// ggml's name: "f32", "f16", "bf16", "q4_0", ..., "q6_K", "q8_K".
    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// Elements per block: 1 for the float types, 32 or 256 for the quantized ones.
    pub fn block_size(self) -> usize {
        self.traits().block_size
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.traits().type_size
    }

    /// Bytes of a row of n elements; None when n is not a multiple of the block size or on
    /// overflow (checked arithmetic: these come from untrusted files).
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let row = self.traits();
        if n % row.block_size != 0 {
            return None;
        }
        (n / row.block_size).checked_mul(row.type_size)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
