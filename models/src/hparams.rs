//! Hyperparameters from GGUF metadata, under llama.cpp's key names
//! (`{arch}.embedding_length`, `{arch}.attention.head_count`, ...).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// The architectures retort can build, by their `general.architecture` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    pub fn from_name(name: &str) -> Result<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            let known: Vec<_> = Arch::ALL.iter().map(|a| a.name()).collect();
            Error::Model(format!("unknown architecture '{name}' (known: {})", known.join(", ")))
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub arch: Arch,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head width of queries and keys (`attention.key_length`; default n_embd / n_head).
    pub head_dim: usize,
    /// Per-head width of values (`attention.value_length`).
    pub v_head_dim: usize,
    pub rms_eps: f32,
    pub rope_freq_base: f32,
    /// 1 / factor for linear rope scaling, else 1.
    pub rope_freq_scale: f32,
    pub n_rot: usize,
}

/// Caps far above any released model: a file claiming more is broken or hostile.
const MAX_LAYERS: usize = 4096;
const MAX_WIDTH: usize = 1 << 20;
const MAX_HEADS: usize = 1 << 12;

impl HParams {
    pub fn from_gguf(file: &GgufFile) -> Result<HParams> {
        let arch_name = file
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Model(format!("{}: no general.architecture", file.path().display())))?;
        let arch = Arch::from_name(arch_name)?;
        let keys = Keys { file, arch: arch_name };

        let n_embd = keys.count("embedding_length", MAX_WIDTH)?;
        let n_head = keys.count("attention.head_count", MAX_HEADS)?;
        let n_head_kv = keys.optional_count("attention.head_count_kv", MAX_HEADS)?.unwrap_or(n_head);
        if n_head % n_head_kv != 0 {
            return Err(keys.invalid("attention.head_count_kv", format!("{n_head_kv} does not divide head_count {n_head}")));
        }
        let default_head_dim = n_embd / n_head;
        let head_dim = keys.optional_count("attention.key_length", MAX_WIDTH)?.unwrap_or(default_head_dim);
        let v_head_dim = keys.optional_count("attention.value_length", MAX_WIDTH)?.unwrap_or(default_head_dim);
        let n_rot = keys.optional_count("rope.dimension_count", MAX_WIDTH)?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(keys.invalid("rope.dimension_count", format!("{n_rot} must be even and at most the head size {head_dim}")));
        }
        let rope_freq_scale = match keys.optional_str("rope.scaling.type")? {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = keys.optional_float("rope.scaling.factor")?.unwrap_or(1.0);
                if !(factor > 0.0 && factor.is_finite()) {
                    return Err(keys.invalid("rope.scaling.factor", format!("{factor} is not a positive number")));
                }
                1.0 / factor
            }
            Some(other) => {
                return Err(keys.invalid("rope.scaling.type", format!("'{other}' is not supported yet (supported: none, linear)")))
            }
        };
        let rms_eps = keys.float("attention.layer_norm_rms_epsilon")?;
        if !(rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(keys.invalid("attention.layer_norm_rms_epsilon", format!("{rms_eps} is out of range")));
        }
        let rope_freq_base = keys.optional_float("rope.freq_base")?.unwrap_or(10000.0);
        if !(rope_freq_base > 1.0 && rope_freq_base.is_finite()) {
            return Err(keys.invalid("rope.freq_base", format!("{rope_freq_base} is out of range")));
        }
        Ok(HParams {
            arch,
            n_ctx_train: keys.count("context_length", usize::MAX)?,
            n_embd,
            n_layer: keys.count("block_count", MAX_LAYERS)?,
            n_ff: keys.count("feed_forward_length", MAX_WIDTH * 64)?,
            n_head,
            n_head_kv,
            head_dim,
            v_head_dim,
            rms_eps,
            rope_freq_base,
            rope_freq_scale,
            n_rot,
        })
    }
}

/// `{arch}.`-prefixed metadata look-ups with errors that name the key.
struct Keys<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl Keys<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    fn invalid(&self, suffix: &str, why: String) -> Error {
        Error::Model(format!("{}: metadata '{}': {why}", self.file.path().display(), self.key(suffix)))
    }

    fn optional_count(&self, suffix: &str, max: usize) -> Result<Option<usize>> {
        let Some(v) = self.file.get(&self.key(suffix)) else { return Ok(None) };
        let n = v.as_u64().ok_or_else(|| self.invalid(suffix, format!("expected a non-negative integer, found {v}")))?;
        if n == 0 || n > max as u64 {
            return Err(self.invalid(suffix, format!("{n} is out of range (1 to {max})")));
        }
        Ok(Some(n as usize))
    }

    fn count(&self, suffix: &str, max: usize) -> Result<usize> {
        self.optional_count(suffix, max)?.ok_or_else(|| self.invalid(suffix, "missing".into()))
    }

    fn optional_float(&self, suffix: &str) -> Result<Option<f32>> {
        let Some(v) = self.file.get(&self.key(suffix)) else { return Ok(None) };
        let x = v.as_f64().ok_or_else(|| self.invalid(suffix, format!("expected a number, found {v}")))?;
        Ok(Some(x as f32))
    }

    fn float(&self, suffix: &str) -> Result<f32> {
        self.optional_float(suffix)?.ok_or_else(|| self.invalid(suffix, "missing".into()))
    }

    fn optional_str(&self, suffix: &str) -> Result<Option<&str>> {
        let Some(v) = self.file.get(&self.key(suffix)) else { return Ok(None) };
        v.as_str().map(Some).ok_or_else(|| self.invalid(suffix, format!("expected a string, found {v}")))
    }
}
