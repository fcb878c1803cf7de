//! Which GGUF type each tensor gets: the output types users ask for (`--type`), and
//! llama.cpp's rules (llama-quant.cpp, `llama_tensor_get_type`) for which tensors are
//! quantized at all and which get more bits in the mixes users download (Q4_K_M, Q5_K_M).

use retort_kernels::DType;

/// What `--type` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputType {
    /// Keep each tensor's source precision.
    Auto,
    /// Every quantizable weight in this type (output projection: see [`plan_types`]).
    Uniform(DType),
    /// llama.cpp's Q2_K mix (the ftype llama-quantize calls Q2_K).
    Q2KMix,
    Q4KM,
    Q5KM,
}

impl OutputType {
    pub const NAMES: &'static [&'static str] =
        &["auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"];

    pub fn parse(name: &str) -> Option<OutputType> {
        let lower = name.to_ascii_lowercase();
        Some(match lower.as_str() {
            "auto" => OutputType::Auto,
            "q2_k" => OutputType::Q2KMix,
            "q4_k_m" => OutputType::Q4KM,
            "q5_k_m" => OutputType::Q5KM,
            other => {
                let dtype = DType::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(other))?;
                if matches!(dtype, DType::Q8_1 | DType::Q8_K) {
                    return None; // Q8_1, Q8_K: activation formats, not weight formats
                }
                OutputType::Uniform(dtype)
            }
        })
    }

    /// The type most weights get, before the mix rules.
    fn base(self) -> Option<DType> {
        match self {
            OutputType::Auto => None,
            OutputType::Uniform(t) => Some(t),
            OutputType::Q2KMix => Some(DType::Q2_K),
            OutputType::Q4KM => Some(DType::Q4_K),
            OutputType::Q5KM => Some(DType::Q5_K),
        }
    }

    /// llama.cpp's `general.file_type` (enum llama_ftype) for this choice.
    pub fn llama_ftype(self) -> Option<u32> {
        Some(match self {
            OutputType::Auto => return None,
            OutputType::Q2KMix => 10,
            OutputType::Q4KM => 15,
            OutputType::Q5KM => 17,
            OutputType::Uniform(t) => match t {
                DType::F32 => 0,
                DType::F16 => 1,
                DType::Q4_0 => 2,
                DType::Q4_1 => 3,
                DType::Q8_0 => 7,
                DType::Q5_0 => 8,
                DType::Q5_1 => 9,
                DType::Q3_K => 11,
                DType::Q4_K => 14,
                DType::Q5_K => 16,
                DType::Q6_K => 18,
                DType::BF16 => 32,
                DType::Q2_K | DType::Q8_1 | DType::Q8_K => return None,
            },
        })
    }
}

/// What the planner needs to know of one tensor.
pub struct TensorShape<'a> {
    pub name: &'a str,
    /// ggml order (row length first).
    pub dims: &'a [u64],
    pub source: DType,
}

/// llama.cpp's `tensor_allows_quantization` for the tensors of the architectures we write:
/// 2-D (or more) weights, but not norms, the MoE router or position embeddings.
fn is_quantizable(t: &TensorShape) -> bool {
    t.dims.len() >= 2 && t.name.ends_with("weight") && !t.name.contains("_norm.weight") && !t.name.contains("ffn_gate_inp.weight")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Output,
    AttnV,
    AttnOutput,
    FfnDown,
    Other,
}

fn role(name: &str, tied_embeddings: bool) -> Role {
    if name == "output.weight" || (tied_embeddings && name == "token_embd.weight") {
        Role::Output
    } else if name.contains("attn_v.weight") || name.contains("attn_qkv.weight") {
        Role::AttnV
    } else if name.contains("attn_output.weight") {
        Role::AttnOutput
    } else if name.contains("ffn_down") {
        Role::FfnDown
    } else {
        Role::Other
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// layer between, are more sensitive to quantization.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

/// The GGUF type of every tensor, in order. `n_gqa` is n_head / n_head_kv.
pub fn plan_types(tensors: &[TensorShape], output: OutputType, n_gqa: usize) -> Vec<DType> {
    let tied = !tensors.iter().any(|t| t.name == "output.weight");
    let n_attn_v = tensors.iter().filter(|t| is_quantizable(t) && role(t.name, tied) == Role::AttnV).count();
    let n_ffn_down = tensors.iter().filter(|t| is_quantizable(t) && role(t.name, tied) == Role::FfnDown).count();
    // llama.cpp counts these in layer order (its loader sorts tensors by layer), whatever
    // the order in the file: the layer number in the name is that count.
    let layer_of = |name: &str| name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
    tensors
        .iter()
        .map(|t| {
            let Some(base) = output.base() else { return t.source };
            if !is_quantizable(t) {
                // Norms, biases and other vectors stay f32 (llama.cpp keeps them as they are;
                // every converter writes them as f32).
                return if t.dims.len() < 2 { DType::F32 } else { t.source };
            }
            let r = role(t.name, tied);
            let chosen = if base.block_size() == 1 {
                base
            } else {
                match r {
                    Role::Output => output_type(base, t.dims[0]),
                    Role::AttnV => {
                        let i = layer_of(t.name);
                        match output {
                            OutputType::Q2KMix => if n_gqa >= 4 { DType::Q4_K } else { DType::Q3_K },
                            OutputType::Q4KM | OutputType::Q5KM if use_more_bits(i, n_attn_v) => DType::Q6_K,
                            _ => base,
                        }
                    }
                    Role::FfnDown => {
                        let i = layer_of(t.name);
                        match output {
                            OutputType::Q2KMix => DType::Q3_K,
                            OutputType::Q4KM | OutputType::Q5KM if use_more_bits(i, n_ffn_down) => DType::Q6_K,
                            _ => base,
                        }
                    }
                    Role::AttnOutput if output == OutputType::Q2KMix => DType::Q3_K,
                    _ => base,
                }
            };
            fallback(chosen, t.dims[0])
        })
        .collect()
}

/// The output projection (or the embedding tied to it) is the most sensitive matrix:
/// llama.cpp gives it Q6_K, or Q8_0 when its rows are not whole 256-blocks.
fn output_type(base: DType, row_len: u64) -> DType {
    if row_len % DType::Q6_K.block_size() as u64 != 0 {
        DType::Q8_0
    } else if base == DType::Q8_0 {
        DType::Q8_0
    } else {
        DType::Q6_K
    }
}

/// llama.cpp's `tensor_type_fallback`: a row that is not whole blocks of the chosen type
/// goes to a 32-block type of similar size, and to F16 if even that does not fit.
fn fallback(chosen: DType, row_len: u64) -> DType {
    let fits = |t: DType| row_len % t.block_size() as u64 == 0;
    if fits(chosen) {
        return chosen;
    }
    let smaller = match chosen {
        DType::Q2_K | DType::Q3_K => DType::Q4_0,
        DType::Q4_K => DType::Q5_0,
        DType::Q5_K => DType::Q5_1,
        DType::Q6_K => DType::Q8_0,
        other => other,
    };
    let result = if fits(smaller) { smaller } else { DType::F16 };
    log::debug!("row length {row_len} is not a multiple of {}'s block size: using {}", chosen.name(), result.name());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(names: &[(&'static str, Vec<u64>)]) -> Vec<(String, Vec<u64>)> {
        names.iter().map(|(n, d)| (n.to_string(), d.clone())).collect()
    }

    /// A 16-layer model, as llama.cpp's rules see it.
    fn model(n_layer: usize, tied: bool) -> Vec<(String, Vec<u64>)> {
        let mut t = shapes(&[("token_embd.weight", vec![4096, 32000])]);
        for l in 0..n_layer {
            for (n, d) in [("attn_norm.weight", vec![4096]), ("attn_q.weight", vec![4096, 4096]), ("attn_v.weight", vec![4096, 1024]), ("attn_output.weight", vec![4096, 4096]), ("ffn_down.weight", vec![11008, 4096]), ("ffn_up.weight", vec![4096, 11008])] {
                t.push((format!("blk.{l}.{n}"), d));
            }
        }
        t.push(("output_norm.weight".into(), vec![4096]));
        if !tied {
            t.push(("output.weight".into(), vec![4096, 32000]));
        }
        t
    }

    fn plan(t: &[(String, Vec<u64>)], out: OutputType, n_gqa: usize) -> Vec<(String, DType)> {
        let s: Vec<TensorShape> = t.iter().map(|(n, d)| TensorShape { name: n, dims: d, source: DType::F32 }).collect();
        t.iter().map(|(n, _)| n.clone()).zip(plan_types(&s, out, n_gqa)).collect()
    }

    fn type_of(p: &[(String, DType)], name: &str) -> DType {
        p.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn q4_k_m_gives_more_bits_where_llama_cpp_does() {
        let p = plan(&model(16, false), OutputType::Q4KM, 4);
        assert_eq!(type_of(&p, "output.weight"), DType::Q6_K);
        assert_eq!(type_of(&p, "token_embd.weight"), DType::Q4_K);
        assert_eq!(type_of(&p, "blk.0.attn_norm.weight"), DType::F32);
        // use_more_bits for 16 layers: 0, 1, 4, 7, 10, 13, 14, 15
        let more: Vec<usize> = (0..16).filter(|&l| type_of(&p, &format!("blk.{l}.attn_v.weight")) == DType::Q6_K).collect();
        assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 14, 15]);
        let more: Vec<usize> = (0..16).filter(|&l| type_of(&p, &format!("blk.{l}.ffn_down.weight")) == DType::Q6_K).collect();
        assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 14, 15]);
        assert_eq!(type_of(&p, "blk.3.attn_q.weight"), DType::Q4_K);
        assert_eq!(type_of(&p, "blk.3.ffn_up.weight"), DType::Q4_K);
    }

    #[test]
    fn tied_embedding_is_treated_as_the_output() {
        let p = plan(&model(2, true), OutputType::Uniform(DType::Q4_0), 1);
        assert_eq!(type_of(&p, "token_embd.weight"), DType::Q6_K);
        assert_eq!(type_of(&p, "blk.1.ffn_down.weight"), DType::Q4_0);
        let p = plan(&model(2, true), OutputType::Uniform(DType::Q8_0), 1);
        assert_eq!(type_of(&p, "token_embd.weight"), DType::Q8_0);
    }

    #[test]
    fn rows_that_do_not_fit_fall_back_like_llama_cpp() {
        // SmolLM2: width 576 = 2.25 x 256.
        let t = shapes(&[("token_embd.weight", vec![576, 49152]), ("blk.0.attn_q.weight", vec![576, 576]), ("blk.0.ffn_down.weight", vec![1536, 576])]);
        let p = plan(&t, OutputType::Q4KM, 3);
        assert_eq!(type_of(&p, "token_embd.weight"), DType::Q8_0);
        assert_eq!(type_of(&p, "blk.0.attn_q.weight"), DType::Q5_0);
        assert_eq!(type_of(&p, "blk.0.ffn_down.weight"), DType::Q6_K); // 1536 fits, layer 0 gets more bits
        let p = plan(&shapes(&[("blk.0.attn_q.weight", vec![48, 64])]), OutputType::Uniform(DType::Q4_0), 1);
        assert_eq!(p[0].1, DType::F16, "48 is not a multiple of 32");
    }

    #[test]
    fn auto_keeps_the_source_and_names_parse() {
        let s = [TensorShape { name: "blk.0.attn_q.weight", dims: &[64, 64], source: DType::BF16 }];
        assert_eq!(plan_types(&s, OutputType::Auto, 1), vec![DType::BF16]);
        for name in OutputType::NAMES {
            assert!(OutputType::parse(name).is_some(), "{name}");
        }
        assert_eq!(OutputType::parse("Q4_K_M"), Some(OutputType::Q4KM));
        assert_eq!(OutputType::parse("q8_k"), None);
        assert_eq!(OutputType::parse("q7"), None);
    }
}
