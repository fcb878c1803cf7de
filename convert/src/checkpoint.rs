//! A Hugging Face checkpoint folder: config.json, the optional generation_config.json, and
//! the weights, either one `model.safetensors` or shards listed by
//! `model.safetensors.index.json` (`{"weight_map": {tensor: shard file}}`).
//!
//! Every file is untrusted. JSON files are capped in size; shard names from the index must be
//! plain file names in the folder (a hostile index must not make us read `../../etc/x`);
//! every indexed tensor must be in its shard. A tensor that a shard holds but the index does
//! not map to that shard is left out with a warning ([`Checkpoint::unindexed_tensors`]):
//! transformers loads by the index too, and a stray tensor is no reason to refuse a model
//! (the converter fails later, by name, if a tensor it needs is missing).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::safetensors::{SafetensorsFile, TensorEntry, UniqueKeys};

pub const CONFIG_FILE: &str = "config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const SINGLE_WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Largest config.json / generation_config.json accepted (real ones are a few KB).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Largest shard index accepted (DeepSeek-V3's, 90k tensors, is under 10 MB).
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// transformers' rope_theta when a config gives none (RotaryEmbeddingConfigMixin.default_theta;
/// a few model classes override it, see [`RopeConfig::from_config`]).
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// One tensor of the checkpoint: which file, which entry of that file.
#[derive(Clone, Copy)]
struct TensorRef {
    file: usize,
    entry: usize,
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Value,
    pub generation_config: Option<Value>,
    /// The weight files, shards in file-name order.
    files: Vec<SafetensorsFile>,
    /// Every tensor, in file order then data-offset order (reads each file front to back).
    tensors: Vec<TensorRef>,
    by_name: HashMap<String, usize>,
    /// (shard, tensor) pairs a shard holds but the index does not map to it.
    unindexed: Vec<(String, String)>,
}

impl Checkpoint {
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::Checkpoint(format!("{}: not a directory", dir.display())));
        }
        let config = read_json(&dir.join(CONFIG_FILE), MAX_CONFIG_BYTES)?;
        if !config.is_object() {
            return Err(Error::Checkpoint(format!("{}: not a JSON object", dir.join(CONFIG_FILE).display())));
        }
        let generation_path = dir.join(GENERATION_CONFIG_FILE);
        let generation_config = if generation_path.is_file() { Some(read_json(&generation_path, MAX_CONFIG_BYTES)?) } else { None };
        let weights = open_weights(&dir)?;
        let by_name = weights.tensors.iter().enumerate().map(|(i, t)| (weights.files[t.file].tensors()[t.entry].name.clone(), i)).collect();
        Ok(Checkpoint {
            dir,
            config,
            generation_config,
            files: weights.files,
            tensors: weights.tensors,
            by_name,
            unindexed: weights.unindexed,
        })
    }

    /// The weight files (one, or the shards in file-name order).
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// Every tensor name, in file order then data-offset order: stable for a given folder,
    /// and the order that reads each file front to back.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.iter().map(|t| self.files[t.file].tensors()[t.entry].name.as_str())
    }

    pub fn tensor(&self, name: &str) -> Option<(&SafetensorsFile, &TensorEntry)> {
        let t = self.tensors[*self.by_name.get(name)?];
        let file = &self.files[t.file];
        Some((file, &file.tensors()[t.entry]))
    }

    /// (shard file, tensor) pairs that a shard holds but the index does not map to that
    /// shard; left out of [`Checkpoint::tensor_names`].
    pub fn unindexed_tensors(&self) -> &[(String, String)] {
        &self.unindexed
    }

    /// The model class, the first of config.json's `architectures` ("LlamaForCausalLM").
    pub fn architecture(&self) -> Result<&str> {
        self.config
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .ok_or_else(|| self.config_error("architectures", "missing, or not a list of strings"))
    }

    /// A required non-negative integer of config.json.
    pub fn usize_field(&self, key: &str) -> Result<usize> {
        self.opt_usize_field(key)?.ok_or_else(|| self.config_error(key, "missing"))
    }

    /// A non-negative integer of config.json, `None` when absent or null.
    pub fn opt_usize_field(&self, key: &str) -> Result<Option<usize>> {
        match self.config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => json_usize(v).map(Some).ok_or_else(|| self.config_error(key, &format!("{v} is not a non-negative integer"))),
        }
    }

    /// A required number of config.json (an integer is fine: `"rope_theta": 10000`).
    pub fn f64_field(&self, key: &str) -> Result<f64> {
        self.opt_f64_field(key)?.ok_or_else(|| self.config_error(key, "missing"))
    }

    /// A number of config.json, `None` when absent or null.
    pub fn opt_f64_field(&self, key: &str) -> Result<Option<f64>> {
        match self.config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.config_error(key, &format!("{v} is not a number"))),
        }
    }

    /// The model's rotary embedding, normalized from either config.json dialect.
    pub fn rope(&self) -> Result<RopeConfig> {
        RopeConfig::from_config(&self.config, DEFAULT_ROPE_THETA).map_err(|e| Error::Checkpoint(format!("{}: {e}", self.config_path().display())))
    }

    /// The rotary embedding of one layer type of a model whose `rope_parameters` are given
    /// per layer type (`{"full_attention": {...}, "sliding_attention": {...}}`).
    pub fn rope_of_layer_type(&self, layer_type: &str) -> Result<RopeConfig> {
        RopeConfig::from_config_for_layer_type(&self.config, DEFAULT_ROPE_THETA, layer_type)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", self.config_path().display())))
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    fn config_error(&self, key: &str, problem: &str) -> Error {
        Error::Checkpoint(format!("{}: '{key}' {problem}", self.config_path().display()))
    }
}

// ---- weights ----------------------------------------------------------------------------

struct Weights {
    files: Vec<SafetensorsFile>,
    tensors: Vec<TensorRef>,
    unindexed: Vec<(String, String)>,
}

/// `model.safetensors` if present (transformers prefers it too), else the sharded index.
fn open_weights(dir: &Path) -> Result<Weights> {
    let single = dir.join(SINGLE_WEIGHTS_FILE);
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if single.is_file() {
        if index.is_file() {
            log::warn!("{}: both {SINGLE_WEIGHTS_FILE} and {WEIGHTS_INDEX_FILE}; using {SINGLE_WEIGHTS_FILE}", dir.display());
        }
        return open_single(&single);
    }
    if index.is_file() {
        return open_sharded(dir, &index);
    }
    Err(Error::Checkpoint(format!(
        "{}: no {SINGLE_WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} (only safetensors checkpoints are read; \
         convert pytorch_model.bin to safetensors first)",
        dir.display()
    )))
}

fn open_single(path: &Path) -> Result<Weights> {
    let file = SafetensorsFile::open(path)?;
    if file.tensors().is_empty() {
        return Err(Error::Checkpoint(format!("{}: holds no tensors", path.display())));
    }
    let tensors = (0..file.tensors().len()).map(|entry| TensorRef { file: 0, entry }).collect();
    Ok(Weights { files: vec![file], tensors, unindexed: Vec::new() })
}

#[derive(Deserialize)]
struct WeightsIndex {
    weight_map: UniqueKeys<String>,
}

/// Opens every shard the index names and checks that each indexed tensor is in its shard.
fn open_sharded(dir: &Path, index_path: &Path) -> Result<Weights> {
    let index_error = |message: String| Error::Checkpoint(format!("{}: {message}", index_path.display()));
    // Parsed from the text, not through a serde_json::Value, which would merge a key given
    // twice before UniqueKeys could see it.
    let index: WeightsIndex = serde_json::from_str(&read_text(index_path, MAX_INDEX_BYTES)?).map_err(|e| index_error(e.to_string()))?;
    let weight_map = index.weight_map.0;
    if weight_map.is_empty() {
        return Err(index_error("weight_map is empty".into()));
    }
    // Shards in file-name order; BTreeMap gives each its position.
    let mut shard_ids: BTreeMap<&str, usize> = BTreeMap::new();
    for (tensor, shard) in &weight_map {
        check_plain_file_name(shard).map_err(|problem| index_error(format!("tensor '{tensor}': shard name '{shard}' {problem}")))?;
        shard_ids.insert(shard, 0);
    }
    let mut files = Vec::with_capacity(shard_ids.len());
    for (position, (shard, id)) in shard_ids.iter_mut().enumerate() {
        *id = position;
        files.push(SafetensorsFile::open(dir.join(shard))?);
    }
    for (tensor, shard) in &weight_map {
        if files[shard_ids[shard.as_str()]].tensor(tensor).is_none() {
            return Err(index_error(format!("tensor '{tensor}' is mapped to {shard}, which does not hold it")));
        }
    }
    let mut tensors = Vec::with_capacity(weight_map.len());
    let mut unindexed = Vec::new();
    for (file_id, (file, shard)) in files.iter().zip(shard_ids.keys()).enumerate() {
        for (entry, t) in file.tensors().iter().enumerate() {
            if weight_map.get(&t.name).is_some_and(|s| s == shard) {
                tensors.push(TensorRef { file: file_id, entry });
            } else {
                unindexed.push((shard.to_string(), t.name.clone()));
            }
        }
    }
    if let Some((shard, tensor)) = unindexed.first() {
        log::warn!(
            "{}: {} tensors in shards are not in the index's weight_map and are ignored (first: '{tensor}' in {shard})",
            index_path.display(),
            unindexed.len()
        );
    }
    Ok(Weights { files, tensors, unindexed })
}

/// A shard name from the index must name a file directly inside the folder: not empty, no
/// directory part, not `.` or `..`, not absolute, no NUL.
fn check_plain_file_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.contains(['/', '\\', '\0']) {
        return Err("is not a plain file name inside the checkpoint folder");
    }
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => Err("is not a plain file name inside the checkpoint folder"),
    }
}

/// Reads a JSON file of at most `cap` bytes.
fn read_json(path: &Path, cap: u64) -> Result<Value> {
    serde_json::from_str(&read_text(path, cap)?).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
}

/// Reads a UTF-8 file of at most `cap` bytes.
fn read_text(path: &Path, cap: u64) -> Result<String> {
    let io_err = |source| Error::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len > cap {
        return Err(Error::Checkpoint(format!("{}: {len} bytes exceeds the cap of {cap} bytes", path.display())));
    }
    let mut text = String::new();
    // take(): the file may have grown since the length check.
    file.take(cap).read_to_string(&mut text).map_err(io_err)?;
    Ok(text)
}

fn json_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

// ---- rotary embedding -------------------------------------------------------------------

/// A model's rotary position embedding, whichever way config.json spells it.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// Base wavelength (`rope_theta`).
    pub theta: f64,
    /// Fraction of each head's dimensions that rotate (1.0 unless the config says).
    pub partial_rotary_factor: f64,
    pub scaling: RopeScaling,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (every frequency divided by it).
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// YaRN, with transformers' defaults filled in: beta_fast 32, beta_slow 1, truncate true,
    /// and `attention_factor` computed from factor/mscale/mscale_all_dim when not given (as
    /// transformers' `_compute_yarn_parameters` does). `mscale` and `mscale_all_dim` are kept
    /// as written because llama.cpp's converter writes some of them as GGUF keys.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
}

impl RopeConfig {
    /// Normalizes a config.json's rope settings the way transformers 5 does
    /// (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` and
    /// `standardize_rope_params` in modeling_rope_utils.py):
    ///
    /// * the parameters are `rope_scaling` (transformers 4 files) if it is a non-empty object,
    ///   else `rope_parameters` (transformers 5 files), else none;
    /// * `rope_theta` comes from those parameters, else the top level (transformers 4), else
    ///   `default_theta` (10000 for most models; a few model classes override it — the caller
    ///   knows which);
    /// * the type is `rope_type`, else the legacy `type`, else "default";
    /// * llama3 and yarn take `original_max_position_embeddings` from the parameters, else
    ///   `max_position_embeddings` (transformers ignores a top-level copy for these models);
    /// * `partial_rotary_factor` from the parameters, else the top level, else 1.
    ///
    /// Types other than default, linear, llama3 and yarn (dynamic, longrope, ...) are an
    /// error naming the type, as are per-layer-type parameters (see
    /// [`RopeConfig::from_config_for_layer_type`]).
    pub fn from_config(config: &Value, default_theta: f64) -> std::result::Result<RopeConfig, String> {
        let empty = Map::new();
        let params = rope_params(config, &empty)?;
        let nested = nested_layer_types(config, params);
        if !nested.is_empty() {
            return Err(format!("rope parameters are given per layer type ({}); read them per layer type", nested.join(", ")));
        }
        normalize(config, params, default_theta)
    }

    /// The parameters of one layer type when `rope_parameters` is nested by the layer types
    /// of the config's `layer_types` (Gemma 3 style); the flat parameters otherwise.
    pub fn from_config_for_layer_type(config: &Value, default_theta: f64, layer_type: &str) -> std::result::Result<RopeConfig, String> {
        let empty = Map::new();
        let params = rope_params(config, &empty)?;
        if nested_layer_types(config, params).is_empty() {
            return normalize(config, params, default_theta);
        }
        match params.get(layer_type) {
            Some(Value::Object(inner)) => normalize(config, inner, default_theta),
            Some(other) => Err(format!("rope parameters of layer type '{layer_type}': {other} is not an object")),
            None => Err(format!("no rope parameters for layer type '{layer_type}'")),
        }
    }
}

/// `rope_scaling` if a non-empty object, else `rope_parameters`, else `empty`.
fn rope_params<'a>(config: &'a Value, empty: &'a Map<String, Value>) -> std::result::Result<&'a Map<String, Value>, String> {
    for key in ["rope_scaling", "rope_parameters"] {
        match config.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.is_empty() => {}
            Some(Value::Object(m)) => return Ok(m),
            Some(other) => return Err(format!("'{key}': {other} is not an object")),
        }
    }
    Ok(empty)
}

/// Keys of `params` that are layer types of the config (transformers'
/// `nested_rope_parameter_keys`): non-empty means one parameter set per layer type.
fn nested_layer_types<'a>(config: &Value, params: &'a Map<String, Value>) -> Vec<&'a str> {
    let Some(layer_types) = config.get("layer_types").and_then(Value::as_array) else {
        return Vec::new();
    };
    params.keys().filter(|k| layer_types.iter().any(|t| t.as_str() == Some(k.as_str()))).map(String::as_str).collect()
}

fn normalize(config: &Value, params: &Map<String, Value>, default_theta: f64) -> std::result::Result<RopeConfig, String> {
    let theta = number(params, "rope_theta")?.or(number_at_top(config, "rope_theta")?).unwrap_or(default_theta);
    let partial_rotary_factor = number(params, "partial_rotary_factor")?.or(number_at_top(config, "partial_rotary_factor")?).unwrap_or(1.0);
    let rope_type = match params.get("rope_type").or_else(|| params.get("type")) {
        None | Some(Value::Null) => "default",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(format!("rope type {other} is not a string")),
    };
    if !(theta.is_finite() && theta > 0.0) {
        return Err(format!("rope_theta {theta} is not a positive number"));
    }
    if !(partial_rotary_factor > 0.0 && partial_rotary_factor <= 1.0) {
        return Err(format!("partial_rotary_factor {partial_rotary_factor} is not in (0, 1]"));
    }
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: positive(params, "factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: positive(params, "factor")?,
            low_freq_factor: positive(params, "low_freq_factor")?,
            high_freq_factor: positive(params, "high_freq_factor")?,
            original_max_position_embeddings: original_context(config, params)?,
        },
        "yarn" => yarn(config, params)?,
        other => return Err(format!("rope type '{}' is not supported (default, linear, llama3 and yarn are)", other)),
    };
    Ok(RopeConfig { theta, partial_rotary_factor, scaling })
}

/// transformers' `_compute_yarn_parameters`, less the frequencies.
fn yarn(config: &Value, params: &Map<String, Value>) -> std::result::Result<RopeScaling, String> {
    let original = original_context(config, params)?;
    // A missing factor is the ratio of the two context lengths (DeepSeek-V3's convention).
    let factor = match number(params, "factor")? {
        Some(f) => f,
        None => max_position_embeddings(config)? as f64 / original as f64,
    };
    if !(factor.is_finite() && factor > 0.0) {
        return Err(format!("rope factor {factor} is not a positive number"));
    }
    let mscale = number(params, "mscale")?;
    let mscale_all_dim = number(params, "mscale_all_dim")?;
    let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
    let attention_factor = match (number(params, "attention_factor")?, mscale, mscale_all_dim) {
        (Some(a), _, _) => a,
        // transformers tests truthiness: a zero mscale counts as absent.
        (None, Some(m), Some(m_all)) if m != 0.0 && m_all != 0.0 => get_mscale(factor, m) / get_mscale(factor, m_all),
        _ => get_mscale(factor, 1.0),
    };
    // `or 32` / `or 1` in transformers: zero or null means the default.
    let beta_fast = number(params, "beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0);
    let beta_slow = number(params, "beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0);
    let truncate = match params.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("rope 'truncate': {other} is not a boolean")),
    };
    Ok(RopeScaling::Yarn { factor, original_max_position_embeddings: original, beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim, truncate })
}

/// `original_max_position_embeddings` of the parameters, else `max_position_embeddings`.
fn original_context(config: &Value, params: &Map<String, Value>) -> std::result::Result<usize, String> {
    let n = match params.get("original_max_position_embeddings") {
        None | Some(Value::Null) => max_position_embeddings(config)?,
        Some(v) => json_usize(v).ok_or_else(|| format!("rope 'original_max_position_embeddings': {v} is not a non-negative integer"))?,
    };
    if n == 0 {
        return Err("rope 'original_max_position_embeddings' is 0".into());
    }
    Ok(n)
}

fn max_position_embeddings(config: &Value) -> std::result::Result<usize, String> {
    let v = config.get("max_position_embeddings").ok_or("'max_position_embeddings' is missing (the rope scaling needs it)")?;
    json_usize(v).ok_or_else(|| format!("'max_position_embeddings': {v} is not a non-negative integer"))
}

/// A number of the rope parameters; absent or null is `None`.
fn number(params: &Map<String, Value>, key: &str) -> std::result::Result<Option<f64>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("rope '{key}': {v} is not a number")),
    }
}

fn number_at_top(config: &Value, key: &str) -> std::result::Result<Option<f64>, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("'{key}': {v} is not a number")),
    }
}

/// A required, finite, positive number of the rope parameters.
fn positive(params: &Map<String, Value>, key: &str) -> std::result::Result<f64, String> {
    match number(params, key)? {
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        Some(x) => Err(format!("rope '{key}' {x} is not a positive number")),
        None => Err(format!("rope '{key}' is missing")),
    }
}
