//! Checkpoint folders written by transformers 5 (scripts/reference/safetensors_fixture.py):
//! one model.safetensors with a transformers 5 config.json, the same weights in three shards
//! with a transformers 4 config.json; rope settings in every spelling against what
//! transformers 5 makes of them; hostile indexes.

use std::path::{Path, PathBuf};

use retort_convert::checkpoint::{Checkpoint, RopeConfig, RopeScaling, DEFAULT_ROPE_THETA};
use retort_convert::Error;
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoint")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn manifest() -> Value {
    read_json(&fixtures().join("manifest.json"))
}

/// A fresh copy of a fixture folder, to be broken by the test.
fn copy_of(folder: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("retort-checkpoint-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join(folder)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn open_error(dir: &Path) -> String {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{}: opened a bad checkpoint", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The rope of the fixture model (llama3 scaling), whichever dialect its config is in.
fn fixture_rope() -> RopeConfig {
    RopeConfig {
        theta: 500000.0,
        partial_rotary_factor: 1.0,
        scaling: RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 },
    }
}

fn sorted_names(checkpoint: &Checkpoint) -> Vec<String> {
    let mut names: Vec<String> = checkpoint.tensor_names().map(str::to_owned).collect();
    names.sort();
    names
}

fn manifest_names(folder: &str) -> Vec<String> {
    manifest()[folder]["tensor_names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect()
}

#[test]
fn single_file_checkpoint_with_transformers5_config() {
    let checkpoint = Checkpoint::open(fixtures().join("single")).unwrap();
    assert_eq!(checkpoint.architecture().unwrap(), "LlamaForCausalLM");
    assert_eq!(checkpoint.architecture().unwrap(), manifest()["single"]["architecture"]);
    assert!(checkpoint.config.get("rope_parameters").is_some() && checkpoint.config.get("rope_theta").is_none());
    assert_eq!(checkpoint.rope().unwrap(), fixture_rope());
    assert_eq!(checkpoint.usize_field("hidden_size").unwrap(), 32);
    assert_eq!(checkpoint.usize_field("num_key_value_heads").unwrap(), 2);
    assert_eq!(checkpoint.f64_field("rms_norm_eps").unwrap(), 1e-6);
    assert_eq!(checkpoint.opt_usize_field("pad_token_id").unwrap(), None);
    assert_eq!(checkpoint.generation_config.as_ref().unwrap()["eos_token_id"], 2);
    assert_eq!(checkpoint.files().len(), 1);
    assert_eq!(sorted_names(&checkpoint), manifest_names("single"));
    // One file: names in data-offset order.
    let (file, _) = checkpoint.tensor("lm_head.weight").unwrap();
    let by_offset: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(checkpoint.tensor_names().collect::<Vec<_>>(), by_offset);
    let (_, embed) = checkpoint.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!((embed.dtype.name(), embed.shape.as_slice()), ("BF16", &[64usize, 32][..]));
    assert!(checkpoint.tensor("model.missing").is_none());
    assert!(checkpoint.unindexed_tensors().is_empty());
}

#[test]
fn sharded_checkpoint_with_transformers4_config_matches_the_single_file() {
    let single = Checkpoint::open(fixtures().join("single")).unwrap();
    let sharded = Checkpoint::open(fixtures().join("sharded")).unwrap();
    assert_eq!(sharded.files().len(), 3);
    assert!(sharded.config.get("rope_theta").is_some() && sharded.config.get("rope_scaling").is_some());
    assert_eq!(sharded.rope().unwrap(), fixture_rope(), "transformers 4 and 5 spellings normalize alike");
    assert_eq!(sorted_names(&sharded), manifest_names("sharded"));
    for name in single.tensor_names() {
        let (a_file, a) = single.tensor(name).unwrap();
        let (b_file, b) = sharded.tensor(name).unwrap();
        assert_eq!((&a.dtype, &a.shape), (&b.dtype, &b.shape), "{name}");
        assert_eq!(a_file.data(a), b_file.data(b), "{name}: bytes differ between the single file and the shards");
    }
    // Stable order: shards in name order, then data offset within each.
    let mut last = (0usize, 0usize);
    for name in sharded.tensor_names() {
        let (file, entry) = sharded.tensor(name).unwrap();
        let shard = sharded.files().iter().position(|f| std::ptr::eq(f, file)).unwrap();
        assert!((shard, entry.begin) >= last, "{name} out of order");
        last = (shard, entry.begin);
    }
    let shard_names: Vec<String> = sharded.files().iter().map(|f| f.path().file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(shard_names, ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]);
    let again: Vec<String> = Checkpoint::open(fixtures().join("sharded")).unwrap().tensor_names().map(str::to_owned).collect();
    assert_eq!(again, sharded.tensor_names().collect::<Vec<_>>());
}

#[test]
fn rope_parameters_match_transformers_for_both_fixture_configs() {
    for folder in ["single", "sharded"] {
        let checkpoint = Checkpoint::open(fixtures().join(folder)).unwrap();
        let rope = checkpoint.rope().unwrap();
        assert_rope_matches(folder, &rope, &manifest()[folder]["rope_parameters"], None);
    }
}

/// `rope` against transformers 5's standardized `rope_parameters` (and yarn's attention
/// factor from its _compute_yarn_parameters).
fn assert_rope_matches(name: &str, rope: &RopeConfig, params: &Value, attention_factor: Option<f64>) {
    let f = |key: &str| params[key].as_f64().unwrap_or_else(|| panic!("{name}: {key} missing in {params}"));
    assert_eq!(rope.theta, f("rope_theta"), "{name}");
    assert_eq!(rope.partial_rotary_factor, params.get("partial_rotary_factor").map_or(1.0, |_| f("partial_rotary_factor")), "{name}");
    let original = || params["original_max_position_embeddings"].as_u64().unwrap() as usize;
    match (params["rope_type"].as_str().unwrap(), &rope.scaling) {
        ("default", RopeScaling::None) => {}
        ("linear", RopeScaling::Linear { factor }) => assert_eq!(*factor, f("factor"), "{name}"),
        ("llama3", RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            assert_eq!(
                (*factor, *low_freq_factor, *high_freq_factor, *original_max_position_embeddings),
                (f("factor"), f("low_freq_factor"), f("high_freq_factor"), original()),
                "{name}"
            );
        }
        ("yarn", RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor: a, mscale, mscale_all_dim, truncate }) => {
            assert_eq!((*factor, *original_max_position_embeddings), (f("factor"), original()), "{name}");
            assert_eq!(*beta_fast, params.get("beta_fast").map_or(32.0, |_| f("beta_fast")), "{name}");
            assert_eq!(*beta_slow, params.get("beta_slow").map_or(1.0, |_| f("beta_slow")), "{name}");
            assert_eq!(*mscale, params.get("mscale").and_then(Value::as_f64), "{name}");
            assert_eq!(*mscale_all_dim, params.get("mscale_all_dim").and_then(Value::as_f64), "{name}");
            assert_eq!(*truncate, params.get("truncate").and_then(Value::as_bool).unwrap_or(true), "{name}");
            let want = attention_factor.expect("yarn variants carry transformers' attention factor");
            assert!((a - want).abs() <= 1e-12 * want.abs(), "{name}: attention factor {a} vs transformers' {want}");
        }
        (kind, scaling) => panic!("{name}: transformers says {kind}, we say {scaling:?}"),
    }
}

#[test]
fn every_rope_spelling_normalizes_as_transformers_does() {
    let variants = read_json(&fixtures().join("rope_variants.json"));
    let variants = variants.as_object().unwrap();
    assert!(variants.len() >= 10);
    for (name, variant) in variants {
        let rope = RopeConfig::from_config(&variant["config"], DEFAULT_ROPE_THETA).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_rope_matches(name, &rope, &variant["rope_parameters"], variant.get("attention_factor").and_then(Value::as_f64));
    }
}

#[test]
fn unsupported_or_malformed_rope_is_an_error_naming_it() {
    let error = |config: Value| RopeConfig::from_config(&config, DEFAULT_ROPE_THETA).unwrap_err();
    let base = json!({"max_position_embeddings": 4096});
    let with = |key: &str, value: Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    assert!(error(with("rope_scaling", json!({"type": "dynamic", "factor": 2.0}))).contains("rope type 'dynamic' is not supported"));
    assert!(error(with("rope_parameters", json!({"rope_type": "longrope"}))).contains("'longrope'"));
    assert!(error(with("rope_parameters", json!({"rope_type": "linear"}))).contains("rope 'factor' is missing"));
    assert!(error(with("rope_parameters", json!({"rope_type": "linear", "factor": "2"}))).contains("rope 'factor': \"2\" is not a number"));
    assert!(error(with("rope_parameters", json!({"rope_type": "linear", "factor": -1.0}))).contains("rope 'factor' -1 is not a positive number"));
    assert!(error(with("rope_parameters", json!({"rope_type": "default", "rope_theta": 0}))).contains("rope_theta 0 is not a positive number"));
    assert!(error(with("rope_scaling", json!("linear"))).contains("'rope_scaling': \"linear\" is not an object"));
    assert!(error(json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})).contains("'max_position_embeddings' is missing"));
    // Per-layer-type parameters (Gemma 3 style) need the layer type.
    let mut nested = with(
        "rope_parameters",
        json!({
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        }),
    );
    nested["layer_types"] = json!(["sliding_attention", "full_attention"]);
    assert!(error(nested.clone()).contains("per layer type (full_attention, sliding_attention)"));
    let full = RopeConfig::from_config_for_layer_type(&nested, DEFAULT_ROPE_THETA, "full_attention").unwrap();
    assert_eq!((full.theta, full.scaling), (1000000.0, RopeScaling::Linear { factor: 8.0 }));
    let sliding = RopeConfig::from_config_for_layer_type(&nested, DEFAULT_ROPE_THETA, "sliding_attention").unwrap();
    assert_eq!((sliding.theta, sliding.scaling), (10000.0, RopeScaling::None));
    assert!(RopeConfig::from_config_for_layer_type(&nested, DEFAULT_ROPE_THETA, "chunked").unwrap_err().contains("no rope parameters for layer type 'chunked'"));
}

#[test]
fn config_fields_are_typed_and_errors_name_the_key() {
    let dir = copy_of("single", "fields");
    let mut config = read_json(&dir.join("config.json"));
    config["hidden_size"] = json!(-32);
    config["rms_norm_eps"] = json!("small");
    config["architectures"] = json!([]);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let err = checkpoint.usize_field("hidden_size").unwrap_err().to_string();
    assert!(err.contains("config.json: 'hidden_size' -32 is not a non-negative integer"), "{err}");
    let err = checkpoint.f64_field("rms_norm_eps").unwrap_err().to_string();
    assert!(err.contains("'rms_norm_eps' \"small\" is not a number"), "{err}");
    let err = checkpoint.usize_field("num_experts").unwrap_err().to_string();
    assert!(err.contains("'num_experts' missing"), "{err}");
    assert_eq!(checkpoint.opt_f64_field("num_experts").unwrap(), None);
    let err = checkpoint.architecture().unwrap_err().to_string();
    assert!(err.contains("'architectures'"), "{err}");
    // Integers are numbers too.
    assert_eq!(checkpoint.f64_field("vocab_size").unwrap(), 64.0);
}

// ---- hostile folders --------------------------------------------------------------------

fn rewrite_index(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("model.safetensors.index.json");
    let mut index = read_json(&path);
    edit(index["weight_map"].as_object_mut().unwrap());
    std::fs::write(path, index.to_string()).unwrap();
}

#[test]
fn shard_names_must_stay_inside_the_folder() {
    // The single-file fixture is a real safetensors file holding the tensor: only the name
    // check stands between a hostile index and reading it.
    let escapes = [
        "../single/model.safetensors".to_owned(),
        fixtures().join("single/model.safetensors").to_string_lossy().into_owned(),
        "./model-00001-of-00003.safetensors".to_owned(),
        "..".to_owned(),
        ".".to_owned(),
        "sub\\model.safetensors".to_owned(),
        "model.safetensors\0".to_owned(),
    ];
    for (i, shard) in escapes.iter().enumerate() {
        let dir = copy_of("sharded", &format!("escape{i}"));
        // A sibling folder named like the fixture's, so that `../single/...` would resolve.
        let _ = std::fs::create_dir_all(dir.parent().unwrap().join("single"));
        rewrite_index(&dir, |map| {
            map.insert("lm_head.weight".into(), json!(shard));
        });
        let err = open_error(&dir);
        assert!(err.contains("tensor 'lm_head.weight': shard name") && err.contains("is not a plain file name inside the checkpoint folder"), "{shard}: {err}");
    }
    let dir = copy_of("sharded", "empty_name");
    rewrite_index(&dir, |map| {
        map.insert("lm_head.weight".into(), json!(""));
    });
    assert!(open_error(&dir).contains("shard name '' is empty"));
}

#[test]
fn indexed_tensors_must_be_in_their_shard() {
    let dir = copy_of("sharded", "wrong_shard");
    let index = read_json(&dir.join("model.safetensors.index.json"));
    let shard = index["weight_map"]["lm_head.weight"].as_str().unwrap().to_owned();
    let other = if shard.contains("00001") { "model-00002-of-00003.safetensors" } else { "model-00001-of-00003.safetensors" };
    rewrite_index(&dir, |map| {
        map.insert("lm_head.weight".into(), json!(other));
    });
    let err = open_error(&dir);
    assert!(err.contains(&format!("tensor 'lm_head.weight' is mapped to {other}, which does not hold it")), "{err}");

    let dir = copy_of("sharded", "ghost");
    rewrite_index(&dir, |map| {
        map.insert("model.ghost.weight".into(), json!(shard));
    });
    assert!(open_error(&dir).contains("tensor 'model.ghost.weight' is mapped to"));

    let dir = copy_of("sharded", "missing_shard");
    rewrite_index(&dir, |map| {
        map.insert("lm_head.weight".into(), json!("model-00009-of-00009.safetensors"));
    });
    match Checkpoint::open(&dir) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("model-00009-of-00009.safetensors")),
        Err(e) => panic!("expected an I/O error naming the shard, got {e}"),
        Ok(_) => panic!("opened an index naming a missing shard"),
    }
}

#[test]
fn tensors_missing_from_the_index_are_left_out_with_a_warning() {
    let dir = copy_of("sharded", "unindexed");
    let mut shard = String::new();
    rewrite_index(&dir, |map| {
        shard = map.remove("model.norm.weight").unwrap().as_str().unwrap().to_owned();
    });
    let checkpoint = Checkpoint::open(&dir).unwrap();
    assert!(checkpoint.tensor("model.norm.weight").is_none());
    assert!(checkpoint.tensor_names().all(|n| n != "model.norm.weight"));
    assert_eq!(checkpoint.tensor_names().count(), manifest_names("sharded").len() - 1);
    assert_eq!(checkpoint.unindexed_tensors(), [(shard, "model.norm.weight".to_owned())]);
}

#[test]
fn malformed_index_and_config_are_errors_naming_the_file() {
    let dir = copy_of("sharded", "duplicate_key");
    let index = std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap();
    let duplicated = index.replacen("\"weight_map\": {", "\"weight_map\": {\"lm_head.weight\": \"x.safetensors\",", 1);
    assert_ne!(duplicated, index);
    std::fs::write(dir.join("model.safetensors.index.json"), duplicated).unwrap();
    let err = open_error(&dir);
    assert!(err.contains("model.safetensors.index.json") && err.contains("key 'lm_head.weight' appears twice"), "{err}");

    let dir = copy_of("sharded", "no_weight_map");
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"metadata": {}}"#).unwrap();
    assert!(open_error(&dir).contains("missing field `weight_map`"));
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map": {}}"#).unwrap();
    assert!(open_error(&dir).contains("weight_map is empty"));
    std::fs::write(dir.join("model.safetensors.index.json"), r#"{"weight_map": {"a": 5}}"#).unwrap();
    assert!(open_error(&dir).contains("'a': invalid type: integer `5`, expected a string"));

    let dir = copy_of("single", "bad_config");
    std::fs::write(dir.join("config.json"), "{\"architectures\": [").unwrap();
    assert!(open_error(&dir).contains("config.json: EOF while parsing"));
    std::fs::write(dir.join("config.json"), "[]").unwrap();
    assert!(open_error(&dir).contains("config.json: not a JSON object"));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(open_error(&dir).contains("config.json"));

    let dir = copy_of("single", "bad_generation_config");
    std::fs::write(dir.join("generation_config.json"), "{").unwrap();
    assert!(open_error(&dir).contains("generation_config.json"));
    std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    assert!(Checkpoint::open(&dir).unwrap().generation_config.is_none());

    let dir = copy_of("single", "no_weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(open_error(&dir).contains("no model.safetensors or model.safetensors.index.json"));

    let dir = copy_of("single", "bad_weights");
    std::fs::write(dir.join("model.safetensors"), [1u8, 0, 0, 0, 0, 0, 0, 0, b'x']).unwrap();
    let err = open_error(&dir);
    assert!(err.contains("model.safetensors: invalid safetensors: header JSON"), "{err}");

    assert!(open_error(&fixtures().join("single/config.json")).contains("not a directory"));
}
