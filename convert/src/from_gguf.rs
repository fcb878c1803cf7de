//! GGUF to GGUF: re-quantizing an existing file (dequantize each tensor's rows to f32, then
//! quantize to the planned type), as llama-quantize does.

use std::path::Path;

use retort_kernels::DType;
use retort_models::gguf::{GgufFile, TensorInfo, Value};
use retort_models::HParams;

use crate::error::{Error, Result};
use crate::plan::{plan_types, OutputType, TensorShape};
use crate::write::{write_gguf, TensorSource};

struct GgufTensor<'f> {
    file: &'f GgufFile,
    info: &'f TensorInfo,
    data: &'f [u8],
}

impl TensorSource for GgufTensor<'_> {
    fn name(&self) -> &str {
        &self.info.name
    }
    fn dims(&self) -> &[u64] {
        &self.info.dims
    }
    fn dtype(&self) -> DType {
        self.info.dtype
    }
    fn rows_f32(&self, first: usize, out: &mut [f32]) -> Result<()> {
        let row_len = self.info.dims[0] as usize;
        let row_bytes = self.info.dtype.row_bytes(row_len).expect("validated when the file was opened");
        let rows = out.len() / row_len;
        let bytes = &self.data[first * row_bytes..(first + rows) * row_bytes];
        let to_f32 = retort_kernels::cpu::simd::to_f32(self.info.dtype);
        for (src, dst) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(row_len)) {
            to_f32(src, dst);
        }
        Ok(())
    }
    fn raw(&self) -> Option<&[u8]> {
        Some(self.data)
    }
    fn release(&self) {
        self.file.release_tensor(self.info, 0, self.data.len());
    }
    fn release_rows(&self, first: usize, rows: usize) {
        let row_bytes = self.info.dtype.row_bytes(self.info.dims[0] as usize).expect("validated when the file was opened");
        self.file.release_tensor(self.info, first * row_bytes, rows * row_bytes);
    }
}

/// Writes `output` with every tensor of `input` in the type `output_type` plans for it.
/// Returns the (name, type) of each tensor written.
pub fn requantize(input: &Path, output: &Path, output_type: OutputType) -> Result<Vec<(String, DType)>> {
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            return Err(Error::Checkpoint(format!("{}: the output would overwrite the input", output.display())));
        }
    }
    let file = GgufFile::open(input)?;
    let sources: Vec<GgufTensor> =
        file.tensors().iter().map(|info| Ok(GgufTensor { file: &file, info, data: file.tensor_data(info)? })).collect::<Result<_>>()?;
    let n_gqa = HParams::from_gguf(&file).map_or(1, |hp| hp.n_head / hp.n_head_kv);
    let shapes: Vec<TensorShape> = sources.iter().map(|s| TensorShape { name: s.name(), dims: s.dims(), source: s.dtype() }).collect();
    let types = plan_types(&shapes, output_type, n_gqa);

    let mut metadata: Vec<(String, Value)> =
        file.metadata().filter(|(k, _)| *k != "general.file_type" && *k != "general.quantization_version").map(|(k, v)| (k.to_owned(), v.clone())).collect();
    if let Some(ftype) = output_type.llama_ftype() {
        metadata.push(("general.file_type".into(), Value::U32(ftype)));
    }
    metadata.push(("general.quantization_version".into(), Value::U32(2)));
    let plan: Vec<(&dyn TensorSource, DType)> = sources.iter().map(|s| s as &dyn TensorSource).zip(types.iter().copied()).collect();
    log::info!("{} -> {}: {} tensors", input.display(), output.display(), plan.len());
    write_gguf(output, metadata, &plan)?;
    Ok(sources.iter().map(|s| s.name().to_owned()).zip(types).collect())
}
