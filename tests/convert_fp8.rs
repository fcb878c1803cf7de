//! FP8 checkpoints (float8_e4m3fn weights with 128x128 `weight_scale_inv` block scales, as
//! DeepSeek V3/R1 and Qwen3-FP8 ship): converting to f32 must give exactly torch's
//! dequantization, fp8.float() * scale (fingerprints made by scripts/reference/fp8_fixture.py).

mod common;

use std::path::PathBuf;

use retort::convert::from_hf::convert_checkpoint;
use retort::convert::plan::OutputType;
use retort::kernels::DType;
use retort::models::gguf::GgufFile;
use common::fnv1a64;

#[test]
fn fp8_weights_dequantize_exactly_as_torch_does() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_fp8");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("expected_f32.json")).unwrap()).unwrap();
    let expected = expected["fnv1a64_of_dequantized_f32"].as_object().unwrap();
    let dir = std::env::temp_dir().join(format!("retort-fp8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let f32_path = dir.join("f32.gguf");
    convert_checkpoint(&fixture, &f32_path, OutputType::Uniform(DType::F32)).unwrap();
    let file = GgufFile::open(&f32_path).unwrap();
    assert_eq!(expected.len(), 14, "every layer weight of the 2-layer fixture is FP8");
    for (name, hash) in expected {
        let t = file.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(fnv1a64(file.tensor_data(t).unwrap()), hash.as_str().unwrap(), "{name}");
    }
    assert!(file.tensors().iter().all(|t| !t.name.contains("scale_inv")), "scales are folded into their weights");

    // `auto` keeps FP8 weights as BF16 (GGUF has no FP8 type); the result still runs.
    let auto_path = dir.join("auto.gguf");
    let written = convert_checkpoint(&fixture, &auto_path, OutputType::Auto).unwrap();
    assert!(written.iter().filter(|(n, _)| expected.contains_key(n)).all(|(_, t)| *t == DType::BF16));
    let model = retort::runtime::Model::load(&auto_path).unwrap();
    let mut exec = model.executor(8, 8, true, 1).unwrap();
    let logits = retort::runtime::generate::all_logits(&mut exec, &[1, 2, 3, 4]).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(&dir).unwrap();
}
