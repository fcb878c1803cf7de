//! CPU kernels over f32 activations. Each has a plain scalar form; where a SIMD form
//! exists it is chosen once at startup by CPU feature detection (`simd`) and tested against
//! the scalar one. Parallel kernels run on a [`ThreadPool`] the caller owns.

mod attention;
mod gemm;
mod gemm_i8;
pub mod interleave;
mod matmul;
mod norm;
pub mod pool;
pub mod rope;
pub mod simd;
mod vec;

pub use attention::{attention, softmax, AttentionShape, KvRows};
pub use matmul::{matmul, matmul_8bit, matmuls, matvec_quantized, matvecs, quantize_activations, Layout, Matrix, Matvec, Product, TokenInput, MAX_GROUPED_MATVECS};
pub use norm::rms_norm;
pub use pool::ThreadPool;
pub use rope::{RopeParams, RopeStyle};
pub use vec::{add, dot, silu_mul};
