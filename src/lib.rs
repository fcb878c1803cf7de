//! The root package of the workspace: it owns the end-to-end tests in `tests/` and the
//! benches in `benches/`, and re-exports the crates they drive.
pub use retort_convert as convert;
pub use retort_kernels as kernels;
pub use retort_models as models;
pub use retort_runtime as runtime;
