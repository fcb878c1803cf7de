//! CPU kernels over f32 activations. Each has a plain scalar form; where a SIMD form
//! exists it is chosen at run time by CPU feature detection and tested against the scalar.
//! Parallel kernels run on the caller's rayon pool (the runtime installs one per session
//! with the requested thread count).

mod attention;
mod matmul;
mod norm;
mod rope;
mod vec;

pub use attention::{attention, softmax, AttentionShape};
pub use matmul::matmul;
pub use norm::rms_norm;
pub use rope::{rope, RopeParams, RopeStyle};
pub use vec::{add, dot, silu_mul};
