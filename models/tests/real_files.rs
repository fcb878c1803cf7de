//! The real model files from scripts/fetch-models.sh: SmolLM2 opens and builds; the
//! truncated R1-distill chunk fails naming the first tensor whose data is missing.

use retort_models::gguf::GgufFile;
use retort_models::HParams;

use retort_models::real_models::real_model as model_file;

#[test]
fn smollm2_opens_with_the_documented_hyperparameters() {
    let Some(path) = model_file("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let file = GgufFile::open(&path).unwrap();
    let hp = HParams::from_gguf(&file).unwrap();
    assert_eq!((hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv), (30, 576, 1536, 9, 3));
    assert_eq!((hp.rope_freq_base, hp.rms_eps), (100000.0, 1e-5));
    assert!(file.tensor("output.weight").is_none(), "SmolLM2 ties its embedding");
    let graph = retort_models::build_graph(&file, &hp).unwrap();
    assert_eq!(graph.vocab_size(), 49152);
}

#[test]
fn truncated_r1_chunk_names_the_first_missing_tensor() {
    let Some(path) = model_file("r1-distill-qwen-7b.part0000.gguf") else { return };
    let err = GgufFile::open(&path).err().expect("a 99.6 MB piece of a 4.7 GB file must not open").to_string();
    // The header is whole, so the header-only open works and tells which tensor comes first past the end.
    let header = GgufFile::open_header(&path).unwrap();
    let file_len = std::fs::metadata(&path).unwrap().len();
    let first_missing = header
        .tensors()
        .iter()
        .find(|t| header.data_start() as u64 + t.offset + t.n_bytes as u64 > file_len)
        .unwrap();
    assert!(err.contains(&format!("tensor '{}'", first_missing.name)) && err.contains("past the end of the file"), "{err}");
    let hp = HParams::from_gguf(&header).unwrap();
    assert_eq!((hp.arch.name(), hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv), ("qwen2", 28, 3584, 28, 4));
}
