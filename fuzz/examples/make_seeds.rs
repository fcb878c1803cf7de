//! Writes the GGUF seed corpus into fuzz/seeds/gguf/ with retort's own `GgufWriter`:
//!
//! - `empty.gguf`: header only, no metadata, no tensors;
//! - `every_value.gguf`: every metadata value type (nested arrays, empty array, unicode),
//!   `general.alignment = 64`, one small tensor of every dtype (F32..Q8_K, BF16) and a 3-D one;
//! - `every_value_v2.gguf`: the same bytes with version 2 in the header;
//! - `tiny_llama.gguf`: a complete one-layer llama (32 wide, 4 heads, 2 kv heads) with a
//!   byte-level BPE vocabulary (the 256-symbol alphabet, a few merges, ChatML specials) and a
//!   chat template: it passes `HParams::from_gguf`, `build_graph` and `Tokenizer::new`, so the
//!   `gguf_body` target starts from a file that goes all the way through the load path.
//!
//! Run from the repository root (the seeds are committed; rerun only to change them):
//!     cargo run --manifest-path fuzz/Cargo.toml --example make_seeds

use std::path::Path;

use retort_kernels::DType;
use retort_models::gguf::{Array, GgufWriter, Value};

/// Bytes that vary with position (quantized blocks with assorted scales and indices).
fn pattern(seed: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(37) ^ seed.wrapping_mul(11)) as u8).collect()
}

fn byte_level_alphabet() -> Vec<String> {
    let mut shifted = 0u32;
    (0u32..256)
        .map(|b| {
            let cp = if matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(cp).unwrap().to_string()
        })
        .collect()
}

fn empty(path: &Path) {
    GgufWriter::new().write(path, |_, _, _| Ok(())).unwrap();
}

fn every_value(path: &Path) {
    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::U32(64)).unwrap();
    let values = vec![
        ("t.u8", Value::U8(250)),
        ("t.i8", Value::I8(-7)),
        ("t.u16", Value::U16(65000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(1e-5)),
        ("t.bool", Value::Bool(true)),
        ("t.string", Value::String("<｜User｜> ünïcode ✓".into())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("t.arr.u8", Value::Array(Array::U8(vec![1, 2, 3]))),
        ("t.arr.i8", Value::Array(Array::I8(vec![-1, 2]))),
        ("t.arr.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("t.arr.i16", Value::Array(Array::I16(vec![-1, 300]))),
        ("t.arr.u32", Value::Array(Array::U32(vec![7]))),
        ("t.arr.i32", Value::Array(Array::I32(vec![1, 3, 4, 6]))),
        ("t.arr.f32", Value::Array(Array::F32(vec![0.5, -2.0]))),
        ("t.arr.bool", Value::Array(Array::Bool(vec![true, false]))),
        ("t.arr.string", Value::Array(Array::String(vec!["Ġthe".into(), "".into(), "日本".into()]))),
        ("t.arr.u64", Value::Array(Array::U64(vec![u64::MAX]))),
        ("t.arr.i64", Value::Array(Array::I64(vec![-5]))),
        ("t.arr.f64", Value::Array(Array::F64(vec![1.5]))),
        ("t.arr.empty", Value::Array(Array::F32(vec![]))),
        (
            "t.arr.nested",
            Value::Array(Array::Array(vec![
                Array::U8(vec![1]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::I32(vec![-1, 1])]),
            ])),
        ),
    ];
    for (k, v) in values {
        w.set(k, v).unwrap();
    }
    for &dtype in DType::ALL {
        w.add_tensor(&format!("t.{}", dtype.name()), &[dtype.block_size() as u64, 2], dtype).unwrap();
    }
    w.add_tensor("t.3d", &[4, 3, 2], DType::F32).unwrap();
    w.add_tensor("t.empty", &[32, 0], DType::Q8_0).unwrap();
    w.write(path, |i, info, out| out.write_all(&pattern(i, info.n_bytes))).unwrap();
}

fn tiny_llama(path: &Path) {
    const D: u64 = 32;
    const N_HEAD: u32 = 4;
    const N_HEAD_KV: u32 = 2;
    const HEAD_DIM: u64 = 8;
    const N_FF: u64 = 64;
    let mut w = GgufWriter::new();
    let set = |w: &mut GgufWriter, k: &str, v: Value| w.set(k, v).unwrap();
    set(&mut w, "general.architecture", Value::String("llama".into()));
    set(&mut w, "general.name", Value::String("fuzz seed".into()));
    set(&mut w, "llama.context_length", Value::U32(256));
    set(&mut w, "llama.embedding_length", Value::U32(D as u32));
    set(&mut w, "llama.block_count", Value::U32(1));
    set(&mut w, "llama.feed_forward_length", Value::U32(N_FF as u32));
    set(&mut w, "llama.attention.head_count", Value::U32(N_HEAD));
    set(&mut w, "llama.attention.head_count_kv", Value::U32(N_HEAD_KV));
    set(&mut w, "llama.rope.dimension_count", Value::U32(HEAD_DIM as u32));
    set(&mut w, "llama.rope.freq_base", Value::F32(10000.0));
    set(&mut w, "llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));

    let mut tokens = byte_level_alphabet();
    let extra = ["Ġt", "he", "Ġthe", "in", "Ġin", "<|im_start|>", "<|im_end|>", "<|endoftext|>"];
    tokens.extend(extra.iter().map(|s| s.to_string()));
    let n_vocab = tokens.len() as u64;
    let mut types = vec![1i32; tokens.len()];
    let n = types.len();
    types[n - 3..].fill(3);
    let merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ in"];
    set(&mut w, "tokenizer.ggml.model", Value::String("gpt2".into()));
    set(&mut w, "tokenizer.ggml.pre", Value::String("smollm".into()));
    set(&mut w, "tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    set(&mut w, "tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
    set(&mut w, "tokenizer.ggml.merges", Value::Array(Array::String(merges.iter().map(|s| s.to_string()).collect())));
    set(&mut w, "tokenizer.ggml.bos_token_id", Value::U32(n as u32 - 3));
    set(&mut w, "tokenizer.ggml.eos_token_id", Value::U32(n as u32 - 2));
    set(&mut w, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    set(
        &mut w,
        "tokenizer.chat_template",
        Value::String(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
        ),
    );

    let q = N_HEAD as u64 * HEAD_DIM;
    let kv = N_HEAD_KV as u64 * HEAD_DIM;
    let tensors: Vec<(&str, Vec<u64>, DType)> = vec![
        ("token_embd.weight", vec![D, n_vocab], DType::Q4_0),
        ("blk.0.attn_norm.weight", vec![D], DType::F32),
        ("blk.0.attn_q.weight", vec![D, q], DType::Q8_0),
        ("blk.0.attn_k.weight", vec![D, kv], DType::Q8_0),
        ("blk.0.attn_v.weight", vec![D, kv], DType::Q8_0),
        ("blk.0.attn_output.weight", vec![q, D], DType::Q8_0),
        ("blk.0.ffn_norm.weight", vec![D], DType::F32),
        ("blk.0.ffn_gate.weight", vec![D, N_FF], DType::Q4_1),
        ("blk.0.ffn_up.weight", vec![D, N_FF], DType::Q5_0),
        ("blk.0.ffn_down.weight", vec![N_FF, D], DType::Q5_1),
        ("output_norm.weight", vec![D], DType::F16),
    ];
    for (name, dims, dtype) in &tensors {
        w.add_tensor(name, dims, *dtype).unwrap();
    }
    w.write(path, |i, info, out| {
        let bytes = match info.dtype {
            DType::F32 => 1f32.to_le_bytes().repeat(info.n_bytes / 4),
            DType::F16 => half::f16::ONE.to_le_bytes().repeat(info.n_bytes / 2),
            _ => pattern(i, info.n_bytes),
        };
        out.write_all(&bytes)
    })
    .unwrap();
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/gguf");
    std::fs::create_dir_all(&dir).unwrap();
    empty(&dir.join("empty.gguf"));
    every_value(&dir.join("every_value.gguf"));
    let mut v2 = std::fs::read(dir.join("every_value.gguf")).unwrap();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(dir.join("every_value_v2.gguf"), v2).unwrap();
    tiny_llama(&dir.join("tiny_llama.gguf"));
    // The seed is only worth its bytes if the whole load path accepts it.
    if let Err(e) = retort_runtime::Model::load(dir.join("tiny_llama.gguf")) {
        panic!("tiny_llama.gguf does not load: {e}");
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let n = retort_models::gguf::GgufFile::validate_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}: {} bytes, {n} tensors", path.display(), bytes.len());
    }
}
