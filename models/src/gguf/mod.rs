//! GGUF, the file format of llama.cpp and retort: read by [`GgufFile`] (memory-mapped,
//! validated), written by [`GgufWriter`] (streamed, atomic).
//!
//! Layout (v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata
//! count, the metadata (key string, u32 type, value), the tensor table (name, u32 n_dims,
//! u64 dims[n_dims] with dims[0] the contiguous row length, u32 ggml type, u64 offset into
//! the data section), padding to `general.alignment` (default 32), then the tensor data.

mod reader;
mod value;
mod writer;

pub use reader::GgufFile;
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;

use retort_kernels::DType;

pub const GGUF_MAGIC: u32 = u32::from_le_bytes(*b"GGUF");
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the length of a contiguous row. A linear layer's weight of
    /// `out x in` (PyTorch) is `[in, out]` here.
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// (row length, number of rows) of the tensor viewed as a matrix.
    pub fn as_matrix(&self) -> (usize, usize) {
        let rows: u64 = self.dims[1..].iter().product();
        (self.dims[0] as usize, rows as usize)
    }
}
