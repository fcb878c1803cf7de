//! Hugging Face checkpoint folder to GGUF, for the llama family (LlamaForCausalLM,
//! Qwen2ForCausalLM, Qwen3ForCausalLM), with llama.cpp's tensor names and metadata keys so
//! that llama.cpp loads the result too.

use std::path::Path;

use retort_kernels::DType;
use retort_models::gguf::Value;

use crate::checkpoint::{Checkpoint, RopeScaling};
use crate::error::{Error, Result};
use crate::hf_tokenizer::tokenizer_metadata;
use crate::plan::{plan_types, OutputType, TensorShape};
use crate::safetensors::{f8_e4m3fn_to_f32, SafetensorsFile, StDType, TensorEntry};
use crate::write::{write_gguf, TensorSource};

/// `architectures[0]` of config.json -> GGUF `general.architecture`.
const ARCHITECTURES: &[(&str, &str)] = &[("LlamaForCausalLM", "llama"), ("Qwen2ForCausalLM", "qwen2"), ("Qwen3ForCausalLM", "qwen3")];

/// HF parameter names (after `model.layers.N.`) -> GGUF names (after `blk.N.`).
const LAYER_TENSORS: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// The GGUF name of an HF tensor; None for tensors that are not written (rotary caches).
fn gguf_name(hf: &str) -> Result<Option<String>> {
    // Rotary caches are recomputed; FP8 block scales are folded into their weight.
    if hf.ends_with("rotary_emb.inv_freq") || hf.ends_with("weight_scale_inv") {
        return Ok(None);
    }
    let name = match hf {
        "model.embed_tokens.weight" => "token_embd.weight".to_owned(),
        "model.norm.weight" => "output_norm.weight".to_owned(),
        "lm_head.weight" => "output.weight".to_owned(),
        _ => {
            let rest = hf.strip_prefix("model.layers.").ok_or_else(|| unknown_tensor(hf))?;
            let (layer, param) = rest.split_once('.').ok_or_else(|| unknown_tensor(hf))?;
            let layer: usize = layer.parse().map_err(|_| unknown_tensor(hf))?;
            let (_, gguf) = LAYER_TENSORS.iter().find(|(h, _)| *h == param).ok_or_else(|| unknown_tensor(hf))?;
            format!("blk.{layer}.{gguf}")
        }
    };
    Ok(Some(name))
}

fn unknown_tensor(name: &str) -> Error {
    Error::Checkpoint(format!("tensor '{name}' has no GGUF name for this architecture"))
}

/// One tensor of the checkpoint as the writer reads it.
struct HfTensor<'c> {
    name: String,
    /// ggml order: [row length, rows].
    dims: Vec<u64>,
    dtype: DType,
    bytes: &'c [u8],
    /// FP8 (e4m3) weights: their block scales; the values are fp8 × scale.
    fp8: Option<Fp8Scales>,
    /// The checkpoint file and entry the bytes come from (None for tensors we compute).
    origin: Option<(&'c SafetensorsFile, &'c TensorEntry)>,
    /// llama.cpp's converter reorders each head's q/k rows so that RoPE pairs neighbours
    /// (it rotates pairs (2i, 2i+1); Hugging Face's llama rotates (i, i + d/2)).
    permute_heads: Option<usize>,
}

/// DeepSeek-style block scales of an FP8 weight: one f32 per `block_rows × block_cols`
/// block (`weight_scale_inv`, row-major, last blocks possibly partial).
struct Fp8Scales {
    scales: Vec<f32>,
    block_rows: usize,
    block_cols: usize,
    blocks_per_row: usize,
}

impl HfTensor<'_> {
    /// The checkpoint row that becomes GGUF row `row`.
    fn source_row(&self, row: usize) -> usize {
        let Some(n_head) = self.permute_heads else { return row };
        let rows = self.dims[1..].iter().product::<u64>() as usize;
        let head_dim = rows / n_head;
        let (head, within) = (row / head_dim, row % head_dim);
        let (pair, side) = (within / 2, within % 2);
        head * head_dim + side * (head_dim / 2) + pair
    }
}

impl TensorSource for HfTensor<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn dims(&self) -> &[u64] {
        &self.dims
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn rows_f32(&self, first: usize, out: &mut [f32]) -> Result<()> {
        let row_len = self.dims[0] as usize;
        for (i, dst) in out.chunks_exact_mut(row_len).enumerate() {
            let src = self.source_row(first + i);
            match &self.fp8 {
                None => {
                    let row_bytes = row_len * self.dtype.type_size();
                    retort_kernels::cpu::simd::to_f32(self.dtype)(&self.bytes[src * row_bytes..(src + 1) * row_bytes], dst);
                }
                Some(f) => {
                    let scales = &f.scales[src / f.block_rows * f.blocks_per_row..][..f.blocks_per_row];
                    for (c, (d, &b)) in dst.iter_mut().zip(&self.bytes[src * row_len..(src + 1) * row_len]).enumerate() {
                        *d = f8_e4m3fn_to_f32(b) * scales[c / f.block_cols];
                    }
                }
            }
        }
        Ok(())
    }
    fn raw(&self) -> Option<&[u8]> {
        (self.permute_heads.is_none() && self.fp8.is_none()).then_some(self.bytes)
    }
    fn release(&self) {
        if let Some((file, entry)) = self.origin {
            file.release(entry);
        }
    }
    fn release_rows(&self, first: usize, rows: usize) {
        // Permuted rows are read out of order: those tensors are released whole at the end.
        if let (Some((file, entry)), None) = (self.origin, self.permute_heads) {
            let row_bytes = self.dims[0] as usize * if self.fp8.is_some() { 1 } else { self.dtype.type_size() };
            file.release_range(entry, first * row_bytes, rows * row_bytes);
        }
    }
}

/// The f32/f16/bf16 types safetensors and GGUF share, byte for byte.
fn shared_dtype(entry: &TensorEntry) -> Result<DType> {
    match entry.dtype {
        StDType::F32 => Ok(DType::F32),
        StDType::F16 => Ok(DType::F16),
        StDType::BF16 => Ok(DType::BF16),
        other => Err(Error::Checkpoint(format!(
            "tensor '{}' is {}: checkpoints convert from F32, F16, BF16 and F8_E4M3 with block scales",
            entry.name,
            other.name()
        ))),
    }
}

/// Writes `output` from the checkpoint in `dir`. Returns the (name, type) of every tensor.
pub fn convert_checkpoint(dir: &Path, output: &Path, output_type: OutputType) -> Result<Vec<(String, DType)>> {
    let ckpt = Checkpoint::open(dir)?;
    let hf_arch = ckpt.architecture()?;
    let arch = ARCHITECTURES.iter().find(|(hf, _)| *hf == hf_arch).map(|(_, gguf)| *gguf).ok_or_else(|| {
        let known: Vec<_> = ARCHITECTURES.iter().map(|(hf, _)| *hf).collect();
        Error::Checkpoint(format!("{}: architecture '{hf_arch}' is not supported (known: {})", dir.display(), known.join(", ")))
    })?;
    let hidden = ckpt.usize_field("hidden_size")?;
    let n_head = ckpt.usize_field("num_attention_heads")?;
    let n_head_kv = ckpt.opt_usize_field("num_key_value_heads")?.unwrap_or(n_head);
    let head_dim = ckpt.opt_usize_field("head_dim")?.unwrap_or(hidden / n_head.max(1));
    let n_vocab = ckpt.usize_field("vocab_size")?;
    let tied = ckpt.config.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false);
    let rope = ckpt.rope()?;
    let n_rot = (head_dim as f64 * rope.partial_rotary_factor) as usize;

    let key = |suffix: &str| format!("{arch}.{suffix}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())),
        (key("context_length"), Value::U32(ckpt.usize_field("max_position_embeddings")? as u32)),
        (key("embedding_length"), Value::U32(hidden as u32)),
        (key("block_count"), Value::U32(ckpt.usize_field("num_hidden_layers")? as u32)),
        (key("feed_forward_length"), Value::U32(ckpt.usize_field("intermediate_size")? as u32)),
        (key("attention.head_count"), Value::U32(n_head as u32)),
        (key("attention.head_count_kv"), Value::U32(n_head_kv as u32)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(ckpt.f64_field("rms_norm_eps")? as f32)),
        (key("rope.freq_base"), Value::F32(rope.theta as f32)),
        (key("rope.dimension_count"), Value::U32(n_rot as u32)),
        (key("vocab_size"), Value::U32(n_vocab as u32)),
    ];
    if head_dim != hidden / n_head {
        metadata.push((key("attention.key_length"), Value::U32(head_dim as u32)));
        metadata.push((key("attention.value_length"), Value::U32(head_dim as u32)));
    }
    let mut rope_factors = None;
    match rope.scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            metadata.push((key("rope.scaling.type"), Value::String("linear".into())));
            metadata.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
        }
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            rope_factors = Some(llama3_rope_factors(rope.theta, n_rot, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings));
        }
        RopeScaling::Yarn { .. } => return Err(Error::Checkpoint(format!("{}: YaRN rope scaling is not supported yet", dir.display()))),
    }
    if let Some(ftype) = output_type.llama_ftype() {
        metadata.push(("general.file_type".into(), Value::U32(ftype)));
    }
    metadata.push(("general.quantization_version".into(), Value::U32(2)));
    metadata.extend(tokenizer_metadata(dir, n_vocab)?);

    let shape = Shape { hidden, n_ff: ckpt.usize_field("intermediate_size")?, q: n_head * head_dim, kv: n_head_kv * head_dim, head_dim, n_vocab };
    let mut sources: Vec<HfTensor> = Vec::new();
    for hf in ckpt.tensor_names() {
        let Some(name) = gguf_name(hf)? else { continue };
        if name == "output.weight" && tied {
            log::debug!("{hf}: not written, the config ties it to the token embedding");
            continue;
        }
        let (file, entry) = ckpt.tensor(hf).expect("listed tensors exist");
        let dims: Vec<u64> = entry.shape.iter().rev().map(|&d| d as u64).collect();
        if let Some(expected) = expected_dims(&name, &shape) {
            if dims != expected {
                let hf_order: Vec<u64> = expected.iter().rev().copied().collect();
                return Err(Error::Checkpoint(format!("tensor '{hf}' has shape {:?} but config.json implies {hf_order:?}", entry.shape)));
            }
        }
        let permute_heads = match (arch, name.as_str()) {
            ("llama", n) if n.ends_with("attn_q.weight") => Some(n_head),
            ("llama", n) if n.ends_with("attn_k.weight") => Some(n_head_kv),
            ("llama", n) if n.ends_with("attn_q.bias") || n.ends_with("attn_k.bias") => {
                return Err(Error::Checkpoint(format!("tensor '{hf}': llama q/k biases are not supported")))
            }
            _ => None,
        };
        let (dtype, fp8) = match entry.dtype {
            StDType::F8E4M3 => (DType::BF16, Some(fp8_scales(&ckpt, hf, entry)?)),
            _ => (shared_dtype(entry)?, None),
        };
        sources.push(HfTensor { name, dims, dtype, bytes: file.data(entry), fp8, origin: Some((file, entry)), permute_heads });
    }
    let factors_bytes: Vec<u8> = rope_factors.iter().flatten().flat_map(|f: &f32| f.to_le_bytes()).collect();
    if let Some(f) = &rope_factors {
        sources.push(HfTensor { name: "rope_freqs.weight".into(), dims: vec![f.len() as u64], dtype: DType::F32, bytes: &factors_bytes, fp8: None, origin: None, permute_heads: None });
    }

    let shapes: Vec<TensorShape> = sources.iter().map(|s| TensorShape { name: &s.name, dims: &s.dims, source: s.dtype }).collect();
    let types = plan_types(&shapes, output_type, n_head / n_head_kv.max(1));
    let plan: Vec<(&dyn TensorSource, DType)> = sources.iter().map(|s| s as &dyn TensorSource).zip(types.iter().copied()).collect();
    log::info!("{} ({hf_arch}) -> {}: {} tensors", dir.display(), output.display(), plan.len());
    write_gguf(output, metadata, &plan)?;
    Ok(sources.iter().map(|s| s.name.clone()).zip(types).collect())
}

/// The block scales of FP8 weight `hf` (its `weight_scale_inv`), checked against its shape.
/// An FP8 weight becomes f32 values (fp8 × scale), then whatever type the plan gives it;
/// `--type auto` keeps it as BF16.
fn fp8_scales(ckpt: &Checkpoint, hf: &str, entry: &TensorEntry) -> Result<Fp8Scales> {
    let bad = |why: String| Error::Checkpoint(format!("FP8 tensor '{hf}': {why}"));
    let &[rows, cols] = entry.shape.as_slice() else { return Err(bad(format!("shape {:?} is not 2-D", entry.shape))) };
    let scale_name = format!("{hf}_scale_inv");
    let (file, scale) = ckpt.tensor(&scale_name).ok_or_else(|| bad(format!("no '{scale_name}' block scales")))?;
    let &[scale_rows, scale_cols] = scale.shape.as_slice() else { return Err(bad(format!("'{scale_name}' is not 2-D"))) };
    // DeepSeek V3/R1 and Qwen3-FP8 use 128 x 128 blocks (quantization_config.weight_block_size).
    let block = ckpt.config.pointer("/quantization_config/weight_block_size").and_then(|v| v.as_array()).map_or(vec![128, 128], |a| {
        a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect()
    });
    let [block_rows, block_cols] = block[..] else { return Err(bad(format!("weight_block_size {block:?} is not two numbers"))) };
    if block_rows == 0 || block_cols == 0 || rows.div_ceil(block_rows) != scale_rows || cols.div_ceil(block_cols) != scale_cols {
        return Err(bad(format!("scales {:?} do not cover {rows}x{cols} in {block_rows}x{block_cols} blocks", scale.shape)));
    }
    let scales = crate::safetensors::to_f32(scale, file.data(scale), None)?;
    Ok(Fp8Scales { scales, block_rows, block_cols, blocks_per_row: scale_cols })
}

/// The widths config.json declares, to check every tensor against before writing.
struct Shape {
    hidden: usize,
    n_ff: usize,
    /// Rows of the query projection (heads × head size) and of the key/value projections.
    q: usize,
    kv: usize,
    head_dim: usize,
    n_vocab: usize,
}

/// ggml-order dims the GGUF tensor `name` must have (None for names not listed here).
fn expected_dims(name: &str, s: &Shape) -> Option<Vec<u64>> {
    let param = name.strip_prefix("blk.").and_then(|r| r.split_once('.')).map_or(name, |(_, p)| p);
    let dims: &[usize] = match param {
        "token_embd.weight" | "output.weight" => &[s.hidden, s.n_vocab],
        "attn_norm.weight" | "ffn_norm.weight" | "output_norm.weight" => &[s.hidden],
        "attn_q.weight" => &[s.hidden, s.q],
        "attn_k.weight" | "attn_v.weight" => &[s.hidden, s.kv],
        "attn_q.bias" => &[s.q],
        "attn_k.bias" | "attn_v.bias" => &[s.kv],
        "attn_output.weight" => &[s.q, s.hidden],
        "attn_q_norm.weight" | "attn_k_norm.weight" => &[s.head_dim],
        "ffn_gate.weight" | "ffn_up.weight" => &[s.hidden, s.n_ff],
        "ffn_down.weight" => &[s.n_ff, s.hidden],
        _ => return None,
    };
    Some(dims.iter().map(|&d| d as u64).collect())
}

/// Llama 3.1's frequency divisors, as llama.cpp's converter writes them to
/// `rope_freqs.weight` (the runtime divides θ_i by factor_i): long wavelengths are slowed
/// by `factor`, short ones kept, a smooth ramp between.
fn llama3_rope_factors(theta: f64, n_rot: usize, factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_context: usize) -> Vec<f32> {
    // In f32, as transformers and llama.cpp's converter compute it, so the factors match theirs bit for bit.
    let (theta, factor, low, high, context) = (theta as f32, factor as f32, low_freq_factor as f32, high_freq_factor as f32, original_context as f32);
    let (low_wavelen, high_wavelen) = (context / low, context / high);
    (0..n_rot / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f32 / n_rot as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (context / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_rows_are_permuted_to_interleaved_pairs() {
        // One head of 4 rows: HF pairs (0,2),(1,3) must become GGUF rows 0,1 and 2,3.
        let t = HfTensor { name: "q".into(), dims: vec![1, 8], dtype: DType::F32, bytes: &[], fp8: None, origin: None, permute_heads: Some(2) };
        let order: Vec<usize> = (0..8).map(|r| t.source_row(r)).collect();
        assert_eq!(order, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }

    #[test]
    fn names_map_like_llama_cpp() {
        assert_eq!(gguf_name("model.layers.11.mlp.down_proj.weight").unwrap().unwrap(), "blk.11.ffn_down.weight");
        assert_eq!(gguf_name("model.layers.0.self_attn.k_norm.weight").unwrap().unwrap(), "blk.0.attn_k_norm.weight");
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq").unwrap(), None);
        assert!(gguf_name("model.layers.x.mlp.down_proj.weight").is_err());
        assert!(gguf_name("vision_tower.patch_embed.weight").unwrap_err().to_string().contains("vision_tower.patch_embed.weight"));
    }

    /// FP8 rows decoded here equal the safetensors reader's whole-tensor decoding with the
    /// same block scales (itself checked against torch), partial blocks included.
    #[test]
    fn fp8_rows_match_the_reader_with_block_scales() {
        let (rows, cols, block) = (130usize, 260usize, 128usize);
        let bytes: Vec<u8> = (0..rows * cols).map(|i| ((i * 37 + 11) % 256) as u8 & 0xF7).collect(); // no NaN patterns
        let (srows, scols) = (rows.div_ceil(block), cols.div_ceil(block));
        let scales: Vec<f32> = (0..srows * scols).map(|i| 0.5 + i as f32 * 0.25).collect();
        let entry = TensorEntry { name: "w".into(), dtype: StDType::F8E4M3, shape: vec![rows, cols], begin: 0, end: rows * cols };
        let expected = crate::safetensors::to_f32(&entry, &bytes, Some((&scales, block, block))).unwrap();
        let fp8 = Some(Fp8Scales { scales: scales.clone(), block_rows: block, block_cols: block, blocks_per_row: scols });
        let t = HfTensor { name: "w".into(), dims: vec![cols as u64, rows as u64], dtype: DType::BF16, bytes: &bytes, fp8, origin: None, permute_heads: None };
        let mut got = vec![0f32; rows * cols];
        t.rows_f32(0, &mut got).unwrap();
        assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert!(t.raw().is_none(), "fp8 bytes are never copied as they are");
    }

    #[test]
    fn expected_dims_follow_the_config() {
        let s = Shape { hidden: 64, n_ff: 128, q: 64, kv: 32, head_dim: 16, n_vocab: 300 };
        assert_eq!(expected_dims("blk.3.attn_k.weight", &s), Some(vec![64, 32]));
        assert_eq!(expected_dims("blk.0.ffn_down.weight", &s), Some(vec![128, 64]));
        assert_eq!(expected_dims("token_embd.weight", &s), Some(vec![64, 300]));
        assert_eq!(expected_dims("rope_freqs.weight", &s), None);
    }

    #[test]
    fn llama3_factors_span_one_to_factor() {
        let f = llama3_rope_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "monotone");
    }
}
