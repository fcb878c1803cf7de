//! The forward pass as data: a list of ops over tensor handles, built once per model by
//! an architecture's builder and run by the one executor (retort-runtime) for any batch
//! of n tokens at positions p..p+n. Activations are f32 matrices of `n` rows (one per
//! token) and a fixed width; weights are named views into the model file.

pub use retort_kernels::cpu::RopeStyle;
use retort_kernels::DType;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// An activation: `rows x width` f32, rows = tokens in the batch (or 1 after [`Op::LastRow`]:
/// an activation with fewer rows than the batch holds its last positions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActId(pub usize);

/// A weight: a tensor of the model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightId(pub usize);

#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub dtype: DType,
    /// ggml order: dims[0] is the row length.
    pub dims: Vec<u64>,
}

impl Weight {
    /// (row length, rows): a linear layer `in -> out` is `in` long, `out` rows.
    pub fn matrix_shape(&self) -> (usize, usize) {
        let rows: u64 = self.dims[1..].iter().product();
        (self.dims[0] as usize, rows as usize)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    pub head_dim: usize,
    /// Dimensions rotated at the start of each head (the rest pass through).
    pub n_rot: usize,
    pub freq_base: f32,
    /// Linear position scaling (1.0 = none).
    pub freq_scale: f32,
    /// Per-frequency divisors (llama3 rope scaling ships them as `rope_freqs.weight`).
    pub freq_factors: Option<WeightId>,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// out[i] = dequantized row tokens[i] of `table`.
    Embed { table: WeightId, out: ActId },
    /// Root-mean-square norm of each group of `weight.len()` values, times `weight`.
    /// A group narrower than the row normalizes per head (Qwen3's QK norm).
    RmsNorm { x: ActId, weight: WeightId, eps: f32, out: ActId },
    /// out = x · weightᵀ (+ bias): x is rows x in, weight is out rows of length in.
    MatMul { x: ActId, weight: WeightId, bias: Option<WeightId>, out: ActId },
    /// Rotates every head of x in place by its token's position.
    Rope { x: ActId, rope: Rope },
    /// Writes the batch's keys and values into the layer's cache at its positions.
    StoreKv { layer: usize, k: ActId, v: ActId },
    /// Causal attention of the batch's queries over the layer's cache (positions 0..=p).
    Attention { layer: usize, q: ActId, n_head: usize, n_head_kv: usize, head_dim: usize, scale: f32, out: ActId },
    /// out = a + b.
    Add { a: ActId, b: ActId, out: ActId },
    /// out = silu(gate) * up.
    SwiGlu { gate: ActId, up: ActId, out: ActId },
    /// Keeps only the last row, unless the caller asked for logits at every position.
    LastRow { x: ActId, out: ActId },
}

/// Geometry of the KV cache the graph's attention ops need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_layer: usize,
    /// Key/value heads: the cache keeps each head's positions contiguous.
    pub n_head_kv: usize,
    /// Values per token per layer for keys, and for values.
    pub k_width: usize,
    pub v_width: usize,
}

pub struct Graph {
    pub weights: Vec<Weight>,
    /// Width (f32 per row) of each activation.
    pub act_widths: Vec<usize>,
    pub ops: Vec<Op>,
    pub logits: ActId,
    pub kv: KvShape,
}

impl Graph {
    pub fn vocab_size(&self) -> usize {
        self.act_widths[self.logits.0]
    }
}

/// Builds a graph while checking every weight the architecture names against the file:
/// present, and of the shape the architecture expects.
pub struct GraphBuilder<'f> {
    file: &'f GgufFile,
    weights: Vec<Weight>,
    act_widths: Vec<usize>,
    ops: Vec<Op>,
}

impl<'f> GraphBuilder<'f> {
    pub fn new(file: &'f GgufFile) -> GraphBuilder<'f> {
        GraphBuilder { file, weights: Vec::new(), act_widths: Vec::new(), ops: Vec::new() }
    }

    /// The weight `name`, which must have exactly `dims` (ggml order).
    pub fn weight(&mut self, name: &str, dims: &[usize]) -> Result<WeightId> {
        let id = self.optional_weight(name, dims)?;
        id.ok_or_else(|| Error::Model(format!("tensor '{name}' is missing from {}", self.file.path().display())))
    }

    /// Like [`GraphBuilder::weight`], but absence is not an error.
    pub fn optional_weight(&mut self, name: &str, dims: &[usize]) -> Result<Option<WeightId>> {
        let Some(t) = self.file.tensor(name) else { return Ok(None) };
        let expected: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims != expected {
            return Err(Error::Model(format!(
                "tensor '{name}' has shape {:?}, expected {expected:?}",
                t.dims
            )));
        }
        if let Some(i) = self.weights.iter().position(|w| w.name == name) {
            return Ok(Some(WeightId(i)));
        }
        self.weights.push(Weight { name: name.to_owned(), dtype: t.dtype, dims: t.dims.clone() });
        Ok(Some(WeightId(self.weights.len() - 1)))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    fn activation(&mut self, width: usize) -> ActId {
        self.act_widths.push(width);
        ActId(self.act_widths.len() - 1)
    }

    pub fn width(&self, x: ActId) -> usize {
        self.act_widths[x.0]
    }

    fn weight_rows(&self, w: WeightId) -> usize {
        self.weights[w.0].matrix_shape().1
    }

    pub fn embed(&mut self, table: WeightId) -> ActId {
        let out = self.activation(self.weights[table.0].matrix_shape().0);
        self.ops.push(Op::Embed { table, out });
        out
    }

    pub fn rms_norm(&mut self, x: ActId, weight: WeightId, eps: f32) -> ActId {
        let out = self.activation(self.width(x));
        self.ops.push(Op::RmsNorm { x, weight, eps, out });
        out
    }

    pub fn matmul(&mut self, x: ActId, weight: WeightId, bias: Option<WeightId>) -> ActId {
        let out = self.activation(self.weight_rows(weight));
        self.ops.push(Op::MatMul { x, weight, bias, out });
        out
    }

    pub fn rope(&mut self, x: ActId, rope: &Rope) {
        self.ops.push(Op::Rope { x, rope: rope.clone() });
    }

    pub fn store_kv(&mut self, layer: usize, k: ActId, v: ActId) {
        self.ops.push(Op::StoreKv { layer, k, v });
    }

    pub fn attention(&mut self, layer: usize, q: ActId, n_head: usize, n_head_kv: usize, head_dim: usize, v_head_dim: usize) -> ActId {
        let out = self.activation(n_head * v_head_dim);
        let scale = 1.0 / (head_dim as f32).sqrt();
        self.ops.push(Op::Attention { layer, q, n_head, n_head_kv, head_dim, scale, out });
        out
    }

    pub fn add(&mut self, a: ActId, b: ActId) -> ActId {
        let out = self.activation(self.width(a));
        self.ops.push(Op::Add { a, b, out });
        out
    }

    pub fn swiglu(&mut self, gate: ActId, up: ActId) -> ActId {
        let out = self.activation(self.width(gate));
        self.ops.push(Op::SwiGlu { gate, up, out });
        out
    }

    pub fn last_row(&mut self, x: ActId) -> ActId {
        let out = self.activation(self.width(x));
        self.ops.push(Op::LastRow { x, out });
        out
    }

    pub fn finish(self, logits: ActId, kv: KvShape) -> Graph {
        Graph { weights: self.weights, act_widths: self.act_widths, ops: self.ops, logits, kv }
    }
}
