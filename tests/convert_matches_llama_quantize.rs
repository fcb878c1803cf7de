//! `retort convert` against llama-quantize: SmolLM2 Q4_1 → f32 → every output type must
//! give llama-quantize's tensor types (its mix and fallback rules) and byte-identical
//! tensor data (its reference quantizers). The fingerprints were made by
//! scripts/reference/llama_quantize_hashes.py from llama-quantize's own output files.

mod common;

use std::path::PathBuf;

use retort::models::gguf::GgufFile;
use retort::convert::from_gguf::requantize;
use retort::convert::plan::OutputType;
use common::fnv1a64;

#[test]
fn every_output_type_is_byte_identical_to_llama_quantize() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(source) = retort::models::real_models::real_model("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/fixtures/llama_cpp/quantize_hashes.json")).unwrap()).unwrap();
    let tmp = std::env::temp_dir().join(format!("retort-convert-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let f32_path = tmp.join("f32.gguf");
    requantize(&source, &f32_path, OutputType::Uniform(retort::kernels::DType::F32)).unwrap();

    let mut failures = Vec::new();
    for (name, expected) in reference["types"].as_object().unwrap() {
        let out = tmp.join(format!("{name}.gguf"));
        requantize(&f32_path, &out, OutputType::parse(name).unwrap()).unwrap();
        let file = GgufFile::open(&out).unwrap();
        let expected = expected["tensors"].as_object().unwrap();
        assert_eq!(file.tensors().len(), expected.len(), "{name}: tensor count");
        for t in file.tensors() {
            let want = &expected[&t.name];
            let got = (t.dtype.name().to_ascii_lowercase(), fnv1a64(file.tensor_data(t).unwrap()));
            if (want[0].as_str().unwrap(), want[1].as_str().unwrap()) != (got.0.as_str(), got.1.as_str()) {
                failures.push(format!("{name} {}: llama-quantize {want}, retort {got:?}", t.name));
            }
        }
        std::fs::remove_file(&out).unwrap();
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(failures.is_empty(), "{} tensors differ:\n{}", failures.len(), failures[..failures.len().min(20)].join("\n"));
}
