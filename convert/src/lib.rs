//! retort-convert: Hugging Face checkpoints to GGUF (streaming, quantizing). Not written
//! yet: the `convert` issue builds it on the GGUF writer (retort_models::gguf::GgufWriter)
//! and the dtype table's quantizers (retort_kernels::DType::traits().from_f32).
