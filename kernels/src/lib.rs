//! retort-kernels: the numeric formats of GGUF (one row per type in [`dtype`]) and the
//! CPU compute kernels. No file I/O lives here.
pub mod dtype;
pub mod quants;
pub mod cpu;

pub use dtype::DType;
